"""runtime.py: the CPU devices and allocator `seq2seq-jax train` runs with, and how the
command line and a sweep's workers take SIGINT/SIGTERM."""

import os
import signal
import subprocess
import sys
import time
import types

import pytest

from seq2seq_jax import loop
from seq2seq_jax import runtime
from seq2seq_jax import sweep as sweep_lib
from seq2seq_jax.errors import UserError
from tests.conftest import ROOT, run_cli

FLAG = "--xla_force_host_platform_device_count"


@pytest.mark.parametrize("batch, cores, expected", [
    (64, 2, 2),    # the Keras example's batch on this project's 2-core machine
    (128, 2, 2),   # the default job
    (64, 16, 4),   # capped so that each device keeps >= 16 rows
    (128, 16, 8),  # capped at MAX_CPU_DEVICES
    (512, 32, 8),  # capped at MAX_CPU_DEVICES, though 16 devices would keep 32 rows each
    (50, 4, 2),    # only counts that divide the batch
    (31, 8, 1),    # a prime batch stays on one device
    (16, 2, 1),    # too few rows to split
    (64, 1, 1),    # one core
])
def test_cpu_device_count(batch, cores, expected):
  assert runtime.cpu_device_count(batch, cores) == expected


def test_launch_environment_adds_per_core_devices(monkeypatch):
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  env = runtime.launch_environment(64, {"SEQ2SEQ_JAX_MIMALLOC": "0", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
  assert env == {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {FLAG}=2 --xla_cpu_multi_thread_eigen=false"}


@pytest.mark.parametrize("environ", [
    {"XLA_FLAGS": f"{FLAG}=8"},                       # the user's own device count wins
    {"SEQ2SEQ_JAX_CPU_DEVICES": "1"},                 # turned off
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},     # a multi-process launch
    {"ACCELERATOR": "1"},                             # a GPU/TPU backend is installed
])
def test_launch_environment_leaves_devices_alone(monkeypatch, environ):
  monkeypatch.setattr(runtime, "available_cores", lambda: 8)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("json",) if "ACCELERATOR" in environ else ())
  env = runtime.launch_environment(64, dict(environ, SEQ2SEQ_JAX_MIMALLOC="0"))
  assert "XLA_FLAGS" not in env


def test_explicit_device_count_and_a_wrong_one(monkeypatch):
  assert runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "4"}) == 4
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  assert runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": " "}) == 2  # blank: unset
  with pytest.raises(UserError, match="SEQ2SEQ_JAX_CPU_DEVICES='two' is not a whole number"):
    runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "two"})


def test_nothing_to_add_once_launched(monkeypatch):
  """The re-executed process finds its settings in place and does not re-execute again."""
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  first = runtime.launch_environment(64, {})
  assert runtime.launch_environment(64, first) == {}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_the_cores_are_those_this_process_may_run_on(monkeypatch):
  """Under taskset, a container's CPU set or a scheduler's allocation, the devices follow
  the cores the process is allowed, not the machine's count."""
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
  monkeypatch.setattr(os, "cpu_count", lambda: 64)
  assert runtime.available_cores() == 3


MIMALLOC = "/site-packages/cmeel.prefix/lib/libmimalloc.so.2"


@pytest.fixture
def mimalloc_installed(monkeypatch):
  """mimalloc found, no accelerator backend, one core (so no device flags)."""
  monkeypatch.setattr(runtime, "find_mimalloc", lambda: MIMALLOC)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  monkeypatch.setattr(runtime, "available_cores", lambda: 1)
  monkeypatch.setattr(sys, "platform", "linux")


def test_train_preloads_mimalloc_before_the_users_own_preloads(mimalloc_installed, monkeypatch):
  """mimalloc first in LD_PRELOAD (the user's libraries after it), its memory never given
  back to the system between steps, and a marker that keeps the new process from adding
  it again."""
  allocator = {"SEQ2SEQ_JAX_MIMALLOC": "0", "MIMALLOC_PURGE_DELAY": "-1"}
  assert runtime.launch_environment(64, {}) == dict(allocator, LD_PRELOAD=MIMALLOC)
  assert runtime.launch_environment(64, {"LD_PRELOAD": "/opt/libmine.so"}) == dict(
      allocator, LD_PRELOAD=f"{MIMALLOC}:/opt/libmine.so")
  # a sweep (no batch to split) gets the allocator alone, on any number of cores
  monkeypatch.setattr(runtime, "available_cores", lambda: 8)
  assert runtime.launch_environment(None, {}) == dict(allocator, LD_PRELOAD=MIMALLOC)


@pytest.mark.parametrize("environ", [
    {"SEQ2SEQ_JAX_MIMALLOC": "0"},                     # turned off
    {"LD_PRELOAD": "/usr/lib/libmimalloc.so.2"},       # the user preloads a mimalloc already
])
def test_train_leaves_the_allocator_alone(mimalloc_installed, environ):
  assert runtime.launch_environment(64, environ) == {}


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX only")
def test_train_re_executes_itself_with_its_settings_and_the_stop_signals_held(monkeypatch):
  """The same command (`python -m seq2seq_jax ARGS`) runs again with the settings added.
  SIGINT and SIGTERM are blocked across the exec (one that comes meanwhile waits for the
  new process's handlers), and the new process is told to unblock them; an exec that
  fails leaves the signal mask as it was. Once JAX has started, nothing is re-executed."""
  stops = {signal.SIGINT, signal.SIGTERM}
  execs = []

  def execve(path, argv, env):
    execs.append((path, argv, env, signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    raise OSError("exec failed")

  monkeypatch.setattr(os, "execve", execve)
  monkeypatch.setattr(runtime, "launch_environment", lambda batch_size: {"XLA_FLAGS": "--flag"})
  monkeypatch.setattr(sys, "argv", ["/usr/bin/seq2seq-jax", "train", "--config", "c.py"])
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
  with pytest.raises(OSError, match="exec failed"):
    runtime.maybe_reexec(64)
  assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask
  (path, argv, env, mask_at_exec), = execs
  assert path == sys.executable
  assert argv == [sys.executable, "-m", "seq2seq_jax", "train", "--config", "c.py"]
  assert env["XLA_FLAGS"] == "--flag" and env["SEQ2SEQ_JAX_SIGNALS_BLOCKED"] == "1"
  assert stops <= mask_at_exec
  # signals blocked by whoever started the command stay blocked in the new process
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
  try:
    with pytest.raises(OSError):
      runtime.maybe_reexec(64)
    assert "SEQ2SEQ_JAX_SIGNALS_BLOCKED" not in execs[1][2]
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
  monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
  runtime.maybe_reexec(64)
  assert len(execs) == 2


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX only")
def test_the_re_executed_command_unblocks_the_stop_signals_it_was_started_with(monkeypatch):
  """Unblocked once its handlers are in (a signal that came meanwhile is delivered then);
  the marker does not reach the processes it starts."""
  stops = {signal.SIGINT, signal.SIGTERM}
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
  try:
    monkeypatch.setenv("SEQ2SEQ_JAX_SIGNALS_BLOCKED", "1")
    runtime.unblock_stop_signals()
    assert not stops & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert "SEQ2SEQ_JAX_SIGNALS_BLOCKED" not in os.environ
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # blocked by whoever started it: kept
    runtime.unblock_stop_signals()
    assert stops <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def test_train_names_a_wrong_device_setting():
  result = run_cli("train", "--config", "configs/tiny.py", "--workdir", "/nonexistent/never",
                   env_extra={"SEQ2SEQ_JAX_CPU_DEVICES": "0"})
  assert result.returncode == 2
  assert "SEQ2SEQ_JAX_CPU_DEVICES='0' is not a whole number >= 1" in result.stderr


def test_an_installed_accelerator_is_used_unless_jax_platforms_says_cpu(monkeypatch):
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("json",))  # an installed module
  assert runtime.accelerator_installed({})
  assert not runtime.accelerator_installed({"JAX_PLATFORMS": "cpu"})


# ---------------------------------------------------------------------------
# Stop signals: a repeated one stops now, except in a worker whose parent forwards stops
# ---------------------------------------------------------------------------

def _send_twice(signum=signal.SIGINT) -> list[str]:
  """What each of two signals to this process raised ("" where nothing)."""
  raised = []
  for _ in range(2):
    try:
      os.kill(os.getpid(), signum)
      time.sleep(0.05)  # the handler runs at the next bytecode
      raised.append("")
    except KeyboardInterrupt as interrupt:
      raised.append(f"KeyboardInterrupt{interrupt.args}")
  return raised


def test_a_second_signal_interrupts_the_command_again():
  previous = runtime.install_stop_handlers()
  try:
    assert _send_twice() == ["KeyboardInterrupt('SIGINT',)"] * 2
    assert runtime.stop_signal_received() == "SIGINT"
  finally:
    runtime.restore_handlers(previous)


def test_the_command_is_said_to_be_interrupted_by_the_first_signal():
  previous = runtime.install_stop_handlers()
  try:
    for signum in (signal.SIGTERM, signal.SIGINT):
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
    assert runtime.stop_signal_received() == "SIGTERM"
  finally:
    runtime.restore_handlers(previous)


def test_a_sweep_worker_knows_its_parent_forwards_stops():
  """forwarding_environment, given to the processes a command starts, names that command
  as theirs."""
  code = "from seq2seq_jax import runtime; print(runtime.parent_forwards_stops())"
  for env, forwards in ((runtime.forwarding_environment(), "True"), ({}, "False")):
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, env=dict(os.environ, **env), timeout=60)
    assert child.stdout.strip() == forwards, child.stderr


def test_a_sweep_worker_takes_its_parents_forward_of_a_ctrl_c_as_the_same_stop(monkeypatch):
  """A terminal's Ctrl-C reaches the sweep's parent and its workers; the parent then
  forwards a SIGTERM to each. That second signal must not cut short the checkpoint save
  the first one started: the parent kills the workers on the user's second Ctrl-C."""
  monkeypatch.setenv("SEQ2SEQ_JAX_STOPPING_PARENT", str(os.getppid()))
  assert runtime.parent_forwards_stops()
  previous = runtime.install_stop_handlers()
  try:
    assert _send_twice() == ["KeyboardInterrupt('SIGINT',)", ""]
    runtime.restore_handlers(previous)
    previous = runtime.install_stop_handlers()
    with loop.SignalCatcher() as catcher:
      assert _send_twice(signal.SIGTERM) == ["", ""]  # the loop saves, then stops
      assert catcher.signum == signal.SIGTERM
    # the command line knows of it: a forward once the loop is done is the same stop
    assert runtime.stop_signal_received() == "SIGTERM"
    assert _send_twice(signal.SIGTERM) == ["", ""]
  finally:
    runtime.restore_handlers(previous)
  monkeypatch.setenv("SEQ2SEQ_JAX_STOPPING_PARENT", "1")  # not our parent (it died)
  assert not runtime.parent_forwards_stops()
  with loop.SignalCatcher() as catcher:
    assert _send_twice(signal.SIGTERM) == ["", "KeyboardInterrupt('SIGTERM',)"]
  assert runtime.stop_signal_received() is None  # a run in a Python program: nothing kept


def test_the_sweep_parent_forwards_one_stop_and_kills_on_a_second(tmp_path, monkeypatch):
  """sweep._stop_workers: each worker gets SIGTERM and is waited for while it saves; a
  second interrupt of the parent meanwhile kills the workers instead."""
  child = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[1], 'w').write('term'),"
           " sys.exit(130)))\n"
           "open(sys.argv[1] + '.up', 'w').close()\n"
           "time.sleep(60)\n")
  marks = [str(tmp_path / f"worker{k}") for k in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", child, mark]) for mark in marks]
  while not all(os.path.exists(mark + ".up") for mark in marks):
    time.sleep(0.05)
  sweep_lib._stop_workers(procs)
  assert [p.returncode for p in procs] == [130, 130]
  assert [open(mark).read() for mark in marks] == ["term", "term"]

  stubborn = str(tmp_path / "stubborn")  # a worker still saving when the second Ctrl-C comes
  procs = [subprocess.Popen([sys.executable, "-c", child.replace(
      "lambda *a: (open(sys.argv[1], 'w').write('term'), sys.exit(130))", "signal.SIG_IGN"),
      stubborn])]
  while not os.path.exists(stubborn + ".up"):
    time.sleep(0.05)
  real_wait = procs[0].wait
  calls = []

  def wait(*args, **kwargs):  # the second Ctrl-C comes while the parent waits
    calls.append(1)
    if len(calls) == 1:
      raise KeyboardInterrupt("SIGINT")
    return real_wait(*args, **kwargs)

  monkeypatch.setattr(procs[0], "wait", wait)
  with pytest.raises(KeyboardInterrupt):
    sweep_lib._stop_workers(procs)
  assert procs[0].returncode == -signal.SIGKILL


def test_a_sigint_ignored_by_whoever_started_the_run_stays_ignored_while_it_trains():
  """`cmd &` in a script, nohup: Ctrl-C is not for this process, at any moment."""
  before = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    previous = runtime.install_stop_handlers()
    with loop.SignalCatcher():
      assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
      assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # SIGTERM still saves
    runtime.restore_handlers(previous)
  finally:
    signal.signal(signal.SIGINT, before)


def test_the_compilation_counter_counts_compilations_while_open():
  """Every jit cache miss while the block runs, and nothing after it."""
  import jax
  import numpy as np
  scale = float(time.monotonic_ns() % 1_000_003)  # a program no cache has seen
  program = jax.jit(lambda x: x * scale + 1)
  with runtime.CompilationCounter() as compilations:
    program(np.ones(3, np.float32))
    program(np.ones(3, np.float32))  # cached
    program(np.ones(4, np.float32))  # another shape: compiled
  assert compilations.count == 2
  program(np.ones(5, np.float32))
  assert compilations.count == 2

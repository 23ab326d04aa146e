"""runtime.py: the CPU devices and allocator `seq2seq-jax train` runs with, and how the
command line and a sweep's workers take SIGINT/SIGTERM."""

import os
import signal
import subprocess
import sys
import time

import pytest

from seq2seq_jax import loop
from seq2seq_jax import runtime
from seq2seq_jax import sweep as sweep_lib
from seq2seq_jax.errors import UserError
from tests.conftest import run_cli

FLAG = "--xla_force_host_platform_device_count"


@pytest.mark.parametrize("batch, cores, expected", [
    (64, 2, 2),    # the Keras example's batch on this project's 2-core machine
    (128, 2, 2),   # the default job
    (64, 16, 4),   # capped so that each device keeps >= 16 rows
    (128, 16, 8),  # capped at MAX_CPU_DEVICES
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


def test_explicit_device_count_and_a_wrong_one():
  assert runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "4"}) == 4
  with pytest.raises(UserError, match="SEQ2SEQ_JAX_CPU_DEVICES='two' is not a whole number"):
    runtime.requested_cpu_devices(64, {"SEQ2SEQ_JAX_CPU_DEVICES": "two"})


def test_nothing_to_add_once_launched(monkeypatch):
  """The re-executed process finds its settings in place and does not re-execute again."""
  monkeypatch.setattr(runtime, "available_cores", lambda: 2)
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ())
  first = runtime.launch_environment(64, {})
  assert runtime.launch_environment(64, first) == {}


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

"""How a training process runs on its host: the allocator, the CPU devices, the stop signals.

Both must be settled before JAX starts, so `seq2seq-jax train` re-executes itself once
with them in its environment:

- mimalloc preloaded (from the cmeel-mimalloc wheel): XLA's CPU buffers otherwise come
  from glibc's allocator, and a step spends much of its time in page faults.
  SEQ2SEQ_JAX_MIMALLOC=0 turns it off. Not where a GPU/TPU backend is installed: the
  step's buffers live on the accelerator there, and an allocator preloaded under the
  accelerator's driver is a risk that buys nothing measured.
- one XLA CPU device per core, each running its ops on one thread, and the batch split
  over them by the data-parallel mesh (parallel.py). An LSTM step is a chain of small
  matmuls and elementwise loops; one device spreading every small op over all cores
  spends much of the step handing work between threads, where one device per core runs
  each half of the batch without waiting. SEQ2SEQ_JAX_CPU_DEVICES=N sets the count (1:
  off). Nothing changes where XLA_FLAGS already sets a device count, on multi-process
  runs, or where a GPU/TPU backend is installed (training runs there).

The command line's SIGINT/SIGTERM handlers live here too (install_stop_handlers): the
training loop reads what they recorded, and the re-exec keeps a signal pending across it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import signal
import sys
import sysconfig

from typing import Any

from seq2seq_jax.errors import UserError

MAX_CPU_DEVICES = 8  # beyond this the gradient all-reduce outweighs what a device adds
MIN_ROWS_PER_DEVICE = 16  # fewer rows make each device's matmuls too small to pay
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                       "jax_rocm60_plugin", "libtpu")


def find_mimalloc() -> str | None:
  """libmimalloc.so from the cmeel-mimalloc package, when installed."""
  for root in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
    found = sorted(glob.glob(os.path.join(root, "cmeel.prefix", "lib", "libmimalloc.so*")))
    if found:
      return found[0]
  return None


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def device_memory_bytes(device) -> int | None:
  """The memory a device's arrays can use: a GPU's or TPU's own (its allocator's limit), a
  CPU device's the host's RAM; None where unknown."""
  if device.platform != "cpu":
    try:
      return int((device.memory_stats() or {})["bytes_limit"])
    except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError, RuntimeError):
      return None
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):  # not a POSIX system that says
    return None


def cpu_device_count(batch_size: int, cores: int) -> int:
  """The most CPU devices, up to one per core, that split batch_size evenly with at
  least MIN_ROWS_PER_DEVICE rows each (1 when none does)."""
  best = 1
  for devices in range(2, min(cores, MAX_CPU_DEVICES) + 1):
    if batch_size % devices == 0 and batch_size // devices >= MIN_ROWS_PER_DEVICE:
      best = devices
  return best


def requested_cpu_devices(batch_size: int | None, environ=os.environ) -> int:
  """SEQ2SEQ_JAX_CPU_DEVICES when set, else cpu_device_count for this machine (1 when
  there is no batch size to split, or for a multi-process launch)."""
  text = environ.get("SEQ2SEQ_JAX_CPU_DEVICES", "").strip()
  if text:
    try:
      devices = int(text)
      if devices < 1:
        raise ValueError
    except ValueError:
      raise UserError(f"SEQ2SEQ_JAX_CPU_DEVICES={text!r} is not a whole number >= 1; "
                      "unset it for one device per core, or set 1 to turn it off.") from None
    return devices
  if batch_size is None or environ.get("JAX_COORDINATOR_ADDRESS") or accelerator_installed(environ):
    return 1
  return cpu_device_count(batch_size, available_cores())


def accelerator_installed(environ=os.environ) -> bool:
  """A GPU or TPU backend for JAX is installed and not switched off by JAX_PLATFORMS=cpu:
  training will run there, and the host's devices are left as they are."""
  if environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def allocator_environment(environ=os.environ) -> dict[str, str]:
  """The variables that preload mimalloc ({} when it is off, already preloaded, not
  installed, not on Linux, or when a GPU/TPU backend is installed)."""
  if sys.platform != "linux" or environ.get("SEQ2SEQ_JAX_MIMALLOC", "1") == "0" \
      or "mimalloc" in environ.get("LD_PRELOAD", "") or accelerator_installed(environ):
    return {}
  library = find_mimalloc()
  if library is None:
    return {}
  return {"SEQ2SEQ_JAX_MIMALLOC": "0", "MIMALLOC_PURGE_DELAY": "-1",
          "LD_PRELOAD": ":".join(filter(None, [library, environ.get("LD_PRELOAD")]))}


def device_environment(batch_size: int | None, environ=os.environ) -> dict[str, str]:
  """The XLA_FLAGS that give this process one CPU device per core for batch_size ({}
  when that is one device, or when XLA_FLAGS already sets a count)."""
  flags = environ.get("XLA_FLAGS", "")
  devices = requested_cpu_devices(batch_size, environ)
  if devices == 1 or _DEVICE_COUNT_FLAG in flags:
    return {}
  return {"XLA_FLAGS": " ".join(filter(None, [
      flags, f"{_DEVICE_COUNT_FLAG}={devices}", "--xla_cpu_multi_thread_eigen=false"]))}


def launch_environment(batch_size: int | None, environ=os.environ) -> dict[str, str]:
  """The variables to add for this process to run as described above ({} when there
  is nothing to add)."""
  return {**allocator_environment(environ), **device_environment(batch_size, environ)}


def maybe_reexec(batch_size: int | None) -> None:
  """Re-runs this command (`python -m seq2seq_jax ...`) with launch_environment's
  variables, unless it has none to add or JAX has already started. SIGINT and SIGTERM
  are blocked across the exec: one that comes meanwhile waits, pending, for the new
  process's handlers (unblock_stop_signals) instead of being lost with this image."""
  changes = launch_environment(batch_size)
  if not changes or "jax" in sys.modules:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  blockable = hasattr(signal, "pthread_sigmask")  # not on Windows
  before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if blockable else None
  # the new process unblocks them only where they were not blocked already
  marker = {_SIGNALS_BLOCKED_ENV: "1"} if blockable and not set(STOP_SIGNALS) & before else {}
  try:
    os.execve(sys.executable, [sys.executable, "-m", "seq2seq_jax", *sys.argv[1:]],
              dict(os.environ, **changes, **marker))
  finally:  # only if the exec failed
    if blockable:
      signal.pthread_sigmask(signal.SIG_SETMASK, before)


# -- stopping the command: SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler) ----------------
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNALS_BLOCKED_ENV = "SEQ2SEQ_JAX_SIGNALS_BLOCKED"  # set by maybe_reexec for the new image
_STOPPING_PARENT_ENV = "SEQ2SEQ_JAX_STOPPING_PARENT"  # the pid of a parent that forwards stops
_received: list[int] = []
_deferred = False  # inside stop_deferred(): record only


def forwarding_environment() -> dict[str, str]:
  """For the worker processes a command starts and stops itself (a sweep's --workers):
  the parent forwards its first signal to each worker, and kills them on its second."""
  return {_STOPPING_PARENT_ENV: str(os.getpid())}


def parent_forwards_stops() -> bool:
  """This process is a worker whose parent (still alive: it is still our parent) forwards
  the user's stop to it. A terminal's Ctrl-C reaches both, so a repeated signal here is
  the same stop forwarded, not the "stop now" it is elsewhere: that one is the parent's
  to give, by killing the worker. Without this, the forward cut a worker's checkpoint
  save short."""
  return os.environ.get(_STOPPING_PARENT_ENV) == str(os.getppid())


def record_stop(signum: int) -> bool:
  """Records a SIGINT/SIGTERM (the command line's handlers and the training loop's both
  do); True where it is to stop the command at once: the first one, or a repeated one
  (a second Ctrl-C), unless it is a sweep worker's parent forwarding the same stop."""
  repeated = bool(_received)
  _received.append(signum)
  return not (repeated and parent_forwards_stops())


def _stop(signum, frame):
  del frame
  if record_stop(signum) and not _deferred:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_signals_to_catch() -> tuple[int, ...]:
  """STOP_SIGNALS but a SIGINT ignored by whoever started the process (nohup, `cmd &` in a
  script): that one stays ignored."""
  return tuple(signum for signum in STOP_SIGNALS
               if not (signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN))


@contextlib.contextmanager
def stop_deferred():
  """While JAX's and TensorStore's compiled extensions import (a command's first import of
  its modules), a signal is only recorded: a KeyboardInterrupt raised inside an extension's
  initialisation crashed the process with no message (exit 139) or left a half-imported
  module behind. It is raised when the block ends."""
  global _deferred
  outer = _deferred
  _deferred = True
  try:
    yield
  finally:
    _deferred = outer
  if not _deferred:
    raise_if_stopped()


def install_stop_handlers() -> dict[int, Any]:
  """For the command line: SIGINT and SIGTERM raise KeyboardInterrupt (named by the
  signal) and are recorded. The record matters where the KeyboardInterrupt is lost:
  Python drops one raised inside a callback of XLA's (jax's garbage-collection hook) and
  the command would go on as if nothing happened; the training loop checks the record
  before its first step, serve before it listens (raise_if_stopped). A SIGINT ignored by
  whoever started the process (nohup, `cmd &` in a script) stays ignored. Returns the
  previous handlers for restore_handlers; outside the main thread it changes nothing."""
  _received.clear()
  previous = {}
  for signum in stop_signals_to_catch():
    try:
      previous[signum] = signal.signal(signum, _stop)
    except ValueError:  # not the main thread
      return previous
  return previous


def unblock_stop_signals() -> None:
  """In the process maybe_reexec started, once install_stop_handlers has run: the signals
  it blocked across the exec are delivered now (one that came meanwhile raises here)."""
  if os.environ.pop(_SIGNALS_BLOCKED_ENV, None) and hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def restore_handlers(previous: dict[int, Any]) -> None:
  """Puts back what install_stop_handlers replaced, and forgets what it recorded."""
  for signum, handler in previous.items():
    signal.signal(signum, handler)
  _received.clear()


def stop_signal_received() -> str | None:
  """The name of the first SIGINT/SIGTERM the command line's handlers received (None:
  none), whether or not its KeyboardInterrupt reached the command."""
  return signal.Signals(_received[0]).name if _received else None


def raise_if_stopped() -> None:
  """Raises the KeyboardInterrupt of a signal received earlier whose own was lost or
  deferred: before a command's long phase (training, serving) starts."""
  received = stop_signal_received()
  if received is not None:
    raise KeyboardInterrupt(received)


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompilationCounter:
  """XLA compilations (every jit cache miss, any function) while open: a jax.monitoring
  listener added on enter and removed on exit, so nothing stays registered.

    with CompilationCounter() as compilations:
      ...
      compilations.count
  """

  def __init__(self):
    self.count = 0

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == _COMPILE_EVENT:
      self.count += 1

  def __enter__(self) -> "CompilationCounter":
    import jax
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    import jax
    jax.monitoring.unregister_event_duration_listener(self._listen)

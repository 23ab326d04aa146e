"""Checkpoints: the only module that calls Orbax.

A checkpoint step holds two items:
  state  params, optimizer state and step (arrays, StandardSave)
  meta   config, vocabularies, data position, RNG and metrics (JSON)
so a workdir alone is enough to restore a model and translate.

Faults are turned into CheckpointError with a message naming the fix:
  * a step is written into `<step>.orbax-checkpoint-tmp` and renamed when
    complete, so a process killed during a save (even kill -9) leaves the older
    steps intact; the unfinished directory is removed when the workdir is next
    opened for training;
  * a damaged step (truncated, missing or altered files, found with the manifest
    of sizes and SHA-256 sums written after each save, or unreadable by Orbax) is
    skipped with a warning naming it and the step used instead; a later save of
    the same step number first moves the damaged directory aside (`<step>.damaged`);
  * a save that fails (full disk, read-only or unwritable directory) removes its
    unfinished files and leaves the earlier steps as they were.

Retention is done here with Orbax's public API: the metrics of each step are kept in
the step's manifest, and after each save the steps that are neither among the newest
`keep` nor the best by `best_metric` are deleted. Steps written by 0.1 (manifest
version 1) have their metrics in their own `meta` item instead.

Importing this module changes nothing process-wide and imports neither JAX nor Orbax
(the command line calls quiet_orbax_background_errors() before it decides whether to
re-execute itself with a launch environment, which it only does while JAX is not loaded).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any

from seq2seq_jax.errors import CheckpointError
from seq2seq_jax.metrics import lower_is_better

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
UNFINISHED_CHECKS = 10  # rounds of removing a failed save's temporary directory
TMP_SUFFIX = ".orbax-checkpoint-tmp"
DAMAGED_SUFFIX = ".damaged"
# a step this run restored, moved aside while it is saved again (deleted once saved)
REPLACED_SUFFIX = ".replaced"
# Size and SHA-256 of every file of a finished step, written after Orbax renamed it:
# a truncated, deleted or altered file is found before Orbax reads the step.
# Version 2 adds the step's metrics ("metrics": {name: value} or null).
MANIFEST = "seq2seq_jax_files.json"
MANIFEST_VERSION = 2
CHECKED_ITEMS = ("state", "meta")
ORBAX_METRICS_ITEM = "metrics"  # where 0.1 had Orbax write a step's metrics


def _primary() -> bool:
  """Multi-host runs: one process changes files outside Orbax's own writes."""
  import jax
  return jax.process_index() == 0


def _sync(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"seq2seq_jax_checkpoint_{name}")


def _short(error: BaseException, limit: int = 240) -> str:
  """The first line of an error, cut to `limit` characters (Orbax's can be pages long)."""
  text = str(error).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  text = text.split(" See full TensorStore details")[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _root_cause(error: BaseException) -> BaseException:
  """The innermost cause: TensorStore's own message says which file and what is wrong."""
  seen = {id(error)}
  while error.__cause__ is not None and id(error.__cause__) not in seen:
    error = error.__cause__
    seen.add(id(error))
  return error


def _storage_reason(error: BaseException) -> str | None:
  """The file system's refusal behind an error ("No space left on device", ...), if any.

  Orbax and TensorStore wrap OSError in ValueError/RuntimeError messages such as
  `... Failed to write 517081 bytes to file 14: File too large [os_error_code='27']`.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return f"{os.strerror(error.errno)} (errno {error.errno})"
    match = re.search(r"os_error_code='?(\d+)", str(error))
    if match:
      code = int(match.group(1))
      return f"{os.strerror(code)} (errno {code})"
    if isinstance(error, OSError):
      return _short(error)
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's log lines stay off the terminal: routine absl warnings (e.g. "directory
  is read only"), and the tracebacks its threads log when a write fails, which
  reach the user as one CheckpointError instead. And the root logger keeps its handlers:
  absl's log() calls logging.basicConfig() where the root has none (absl 2.x), which
  left a program that had not configured logging (a notebook) with a handler of absl's
  choosing, and made its own basicConfig a no-op."""
  loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
  levels = [logger.level for logger in loggers]
  root_handlers = list(logging.root.handlers)
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
    if not root_handlers:  # basicConfig()'s handler alone: not one the program added meanwhile
      for handler in [h for h in logging.root.handlers if _is_basic_config_handler(h)]:
        logging.root.removeHandler(handler)


def _is_basic_config_handler(handler: logging.Handler) -> bool:
  """What logging.basicConfig() with no arguments adds: a StreamHandler to stderr in the
  BASIC_FORMAT."""
  return (type(handler) is logging.StreamHandler and handler.stream is sys.stderr
          and handler.formatter is not None
          and handler.formatter._fmt == logging.BASIC_FORMAT)  # noqa: SLF001


def orbax_checkpoint():
  """orbax.checkpoint, imported quietly (absl logs while Orbax's modules load, see
  _quiet_orbax)."""
  with _quiet_orbax():
    import orbax.checkpoint as ocp
  return ocp


_NOISE = ("Event loop is closed", "Encountered error while", "OCDBT database",
          "os_error_code")


def _is_orbax_noise(error: BaseException | None) -> bool:
  """Errors that Orbax's aborted reads or writes leave behind in other threads."""
  text = str(error)
  return isinstance(error, Exception) and any(s in text for s in _NOISE)


class _OrbaxNoiseFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (_is_orbax_noise(error) or any(s in record.getMessage() for s in _NOISE))


# Orbax's (de)serialization coroutines, by name
_UNAWAITED = (r"coroutine '(?:\w+\.)*(_read_\w*|_open_and_write|_background_serialize|write_fragment|"
              r"async_(de)?serialize\w*)' was never awaited")


def _noise_hook(previous_hook):
  """sys.unraisablehook that drops Orbax's leftover reports and passes on the rest."""
  def hook(unraisable):
    if _is_orbax_noise(unraisable.exc_value) or "orbax" in repr(unraisable.object):
      log.debug("ignored after a failed checkpoint read or write: %r", unraisable.exc_value)
      return
    previous_hook(unraisable)
  return hook


@contextlib.contextmanager
def _orbax_noise_dropped():
  """While a read or write that may fail runs (and the garbage of a failed one is
  collected), the reports its aborted asyncio work leaves behind are dropped; the
  hook, filter and warning filters are as they were afterwards."""
  previous_hook = sys.unraisablehook
  sys.unraisablehook = hook = _noise_hook(previous_hook)
  noise_filter = _OrbaxNoiseFilter()
  logging.getLogger("asyncio").addFilter(noise_filter)
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", category=RuntimeWarning, message=_UNAWAITED)
      yield
  finally:
    logging.getLogger("asyncio").removeFilter(noise_filter)
    if sys.unraisablehook is hook:  # unless someone else replaced it meanwhile
      sys.unraisablehook = previous_hook


# What Orbax (run_sync, without uvloop) raises when called inside a running event loop.
_NO_NESTED_LOOP = "nest_asyncio is not installed"

# The longest wait for the reads in flight when an Orbax read failed (milliseconds on a
# local disk).
_SETTLE_SECONDS = 5.0


def _orbax_task(obj: Any, asyncio: Any) -> bool:
  """An asyncio task of Orbax's left pending on its closed event loop. Any other object,
  a task of the caller's own included, is not one (whatever its state)."""
  try:
    if not issubclass(type(obj), asyncio.Task) or obj.done() or not obj.get_loop().is_closed():
      return False
    code = getattr(obj.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
  except Exception:  # e.g. a future whose __init__ never ran: not Orbax's
    return False


def _settle_aborted_read() -> None:
  """After a failed read: Orbax closes its event loop with the rest of the reads still
  pending there (asyncio tasks), and TensorStore's threads finish the chunk reads in flight
  and then call back into that closed loop ("Event loop is closed"). Until the last
  callback has run, the abandoned tasks are still referenced; then they are garbage, and
  collecting them reports each ("Task was destroyed but it is pending", "exception was
  never retrieved", with tracebacks). Waiting until none of Orbax's is left makes all of
  that happen now, while _orbax_noise_dropped drops it, rather than on stderr at some later
  garbage collection in the caller's program. Best effort: it never raises, and gives up
  after _SETTLE_SECONDS (reads in flight on a slow file system)."""
  import asyncio
  deadline = time.monotonic() + _SETTLE_SECONDS
  try:
    while True:
      gc.collect()
      if not any(_orbax_task(obj, asyncio) for obj in gc.get_objects()):
        return
      if time.monotonic() > deadline:
        return
      time.sleep(0.01)
  except Exception as error:  # the fallback to an older step matters more than the noise
    log.debug("could not settle Orbax's aborted read: %r", error)


_quieted = False


def quiet_orbax_background_errors() -> None:
  """Keeps Orbax's background error reports off stderr for the rest of the process.

  For the command-line entry point only (cli.main calls it): it owns the process,
  whereas a library must leave the logging, hooks and warning filters of the program
  that imports it as they are, so nothing in this module calls it.

  When Orbax fails to read a damaged step or to write one (full disk), the rest of its
  asyncio reads and writes report their errors later, from other threads ("Event loop
  is closed", "Task exception was never retrieved", "coroutine ... was never awaited"),
  as tracebacks on stderr; and it logs routine facts ("directory is read only") as
  absl warnings. The command has already said what happened in one line (the
  CheckpointError, or the warning naming the damaged step and the one used instead):
  this drops those reports, and only those. Calling it again does nothing.
  """
  global _quieted
  if _quieted:
    return
  _quieted = True
  logging.getLogger("absl").setLevel(logging.ERROR)
  sys.unraisablehook = _noise_hook(sys.unraisablehook)
  logging.getLogger("asyncio").addFilter(_OrbaxNoiseFilter())
  warnings.filterwarnings("ignore", category=RuntimeWarning, message=_UNAWAITED)


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _step_files(step_dir: str) -> dict[str, int]:
  """{relative path: size} of the files Orbax restores from (state and meta)."""
  files = {}
  for item in CHECKED_ITEMS:
    for root, _, names in os.walk(os.path.join(step_dir, item)):
      for name in names:
        path = os.path.join(root, name)
        files[os.path.relpath(path, step_dir)] = os.path.getsize(path)
  return files


def write_manifest(step_dir: str, metrics: dict[str, float] | None = None) -> None:
  """Records size and SHA-256 of each file of a finished step, and its metrics (atomically)."""
  files = {rel: [size, _file_digest(os.path.join(step_dir, rel))]
           for rel, size in sorted(_step_files(step_dir).items())}
  from seq2seq_jax.workdir import write_atomically
  write_atomically(os.path.join(step_dir, MANIFEST),
                   json.dumps({"version": MANIFEST_VERSION, "files": files, "metrics": metrics}))


def read_manifest(step_dir: str) -> tuple[dict[str, Any] | None, str | None]:
  """(manifest, None); (None, None) when the step has none; (None, why) when unreadable."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None, None  # written by an older version, or killed just before
  except (OSError, ValueError) as error:
    return None, f"its file list {MANIFEST} is unreadable ({_short(error)})"
  if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
    return None, f"its file list {MANIFEST} is not a file list"
  return manifest, None


def check_manifest(step_dir: str) -> str | None:
  """None when the step's files match its manifest (or it has none); else what differs."""
  manifest, _ = read_manifest(step_dir)
  if manifest is None:
    return None  # none, or unreadable: Orbax decides
  try:
    files = [(rel, int(size), str(digest)) for rel, (size, digest) in manifest["files"].items()]
  except (TypeError, ValueError):
    return None
  for rel, size, digest in files:
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    if os.path.getsize(path) != size:
      return f"{rel} has {os.path.getsize(path)} bytes instead of {size}"
    if _file_digest(path) != digest:
      return f"{rel} does not match its checksum"
  return None


def _manifest_version(manifest: dict[str, Any]) -> int:
  """The manifest's format version (1: written by 0.1, without metrics)."""
  version = manifest.get("version", 1)
  return version if isinstance(version, int) and not isinstance(version, bool) else 1


class Checkpointer:
  """Keeps the newest `keep` checkpoints and the best by `best_metric` (larger is
  better, unless its name ends in "loss")."""

  def __init__(self, workdir: str, keep: int = 2, best_metric: str = "val/exact_match",
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self.keep = keep
    self.best_metric = best_metric
    self.larger_is_better = not lower_is_better(best_metric)
    self.read_only = read_only
    self._meta_metrics: dict[int, dict[str, Any] | None] = {}  # steps written by 0.1
    self._warned: set[int] = set()  # steps whose unreadable metrics were reported
    self._unlisted: set[int] = set()  # steps reported as having no file list
    self._restored: set[int] = set()  # steps this Checkpointer read back whole
    self._closed = False
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"'{self.directory}' is a file, not a checkpoint directory. "
                            "Move it away or use a new --workdir.")
    ocp = orbax_checkpoint()
    try:
      if not read_only:
        self._settle_replaced()  # before _remove_temporary's sync: every host sees the step
        self._remove_temporary()
      with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(
            read_only=read_only, create=not read_only,
            # done above, before Orbax starts: its own clean-up runs in a thread that a
            # command failing early leaves running at exit (a traceback after the error)
            cleanup_tmp_directories=False,
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))
    except Exception as error:
      raise CheckpointError(f"cannot use checkpoint directory '{self.directory}': "
                            f"{_short(error)}. Check that the workdir is a writable "
                            "directory.") from error

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _remove_temporary(self) -> None:
    """Deletes the unfinished `<step>.orbax-checkpoint-tmp` directories of a killed run."""
    if _primary():
      try:
        names = [n for n in os.listdir(self.directory) if TMP_SUFFIX in n]
      except FileNotFoundError:
        names = []
      for name in names:
        path = os.path.join(self.directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          with contextlib.suppress(OSError):
            os.remove(path)
        if os.path.lexists(path):
          log.warning("warning: could not remove the unfinished checkpoint %s", path)
    _sync("remove_temporary")

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The step with the best `best_metric` (the newest of equal ones); None when no
    step has that metric."""
    scored = [(score, step) for step in self.steps() if (score := self._score(step)) is not None]
    return max(scored)[1] if scored else None

  def step_metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics saved with a step: from its manifest, or for a step written by 0.1
    (manifest version 1, metrics kept by Orbax) from its meta item. None when it has
    none or they are unreadable (with a warning): such a step cannot be the best."""
    manifest, why = read_manifest(self._step_dir(step))
    if manifest is not None and _manifest_version(manifest) >= 2:
      metrics = manifest.get("metrics")
      if metrics is None or isinstance(metrics, dict):
        return metrics
      why = f"the metrics in {MANIFEST} are {type(metrics).__name__}, not a mapping"
    if why is None:  # version 1, or no manifest
      if manifest is None:
        self._warn_unlisted(step)
        return None
      return self._metrics_in_meta(step)
    if manifest is None:  # the list itself does not read: one warning says both
      self._warn_unlisted(step, why)
    else:
      self._warn_unreadable(step, why)
    return None

  def _metrics_in_meta(self, step: int) -> dict[str, Any] | None:
    """A 0.1 step's metrics, from its meta item (read once). Steps for which 0.1 had
    Orbax write no metrics file had no metrics (or none with the best metric)."""
    if step not in self._meta_metrics:
      metrics = None
      if os.path.isdir(os.path.join(self._step_dir(step), ORBAX_METRICS_ITEM)):
        meta, why = self._read_meta(step)
        metrics = meta.get("metrics") if isinstance(meta, dict) else None
        if why is not None:  # damaged meta: restore() reports it if it is used
          self._warn_unreadable(step, f"its meta item is unreadable ({why})")
        elif metrics is not None and not isinstance(metrics, dict):
          self._warn_unreadable(step, "the metrics in its meta item are not a mapping")
          metrics = None
      self._meta_metrics[step] = metrics
    return self._meta_metrics[step]

  def _read_meta(self, step: int) -> tuple[Any, str | None]:
    """(the step's meta item, None), or (None, why it did not read)."""
    import orbax.checkpoint as ocp
    try:
      with _quiet_orbax():
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"], None
    except Exception as error:
      return None, _short(_root_cause(error))

  def read_meta(self, step: int) -> dict[str, Any] | None:
    """The meta item of a step alone, without its arrays (None where it does not read:
    restore() then says why, or falls back to another step)."""
    meta, _ = self._read_meta(step)
    return meta if isinstance(meta, dict) else None

  def _warn_unlisted(self, step: int, unreadable: str | None = None) -> None:
    """A step without its file list: deleted, the run was killed (or its disk full)
    between Orbax's save and the list, or a run still training is writing it now.
    Every version of seq2seq_jax wrote one. unreadable: why a list that is there does
    not read (cut short, say); Orbax's own checks are then all that is left."""
    if step in self._unlisted:
      return
    self._unlisted.add(step)
    if unreadable is not None:
      log.warning("warning: checkpoint %d: %s, so its files cannot be verified (Orbax's own "
                  "checks only) and it cannot be chosen as the best checkpoint.", step,
                  unreadable)
    else:
      log.warning("warning: checkpoint %d has no file list (%s; a run still training may "
                  "be writing it): its files cannot be verified and it cannot be chosen as "
                  "the best checkpoint.", step, MANIFEST)

  def _warn_unreadable(self, step: int, why: str) -> None:
    if step not in self._warned:
      self._warned.add(step)
      log.warning("warning: the metrics of checkpoint %d are unreadable (%s); it cannot be "
                  "chosen as the best checkpoint.", step, why)

  def _score(self, step: int) -> float | None:
    """The step's `best_metric`, oriented so that larger is better; None: it has none."""
    metrics = self.step_metrics(step)
    if not metrics or self.best_metric not in metrics:
      return None
    value = metrics[self.best_metric]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
      self._warn_unreadable(step, f"{self.best_metric} is {value!r}, not a number")
      return None
    return float(value) if self.larger_is_better else -float(value)

  def _delete_old(self) -> None:
    """Deletes the steps that are neither among the newest `keep` nor the best."""
    steps = self.steps()
    kept = set(steps[-max(self.keep, 1):])
    best = self.best_step()
    if best is not None:
      kept.add(best)
    for step in steps:
      if step in kept:
        continue
      try:
        with _quiet_orbax():
          self.manager.delete(step)
      except Exception as error:  # the new step is saved: an old one left over is harmless
        log.warning("warning: could not delete the old checkpoint %d (%s)", step, _short(error))
      self._meta_metrics.pop(step, None)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, step: int) -> str:
    """Before a step is saved again, its old copy is moved aside; returns where to. One
    this Checkpointer restored (a run stopped after its epoch's last batch resumes there,
    and saves that step again with the epoch's metrics) goes to STEP.replaced, deleted once
    the new copy is saved and put back if that fails; one that was not readable to
    STEP.damaged, kept, with a warning."""
    path = self._step_dir(step)
    if step in self._restored:
      target = path + REPLACED_SUFFIX
      if _primary() and os.path.exists(path):
        shutil.rmtree(target, ignore_errors=True)  # a kill's leftover: the step is newer
        os.rename(path, target)
    else:
      target, n = path + DAMAGED_SUFFIX, 1
      while os.path.exists(target):
        n += 1
        target = f"{path}{DAMAGED_SUFFIX}-{n}"
      if _primary() and os.path.exists(path):
        os.rename(path, target)
        log.warning("warning: checkpoint %d already existed (it was not readable); moved it "
                    "to %s before saving step %d again.", step, target, step)
    _sync(f"move_aside_{step}")
    self._forget(step)
    return target

  def _forget(self, step: int) -> None:
    """What was read of a step whose files changed."""
    self._meta_metrics.pop(step, None)
    self._warned.discard(step)
    self._restored.discard(step)
    self.manager.reload()

  def _settle_replaced(self) -> None:
    """A kill while a restored step was saved again left STEP.replaced: deleted where the
    new copy is complete, else put back as the step (nothing that was saved is lost)."""
    if not _primary():
      return
    try:
      names = [n for n in os.listdir(self.directory) if n.endswith(REPLACED_SUFFIX)]
    except OSError:
      names = []
    for name in names:
      old, path = os.path.join(self.directory, name), self._step_dir(name[:-len(REPLACED_SUFFIX)])
      if os.path.isdir(path):
        shutil.rmtree(old, ignore_errors=True)
      else:
        os.rename(old, path)

  def _remove_unfinished(self, step: int) -> None:
    """Deletes what a failed save of step left (never a finished step). Orbax can report
    the failure while its other writer threads still create files, so the directory is
    checked again until it stays clean (a few tenths of a second at most)."""
    if _primary():
      for _ in range(UNFINISHED_CHECKS):
        try:
          names = [n for n in os.listdir(self.directory) if n.startswith(f"{step}{TMP_SUFFIX}")]
        except OSError:
          names = []
        if not names:
          break
        for name in names:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        time.sleep(0.05)  # then look again: a writer thread may still be creating files
    with contextlib.suppress(Exception):
      self.manager.reload()

  def save(self, step: int, state: dict[str, Any], meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Writes a step atomically (Orbax renames a finished temporary directory), then
    its manifest with `metrics`, then deletes the steps no longer kept; a failure
    leaves the earlier steps untouched."""
    import orbax.checkpoint as ocp
    if metrics is not None:
      metrics = {str(name): float(value) for name, value in metrics.items()}
    aside = None
    try:
      if step in self.steps():
        aside = self._move_aside(step)
      with _quiet_orbax():
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
    except Exception as error:  # Orbax wraps OSError in ValueError, RuntimeError, ...
      self._remove_unfinished(step)
      if aside is not None and aside.endswith(REPLACED_SUFFIX):
        if _primary() and os.path.isdir(aside):  # the restored copy is the step again
          os.rename(aside, self._step_dir(step))
        _sync(f"put_back_{step}")
        self._forget(step)
        self._restored.add(step)  # as read back: a later save replaces it again
      kept = [s for s in self.steps() if s != step]
      earlier = (f"the earlier checkpoints ({', '.join(map(str, kept))}) are untouched"
                 if kept else "no earlier checkpoint existed")
      reason = _storage_reason(error)
      if reason is not None:
        raise CheckpointError(
            f"could not save checkpoint {step} in '{self.directory}': {reason}. Free disk "
            "space or make the workdir writable, then run the same command again to "
            f"resume; {earlier}.") from error
      raise CheckpointError(
          f"could not save checkpoint {step} in '{self.directory}': "
          f"{type(_root_cause(error)).__name__}: {_short(_root_cause(error))}; {earlier}.",
      ) from error
    try:
      if _primary():
        write_manifest(self._step_dir(step), metrics)
    except OSError as error:  # the step itself is complete; it is only unverified
      log.warning("warning: could not write the file list of checkpoint %d (%s); it "
                  "cannot be chosen as the best checkpoint.", step, _short(error))
    if aside is not None and aside.endswith(REPLACED_SUFFIX) and _primary():
      shutil.rmtree(aside, ignore_errors=True)  # the new copy is saved (and listed, or warned)
    _sync(f"manifest_{step}")
    self._meta_metrics.pop(step, None)
    self._delete_old()

  def _host_target(self, step: int) -> Any:
    """The step's state as a restore target on this host's first device: a checkpoint
    written by N devices (per-core CPU devices, a GPU, a pod) restores on any machine."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(self._step_dir(step)) / "state")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        metadata.tree)

  def _read(self, step: int, abstract_state: Any | None) -> tuple[Any, str | None]:
    """(restored, None), or (None, why the step cannot be read)."""
    manifest, unreadable = read_manifest(self._step_dir(step))
    if manifest is None:
      self._warn_unlisted(step, unreadable)
    damage = check_manifest(self._step_dir(step))
    if damage is not None:
      return None, damage
    import orbax.checkpoint as ocp
    with _orbax_noise_dropped():
      try:
        with _quiet_orbax():
          state_args = ocp.args.StandardRestore(
              abstract_state if abstract_state is not None else self._host_target(step))
          return self.manager.restore(step, args=ocp.args.Composite(
              state=state_args, meta=ocp.args.JsonRestore())), None
      except Exception as error:  # any other damage to the files shows up here
        cause = _root_cause(error)
        why = f"{type(cause).__name__}: {_short(cause)}"
        del error, cause
      _settle_aborted_read()
    if _NO_NESTED_LOOP in why:  # not damage: no step would read in this program
      raise CheckpointError(
          f"Orbax cannot read a checkpoint from inside a running asyncio event loop (a "
          f"notebook, a server) in this installation ({why}): pip install uvloop (Linux, "
          "macOS) or nest_asyncio, or call restore from another thread.")
    return None, why

  def restore(self, abstract_state: Any | None = None, step: int | None = None,
              fallback: bool = True) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(state, meta, step) of `step` (default: the newest step).

    A corrupt or truncated checkpoint is skipped with a warning naming it and the
    step restored instead, the newest one that reads back; with fallback=False a
    requested step that does not read is an error. No readable step at all is a
    CheckpointError.
    """
    steps = self.steps()
    if not steps:
      from seq2seq_jax.workdir import training_there
      workdir = os.path.dirname(self.directory)
      holder = training_there(workdir)
      raise CheckpointError(
          f"no checkpoint in '{self.directory}'. " + (
              f"A run is training there ({holder}) and has not saved its first checkpoint: "
              "wait for it to save one." if holder else
              f"Train first with `seq2seq-jax train --workdir {workdir}`."))
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in '{self.directory}'; "
                            f"available: {', '.join(map(str, steps))}.")
    newest_first = list(reversed(steps))
    if step is None:
      candidates = newest_first
    else:
      candidates = [step] + ([s for s in newest_first if s != step] if fallback else [])
    failures: list[tuple[int, str]] = []
    for candidate in candidates:
      restored, why = self._read(candidate, abstract_state)
      if restored is None:
        failures.append((candidate, why))
        log.warning("warning: checkpoint %d in %s is damaged (%s)", candidate,
                    self.directory, why)
        continue
      if failures:
        log.warning("warning: restored checkpoint %d instead of the damaged checkpoint %d",
                    candidate, failures[0][0])
      self._restored.add(candidate)
      return restored["state"], restored["meta"], candidate
    details = "; ".join(f"step {s}: {why}" for s, why in failures)
    others = [s for s in newest_first if s not in dict(failures)]
    if others:  # the step asked for (fallback=False) is damaged; others were not tried
      raise CheckpointError(
          f"checkpoint {step} in '{self.directory}' is damaged ({details}). Choose another: "
          f"{', '.join(map(str, reversed(others)))} (or best / latest, which skip damaged "
          "steps), or put back its intact files from a backup.")
    raise CheckpointError(
        f"no readable checkpoint in '{self.directory}' ({details}). Start a fresh run in "
        "a new --workdir, or put back intact checkpoint files from a backup.")

  def close(self) -> None:
    """Finishes Orbax's work and releases it. Safe on error paths: a second call does
    nothing, and a failure to close is a warning, not an error hiding the first one."""
    if self._closed:
      return
    self._closed = True
    try:
      with _quiet_orbax():
        self.manager.wait_until_finished()
        self.manager.close()
    except Exception as error:
      log.warning("warning: could not close the checkpoints in %s (%s)", self.directory,
                  _short(error))

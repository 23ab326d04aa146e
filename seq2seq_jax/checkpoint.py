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
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from seq2seq_jax.errors import CheckpointError

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
UNFINISHED_CHECKS = 10  # rounds of removing a failed save's temporary directory
TMP_SUFFIX = ".orbax-checkpoint-tmp"
DAMAGED_SUFFIX = ".damaged"
# Size and SHA-256 of every file of a finished step, written after Orbax renamed it:
# a truncated, deleted or altered file is found before Orbax reads the step.
MANIFEST = "seq2seq_jax_files.json"
CHECKED_ITEMS = ("state", "meta")
# Orbax reports routine facts (e.g. "directory is read only") as absl warnings.
logging.getLogger("absl").setLevel(logging.ERROR)


def _primary() -> bool:
  """Multi-host runs: one process changes files outside Orbax's own writes."""
  return jax.process_index() == 0


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"seq2seq_jax_checkpoint_{name}")


def _metric_sign(best_metric: str) -> bool:
  """True when larger is better."""
  return not best_metric.endswith("loss")


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
  reach the user as one CheckpointError instead."""
  loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


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


_noise_silenced = False


def _silence_orbax_noise() -> None:
  """When Orbax fails to read a damaged step or to write one (full disk), the rest
  of its asyncio reads and writes report their errors later, from other threads
  ("Event loop is closed", "Task exception was never retrieved", "coroutine ...
  was never awaited"), as tracebacks on stderr. The failure itself reaches the
  user as one CheckpointError; drop those reports, and only those, from now on."""
  global _noise_silenced
  if _noise_silenced:
    return
  _noise_silenced = True
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if _is_orbax_noise(unraisable.exc_value) or "orbax" in repr(unraisable.object):
      log.debug("ignored after a failed checkpoint read or write: %r", unraisable.exc_value)
      return
    previous_hook(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_OrbaxNoiseFilter())
  warnings.filterwarnings(  # Orbax's (de)serialization coroutines, by name
      "ignore", category=RuntimeWarning,
      message=r"coroutine '(_read_\w*|_open_and_write|_background_serialize|write_fragment|"
      r"async_(de)?serialize\w*)' was never awaited")


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


def write_manifest(step_dir: str) -> None:
  """Records size and SHA-256 of each file of a finished step (atomically)."""
  files = {rel: [size, _file_digest(os.path.join(step_dir, rel))]
           for rel, size in sorted(_step_files(step_dir).items())}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"version": 1, "files": files}, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def check_manifest(step_dir: str) -> str | None:
  """None when the step's files match its manifest (or it has none); else what differs."""
  try:
    with open(os.path.join(step_dir, MANIFEST)) as f:
      files = json.load(f)["files"]
  except FileNotFoundError:
    return None  # written by an older version, or killed just before: Orbax decides
  except (OSError, ValueError, KeyError, TypeError):
    return None
  for rel, (size, digest) in files.items():
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    if os.path.getsize(path) != size:
      return f"{rel} has {os.path.getsize(path)} bytes instead of {size}"
    if _file_digest(path) != digest:
      return f"{rel} does not match its checksum"
  return None


class _Manager(ocp.CheckpointManager):
  """Orbax's manager, except that a step whose metrics file is damaged counts as a
  step without metrics instead of making the whole directory unusable."""

  def _get_metrics(self, step: int):
    try:
      return super()._get_metrics(step)
    except Exception as error:  # a truncated or garbled metrics file
      log.warning("warning: the metrics of checkpoint %d are unreadable (%s); it cannot "
                  "be chosen as the best checkpoint.", step, _short(error))
      return None


class Checkpointer:
  """Keeps the newest `keep` checkpoints and the best by `best_metric`."""

  def __init__(self, workdir: str, keep: int = 2, best_metric: str = "val/exact_match",
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self.best_metric = best_metric
    self.read_only = read_only
    larger_is_better = _metric_sign(best_metric)
    metric_fn = lambda metrics: float(metrics[best_metric])
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=metric_fn, reverse=not larger_is_better, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"'{self.directory}' is a file, not a checkpoint directory. "
                            "Move it away or use a new --workdir.")
    try:
      with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy,
            best_fn=metric_fn, best_mode="max" if larger_is_better else "min",
            keep_checkpoints_without_metrics=True,
            read_only=read_only, create=not read_only,
            # unfinished `<step>.orbax-checkpoint-tmp` directories of a killed run
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=False,
        )
        self.manager = _Manager(self.directory, options=options,
                                item_names=("state", "meta"))
    except Exception as error:
      raise CheckpointError(f"cannot use checkpoint directory '{self.directory}': "
                            f"{_short(error)}. Check that the workdir is a writable "
                            "directory.") from error

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    try:
      return self.manager.best_step()
    except Exception:  # no metrics recorded yet
      return None

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _move_aside(self, step: int) -> None:
    """A step being saved again (its old copy was unreadable) keeps the old files."""
    path = self._step_dir(step)
    if _primary() and os.path.exists(path):
      target, n = path + DAMAGED_SUFFIX, 1
      while os.path.exists(target):
        n += 1
        target = f"{path}{DAMAGED_SUFFIX}-{n}"
      os.rename(path, target)
      log.warning("warning: checkpoint %d already existed (it was not readable); moved it "
                  "to %s before saving step %d again.", step, target, step)
    _sync(f"move_aside_{step}")
    self.manager.reload()

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
    its manifest; a failure leaves the earlier steps untouched."""
    if metrics is not None and self.best_metric not in metrics:
      metrics = None
    try:
      if step in self.steps():
        self._move_aside(step)
      _silence_orbax_noise()  # a failing write reports from several threads
      with _quiet_orbax():
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            metrics=metrics, force=True)
        self.manager.wait_until_finished()
    except Exception as error:  # Orbax wraps OSError in ValueError, RuntimeError, ...
      self._remove_unfinished(step)
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
        write_manifest(self._step_dir(step))
    except OSError as error:  # the step itself is complete; it is only unverified
      log.warning("warning: could not write the file list of checkpoint %d (%s)", step,
                  _short(error))

  def _host_target(self, step: int) -> Any:
    """The step's state as a restore target on this host's first device: a checkpoint
    written by N devices (per-core CPU devices, a GPU, a pod) restores on any machine."""
    from etils import epath
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(self._step_dir(step)) / "state")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        metadata.tree)

  def _read(self, step: int, abstract_state: Any | None) -> tuple[Any, str | None]:
    """(restored, None), or (None, why the step cannot be read)."""
    damage = check_manifest(self._step_dir(step))
    if damage is not None:
      return None, damage
    _silence_orbax_noise()  # an unverified step may still fail, from several threads
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
    gc.collect()  # Orbax's aborted reads: reported (and silenced) now rather than later
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
      raise CheckpointError(f"no checkpoint in '{self.directory}'. Train first with "
                            "`seq2seq-jax train --workdir DIR`.")
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
      return restored["state"], restored["meta"], candidate
    details = "; ".join(f"step {s}: {why}" for s, why in failures)
    raise CheckpointError(
        f"no readable checkpoint in '{self.directory}' ({details}). Start a fresh run in "
        "a new --workdir, or put back intact checkpoint files from a backup.")

  def close(self) -> None:
    with _quiet_orbax():
      self.manager.wait_until_finished()
      self.manager.close()

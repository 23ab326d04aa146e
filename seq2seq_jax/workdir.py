"""A run's workdir: its files and the meta stored with every checkpoint.

Atomic writes, metrics.jsonl, run.json, the config check, and the typed, versioned meta
stored with every checkpoint.

A workdir holds
  config.json     the run's Config (checked when the run resumes)
  vocab.json      vocabularies and data facts (the checkpoint holds them too)
  sentencepiece.src.model, sentencepiece.tgt.model
                  tokenizer=sentencepiece: the two models (the same with joint), as files
  run.json        command, versions and devices of the last start
  metrics.jsonl   one JSON record per log step and per epoch, then the final one
  results.json    the final metrics
  train.log       the log
  checkpoints/    Orbax steps (checkpoint.py), each with a CheckpointMeta
  .lock           held (flock) by the run training here: a second one is refused
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import json
import logging
import os
import platform
import re
import secrets
import stat
import sys
import time
from typing import Any

import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax.config import Config
from seq2seq_jax.errors import CheckpointError, UserError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
SWEEP_FILE = "sweep.json"  # written by seq2seq_jax.sweep: names the trials of a sweep directory
TRIAL_FILE = "trial.json"  # a sweep trial's overrides, status and wall time, in its workdir
# of a `seq2seq-jax export` directory: exported.MANIFEST_FILE, named again here because
# importing exported would import jax with this module (a test holds the two equal)
EXPORT_MANIFEST = "manifest.json"
# tokenizer=sentencepiece: the models of the source and target side, beside vocab.json.
SENTENCEPIECE_FILES = {"src": "sentencepiece.src.model", "tgt": "sentencepiece.tgt.model"}


def run_entries(workdir: str) -> list[str]:
  """The paths of what a run writes in its workdir (its checkpoints and logs, its config
  and vocabulary): what another command's output file must not replace."""
  from seq2seq_jax.checkpoint import CHECKPOINT_DIR
  from seq2seq_jax.tracking import CURVES_PNG, TENSORBOARD_DIR
  names = (CONFIG_FILE, VOCAB_FILE, *SENTENCEPIECE_FILES.values(), RUN_FILE, METRICS_FILE,
           RESULTS_FILE, LOG_FILE, LOCK_FILE, CHECKPOINT_DIR, TENSORBOARD_DIR, CURVES_PNG)
  return [os.path.join(workdir, name) for name in names]


# Settings that may differ when a run is resumed: they change no trained number.
# settings a run may resume with changed; lstm_impl changes the implementation, not the
# parameters (a run trained with the withdrawn lstm_impl=cudnn resumes on the scan)
RESUMABLE_CHANGES = ("log_every_steps", "num_summary_samples", "eval_decode_samples",
                     "keep_checkpoints", "checkpoint_every_steps", "tensorboard", "lstm_impl",
                     "time_budget_minutes", "cpu_crosscheck")


class WorkdirBusy(UserError):
  """Another process trains in this workdir (it holds its lock)."""

  def __init__(self, message: str, workdir: str):
    super().__init__(message)
    self.workdir = workdir


@contextlib.contextmanager
def exclusive(workdir: str):
  """Holds workdir for the run training in it: the same command started again in another
  terminal (or a second sweep worker on one trial) is refused in one line (WorkdirBusy)
  instead of writing every record twice. An flock: the system releases it when the
  process ends, killed or not, so no stale lock outlives a run. Where the file system
  has no flock (some network mounts), the run goes on unlocked, with a warning."""
  import fcntl  # POSIX; imported here, so the package still imports where it is missing
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      _lock_within(fd, seconds=0.1)  # training_there's probe holds it for an instant
    except BlockingIOError:
      holder = _lock_holder(fd)
      raise WorkdirBusy(f"workdir '{workdir}' is in use by a run training there ({holder}): "
                        "wait for it to end or stop it; for another run at the same time, "
                        "give a new --workdir.", workdir) from None
    except OSError as error:  # ENOLCK, EOPNOTSUPP: no locks on this file system
      log.warning("warning: cannot lock %s (%s): nothing stops a second run in this workdir",
                  workdir, error.strerror or error)
    else:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on {platform.node() or 'this host'}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
  """What the run holding the lock file fd wrote in it: "pid N on HOST"."""
  return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"


def _lock_within(fd: int, seconds: float) -> None:
  """An exclusive flock of fd, tried for up to seconds; BlockingIOError where it stays
  held (by a run: training_there's probe holds a shared one for an instant)."""
  import fcntl
  deadline = time.monotonic() + seconds
  while True:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      if time.monotonic() >= deadline:
        raise
      time.sleep(0.02)


def training_there(workdir: str) -> str | None:
  """Who holds workdir's lock ("pid N on HOST"), where a run is training there now; None
  where none is (no lock file, or its lock free). Tested with a shared lock, taken for
  an instant and released: the holder's is exclusive (and a run locking the workdir in
  that instant tries again, _lock_within)."""
  try:
    import fcntl
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
  except (ImportError, OSError):
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _lock_holder(fd)
  except OSError:  # no locks on this file system
    return None
  finally:
    os.close(fd)  # releases a shared lock taken
  return None


def check_run_directory(workdir: str) -> None:
  """A training run's workdir, for train, translate, evaluate, export and serve: a file,
  a sweep's directory (one workdir per trial) or an export is named, with what to give."""
  from seq2seq_jax.checkpoint import CHECKPOINT_DIR
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir '{workdir}' is a file, not a directory: give the directory of "
                    "a run (a new one starts a run, the one `seq2seq-jax train` wrote resumes "
                    "or restores it).")
  _check_no_file_above(workdir)
  if os.path.isfile(os.path.join(workdir, SWEEP_FILE)):
    trials = sorted(name for name in os.listdir(workdir)
                    if os.path.isdir(os.path.join(workdir, name, CHECKPOINT_DIR)))
    example = os.path.join(workdir, trials[0]) if trials else os.path.join(workdir, "TRIAL")
    raise UserError(f"'{workdir}' is a sweep's directory ({SWEEP_FILE}), one workdir per "
                    f"trial: give a trial's, e.g. {example} (`seq2seq-jax sweep` trains them).")
  # the checkpoints folder of a run (config.json and run.json beside it), or a step's in it
  inside = os.path.abspath(workdir)
  is_run = lambda folder: all(os.path.isfile(os.path.join(folder, name))
                              for name in (CONFIG_FILE, RUN_FILE))
  for _ in range(0 if is_run(workdir) else 2):
    inside, name = os.path.dirname(inside), os.path.basename(inside)
    if name == CHECKPOINT_DIR and is_run(inside):
      raise UserError(f"'{workdir}' is part of the checkpoints of the run in '{inside}', "
                      f"not a run: give the run's workdir, --workdir {inside}.")
  if (os.path.isfile(os.path.join(workdir, EXPORT_MANIFEST))
      and not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR))):
    raise UserError(f"'{workdir}' is an export, not a training workdir: serve it with "
                    f"`seq2seq-jax serve --exported {workdir}`, or load it with "
                    "seq2seq_jax.exported.ExportedTranslator.")


def _check_no_file_above(workdir: str) -> None:
  """A workdir to be made under a file (`--workdir pairs.tsv/run`) is named as such (the
  file system said "Not a directory")."""
  made = first_missing(workdir)  # the folder above it exists: a directory, or not
  above = made and os.path.dirname(made)
  if above and not os.path.isdir(above):
    raise UserError(f"workdir '{workdir}' is under '{above}', a file, not a directory: give a "
                    "path under a directory.")


def check_sweep_directory(workdir: str) -> None:
  """A sweep's directory is a directory, and not a training run's: `sweep` into a run's
  workdir would mix its trials and tables with the run's files."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir '{workdir}' is a file, not a directory: give the sweep a "
                    "directory (a new one starts it, its own one resumes it).")
  _check_no_file_above(workdir)
  if (not os.path.isfile(os.path.join(workdir, SWEEP_FILE))
      and os.path.isfile(os.path.join(workdir, CONFIG_FILE))):
    raise UserError(f"'{workdir}' holds a training run ({CONFIG_FILE}), not a sweep: give "
                    "the sweep a new --workdir.")


def first_missing(path: str) -> str | None:
  """The outermost folder of path that does not exist yet (None: path exists): what
  os.makedirs(path) creates lies under it."""
  path, missing = os.path.abspath(path), None
  while not os.path.exists(path):
    path, missing = os.path.dirname(path), path
  return missing


def remove_if_unused(workdir: str, made: str | None = None) -> None:
  """Removes a workdir a run made and left with nothing in it but its lock and train.log
  (the data could not be read, no pair fits, a setting was refused: the error went to
  stderr): no empty run is left behind to be mistaken for one; so are the folders above
  it up to made (the outermost one the run created), where empty. Called with the lock
  still held; the lock file goes last, so a run starting meanwhile finds it and waits."""
  try:
    names = set(os.listdir(workdir))
    if names <= {LOCK_FILE, LOG_FILE}:
      for name in sorted(names, key=lambda n: n == LOCK_FILE):
        os.remove(os.path.join(workdir, name))
      folder = os.path.abspath(workdir)
      while True:
        os.rmdir(folder)  # an OSError if not empty: the folders above stay too
        if made is None or folder == os.path.abspath(made):
          break
        folder = os.path.dirname(folder)
  except OSError:  # a file appeared, or the folder went: leave what is there
    pass


def _is_primary() -> bool:
  """Only process 0 writes a workdir's files (multi-host runs share one workdir)."""
  import jax
  return jax.process_index() == 0


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(type(value))


# names of this process's own file descriptors (/dev/stdout, /dev/fd/N, a shell's >(...)):
# written to through the descriptor, at its place, as `>&N` writes
_STANDARD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_DESCRIPTOR_NAME = re.compile(r"/(?:dev/fd|proc/(self|thread-self|\d+)/fd)/(\d+)")


def _own_descriptor(path: str) -> int | None:
  """The file descriptor of this process that path names, or None."""
  absolute = os.path.abspath(path)
  if absolute in _STANDARD_NAMES:
    return _STANDARD_NAMES[absolute]
  named = _DESCRIPTOR_NAME.fullmatch(absolute)
  if named is None or named.group(1) not in (None, "self", "thread-self", str(os.getpid())):
    return None
  return int(named.group(2))


_TEMPORARY_NAME = re.compile(r"(.+)\.(\d+)-[0-9a-f]{8}\.tmp")  # write_atomically's


def remove_stale_temporaries(workdir: str) -> None:
  """Removes the temporary files of the run's own files (config.json, metrics.jsonl...)
  that a killed run left in workdir (killed between write_atomically's write and its
  rename): called with the workdir's lock held, where no other run writes them. Any other
  file, a temporary one of another command's output included, is kept."""
  own = {os.path.basename(path) for path in run_entries(workdir)} | {TRIAL_FILE}
  try:
    names = os.listdir(workdir)
  except OSError:
    return
  for name in names:
    written_by = _TEMPORARY_NAME.fullmatch(name)
    if written_by and written_by.group(1) in own and int(written_by.group(2)) != os.getpid():
      with contextlib.suppress(OSError):
        os.remove(os.path.join(workdir, name))


def write_atomically(path: str, text: str | bytes) -> None:
  """A kill at any moment leaves the old file or the new one, never half of one: the text
  goes to a temporary file of a name no other file has, which then replaces the file (a
  new file: another hard link to the old one keeps the old text). A symbolic link is
  written through (its target replaced, the link kept), a replaced file keeps its
  permissions (the temporary file has them from the start), and what is not a regular file
  (a FIFO, a device such as /dev/null) is written into, as a shell's `>` writes, not
  replaced; a name of one of this process's file descriptors (/dev/stdout, /dev/fd/N, a
  shell's >(...)) is written to through it, where it stands, as `>&N` writes. An error
  names path (not the temporary file, which is removed)."""
  mode = "wb" if isinstance(text, bytes) else "w"
  encoding = None if isinstance(text, bytes) else "utf-8"
  fd = _own_descriptor(path)
  if fd is not None:  # reopened, a file behind it was emptied under what was written there
    for stream in (sys.stdout, sys.stderr):  # what the program wrote first, first
      with contextlib.suppress(AttributeError, OSError, ValueError):
        stream.flush()
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    try:
      while data:
        data = data[os.write(fd, data):]
    except OSError as error:
      error.filename = path
      raise
    return
  try:
    status = os.stat(path)  # follows links, the system's too
  except FileNotFoundError:
    status = None
  except OSError as error:  # a loop of links, say: as `>` says it
    error.filename = path
    raise
  if status is not None and not stat.S_ISREG(status.st_mode) and not stat.S_ISDIR(status.st_mode):
    try:
      with open(path, mode, encoding=encoding) as f:
        f.write(text)
    except OSError as error:
      error.filename = path
      raise
    return
  target = os.path.realpath(path)
  if status is not None and not os.access(target, os.W_OK):  # as `>` refuses it
    raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)", path)
  temporary = f"{target}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
  try:
    permissions = stat.S_IMODE(status.st_mode) if status is not None else 0o666  # less umask
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
    with open(fd, mode, encoding=encoding) as f:
      f.write(text)
    if status is not None:  # what the umask took off the old file's permissions
      with contextlib.suppress(OSError):
        os.chmod(temporary, stat.S_IMODE(status.st_mode))
    os.replace(temporary, target)
  except OSError as error:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    if error.filename in (temporary, target):
      error.filename = path
    raise


def read_json(path: str) -> Any | None:
  """A JSON file's value; None where it is missing or unreadable (e.g. a run stopped while
  writing it)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, value: Any) -> None:
  """value as indented JSON, atomically (process 0 only)."""
  if _is_primary():
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False,
                                      default=_json_default) + "\n")


def write_vocab(workdir: str, facts: dict[str, Any]) -> None:
  """vocab.json of a run's data facts (CheckpointMeta.data_facts), and its SentencePiece
  models as files beside it (process 0 only)."""
  write_json(os.path.join(workdir, VOCAB_FILE), facts)
  if facts.get("sentencepiece") and _is_primary():
    for side, model in sentencepiece_models(facts["sentencepiece"]).items():
      write_atomically(os.path.join(workdir, SENTENCEPIECE_FILES[side]), model)


def sentencepiece_field(src_model: bytes, tgt_model: bytes) -> dict[str, str]:
  """CheckpointMeta.sentencepiece of two SentencePiece models: base64 of their bytes."""
  return {"src": base64.b64encode(src_model).decode("ascii"),
          "tgt": base64.b64encode(tgt_model).decode("ascii")}


def sentencepiece_models(field: dict[str, str]) -> dict[str, bytes]:
  """{"src": bytes, "tgt": bytes} of a CheckpointMeta.sentencepiece field."""
  return {side: base64.b64decode(field[side]) for side in ("src", "tgt")}


# ---------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------

def append_metrics(workdir: str, record: dict[str, Any]) -> None:
  if not _is_primary():
    return
  with open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")


def _metric_lines(path: str):
  """(line, record) for each line of a metrics.jsonl; record is None for a line that is
  no JSON object: half-written by a run in progress or killed, or damaged (bytes that are
  not UTF-8 included)."""
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      readable = isinstance(record, dict) and isinstance(record.get("step", 0), (int, float))
      yield line, record if readable else None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl ([] if none); unreadable lines are skipped."""
  try:
    return [record for _, record in _metric_lines(os.path.join(workdir, METRICS_FILE))
            if record is not None]
  except FileNotFoundError:
    return []


def rewind_metrics(workdir: str, step: int) -> int:
  """Drops metrics.jsonl records written after `step` (the checkpoint a run resumes from,
  0 for a run that starts again without one):
  a run killed without its last checkpoint (kill -9, power loss) logged steps that the
  resumed run computes and logs again, so each step keeps one record and the curves never
  go back in time. A half-written or damaged line goes too. Returns the lines dropped."""
  path = os.path.join(workdir, METRICS_FILE)
  if not _is_primary() or not os.path.exists(path):
    return 0
  kept, later, unreadable = [], 0, 0
  for line, record in _metric_lines(path):
    if record is None:
      unreadable += 1
    elif record.get("step", 0) > step:
      later += 1
    else:
      kept.append(line if line.endswith("\n") else line + "\n")
  if later or unreadable:
    write_atomically(path, "".join(kept))
  if later:
    log.info("metrics.jsonl: dropped %d record(s) logged after checkpoint %d by the "
             "interrupted run; the resumed run logs those steps again", later, step)
  if unreadable:
    log.info("metrics.jsonl: dropped %d unreadable line(s) (half-written or damaged)", unreadable)
  return later + unreadable


# ---------------------------------------------------------------------------
# config.json, run.json
# ---------------------------------------------------------------------------

def write_run_info(workdir: str, argv: list[str] | None, devices: dict[str, Any]) -> None:
  """run.json: the command, the library versions and the devices of this start."""
  import flax
  import jax
  import optax

  from seq2seq_jax.checkpoint import orbax_checkpoint
  command = list(argv if argv is not None else sys.argv)
  if command and command[0].endswith(os.path.join("seq2seq_jax", "__main__.py")):
    command[0] = "seq2seq-jax"  # `python -m seq2seq_jax`, as train re-executes itself
  write_json(os.path.join(workdir, RUN_FILE), {
      "command": command,
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
                   "flax": flax.__version__, "optax": optax.__version__,
                   "orbax-checkpoint": orbax_checkpoint().__version__,
                   "numpy": np.__version__},
      **devices,
      "host": platform.node(),
      "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
  })


def check_workdir_config(workdir: str, config: Config) -> None:
  """Refuses to mix a new configuration into a workdir that holds another run."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as error:
    raise CheckpointError(f"'{path}' is unreadable ({error}): delete it to resume the run (its "
                          "checkpoints hold its settings, and they are checked), or pass a new "
                          "--workdir.") from None
  fields = {field.name for field in dataclasses.fields(Config)}
  if not isinstance(saved, dict) or not fields & set(saved):  # another program's config.json
    keys = ", ".join(sorted(map(str, saved))[:4]) if isinstance(saved, dict) else ""
    raise CheckpointError(f"'{path}' is not the configuration of a seq2seq-jax run "
                          f"({f'its keys: {keys}' if keys else 'no setting of one'}): train in "
                          "a new --workdir, or a folder without a config.json.")
  diffs = config_lib.describe_changes(saved, config, RESUMABLE_CHANGES)
  if diffs:
    raise CheckpointError(
        f"workdir '{workdir}' holds a run with a different configuration ({diffs}). "
        "To resume it, run the same command as before (its settings are in "
        f"{path}); to start fresh, pass a new --workdir. Its checkpoints were not touched.")


def check_checkpoints_kept(workdir: str) -> None:
  """Refuses to train over a run whose checkpoints are gone (checkpoints/ deleted to free
  a disk, or moved) while its records stay: the run started again from step 0 over them,
  said "dropped N record(s) logged after checkpoint 0 by the interrupted run" and replaced
  its results.json. (A run killed before its first checkpoint has an empty checkpoints/,
  records and no results.json: it starts again, as it should.)"""
  from seq2seq_jax.checkpoint import CHECKPOINT_DIR
  folder = os.path.join(workdir, CHECKPOINT_DIR)
  if os.path.lexists(folder) and not os.path.isdir(folder):
    return  # a file: the checkpointer names it
  kept = os.listdir(folder) if os.path.isdir(folder) else None
  results = os.path.isfile(os.path.join(workdir, RESULTS_FILE))
  metrics = os.path.join(workdir, METRICS_FILE)
  records = os.path.isfile(metrics) and os.path.getsize(metrics) > 0
  if kept is None and (results or records) or kept == [] and results:
    named = " and ".join(name for name, there in ((METRICS_FILE, records), (RESULTS_FILE, results))
                         if there)
    raise CheckpointError(f"workdir '{workdir}' holds a run's {named} but none of its "
                          f"checkpoints ({CHECKPOINT_DIR}/ is {'gone' if kept is None else 'empty'}):"
                          " training there would start again from step 0 over them. Put the "
                          "checkpoints back to resume the run, or train in a new --workdir.")


def write_config(workdir: str, config: Config) -> None:
  if _is_primary():
    write_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json())


def saved_best_metric(workdir: str, default: str = "val/exact_match") -> str:
  """The best_metric of the run in workdir (its config.json), else default."""
  try:
    with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
      return json.load(f).get("best_metric", default)
  except (OSError, ValueError, AttributeError):
    return default  # the checkpoint's own copy of the config is what counts


# ---------------------------------------------------------------------------
# The checkpoint meta: where a run stands, and what restoring it needs
# ---------------------------------------------------------------------------

META_VERSION = 2


@dataclasses.dataclass
class Progress:
  """Where training stands: epochs finished, batches of the current epoch done, steps."""
  epoch: int = 0
  batch: int = 0
  step: int = 0


@dataclasses.dataclass
class Totals:
  """Sums of a train step's counts over a window of steps."""
  loss_sum: float = 0.0
  weight: float = 0.0
  correct: float = 0.0
  tokens: float = 0.0

  def add(self, counts: dict[str, float]) -> None:
    self.loss_sum += counts["loss_sum"]
    self.weight += counts["weight"]
    self.correct += counts["correct"]
    self.tokens += counts["tokens"]

  @property
  def loss(self) -> float:
    return self.loss_sum / max(self.weight, 1.0)

  @property
  def token_accuracy(self) -> float:
    return self.correct / max(self.tokens, 1.0)


@dataclasses.dataclass
class RunningSums:
  """The log window's and the epoch's totals (kept in checkpoints: a resumed epoch's
  figures are those of the uninterrupted one)."""
  window: Totals = dataclasses.field(default_factory=Totals)
  epoch: Totals = dataclasses.field(default_factory=Totals)


@dataclasses.dataclass
class CheckpointMeta:
  """The JSON item saved beside each checkpoint's arrays: enough to restore the model
  from the workdir alone (config, vocabularies) and to resume where it stopped.

  Version 1 (seq2seq_jax 0.1) stored position {epoch, batch}, step and sums as lists
  {"window": [loss_sum, weight], "epoch": [loss_sum, weight, correct, tokens]}; it reads
  back into the same fields."""
  config: dict[str, Any]
  src_vocab: list[str]
  tgt_vocab: list[str]
  tokenizer: str = "char"
  progress: Progress = dataclasses.field(default_factory=Progress)
  sums: RunningSums = dataclasses.field(default_factory=RunningSums)
  rng: list[int] = dataclasses.field(default_factory=list)  # key data of the dropout base key
  metrics: dict[str, float] | None = None  # validation metrics at this step, if evaluated
  series: dict[str, Any] | None = None  # series.Scaler of series:PATH models
  keras: dict[str, int] | None = None  # keras_compat: the example's padded lengths
  imported_from: str | None = None  # import-keras: the Keras model file
  # tokenizer=sentencepiece: {"src", "tgt"}: base64 of each side's model (sentencepiece_field)
  sentencepiece: dict[str, str] | None = None
  data: dict[str, Any] | None = None  # the data read: pair counts, split fingerprints, packages
  # tokenizer=word: vocab.WORD_RULES of the vocabulary (None: saved before it, rules 1)
  word_rules: int | None = None
  version: int = META_VERSION

  def to_json(self) -> dict[str, Any]:
    value = {
        "version": self.version, "config": self.config, "src_vocab": self.src_vocab,
        "tgt_vocab": self.tgt_vocab, "tokenizer": self.tokenizer,
        "position": {"epoch": self.progress.epoch, "batch": self.progress.batch},
        "step": self.progress.step,
        "sums": {"window": dataclasses.asdict(self.sums.window),
                 "epoch": dataclasses.asdict(self.sums.epoch)},
        "rng": self.rng, "metrics": self.metrics,
    }
    for key in ("series", "keras", "imported_from", "sentencepiece", "data", "word_rules"):
      if getattr(self, key) is not None:
        value[key] = getattr(self, key)
    return value

  @classmethod
  def from_json(cls, value: dict[str, Any], where: str = "checkpoint") -> "CheckpointMeta":
    version = value.get("version", 1)
    if version > META_VERSION:
      raise CheckpointError(f"{where} was written by a newer seq2seq_jax (meta version "
                            f"{version}); upgrade seq2seq_jax to read it.")
    sums = value.get("sums") or {}
    totals = lambda part: (Totals(**part) if isinstance(part, dict)  # version 2
                           else Totals(*part))  # version 1: [loss_sum, weight, ...]
    running = RunningSums(totals(sums.get("window", {})), totals(sums.get("epoch", {})))
    position = value.get("position") or {}
    config = value["config"]
    return cls(
        config=config, src_vocab=value["src_vocab"], tgt_vocab=value["tgt_vocab"],
        # checkpoints from before word tokens were characters
        tokenizer=value.get("tokenizer", config.get("tokenizer", "char")),
        progress=Progress(position.get("epoch", 0), position.get("batch", 0),
                          value.get("step", 0)),
        sums=running, rng=value.get("rng") or [], metrics=value.get("metrics"),
        series=value.get("series"), keras=value.get("keras"),
        imported_from=value.get("imported_from"), sentencepiece=value.get("sentencepiece"),
        data=value.get("data"), word_rules=value.get("word_rules"), version=META_VERSION)

  def data_facts(self) -> dict[str, Any]:
    """What the data decided (vocabularies, SentencePiece models, scaler, Keras lengths):
    vocab.json, and equal across a resumed run and its checkpoint."""
    facts = {"src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab, "tokenizer": self.tokenizer}
    if self.series is not None:
      facts["series"] = self.series
    if self.keras is not None:
      facts["keras"] = self.keras
    if self.sentencepiece is not None:
      facts["sentencepiece"] = self.sentencepiece
    return facts

"""The Optuna study behind a sweep.

Its storage, sampler and pruner, trials asked in groups that can share one program,
heartbeats, and the retry of a dead worker's trials.

Every worker (a process on this machine or another) opens the same study; Optuna hands
each trial to one worker only. A declared sweep (grid, random, trials) enqueues its
trials once, in order; a searched one (`search` with TPE) asks the sampler for new ones
until `num_trials` exist. A worker records a heartbeat on its running trials; any worker
finding a running trial whose heartbeat is older than the grace period marks it failed
and enqueues it again with the same values, so its workdir, and its newest checkpoint,
are picked up where the dead worker left them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import threading
import time
import warnings
from typing import Any

from seq2seq_jax.errors import UserError

log = logging.getLogger(__name__)

JOURNAL_FILE = "study.journal"
STUDY_NAME = "seq2seq_jax"
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha")
SPARE = "spare"  # user attr: a trial asked beyond the budget, told failed and not listed
HEARTBEAT = "heartbeat"  # user attr: time.time() of the worker's last sign of life


def _optuna():
  try:
    import optuna
  except ImportError:
    raise UserError("sweeps need Optuna: pip install optuna (a dependency of seq2seq_jax).") from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def open_storage(workdir: str, url: str | None = None):
  """The study's storage: an RDB URL (sqlite:///..., postgresql://...), or by default a
  journal file in the sweep's workdir (one machine, or a shared file system)."""
  optuna = _optuna()
  if url:
    try:
      return optuna.storages.RDBStorage(url)
    except Exception as error:  # a wrong URL, a missing driver, a database it cannot open
      # SQLAlchemy adds lines ("Background on this error at: ..."): the first one says it
      first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
      raise UserError(f"--storage {url}: {first.strip()}") from None
  os.makedirs(workdir, exist_ok=True)
  path = journal_path(workdir)
  with reading_journal(path):  # it reads the whole journal
    return optuna.storages.JournalStorage(_journal_backend(path))


def journal_path(workdir: str) -> str:
  """The sweep's journal file, absolute: Optuna's lock is a symbolic link to it, which a
  relative path leaves dangling (a dead worker's lock was then never released, and the
  others spun on it)."""
  return os.path.abspath(os.path.join(workdir, JOURNAL_FILE))


def _journal_backend(path: str):
  """Optuna's journal file, whose writers first drop a record cut short at its end (a
  worker killed, or the disk full, as it wrote): Optuna reads past such a record, but
  appended the next one onto it, and from then on every read failed, in every worker."""
  return __getattr__("JournalBackend")(path)  # the class is made once Optuna is loaded


def _journal_backend_class():
  from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

  class JournalBackend(JournalFileBackend):
    __module__, __qualname__ = __name__, "JournalBackend"  # found again when unpickled

    def __init__(self, path: str):
      self.path = path
      self.lock = JournalFileSymlinkLock(path)  # Optuna's default lock, named to hold here
      super().__init__(path, lock_obj=self.lock)

    def append_logs(self, logs):
      self.lock.acquire()  # what every writer of the journal holds: none appends meanwhile
      try:
        _drop_a_cut_record(self.path)
        with open(self.path, "ab") as f:  # as Optuna writes its records
          f.write(("\n".join(json.dumps(record, separators=(",", ":")) for record in logs)
                   + "\n").encode("utf-8"))
          f.flush()
          os.fsync(f.fileno())
      finally:
        self.lock.release()

  return JournalBackend


def __getattr__(name: str):
  """JournalBackend, made (and kept) when first asked for: Optuna is imported late."""
  if name == "JournalBackend":
    if name not in globals():
      globals()[name] = _journal_backend_class()
    return globals()[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def reading_journal(path: str | None):
  """Optuna's errors reading a journal file (path; None: a database) as one line."""
  try:
    yield
  except (json.JSONDecodeError, UnicodeDecodeError) as error:  # not what Optuna wrote
    if path is None:
      raise
    raise UserError(f"the sweep's study {path} is damaged ({type(error).__name__}: {error}); "
                    "move it away to start the study afresh (the trials' workdirs stay), or "
                    "run the sweep with a new --workdir.") from None


def _drop_a_cut_record(path: str) -> None:
  """Truncates the journal after its last whole record (the writers' lock held)."""
  if not os.path.exists(path):  # moved away while the sweep ran: the write makes it again
    return
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    tail = b""
    while size and b"\n" not in tail:  # back to the last whole record's end
      step = min(size, 4096)
      f.seek(size - step)
      tail = f.read(step) + tail
      size -= step
    keep = size + tail.rfind(b"\n") + 1  # 0 where no record ended
    end = size + len(tail)
    if keep < end:
      log.warning("warning: %s ended in a record cut short (%d bytes: a write was "
                  "interrupted); dropping it", path, end - keep)
      f.truncate(keep)


def worker_seed() -> int:
  """0 for a sweep run in one process; for worker k of --workers N, k (the workers' samplers
  must not propose the same values); for a worker started by hand elsewhere, its pid."""
  if os.environ.get("SEQ2SEQ_JAX_SWEEP_WORKER"):
    return int(os.environ["SEQ2SEQ_JAX_SWEEP_WORKER"])
  return 0 if os.environ.get("SEQ2SEQ_JAX_SWEEP_JOINED") is None else os.getpid()


def _settings_class(kind: str, name: str):
  """The Optuna class a sampler or pruner name makes (make_sampler, make_pruner)."""
  optuna = _optuna()
  if kind == "sampler":
    return optuna.samplers.TPESampler if name == "tpe" else optuna.samplers.RandomSampler
  return {"median": optuna.pruners.MedianPruner, "asha": optuna.pruners.SuccessiveHalvingPruner
          }.get(name, optuna.pruners.NopPruner)


def check_settings(sampler: str, sampler_settings: dict[str, Any], pruner: str,
                   pruner_settings: dict[str, Any], where: str) -> None:
  """sampler_settings and pruner_settings are arguments their Optuna class takes, with
  values it accepts (made once to see): a misspelt key would otherwise stop the sweep with
  a traceback, or, for a class that takes none, be ignored. Optuna is imported only where
  settings are given."""
  for kind, name, settings in (("sampler", sampler, sampler_settings),
                               ("pruner", pruner, pruner_settings)):
    if not settings:
      continue
    cls = _settings_class(kind, name)
    taken = sorted(p for p in inspect.signature(cls).parameters if p != "seed")  # ours
    if "seed" in settings:
      raise UserError(f"{where}: {kind}_settings: give the sweep's own 'seed' instead (it "
                      "seeds the sampler, and each worker's differently).")
    unknown = sorted(set(settings) - set(taken), key=str)
    if unknown:
      accepted = f"it takes {', '.join(taken)}" if taken else "it takes none"
      raise UserError(f"{where}: {kind}_settings: {', '.join(map(str, unknown))} is no argument "
                      f"of {kind} '{name}' (Optuna's {cls.__name__}): {accepted}.")
    try:
      with warnings.catch_warnings():  # Optuna's experimental-feature warnings
        warnings.simplefilter("ignore")
        cls(**settings)
    except (TypeError, ValueError) as error:
      raise UserError(f"{where}: {kind}_settings {settings!r}: {error}") from None


def make_sampler(name: str, settings: dict[str, Any], seed: int):
  # declared trials are enqueued with their values: a random sampler only fills a spare ask
  return _settings_class("sampler", name)(seed=seed, **settings)


def make_pruner(name: str, settings: dict[str, Any]):
  return _settings_class("pruner", name)(**settings)


class SweepStudy:
  """The study of one sweep, as one worker sees it."""

  def __init__(self, sweep, workdir: str, storage_url: str | None = None):
    optuna = _optuna()
    self.optuna = optuna
    self.sweep = sweep
    self.storage = open_storage(workdir, storage_url)
    with reading_journal(None if storage_url else journal_path(workdir)):
      self.study = optuna.create_study(  # a damaged last record fails at its first write
          study_name=STUDY_NAME, storage=self.storage, load_if_exists=True,
          direction="maximize" if sweep.mode == "max" else "minimize",
          sampler=make_sampler(sweep.sampler, sweep.sampler_settings, sweep.seed + worker_seed()),
          pruner=make_pruner(sweep.pruner, sweep.pruner_settings))
    self._running: dict[int, Any] = {}  # trial number -> optuna.Trial, for heartbeats

  # -- trials -----------------------------------------------------------------------
  def enqueue_declared(self) -> None:
    """The declared trials (a search: those it enqueues before sampling), in order,
    once (a trial whose values exist is skipped)."""
    for trial in self.sweep.trials:
      self.study.enqueue_trial(dict(trial.overrides), user_attrs={"trial": trial.name},
                               skip_if_exists=True)

  def _listed(self, trials, every=None) -> list:
    """trials less the spare ones and those enqueued again since (`retry_of` a later one)."""
    trials = list(trials)
    every = trials if every is None else every
    # a spare copy (release) replaces nothing: its original still stands, and is what a
    # later run re-enqueues if the worker that had it never tells
    superseded = {t.user_attrs["retry_of"] for t in every
                  if "retry_of" in t.user_attrs and not t.user_attrs.get(SPARE)}
    return [t for t in trials if not t.user_attrs.get(SPARE) and t.number not in superseded]

  def _suggest(self, optuna_trial) -> dict[str, Any]:
    """The trial's values, suggested through the distributions of the declaration; a
    declared trial (grid, random, trials) only the keys it sets: the others stay the
    base config's, never drawn."""
    declared = None if self.sweep.searched else self.sweep.declared(
        optuna_trial.user_attrs.get("trial"))
    values = {}
    for key, space in self.sweep.space.items():
      if declared is not None and key not in declared.overrides:
        continue
      if isinstance(space, tuple):
        kind, low, high = space
        if kind == "int":
          values[key] = optuna_trial.suggest_int(key, low, high)
        else:
          values[key] = optuna_trial.suggest_float(key, low, high, log=kind == "log_uniform")
      else:
        values[key] = optuna_trial.suggest_categorical(key, list(space))
    return values

  def ask(self):
    """(optuna trial, sweep Trial), or None when nothing is left to run."""
    TrialState = self.optuna.trial.TrialState
    self.retry_stale()
    if not self.sweep.searched and not self.study.get_trials(deepcopy=False,
                                                             states=(TrialState.WAITING,)):
      return None
    optuna_trial = self.study.ask()
    frozen = self.study.get_trials(deepcopy=False)
    earlier = self._listed([t for t in frozen if t.number < optuna_trial.number], frozen)
    over_budget = (len(earlier) >= self.sweep.num_trials if self.sweep.searched
                   else not self._was_enqueued(optuna_trial, frozen))
    if over_budget:  # another worker took the last one meanwhile
      optuna_trial.set_user_attr(SPARE, True)
      self.study.tell(optuna_trial, state=TrialState.FAIL)
      return None
    values = self._suggest(optuna_trial)
    try:
      trial = self.sweep.trial_for(values)
    except UserError as error:  # values each valid, not together (repeat with attention)
      log.warning("warning: the search drew %s, which are not valid settings together (%s); "
                  "drawing again", ", ".join(f"{k}={v}" for k, v in values.items()), error)
      optuna_trial.set_user_attr(SPARE, True)
      self.study.tell(optuna_trial, state=TrialState.FAIL)
      return self.ask() if self._asks_left() else None
    optuna_trial.set_user_attr("trial", trial.name)
    optuna_trial.set_user_attr(HEARTBEAT, time.time())
    if self._taken(optuna_trial.number, trial.name):  # the same values, asked by another
      optuna_trial.set_user_attr(SPARE, True)
      self.study.tell(optuna_trial, state=TrialState.FAIL)
      return self.ask() if self._asks_left() else None
    return optuna_trial, trial

  def _taken(self, number: int, name: str) -> bool:
    """Another trial holds this name (values) and was asked first: the lower number runs."""
    every = self.study.get_trials(deepcopy=False)
    return any(t.number < number and t.user_attrs.get("trial") == name
               for t in self._listed(every, every))

  def _asks_left(self) -> bool:
    self._asks = getattr(self, "_asks", 0) + 1
    return self._asks % 50 != 0  # a search space with fewer values than num_trials ends

  def _was_enqueued(self, optuna_trial, frozen) -> bool:
    for t in frozen:
      if t.number == optuna_trial.number:
        return "fixed_params" in t.system_attrs
    return False

  def ask_group(self, size: int) -> list:
    """Up to size (optuna trial, Trial) pairs; [] when the study is finished. While other
    workers still run the last trials, waits: a dead worker's trials come back (retry_stale)."""
    asked = []
    while len(asked) < size:
      pair = self.ask()
      if pair is not None:
        asked.append(pair)
        continue
      if asked or not self.others_running():
        break
      time.sleep(min(self.sweep.heartbeat_seconds, self.sweep.grace_seconds / 4))
    return asked

  def others_running(self) -> bool:
    TrialState = self.optuna.trial.TrialState
    return any(t.number not in self._running
               for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

  def reconcile(self, finished) -> None:
    """Trials the study has finished whose workdir is not (finished(name) is False: e.g.
    its results were deleted) are enqueued again, so their workdirs decide, as always."""
    TrialState = self.optuna.trial.TrialState
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    every = self.study.get_trials(deepcopy=False)
    for t in self._listed([t for t in every if t.state in done], every):
      name = t.user_attrs.get("trial")
      if name and t.params and not finished(name):
        self._enqueue_again(t)

  # -- outcomes ---------------------------------------------------------------------
  def complete(self, optuna_trial, value: float) -> None:
    self._tell(optuna_trial, value)

  def prune(self, optuna_trial) -> None:
    self._tell(optuna_trial, state=self.optuna.trial.TrialState.PRUNED)

  def fail(self, optuna_trial) -> None:
    self._tell(optuna_trial, state=self.optuna.trial.TrialState.FAIL)

  def release(self, optuna_trial) -> None:
    """A copy of a trial that another worker still trains (its heartbeat came late):
    finished as a spare, neither listed nor counted; the live worker tells the outcome."""
    optuna_trial.set_user_attr(SPARE, True)
    self.fail(optuna_trial)

  def _tell(self, optuna_trial, *args, **kwargs) -> None:
    """Tells an outcome; a trial another worker took for dead meanwhile (its heartbeat
    came late) is finished already: its values are enqueued again, and the worker that
    asks them records the outcome from the trial's workdir."""
    try:
      self.study.tell(optuna_trial, *args, **kwargs)
    except ValueError as error:
      if not str(error).startswith("Cannot tell a "):
        raise
      log.info("trial %s was taken for dead by another worker meanwhile; enqueued again, to "
               "be recorded from its workdir", optuna_trial.user_attrs.get("trial", optuna_trial.number))
      self._enqueue_again(optuna_trial)

  def requeue(self, optuna_trial) -> None:
    """An interrupted trial: failed, and enqueued again with its values (its workdir
    keeps its checkpoints, so the next worker resumes it)."""
    self.fail(optuna_trial)
    self._enqueue_again(optuna_trial)

  def _enqueue_again(self, trial) -> None:
    """A trial's values enqueued again, under its name: the declared trial it is (a
    declared trial suggests only its own keys), and counted as waiting, not as the
    failed copy it replaces."""
    name = trial.user_attrs.get("trial")
    self.study.enqueue_trial(dict(trial.params), user_attrs={
        "retry_of": trial.number, **({"trial": name} if name else {})})

  def report(self, optuna_trial, value: float, epoch: int) -> None:
    """Records an epoch's validation value (the pruner's evidence)."""
    optuna_trial.report(value, epoch)

  def should_prune(self, optuna_trial) -> bool:
    return optuna_trial.should_prune()

  # -- liveness ---------------------------------------------------------------------
  def retry_stale(self) -> None:
    """Running trials whose worker stopped beating: failed and enqueued again."""
    TrialState = self.optuna.trial.TrialState
    now = time.time()
    for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
      if t.number in self._running:
        continue
      beat = t.user_attrs.get(HEARTBEAT, t.datetime_start.timestamp() if t.datetime_start else now)
      if now - beat <= self.sweep.grace_seconds:
        continue
      try:
        self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
      except Exception:  # another worker retried it first
        continue
      self._enqueue_again(t)
      log.info("trial %s: its worker stopped (no heartbeat for %.0f s); enqueued again",
               t.user_attrs.get("trial", t.number), now - beat)

  @contextlib.contextmanager
  def beating(self, optuna_trials: list):
    """Records a heartbeat on these trials every heartbeat_seconds while inside."""
    before = {t.number: t.number in self._running for t in optuna_trials}  # nested: kept
    for t in optuna_trials:
      self._running[t.number] = t
    stop = threading.Event()

    def beat():
      while not stop.wait(self.sweep.heartbeat_seconds):
        for t in optuna_trials:
          with contextlib.suppress(Exception):  # a trial told meanwhile
            t.set_user_attr(HEARTBEAT, time.time())

    thread = threading.Thread(target=beat, name="seq2seq_jax-heartbeat", daemon=True)
    thread.start()
    try:
      yield
    finally:
      stop.set()
      thread.join()
      for t in optuna_trials:
        if not before[t.number]:
          self._running.pop(t.number, None)

  # -- reading ----------------------------------------------------------------------
  def states(self) -> dict[str, str]:
    """trial name -> complete | pruned | failed | running | waiting (a retried trial:
    its retry's state)."""
    names = {}
    for t in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number):
      if t.user_attrs.get(SPARE) or "trial" not in t.user_attrs:
        continue
      names[t.user_attrs["trial"]] = {"COMPLETE": "complete", "PRUNED": "pruned",
                                      "FAIL": "failed", "RUNNING": "running",
                                      "WAITING": "waiting"}[t.state.name]
    return names

  def params_by_name(self) -> dict[str, dict[str, Any]]:
    return {t.user_attrs["trial"]: dict(t.params)
            for t in self.study.get_trials(deepcopy=False)
            if "trial" in t.user_attrs and not t.user_attrs.get(SPARE) and t.params}

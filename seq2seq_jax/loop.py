"""The one training loop, over a leading trial axis.

A run is one trial; a vectorised sweep group is N trials that share one jitted program.

For every trial it keeps what a run needs: bit-exact resume, a checkpoint and exit on
SIGINT/SIGTERM, metrics.jsonl rewound after kill -9, a non-finite loss stopping that trial
(the others go on), newest + best checkpoints, per-epoch evaluation, the final evaluation
with the checkpoint `translate` uses, compilation counts, a progress bar, atomic files.

The host never waits for the device inside the loop: the step count is a host integer,
and step n's metrics are read after step n+1 is dispatched, at log, checkpoint and epoch
points only (on several CPU devices each step is waited for: parallel.DataParallel.settle).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax import crosscheck
from seq2seq_jax import data as data_lib
from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.checkpoint import Checkpointer
from seq2seq_jax.config import Config
from seq2seq_jax.errors import CheckpointError, UserError
from seq2seq_jax.inference import Translator, evaluate_pairs, load_run_data
from seq2seq_jax.metrics import sacrebleu_signatures, text_metrics
from seq2seq_jax.model import count_params, traced_dropout_rate
from seq2seq_jax.optim import build_optimizer, learning_rate_schedule
from seq2seq_jax.parallel import (DataParallel, any_process, is_primary,
                                  maybe_initialize_distributed, to_numpy)
from seq2seq_jax.runtime import (CompilationCounter, device_memory_bytes, parent_forwards_stops,
                                 raise_if_stopped, record_stop, stop_signals_to_catch)
from seq2seq_jax.steps import create_state, trial_train_step, vectorized_train_step
from seq2seq_jax.workdir import CheckpointMeta, Progress, RunningSums, Totals

log = logging.getLogger(__name__)

# Values that change no array shape: trials differing only in these share one program.
VECTORIZED_KEYS = ("learning_rate", "rmsprop_decay", "clip_norm", "dropout")


class TrainingInterrupted(Exception):
  """SIGINT/SIGTERM arrived; a checkpoint was saved. stopped: for each trial, the
  NonFiniteLoss or Pruned that had stopped it before (None: it was still training)."""

  def __init__(self, message: str, stopped: list | None = None):
    super().__init__(message)
    self.stopped = stopped


class NonFiniteLoss(UserError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass
class Pruned:
  """A trial stopped by the sweep's pruner after an epoch's evaluation."""
  epoch: int
  metrics: dict[str, float]


class ProgressDiffers(Exception):
  """The trials' checkpoints are at different positions: they cannot share a program."""


class _EveryTrialFailed(Exception):
  """No trial of the group is left to train."""


def vmap_group_key(config: Config) -> str:
  """Equal for configs that can train together as one program."""
  values = config.to_dict()
  for key in VECTORIZED_KEYS:
    values.pop(key)
  values["clipping"] = config.clip_norm > 0  # clipping or not: another optimizer state
  return json.dumps(values, sort_keys=True)


class SignalCatcher:
  """Turns SIGINT/SIGTERM into a flag checked between steps."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    raise_if_stopped()  # a signal before training whose KeyboardInterrupt was lost
    for signum in stop_signals_to_catch():
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    forwarded = parent_forwards_stops()
    if forwarded:  # a sweep worker's command line then knows a forward that comes after
      record_stop(signum)  # the loop (saving, telling the study) as the same stop
    if self.signum is not None:  # a second signal: stop now (a worker's parent kills it)
      if forwarded:
        return
      raise KeyboardInterrupt(signal.Signals(signum).name)
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


@contextlib.contextmanager
def _run_log(workdirs: list[str]):
  """The library's messages also go to each workdir's train.log while the run lasts;
  other processes of a multi-host run log warnings only. Restored afterwards."""
  logger = logging.getLogger("seq2seq_jax")
  level = logger.level
  if not is_primary():
    logger.setLevel(logging.WARNING)
  elif logger.level == logging.NOTSET or logger.level > logging.INFO:
    logger.setLevel(logging.INFO)
  handlers = []
  if is_primary():
    for workdir in workdirs:
      handler = logging.FileHandler(os.path.abspath(os.path.join(workdir, workdir_lib.LOG_FILE)),
                                    encoding="utf-8")
      handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
      logger.addHandler(handler)
      handlers.append(handler)
  try:
    yield
  finally:
    for handler in handlers:
      logger.removeHandler(handler)
      handler.close()
    logger.setLevel(level)


# ---------------------------------------------------------------------------
# The group of trials and its state
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class TrialRun:
  """One trial's own part of the loop: its config, workdir, checkpoints and sums."""
  config: Config
  workdir: str
  checkpointer: Checkpointer
  schedule: Any  # optax schedule: the logged learning rate
  sums: RunningSums = dataclasses.field(default_factory=RunningSums)
  failure: NonFiniteLoss | None = None
  pruned: Pruned | None = None
  writer: Any = None  # tracking.LiveWriter when config.tensorboard

  def record(self, record: dict[str, Any]) -> None:
    """A metrics.jsonl record, also to TensorBoard while training when asked."""
    workdir_lib.append_metrics(self.workdir, record)
    if self.writer is not None and is_primary():
      self.writer.record(record)

  @property
  def stopped(self) -> bool:
    return self.failure is not None or self.pruned is not None

  @property
  def name(self) -> str:
    return os.path.basename(os.path.normpath(self.workdir))


@dataclasses.dataclass
class EpochClock:
  """Wall time, samples and train-step compilations of the epoch in progress."""
  start: float
  samples: int = 0
  compilations: int = 0  # in the train step's calls only: the batch shapes' programs

  def rate(self) -> float:
    return self.samples / max(time.time() - self.start, 1e-9)


@dataclasses.dataclass
class Group:
  """What the trials share: data, model, devices, the jitted step and the progress."""
  base: Config
  trials: list[TrialRun]
  translator: Translator
  train_data: data_lib.Encoded
  val_pairs: Any
  test_pairs: Any
  parallel: DataParallel
  steps_per_epoch: int
  base_rng: jax.Array
  progress: Progress = dataclasses.field(default_factory=Progress)
  hyper: Any = None  # the jitted step's per-trial values (placed on the devices)
  prune: Any = None  # prune(epoch, {trial index: val metrics}) -> the trials to stop
  started: float = dataclasses.field(default_factory=time.time)  # this command's start of work
  stopped_by_budget: bool = False  # time_budget_minutes ended this command's training

  def past_budget(self) -> bool:
    """time_budget_minutes (if set) has passed since the command's start."""
    budget = self.base.time_budget_minutes
    return budget > 0 and time.time() - self.started >= budget * 60

  def budget_facts(self) -> dict[str, Any]:
    """What results.json records of a run with a time budget (nothing without one)."""
    if not self.base.time_budget_minutes:
      return {}
    reached = self.progress.epoch + self.progress.batch / max(self.steps_per_epoch, 1)
    return {"time_budget_minutes": self.base.time_budget_minutes,
            "stopped_by_time_budget": self.stopped_by_budget,
            "epochs_reached": round(reached, 3)}

  @property
  def size(self) -> int:
    return len(self.trials)

  @property
  def stacked(self) -> bool:
    """States carry a leading trial axis (vectorised groups); a run's state has none."""
    return self.size > 1

  def live(self) -> list[tuple[int, TrialRun]]:
    return [(i, t) for i, t in enumerate(self.trials) if not t.stopped]

  def stop_updating(self) -> None:
    """A vectorised group's stopped trials keep their state: the mask is an input of the
    same program, so nothing compiles again."""
    if self.stacked:
      active = np.array([not t.stopped for t in self.trials])
      self.hyper = dict(self.hyper, active=self.parallel.replicate(active))

  def label(self, trial: TrialRun) -> str:
    return f"{trial.name}  " if self.stacked else ""


def _stack(trees):
  """N pytrees as one with a leading trial axis, on the host (no op-by-op compiles)."""
  return jax.tree.map(lambda *xs: np.stack([to_numpy(x) for x in xs]), *trees)


def _unstack(tree_N, i: int):
  """Trial i of a stacked pytree, on the host."""
  return jax.tree.map(lambda x: to_numpy(x)[i], tree_N)


def _first_trial_params(group: Group, state):
  """The parameters of the group's first trial (a run's own), where they are."""
  return jax.tree.map(lambda x: x[0], state["params"]) if group.stacked else state["params"]


def _trial_states(group: Group, state) -> list[Any]:
  """Each trial's state (device arrays for a run; replicated host slices for a group)."""
  if not group.stacked:
    return [state]
  host_state = jax.tree.map(to_numpy, state)
  return [group.parallel.replicate(_unstack(host_state, i)) for i in range(group.size)]


# ---------------------------------------------------------------------------
# Set up: workdirs, data, checkpoints, state
# ---------------------------------------------------------------------------

def _open_group(configs: list[Config], workdirs: list[str], argv, parallel: DataParallel,
                stack: contextlib.ExitStack) -> Group:
  base = configs[0]
  for config, workdir in zip(configs, workdirs):  # train_trials made the directories
    workdir_lib.check_workdir_config(workdir, config)  # again, under the lock
    workdir_lib.check_checkpoints_kept(workdir)

  # data first: a bad data file stops here, before any checkpoint directory is opened
  t0 = time.time()
  translator, train_pairs, val_pairs, test_pairs = load_run_data(base, parallel)
  train_data = translator.encode(train_pairs)
  steps_per_epoch = data_lib.steps_per_epoch(train_data, base.batch_size)
  total_steps = steps_per_epoch * base.num_epochs
  log.info("data %s: %d train / %d val / %d test %s, %s, %.1fs",
           base.data, len(train_pairs), len(val_pairs), len(test_pairs),
           "windows" if translator.is_series else "pairs",
           (f"{len(translator.scaler.columns)} column(s) -> {len(translator.scaler.targets)} "
            "target(s)" if translator.is_series
            else f"vocab {len(translator.src_vocab)} -> {len(translator.tgt_vocab)}"),
           time.time() - t0)
  if not len(val_pairs):
    log.warning("no validation %s (val_fraction, or every one longer than max_source_len / "
                "max_target_len): epochs are not validated, no checkpoint is kept as the best by "
                "%s, and the newest is the run's result.",
                "windows" if translator.is_series else "pairs", base.best_metric)

  _check_state_fits(base, translator, total_steps, len(configs), parallel)

  trials = []
  for config, workdir in zip(configs, workdirs):
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
    stack.callback(checkpointer.close)
    trials.append(TrialRun(config, workdir, checkpointer,
                           learning_rate_schedule(config, total_steps)))
  latest = [t.checkpointer.latest_step() for t in trials]
  if len(set(latest)) != 1:
    raise ProgressDiffers(f"checkpoints at steps {latest}")
  meta = translator.checkpoint_meta()
  data_facts = meta.data_facts()
  for trial in trials:  # before anything is written: config.json, vocab.json, events
    _check_resumable(translator, base, trial, data_facts)
  for trial in trials:
    if trial.config.tensorboard and is_primary():
      from seq2seq_jax.tracking import LiveWriter
      trial.writer = LiveWriter(trial.workdir)
      stack.callback(trial.writer.close)
  # the user's vocab.json: the data's facts, and a word vocabulary's rules (as an export's)
  facts = dict(data_facts, **({"word_rules": meta.word_rules} if meta.word_rules else {}))
  for trial in trials:
    workdir_lib.write_config(trial.workdir, trial.config)
    workdir_lib.write_run_info(trial.workdir, argv, parallel.describe())
    workdir_lib.write_vocab(trial.workdir, facts)
  return Group(base, trials, translator, train_data, val_pairs, test_pairs, parallel,
               steps_per_epoch, jax.random.fold_in(jax.random.key(base.seed), 2))


def _check_state_fits(base: Config, translator: Translator, total_steps: int, trials: int,
                      parallel: DataParallel) -> None:
  """Refuses, before anything is written, a model whose training state alone (parameters,
  their gradients and the optimizer's state, for each trial, on each of this host's
  devices: less than training needs) exceeds the devices' memory: such a run was killed by
  the kernel, or crashed, once it touched its arrays. Shapes only; nothing is allocated."""
  mine = [d for d in parallel.devices if d.process_index == jax.process_index()]
  device, local, message = mine[0], len(mine), None
  have = device_memory_bytes(device)
  if have is not None:
    state = jax.eval_shape(lambda: create_state(base, translator.model,
                                                build_optimizer(base, total_steps)))
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    need = (size(state) + size(state["params"])) * trials
    if device.platform == "cpu":  # every CPU device's replica lives in the host's RAM
      need *= local
    if need > have:
      cpu = device.platform == "cpu"
      each = f" on each of {local} devices" if local > 1 and not cpu else ""
      copies = f" ({local} CPU devices, a copy each)" if local > 1 and cpu else ""
      message = (
          f"the model has {count_params(state['params']):,} parameters: their training state "
          f"alone needs {need / 2**30:,.1f} GiB{copies}, more than the {have / 2**30:,.1f} GiB "
          f"of {device.platform.upper()} memory{each}; make embed_dim, latent_dim, num_layers "
          "or the vocabulary smaller.")
  if any_process(message is not None):  # every process of the run stops, not one alone
    raise UserError(message or "the model's training state does not fit another process's "
                    "devices (its error says how much); make the model smaller.")


def _crosscheck(group: Group, state) -> None:
  """Before any step: the devices' forward pass against the host CPU's on validation
  batches (config cpu_crosscheck; crosscheck.py says why)."""
  setting = group.base.cpu_crosscheck
  if not crosscheck.wanted(setting, group.parallel.devices[0].platform):
    return
  data = group.translator.encode(group.val_pairs) if group.val_pairs else group.train_data
  crosscheck.before_training(group.translator, _first_trial_params(group, state), data,
                             required=setting == "always")


def _same_facts(a: dict[str, Any], b: dict[str, Any]) -> bool:
  normal = lambda facts: json.loads(json.dumps(facts))
  return normal(a) == normal(b)


_VOCABULARY_DIFFERS = ("workdir '{}': the data's vocabulary differs from the checkpoint's; "
                       "resume with the same data or use a new --workdir.")


def _check_resumable(translator: Translator, base: Config, trial: "TrialRun",
                     facts: dict[str, Any]) -> None:
  """Where the trial has a checkpoint, before anything of this start is written: its
  settings and the data read now are those its newest checkpoint was trained with (the
  vocabulary, each split's fingerprint). Checked on the checkpoint's meta alone, so that
  other settings or data are named as such and not taken for a damaged checkpoint (other
  shapes), nor trained on silently. config.json says the settings first
  (check_workdir_config); where it is gone, the checkpoint's own count."""
  step = trial.checkpointer.latest_step()
  if step is None:
    return
  meta_json = trial.checkpointer.read_meta(step)
  try:
    meta = CheckpointMeta.from_json(meta_json, f"checkpoint {step} of {trial.workdir}")
  except Exception:  # unreadable: restore() says so, or falls back to an older step
    return
  diffs = config_lib.describe_changes(meta.config, trial.config, workdir_lib.RESUMABLE_CHANGES)
  if diffs:
    raise CheckpointError(
        f"workdir '{trial.workdir}' holds a run with a different configuration ({diffs}; "
        f"read from checkpoint {step}). To resume it, run the same command as before; to "
        "start fresh, pass a new --workdir. Its checkpoints were not touched.")
  if not _same_facts(meta.data_facts(), facts):
    if meta.tokenizer == "word" and meta.word_rules is None:  # saved under word rules 1
      raise CheckpointError(
          f"workdir '{trial.workdir}': the data's vocabulary differs from the checkpoint's: "
          "the data changed, or (this run trained with tokenizer=word before 2026-12-06, "
          "whose rules split accents and emoji sequences off their words) its words read "
          "otherwise now; resume with the same data, or, for the second, use a new "
          "--workdir (translate, evaluate and export still read this run as trained).")
    raise CheckpointError(_VOCABULARY_DIFFERS.format(trial.workdir))
  changed = data_lib.changed_splits(meta.data, translator.data_info)
  if changed:
    raise CheckpointError(
        f"workdir '{trial.workdir}': the {' and '.join(changed)} split(s) of "
        f"{base.data} read now are not those checkpoint {step} was trained with (the "
        "data changed, or a relative path is read from another directory); resume with the "
        "same data, or use a new --workdir. Its checkpoints were not touched.")


def _initial_state(group: Group):
  """Every trial's state, restored from its newest checkpoint where it has one; placed
  on the devices (stacked along a leading axis for a vectorised group)."""
  total_steps = group.steps_per_epoch * group.base.num_epochs
  # one seed per group, so one initialisation; each trial adds its own optimizer state
  first = create_state(group.base, group.translator.model, build_optimizer(group.base, total_steps))
  states = [first] + [dict(first, opt_state=build_optimizer(t.config, total_steps).init(first["params"]))
                      for t in group.trials[1:]]
  restored_step = group.trials[0].checkpointer.latest_step()
  if restored_step is not None:
    facts = group.translator.checkpoint_meta().data_facts()  # settings and data: _open_group
    progresses = []
    for i, trial in enumerate(group.trials):
      states[i], meta_json, step = trial.checkpointer.restore(
          group.parallel.abstract_replicated(states[i]))
      meta = CheckpointMeta.from_json(meta_json, f"checkpoint {step} of {trial.workdir}")
      if not _same_facts(meta.data_facts(), facts):
        raise CheckpointError(_VOCABULARY_DIFFERS.format(trial.workdir))
      trial.sums = meta.sums
      progresses.append(Progress(meta.progress.epoch, meta.progress.batch, step))
    if any(p != progresses[0] for p in progresses):
      raise ProgressDiffers(f"positions {progresses}")
    group.progress = progresses[0]
    where = (f"epoch {group.progress.epoch + 1}, batch {group.progress.batch}"
             if group.progress.epoch < group.base.num_epochs else
             f"after its last epoch, {group.progress.epoch} of {group.base.num_epochs}")
    log.info("resumed %sfrom checkpoint %d (%s)",
             f"{group.size} trials " if group.stacked else "", group.progress.step, where)
  for trial in group.trials:  # records of a killed run beyond its checkpoint (or all: none)
    workdir_lib.rewind_metrics(trial.workdir, group.progress.step)
  if group.stacked:
    return group.parallel.replicate(_stack(states))
  return group.parallel.replicate(states[0])


def _jitted_step(group: Group):
  """(step_fn, hyper): step_fn(state, batch, base_rng, hyper) -> (state, metrics with a
  leading trial axis), jitted with the state donated."""
  base, model = group.base, group.translator.model
  total_steps = group.steps_per_epoch * base.num_epochs
  if not group.stacked:
    step = functools.partial(trial_train_step, model=model,
                             tx=build_optimizer(base, total_steps), config=base)
    return jax.jit(step, donate_argnums=(0,)), {}
  configs = [t.config for t in group.trials]
  varied = [k for k in VECTORIZED_KEYS if len({getattr(c, k) for c in configs}) > 1]
  hyper = {k: np.array([getattr(c, k) for c in configs], np.float32)
           for k in varied if k != "dropout"}
  if "dropout" in varied:
    hyper["dropout"] = np.array([traced_dropout_rate(c.dropout) for c in configs], np.float32)
  hyper["active"] = np.ones(len(configs), bool)
  log.info("vmap: %d trials in one program (%s differ), %d step(s)/epoch, %d epoch(s)",
           group.size, ", ".join(varied) or "nothing", group.steps_per_epoch, base.num_epochs)
  step = functools.partial(vectorized_train_step, model=model, config=base,
                           total_steps=total_steps)
  return jax.jit(step, donate_argnums=(0,)), group.parallel.replicate(hyper)


# ---------------------------------------------------------------------------
# Periodic actions
# ---------------------------------------------------------------------------

def _read_steps(group: Group, pending: list[tuple[int, dict[str, jax.Array]]],
                clock: EpochClock, bar) -> None:
  """Reads the metrics of dispatched steps, in order: stops a trial whose loss is not
  finite, adds the counts to its sums, logs at log steps. Empties pending."""
  base = group.base
  for step, metrics_N in pending:
    host_N = {key: to_numpy(value) for key, value in metrics_N.items()}
    for i, trial in group.live():
      loss = float(host_N["loss"][i])
      if not np.isfinite(loss):
        good = trial.checkpointer.latest_step()
        saved = (f"Last good checkpoint: {good} (kept, nothing saved over it)."
                 if good is not None else "No checkpoint was saved before it.")
        trial.failure = NonFiniteLoss(
            f"loss is {loss} at step {step}. {saved} Train again in a new --workdir with "
            "a lower learning_rate or with clip_norm.")
        if group.stacked:
          log.info("trial %s: %s", trial.name, trial.failure)
          group.stop_updating()
        continue
      counts = {key: float(host_N[key][i]) for key in ("loss_sum", "weight", "correct", "tokens")}
      trial.sums.window.add(counts)
      trial.sums.epoch.add(counts)
    if not group.live():
      pending.clear()
      raise _EveryTrialFailed
    if step % base.log_every_steps == 0:
      _log_window(group, step, host_N, clock, bar)
  pending.clear()


def _log_window(group: Group, step: int, host_N: dict[str, np.ndarray], clock: EpochClock,
                bar) -> None:
  """A metrics.jsonl record per trial for the steps since the last one."""
  rate = clock.rate()
  losses = []
  for i, trial in enumerate(group.trials):
    if trial.stopped:
      losses.append("failed" if trial.failure is not None else "pruned")
      continue
    window_loss = trial.sums.window.loss
    losses.append(f"{window_loss:.4f}")
    trial.record({
        "step": step, "epoch": group.progress.epoch + 1, "train/loss": window_loss,
        "lr": float(trial.schedule(step - 1)), "grad_norm": float(host_N["grad_norm"][i]),
        "samples_per_sec": rate})
    trial.sums.window = Totals()
  if not bar.disable:
    if group.stacked:
      bar.set_postfix(samples_s=f"{rate:.0f}x{group.size}")
    else:
      bar.set_postfix(loss=losses[0], samples_s=f"{rate:.0f}")
  elif group.stacked:
    log.info("step %d  epoch %d  losses %s  %.0f samples/s per trial", step,
             group.progress.epoch + 1, " ".join(losses), rate)
  else:
    log.info("step %d  epoch %d  loss %s  %.0f samples/s", step, group.progress.epoch + 1,
             losses[0], rate)


def _save(group: Group, state, metrics_per_trial: list[dict[str, float] | None] | None = None,
          only: int | None = None) -> None:
  """A checkpoint of every live trial (or trial `only`) at the current step, with its meta."""
  rng = np.asarray(jax.random.key_data(group.base_rng)).tolist()
  trial_states = _trial_states(group, state)
  for i, trial in group.live():
    if only is not None and i != only:
      continue
    metrics = metrics_per_trial[i] if metrics_per_trial else None
    meta = group.translator.checkpoint_meta(
        trial.config, progress=copy.copy(group.progress), sums=copy.deepcopy(trial.sums),
        rng=rng, metrics=metrics)
    trial.checkpointer.save(group.progress.step, trial_states[i], meta.to_json(), metrics)


def _trial_params(group: Group, state) -> list[Any]:
  if not group.stacked:
    return [state["params"]]
  host_params = jax.tree.map(to_numpy, state["params"])
  return [group.parallel.replicate(_unstack(host_params, i)) for i in range(group.size)]


def _validate(group: Group, params) -> dict[str, float]:
  """One trial's periodic validation: "val/" metrics, eval_decode_samples outputs decoded
  ({} without validation pairs)."""
  if not len(group.val_pairs):
    return {}
  val_metrics, _ = evaluate_pairs(group.translator, params, group.val_pairs,
                                  group.base.eval_decode_samples)
  return {f"val/{k}": v for k, v in val_metrics.items()}


def _end_epoch(group: Group, state, clock: EpochClock, first_epoch: int) -> None:
  """The epoch's records (validation too, when due), then its checkpoint."""
  base, epoch = group.base, group.progress.epoch
  epoch_time = time.time() - clock.start
  last = epoch + 1 == base.num_epochs
  evaluate = ((epoch + 1) % base.eval_every_epochs == 0 or last) and len(group.val_pairs) > 0
  params = _trial_params(group, state) if evaluate else None
  new_compilations = clock.compilations
  group.progress = Progress(epoch + 1, 0, group.progress.step)
  checkpoint_metrics: list[dict[str, float] | None] = [None] * group.size
  for i, trial in enumerate(group.trials):
    epoch_sums, trial.sums.epoch = trial.sums.epoch, Totals()
    if trial.stopped:
      continue
    record = {"step": group.progress.step, "epoch": epoch + 1,
              "train/loss": epoch_sums.loss, "train/token_accuracy": epoch_sums.token_accuracy,
              "train/epoch_seconds": epoch_time,
              "train/samples_per_sec": clock.samples / max(epoch_time, 1e-9),
              "elapsed_seconds": time.time() - group.started}
    if group.stacked:
      record["vmap_trials"] = group.size
    if evaluate:
      checkpoint_metrics[i] = _validate(group, params[i])
      record.update(checkpoint_metrics[i])
    # batch shapes come from fixed length buckets: only a process's first epoch compiles
    record["train/compilations"] = new_compilations
    trial.record(record)
    log.info("%sepoch %d/%d  step %d  train loss %.4f  %s  %.0fs (%.0f samples/s)",
             group.label(trial), epoch + 1, base.num_epochs, record["step"], record["train/loss"],
             "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/")),
             epoch_time, record["train/samples_per_sec"])
  if evaluate and not last and group.prune is not None:
    evaluated = {i: checkpoint_metrics[i] for i, _ in group.live()}
    for i in sorted(set(group.prune(epoch + 1, evaluated)) & set(evaluated)):
      _save(group, state, checkpoint_metrics, only=i)  # its last evaluated state stays
      trial = group.trials[i]
      trial.pruned = Pruned(epoch + 1, checkpoint_metrics[i])
      log.info("%spruned after epoch %d", group.label(trial) or f"{trial.name}  ", epoch + 1)
    if group.stacked:
      group.stop_updating()
  if new_compilations and epoch > first_epoch:
    log.warning("epoch %d compiled %d new program(s): batch shapes are not settling.",
                epoch + 1, new_compilations)
  if (epoch + 1) % base.checkpoint_every_epochs == 0 or last:
    _save(group, state, checkpoint_metrics)
  if not group.live():
    raise _EveryTrialFailed


def _stop_on_budget(group: Group, state) -> None:
  """Training ends inside an epoch at the time budget: the validation metrics of this
  state (so it may become the best checkpoint) and a checkpoint at this position, from
  which the same command resumes the epoch."""
  progress = group.progress
  params = _trial_params(group, state)
  metrics: list[dict[str, float] | None] = [None] * group.size
  for i, trial in group.live():
    metrics[i] = _validate(group, params[i])
    trial.record({"step": progress.step, "epoch": progress.epoch + 1, "time_budget_stop": True,
                  "elapsed_seconds": time.time() - group.started, **metrics[i]})
    log.info("%stime budget stop at step %d  %s", group.label(trial), progress.step,
             "  ".join(f"{k} {v:.4f}" for k, v in metrics[i].items()))
  _save(group, state, metrics)


def _final_evaluation(group: Group, state) -> list[dict[str, Any] | NonFiniteLoss]:
  """Each trial's val and test metrics with the checkpoint `translate` uses (the best,
  else the newest), written to results.json; sample outputs logged."""
  outcomes: list[dict[str, Any] | NonFiniteLoss] = []
  trial_states = _trial_states(group, state)
  abstract = group.parallel.abstract_replicated(trial_states[0])
  translator = group.translator
  for trial, trial_state in zip(group.trials, trial_states):
    if trial.stopped:
      outcomes.append(trial.failure or trial.pruned)
      continue
    final_step = trial.checkpointer.best_step() or trial.checkpointer.latest_step()
    params = trial_state["params"]
    if final_step is not None and final_step != group.progress.step:
      params = trial.checkpointer.restore(abstract, step=final_step)[0]["params"]
    summary: dict[str, Any] = {"step": final_step}
    for name, pairs in (("val", group.val_pairs), ("test", group.test_pairs)):
      if len(pairs):
        split_metrics, hypotheses = evaluate_pairs(translator, params, pairs)
        summary.update({f"{name}/{k}": v for k, v in split_metrics.items()})
        if trial.config.split_sentences and not translator.is_series:
          summary.update(_within_limits(translator, name, pairs, hypotheses))
    trial.record(dict(summary, final=True, **group.budget_facts()))
    # sacrebleu's signatures and what was read beside the numbers (not logged as metrics)
    extra = {} if translator.is_series else {"signatures": sacrebleu_signatures()}
    extra.update(group.budget_facts())
    if translator.data_info:
      extra["data"] = translator.data_info
    workdir_lib.write_json(os.path.join(trial.workdir, workdir_lib.RESULTS_FILE),
                           dict(summary, **extra))
    if trial.writer is not None:
      trial.writer.hparams(_hparams(group, trial), summary)
    log.info("\n%sfinal (checkpoint %s): %s", group.label(trial), final_step,
             "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != "step")
             or "no validation or test pairs to evaluate")
    _log_samples(group, params)
    outcomes.append(summary)
  return outcomes


def _within_limits(translator: Translator, name: str, pairs, hypotheses) -> dict[str, float]:
  """The text metrics of a split's pairs that fit the model's limits (a split_sentences
  run scores every pair; these are the ones a run without it would have kept)."""
  fitting = [(h, t) for h, (_, t), long in zip(hypotheses, pairs, translator.long_pairs(pairs))
             if not long]
  metrics = text_metrics([h for h, _ in fitting], [t for _, t in fitting]) if fitting else {}
  return {f"{name}_within_limits/{k}": v for k, v in dict(metrics, pairs=len(fitting)).items()}


def _hparams(group: Group, trial: TrialRun) -> dict[str, Any]:
  """What TensorBoard's HParams view compares: the values a group's trials vary, and
  every setting the run changed from the defaults."""
  defaults = Config().to_dict()
  values = trial.config.to_dict()
  keys = [k for k in values if k in VECTORIZED_KEYS or values[k] != defaults[k]]
  return {k: values[k] for k in keys}


def _log_samples(group: Group, params) -> None:
  """num_summary_samples test (else val) examples with the model's output."""
  translator, count = group.translator, group.base.num_summary_samples
  shown = group.test_pairs if len(group.test_pairs) else group.val_pairs
  if translator.is_series:
    predictions = translator.scaler.unscale_targets(translator.forecast(params, shown))
    truth = translator.scaler.unscale_targets(shown.tgt_NxT[:, 1:])
    for i in range(min(count, len(shown))):
      log.info("-\nForecast: %s\nActual:   %s", np.round(predictions[i, :, 0], 4).tolist(),
               np.round(truth[i, :, 0], 4).tolist())
    return
  samples = shown[:count]
  for (source, target), hypothesis in zip(samples, translator.translate(
      params, [s for s, _ in samples])):
    log.info("-\nInput sentence: %s\nDecoded sentence: %s\nReference: %s%s", source,
             hypothesis, target, "" if hypothesis == target else "   (differs)")


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------

def train_trials(configs: list[Config], workdirs: list[str], argv: list[str] | None = None,
                 progress: bool | None = None, stop_after_step: int | None = None,
                 prune=None, started: float | None = None,
                 ) -> list[dict[str, Any] | NonFiniteLoss | Pruned]:
  """Trains (or resumes) N trials as one program: configs that differ only in
  VECTORIZED_KEYS (N = 1: a run). Each workdir ends as a run of its config alone leaves
  it. Returns each trial's final metrics, the NonFiniteLoss that stopped it, or Pruned.

  stop_after_step: behave as if interrupted after that step (checkpoint, then
  TrainingInterrupted), as SIGINT/SIGTERM do.
  prune(epoch, {trial index: val metrics}) -> the indexes to stop: asked after each
  evaluation but the last, with every live trial's metrics (their slots of a vectorised
  group stop updating).
  started: the wall time time_budget_minutes counts from (None: now, before the data).
  """
  # a Config built in Python (dataclasses.replace) is checked as a config file's is
  configs = [config_lib.validate(dataclasses.replace(c)) for c in configs]
  if len({vmap_group_key(c) for c in configs}) != 1:
    raise ValueError(f"train_trials: the configs differ in more than {', '.join(VECTORIZED_KEYS)}")
  # before the data are read: elapsed_seconds and the time budget count their preparation
  started = time.time() if started is None else started
  maybe_initialize_distributed()
  parallel = DataParallel()
  parallel.check_batch_size(configs[0].batch_size)
  if any(config.tensorboard for config in configs) and is_primary():
    from seq2seq_jax.tracking import require_tensorboardx
    require_tensorboardx("tensorboard=true needs")
  for workdir, config in zip(workdirs, configs):  # checked again under the lock (_open_group)
    workdir_lib.check_run_directory(workdir)  # a refused run writes nothing (.lock, train.log)
    workdir_lib.check_workdir_config(workdir, config)
    workdir_lib.check_checkpoints_kept(workdir)
  with contextlib.ExitStack() as stack:
    busy = None
    for workdir in workdirs:  # one process writes the workdirs: it holds them
      made = workdir_lib.first_missing(workdir)
      os.makedirs(workdir, exist_ok=True)
      if is_primary():
        try:
          stack.enter_context(workdir_lib.exclusive(workdir))
        except workdir_lib.WorkdirBusy as error:
          busy = error
          break
        if made:  # removed again if an error comes before anything is written there
          stack.callback(workdir_lib.remove_if_unused, workdir, made)
        workdir_lib.remove_stale_temporaries(workdir)
    if any_process(busy is not None):  # every process of the run stops, not the first alone
      raise busy or workdir_lib.WorkdirBusy(
          f"a workdir of {', '.join(workdirs)} is in use by another run.", workdirs[0])
    stack.enter_context(_run_log(workdirs))
    group = _open_group(configs, workdirs, argv, parallel, stack)
    group.started = started
    state = _initial_state(group)
    finished = _finished_results(group)
    if finished is not None:
      return finished
    step_fn, group.hyper = _jitted_step(group)
    group.prune = prune
    log.info("model: %s parameters, %d step(s)/epoch, %d epoch(s); mesh data=%d (%d x %s, "
             "%d process(es)), %d pairs per device per step",
             f"{count_params(_first_trial_params(group, state)):,}",
             group.steps_per_epoch, group.base.num_epochs, parallel.size, parallel.size,
             parallel.devices[0].device_kind, jax.process_count(),
             group.base.batch_size // parallel.size)
    _crosscheck(group, state)
    show_bar = sys.stderr.isatty() if progress is None else progress
    try:
      state = _train(group, state, step_fn, show_bar, stop_after_step)
    except _EveryTrialFailed:
      return [t.failure or t.pruned for t in group.trials]
    return _final_evaluation(group, state)


def _finished_results(group: Group) -> list[dict[str, Any]] | None:
  """Each trial's saved final metrics where the run is complete (every epoch trained, the
  final evaluation written to results.json for the checkpoint it evaluates): the same
  command again then has nothing to do, and says so. None where anything is left."""
  if group.progress.epoch < group.base.num_epochs:
    return None
  outcomes = []
  for trial in group.trials:
    # none where the run stopped before or during its final evaluation: that runs now
    results = workdir_lib.read_json(os.path.join(trial.workdir, workdir_lib.RESULTS_FILE))
    final_step = trial.checkpointer.best_step() or trial.checkpointer.latest_step()
    if (not isinstance(results, dict) or results.get("step") != final_step
        or results.get("stopped_by_time_budget")):  # an earlier, budget-stopped evaluation
      return None
    outcomes.append({k: v for k, v in results.items() if k == "step" or "/" in k})
  for trial, summary in zip(group.trials, outcomes):
    log.info("%sthe run in %s is complete (checkpoint %d, epoch %d of %d): nothing to "
             "train. Its final evaluation (%s): %s. To train another run, use a new --workdir.",
             group.label(trial), trial.workdir, group.progress.step, group.progress.epoch,
             group.base.num_epochs, workdir_lib.RESULTS_FILE,
             "  ".join(f"{k} {v:.4f}" for k, v in summary.items()
                       if k != "step" and isinstance(v, (int, float))))
  return outcomes


def _train(group: Group, state, step_fn, show_bar: bool, stop_after_step: int | None):
  """The epochs from where the group stands to the last; returns the final state. A
  signal stops it after the step it came in, with a checkpoint there (TrainingInterrupted);
  one that came in the last epoch's evaluation or save stops it once they are done, before
  the final evaluation."""
  with SignalCatcher() as signals, CompilationCounter() as compilations:
    state = _epochs(group, state, step_fn, show_bar, stop_after_step, signals, compilations)
    if signals.signum is not None:
      if any(trial.checkpointer.latest_step() != group.progress.step for _, trial in group.live()):
        _save(group, state)
      raise _interrupted(group, signals.signum)
  return state


def _interrupted(group: Group, signum) -> TrainingInterrupted:
  return TrainingInterrupted(
      f"stopped by signal {signum} at step {group.progress.step}; "
      f"checkpoint{'s' if group.stacked else ''} saved. Run the same command again to resume.",
      [t.failure or t.pruned for t in group.trials])


def _epochs(group: Group, state, step_fn, show_bar: bool, stop_after_step: int | None,
            signals: SignalCatcher, compilations: CompilationCounter):
  """_train's epochs; returns the state where they end (the last epoch, or the time
  budget), and raises TrainingInterrupted at the step after a signal."""
  from tqdm import tqdm
  base, parallel = group.base, group.parallel
  # the first epoch this process runs whole (a run resumed mid-epoch has not yet seen
  # every batch shape in the part it ran, so new compilations then are no warning sign)
  first_epoch = group.progress.epoch + (1 if group.progress.batch else 0)
  while group.progress.epoch < base.num_epochs:
    progress = group.progress
    batches = data_lib.epoch_batches(group.train_data, base.batch_size, base.seed,
                                     progress.epoch, base.bucket_width)
    where = f"vmap {group.size}" if group.stacked else \
        f"{parallel.size}x {parallel.devices[0].platform}"
    bar = tqdm(total=len(batches), initial=progress.batch, disable=not show_bar,
               desc=f"epoch {progress.epoch + 1}/{base.num_epochs} [{where}]", unit="step",
               leave=False)
    clock = EpochClock(time.time())
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # dispatched, metrics not yet read
    while progress.batch < len(batches):
      rows = batches[progress.batch]
      batch = data_lib.make_batch(group.train_data, rows, base.batch_size, base.bucket_width)
      compiled = compilations.count
      state, metrics_N = parallel.settle(step_fn(state, parallel.shard_batch(batch),
                                                 group.base_rng, group.hyper))
      clock.compilations += compilations.count - compiled
      progress.batch += 1
      progress.step += 1
      clock.samples += len(rows)
      pending.append((progress.step, metrics_N))
      bar.update(1)
      if len(pending) > 1 and pending[-2][0] % base.log_every_steps == 0:
        _read_steps(group, pending[:-1], clock, bar)  # step n, now that n + 1 is dispatched
        del pending[:-1]
      if stop_after_step is not None and progress.step >= stop_after_step:
        signals.signum = signals.signum or "stop_after_step"
      if signals.signum is not None:
        _read_steps(group, pending, clock, bar)
        _save(group, state)
        bar.close()
        raise _interrupted(group, signals.signum)
      if progress.batch < len(batches) and group.past_budget():
        _read_steps(group, pending, clock, bar)
        bar.close()
        _budget_reached(group)
        _stop_on_budget(group, state)
        return state
      if base.checkpoint_every_steps and progress.step % base.checkpoint_every_steps == 0 \
          and progress.batch < len(batches):
        _read_steps(group, pending, clock, bar)
        _save(group, state)
    _read_steps(group, pending, clock, bar)
    bar.close()
    _end_epoch(group, state, clock, first_epoch)
    if group.stacked:
      log.info("epoch %d/%d: %.0fs for %d trials (%.0f samples/s per trial)",
               group.progress.epoch, base.num_epochs, time.time() - clock.start, group.size,
               clock.samples / max(time.time() - clock.start, 1e-9))
    if group.progress.epoch < base.num_epochs and group.past_budget():
      _budget_reached(group)  # the epoch's evaluation and checkpoint are the stop's
      return state
  return state


def _budget_reached(group: Group) -> None:
  group.stopped_by_budget = True
  progress = group.progress
  where = (f"after epoch {progress.epoch}" if progress.batch == 0 else
           f"in epoch {progress.epoch + 1}, batch {progress.batch} of {group.steps_per_epoch}")
  log.info("time budget of %g minutes reached after %.0f s: training stops at step %d (%s); "
           "the same command again resumes it", group.base.time_budget_minutes,
           time.time() - group.started, progress.step, where)


def train_and_evaluate(config: Config, workdir: str, argv: list[str] | None = None,
                       progress: bool | None = None, stop_after_step: int | None = None,
                       started: float | None = None) -> dict[str, Any]:
  """Trains (or resumes) a run in workdir; returns the final metrics (a group of one)."""
  [outcome] = train_trials([config], [workdir], argv, progress, stop_after_step,
                           started=started)
  if isinstance(outcome, Exception):
    raise outcome
  return outcome

"""Hyperparameter sweeps: trials declared beside the config they sweep, run as workdirs.

A sweep file is a config file (`get_config()` returns the base Config) that also has
`get_sweep()` returning a dict with one of
  grid      {key: [values]}: every combination, in declaration order;
  random    {key: [choices] or (kind, low, high)}, kind uniform | log_uniform | int,
            with `num_trials` and `seed`: seeded draws, floats kept to 3 significant digits;
  trials    [{key: value}, ...]: an explicit list;
and optionally `metric` (default "val/exact_match"), `mode` ("max" or "min"; default
"min" for a loss) and `vectorize` (default False).

Trial `k1=v1,k2=v2` runs in DIR/k1=v1,k2=v2/, an ordinary workdir: `translate`, `evaluate`
and `train` (to resume) work on it. A trial is done when it holds results.json (or its
trial.json says it diverged), so re-running a sweep only runs what is unfinished.

Vectorised mode: trials whose configs differ only in VECTORIZED_KEYS train together as one
jitted program, `train.train_step` under `jax.vmap` with each trial's hyperparameters as
arrays; each trial's workdir ends as a sequential run would leave it. `seed` is never
vectorised: it also decides the data, its splits and the batch order, so trials with
different seeds are different programs. Shape-changing keys are different programs too.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax import tracking
from seq2seq_jax import train as train_lib
from seq2seq_jax.checkpoint import Checkpointer
from seq2seq_jax.config import Config
from seq2seq_jax.errors import CheckpointError, UserError
from seq2seq_jax.optim import build_optimizer, build_optimizer_with, learning_rate_schedule
from seq2seq_jax.parallel import DataParallel, is_primary, to_numpy

log = logging.getLogger(__name__)

# Values that change no array shape: trials differing only in these share one program.
VECTORIZED_KEYS = ("learning_rate", "rmsprop_decay", "clip_norm", "dropout")
METRICS = ("val/loss", "val/token_accuracy", "val/exact_match")
DISTRIBUTIONS = ("uniform", "log_uniform", "int")
TRIAL_FILE = "trial.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str  # also the trial's directory name
  overrides: dict[str, Any]  # swept key -> value, typed as the Config field
  config: Config


@dataclasses.dataclass
class Sweep:
  base: Config
  keys: list[str]  # the swept keys, in declaration order
  trials: list[Trial]
  metric: str = "val/exact_match"
  mode: str = "max"
  vectorize: bool = False


# ---------------------------------------------------------------------------
# Declaration
# ---------------------------------------------------------------------------

def _as_text(value: Any) -> str:
  """A value as `--set` text; floats round-trip exactly."""
  return repr(value) if isinstance(value, float) else str(value)


def trial_name(overrides: dict[str, Any]) -> str:
  """'learning_rate=0.003,seed=1', with characters unsafe in paths replaced by '_'."""
  if not overrides:
    return "base"
  name = ",".join(f"{key}={_as_text(value)}" for key, value in overrides.items())
  return re.sub(r"[^A-Za-z0-9._,=+-]", "_", name)


def _draw(rng: np.random.Generator, key: str, space: Any, where: str) -> Any:
  if isinstance(space, tuple) and space and space[0] in DISTRIBUTIONS:
    if len(space) != 3 or not space[1] < space[2]:
      raise UserError(f"{where}: random '{key}': expected (kind, low, high) with low < high, "
                      f"got {space!r}.")
    kind, low, high = space
    if kind == "int":
      return int(rng.integers(low, high + 1))
    if kind == "uniform":
      value = rng.uniform(low, high)
    else:
      if low <= 0:
        raise UserError(f"{where}: random '{key}': log_uniform needs low > 0, got {low!r}.")
      value = math.exp(rng.uniform(math.log(low), math.log(high)))
    return float(f"{value:.3g}")
  if isinstance(space, (list, tuple)) and space:
    return space[int(rng.integers(len(space)))]
  raise UserError(f"{where}: random '{key}' must be a non-empty list of choices or "
                  f"(kind, low, high) with kind one of {', '.join(DISTRIBUTIONS)}; got {space!r}.")


def expand(spec: dict[str, Any], where: str = "get_sweep()") -> list[dict[str, Any]]:
  """The declared trials as override dicts (untyped: as written in the sweep file)."""
  known = {"grid", "random", "trials", "num_trials", "seed", "metric", "mode", "vectorize"}
  unknown = sorted(set(spec) - known)
  if unknown:
    raise UserError(f"{where}: unknown sweep key(s) {', '.join(unknown)}; use "
                    f"{', '.join(sorted(known))}.")
  forms = [form for form in ("grid", "random", "trials") if form in spec]
  if len(forms) != 1:
    raise UserError(f"{where}: declare exactly one of 'grid', 'random' or 'trials'.")
  if "grid" in spec:
    grid = spec["grid"]
    for key, values in grid.items():
      if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"{where}: grid '{key}' must be a non-empty list, got {values!r}.")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
  if "trials" in spec:
    trials = spec["trials"]
    if not isinstance(trials, (list, tuple)) or not all(isinstance(t, dict) for t in trials):
      raise UserError(f"{where}: 'trials' must be a list of {{key: value}} dicts.")
    return [dict(t) for t in trials]
  if not isinstance(spec.get("num_trials"), int) or spec["num_trials"] <= 0:
    raise UserError(f"{where}: a random sweep needs num_trials, a positive whole number.")
  rng = np.random.default_rng(spec.get("seed", 0))
  return [{key: _draw(rng, key, space, where) for key, space in spec["random"].items()}
          for _ in range(spec["num_trials"])]


def make_sweep(base: Config, spec: dict[str, Any], where: str = "get_sweep()") -> Sweep:
  """Typed, validated trials (each a full Config) from a sweep declaration."""
  trials, seen = [], set()
  keys: list[str] = []
  for overrides in expand(spec, where):
    for key in overrides:
      if key not in keys:
        keys.append(key)
    config = config_lib.apply_overrides(base, [f"{k}={_as_text(v)}" for k, v in overrides.items()])
    typed = {key: getattr(config, key) for key in overrides}
    name = trial_name(typed)
    if name in seen:
      log.info("%s: trial %s is declared twice; running it once", where, name)
      continue
    seen.add(name)
    trials.append(Trial(name, typed, config))
  metric = spec.get("metric", "val/exact_match")
  if not metric.startswith("val/"):
    raise UserError(f"{where}: metric must be a validation metric such as "
                    f"{', '.join(METRICS)}; got {metric!r}.")
  mode = spec.get("mode", "min" if metric.endswith("loss") else "max")
  if mode not in ("max", "min"):
    raise UserError(f"{where}: mode must be 'max' or 'min', got {mode!r}.")
  return Sweep(base, keys, trials, metric, mode, bool(spec.get("vectorize", False)))


def load_sweep(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
  """A sweep file's declaration; `overrides` (key=value) change the base config."""
  base = config_lib.load_config_file(path)  # get_config(), validated
  spec_loader = importlib.util.spec_from_file_location("_seq2seq_jax_sweep", path)
  module = importlib.util.module_from_spec(spec_loader)
  spec_loader.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise UserError(f"'{path}' has no get_sweep(): it is a plain config; run it with "
                    "`seq2seq-jax train --config`, or add get_sweep() (see configs/sweep_lr.py).")
  spec = module.get_sweep()
  if not isinstance(spec, dict):
    raise UserError(f"'{path}': get_sweep() must return a dict.")
  base = config_lib.apply_overrides(base, list(overrides))
  sweep = make_sweep(base, spec, f"'{path}'")
  clash = sorted({item.split("=", 1)[0].strip() for item in overrides} & set(sweep.keys))
  if clash:
    raise UserError(f"--set {', '.join(clash)}: swept by '{path}'; change the sweep instead.")
  return sweep


# ---------------------------------------------------------------------------
# Vectorised training: N trials, one jitted program per batch shape
# ---------------------------------------------------------------------------

def vmap_group_key(config: Config) -> str:
  """Equal for configs that can train together under vmap."""
  values = config.to_dict()
  for key in VECTORIZED_KEYS:
    values.pop(key)
  values["clipping"] = config.clip_norm > 0  # clipping or not: another optimizer state
  return json.dumps(values, sort_keys=True)


@contextlib.contextmanager
def dropout_keep_prob(keep_prob):
  """Inside, every flax nn.Dropout keeps units with probability `keep_prob` (an array,
  e.g. one trial's value under vmap) instead of its static rate; the RNG and the mask
  are drawn exactly as nn.Dropout draws them, so a trial equals its sequential run."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    inputs = args[0]
    deterministic = nn.merge_param("deterministic", module.deterministic,
                                   args[1] if len(args) > 1 else kwargs.get("deterministic"))
    if deterministic:
      return inputs
    rng = kwargs.get("rng")
    if rng is None:
      rng = module.make_rng(module.rng_collection)
    mask_shape = [1 if dim in module.broadcast_dims else size
                  for dim, size in enumerate(inputs.shape)]
    mask = jax.random.bernoulli(rng, p=keep_prob, shape=mask_shape)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))

  with nn.intercept_methods(interceptor):
    yield


def vmapped_train_step(states_N, batch, base_rng, hyper_N, *, model, config: Config,
                       total_steps: int):
  """train.train_step for N trials at once; hyper_N: one value per trial of each varied
  optimizer setting (learning_rate, rmsprop_decay, clip_norm) and of dropout `keep_prob`."""
  def one_trial(state, hyper):
    optimizer_values = {k: v for k, v in hyper.items() if k != "keep_prob"}
    tx = build_optimizer_with(config, total_steps, **optimizer_values)
    keep_prob = hyper.get("keep_prob")
    with dropout_keep_prob(keep_prob) if keep_prob is not None else contextlib.nullcontext():
      return train_lib.train_step(state, batch, base_rng, model=model, tx=tx, config=config)

  return jax.vmap(one_trial)(states_N, hyper_N)


class _ProgressDiffers(Exception):
  """The trials' checkpoints are at different positions: they cannot share a program."""


def _stack(trees):
  """N pytrees as one with a leading trial axis, on the host (no op-by-op compiles)."""
  return jax.tree.map(lambda *xs: np.stack([to_numpy(x) for x in xs]), *trees)


def _unstack(tree_N, i: int):
  """Trial i of a stacked pytree, on the host."""
  return jax.tree.map(lambda x: to_numpy(x)[i], tree_N)


def train_vectorized(configs: list[Config], workdirs: list[str], argv: list[str] | None = None,
                     progress: bool | None = None, stop_after_step: int | None = None,
                     ) -> list[dict[str, Any] | Exception]:
  """Trains (or resumes) N trials that differ only in VECTORIZED_KEYS as one vmapped program.

  Each workdir ends as train.train_and_evaluate leaves it: config.json, metrics.jsonl,
  checkpoints with the same state and meta layout, results.json. Returns each trial's final
  metrics, or the NonFiniteLoss that stopped it (the others go on).
  """
  base = configs[0]
  if len({vmap_group_key(c) for c in configs}) != 1:
    raise ValueError("train_vectorized: the configs differ in more than "
                     f"{', '.join(VECTORIZED_KEYS)}")
  n = len(configs)
  varied = [k for k in VECTORIZED_KEYS if len({getattr(c, k) for c in configs}) > 1]
  parallel = DataParallel()
  parallel.check_batch_size(base.batch_size)
  for config, workdir in zip(configs, workdirs):
    os.makedirs(workdir, exist_ok=True)
    train_lib.check_workdir_config(workdir, config)
  checkpointers = [Checkpointer(w, c.keep_checkpoints, c.best_metric)
                   for c, w in zip(configs, workdirs)]
  latest = [c.latest_step() for c in checkpointers]
  if len(set(latest)) != 1:
    for checkpointer in checkpointers:
      checkpointer.close()
    raise _ProgressDiffers(f"checkpoints at steps {latest}")
  for config, workdir in zip(configs, workdirs):
    if is_primary():
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json())
    train_lib.write_run_info(workdir, argv, parallel)

  # --- data: one copy for every trial ------------------------------------------------
  t0 = time.time()
  task, train_pairs, val_pairs, test_pairs = train_lib.load_task_data(base, parallel)
  train_data = task.encode(train_pairs)
  vocab_meta = {k: v for k, v in task.meta().items() if k != "config"}
  if is_primary():
    for workdir in workdirs:
      with open(os.path.join(workdir, "vocab.json"), "w") as f:
        json.dump(vocab_meta, f, ensure_ascii=False, indent=0)
  steps_per_epoch = data_lib.steps_per_epoch(train_data, base.batch_size)
  total_steps = steps_per_epoch * base.num_epochs
  log.info("data %s: %d train / %d val / %d test, %.1fs", base.data, len(train_pairs),
           len(val_pairs), len(test_pairs), time.time() - t0)

  # --- N states stacked on a leading axis ---------------------------------------------
  # one seed per group, so one initialisation; each trial adds its own optimizer state
  first = train_lib.create_state(base, task.model, build_optimizer(base, total_steps))
  states = [dict(first, opt_state=build_optimizer(c, total_steps).init(first["params"]))
            for c in configs]
  positions = [{"epoch": 0, "batch": 0}] * n
  sums = [{"window": [0.0, 0.0], "epoch": [0.0, 0.0, 0.0, 0.0]} for _ in range(n)]
  if latest[0] is not None:
    for i, checkpointer in enumerate(checkpointers):
      states[i], meta, _ = checkpointer.restore(parallel.abstract_replicated(states[i]))
      if {k: meta.get(k) for k in vocab_meta} != vocab_meta:
        raise CheckpointError(f"workdir '{workdirs[i]}': the data's vocabulary differs from "
                              "the checkpoint's; resume with the same data.")
      positions[i], sums[i] = meta["position"], meta["sums"]
    if any(p != positions[0] for p in positions):
      for checkpointer in checkpointers:
        checkpointer.close()
      raise _ProgressDiffers(f"positions {positions}")
    log.info("resumed %d trials from checkpoint %d (epoch %d, batch %d)", n, latest[0],
             positions[0]["epoch"] + 1, positions[0]["batch"])
  for workdir in workdirs:  # records of a killed run beyond its checkpoint (or all: none)
    train_lib.rewind_metrics(workdir, latest[0] or 0)
  position = dict(positions[0])
  state = parallel.replicate(_stack(states))
  del states
  log.info("vmap: %d trials in one program (%s differ), %d step(s)/epoch, %d epoch(s)", n,
           ", ".join(varied) or "nothing", steps_per_epoch, base.num_epochs)

  hyper = {k: np.array([getattr(c, k) for c in configs], np.float32)
           for k in varied if k != "dropout"}
  if "dropout" in varied:  # 1 - rate in float64 first, as nn.Dropout computes it
    hyper["keep_prob"] = np.array([1.0 - c.dropout for c in configs]).astype(np.float32)
  hyper = parallel.replicate(hyper)
  jit_step = jax.jit(functools.partial(vmapped_train_step, model=task.model, config=base,
                                       total_steps=total_steps), donate_argnums=(0,))
  base_rng = jax.random.fold_in(jax.random.key(base.seed), 2)  # as train.py: same seed, same keys
  schedules = [learning_rate_schedule(c, total_steps) for c in configs]
  failed: list[Exception | None] = [None] * n

  def save(metrics_per_trial=None):
    host_state = jax.tree.map(to_numpy, state)
    step = int(host_state["step"][0])
    for i in range(n):
      if failed[i] is None:
        meta = dict(task.meta(), config=configs[i].to_dict(), position=position, sums=sums[i],
                    rng=np.asarray(jax.random.key_data(base_rng)).tolist(), step=step,
                    metrics=metrics_per_trial and metrics_per_trial[i])
        checkpointers[i].save(step, parallel.replicate(_unstack(host_state, i)), meta,
                              metrics_per_trial and metrics_per_trial[i])

  show_bar = sys.stderr.isatty() if progress is None else progress
  with train_lib._SignalCatcher() as signals:
    while position["epoch"] < base.num_epochs:
      epoch = position["epoch"]
      batches = data_lib.epoch_batches(train_data, base.batch_size, base.seed, epoch,
                                       base.bucket_width)
      bar = tqdm(total=len(batches), initial=position["batch"], disable=not show_bar,
                 desc=f"epoch {epoch + 1}/{base.num_epochs} [vmap {n}]", unit="step", leave=False)
      epoch_start = time.time()
      samples = 0
      pending = None

      def consume(metrics_N, step):
        metrics_N = {key: to_numpy(value) for key, value in metrics_N.items()}
        for i in range(n):
          if failed[i] is not None:
            continue
          loss = float(metrics_N["loss"][i])
          if not np.isfinite(loss):
            good = checkpointers[i].latest_step()
            failed[i] = train_lib.NonFiniteLoss(
                f"loss is {loss} at step {step}. Last good checkpoint: "
                f"{good if good is not None else 'none'}. Lower learning_rate or set clip_norm.")
            log.info("trial %s: %s", os.path.basename(workdirs[i]), failed[i])
            continue
          s = sums[i]
          s["window"][0] += float(metrics_N["loss_sum"][i])
          s["window"][1] += float(metrics_N["weight"][i])
          for k, key in enumerate(("loss_sum", "weight", "correct", "tokens")):
            s["epoch"][k] += float(metrics_N[key][i])
        if step % base.log_every_steps == 0:
          rate = samples / max(time.time() - epoch_start, 1e-9)
          losses = []
          for i in range(n):
            if failed[i] is None:
              window_loss = sums[i]["window"][0] / max(sums[i]["window"][1], 1.0)
              losses.append(f"{window_loss:.4f}")
              train_lib.append_metrics(workdirs[i], {
                  "step": step, "epoch": epoch + 1, "train/loss": window_loss,
                  "lr": float(schedules[i](step - 1)),
                  "grad_norm": float(metrics_N["grad_norm"][i]), "samples_per_sec": rate})
              sums[i]["window"] = [0.0, 0.0]
            else:
              losses.append("failed")
          if show_bar:
            bar.set_postfix(samples_s=f"{rate:.0f}x{n}")
          else:
            log.info("step %d  epoch %d  losses %s  %.0f samples/s per trial", step, epoch + 1,
                     " ".join(losses), rate)

      while position["batch"] < len(batches):
        rows = batches[position["batch"]]
        batch = data_lib.make_batch(train_data, rows, base.batch_size, base.bucket_width)
        state, metrics = parallel.settle(jit_step(state, parallel.shard_batch(batch), base_rng, hyper))
        samples += len(rows)
        position["batch"] += 1
        if pending is not None:
          consume(*pending)
        pending = (metrics, step := int(to_numpy(state["step"])[0]))
        bar.update(1)
        if stop_after_step is not None and step >= stop_after_step:
          signals.signum = signals.signum or "stop_after_step"
        if signals.signum is not None:
          consume(*pending)
          save()
          bar.close()
          raise train_lib.TrainingInterrupted(
              f"stopped by signal {signals.signum} at step {step}; checkpoints saved. "
              "Run the same command again to resume.")
        if base.checkpoint_every_steps and step % base.checkpoint_every_steps == 0 \
            and position["batch"] < len(batches):
          consume(*pending)
          pending = None
          save()
      if pending is not None:
        consume(*pending)
      bar.close()
      epoch_time = time.time() - epoch_start
      step = int(to_numpy(state["step"])[0])
      position = {"epoch": epoch + 1, "batch": 0}
      last = epoch + 1 == base.num_epochs
      evaluate = (epoch + 1) % base.eval_every_epochs == 0 or last
      checkpoint_metrics = [None] * n
      host_params = jax.tree.map(to_numpy, state["params"]) if evaluate else None
      for i in range(n):
        epoch_sums = sums[i]["epoch"]
        sums[i]["epoch"] = [0.0, 0.0, 0.0, 0.0]
        if failed[i] is not None:
          continue
        record = {"step": step, "epoch": epoch + 1,
                  "train/loss": epoch_sums[0] / max(epoch_sums[1], 1.0),
                  "train/token_accuracy": epoch_sums[2] / max(epoch_sums[3], 1.0),
                  "train/epoch_seconds": epoch_time,
                  "train/samples_per_sec": samples / max(epoch_time, 1e-9),
                  "vmap_trials": n}
        if evaluate:
          params_i = parallel.replicate(_unstack(host_params, i))
          val_metrics, _ = train_lib.evaluate_pairs(task, params_i, val_pairs,
                                                    base.eval_decode_samples,
                                                    full_text_metrics=False)
          checkpoint_metrics[i] = {f"val/{k}": v for k, v in val_metrics.items()}
          record.update(checkpoint_metrics[i])
        train_lib.append_metrics(workdirs[i], record)
        log.info("%s  epoch %d/%d  step %d  train loss %.4f  %s", os.path.basename(workdirs[i]),
                 epoch + 1, base.num_epochs, step, record["train/loss"],
                 "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val/")))
      log.info("epoch %d/%d: %.0fs for %d trials (%.0f samples/s per trial)", epoch + 1,
               base.num_epochs, epoch_time, n, samples / max(epoch_time, 1e-9))
      if (epoch + 1) % base.checkpoint_every_epochs == 0 or last:
        save(checkpoint_metrics)

  # --- each trial's final evaluation, with the checkpoint `translate` would use ------------
  results: list[dict[str, Any] | Exception] = []
  host_state = jax.tree.map(to_numpy, state)
  abstract = parallel.abstract_replicated(_unstack(host_state, 0))
  for i, checkpointer in enumerate(checkpointers):
    if failed[i] is not None:
      checkpointer.close()
      results.append(failed[i])
      continue
    final_step = checkpointer.best_step() or checkpointer.latest_step()
    params = parallel.replicate(_unstack(host_state["params"], i))
    if final_step is not None and final_step != int(host_state["step"][0]):
      params = checkpointer.restore(abstract, step=final_step)[0]["params"]
    checkpointer.close()
    summary = {"step": final_step}
    for name, pairs in (("val", val_pairs), ("test", test_pairs)):
      if len(pairs):
        split_metrics, _ = train_lib.evaluate_pairs(task, params, pairs)
        summary.update({f"{name}/{k}": v for k, v in split_metrics.items()})
    train_lib.append_metrics(workdirs[i], dict(summary, final=True))
    if is_primary():
      with open(os.path.join(workdirs[i], "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log.info("%s final (checkpoint %s): %s", os.path.basename(workdirs[i]), final_step,
             "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k != "step"))
    results.append(summary)
  return results


# ---------------------------------------------------------------------------
# Running a sweep
# ---------------------------------------------------------------------------

def _read_json(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def trial_status(trial_dir: str) -> str:
  """'done' (results.json), 'failed' (diverged), 'started' (checkpoints) or 'new'."""
  if os.path.exists(os.path.join(trial_dir, "results.json")):
    return "done"
  info = _read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  if info.get("status") == "failed":
    return "failed"
  return "started" if _checkpoint_steps(trial_dir) else "new"


def _checkpoint_steps(trial_dir: str) -> list[int]:
  try:
    names = os.listdir(os.path.join(trial_dir, "checkpoints"))
  except OSError:
    return []
  return sorted(int(name) for name in names if name.isdigit())


def _write_trial_info(trial: Trial, trial_dir: str, status: str, seconds: float,
                      vmap_trials: int, error: str | None = None) -> None:
  """trial.json: the trial's overrides, status and wall time (summed over resumptions)."""
  path = os.path.join(trial_dir, TRIAL_FILE)
  before = _read_json(path) or {}
  info = {"name": trial.name, "overrides": trial.overrides, "status": status,
          "wall_seconds": before.get("wall_seconds", 0.0) + seconds,
          "vmap_trials": vmap_trials, "error": error,
          "finished": time.strftime("%Y-%m-%dT%H:%M:%S") if status != "interrupted" else None}
  os.makedirs(trial_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(info, f, indent=2)


def _plan(trials: list[Trial], workdir: str, vectorize: bool) -> list[list[Trial]]:
  """Groups of trials that run as one program: same vmap key and same checkpoint step."""
  if not vectorize:
    return [[t] for t in trials]
  groups: dict[tuple, list[Trial]] = {}
  for trial in trials:
    steps = _checkpoint_steps(os.path.join(workdir, trial.name))
    key = (vmap_group_key(trial.config), steps[-1] if steps else None)
    groups.setdefault(key, []).append(trial)
  return list(groups.values())


def run_sweep(sweep: Sweep, workdir: str, vectorize: bool | None = None,
              progress: bool | None = None, stop_after_step: int | None = None,
              tensorboard: bool = False, argv: list[str] | None = None) -> list[dict[str, Any]]:
  """Runs every unfinished trial in workdir/<trial>/, then writes results.csv, results.md
  and curves.png; returns the table's rows, best first.

  stop_after_step: each program stops after that step, as on SIGINT (for tests).
  """
  vectorize = sweep.vectorize if vectorize is None else vectorize
  os.makedirs(workdir, exist_ok=True)
  train_lib.setup_logging(None)
  with open(os.path.join(workdir, tracking.SWEEP_FILE), "w") as f:
    json.dump({"keys": sweep.keys, "metric": sweep.metric, "mode": sweep.mode,
               "vectorize": vectorize, "trials": [t.name for t in sweep.trials],
               "overrides": {t.name: t.overrides for t in sweep.trials},
               "base": sweep.base.to_dict()}, f, indent=2)
  todo = [t for t in sweep.trials
          if trial_status(os.path.join(workdir, t.name)) not in ("done", "failed")]
  log.info("sweep: %d trial(s) in %s, %d done, %d to run%s", len(sweep.trials), workdir,
           len(sweep.trials) - len(todo), len(todo), " (vectorised)" if vectorize else "")
  groups = _plan(todo, workdir, vectorize)
  while groups:
    group = groups.pop(0)
    dirs = [os.path.join(workdir, t.name) for t in group]
    start = time.time()
    try:
      if len(group) == 1:
        log.info("trial %s", group[0].name)
        try:
          train_lib.train_and_evaluate(group[0].config, dirs[0], argv=argv, progress=progress,
                             stop_after_step=stop_after_step)
          outcomes: list[Any] = [None]
        except train_lib.NonFiniteLoss as error:
          outcomes = [error]
      else:
        log.info("vmap group of %d: %s", len(group), ", ".join(t.name for t in group))
        try:
          outcomes = train_vectorized([t.config for t in group], dirs, argv=argv,
                                      progress=progress, stop_after_step=stop_after_step)
        except _ProgressDiffers as why:  # e.g. a damaged checkpoint fell back to an older step
          log.info("trials resume from different positions (%s): running them one by one", why)
          groups[:0] = [[t] for t in group]
          continue
    except train_lib.TrainingInterrupted:
      for trial, trial_dir in zip(group, dirs):
        _write_trial_info(trial, trial_dir, "interrupted", (time.time() - start) / len(group),
                          len(group))
      raise
    finally:
      train_lib.setup_logging(None)  # train_and_evaluate's train.log handler stays with its trial
    seconds = (time.time() - start) / len(group)
    for trial, trial_dir, outcome in zip(group, dirs, outcomes):
      if isinstance(outcome, train_lib.NonFiniteLoss):
        log.info("trial %s diverged: %s", trial.name, outcome)
        _write_trial_info(trial, trial_dir, "failed", seconds, len(group), str(outcome))
      else:
        _write_trial_info(trial, trial_dir, "done", seconds, len(group))
      if tensorboard:
        tracking.export_tensorboard(trial_dir)
    write_outputs(sweep, workdir)
  rows = write_outputs(sweep, workdir)
  log.info("\n%s", markdown_table(sweep, rows))
  return rows


# ---------------------------------------------------------------------------
# Results: results.csv, results.md, curves.png
# ---------------------------------------------------------------------------

def _metric_column(prefix: str, metric: str) -> str:
  return f"{prefix}_{metric.replace('/', '_')}"


def trial_row(sweep: Sweep, trial: Trial, trial_dir: str) -> dict[str, Any] | None:
  """One finished trial: swept values, final (last epoch) and best (over epochs) validation
  metrics, steps, wall time and training throughput; None if it has not finished."""
  status = trial_status(trial_dir)
  if status not in ("done", "failed"):
    return None
  records = tracking.read_metrics(trial_dir)
  epochs = [r for r in records if not r.get("final") and "train/epoch_seconds" in r]
  evals = [r for r in epochs if any(k.startswith("val/") for k in r)]
  info = _read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  row: dict[str, Any] = {"trial": trial.name, **trial.overrides}
  metrics = list(METRICS) + ([sweep.metric] if sweep.metric not in METRICS else [])
  for metric in metrics:
    values = [r[metric] for r in evals if metric in r]
    row[_metric_column("final", metric)] = values[-1] if values else None
    pick = min if metric.endswith("loss") else max
    row[_metric_column("best", metric)] = pick(values) if values else None
  rates = [r["train/samples_per_sec"] for r in epochs[1:] or epochs]  # the first compiles
  row["steps"] = max((r["step"] for r in records if "step" in r and r["step"] is not None),
                     default=0)
  row["wall_seconds"] = info.get("wall_seconds")
  row["samples_per_sec"] = float(np.median(rates)) if rates else None
  row["vmap_trials"] = info.get("vmap_trials", 1)
  row["status"] = status
  return row


def sort_rows(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Best first by the sweep's metric (best over epochs), ties by best val/loss; failed last."""
  column = _metric_column("best", sweep.metric)
  sign = -1.0 if sweep.mode == "max" else 1.0

  def key(row):
    value = row.get(column)
    missing = value is None or row["status"] != "done"
    loss = row.get("best_val_loss")
    return (missing, 0.0 if missing else sign * value, math.inf if loss is None else loss)

  return sorted(rows, key=key)


def collect_rows(sweep: Sweep, workdir: str) -> list[dict[str, Any]]:
  rows = [trial_row(sweep, t, os.path.join(workdir, t.name)) for t in sweep.trials]
  return sort_rows(sweep, [r for r in rows if r is not None])


def _columns(sweep: Sweep) -> list[str]:
  metrics = list(METRICS) + ([sweep.metric] if sweep.metric not in METRICS else [])
  return (["trial", *sweep.keys]
          + [_metric_column(p, m) for p in ("final", "best") for m in metrics]
          + ["steps", "wall_seconds", "samples_per_sec", "vmap_trials", "status"])


def _format(column: str, value: Any) -> str:
  if value is None:
    return ""
  if column == "wall_seconds":
    return f"{value:.1f}"
  if column == "samples_per_sec":
    return f"{value:.0f}"
  if isinstance(value, float):
    return f"{value:.4f}"
  return str(value)


def markdown_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
  """The results as a Markdown table, best first, with what the sweep cost."""
  columns = [c for c in _columns(sweep) if c != "status"
             or any(r["status"] != "done" for r in rows)]
  lines = [f"Sorted by best {sweep.metric} ({sweep.mode}); final = last epoch, best = best epoch.",
           "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(
        _as_text(row.get(c)) if c in sweep.keys else _format(c, row.get(c))
        for c in columns) + " |")
  wall = sum(r["wall_seconds"] or 0.0 for r in rows)
  lines += ["", f"{len(rows)} trial(s), {wall:.0f} s of wall time in all "
            f"({wall / max(len(rows), 1):.0f} s per trial)."]
  return "\n".join(lines)


def write_outputs(sweep: Sweep, workdir: str) -> list[dict[str, Any]]:
  """results.csv, results.md and curves.png from the trials' workdirs; returns the rows."""
  rows = collect_rows(sweep, workdir)
  columns = _columns(sweep)
  with open(os.path.join(workdir, RESULTS_CSV), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: row.get(c) for c in columns})
  with open(os.path.join(workdir, RESULTS_MD), "w") as f:
    f.write(markdown_table(sweep, rows) + "\n")
  runs = {r["trial"]: tracking.read_metrics(os.path.join(workdir, r["trial"])) for r in rows}
  if runs:
    tracking.plot_runs(runs, os.path.join(workdir, tracking.CURVES_PNG),
                       title=f"sweep {os.path.basename(os.path.abspath(workdir))}: "
                       f"{len(runs)} trial(s)")
  return rows

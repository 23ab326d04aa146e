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
jitted program (loop.train_trials: `steps.train_step` under `jax.vmap` with each trial's
hyperparameters as arrays); each trial's workdir ends as a sequential run would leave it. `seed` is never
vectorised: it also decides the data, its splits and the batch order, so trials with
different seeds are different programs. Shape-changing keys are different programs too.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import hashlib
import io
import itertools
import logging
import math
import operator
import os
import re
import subprocess
import sys
import time
from typing import Any

import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax import loop
from seq2seq_jax import runtime
from seq2seq_jax import tracking
from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.config import Config
from seq2seq_jax.errors import UserError, is_whole_number
from seq2seq_jax.loop import VECTORIZED_KEYS, vmap_group_key  # noqa: F401 (sweep.VECTORIZED_KEYS)
from seq2seq_jax.metrics import lower_is_better
from seq2seq_jax.study import PRUNERS, SAMPLERS, check_settings

log = logging.getLogger(__name__)
METRICS = ("val/loss", "val/token_accuracy", "val/exact_match")  # results' columns for every sweep
# what a run's validation records hold (loop._validate): text models, series models
VALIDATION_METRICS = {"text": METRICS + ("val/cer", "val/chrf", "val/bleu"),
                      "series": ("val/loss", "val/mse", "val/mae")}
DISTRIBUTIONS = ("uniform", "log_uniform", "int")
FORMS = ("grid", "random", "trials", "search")
SPEC_KEYS = ("grid", "random", "trials", "search", "num_trials", "seed", "metric", "mode",
             "vectorize", "sampler", "sampler_settings", "pruner", "pruner_settings",
             "group_size", "heartbeat_seconds", "grace_seconds", "enqueue")
# Optuna's samplers seed NumPy's legacy generator (0 to 2**32 - 1) with the sweep's seed plus
# a worker's number or pid (at most 2**22 on Linux): the seed leaves room for them.
MAX_SWEEP_SEED = 2**32 - 1 - 2**22
TRIAL_FILE = workdir_lib.TRIAL_FILE
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
  trials: list[Trial]  # the declared trials (a search: its `enqueue`d first ones)
  metric: str = "val/exact_match"
  mode: str = "max"
  vectorize: bool = False
  # the search: `space` holds each key's choices (a list) or (kind, low, high)
  space: dict[str, Any] = dataclasses.field(default_factory=dict)
  searched: bool = False  # True: the sampler proposes num_trials trials (search form)
  num_trials: int = 0
  sampler: str = "random"
  sampler_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  pruner: str = "none"
  pruner_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  group_size: int = 4  # trials a worker asks for at once to train as one program
  heartbeat_seconds: float = 10.0
  grace_seconds: float = 60.0  # a running trial without a heartbeat for this long is retried

  def trial_for(self, values: dict[str, Any]) -> Trial:
    return make_trial(self.base, values)

  def declared(self, name: str | None) -> Trial | None:
    """The declared trial of this name, if any."""
    return next((trial for trial in self.trials if trial.name == name), None)


def make_trial(base: Config, values: dict[str, Any], where: str = "the sweep") -> Trial:
  """The trial of these swept values on base (typed and checked as the Config fields)."""
  config = config_lib.apply_overrides(base, [f"{k}={_as_text(v)}" for k, v in values.items()],
                                      f"{where}'s swept values")
  typed = {key: getattr(config, key) for key in values}
  return Trial(trial_name(typed), typed, config)


# ---------------------------------------------------------------------------
# Declaration
# ---------------------------------------------------------------------------

def _as_text(value: Any) -> str:
  """A value as `--set` text; floats round-trip exactly. A NumPy scalar (a grid from
  np.logspace, say) as its Python value: numpy 2's repr is "np.float64(0.003)"."""
  if isinstance(value, np.generic):
    value = value.item()
  return repr(value) if isinstance(value, float) else str(value)


MAX_NAME = 255  # characters (ASCII: bytes) of a trial's directory name: file systems allow 255


def trial_name(overrides: dict[str, Any]) -> str:
  """'learning_rate=0.003,seed=1', with characters unsafe in paths replaced by '_'; a name
  longer than MAX_NAME (many searched floats) keeps its start and ends with a hash of the
  whole, so that it stays a directory name and one trial's own."""
  if not overrides:
    return "base"
  whole = ",".join(f"{key}={_as_text(value)}" for key, value in overrides.items())
  name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", whole)
  if len(name) > MAX_NAME:
    digest = hashlib.sha256(whole.encode("utf-8")).hexdigest()[:12]
    name = f"{name[:MAX_NAME - 20]},sha256={digest}"  # 20: ",sha256=" and the digest
  return name


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _is_distribution(space: Any) -> bool:
  """(kind, low, high), or what was meant as one: a tuple led by a kind with a number in it
  (a malformed range is refused, not taken as choices), or a word and two numbers (a
  misspelt kind). A tuple of words, ("uniform", "digits"), is choices."""
  if not isinstance(space, tuple) or not space or not isinstance(space[0], str):
    return False
  if space[0] in DISTRIBUTIONS:
    return len(space) == 3 or any(_is_number(v) for v in space[1:])
  return len(space) == 3 and all(_is_number(v) for v in space[1:])


def _draw(rng: np.random.Generator, key: str, space: Any, where: str) -> Any:
  if _is_distribution(space):
    if space[0] not in DISTRIBUTIONS:
      close = difflib.get_close_matches(space[0], DISTRIBUTIONS, n=1)
      raise UserError(f"{where}: '{key}': unknown kind {space[0]!r} in {space!r}; use "
                      f"{', '.join(DISTRIBUTIONS)}{f' (did you mean {close[0]}?)' if close else ''}"
                      ", or a list for choices.")
    numbers = len(space) == 3 and all(_is_number(v) and math.isfinite(v) for v in space[1:])
    if not numbers or not space[1] < space[2] or (
        space[0] == "int" and not all(float(v).is_integer() for v in space[1:])):
      raise UserError(f"{where}: '{key}': expected (kind, low, high) with low < high, finite "
                      f"numbers (whole ones for int), got {space!r}.")
    kind, low, high = space
    if kind == "int":
      return int(rng.integers(int(low), int(high) + 1))
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
  unknown = sorted(set(spec) - set(SPEC_KEYS))
  if unknown:
    raise UserError(f"{where}: unknown sweep key(s) {', '.join(unknown)}; use "
                    f"{', '.join(sorted(SPEC_KEYS))}.")
  seed = spec.get("seed", 0)
  try:  # any integer type (a NumPy one too), not a float or a bool
    whole = None if isinstance(seed, bool) else operator.index(seed)
  except TypeError:
    whole = None
  if whole is None or not 0 <= whole <= MAX_SWEEP_SEED:
    raise UserError(f"{where}: seed must be a whole number from 0 to {MAX_SWEEP_SEED} "
                    f"(2**32 - 1 - 2**22), got {seed!r}.")
  forms = [form for form in FORMS if form in spec]
  if len(forms) != 1:
    raise UserError(f"{where}: declare exactly one of 'grid', 'random', 'trials' or 'search'.")
  if "search" in spec:
    return []  # asked from the sampler as the sweep runs
  if "grid" in spec:
    if not isinstance(spec["grid"], dict) or not spec["grid"]:
      raise UserError(f"{where}: 'grid' must be a non-empty dict of key: [values], got "
                      f"{spec['grid']!r}.")
    grid = {key: values.tolist() if isinstance(values, np.ndarray) and values.ndim == 1
            else values for key, values in spec["grid"].items()}  # np.logspace(...) too
    for key, values in grid.items():
      if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"{where}: grid '{key}' must be a non-empty list, got {values!r}.")
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
  if "trials" in spec:
    trials = spec["trials"]
    if not isinstance(trials, (list, tuple)) or not trials or not all(isinstance(t, dict)
                                                                       for t in trials):
      raise UserError(f"{where}: 'trials' must be a non-empty list of {{key: value}} dicts "
                      "({} is the base config itself).")
    return [dict(t) for t in trials]
  if not isinstance(spec.get("num_trials"), int) or spec["num_trials"] <= 0:
    raise UserError(f"{where}: a random sweep needs num_trials, a positive whole number.")
  if not isinstance(spec["random"], dict) or not spec["random"]:
    raise UserError(f"{where}: 'random' must be a non-empty dict of key: [choices] or "
                    f"(kind, low, high), got {spec['random']!r}.")
  rng = np.random.default_rng(spec.get("seed", 0))
  return [{key: _draw(rng, key, space, where) for key, space in spec["random"].items()}
          for _ in range(spec["num_trials"])]


def _check_space(space: Any, where: str) -> dict[str, Any]:
  if not isinstance(space, dict) or not space:
    raise UserError(f"{where}: 'search' must be a non-empty dict of key: [choices] or "
                    "(kind, low, high).")
  for key, values in space.items():
    _draw(np.random.default_rng(0), key, values, where)  # the same checks as random's
  # a tuple of choices is choices, as in a random sweep (the study reads a tuple as a range);
  # an int range's ends as ints (Optuna's suggest_int)
  return {k: (v[0], int(v[1]), int(v[2])) if _is_distribution(v) and v[0] == "int"
          else tuple(v) if _is_distribution(v) else list(v) for k, v in space.items()}


def _check_search_reach(base: Config, space: dict[str, Any], where: str) -> dict[str, list]:
  """Every value a search can propose is a valid setting, on the base config or beside one
  value of another searched key (decoder_input=repeat beside attention=none): each choice,
  both ends of each range and a value inside a float range (a range past a key's limits,
  or a float range on an int key, stopped the sweep at its first such draw, on every
  rerun). A draw whose values are not valid together is skipped as the sweep runs.
  Returns each key's choices, typed as the trials hold them."""
  candidates = {}
  for key, values in space.items():
    if not isinstance(values, tuple):
      candidates[key] = list(values)
    elif values[0] == "int":
      candidates[key] = [values[1], values[2]]
    else:
      inside = _draw(np.random.default_rng(0), key, values, where)
      candidates[key] = [values[1], values[2], inside]
  typed: dict[tuple[str, int], Any] = {}  # (key, index of the value): the value typed
  errors = {}
  for key, values in candidates.items():
    for index, value in enumerate(values):
      try:
        typed[key, index] = make_trial(base, {key: value}, where).overrides[key]
      except UserError as error:
        errors[key, index] = error
  for (key, index), error in errors.items():  # beside one value of another key, valid alone
    value = candidates[key][index]
    besides = [(other, typed[other, i]) for other in space if other != key
               for i in range(len(candidates[other])) if (other, i) in typed]
    for other, other_value in besides:
      try:
        trial = make_trial(base, {key: value, other: other_value}, where)
      except UserError:
        continue
      typed[key, index] = trial.overrides[key]
      break
    else:
      reach = "reaches" if isinstance(space[key], tuple) else "offers"
      raise UserError(f"{where}: search '{key}' {space[key]!r} {reach} {value!r}, which is not "
                      f"a valid setting: {error}")
  return {key: list(dict.fromkeys(typed[key, i] for i in range(len(candidates[key]))))
          for key in space}


def _within(value: Any, space: Any) -> bool:
  """Whether a search space (its choices typed) holds a trial's value: one of its choices,
  or in its range."""
  if isinstance(space, tuple):
    return space[1] <= value <= space[2]
  return value in space


def make_sweep(base: Config, spec: dict[str, Any], where: str = "get_sweep()") -> Sweep:
  """Typed, validated trials (each a full Config) and the search from a declaration."""
  trials, seen = [], set()
  keys: list[str] = []
  for overrides in expand(spec, where):
    for key in overrides:
      if key not in keys:
        keys.append(key)
    trial = make_trial(base, overrides, where)
    if trial.name in seen:
      log.warning("warning: %s: trial %s is declared twice (random draws repeat where the "
                  "choices are few); running it once", where, trial.name)
      continue
    seen.add(trial.name)
    trials.append(trial)
  series = base.input_mode == "real"  # a series model has no exact match: its loss
  metric = spec.get("metric", "val/loss" if series else "val/exact_match")
  known = VALIDATION_METRICS["series" if series else "text"]
  if metric not in known:
    raise UserError(f"{where}: metric must be one of the validation metrics "
                    f"{', '.join(known)}; got {metric!r}.")
  mode = spec.get("mode", "min" if lower_is_better(metric) else "max")
  if mode not in ("max", "min"):
    raise UserError(f"{where}: mode must be 'max' or 'min', got {mode!r}.")
  searched = "search" in spec
  sampler = spec.get("sampler", "tpe" if searched else "random")
  pruner = spec.get("pruner", "none")
  if sampler not in SAMPLERS or (searched and sampler == "grid"):
    raise UserError(f"{where}: sampler must be one of {', '.join(SAMPLERS)} "
                    f"(a 'search' needs random or tpe); got {sampler!r}.")
  if not searched and sampler == "tpe":
    raise UserError(f"{where}: sampler 'tpe' proposes its own trials: declare a 'search' "
                    "space with num_trials instead of grid/random/trials.")
  if pruner not in PRUNERS:
    raise UserError(f"{where}: pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}.")
  if searched:
    space = _check_space(spec["search"], where)
    keys = list(space)
    typed = _check_search_reach(base, space, where)
    space = {key: values if isinstance(values, tuple) else typed[key]  # as the trials hold them
             for key, values in space.items()}
    first = spec.get("enqueue", [])
    if not isinstance(first, list) or not all(isinstance(t, dict) and set(t) == set(keys)
                                              for t in first):
      raise UserError(f"{where}: 'enqueue' must be a list of {{key: value}} dicts giving "
                      f"every searched key ({', '.join(keys)}).")
    trials = [make_trial(base, values, where) for values in first]
    for trial in trials:  # the study records an enqueued trial's values in the space
      outside = next((key for key in keys if not _within(trial.overrides[key], space[key])), None)
      if outside is not None:
        raise UserError(f"{where}: enqueued {outside}={trial.overrides[outside]!r} is outside "
                        f"its search space {space[outside]!r}: widen the space, or enqueue "
                        "a value in it.")
    if not isinstance(spec.get("num_trials"), int) or spec["num_trials"] <= 0:
      raise UserError(f"{where}: a search needs num_trials, a positive whole number.")
  else:  # each key's declared values, in declaration order: the study's choices
    if "enqueue" in spec:
      raise UserError(f"{where}: 'enqueue' goes with a 'search'; grid/random/trials are "
                      "all enqueued already.")
    space = {key: list(dict.fromkeys(t.overrides[key] for t in trials if key in t.overrides))
             for key in keys}
  numbers = {}
  for name in ("group_size", "heartbeat_seconds", "grace_seconds"):
    value = spec.get(name, Sweep.__dataclass_fields__[name].default)
    whole = name == "group_size"
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
        or not math.isfinite(value) or (whole and not is_whole_number(value))):
      raise UserError(f"{where}: {name} must be a positive {'whole ' if whole else ''}"
                      f"number, got {value!r}.")
    numbers[name] = value
  if numbers["heartbeat_seconds"] >= numbers["grace_seconds"]:
    raise UserError(f"{where}: heartbeat_seconds ({numbers['heartbeat_seconds']!r}) must be "
                    f"less than grace_seconds ({numbers['grace_seconds']!r}): a trial whose "
                    "heartbeat is older than grace_seconds is taken for dead and run again.")
  for name in ("sampler_settings", "pruner_settings"):
    if not isinstance(spec.get(name, {}), dict):
      raise UserError(f"{where}: {name} must be a dict of the Optuna {name[:-9]}'s arguments.")
  vectorize = spec.get("vectorize", False)
  if not isinstance(vectorize, bool):
    raise UserError(f"{where}: vectorize must be True or False, got {vectorize!r}.")
  check_settings(sampler, spec.get("sampler_settings", {}), pruner,
                 spec.get("pruner_settings", {}), where)
  return Sweep(base, keys, trials, metric, mode, vectorize,
               space=space, searched=searched,
               num_trials=spec["num_trials"] if searched else len(trials),
               sampler=sampler, sampler_settings=dict(spec.get("sampler_settings", {})),
               pruner=pruner, pruner_settings=dict(spec.get("pruner_settings", {})),
               seed=int(spec.get("seed", 0)), group_size=int(numbers["group_size"]),
               heartbeat_seconds=float(numbers["heartbeat_seconds"]),
               grace_seconds=float(numbers["grace_seconds"]))


def load_sweep(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
  """A sweep file's declaration; `overrides` (key=value) change the base config."""
  base = config_lib.load_config_file(path)  # get_config(), validated
  module = config_lib.load_module(path, "_seq2seq_jax_sweep")
  if not hasattr(module, "get_sweep"):
    raise UserError(f"'{path}' has no get_sweep(): it is a plain config; run it with "
                    "`seq2seq-jax train --config`, or add get_sweep() (see configs/sweep_lr.py).")
  spec = config_lib.call_in_file(path, module, "get_sweep")
  if not isinstance(spec, dict):
    raise UserError(f"'{path}': get_sweep() must return a dict.")
  base = config_lib.apply_overrides(base, list(overrides))
  sweep = make_sweep(base, spec, f"'{path}'")
  clash = sorted({item.split("=", 1)[0].strip() for item in overrides} & set(sweep.keys))
  if clash:
    raise UserError(f"--set {', '.join(clash)}: swept by '{path}'; change the sweep instead.")
  return sweep


# ---------------------------------------------------------------------------
# Running a sweep
# ---------------------------------------------------------------------------

def trial_status(trial_dir: str, time_budget_minutes: float | None = None) -> str:
  """'done' (results.json), 'failed' (diverged), 'pruned', 'started' (checkpoints) or 'new'.

  time_budget_minutes: the sweep's budget now. A trial that a time budget stopped is done
  while that is the budget it ran under or a smaller one; with a larger one, or none, it is
  'started': the sweep resumes it from its checkpoint, as `train` would."""
  results_path = os.path.join(trial_dir, workdir_lib.RESULTS_FILE)
  if os.path.exists(results_path):
    results = workdir_lib.read_json(results_path) or {}
    return "started" if _budget_allows_more(results, time_budget_minutes) else "done"
  info = workdir_lib.read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  if info.get("status") in ("failed", "pruned"):
    return info["status"]
  return "started" if _checkpoint_steps(trial_dir) else "new"


def _budget_allows_more(results: dict[str, Any], time_budget_minutes: float | None) -> bool:
  """results.json of a run that a time budget stopped, and a budget now larger (or none)."""
  if not results.get("stopped_by_time_budget"):
    return False
  if not time_budget_minutes or math.isinf(time_budget_minutes):
    return True
  before = results.get("time_budget_minutes")
  return isinstance(before, (int, float)) and time_budget_minutes > before


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
  before = workdir_lib.read_json(path) or {}
  info = {"name": trial.name, "overrides": trial.overrides, "status": status,
          "wall_seconds": before.get("wall_seconds", 0.0) + seconds,
          "vmap_trials": vmap_trials, "error": error,
          "finished": time.strftime("%Y-%m-%dT%H:%M:%S") if status != "interrupted" else None}
  os.makedirs(trial_dir, exist_ok=True)
  workdir_lib.write_json(path, info)


def _plan(trials: list, workdir: str, vectorize: bool) -> list[list]:
  """Groups of (optuna trial, Trial) that run as one program: same vmap key and same
  checkpoint step (in the order asked)."""
  if not vectorize:
    return [[t] for t in trials]
  groups: dict[tuple, list] = {}
  for pair in trials:
    trial = pair[1]
    steps = _checkpoint_steps(os.path.join(workdir, trial.name))
    key = (vmap_group_key(trial.config), steps[-1] if steps else None)
    groups.setdefault(key, []).append(pair)
  return list(groups.values())


def _final_value(sweep: Sweep, summary: dict[str, Any]) -> float:
  value = summary.get(sweep.metric)
  return float("nan") if value is None else float(value)


def _tell_finished(study, sweep: Sweep, optuna_trial, trial: Trial, trial_dir: str) -> bool:
  """A trial whose workdir already finished (an earlier run of the sweep): told, not run."""
  status = trial_status(trial_dir, sweep.base.time_budget_minutes)
  if status == "done":
    study.complete(optuna_trial, _final_value(sweep, workdir_lib.read_json(
        os.path.join(trial_dir, workdir_lib.RESULTS_FILE)) or {}))
  elif status in ("failed", "pruned"):
    (study.fail if status == "failed" else study.prune)(optuna_trial)
  else:
    return False
  return True


def _run_group(study, sweep: Sweep, group: list, workdir: str, progress, stop_after_step,
               argv, tensorboard: bool) -> None:
  """Trains one group of asked trials as one program and tells the study each outcome."""
  dirs = [os.path.join(workdir, trial.name) for _, trial in group]
  todo = [(pair, d) for pair, d in zip(group, dirs)
          if not _tell_finished(study, sweep, pair[0], pair[1], d)]
  if not todo:
    return
  group, dirs = [pair for pair, _ in todo], [d for _, d in todo]
  optuna_trials = [ot for ot, _ in group]
  if len(group) == 1:
    log.info("trial %s", group[0][1].name)
  else:
    log.info("vmap group of %d: %s", len(group), ", ".join(t.name for _, t in group))

  def prune(epoch: int, metrics_by_trial: dict[int, dict[str, float]]) -> list[int]:
    """Every trial reports, then each is judged, best first: an asynchronous pruner
    (ASHA) compares a trial with those judged before it, so group-mates count as if
    they had finished the epoch one after another, the best earliest."""
    values = {i: float(metrics[sweep.metric]) for i, metrics in metrics_by_trial.items()
              if sweep.metric in metrics}
    for i, value in values.items():
      study.report(optuna_trials[i], value, epoch)
    best_first = sorted(values, key=lambda i: values[i], reverse=sweep.mode == "max")
    pruned = [i for i in best_first if study.should_prune(optuna_trials[i])]
    for i in pruned:  # recorded now: an interrupt later in the group cannot undo it
      _record_outcome(study, sweep, *group[i], dirs[i], loop.Pruned(epoch, metrics_by_trial[i]),
                      (time.time() - start) / len(group), len(group), tensorboard=False)
      told.add(i)
    return pruned

  told: set[int] = set()  # the trials pruned (and recorded) while the group trains
  start = time.time()
  try:
    with study.beating(optuna_trials):
      outcomes = loop.train_trials([t.config for _, t in group], dirs, argv=argv,
                                   progress=progress, stop_after_step=stop_after_step,
                                   prune=prune)
  except loop.ProgressDiffers as why:  # e.g. a damaged checkpoint fell back to an older step
    log.info("trials resume from different positions (%s): running them one by one", why)
    for pair in group:
      _run_group(study, sweep, [pair], workdir, progress, stop_after_step, argv, tensorboard)
    return
  except workdir_lib.WorkdirBusy as busy:
    # another worker still trains that trial (its heartbeat came late, so the study handed
    # out a copy): this copy ends failed, and the live worker tells the study the outcome;
    # nothing of the trial's files is touched here, and the group's others train on
    log.warning("warning: trial %s is trained by another process (its workdir is locked): "
                "left to it", os.path.basename(busy.workdir))
    rest = []
    for pair, trial_dir in zip(group, dirs):
      if trial_dir == busy.workdir:
        study.release(pair[0])
      else:
        rest.append(pair)
    if rest:
      _run_group(study, sweep, rest, workdir, progress, stop_after_step, argv, tensorboard)
    return
  except BaseException as error:  # interrupted (signal, stop_after_step) or broken
    # a trial the pruner (or a NaN) had stopped before keeps that outcome; the others
    # run again later, from their checkpoints
    stopped = getattr(error, "stopped", None) or [None] * len(group)
    seconds = (time.time() - start) / len(group)
    for i, ((optuna_trial, trial), trial_dir, outcome) in enumerate(zip(group, dirs, stopped)):
      if i in told:
        continue
      if outcome is not None:
        with contextlib.suppress(Exception):
          _record_outcome(study, sweep, optuna_trial, trial, trial_dir, outcome, seconds,
                          len(group), tensorboard)
        continue
      _write_trial_info(trial, trial_dir, "interrupted", seconds, len(group))
      with contextlib.suppress(Exception):
        study.requeue(optuna_trial)
    raise
  seconds = (time.time() - start) / len(group)
  for i, ((optuna_trial, trial), trial_dir, outcome) in enumerate(zip(group, dirs, outcomes)):
    if i in told:
      if tensorboard:
        tracking.export_tensorboard(trial_dir)
      continue
    _record_outcome(study, sweep, optuna_trial, trial, trial_dir, outcome, seconds, len(group),
                    tensorboard)


def _record_outcome(study, sweep: Sweep, optuna_trial, trial: Trial, trial_dir: str, outcome,
                    seconds: float, group_size: int, tensorboard: bool) -> None:
  """What a trial ended with (its final metrics, a NonFiniteLoss or loop.Pruned): its
  trial.json, the study, and its TensorBoard events when asked."""
  if isinstance(outcome, loop.NonFiniteLoss):
    log.info("trial %s diverged: %s", trial.name, outcome)
    _write_trial_info(trial, trial_dir, "failed", seconds, group_size, str(outcome))
    study.fail(optuna_trial)
  elif isinstance(outcome, loop.Pruned):
    _write_trial_info(trial, trial_dir, "pruned", seconds, group_size,
                      f"pruned after epoch {outcome.epoch}")
    study.prune(optuna_trial)
  else:
    _write_trial_info(trial, trial_dir, "done", seconds, group_size)
    study.complete(optuna_trial, _final_value(sweep, outcome))
  if tensorboard:
    tracking.export_tensorboard(trial_dir)


def work(sweep: Sweep, workdir: str, vectorize: bool | None = None, progress: bool | None = None,
         stop_after_step: int | None = None, tensorboard: bool = False,
         argv: list[str] | None = None, storage: str | None = None, study=None) -> None:
  """One worker: asks the study (opened here unless given) for trials, a group at a time
  when vectorised, until none is left, trains them, and tells their outcomes."""
  from seq2seq_jax.study import SweepStudy
  vectorize = sweep.vectorize if vectorize is None else vectorize
  if study is None:  # a worker: the same base as the sweep it joins
    workdir_lib.check_sweep_directory(workdir)
    _check_same_declaration(sweep, workdir, joining=True)
    study = SweepStudy(sweep, workdir, storage)
    study.enqueue_declared()
  while True:
    asked = study.ask_group(sweep.group_size if vectorize else 1)
    if not asked:
      break
    # every asked trial beats until told, also while an earlier group of them trains:
    # else another worker would take a waiting group for dead and train it as well
    with study.beating([optuna_trial for optuna_trial, _ in asked]):
      for group in _plan(asked, workdir, vectorize):
        _run_group(study, sweep, group, workdir, progress, stop_after_step, argv, tensorboard)
    write_outputs(sweep, workdir, study)


def _spawn_workers(count: int, worker_argv: list[str]) -> None:
  """count worker processes of this sweep, waited for; a failed worker is an error."""
  # the workers share the cores; this process forwards a stop to them
  env = dict(os.environ, SEQ2SEQ_JAX_CPU_DEVICES="1", **runtime.forwarding_environment())
  procs = [subprocess.Popen([sys.executable, "-m", "seq2seq_jax", *worker_argv],
                            env=dict(env, SEQ2SEQ_JAX_SWEEP_WORKER=str(k + 1)))
           for k in range(count)]
  try:
    codes = [p.wait() for p in procs]
  except BaseException:
    _stop_workers(procs)
    raise
  bad = [c for c in codes if c != 0]
  if bad:
    raise UserError(f"{len(bad)} of {count} sweep worker(s) failed (exit {bad[0]}); run the "
                    "same command again: finished trials are kept and the others resume.")


def _stop_workers(procs: list[subprocess.Popen]) -> None:
  """This process was stopped (a signal, or a fault of its own): each worker is sent
  SIGTERM, which it takes as a run does, saving its trials' checkpoints before it ends;
  one that had the signal already (a terminal's Ctrl-C reaches every process) takes the
  forward as the same stop (runtime.parent_forwards_stops). A second signal here kills
  them at once, as a second Ctrl-C stops a run without saving."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  try:
    for p in procs:
      p.wait()
  except BaseException:
    for p in procs:
      p.kill()
    for p in procs:
      p.wait()
    raise


def _space_json(space: dict[str, Any]) -> dict[str, Any]:
  return {key: list(values) for key, values in space.items()}


def _check_same_space(sweep: Sweep, workdir: str, saved: dict[str, Any]) -> None:
  """Optuna keeps one distribution per key for a whole study: a sweep whose keys or values
  changed since its study began cannot continue in the same workdir (saved: its
  sweep.json)."""
  if not saved:
    return
  before = saved.get("space")
  if before is None:  # a sweep.json written before "space" was: the declared values
    before = {key: list(dict.fromkeys(o[key] for o in saved.get("overrides", {}).values() if key in o))
              for key in saved.get("keys", [])}
  if before is not None and before != _space_json(sweep.space):
    changed = sorted(set(before) ^ set(sweep.space)
                     | {k for k in set(before) & set(sweep.space)
                        if before[k] != _space_json(sweep.space)[k]})
    raise UserError(f"the sweep's declared keys or values changed ({', '.join(changed)}) since "
                    f"its study in {workdir} began; Optuna cannot mix them in one study: run the "
                    "changed sweep with a new --workdir (the finished trials stay as they are).")


def _check_same_objective(sweep: Sweep, workdir: str, saved: dict[str, Any]) -> None:
  """A study optimises one metric in one direction: its values, TPE's model and the
  pruner's comparisons mean nothing once another metric or mode is told."""
  before = (saved.get("metric"), saved.get("mode"))
  if None not in before and before != (sweep.metric, sweep.mode):
    raise UserError(f"the sweep's objective changed ({before[0]} {before[1]} -> {sweep.metric} "
                    f"{sweep.mode}) since its study in {workdir} began; one study optimises "
                    "one metric one way: run the changed sweep with a new --workdir, or give "
                    f"\"metric\": \"{before[0]}\", \"mode\": \"{before[1]}\" to continue this "
                    "one (the default mode of val/cer, val/mse and val/mae is min since "
                    "2026-12-06).")


def _check_same_base(sweep: Sweep, workdir: str, saved: dict[str, Any], joining: bool) -> None:
  """The trials in workdir ran on the base config its sweep.json holds: a changed base
  (--set, an edited config file) would count them done for settings they never ran with.
  The swept keys, and the settings a run may resume with changed
  (workdir.RESUMABLE_CHANGES: time budget, logging, cpu_crosscheck, ...), may differ."""
  before = saved.get("base")
  if not isinstance(before, dict):  # no sweep yet, or a sweep.json written before "base" was
    return
  if not joining and not any(_began(os.path.join(workdir, name)) for name in os.listdir(workdir)):
    return  # no trial began (e.g. the first run failed on its data): the base may change
  allowed = {*workdir_lib.RESUMABLE_CHANGES, *sweep.keys, *saved.get("keys", [])}
  diffs = config_lib.describe_changes(before, sweep.base, allowed)
  if diffs:
    raise UserError(f"the sweep's base config changed since its trials in {workdir} began "
                    f"({diffs}): run it with the same settings as before (the base in "
                    f"{tracking.SWEEP_FILE}), or with a new --workdir (the finished trials "
                    "stay as they are).")


def _began(trial_dir: str) -> bool:
  """Has this trial started training (its config written, or more)?"""
  return os.path.isdir(trial_dir) and (
      os.path.exists(os.path.join(trial_dir, workdir_lib.CONFIG_FILE))
      or trial_status(trial_dir) != "new")


def _check_same_declaration(sweep: Sweep, workdir: str, joining: bool = False) -> None:
  """The sweep continued in workdir (by `sweep`, or a `--worker` joining it: joining) is
  the one its study began with: the same searched values, objective and base config (a
  `sweep` may change the base while no trial has begun; a worker joins it as it is)."""
  saved = workdir_lib.read_json(os.path.join(workdir, tracking.SWEEP_FILE)) or {}
  _check_same_space(sweep, workdir, saved)
  _check_same_objective(sweep, workdir, saved)
  _check_same_base(sweep, workdir, saved, joining)


def run_sweep(sweep: Sweep, workdir: str, vectorize: bool | None = None,
              progress: bool | None = None, stop_after_step: int | None = None,
              tensorboard: bool = False, argv: list[str] | None = None,
              workers: int = 1, storage: str | None = None,
              worker_argv: list[str] | None = None) -> list[dict[str, Any]]:
  """Runs every unfinished trial (in this process, or in `workers` worker processes that
  share the study), then writes results.csv, results.md and curves.png; returns the
  table's rows, best first.

  stop_after_step: each program stops after that step, as on SIGINT (for tests).
  worker_argv: the `seq2seq-jax` arguments that start one worker (workers > 1).
  """
  from seq2seq_jax.study import SweepStudy
  vectorize = sweep.vectorize if vectorize is None else vectorize
  workdir_lib.check_sweep_directory(workdir)
  _check_same_declaration(sweep, workdir)
  study = SweepStudy(sweep, workdir, storage)  # a storage it cannot open: nothing written
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_json(os.path.join(workdir, tracking.SWEEP_FILE), {
      "keys": sweep.keys, "metric": sweep.metric, "mode": sweep.mode,
      "vectorize": vectorize, "trials": [t.name for t in sweep.trials],
      "overrides": {t.name: t.overrides for t in sweep.trials}, "base": sweep.base.to_dict(),
      "sampler": sweep.sampler, "pruner": sweep.pruner, "num_trials": sweep.num_trials,
      "space": _space_json(sweep.space)})
  study.enqueue_declared()
  study.reconcile(lambda name: trial_status(os.path.join(workdir, name),
                                            sweep.base.time_budget_minutes)
                  in ("done", "failed", "pruned"))
  states = study.states()
  done = sum(state in ("complete", "pruned", "failed") for state in states.values())
  log.info("sweep: %d trial(s) in %s, %d done, %d to run%s; %s sampler, %s pruner",
           sweep.num_trials, workdir, done, max(sweep.num_trials - done, 0),
           " (vectorised)" if vectorize else "", sweep.sampler, sweep.pruner)
  if workers > 1:
    _spawn_workers(workers, worker_argv or [])
  else:
    work(sweep, workdir, vectorize, progress, stop_after_step, tensorboard, argv, storage, study)
  rows = write_outputs(sweep, workdir, study)
  if tensorboard:  # trials finished by an earlier run too (those of this run are done)
    tracking.export_tensorboard(workdir, stale_only=True)
  log.info("\n%s", markdown_table(sweep, rows))
  return rows


# ---------------------------------------------------------------------------
# Results: results.csv, results.md, curves.png
# ---------------------------------------------------------------------------

def _metric_column(prefix: str, metric: str) -> str:
  return f"{prefix}_{metric.replace('/', '_')}"


def trial_row(sweep: Sweep, trial: Trial, trial_dir: str) -> dict[str, Any] | None:
  """One finished trial: swept values, final (last epoch, or the time-budget stop after it)
  and best (over them) validation metrics, steps, epochs reached under a time budget, wall
  time and training throughput; None if it has not finished."""
  status = trial_status(trial_dir, sweep.base.time_budget_minutes)
  if status not in ("done", "failed", "pruned"):
    return None
  records = workdir_lib.read_metrics(trial_dir)
  epochs = [r for r in records if not r.get("final") and "train/epoch_seconds" in r]
  evals = [r for r in records if not r.get("final") and ("train/epoch_seconds" in r
                                                          or r.get("time_budget_stop"))
           and any(k.startswith("val/") for k in r)]
  info = workdir_lib.read_json(os.path.join(trial_dir, TRIAL_FILE)) or {}
  results = workdir_lib.read_json(os.path.join(trial_dir, workdir_lib.RESULTS_FILE)) or {}
  row: dict[str, Any] = {"trial": trial.name, **trial.overrides}
  metrics = list(METRICS) + ([sweep.metric] if sweep.metric not in METRICS else [])
  for metric in metrics:
    values = [r[metric] for r in evals if metric in r]
    row[_metric_column("final", metric)] = values[-1] if values else None
    smaller = sweep.mode == "min" if metric == sweep.metric else lower_is_better(metric)
    pick = min if smaller else max
    row[_metric_column("best", metric)] = pick(values) if values else None
  # training throughput: the epochs that compiled nothing (a process's first compiles; a
  # resumed trial has one such per process); a trial of one epoch has only that one
  steady = [r for r in epochs if r.get("train/compilations", 1) == 0] or epochs[1:] or epochs
  rates = [r["train/samples_per_sec"] for r in steady]
  row["steps"] = max((r["step"] for r in records if "step" in r and r["step"] is not None),
                     default=0)
  row["epochs_reached"] = results.get("epochs_reached")  # runs with time_budget_minutes
  row["wall_seconds"] = info.get("wall_seconds")
  row["samples_per_sec"] = float(np.median(rates)) if rates else None
  row["vmap_trials"] = info.get("vmap_trials", 1)
  row["status"] = status
  row["state"] = {"done": "complete"}.get(status, status)  # Optuna's word
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


def study_trials(sweep: Sweep, study=None) -> list[Trial]:
  """The sweep's trials, each once: the declared ones, or those the study asked."""
  if not sweep.searched or study is None:
    return sweep.trials
  return [sweep.trial_for(values) for values in study.params_by_name().values()]


def collect_rows(sweep: Sweep, workdir: str, study=None) -> list[dict[str, Any]]:
  rows = [trial_row(sweep, t, os.path.join(workdir, t.name)) for t in study_trials(sweep, study)]
  return sort_rows(sweep, [r for r in rows if r is not None])


def _columns(sweep: Sweep, rows: list[dict[str, Any]]) -> list[str]:
  """The table's columns; epochs_reached where the sweep has a time budget or a trial
  ran under one."""
  metrics = list(METRICS) + ([sweep.metric] if sweep.metric not in METRICS else [])
  budgeted = sweep.base.time_budget_minutes or any(r.get("epochs_reached") is not None
                                                   for r in rows)
  return (["trial", *sweep.keys]
          + [_metric_column(p, m) for p in ("final", "best") for m in metrics]
          + ["steps"] + (["epochs_reached"] if budgeted else [])
          + ["wall_seconds", "samples_per_sec", "vmap_trials", "status", "state"])


def _format(column: str, value: Any) -> str:
  if value is None:
    return ""
  if column == "wall_seconds":
    return f"{value:.1f}"
  if column == "samples_per_sec":
    return f"{value:.0f}"
  if column == "epochs_reached":
    return f"{value:.2f}"
  if isinstance(value, float):
    return f"{value:.4f}"
  return str(value)


def markdown_table(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
  """The results as a Markdown table, best first, with what the sweep cost."""
  columns = [c for c in _columns(sweep, rows) if c not in ("status", "state")
             or (c == "state" and any(r["status"] != "done" for r in rows))]
  lines = [f"Sorted by best {sweep.metric} ({sweep.mode}); final = last epoch, best = best epoch.",
           "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(
        _as_text(row.get(c)) if c in sweep.keys else _format(c, row.get(c))
        for c in columns) + " |")
  wall = sum(r["wall_seconds"] or 0.0 for r in rows)
  # summed over trials: workers side by side overlap, so this is not the sweep's duration
  lines += ["", f"{len(rows)} trial(s), {wall:.0f} s of wall time summed over the trials "
            f"({wall / max(len(rows), 1):.0f} s per trial)."]
  return "\n".join(lines)


def write_outputs(sweep: Sweep, workdir: str, study=None) -> list[dict[str, Any]]:
  """results.csv, results.md and curves.png from the study's trials' workdirs; returns
  the rows."""
  rows = collect_rows(sweep, workdir, study)
  columns = _columns(sweep, rows)
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({c: row.get(c) for c in columns})
  workdir_lib.write_atomically(os.path.join(workdir, RESULTS_CSV), table.getvalue())
  workdir_lib.write_atomically(os.path.join(workdir, RESULTS_MD), markdown_table(sweep, rows) + "\n")
  runs = {r["trial"]: workdir_lib.read_metrics(os.path.join(workdir, r["trial"])) for r in rows}
  if runs:
    tracking.plot_runs(runs, os.path.join(workdir, tracking.CURVES_PNG),
                       title=f"sweep {os.path.basename(os.path.abspath(workdir))}: "
                       f"{len(runs)} trial(s)")
  return rows

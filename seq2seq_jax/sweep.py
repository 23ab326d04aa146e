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

import csv
import dataclasses
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import re
import time
from typing import Any

import numpy as np

from seq2seq_jax import config as config_lib
from seq2seq_jax import loop
from seq2seq_jax import tracking
from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.config import Config
from seq2seq_jax.errors import UserError
from seq2seq_jax.loop import VECTORIZED_KEYS, vmap_group_key  # noqa: F401 (sweep.VECTORIZED_KEYS)

log = logging.getLogger(__name__)
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
  workdir_lib.write_json(path, info)


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
  workdir_lib.write_json(os.path.join(workdir, tracking.SWEEP_FILE), {
      "keys": sweep.keys, "metric": sweep.metric, "mode": sweep.mode,
      "vectorize": vectorize, "trials": [t.name for t in sweep.trials],
      "overrides": {t.name: t.overrides for t in sweep.trials}, "base": sweep.base.to_dict()})
  todo = [t for t in sweep.trials
          if trial_status(os.path.join(workdir, t.name)) not in ("done", "failed")]
  log.info("sweep: %d trial(s) in %s, %d done, %d to run%s", len(sweep.trials), workdir,
           len(sweep.trials) - len(todo), len(todo), " (vectorised)" if vectorize else "")
  groups = _plan(todo, workdir, vectorize)
  while groups:
    group = groups.pop(0)
    dirs = [os.path.join(workdir, t.name) for t in group]
    start = time.time()
    if len(group) == 1:
      log.info("trial %s", group[0].name)
    else:
      log.info("vmap group of %d: %s", len(group), ", ".join(t.name for t in group))
    try:
      outcomes = loop.train_trials([t.config for t in group], dirs, argv=argv,
                                   progress=progress, stop_after_step=stop_after_step)
    except loop.ProgressDiffers as why:  # e.g. a damaged checkpoint fell back to an older step
      log.info("trials resume from different positions (%s): running them one by one", why)
      groups[:0] = [[t] for t in group]
      continue
    except loop.TrainingInterrupted:
      for trial, trial_dir in zip(group, dirs):
        _write_trial_info(trial, trial_dir, "interrupted", (time.time() - start) / len(group),
                          len(group))
      raise
    seconds = (time.time() - start) / len(group)
    for trial, trial_dir, outcome in zip(group, dirs, outcomes):
      if isinstance(outcome, loop.NonFiniteLoss):
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
  records = workdir_lib.read_metrics(trial_dir)
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

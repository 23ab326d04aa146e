"""Experiment tracking: learning curves from metrics.jsonl as PNG, and TensorBoard export.

Every run writes metrics.jsonl; these functions only read it, so they work on a finished
run, on a run still training, and on every trial of a sweep. PNGs are drawn with
matplotlib's Agg canvas (no display, no pyplot state); TensorBoard event files are written
by tensorboardX (the `tensorboard` extra; no TensorFlow needed).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

from seq2seq_jax.errors import UserError
from seq2seq_jax.workdir import METRICS_FILE, SWEEP_FILE, TRIAL_FILE, read_metrics  # noqa: F401 (tracking.read_metrics)

CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"
# (metric, panel title, log scale)
PANELS = (("train/loss", "training loss", True), ("val/loss", "validation loss", True),
          ("val/token_accuracy", "validation token accuracy", False),
          ("val/exact_match", "validation exact match", False))
# series models (series:PATH data): errors in the data's units beside the last-value
# forecast's, which is constant (dashed)
SERIES_PANELS = PANELS[:2] + (("val/mse", "validation MSE (dashed: last value)", True),
                              ("val/mae", "validation MAE (dashed: last value)", True))
BASELINES = {"val/mse": "val/baseline_mse", "val/mae": "val/baseline_mae"}


def curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
  """{metric: (steps, values)}: training loss every log_every_steps (or per epoch where
  fewer steps than epochs were logged), validation metrics per evaluated epoch; the final
  summary is left out."""
  step_records = [r for r in records if "lr" in r and "train/loss" in r]
  epoch_records = [r for r in records if not r.get("final") and "train/epoch_seconds" in r]
  series = {}
  # the denser of the two: a log_every_steps longer than an epoch logs fewer steps than epochs
  train = step_records if len(step_records) >= len(epoch_records) else epoch_records
  if train:
    series["train/loss"] = ([r["step"] for r in train], [r["train/loss"] for r in train])
  for metric in [m for m, _, _ in PANELS[1:] + SERIES_PANELS[2:]] + list(BASELINES.values()):
    points = [(r["step"], r[metric]) for r in epoch_records if metric in r]
    if points:
      series[metric] = ([s for s, _ in points], [v for _, v in points])
  return series


def panels_for(curves_by_run: dict[str, dict[str, Any]]) -> tuple:
  """The panels of runs' curves: series models' (MSE, MAE) where no run has text metrics."""
  found = set().union(*curves_by_run.values()) if curves_by_run else set()
  text = any(metric in found for metric, _, _ in PANELS[2:])
  return SERIES_PANELS if "val/mse" in found and not text else PANELS


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: str, title: str | None = None) -> str:
  """One figure, four panels (training loss, validation loss, token accuracy, exact match
  against step; for series models MSE and MAE, with the last-value forecast's dashed),
  one line per run; written to path as PNG."""
  from matplotlib import colormaps
  from matplotlib.figure import Figure
  from matplotlib.ticker import FuncFormatter, NullFormatter

  legend_rows = math.ceil(len(runs) / 2) if len(runs) > 1 else 0
  figure = Figure(figsize=(11, 7.5 + 0.25 * legend_rows), layout="constrained")
  axes = figure.subplots(2, 2)
  palette = colormaps["tab10" if len(runs) <= 10 else "tab20"]
  series = {name: curves(records) for name, records in runs.items()}
  for (metric, label, log_scale), ax in zip(panels_for(series), axes.flat):
    plotted = False
    for index, (name, found) in enumerate(series.items()):
      steps, values = found.get(metric, ([], []))
      if steps:
        ax.plot(steps, values, label=name, color=palette(index % palette.N), linewidth=1.5,
                marker="o" if len(steps) <= 20 else None, markersize=3)
        plotted = True
      steps, values = found.get(BASELINES.get(metric), ([], []))
      if steps:
        ax.plot(steps, values, color=palette(index % palette.N), linewidth=1, linestyle="--")
    ax.set_title(label)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if not plotted:
      ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif log_scale and all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
      ax.set_yscale("log")
      plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.5, not 5x10^-1
      ax.yaxis.set_major_formatter(plain)
      values = [v for line in ax.get_lines() for v in line.get_ydata()]
      # label the minor ticks only within a decade, where no major tick may show
      ax.yaxis.set_minor_formatter(plain if max(values) < 10 * min(values) else NullFormatter())
    if metric == "val/exact_match":
      ax.set_ylim(-0.02, 1.02)
  if len(runs) > 1:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if not handles:
      handles, labels = axes.flat[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=2, fontsize="small",
                  frameon=False)
  if title:
    figure.suptitle(title)
  kind = os.path.splitext(path)[1][1:].lower()
  supported = figure.canvas.get_supported_filetypes()
  if kind and kind not in supported:
    raise UserError(f"'{path}': matplotlib writes no .{kind} files; end the path with one of "
                    f"{', '.join('.' + k for k in sorted(supported))}.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  return path


def _sweep_trials(workdir: str) -> list[str] | None:
  """The trial names of a sweep directory, or None when workdir is a single run: those
  sweep.json declares, in order, then every other trial workdir (those a search asked)."""
  try:
    with open(os.path.join(workdir, SWEEP_FILE)) as f:
      declared = list(json.load(f)["trials"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
  asked = sorted(name for name in os.listdir(workdir)
                 if os.path.isfile(os.path.join(workdir, name, TRIAL_FILE)))
  return declared + [name for name in asked if name not in declared]


def plot_workdir(workdir: str, out: str | None = None) -> str:
  """workdir/curves.png (or out: a file, its format by its extension, PNG without one;
  or a directory to hold curves.png): a run's learning curves, or every trial's for a
  sweep."""
  if not os.path.exists(workdir):
    raise UserError(f"'{workdir}' does not exist: give a run's or a sweep's workdir.")
  if not os.path.isdir(workdir):
    raise UserError(f"'{workdir}' is a file, not a directory: give a run's or a sweep's workdir.")
  trials = _sweep_trials(workdir)
  name = os.path.basename(os.path.abspath(workdir))
  if trials is None:
    runs = {name: read_metrics(workdir)}
    title = f"run {name}"
  else:
    runs = {t: read_metrics(os.path.join(workdir, t)) for t in trials}
    title = f"sweep {name}: {len(trials)} trial(s)"
  runs = {k: v for k, v in runs.items() if v}
  if not runs:
    if trials is None and os.path.exists(os.path.join(workdir, METRICS_FILE)):
      raise UserError(f"{METRICS_FILE} in '{workdir}' holds no readable record: nothing to "
                      "plot.")
    if trials is None:  # a run's checkpoints folder, an export: named, with what to give
      from seq2seq_jax.workdir import check_run_directory
      check_run_directory(workdir)
    raise UserError(f"no {METRICS_FILE} in '{workdir}'"
                    f"{' or its trials' if trials is not None else ''}: train first.")
  return plot_runs(runs, curves_path(workdir, out), title)


def curves_path(workdir: str, out: str | None = None) -> str:
  """The file plot_workdir writes: out (a directory: its curves.png; no extension: .png
  added), else workdir/curves.png."""
  if out and (os.path.isdir(out) or out.endswith(os.sep)):  # a trailing / names a directory
    return os.path.join(out, CURVES_PNG)
  if out and not os.path.splitext(out)[1]:
    return out + ".png"  # what the figure would be saved as: the path printed is the file's
  return out or os.path.join(workdir, CURVES_PNG)


def require_tensorboardx(needs: str = "TensorBoard files need") -> None:
  """TensorBoard's writer is installed; checked before anything is written or trained.
  needs: what needs it, as the error's start ("--tensorboard needs")."""
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    raise UserError(f"{needs} tensorboardX (no TensorFlow): pip install "
                    "'seq2seq_jax[tensorboard]' or pip install tensorboardX; nothing was "
                    "written.") from None


# tensorboardX's flush() does not wait for its writer thread, which writes to disk every
# flush_secs (120 by default): a live TensorBoard lagged by two minutes, a kill lost them
FLUSH_SECONDS = 2


def _summary_writer(logdir: str):
  require_tensorboardx()
  from tensorboardX import SummaryWriter
  return SummaryWriter(logdir, flush_secs=FLUSH_SECONDS)


def tensorboard_scalars(record: dict[str, Any]) -> list[tuple[str, float, int]]:
  """(tag, value, step) of a metrics.jsonl record: a log step's record under step/ (its
  window's loss, lr, gradient norm, speed), an epoch's under its own keys (train/loss is
  the epoch's), the final one under final/."""
  prefix = "final/" if record.get("final") else "step/" if "lr" in record else ""
  step = record.get("step") or 0
  return [(prefix + key, float(value), step) for key, value in record.items()
          if key not in ("step", "epoch", "final") and not isinstance(value, bool)
          and isinstance(value, (int, float))]


class LiveWriter:
  """TensorBoard event files written while a run trains (config tensorboard=true):
  workdir/tensorboard/, the same tags as `plot --tensorboard`, and the run's
  hyperparameters with its final metrics for TensorBoard's HParams view."""

  def __init__(self, workdir: str):
    self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
    self.writer = _summary_writer(self.logdir)

  def record(self, record: dict[str, Any]) -> None:
    for tag, value, step in tensorboard_scalars(record):
      self.writer.add_scalar(tag, value, step)
    self.writer.flush()

  def hparams(self, values: dict[str, Any], metrics: dict[str, float]) -> None:
    values = {k: v for k, v in values.items() if isinstance(v, (bool, str, int, float))}
    self.writer.add_hparams(values, {f"hparam/{k}": float(v) for k, v in metrics.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool)},
                            name="hparams")

  def close(self) -> None:
    self.writer.close()


def export_tensorboard(workdir: str, stale_only: bool = False) -> list[str]:
  """Writes metrics.jsonl as TensorBoard scalars into workdir/tensorboard/ (replacing an
  earlier export); for a sweep directory, into each trial's. Returns the log directories:
  `tensorboard --logdir WORKDIR` then shows every trial side by side. stale_only: a run
  whose events are newer than its metrics.jsonl is left as it is (a sweep's end, whose
  trials finished in this run were exported as they finished)."""
  trials = _sweep_trials(workdir)
  if trials is not None:
    return [d for t in trials if os.path.exists(os.path.join(workdir, t, METRICS_FILE))
            for d in export_tensorboard(os.path.join(workdir, t), stale_only)]
  logdir = os.path.join(workdir, TENSORBOARD_DIR)
  events = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  metrics = os.path.join(workdir, METRICS_FILE)
  if stale_only and events and os.path.exists(metrics) \
      and min(os.path.getmtime(e) for e in events) > os.path.getmtime(metrics):
    return [logdir]
  records = read_metrics(workdir)
  if not records:
    raise UserError(f"no {METRICS_FILE} in '{workdir}': train first.")
  os.makedirs(logdir, exist_ok=True)
  for old in events:
    os.remove(old)
  writer = _summary_writer(logdir)
  for record in records:
    for tag, value, step in tensorboard_scalars(record):
      writer.add_scalar(tag, value, step)
  writer.close()
  return [logdir]

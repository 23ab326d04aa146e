"""Checkpoints: the only module that calls Orbax.

A checkpoint step holds two items:
  state  params, optimizer state and step (arrays, StandardSave)
  meta   config, vocabularies, data position, RNG and metrics (JSON)
so a workdir alone is enough to restore a model and translate.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from seq2seq_jax.errors import CheckpointError

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
# Orbax reports routine facts (e.g. "directory is read only") as absl warnings.
logging.getLogger("absl").setLevel(logging.ERROR)


def _metric_sign(best_metric: str) -> bool:
  """True when larger is better."""
  return not best_metric.endswith("loss")


class Checkpointer:
  """Keeps the newest `keep` checkpoints and the best by `best_metric`."""

  def __init__(self, workdir: str, keep: int = 2, best_metric: str = "val/exact_match",
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self.best_metric = best_metric
    larger_is_better = _metric_sign(best_metric)
    metric_fn = lambda metrics: float(metrics[best_metric])
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=metric_fn, reverse=not larger_is_better, n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        best_fn=metric_fn, best_mode="max" if larger_is_better else "min",
        keep_checkpoints_without_metrics=True,
        read_only=read_only, create=not read_only,
        enable_async_checkpointing=False,
    )
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "meta"))
    except (OSError, PermissionError) as error:
      raise CheckpointError(f"cannot use checkpoint directory '{self.directory}': {error}. "
                            "Check that the workdir is writable.") from error

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

  def save(self, step: int, state: dict[str, Any], meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> None:
    """Writes a step atomically (Orbax renames a finished temporary directory)."""
    if metrics is not None and self.best_metric not in metrics:
      metrics = None
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          metrics=metrics, force=True)
      self.manager.wait_until_finished()
    except OSError as error:
      raise CheckpointError(
          f"could not save checkpoint {step} in '{self.directory}': {error}. Free disk space "
          "or fix permissions; the earlier checkpoints are untouched.") from error

  def restore(self, abstract_state: Any | None = None, step: int | None = None,
              ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(state, meta, step) of `step`, or of the newest checkpoint that reads back.

    A corrupt or truncated newest checkpoint is skipped with a warning.
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in '{self.directory}'. Train first with "
                            "`seq2seq-jax train --workdir DIR`.")
    if step is not None and step not in steps:
      raise CheckpointError(f"no checkpoint for step {step} in '{self.directory}'; "
                            f"available: {', '.join(map(str, steps))}.")
    candidates = [step] if step is not None else list(reversed(steps))
    failures = []
    for candidate in candidates:
      state_args = (ocp.args.StandardRestore(abstract_state) if abstract_state is not None
                    else ocp.args.StandardRestore())
      try:
        restored = self.manager.restore(candidate, args=ocp.args.Composite(
            state=state_args, meta=ocp.args.JsonRestore()))
      except Exception as error:  # any damage to the files shows up here
        failures.append((candidate, error))
        log.warning("checkpoint %d in %s could not be read (%s)", candidate,
                    self.directory, type(error).__name__)
        continue
      if failures:
        log.warning("restored checkpoint %d instead of the newest, %d, which is damaged",
                    candidate, failures[0][0])
      return restored["state"], restored["meta"], candidate
    first_step, first_error = failures[0]
    raise CheckpointError(
        f"no readable checkpoint in '{self.directory}' (step {first_step}: {first_error}). "
        "Start a fresh run in a new workdir.")

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

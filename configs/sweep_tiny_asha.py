"""A tiny TPE + ASHA sweep, seconds a trial on a CPU: Optuna proposes learning rates and
dropout for a configs/tiny.py-size model, and successive halving (ASHA) stops the trials
whose validation loss falls behind after an epoch. The first trial enqueued is a
deliberately bad learning rate, for the pruner to stop.

  seq2seq-jax sweep --config configs/sweep_tiny_asha.py --workdir runs/sweep_tiny_asha --workers 2
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/tiny.py with one batch shape and three epochs."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")),
      # No attention: the smallest program to compile.
      attention="none",
      # One batch shape: one compiled program, so a trial takes seconds.
      bucket_width=0,
      # Three epochs: the pruner decides after the first and the second.
      num_epochs=3,
      # Tiny models translate no number exactly yet: keep the best by validation loss.
      best_metric="val/loss",
  )


def get_sweep() -> dict:
  return {
      # Optuna's TPE proposes these, after its first random ones.
      "search": {"learning_rate": ("log_uniform", 1e-5, 3e-2), "dropout": [0.0, 0.1]},
      # Six trials in all, the enqueued one included.
      "num_trials": 6,
      # Tried first: far too small a learning rate (it learns nothing in three epochs).
      "enqueue": [{"learning_rate": 1e-5, "dropout": 0.0}],
      "sampler": "tpe",
      # Two random trials before TPE models the results.
      "sampler_settings": {"n_startup_trials": 2},
      # Successive halving from the first epoch, keeping the better half at each rung.
      "pruner": "asha",
      "pruner_settings": {"min_resource": 1, "reduction_factor": 2},
      # The validation loss decides (lower is better).
      "metric": "val/loss",
      "mode": "min",
      # Trials that differ in learning rate and dropout train three at a time as one program.
      "vectorize": True,
      "group_size": 3,
      # Tests kill workers: a trial is retried 5 s after its worker's last heartbeat.
      "heartbeat_seconds": 1.0,
      "grace_seconds": 5.0,
  }

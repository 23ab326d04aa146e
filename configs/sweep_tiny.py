"""A sweep that runs in seconds on a CPU, for tests and smoke runs.

Two learning rates x two dropout rates of a configs/tiny.py-size model: the four trials
differ only in values that change no shape, so with vectorize=True they train together
as one jitted vmapped program.

  seq2seq-jax sweep --config configs/sweep_tiny.py --workdir runs/sweep_tiny
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/tiny.py, changed only where a sweep wants it."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")),
      # No attention: the smallest program to compile.
      attention="none",
      # One batch shape: one compiled program, so the sweep takes seconds.
      bucket_width=0,
      # Tiny models translate no number exactly yet: keep the best by token accuracy.
      best_metric="val/token_accuracy",
  )


def get_sweep() -> dict:
  return {
      # Every combination: 4 trials.
      "grid": {"learning_rate": [3e-3, 1e-2], "dropout": [0.0, 0.2]},
      # Tiny models translate no number exactly yet: rank by token accuracy.
      "metric": "val/token_accuracy",
      "mode": "max",
      # Learning rate and dropout change no shape: one vmapped program for all four.
      "vectorize": True,
  }

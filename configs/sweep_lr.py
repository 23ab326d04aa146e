"""A learning-rate x seed sweep of the default model on numbers:fr, sized for a CPU.

The default model (configs/default.py: embeddings 64, LSTM 128, Luong attention with
input feeding, RMSprop with warmup and cosine decay, clipping 1.0) on a shorter job:
numbers up to 99,999, 12,000 training pairs, 3 epochs. 3 learning rates x 2 seeds =
6 trials; per seed, the 3 learning rates train together as one vmapped program (a seed
also draws the data, so different seeds are different programs).

  seq2seq-jax sweep --config configs/sweep_lr.py --workdir runs/sweep_lr
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/default.py, made shorter: numbers below 100,000, 12,000 pairs, 3 epochs."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")),
      # Numbers from 0 to 99,999: shorter sentences than the default job's.
      numbers_max=99_999,
      # Training pairs (distinct numbers).
      numbers_train=12_000,
      # Validation pairs, disjoint from training by number.
      numbers_val=500,
      # Test pairs, disjoint from both.
      numbers_test=1_000,
      # Passes over the training data.
      num_epochs=3,
      # Warmup steps: a fifth of this shorter job.
      warmup_steps=60,
      # Log every 25 steps.
      log_every_steps=25,
  )


def get_sweep() -> dict:
  return {
      # 3 peak learning rates x 2 seeds = 6 trials.
      "grid": {"learning_rate": [1e-3, 3e-3, 1e-2], "seed": [0, 1]},
      # Ranked by the best validation exact match over the epochs.
      "metric": "val/exact_match",
      "mode": "max",
      # Per seed, the learning rates share one jitted vmapped program.
      "vectorize": True,
  }

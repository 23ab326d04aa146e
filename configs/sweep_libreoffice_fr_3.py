"""The third round of configs/sweep_libreoffice_fr.py: the two best changes of the second
round together (batch 32, learning rate 0.006), 3 epochs, the same protocol.

A new sweep file and workdir: Optuna keeps one set of values per key for a whole study.

  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_3.py --workdir runs/sweep_libreoffice_fr_3
"""

import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """The first round's base config (its trials differ; this file declares its own)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "sweep_libreoffice_fr.py"))


def get_sweep() -> dict:
  return {
      "trials": [
          {"vocab_size": 2000, "batch_size": 32, "learning_rate": 0.006},
      ],
      "metric": "val/chrf",
  }

"""The second round of configs/sweep_libreoffice_fr.py: from its best (vocab_size=2000),
one more setting changed per trial, 3 epochs each, the same protocol.

A new sweep file and workdir: Optuna keeps one set of values per key for a whole study.

  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_2.py --workdir runs/sweep_libreoffice_fr_2
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
          {"vocab_size": 2000, "batch_size": 32},  # more steps (batch 128 had half: worse)
          {"vocab_size": 2000, "latent_dim": 384},  # wider, where 512 learned most per epoch
          {"vocab_size": 2000, "dropout": 0.0},  # no dropout in a short budget
          {"vocab_size": 1000},                 # smaller still
          {"vocab_size": 2000, "learning_rate": 0.006},  # larger steps
      ],
      "metric": "val/chrf",
  }

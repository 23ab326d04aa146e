"""The second round of configs/sweep_libreoffice_fr.py: from its best (vocab_size=2000),
one more setting changed per trial, 3 epochs each, the same protocol.

A new sweep file and workdir: Optuna keeps one set of values per key for a whole study.

  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_2.py --workdir runs/sweep_libreoffice_fr_2
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_sweep_libreoffice_fr", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                          "sweep_libreoffice_fr.py"))
_first = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_first)

get_config = _first.get_config


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

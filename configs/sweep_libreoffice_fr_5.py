"""The fifth round of the LibreOffice search: the fourth round's two best changes together.

Learning rate 0.01 and one joint vocabulary of 4,000 pieces with tied embeddings and output
layer each beat the fourth round's base alone (validation chrF over all pairs, 5 minutes
per trial); this round trains them together under the same protocol and budget.

A new sweep file and workdir: Optuna keeps one set of values per key for a whole study.

  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_5.py --workdir runs/sweep_libreoffice_fr_5
"""

import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """The fourth round's base config (5 minutes per trial)."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "sweep_libreoffice_fr_4.py"))


def get_sweep() -> dict:
  return {
      "trials": [
          {"learning_rate": 0.01, "sentencepiece_joint": True, "vocab_size": 4000,
           "tie_embeddings": True, "tie_output": True},
      ],
      "metric": "val/chrf",
  }

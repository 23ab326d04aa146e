"""The third round of configs/sweep_libreoffice_fr.py: the two best changes of the second
round together (batch 32, learning rate 0.006), 3 epochs, the same protocol.

A new sweep file and workdir: Optuna keeps one set of values per key for a whole study.

  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_3.py --workdir runs/sweep_libreoffice_fr_3
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
          {"vocab_size": 2000, "batch_size": 32, "learning_rate": 0.006},
      ],
      "metric": "val/chrf",
  }

"""The search behind configs/libreoffice_fr.py: its settings varied one at a time, 3 epochs each.

Each trial changes one thing from a first cut of configs/libreoffice_fr.py (get_config
below: 4,000 subwords per side, batch 64, float32) and trains 3 epochs (4 to 10 minutes on
2 CPU cores); results.md ranks them by validation chrF, with their wall time. The second
and third rounds are configs/sweep_libreoffice_fr_2.py and _3.py; the README shows all three.

  seq2seq-jax data download libreoffice:fr
  seq2seq-jax sweep --config configs/sweep_libreoffice_fr.py --workdir runs/sweep_libreoffice_fr
"""

import dataclasses
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "_libreoffice_fr", os.path.join(os.path.dirname(os.path.abspath(__file__)), "libreoffice_fr.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
  """configs/libreoffice_fr.py as the search began (the trials change one thing from it)."""
  return dataclasses.replace(
      _base.get_config(),
      # Short trials: 3 passes over the training pages.
      num_epochs=3,
      # The first cut's settings, which the search then changed.
      vocab_size=4000, batch_size=64, matmul_dtype="float32", learning_rate=3e-3,
      # Added to configs/libreoffice_fr.py after these rounds: off, as they ran.
      split_sentences=False, time_budget_minutes=0.0, sentencepiece_joint=False,
      tie_embeddings=False, tie_output=False)


def get_sweep() -> dict:
  return {
      "trials": [
          {"vocab_size": 4000},                 # the base
          {"vocab_size": 2000},                 # a smaller softmax, longer sequences
          {"vocab_size": 8000},                 # a larger softmax, shorter sequences
          {"matmul_dtype": "bfloat16"},         # AVX512-BF16 matmuls
          {"batch_size": 128},                  # fewer, larger steps
          {"latent_dim": 512},                  # a wider LSTM
      ],
      "metric": "val/chrf",
  }

"""The fourth round of the LibreOffice search: long paragraphs kept, trials at equal time.

From configs/libreoffice_fr.py (split_sentences: long training paragraphs become their
sentence pairs, every held-out pair is scored, long ones translated sentence by sentence),
one setting changed per trial, each trial stopped by the same time budget of 5 minutes of
training (time_budget_minutes; 2 epochs planned): results.md ranks them by validation chrF
over all validation pairs, with the epochs each reached.

  seq2seq-jax data download libreoffice:fr
  seq2seq-jax sweep --config configs/sweep_libreoffice_fr_4.py --workdir runs/sweep_libreoffice_fr_4
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/libreoffice_fr.py's data and model, at equal time per trial."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libreoffice_fr.py")),
      # Every trial stops after 5 minutes from its start (data and compilation included).
      time_budget_minutes=5.0,
      # The schedule's length: what about 5 minutes hold at batch 32.
      num_epochs=2,
      # The base of this round: the third round's best (batch 32, learning rate 6e-3).
      batch_size=32, learning_rate=6e-3, vocab_size=2000, sentencepiece_joint=False,
      tie_embeddings=False, tie_output=False, max_source_len=48, max_target_len=64,
      libreoffice_ui=False, split_sentences=True)


def get_sweep() -> dict:
  return {
      "trials": [
          {"batch_size": 32},                   # the base
          {"batch_size": 16},                   # twice the updates again
          {"learning_rate": 0.01},              # larger steps
          {"sentencepiece_joint": True, "vocab_size": 4000, "tie_embeddings": True,
           "tie_output": True},                 # one vocabulary, one table: copied tokens
          {"max_source_len": 64, "max_target_len": 96},  # longer pairs kept whole
          {"libreoffice_ui": True},             # the UI catalogs' strings added to training
      ],
      "metric": "val/chrf",
  }

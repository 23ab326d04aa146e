"""The default model on real English -> French text: this machine's gettext catalogs.

configs/default.py (embeddings 64, LSTM 128, Luong attention with input feeding, RMSprop
with warmup and cosine decay, clipping 1.0), character level, on the (msgid, msgstr)
pairs of /usr/share/locale/fr/LC_MESSAGES/*.mo: the programs' own French UI messages,
shipped by the installed Debian packages (37,442 pairs from 87 catalogs on the
development machine; another machine's packages give other pairs). Sources are 29
characters long on average (median 24, 95% at most 69), targets 36 (median 30, 95% at
most 86); the limits below keep 98.8% of the pairs.

  seq2seq-jax train --config configs/gettext_fr.py --workdir runs/gettext_fr
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/default.py on the French gettext catalogs."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")),
      # Every .mo catalog of the directory, filtered to natural single-line messages.
      data="gettext:/usr/share/locale/fr/LC_MESSAGES",
      # Held-out validation pairs, drawn with the seed.
      val_fraction=0.05,
      # Held-out test pairs, drawn with the seed.
      test_fraction=0.05,
      # 99th percentile of the English messages is 98 characters.
      max_source_len=100,
      # 99th percentile of the French ones is 122: French runs about 20% longer.
      max_target_len=120,
      # Real sentences need more memory than number words.
      latent_dim=256,
      # Passes over the training data.
      num_epochs=10,
      # Exact match of free text stays low for long: keep the checkpoint of lowest loss.
      best_metric="val/loss",
      # Greedy outputs of 500 validation messages per epoch.
      eval_decode_samples=500,
  )

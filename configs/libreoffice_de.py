"""Real English -> German text: configs/libreoffice_fr.py's recipe on LibreOffice's German help.

The same help pages in German (Debian's libreoffice-help-de), aligned with the English
ones by paragraph id and split by page with the same rule and seed. Fetch the packages
once (5 MB, no root), then train by the same command shape as French:

  seq2seq-jax data download libreoffice:de
  seq2seq-jax train --config configs/libreoffice_de.py --workdir runs/libreoffice_de

Every other setting is the French recipe's, as searched on French (docs/real_text.md has
both runs' figures).
"""

import dataclasses
import os

from seq2seq_jax.config import Config, load_config_file


def get_config() -> Config:
  """configs/libreoffice_fr.py with German as the target language."""
  return dataclasses.replace(
      load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "libreoffice_fr.py")),
      # The help pages, English -> German, from the packages `data download` fetched.
      data="libreoffice:de")

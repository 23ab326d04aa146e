import os

import pytest

from seq2seq_jax import config as config_lib
from seq2seq_jax.errors import UserError
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["default.py", "tiny.py", "keras_lstm_seq2seq.py", "gettext_fr.py"])
def test_shipped_configs_load(name):
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", name))
  assert isinstance(config, config_lib.Config)


def test_every_config_field_has_a_comment():
  for name in ("default.py", "tiny.py", "keras_lstm_seq2seq.py", "gettext_fr.py"):
    lines = open(os.path.join(ROOT, "configs", name)).read().splitlines()
    for i, line in enumerate(lines):
      if "=" in line and line.startswith("      ") and not line.strip().startswith("#"):
        assert lines[i - 1].strip().startswith("#"), f"{name}:{i + 1} has no comment above"


def test_overrides_are_typed():
  config = config_lib.apply_overrides(
      config_lib.Config(), ["latent_dim=64", "learning_rate=0.01", "reverse_source=true",
                            "data=numbers:de"])
  assert (config.latent_dim, config.learning_rate, config.reverse_source, config.data) == (
      64, 0.01, True, "numbers:de")


def test_unknown_key_names_close_matches():
  with pytest.raises(UserError, match="unknown config key 'latent_dimm'.*latent_dim"):
    config_lib.apply_overrides(config_lib.Config(), ["latent_dimm=3"])


@pytest.mark.parametrize("item, message", [
    ("latent_dim=abc", "not a valid int"),
    ("batch_size=0", "must be positive"),
    ("latent_dim=-4", "must be positive"),
    ("attention=luong", "must be one of"),
    ("dropout=1.5", r"must be in \[0, 1\)"),
    ("novalue", "key=value"),
])
def test_bad_values_are_clear_errors(item, message):
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), [item])


def test_config_file_with_unknown_keyword(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from seq2seq_jax.config import Config\n"
                  "def get_config():\n  return Config(batch_sise=3)\n")
  with pytest.raises(UserError, match="batch_sise.*batch_size"):
    config_lib.load_config_file(str(path))

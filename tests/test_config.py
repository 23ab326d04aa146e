"""config.py: shipped configs load, every field is commented, overrides are typed, and an
unknown key, a bad value or a config file that fails is one line naming it."""

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


def test_python_callers_mistakes_are_named():
  """A str where a list of overrides goes read each character as one ("got 'l'"); a
  missing data spec was an AttributeError."""
  with pytest.raises(TypeError, match=r"pass \['latent_dim=3'\]"):
    config_lib.apply_overrides(config_lib.Config(), "latent_dim=3")
  from seq2seq_jax.data import parse_spec
  with pytest.raises(TypeError, match="a data spec is a str such as 'numbers:fr'"):
    parse_spec(None)


def test_overrides_are_typed():
  config = config_lib.apply_overrides(
      config_lib.Config(), ["latent_dim=64", "learning_rate=0.01", "reverse_source=true",
                            "data=numbers:de"])
  assert (config.latent_dim, config.learning_rate, config.reverse_source, config.data) == (
      64, 0.01, True, "numbers:de")


def test_spaces_around_a_named_choice_are_dropped_as_around_a_number():
  config = config_lib.apply_overrides(config_lib.Config(), ["attention= general",
                                                            "latent_dim= 64"])
  assert (config.attention, config.latent_dim) == ("general", 64)


def test_unknown_key_names_close_matches():
  with pytest.raises(UserError, match="unknown config key 'latent_dimm'.*latent_dim"):
    config_lib.apply_overrides(config_lib.Config(), ["latent_dimm=3"])


@pytest.mark.parametrize("item, message", [
    ("latent_dim=abc", "not a valid int"),
    ("batch_size=0", "must be positive"),
    ("latent_dim=-4", "must be positive"),
    ("attention=luong", "must be one of"),
    ("dropout=1.5", r"must be in \[0, 1\)"),
    ("test_fraction=0.9", r"val_fraction \+ test_fraction must leave some training data"),
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


@pytest.mark.parametrize("item, message", [
    ("learning_rate=nan", "'learning_rate' must be a finite number; got nan"),
    ("learning_rate=inf", "'learning_rate' must be a finite number; got inf"),
    ("clip_norm=nan", "'clip_norm' must be a finite number; got nan"),
    ("time_budget_minutes=-inf", "'time_budget_minutes' must be a finite number"),
    ("seed=-1", r"'seed' must be a whole number from 0 to 9223372036854775807"),
    ("seed=9223372036854775808", r"'seed' must be a whole number from 0 to 9223372036854775807"),
])
def test_non_finite_floats_and_seeds_out_of_range_are_refused(item, message):
  """Refused before a run starts: they failed only at a later step, or with a traceback."""
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), [item])


def test_the_seed_range_is_what_jax_and_numpy_take():
  import jax
  import numpy as np
  low, high = config_lib.SEED_RANGE
  for seed in (low, high):
    config_lib.apply_overrides(config_lib.Config(), [f"seed={seed}"])
    jax.random.key(seed)
    np.random.default_rng([seed, 17])


def test_inf_means_no_limit_where_a_limit_is_set():
  """clip_norm=inf (no clipping) and time_budget_minutes=inf (no budget) trained before
  non-finite values were refused: such runs still resume with the same settings."""
  for key in config_lib.NO_LIMIT:
    config = config_lib.apply_overrides(config_lib.Config(), [f"{key}=inf"])
    assert getattr(config, key) == float("inf")
  assert config_lib.NO_LIMIT == ("clip_norm", "time_budget_minutes")


def test_a_saved_run_with_a_non_finite_setting_still_loads():
  """A saved run is read as it was written: its workdir still translates."""
  config = config_lib.from_dict(dict(config_lib.Config().to_dict(), learning_rate=float("inf")),
                                "checkpoint 1 of run")
  assert config.learning_rate == float("inf")


@pytest.mark.parametrize("body, message", [
    ("def get_config():\n  raise ValueError('boom')\n", "get_config() raised ValueError: boom"),
    ("def get_config():\n  return {}['x']\n", "get_config() raised KeyError: 'x'"),
    ("def get_config():\n  raise TypeError('bad')\n", "get_config() raised TypeError: bad"),
])
def test_a_config_file_that_raises_is_one_line(tmp_path, body, message):
  path = tmp_path / "raises.py"
  path.write_text(body)
  with pytest.raises(UserError) as error:
    config_lib.load_config_file(str(path))
  assert str(error.value) == f"config file '{path}': {message}"


@pytest.mark.parametrize("body, message", [
    ("def get_config(:\n  pass\n", ", line 1, column 16: SyntaxError: invalid syntax "
                                    "(def get_config(:); fix the file."),
    ("x = 1\n  y = 2\n", ", line 2, column 2: IndentationError: unexpected indent (y = 2); "
                         "fix the file."),
    ("import no_such_module_here\n", " failed to load: ModuleNotFoundError: No module named "
                                    "'no_such_module_here'"),
])
def test_a_config_file_that_does_not_load_says_where_in_one_line(tmp_path, body, message):
  """A syntax error was shown as Python's repr of it: "failed to load: SyntaxError('invalid
  syntax', ('/path/c.py', 1, 16, 'def get_config(:\\n', 1, 17))"."""
  path = tmp_path / "broken.py"
  path.write_text(body)
  with pytest.raises(UserError) as error:
    config_lib.load_config_file(str(path))
  assert str(error.value) == f"config file '{path}'{message}"


def test_a_syntax_error_in_a_module_a_config_imports_names_that_module(tmp_path, monkeypatch):
  (tmp_path / "helpers.py").write_text("def f(:\n")
  path = tmp_path / "uses_helpers.py"
  path.write_text("import helpers\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(UserError) as error:
    config_lib.load_config_file(str(path))
  assert str(error.value) == (f"config file '{path}' failed to load: SyntaxError in "
                              f"'{tmp_path / 'helpers.py'}', line 1, column 7: invalid syntax "
                              "(def f(:).")


def test_a_misspelt_shipped_config_name_gets_the_close_one():
  with pytest.raises(UserError, match=r"is neither a file nor a shipped config name \(.*\); did "
                     r"you mean tiny\?$"):
    config_lib.resolve_config_path("tinyy")


@pytest.mark.parametrize("name", ["settings.yaml", "config"])
def test_a_config_file_not_named_py_is_one_line(tmp_path, name):
  """A YAML file, or a file without an extension, was a traceback from importlib."""
  path = tmp_path / name
  path.write_text("num_epochs: 1\n")
  with pytest.raises(UserError, match=rf"^config file '{path}' is not a Python file \(\*\.py\): "
                     r"a config is a .py file whose get_config\(\) returns a Config"):
    config_lib.load_config_file(str(path))


@pytest.mark.parametrize("tokenizer, change, refused", [
    ("sentencepiece", "min_token_freq", False),  # sentencepiece ignores the token limits
    ("sentencepiece", "max_vocab_size", False),
    ("char", "vocab_size", False),               # characters ignore sentencepiece's size
    ("char", "min_token_freq", True),            # these change a character vocabulary
    ("sentencepiece", "vocab_size", True),
])
def test_resuming_refuses_only_changes_the_tokenizer_reads(tmp_path, tokenizer, change, refused):
  from seq2seq_jax.errors import CheckpointError
  from seq2seq_jax.workdir import check_workdir_config, write_config
  saved = config_lib.Config(tokenizer=tokenizer, input_mode="embed")
  write_config(str(tmp_path), saved)
  changed = config_lib.apply_overrides(saved, [f"{change}={getattr(saved, change) + 100}"])
  if refused:
    with pytest.raises(CheckpointError, match=f"different configuration \\({change}: "):
      check_workdir_config(str(tmp_path), changed)
  else:
    check_workdir_config(str(tmp_path), changed)


# settings a user changes to resume a run (a longer budget, more checkpoints kept, other
# logging): one change of each RESUMABLE_CHANGES key
RESUMED_WITH = ("log_every_steps=7", "num_summary_samples=3", "eval_decode_samples=9",
                "keep_checkpoints=5", "checkpoint_every_steps=50", "tensorboard=true",
                "lstm_impl=scan", "time_budget_minutes=30", "cpu_crosscheck=never")


def test_resuming_accepts_changes_of_the_settings_that_change_no_trained_number(tmp_path):
  """Resuming with keep_checkpoints=5 (or a new time budget, log interval...) was refused
  as 'a run with a different configuration'; a change of the model still is."""
  from seq2seq_jax.errors import CheckpointError
  from seq2seq_jax.workdir import RESUMABLE_CHANGES, check_workdir_config, write_config
  assert set(RESUMABLE_CHANGES) <= {item.split("=")[0] for item in RESUMED_WITH}
  saved = config_lib.Config()
  write_config(str(tmp_path), saved)
  for item in RESUMED_WITH:
    changed = config_lib.apply_overrides(saved, [item])
    assert changed != saved, item
    check_workdir_config(str(tmp_path), changed)
  check_workdir_config(str(tmp_path), config_lib.apply_overrides(saved, list(RESUMED_WITH)))
  with pytest.raises(CheckpointError, match=r"different configuration \(latent_dim: 128 -> 64\)"):
    check_workdir_config(str(tmp_path), config_lib.apply_overrides(saved, ["latent_dim=64"]))


def test_the_keras_reproduction_script_checks_both_runs_before_training(tmp_path, monkeypatch,
                                                                          capsys):
  """experiments/reproduce_keras_fra.py --also-recommended trained the Keras example's run
  to its end (100 epochs) and then stopped in a traceback: its second config kept
  keras_compat with length buckets. Both are built and checked first; the second is ours
  (masked loss, buckets, embeddings, attention) on the example's data, split and size."""
  import importlib.util
  import sys
  spec = importlib.util.spec_from_file_location(
      "reproduce_keras_fra", os.path.join(ROOT, "experiments", "reproduce_keras_fra.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  configs = script.build_configs("fra.txt", 3, also_recommended=True)
  keras, ours = configs["keras"], configs["recommended"]
  assert list(configs) == ["keras", "recommended"] and keras.keras_compat and not ours.keras_compat
  assert ours.bucket_width == 16 and ours.attention == "general" and not ours.loss_on_padding
  for same in ("data", "num_samples", "split_mode", "val_fraction", "latent_dim", "num_epochs"):
    assert getattr(ours, same) == getattr(keras, same), same
  assert list(script.build_configs("fra.txt", 3, also_recommended=False)) == ["keras"]
  monkeypatch.setattr(sys, "argv", ["reproduce_keras_fra.py", "fra.txt", "--epochs", "0",
                                    "--workdir", str(tmp_path)])
  assert script.main() == 2  # a bad setting: one line, nothing trained
  err = capsys.readouterr().err
  assert err.startswith("reproduce_keras_fra: error: ") and err.count("\n") == 1
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("item, message", [
    ("warmup_steps=-1", "'warmup_steps' must not be negative; got -1"),
    ("rmsprop_momentum=-0.5", "'rmsprop_momentum' must not be negative; got -0.5"),
    ("rmsprop_decay=1", r"'rmsprop_decay' must be in \(0, 1\); got 1\.0"),
    ("rmsprop_decay=0", r"'rmsprop_decay' must be in \(0, 1\); got 0\.0"),
    ("label_smoothing=1", r"'label_smoothing' must be in \[0, 1\); got 1\.0"),
    ("rmsprop_momentum=1", r"'rmsprop_momentum' must be in \[0, 1\); got 1\.0"),
    ("lr_end_fraction=1.5", r"'lr_end_fraction' must be in \[0, 1\]; got 1\.5"),
])
def test_optimizer_settings_out_of_range_are_refused(item, message):
  """rmsprop_decay=1 never updates the squared-gradient average (a step of g / sqrt(eps)),
  label_smoothing=1 learns nothing, a negative warmup or momentum means nothing, and a
  momentum of 1 or more never lets a step decay (it was accepted). lr_end_fraction may be
  1 (no decay), and its message said [0, 1)."""
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), [item])


def test_a_run_saved_with_a_momentum_of_one_still_loads():
  """rmsprop_momentum 1 or more is refused for training, but a run saved before it was
  (its config in the checkpoint) still loads to translate or evaluate."""
  saved = dict(config_lib.Config().to_dict(), rmsprop_momentum=1.0)
  assert config_lib.from_dict(saved, "checkpoint 7").rmsprop_momentum == 1.0
  with pytest.raises(UserError, match=r"'rmsprop_momentum' must be in \[0, 1\)"):
    config_lib.validate(config_lib.from_dict(saved, "checkpoint 7"))


def test_an_end_fraction_of_one_is_a_schedule_without_decay():
  """lr_end_fraction=1: warm up, then hold the peak (the one fraction allowed to be 1)."""
  config = config_lib.apply_overrides(config_lib.Config(), ["lr_end_fraction=1"])
  assert config.lr_end_fraction == 1.0


def test_array_sizes_are_refused_only_beyond_the_largest():
  """The message says "at most MAX_ARRAY_SIZE": that size itself passes validation."""
  largest = config_lib.MAX_ARRAY_SIZE
  config = config_lib.apply_overrides(config_lib.Config(), [f"batch_size={largest}"])
  assert config.batch_size == largest
  with pytest.raises(UserError, match=rf"'batch_size' is an array size: at most {largest:,}; "):
    config_lib.apply_overrides(config_lib.Config(), [f"batch_size={largest + 1}"])


@pytest.mark.parametrize("items, message", [
    (["decoder_input=repeat"], "decoder_input=repeat reads the encoder's final vector only: "
                               "set attention=none"),
    (["keras_compat=true"], "keras_compat pads every batch to the longest pair.*bucket_width=0"),
    (["data=series:s.csv", "input_mode=real", "decoder_input=repeat", "attention=none",
      "bucket_width=0"], "series:PATH models use decoder_input=repeat and best_metric=val/loss"),
])
def test_settings_that_cannot_go_together_are_refused(items, message):
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), items)


def test_a_bool_is_not_taken_for_a_number():
  """Config(latent_dim=True) in a config file was a model of width 1."""
  with pytest.raises(UserError, match=r"config key 'latent_dim' must be int, got True \(bool\)"):
    config_lib.validate(config_lib.Config(latent_dim=True))


@pytest.mark.parametrize("text, value", [
    ("true", True), ("yes", True), ("on", True), ("1", True), (" True ", True),
    ("false", False), ("no", False), ("off", False), ("0", False),
])
def test_booleans_are_read_in_every_usual_spelling(text, value):
  config = config_lib.apply_overrides(config_lib.Config(), [f"tensorboard={text}"])
  assert config.tensorboard is value


def test_an_override_splits_at_its_first_equals_sign_and_ignores_spaces_around_the_key():
  """A value may hold '=' (a file name); `--set "latent_dim = 64"` names latent_dim."""
  config = config_lib.apply_overrides(config_lib.Config(),
                                      ["data=tsv:runs/a=b.tsv", " latent_dim = 64"])
  assert (config.data, config.latent_dim) == ("tsv:runs/a=b.tsv", 64)


def test_the_decoding_ranges_include_their_bounds():
  """The messages say "from -10 to 10" and "from 1.2e-38": those values themselves pass."""
  limit = config_lib.MAX_LENGTH_PENALTY
  assert (config_lib.check_length_penalty(limit), config_lib.check_length_penalty(-limit)) == (
      limit, -limit)
  with pytest.raises(UserError, match="the length penalty must be from -10 to 10"):
    config_lib.check_length_penalty(10.5)
  for temperature in (config_lib.MIN_TEMPERATURE, config_lib.MAX_TEMPERATURE, 0.0):
    assert config_lib.check_temperature(temperature) == temperature
  with pytest.raises(UserError, match=r"the temperature must be 0 \(greedy\) or from 1\.2e-38"):
    config_lib.check_temperature(config_lib.MIN_TEMPERATURE / 2)


def test_a_resumed_run_lists_its_changes_six_then_the_names_of_the_rest():
  saved = config_lib.Config().to_dict()
  six = ["latent_dim=64", "embed_dim=32", "num_layers=2", "batch_size=64", "num_epochs=3",
         "dropout=0.1"]
  config = config_lib.apply_overrides(config_lib.Config(), six)
  text = config_lib.describe_changes(saved, config)
  assert text == ("embed_dim: 64 -> 32; latent_dim: 128 -> 64; num_layers: 1 -> 2; "
                  "dropout: 0.0 -> 0.1; batch_size: 128 -> 64; num_epochs: 6 -> 3")
  config = config_lib.apply_overrides(config, ["seed=5", "learning_rate=0.01"])
  assert config_lib.describe_changes(saved, config) == (
      "seed: 0 -> 5; embed_dim: 64 -> 32; latent_dim: 128 -> 64; num_layers: 1 -> 2; "
      "dropout: 0.0 -> 0.1; batch_size: 128 -> 64; and 2 more: num_epochs, learning_rate")
  assert config_lib.describe_changes(saved, config_lib.Config()) is None


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
  """A config.json without a newer key (here tensorboard, split_sentences) reads that key
  as its default: the run resumes, and is refused only for a setting really changed."""
  import json
  from seq2seq_jax.errors import CheckpointError
  from seq2seq_jax.workdir import CONFIG_FILE, check_workdir_config
  saved = config_lib.Config().to_dict()
  del saved["tensorboard"], saved["split_sentences"]
  (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
  check_workdir_config(str(tmp_path), config_lib.Config())
  with pytest.raises(CheckpointError, match=r"different configuration \(split_sentences: "
                     r"False -> True\)"):
    check_workdir_config(str(tmp_path), config_lib.Config(split_sentences=True))

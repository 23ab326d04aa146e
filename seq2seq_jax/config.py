"""Experiment configuration: one typed dataclass, loaded from Python files.

A config file is a Python module with `get_config()` returning a `Config`; the
repository's configs/ ship in the package as seq2seq_jax.configs, and `--config` takes
a file's path or a shipped config's name (`default`, `tiny`, ...: resolve_config_path).
Command-line `--set key=value` overrides are parsed by each field's type and
validated; a wrong key names close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import importlib.util
import json
import math
import numbers
import os
import typing
from typing import Any

from seq2seq_jax.errors import UserError

@dataclasses.dataclass
class Config:
  """Every setting of a run. The defaults are the recommended model (configs/default.py).

  English -> French number words up to 999,999 (numbers:fr), character level, embeddings
  64, LSTM 128, Luong attention with input feeding, RMSprop with warmup and cosine decay,
  clipping 1.0: about 5 minutes on 2 CPU cores. Each comment says why its default.
  """

  # --- data -----------------------------------------------------------------
  # Data source: numbers:LANG (embedded English -> LANG number words, num2words: no download),
  # anki:PATH, tsv:PATH, gettext:PATH (.mo catalogs) or libreoffice:LANG[:DIR] (help pages).
  data: str = "numbers:fr"
  # Seed for data generation, splits, shuffling, initialisation and dropout.
  seed: int = 0
  # anki/tsv: use the first N pairs of the file; gettext: a seeded sample of N;
  # libreoffice: the first N training pairs (0 = all).
  num_samples: int = 0
  # anki/tsv/gettext/libreoffice: held-out fraction for validation (libreoffice: whole pages).
  val_fraction: float = 0.1
  # anki/tsv/gettext/libreoffice: held-out fraction for test (libreoffice: whole pages).
  test_fraction: float = 0.1
  # libreoffice: also train on the UI messages of libreoffice-l10n-LANG (the .deb beside
  # the help packages), minus any source held out in validation or test.
  libreoffice_ui: bool = False
  # anki/tsv/gettext: "random" (seeded) or "last" (Keras validation_split: tail of file).
  split_mode: str = "random"
  # anki/tsv: skip malformed lines, gettext: unreadable .mo files (and count them)
  # instead of stopping.
  skip_bad_lines: bool = False
  # anki/tsv: the Keras example's encoding: vocabularies of every pair, "\t"/"\n" as
  # start/end, inputs and targets padded with spaces to the longest pair, no masking.
  keras_compat: bool = False
  # Lower-case the source side before building the vocabulary.
  source_lowercase: bool = False
  # Tokens: "char" (every character), "word" (words and punctuation, see vocab.py) or
  # "sentencepiece" (subwords of a SentencePiece model trained on the training split).
  tokenizer: str = "char"
  # char/word: most frequent training tokens kept per side, the 4 special ones not counted
  # (0 = all).
  max_vocab_size: int = 0
  # char/word: training tokens seen fewer times than this are read as unknown.
  min_token_freq: int = 1
  # sentencepiece: pieces per side, the 4 special tokens included (joint: of the one model);
  # fewer, with a warning, where the training text has fewer.
  vocab_size: int = 4000
  # sentencepiece: "unigram" (Kudo 2018, SentencePiece's default) or "bpe".
  sentencepiece_model: str = "unigram"
  # sentencepiece: one model trained on sources and targets together, used on both sides.
  sentencepiece_joint: bool = False
  # numbers: largest number generated (inclusive): numbers from 0 to 999,999.
  numbers_max: int = 999_999
  # numbers: training pairs (distinct numbers).
  numbers_train: int = 30_000
  # numbers: validation pairs, disjoint from training by number.
  numbers_val: int = 1_000
  # numbers: test pairs, disjoint from both.
  numbers_test: int = 2_000
  # numbers: "digits" draws the digit count uniformly, so short numbers are not drowned out;
  # "uniform" draws numbers uniformly.
  numbers_sampling: str = "digits"
  # addition/echo/reverse: training pairs.
  task_train: int = 5_000
  # addition/echo/reverse: validation pairs.
  task_val: int = 500
  # addition/echo/reverse: test pairs.
  task_test: int = 500
  # echo/reverse: shortest sequence (integers).
  task_min_len: int = 3
  # echo/reverse: longest sequence (integers).
  task_max_len: int = 8
  # echo/reverse: integers drawn from 0..task_vocab_size-1.
  task_vocab_size: int = 10
  # addition: operands have at most this many digits.
  addition_digits: int = 2
  # series: input window length (rows).
  series_input_steps: int = 12
  # series: predicted rows after each window (the repeat decoder's fixed output length).
  series_output_steps: int = 3
  # series: target columns, comma-separated names or 0-based indexes ("" = every column).
  series_targets: str = ""
  # Pairs with a longer source (tokens: characters or words) are dropped and counted; the
  # longest English number word up to a million is 73 characters.
  max_source_len: int = 80
  # Pairs with a longer target (tokens, without start/end) are dropped and counted; the
  # longest French one is 71.
  max_target_len: int = 80
  # Length-bucket width in tokens: batches hold similar lengths, padded to a multiple of it
  # (0 = pad every batch to the split maximum).
  bucket_width: int = 16
  # Long texts by sentences: inputs over max_source_len are translated sentence by sentence
  # and joined, held-out pairs are all kept and scored, and a training pair over the limits
  # gives its sentence pairs (both sides with as many sentences); False: long pairs dropped.
  split_sentences: bool = False

  # --- model ----------------------------------------------------------------
  # "embed" (learned character or word embeddings), "onehot" (one-hot inputs, as Keras) or
  # "real" (real-valued features, for series:PATH data).
  input_mode: str = "embed"
  # Embedding size when input_mode is "embed".
  embed_dim: int = 64
  # One embedding table for source and target tokens (needs one vocabulary for both:
  # tokenizer=sentencepiece with sentencepiece_joint=true): a token copied from the source,
  # an identifier or a number, is the same vector on both sides.
  tie_embeddings: bool = False
  # The output layer's weights are the target embedding table, transposed (plus a bias of
  # its own; needs embed_dim == latent_dim).
  tie_output: bool = False
  # LSTM hidden size (Keras' latent_dim): 128 is enough for numbers:fr and twice as fast as
  # 256 on a CPU.
  latent_dim: int = 128
  # Stacked LSTM layers (one encoder and one decoder layer); encoder layer k seeds decoder layer k.
  num_layers: int = 1
  # Recurrent cell: "lstm" or "gru" (Keras 3 GRU, reset_after=True).
  cell: str = "lstm"
  # Decoder input: "previous" (its previous token, teacher-forced; seeded with the
  # encoder's state) or "repeat" (the encoder's final vector at every step, RepeatVector).
  decoder_input: str = "previous"
  # Dropout rate between layers and before the output layer; none: numbers:fr is
  # deterministic and its data plentiful.
  dropout: float = 0.0
  # Feed the source reversed (Sutskever et al. 2014); attention makes reversal unnecessary.
  reverse_source: bool = False
  # Attention over encoder outputs, so the decoder reads the source where it needs it: "none"
  # (as Keras), "dot" or "general" (Luong), or "additive" (Bahdanau's v^T tanh(W_q h + W_k e)).
  attention: str = "general"
  # With attention: feed the previous attentional vector into the decoder (Luong et al.),
  # so it knows what it has translated.
  input_feeding: bool = True
  # Add a backward layer to every encoder layer; both final states seed the decoder.
  bidirectional_encoder: bool = False
  # LSTM layers run lstm_sequence (hand-written gradient, ~2x faster on a CPU); False: autodiff of lax.scan.
  fused_lstm: bool = True
  # Matmul operands: "float32", or "bfloat16" (mixed precision: products summed in float32,
  # parameters, optimizer and activations float32; ~1.6x the matmul rate on AVX512-BF16 CPUs).
  matmul_dtype: str = "float32"
  # LSTM layers: "auto" (lax.scan everywhere: measured, docs/accelerators.md) or "scan"; "cudnn" is refused.
  lstm_impl: str = "auto"
  # Time steps per iteration of the recurrent scans; 0 = the platform's default (1; CPU measured).
  scan_unroll: int = 0
  # Before training, the devices' forward pass against the host CPU's on two validation
  # batches; a difference rounding cannot explain stops the run (docs/accelerators.md).
  # "auto" (on a GPU or TPU), "always" or "never".
  cpu_crosscheck: str = "auto"

  # --- optimisation -----------------------------------------------------------
  # Sentence pairs per batch (global).
  batch_size: int = 128
  # Passes over the training split.
  num_epochs: int = 6
  # Stop training at this wall time from the command's start (minutes; 0 = no limit), then
  # evaluate and save as a finished run does; the same command again resumes it.
  time_budget_minutes: float = 0.0
  # Peak learning rate.
  learning_rate: float = 3e-3
  # "constant", "cosine" (warmup then cosine decay) or "linear" (warmup then linear decay).
  lr_schedule: str = "cosine"
  # Linear warmup steps for "cosine"/"linear".
  warmup_steps: int = 200
  # Final learning rate as a fraction of the peak for decaying schedules (1 = no decay).
  lr_end_fraction: float = 0.02
  # RMSprop decay of the squared-gradient average (Keras rho).
  rmsprop_decay: float = 0.9
  # RMSprop epsilon (Keras' default).
  rmsprop_eps: float = 1e-7
  # Epsilon inside the square root (Keras 3) rather than outside.
  rmsprop_eps_in_sqrt: bool = True
  # RMSprop momentum, in [0, 1) (0 = none, Keras default).
  rmsprop_momentum: float = 0.0
  # Centered RMSprop.
  rmsprop_centered: bool = False
  # Clip gradients to this global norm (0 = no clipping).
  clip_norm: float = 1.0
  # Include padded target positions in the loss (Keras example behaviour); False: the
  # loss ignores them.
  loss_on_padding: bool = False
  # Label smoothing of the cross-entropy (0 = none); reported losses are the smoothed ones.
  label_smoothing: float = 0.0

  # --- evaluation, checkpoints, logging ----------------------------------------
  # Validate (loss, token accuracy; greedy exact match, CER, chrF, BLEU) every N epochs.
  eval_every_epochs: int = 1
  # Validation sentences decoded greedily for exact match at each evaluation (0 = all).
  eval_decode_samples: int = 500
  # Longest greedy output in tokens (0 = max_target_len + 1).
  decode_max_len: int = 0
  # Save a checkpoint every N epochs (the last epoch is always saved).
  checkpoint_every_epochs: int = 1
  # Number of most recent checkpoints kept (the best checkpoint is kept besides them).
  keep_checkpoints: int = 2
  # Validation metric used to keep the best checkpoint, the one translate and evaluate use:
  # val/exact_match, val/token_accuracy, val/loss, val/chrf or val/bleu (the last two over
  # the eval_decode_samples decoded sentences).
  best_metric: str = "val/exact_match"
  # Also write a checkpoint every N steps inside an epoch (0 = only at epoch ends).
  checkpoint_every_steps: int = 0
  # Log training loss every N steps.
  log_every_steps: int = 100
  # Sample translations printed in the final summary.
  num_summary_samples: int = 8
  # Write TensorBoard event files while training (WORKDIR/tensorboard/, tensorboardX):
  # log steps under step/, epochs under their metric names, hyperparameters with the final
  # metrics for the HParams view.
  tensorboard: bool = False

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_CHOICES = {
    "input_mode": ("embed", "onehot", "real"),
    "cell": ("lstm", "gru"),
    "decoder_input": ("previous", "repeat"),
    "attention": ("none", "dot", "general", "additive"),
    "lr_schedule": ("constant", "cosine", "linear"),
    "split_mode": ("random", "last"),
    "numbers_sampling": ("digits", "uniform"),
    "best_metric": ("val/exact_match", "val/token_accuracy", "val/loss", "val/chrf", "val/bleu"),
    "tokenizer": ("char", "word", "sentencepiece"),
    "sentencepiece_model": ("unigram", "bpe"),
    "matmul_dtype": ("float32", "bfloat16"),
    "lstm_impl": ("auto", "scan"),  # cudnn: withdrawn (CUDNN_WITHDRAWN)
    "cpu_crosscheck": ("auto", "always", "never"),
}
_POSITIVE = ("latent_dim", "num_layers", "batch_size", "num_epochs", "embed_dim",
             "max_source_len", "max_target_len", "eval_every_epochs",
             "checkpoint_every_epochs", "keep_checkpoints", "log_every_steps",
             "numbers_train", "numbers_max", "task_train", "task_min_len",
             "task_max_len", "task_vocab_size", "addition_digits", "series_input_steps",
             "series_output_steps", "min_token_freq", "learning_rate",
             "rmsprop_eps")  # RMSprop divides by sqrt(nu + eps): 0/0 where gradients were 0
# array sizes: at most MAX_ARRAY_SIZE (beyond it JAX's shapes overflow; training checks
# memory against the model's real size, loop._check_state_fits)
_ARRAY_SIZES = ("latent_dim", "embed_dim", "num_layers", "batch_size", "max_source_len",
                "max_target_len", "vocab_size", "task_vocab_size",
                "series_input_steps", "series_output_steps", "decode_max_len")
MAX_ARRAY_SIZE = 2**31 - 1
_NON_NEGATIVE = ("time_budget_minutes", "task_val", "task_test", "num_samples", "numbers_val", "numbers_test", "warmup_steps",
                 "clip_norm", "rmsprop_momentum", "bucket_width",
                 "eval_decode_samples", "decode_max_len", "checkpoint_every_steps",
                 "num_summary_samples",
                 "max_vocab_size", "scan_unroll")


def field_names() -> list[str]:
  return [f.name for f in dataclasses.fields(Config)]


def _unknown_key_error(key: str, where: str) -> UserError:
  close = difflib.get_close_matches(key, field_names(), n=3, cutoff=0.5)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  return UserError(f"unknown config key '{key}' in {where}.{hint} "
                   "Run `seq2seq-jax train --help-config` for every key.")


# The seeds JAX and NumPy both take: jax.random.key reads an int64, NumPy's generators
# refuse negative seeds.
SEED_RANGE = (0, 2**63 - 1)


def seed_range_text() -> str:
  """The seeds allowed, in words, for messages."""
  return f"a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} (2**63 - 1)"


# lstm_impl=cudnn for a new run: refused (saved configs that hold it load as the scan).
CUDNN_WITHDRAWN = ("lstm_impl=cudnn is withdrawn: on an NVIDIA H200 the default model trained "
                   "through cuDNN translated nothing (test exact match 0.000, 0.996 with the "
                   "scan) and trained slower; use lstm_impl=scan, which auto runs "
                   "(docs/accelerators.md).")


# float keys whose inf means "no limit" (clip_norm=inf: no clipping; no time budget)
NO_LIMIT = ("clip_norm", "time_budget_minutes")


def validate(config: Config, finite: bool = True) -> Config:
  """Checks types and values; raises UserError naming the bad field.

  Floats must be finite (inf may be given for the NO_LIMIT keys); finite=False lets them
  be nan or inf, and rmsprop_momentum 1 or more: a run saved before they were refused
  still loads."""
  hints = typing.get_type_hints(Config)
  for name in field_names():
    value = getattr(config, name)
    want = hints[name]
    ok = (isinstance(value, bool) if want is bool else
          isinstance(value, int) and not isinstance(value, bool) if want is int else
          isinstance(value, (int, float)) and not isinstance(value, bool)
          if want is float else isinstance(value, want))
    if not ok:
      raise UserError(f"config key '{name}' must be {want.__name__}, "
                      f"got {value!r} ({type(value).__name__}).")
    if want is float:
      setattr(config, name, float(value))
      number = getattr(config, name)
      if finite and not math.isfinite(number) and not (number == math.inf and name in NO_LIMIT):
        raise UserError(f"config key '{name}' must be a finite number; got {value!r}.")
  if not SEED_RANGE[0] <= config.seed <= SEED_RANGE[1]:
    raise UserError(f"config key 'seed' must be {seed_range_text()}; got {config.seed!r}.")
  if config.lstm_impl == "cudnn":
    raise UserError(CUDNN_WITHDRAWN)
  if config.tie_embeddings and not (config.input_mode == "embed" and config.tokenizer ==
                                    "sentencepiece" and config.sentencepiece_joint):
    raise UserError("tie_embeddings shares one table between source and target tokens: set "
                    "input_mode=embed, tokenizer=sentencepiece and sentencepiece_joint=true.")
  if config.tie_output and not (config.input_mode == "embed" and config.decoder_input ==
                                "previous" and config.embed_dim == config.latent_dim):
    raise UserError(f"tie_output uses the target embedding as the output layer: set "
                    f"input_mode=embed, decoder_input=previous and embed_dim=latent_dim "
                    f"(now {config.embed_dim} and {config.latent_dim}).")
  for name, choices in _CHOICES.items():
    if getattr(config, name) not in choices:
      raise UserError(f"config key '{name}' must be one of {', '.join(choices)}; "
                      f"got {getattr(config, name)!r}.")
  for name in _POSITIVE:
    if getattr(config, name) <= 0:
      raise UserError(f"config key '{name}' must be positive; got {getattr(config, name)!r}.")
  for name in _ARRAY_SIZES:
    if getattr(config, name) > MAX_ARRAY_SIZE:
      raise UserError(f"config key '{name}' is an array size: at most {MAX_ARRAY_SIZE:,}; got "
                      f"{getattr(config, name)!r}.")
  for name in _NON_NEGATIVE:
    if getattr(config, name) < 0:
      raise UserError(f"config key '{name}' must not be negative; got {getattr(config, name)!r}.")
  for name in ("dropout", "val_fraction", "test_fraction", "label_smoothing"):
    if not 0.0 <= getattr(config, name) < 1.0:
      raise UserError(f"config key '{name}' must be in [0, 1); got {getattr(config, name)!r}.")
  if finite and not config.rmsprop_momentum < 1.0:  # steps that never decay; a run saved
    # before it was refused still loads (finite=False), its model is what it is
    raise UserError("config key 'rmsprop_momentum' must be in [0, 1); got "
                    f"{config.rmsprop_momentum!r}.")
  if not 0.0 <= config.lr_end_fraction <= 1.0:  # 1: no decay
    raise UserError("config key 'lr_end_fraction' must be in [0, 1]; got "
                    f"{config.lr_end_fraction!r}.")
  if not 0.0 < config.rmsprop_decay < 1.0:
    raise UserError(f"config key 'rmsprop_decay' must be in (0, 1); got {config.rmsprop_decay!r}.")
  if config.decoder_input == "repeat" and config.attention != "none":
    raise UserError("decoder_input=repeat reads the encoder's final vector only: "
                    "set attention=none.")
  if config.data.startswith("series:") != (config.input_mode == "real"):
    raise UserError("series:PATH data and input_mode=real go together: set both "
                    "(with decoder_input=repeat and best_metric=val/loss), as configs/series.py does.")
  if config.input_mode == "real" and (config.decoder_input != "repeat"
                                      or config.best_metric != "val/loss"):
    raise UserError("series:PATH models use decoder_input=repeat and best_metric=val/loss.")
  if config.vocab_size <= 4:
    raise UserError(f"config key 'vocab_size' must be more than the 4 special tokens; "
                    f"got {config.vocab_size!r}.")
  if config.tokenizer != "char" and config.keras_compat:
    raise UserError("keras_compat reproduces the Keras example's character encoding: "
                    f"set tokenizer=char (or keras_compat=false for tokenizer={config.tokenizer}).")
  if config.tokenizer != "char" and config.input_mode == "real":
    raise UserError(f"tokenizer={config.tokenizer} applies to text data; series:PATH data "
                    "have no tokens.")
  if config.keras_compat and config.bucket_width:
    raise UserError("keras_compat pads every batch to the longest pair, as the Keras example: "
                    "set bucket_width=0.")
  if config.val_fraction + config.test_fraction >= 1.0:
    raise UserError("val_fraction + test_fraction must leave some training data (sum < 1).")
  return config


def _parse_value(name: str, text: str, where: str = "--set") -> Any:
  want = typing.get_type_hints(Config)[name]
  try:
    if want is bool:
      lowered = text.strip().lower()
      if lowered in ("1", "true", "yes", "on"):
        return True
      if lowered in ("0", "false", "no", "off"):
        return False
      raise ValueError
    if want is int:
      return int(text.replace("_", ""))
    if want is float:
      return float(text)
    # one of a few names: spaces around it are no part of it, as around a number
    return text.strip() if name in _CHOICES else text
  except ValueError:
    prefix = "--set " if where == "--set" else f"{where}: "
    raise UserError(f"{prefix}{name}={text}: '{text}' is not a valid {want.__name__}.") from None


def apply_overrides(config: Config, overrides: list[str], where: str = "--set") -> Config:
  """Applies `key=value` strings to a copy of config; where: what gave them, for errors."""
  if isinstance(overrides, str):  # each character would be read as an override
    raise TypeError(f"overrides must be a list of 'key=value' strings, got the str "
                    f"{overrides!r}: pass [{overrides!r}].")
  config = dataclasses.replace(config)
  for item in overrides:
    if "=" not in item:
      raise UserError(f"{where} expects key=value, got '{item}'.")
    key, value = item.split("=", 1)
    key = key.strip()
    if key not in field_names():
      raise _unknown_key_error(key, where)
    setattr(config, key, _parse_value(key, value, where))
  return validate(config)


def from_dict(values: dict[str, Any], where: str) -> Config:
  """Builds a Config from a dict (e.g. a saved config.json). A run saved with
  lstm_impl=cudnn loads as lstm_impl=scan: the parameters are the same either way."""
  for key in values:
    if key not in field_names():
      raise _unknown_key_error(key, where)
  if values.get("lstm_impl") == "cudnn":
    values = dict(values, lstm_impl="scan")
  return validate(Config(**values), finite=False)


def changed_keys(saved: dict[str, Any], config: Config,
                 allowed: tuple[str, ...] | set[str] = ()) -> list[str]:
  """The keys whose value in config differs from a saved config's (a config.json, a
  sweep's base), a key saved before it existed counting as its default; keys in allowed
  are not compared."""
  saved = dict(Config().to_dict(), **saved)
  current = config.to_dict()
  if saved.get("tokenizer") == config.tokenizer:  # a setting the tokenizer ignores changes nothing
    allowed = set(allowed) | set(unused_keys(config))
  return [key for key in current if key not in allowed and saved.get(key) != current[key]]


def unused_keys(config: Config) -> tuple[str, ...]:
  """The vocabulary keys config's tokenizer ignores: sentencepiece's for characters and
  words, the token-count limits for sentencepiece."""
  if config.tokenizer == "sentencepiece":
    return ("max_vocab_size", "min_token_freq")
  return ("vocab_size", "sentencepiece_model", "sentencepiece_joint")


def describe_changes(saved: dict[str, Any], config: Config,
                     allowed: tuple[str, ...] | set[str] = (), shown: int = 6) -> str | None:
  """changed_keys for a message: "key: old -> new; ..." for the first `shown`, then the
  names of the rest; None when nothing changed."""
  changed = changed_keys(saved, config, allowed)
  if not changed:
    return None
  old = dict(Config().to_dict(), **saved)
  text = "; ".join(f"{k}: {old[k]!r} -> {getattr(config, k)!r}" for k in changed[:shown])
  if len(changed) > shown:
    text += f"; and {len(changed) - shown} more: {', '.join(changed[shown:])}"
  return text


def shipped_configs_dir() -> str:
  """The directory of the configs shipped in the package (seq2seq_jax.configs).

  The repository's top-level configs/, installed as seq2seq_jax/configs/ by a wheel and
  mapped there by an editable install; a source tree used without installing it (an older
  editable install, PYTHONPATH) reads its configs/ directly.
  """
  try:
    return os.fspath(importlib.resources.files("seq2seq_jax.configs"))
  except ModuleNotFoundError:
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    if os.path.isfile(os.path.join(checkout, "default.py")):
      return checkout
    raise UserError("this install of seq2seq_jax has no shipped configs (seq2seq_jax.configs); "
                    "reinstall it (pip install seq2seq_jax, or pip install -e . in a checkout).") from None


def shipped_config_names() -> list[str]:
  """The names `--config` accepts besides paths: the file stems of the shipped configs."""
  directory = shipped_configs_dir()
  return sorted(name[:-3] for name in os.listdir(directory)
                if name.endswith(".py") and not name.startswith("_"))


def shipped_config_path(name: str) -> str:
  """The path of the shipped config `name` (e.g. "default"), which must exist."""
  return os.path.join(shipped_configs_dir(), name + ".py")


def resolve_config_path(name_or_path: str | os.PathLike) -> str:
  """A config file's path: an existing file as given (it wins), else a shipped config's name.

  `default`, `tiny`, `sweep_lr`, ... (any shipped file's stem, `.py` optional) name the
  configs shipped in the package, so `--config default` works wherever seq2seq_jax is installed.
  """
  path = os.fspath(name_or_path)
  if os.path.isfile(path):
    return path
  name = path[:-3] if path.endswith(".py") else path
  names = shipped_config_names()
  if name in names:
    return shipped_config_path(name)
  close = difflib.get_close_matches(name, names, n=1)
  raise UserError(f"config '{path}' is neither a file nor a shipped config name "
                  f"({', '.join(names)}){f'; did you mean {close[0]}?' if close else '.'}")


def load_module(path: str, module_name: str):
  """Executes a user's Python file (a config or sweep file) as a module; an exception it
  raises is one line naming the file."""
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None:  # Python loads files named *.py only
    raise UserError(f"config file '{path}' is not a Python file (*.py): a config is a .py "
                    "file whose get_config() returns a Config (see configs/); single "
                    "settings go in --set KEY=VALUE.")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as error:  # where, as Python's compiler says it (its repr was shown)
    where = "".join(f", {name} {number}" for name, number in
                    (("line", error.lineno), ("column", error.offset)) if number)
    line = f" ({error.text.strip()})" if error.text and error.text.strip() else ""
    kind = type(error).__name__
    if error.filename and os.path.abspath(error.filename) != os.path.abspath(path):
      # in a module the config imports, or in code it runs
      raise UserError(f"config file '{path}' failed to load: {kind} in '{error.filename}'"
                      f"{where}: {error.msg}{line}.") from None
    raise UserError(f"config file '{path}'{where}: {kind}: {error.msg}{line}; fix the "
                    "file.") from None
  except Exception as error:  # a user's file: report, do not crash
    raise UserError(f"config file '{path}' failed to load: {_described(error)}") from error
  return module


def _described(error: Exception) -> str:
  """"Type: message" of an exception, on one line."""
  message = " ".join(str(error).split())
  return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _raised(path: str, function: str, error: Exception) -> UserError:
  """The one-line error of an exception raised by a user file's function."""
  return UserError(f"config file '{path}': {function}() raised {_described(error)}")


def call_in_file(path: str, module, function: str) -> Any:
  """module.function() of a user's file; an exception it raises is one line naming the
  file, the function and the exception."""
  try:
    return getattr(module, function)()
  except Exception as error:  # a user's code: report, do not crash
    raise _raised(path, function, error) from error


def load_config_file(path: str | os.PathLike) -> Config:
  """Imports a config file and calls its get_config()."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"config file '{path}' does not exist.")
  module = load_module(path, "_seq2seq_jax_user_config")
  if not hasattr(module, "get_config"):
    raise UserError(f"config file '{path}' has no get_config() function.")
  try:
    config = module.get_config()
  except TypeError as error:
    message = str(error)
    if "unexpected keyword argument" in message:
      key = message.split("'")[-2]
      raise _unknown_key_error(key, path) from None
    raise _raised(path, "get_config", error) from error
  except Exception as error:  # a user's code: report, do not crash
    raise _raised(path, "get_config", error) from error
  if not isinstance(config, Config):
    raise UserError(f"config file '{path}': get_config() must return seq2seq_jax.config.Config.")
  return validate(config)


def describe_fields() -> str:
  """Every key with its default, for --help-config."""
  lines = []
  for f in dataclasses.fields(Config):
    lines.append(f"{f.name} = {f.default!r}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Decoding settings (translate, evaluate, export, serve flags): their ranges
# ---------------------------------------------------------------------------

# beam search's GNMT length penalty alpha where none is given (translate, evaluate,
# export, serve and the library's decoders)
DEFAULT_LENGTH_PENALTY = 0.6
# |alpha| beyond this overflows ((5 + length) / 6) ** alpha in float32 for outputs of about
# 1,000 tokens (167 ** 17 > 3.4e38); GNMT uses 0.6 to 1.
MAX_LENGTH_PENALTY = 10.0
# the smallest normal float32: a smaller temperature is 0 or subnormal in the program
MIN_TEMPERATURE = 1.1754943508222875e-38  # numpy.finfo(numpy.float32).tiny
MAX_TEMPERATURE = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max


def check_length_penalty(alpha: float) -> float:
  """alpha, if beam search can rank by it (finite, |alpha| <= MAX_LENGTH_PENALTY)."""
  if (not isinstance(alpha, numbers.Real) or not math.isfinite(alpha)
      or abs(alpha) > MAX_LENGTH_PENALTY):
    raise UserError(f"the length penalty must be from -{MAX_LENGTH_PENALTY:g} to "
                    f"{MAX_LENGTH_PENALTY:g} (GNMT's alpha, usually 0.6 to 1; beyond that "
                    f"float32 overflows on long outputs), got {alpha}.")
  return alpha


def check_temperature(temperature: float) -> float:
  """temperature, if sampling can divide by it in float32: 0 (greedy), or a normal
  float32 number (1.2e-38 to 3.4e38)."""
  if not isinstance(temperature, numbers.Real) or not (
      temperature == 0.0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
    raise UserError(f"the temperature must be 0 (greedy) or from {MIN_TEMPERATURE:.2g} to "
                    f"{MAX_TEMPERATURE:.2g} (float32's normal numbers), got {temperature}.")
  return temperature

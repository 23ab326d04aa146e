"""Splits of the text pairs, their length limits, and vocabularies from the training split."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Any

import numpy as np

from seq2seq_jax.config import Config
from seq2seq_jax.data.sentences import split_long_pairs, split_sentences
from seq2seq_jax.data.sources import (Pair, gettext_pairs, number_pairs, parse_spec, spec_paths,
                                      tab_pairs)
from seq2seq_jax.data.tasks import TASKS, task_pairs
from seq2seq_jax.errors import DataError
from seq2seq_jax.vocab import SPECIAL_TOKENS, Vocab, tokenize, train_sentencepiece

log = logging.getLogger(__name__)


def split_pairs(pairs: list[Pair], config: Config) -> tuple[list[Pair], list[Pair], list[Pair]]:
  n = len(pairs)
  n_val = int(round(n * config.val_fraction))
  n_test = int(round(n * config.test_fraction))
  if config.split_mode == "random":
    order = np.random.default_rng([config.seed, 23]).permutation(n)
    pairs = [pairs[i] for i in order]
  n_train = n - n_val - n_test
  if n_train <= 0:
    raise DataError(f"only {n} pairs: nothing left for training after the held-out splits.")
  # "last" keeps file order: validation is the tail, as Keras' validation_split.
  return pairs[:n_train], pairs[n_train + n_test:], pairs[n_train:n_train + n_test]


def fingerprint(pairs: list[Pair]) -> str:
  """A short digest of a split's pairs, in order: equal fingerprints, equal data."""
  digest = hashlib.sha256()
  for source, target in pairs:
    digest.update(f"{source}\t{target}\n".encode("utf-8"))
  return digest.hexdigest()[:16]


def changed_splits(saved_info: dict | None, now_info: dict | None,
                   names: tuple[str, ...] = ("train", "val", "test")) -> list[str]:
  """The splits among names whose fingerprint in now_info (Splits.info()) differs from
  the one saved_info holds (a checkpoint's, a run's); a split either lacks is not judged."""
  saved = (saved_info or {}).get("fingerprints") or {}
  now = (now_info or {}).get("fingerprints") or {}
  return [name for name in names if saved.get(name) and now.get(name) and saved[name] != now[name]]


def check_same_split(data_info: dict[str, Any] | None, splits: Splits, split: str, spec: str,
                     step: int, hint: str = "") -> None:
  """The split read from a run's own data is the one its checkpoint was trained beside
  (its fingerprint, saved with the checkpoint): a file edited since, or a relative path
  read from another directory, would be scored without a word (hint: what to do
  otherwise, ending the error)."""
  if not changed_splits(data_info, splits.info(), (split,)):
    return
  relative = (f", or its relative path is now read from {os.getcwd()} (run it where "
              "train ran)" if any(not os.path.isabs(p) for p in spec_paths(spec)) else "")
  raise DataError(f"the {split} split of {spec} read now is not the one checkpoint {step} "
                  f"was trained with: the data changed{relative}.{' ' + hint if hint else ''}")


@dataclasses.dataclass
class Splits:
  train: list[Pair]
  val: list[Pair]
  test: list[Pair]
  packages: dict[str, str] | None = None  # libreoffice: {language: package and version}

  def info(self) -> dict:
    """What the run was trained on: pair counts, a fingerprint of each split (as read,
    before length limits) and the packages read; stored in checkpoints and results.json."""
    info = {"pairs": {name: len(self.get(name)) for name in ("train", "val", "test")},
            "fingerprints": {name: fingerprint(self.get(name)) for name in ("train", "val", "test")}}
    if self.packages:
      info["packages"] = dict(self.packages)
    return info

  def held_out_sources(self) -> set[str]:
    """The validation and test sources and each of their sentences: no training sentence
    pair may have one as its source (a held-out paragraph's sentence, cut from a training
    paragraph of another page, was trained on)."""
    sources = {source for source, _ in self.val + self.test}
    return sources | {sentence for source in sources for sentence in split_sentences(source)}

  def get(self, name: str) -> list[Pair]:
    if name not in ("train", "val", "test"):
      raise DataError(f"unknown split '{name}': use train, val or test.")
    return getattr(self, name)


def load_splits(config: Config, spec: str | None = None) -> Splits:
  """Reads the source named by spec (default config.data) into raw text splits."""
  kind, arg = parse_spec(spec or config.data)
  if kind == "series":
    raise DataError("series:PATH data are real-valued windows, not text pairs: a text "
                    "model cannot read them; train a series model on them (--config series).")
  packages = None
  if kind == "numbers":
    train, val, test = number_pairs(arg, config)
  elif kind in TASKS:
    train, val, test = task_pairs(kind, config)
  elif kind == "gettext":
    pairs = gettext_pairs(arg, config.num_samples, config.seed, config.skip_bad_lines)
    train, val, test = split_pairs(pairs, config)
  elif kind == "libreoffice":
    from seq2seq_jax.data import libreoffice
    train, val, test, packages = libreoffice.libreoffice_splits(
        arg, config.val_fraction, config.test_fraction, config.seed)
    if config.num_samples:
      train = train[:config.num_samples]
    if config.libreoffice_ui:
      lang, _, directory = arg.partition(":")
      catalogs = libreoffice.ui_catalogs(lang, directory or None)
      seen = {source for source, _ in train + val + test}  # a help paragraph stays where it is
      ui = [pair for pair in gettext_pairs(catalogs) if pair[0] not in seen]
      log.info("libreoffice_ui: %d UI message pairs added to training", len(ui))
      train = train + ui
      packages = {**packages, "ui": (libreoffice.deb_version(catalogs) if catalogs.endswith(".deb")
                                     else f"directory {os.path.abspath(catalogs)}")}
  else:
    pairs = tab_pairs(arg, kind, config.num_samples, config.skip_bad_lines)
    train, val, test = split_pairs(pairs, config)
    in_train = set(train)
    repeated = sum(pair in in_train for pair in val + test)
    if repeated:  # a file that repeats pairs (Tatoeba's do) puts copies on both sides
      log.warning("warning: %s: %d of %d validation and test pairs are also training pairs "
                  "(the file repeats them): held-out scores overstate how the model does on "
                  "new text; remove the repeats for a held-out measure.", spec or config.data,
                  repeated, len(val) + len(test))
  if config.source_lowercase:
    train, val, test = ([(s.lower(), t) for s, t in part] for part in (train, val, test))
  return Splits(train, val, test, packages)


def drop_long(pairs: list[Pair], config: Config, name: str,
              vocabs: tuple[Vocab, Vocab] | None = None,
              held_out_sources: set[str] = frozenset()) -> list[Pair]:
  """Pairs whose source and target fit max_source_len / max_target_len tokens: those of
  vocabs (source, target), which subword tokens need (and a word vocabulary its word
  rules); char and word tokens count alone.

  With split_sentences, none is dropped from a held-out split (its long inputs are
  translated sentence by sentence), and a training pair over the limits gives its sentence
  pairs that fit (sentences.split_long_pairs) whose source is none of held_out_sources."""
  def counter(vocab: Vocab | None):
    if vocab is not None and vocab.level != "char":  # subwords; words by the vocabulary's rules
      return lambda text: len(vocab.tokenize(text))
    if config.tokenizer == "sentencepiece":
      raise ValueError("drop_long: subword lengths need the vocabularies (build_vocabs)")
    if config.tokenizer == "char":
      return len
    return lambda text: len(tokenize(text, config.tokenizer))

  src_len, tgt_len = (counter(v) for v in (vocabs or (None, None)))
  fits = lambda s, t: src_len(s) <= config.max_source_len and tgt_len(t) <= config.max_target_len
  limits = f"max_source_len={config.max_source_len} / max_target_len={config.max_target_len}"
  if config.split_sentences and name != "train":
    long = sum(not fits(s, t) for s, t in pairs)
    if long:
      log.info("%s: %d of %d pairs longer than %s kept: their sources are translated "
               "sentence by sentence", name, long, len(pairs), limits)
    return list(pairs)
  if config.split_sentences:
    kept, split, added = split_long_pairs(pairs, fits, held_out_sources)
    long = len(pairs) - (len(kept) - added)  # kept: the pairs that fit, then the sentence pairs
    if long:
      log.info("%s: %d of %d pairs longer than %s: %d split into %d sentence pairs, %d "
               "dropped", name, long, len(pairs), limits, split, added, long - split)
    return kept
  kept = [(s, t) for s, t in pairs if fits(s, t)]
  if len(kept) < len(pairs):
    log.info("%s: dropped %d of %d pairs longer than %s", name, len(pairs) - len(kept),
             len(pairs), limits)
  return kept


def build_vocabs(train: list[Pair], config: Config | None = None) -> tuple[Vocab, Vocab]:
  """Source and target vocabularies of config's tokenizer (default: characters) from the
  training split only: Vocab.build's tokens, or SentencePiece models trained on it
  (vocab_size pieces per side, or one joint model of both sides)."""
  config = config or Config()
  sources, targets = [s for s, _ in train], [t for _, t in train]
  if config.tokenizer != "sentencepiece":
    vocabs = tuple(Vocab.build(texts, config.tokenizer, config.max_vocab_size,
                               config.min_token_freq) for texts in (sources, targets))
    for side, texts, vocab in zip(("source", "target"), (sources, targets), vocabs):
      if len(vocab) <= len(SPECIAL_TOKENS) and any(texts):  # every token would be <unk>
        raise DataError(f"the {side} vocabulary holds no token: min_token_freq="
                        f"{config.min_token_freq} / max_vocab_size={config.max_vocab_size} "
                        "leave none of the training split's; lower min_token_freq or raise "
                        "max_vocab_size.")
    return vocabs
  train_side = lambda texts, what: Vocab.from_sentencepiece(train_sentencepiece(
      texts, config.vocab_size, config.sentencepiece_model, config.seed, what))
  if config.sentencepiece_joint:
    joint = train_side(sources + targets, "the training split's sources and targets")
    return joint, joint
  return (train_side(sources, "the training split's sources"),
          train_side(targets, "the training split's targets"))


# The Keras example wraps targets in "\t" ... "\n": here they are START and END.
KERAS_START, KERAS_END = "\t", "\n"


def keras_vocabs(pairs: list[Pair]) -> tuple[Vocab, Vocab, dict[str, int]]:
  """Vocabularies and lengths exactly as the Keras example builds them: sorted
  character sets of every pair (validation included), targets wrapped in \t ... \n.

  Returns (source vocab, target vocab, {"max_encoder_seq_length", "max_decoder_seq_length"}).
  """
  src_chars = sorted({ch for s, _ in pairs for ch in s})
  tgt_chars = sorted({ch for _, t in pairs for ch in KERAS_START + t + KERAS_END})
  for name, chars in (("source", src_chars), ("target", tgt_chars)):
    if " " not in chars:
      raise DataError(f"Keras-example encoding pads with the space character, but no {name} "
                      "sentence contains a space: train such data without it (--set "
                      "keras_compat=false pads with its own id and masks).")
  dims = {"max_encoder_seq_length": max(len(s) for s, _ in pairs),
          "max_decoder_seq_length": max(len(t) + 2 for _, t in pairs)}
  tgt_vocab = Vocab([ch for ch in tgt_chars if ch not in (KERAS_START, KERAS_END)],
                    start_text=KERAS_START)
  return Vocab(src_chars), tgt_vocab, dims

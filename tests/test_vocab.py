"""Tokenizers and vocabularies: characters and words, limits, unknowns, saved levels."""

import json
import os

import numpy as np
import pytest

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax.errors import UserError
from seq2seq_jax.inference import evaluate_pairs, load_run_data, load_trained
from seq2seq_jax.loop import TrainingInterrupted, train_and_evaluate
from seq2seq_jax.workdir import CheckpointMeta, check_workdir_config
from seq2seq_jax.vocab import (END_ID, HYPHEN_JOINER, SPECIAL_TOKENS, UNK_ID, Vocab, detokenize,
                               word_tokenize)
from tests.conftest import tiny_config

NEW_KEYS = ("tokenizer", "max_vocab_size", "min_token_freq")

ORDINARY = [
    "Hello, world!",
    "Go.",
    "Is it raining? No; it's snowing: take a coat...",
    "L'homme qu'il a vu n'est pas là.",
    "Il a quatre-vingt-dix-sept ans (environ).",
    'He said "yes" and left.',
    "It costs 3.50 euros, or 1,000 yen at 10:30.",
    "Ça va, Zoë? Très bien, merci!",
    "Straße über 42% [sic]",
    "Qu’est-ce que c’est?",
    "¿Dónde está? ¡Aquí!",
    "«Citation» et “guillemets” ‘simples’.",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_word_tokenizer_round_trips_ordinary_sentences(text):
  assert detokenize(word_tokenize(text)) == text


def test_word_tokenizer_round_trips_random_sentences():
  """Property: any sentence of words with punctuation placed as in English comes back."""
  rng = np.random.default_rng(0)
  words = ["the", "Cat", "l'eau", "naïve", "x2", "42", "3.14", "well-known", "don't", "été"]
  for _ in range(300):
    parts = []
    for _ in range(rng.integers(1, 9)):
      word = str(rng.choice(words))
      wrap = rng.integers(0, 4)
      word = {0: word, 1: f"({word})", 2: f'"{word}"', 3: f"«{word}»"}[int(wrap)]
      parts.append(word + str(rng.choice(["", "", ",", ";", ":", "...", "?!"])))
    text = " ".join(parts) + str(rng.choice(["", ".", "!", "?"]))
    assert detokenize(word_tokenize(text)) == text, text


def test_word_tokens_follow_the_documented_rules():
  assert word_tokenize("L'homme n'a pas 3.5 kg, dit-il!") == [
      "L'", "homme", "n'", "a", "pas", "3.5", "kg", ",", "dit", HYPHEN_JOINER, "il", "!"]
  assert word_tokenize("don't  stop\tnow") == ["don'", "t", "stop", "now"]  # no lower-casing
  assert word_tokenize("snake_case") == ["snake", "_", "case"]


@pytest.mark.parametrize("text, comes_back", [
    ("Va !", "Va!"),                       # French space before ! (often a no-break space)
    ("Quoi\u202f?", "Quoi?"),
    ("a  b ", "a b"),                      # runs of spaces and trailing space
    ("and/or", "and / or"),                # symbols not listed as punctuation
    ("i.e. this", "i. e. this"),           # abbreviations
    ("« Oui »", "«Oui»"),                  # French guillemets with inner spaces
])
def test_documented_inexact_cases(text, comes_back):
  assert detokenize(word_tokenize(text)) == comes_back


def test_word_vocab_is_most_frequent_first_with_limits():
  texts = ["b a c a", "a b d", "e"]  # a:3, b:2, then c, d, e once each
  vocab = Vocab.build(texts, "word")
  assert vocab.to_list() == ["a", "b", "c", "d", "e"]  # ties broken by the token
  assert Vocab.build(texts, "word", max_size=2).to_list() == ["a", "b"]
  assert len(Vocab.build(texts, "word", max_size=2)) == len(SPECIAL_TOKENS) + 2
  assert Vocab.build(texts, "word", min_freq=2).to_list() == ["a", "b"]
  assert Vocab.build(texts, "word", max_size=1, min_freq=2).to_list() == ["a"]
  assert Vocab.build(texts, "word", max_size=100).to_list() == vocab.to_list()


def test_char_vocab_keeps_sorted_order_under_limits():
  texts = ["zzza", "zyb"]
  assert Vocab.build(texts).to_list() == ["a", "b", "y", "z"]  # as before: sorted, all
  assert Vocab.build(texts, "char", max_size=2).to_list() == ["a", "z"]  # z:4, then a < b < y
  assert Vocab.build(texts, "char", min_freq=2).to_list() == ["z"]


def test_unknown_words_map_to_unk_and_decode_as_unk():
  vocab = Vocab.build(["the cat sat.", "the dog sat."], "word")
  ids = vocab.encode("the zebra sat.")
  assert ids[1] == UNK_ID and UNK_ID not in ids[:1] + ids[2:]
  assert vocab.unknown_tokens("the zebra sat on a mat.") == {"zebra", "on", "a", "mat"}
  assert vocab.decode(ids + [END_ID] + vocab.encode("cat")) == "the <unk> sat."
  chars = Vocab.build(["abc"])
  assert chars.decode(chars.encode("axc")) == "a\ufffdc"  # character level: as before


def test_saved_vocab_round_trips_with_its_level():
  words = Vocab.build(["l'homme est là."], "word")
  again = Vocab.from_list(words.to_list(), "word")
  assert again == words and again.level == "word"
  assert Vocab.from_list(words.to_list()) != words  # the level is part of the vocabulary
  assert Vocab.from_list(Vocab.build(["abc"]).to_list()).level == "char"  # old lists


def test_lengths_count_tokens_at_word_level():
  pairs = [("one two three", "un deux"), ("one two three four", "un")]
  assert data_lib.drop_long(pairs, tiny_config(tokenizer="word", max_source_len=3,
                                                max_target_len=3), "train") == pairs[:1]
  assert data_lib.drop_long(pairs, tiny_config(max_source_len=3, max_target_len=3), "train") == []
  src, tgt = data_lib.build_vocabs(pairs, "word")
  encoded = data_lib.encode_pairs(pairs, src, tgt)
  assert encoded.src_len_N.tolist() == [3, 4] and encoded.tgt_len_N.tolist() == [3, 2]


@pytest.mark.parametrize("item, message", [
    ("tokenizer=bpe", "must be one of char, word"),
    ("max_vocab_size=-1", "must not be negative"),
    ("min_token_freq=0", "must be positive"),
])
def test_bad_tokenizer_settings_are_clear_errors(item, message):
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), [item])


def test_word_tokenizer_with_keras_compat_is_refused():
  with pytest.raises(UserError, match="keras_compat.*tokenizer=char"):
    config_lib.apply_overrides(config_lib.Config(), ["tokenizer=word", "keras_compat=true",
                                                     "bucket_width=0"])


def test_old_config_without_tokenizer_keys_loads_and_resumes(tmp_path):
  old = {k: v for k, v in tiny_config().to_dict().items() if k not in NEW_KEYS}
  config = config_lib.from_dict(old, "an old config.json")
  assert (config.tokenizer, config.max_vocab_size, config.min_token_freq) == ("char", 0, 1)
  (tmp_path / "config.json").write_text(json.dumps(old))
  check_workdir_config(str(tmp_path), tiny_config())  # same run: resumable
  with pytest.raises(Exception, match="tokenizer: 'char' -> 'word'"):
    check_workdir_config(str(tmp_path), tiny_config(tokenizer="word"))


@pytest.mark.slow
def test_old_char_checkpoint_without_tokenizer_loads(tmp_path, monkeypatch):
  """A checkpoint written before word tokens existed: no `tokenizer` anywhere."""
  original_meta = CheckpointMeta.to_json

  def old_meta(meta):
    value = original_meta(meta)
    value.pop("tokenizer")
    value["config"] = {k: v for k, v in value["config"].items() if k not in NEW_KEYS}
    return value

  monkeypatch.setattr(CheckpointMeta, "to_json", old_meta)
  config = tiny_config(numbers_train=64, batch_size=32)
  workdir = str(tmp_path / "old")
  with pytest.raises(TrainingInterrupted):
    train_and_evaluate(config, workdir, progress=False, stop_after_step=1)
  monkeypatch.undo()
  task, params, step = load_trained(workdir, "latest")
  assert step == 1 and task.src_vocab.level == task.tgt_vocab.level == "char"
  rebuilt, _, _, _ = load_run_data(config)
  assert task.src_vocab == rebuilt.src_vocab and task.tgt_vocab == rebuilt.tgt_vocab
  assert task.translate(params, ["twelve"]) == rebuilt.translate(params, ["twelve"])


@pytest.mark.slow
def test_word_model_trains_saves_and_translates_identically(tmp_path):
  config = tiny_config(tokenizer="word", max_vocab_size=20, num_epochs=1, numbers_train=96,
                       bucket_width=0, max_source_len=12, max_target_len=12)
  workdir = str(tmp_path / "words")
  train_and_evaluate(config, workdir, progress=False)
  task, params, _ = load_trained(workdir)
  rebuilt, _, _, test_pairs = load_run_data(config)
  assert task.src_vocab.level == task.tgt_vocab.level == "word"
  assert task.src_vocab == rebuilt.src_vocab and task.tgt_vocab == rebuilt.tgt_vocab
  assert len(task.src_vocab) == len(SPECIAL_TOKENS) + 20
  with open(os.path.join(workdir, "vocab.json")) as f:
    assert json.load(f)["tokenizer"] == "word"
  # evaluate from the workdir alone reproduces the run's own final test metrics
  metrics, hypotheses = evaluate_pairs(task, params, test_pairs)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert metrics == {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("test/")}
  assert hypotheses == task.translate(params, [s for s, _ in test_pairs])
  # an unknown word is read as <unk>, named in the warnings, and still translated
  sources = ["two hundred and zillion", "seven"]
  assert "zillion" in task.src_vocab.unknown_tokens(sources[0])
  assert any("'zillion'" in w and "words" in w for w in task.input_warnings(sources))
  outputs = task.translate(params, sources)
  assert len(outputs) == 2 and outputs[1] == task.translate(params, ["seven"])[0]

"""Tokenizers and vocabularies: characters, words and subwords, limits, unknowns, saved levels."""

import dataclasses
import json
import os

import unicodedata

import numpy as np
import pytest

from seq2seq_jax import config as config_lib
from seq2seq_jax import data as data_lib
from seq2seq_jax.errors import UserError
from seq2seq_jax.inference import evaluate_pairs, load_run_data, load_trained
from seq2seq_jax.loop import TrainingInterrupted, train_and_evaluate
from seq2seq_jax.workdir import CheckpointMeta, check_workdir_config
from seq2seq_jax.vocab import (END_ID, HYPHEN_JOINER, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID,
                               WORD_RULES, word_rules_of,
                               Vocab, detokenize, input_warnings, train_sentencepiece,
                               word_tokenize)
from tests.conftest import cli_in_process, tiny_config, write_tsv

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
OTHER_SCRIPTS = [  # the word tokenizer's round trip: their punctuation spaced as they write it
    "„Hallo“, sagte er, ‚ja‘.",                  # German quotes
    "„Tak” i “Hello”.",                          # Polish quotes, then English ones
    "नमस्ते दुनिया। आप कैसे हैं?",                 # Hindi danda
    "مرحبا، كيف حالك؟",                         # Arabic comma and question mark
    "你好，世界。我是学生！「今天」（星期一）",  # Chinese fullwidth punctuation: no spaces
    "東京は、日本の首都です。",
    "他说「你好」。中文（注释）很好。私は「はい」と言った。",  # opening brackets after a word
]


@pytest.mark.parametrize("text", ORDINARY + OTHER_SCRIPTS)
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


@pytest.mark.parametrize("text, words", [
    # accents written as combining marks (NFD text) stay in their word
    (unicodedata.normalize("NFD", "Été à Noël, l'été-là"),
     ["Été", "à", "Noël", ",", "l'", "été", HYPHEN_JOINER, "là"]),
    ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),          # Indic vowel signs and viramas
    ("क्षत्रिय-राज", ["क्षत्रिय", HYPHEN_JOINER, "राज"]),
    ("می\u200cخواهم", ["می\u200cخواهم"]),        # Persian zero-width non-joiner inside a word
    # an emoji with its skin tone, a ZWJ family, a flag, a heart with its variation selector
    ("ok 👍🏽 👨\u200d👩\u200d👧 🇫🇷🇩🇪 ❤\ufe0f!",
     ["ok", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "🇩🇪", "❤\ufe0f", "!"]),
])
def test_word_tokens_keep_combining_marks_and_emoji_sequences_whole(text, words):
  """A word model can only match a target whose words come back whole: no token is a
  lone accent, vowel sign, joiner or skin tone, and the text is rebuilt exactly."""
  tokens = word_tokenize(text)
  assert [unicodedata.normalize("NFC", t) for t in tokens] == [
      unicodedata.normalize("NFC", w) for w in words]
  assert "".join(tokens).replace(HYPHEN_JOINER, "-") == "".join(text.split())


def test_a_word_vocabulary_saved_before_the_new_rules_keeps_translating_as_it_was_trained():
  """Checkpoints and exports record the word rules of their vocabulary; one saved before
  (no word_rules) was built with accents and joiners split off, and keeps reading text so:
  under the new rules its words would all be unknown."""
  text = unicodedata.normalize("NFD", "Été")
  legacy = Vocab(["E", "\u0301", "te"], level="word", word_rules=1)
  assert legacy.tokenize(text) == ["E", "\u0301", "te", "\u0301"]
  assert UNK_ID not in legacy.encode(text)
  assert Vocab([text], level="word").tokenize(text) == [text]  # the rules of new runs
  old_meta = CheckpointMeta.from_json({"config": {}, "src_vocab": ["E"], "tgt_vocab": ["E"],
                                       "tokenizer": "word"})
  assert old_meta.word_rules is None and word_rules_of(old_meta.word_rules, "x") == 1
  with pytest.raises(UserError, match="built with word rules 3, which this seq2seq_jax does "
                                      "not know .*: upgrade seq2seq_jax"):
    word_rules_of(3, "checkpoint 5")
  from seq2seq_jax.exported import ExportedTranslator  # an export's vocab.json alike
  manifest = {"settings": {"max_source_len": 10, "bucket_width": 0, "source_lowercase": False},
              "decode_max_len": 5, "beam_sizes": [], "platforms": ["cpu"],
              "checkpoint": {"step": 1}}
  words = {"tokenizer": "word", "src": ["E", "\u0301", "te"], "tgt": ["x"]}
  assert ExportedTranslator(manifest, words, {}, {}).src_vocab.tokenize(text) == [
      "E", "\u0301", "te", "\u0301"]
  assert ExportedTranslator(manifest, dict(words, word_rules=2), {}, {}).src_vocab.word_rules == 2
  new_meta = CheckpointMeta(config={}, src_vocab=[], tgt_vocab=[], tokenizer="word",
                            word_rules=WORD_RULES)
  assert CheckpointMeta.from_json(new_meta.to_json()).word_rules == WORD_RULES == 2


def test_a_word_vocabulary_restored_from_a_checkpoint_keeps_its_word_rules():
  """load_trained rebuilds the source vocabulary with Vocab.from_list and the rules its
  checkpoint names (none saved: rules 1): the rules were dropped, and a checkpoint saved
  before them read its source text with the new rules, such words all unknown."""
  text = unicodedata.normalize("NFD", "Été")
  restored = Vocab.from_list(["E", "\u0301", "te"], "word", word_rules=word_rules_of(None, "x"))
  assert restored.word_rules == 1 and UNK_ID not in restored.encode(text)
  assert restored == Vocab(["E", "\u0301", "te"], level="word", word_rules=1)


def test_a_saved_word_rules_of_true_is_refused_not_read_as_rules_1():
  """A checkpoint or export whose "word_rules" is true (not a number of rules) is refused,
  naming it: True == 1 in Python, and it was read as rules 1 without a word."""
  for value in (True, False):
    with pytest.raises(UserError, match=f"built with word rules {value}, which this"):
      word_rules_of(value, "checkpoint 5")


def test_a_word_run_saved_before_the_new_rules_says_why_it_cannot_resume(tmp_path, monkeypatch):
  """Its checkpoint (no word_rules) holds the vocabulary of the old rules; text with
  accents written apart now gives other words, and the refusal names that, not the data."""
  from seq2seq_jax.errors import CheckpointError
  from seq2seq_jax.inference import Translator
  nfd = lambda text: unicodedata.normalize("NFD", text)
  pairs = [(nfd(f"été {n}"), nfd(f"summer {n}")) for n in range(40)]
  config = tiny_config(data=f"tsv:{write_tsv(tmp_path / 'nfd.tsv', pairs)}", tokenizer="word",
                       num_epochs=2, checkpoint_every_steps=1, val_fraction=0.1,
                       test_fraction=0.1, bucket_width=0)
  workdir = str(tmp_path / "old")
  written = Translator.checkpoint_meta
  monkeypatch.setattr(Translator, "checkpoint_meta",  # as the code before word_rules wrote it
                      lambda self, *a, **k: dataclasses.replace(written(self, *a, **k),
                                                                word_rules=None))
  from seq2seq_jax import vocab as vocab_lib  # the old rules, and no word_rules saved
  monkeypatch.setattr(vocab_lib.tokenize, "__defaults__", (1,))
  monkeypatch.setattr(Vocab.__init__, "__defaults__", ("", "char", None, 1))
  with pytest.raises(TrainingInterrupted):
    train_and_evaluate(config, workdir, progress=False, stop_after_step=1)
  monkeypatch.undo()
  with pytest.raises(CheckpointError, match="the data changed, or .*tokenizer=word before "
                                            "2026-12-06.*new --workdir"):
    train_and_evaluate(config, workdir, progress=False)


@pytest.mark.parametrize("text, comes_back", [
    ("Va !", "Va!"),                       # French space before ! (often a no-break space)
    ("Quoi\u202f?", "Quoi?"),
    ("a  b ", "a b"),                      # runs of spaces and trailing space
    ("and/or", "and / or"),                # symbols not listed as punctuation
    ("i.e. this", "i. e. this"),           # abbreviations
    ("« Oui »", "«Oui»"),                  # French guillemets with inner spaces
    ("the dogs' bone", "the dogs ' bone"),  # a lone apostrophe, not an elision: spaced
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


def test_a_vocabulary_does_not_depend_on_the_order_of_its_training_lines():
  """Equally frequent tokens are ordered by the token: they came in the order first seen,
  so the same pairs shuffled (another seed, a reordered file) gave other ids, and under
  max_vocab_size other tokens."""
  lines = ["zebra apple", "mango kiwi", "apple zebra"]
  assert Vocab.build(lines, "word").to_list() == ["apple", "zebra", "kiwi", "mango"]
  for level in ("word", "char"):
    assert Vocab.build(lines, level, max_size=3) == Vocab.build(lines[::-1], level, max_size=3)


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
  src, tgt = data_lib.build_vocabs(pairs, tiny_config(tokenizer="word"))
  encoded = data_lib.encode_pairs(pairs, src, tgt)
  assert encoded.src_len_N.tolist() == [3, 4] and encoded.tgt_len_N.tolist() == [3, 2]


@pytest.mark.parametrize("item, message", [
    ("tokenizer=bpe", "must be one of char, word, sentencepiece"),
    ("sentencepiece_model=wordpiece", "must be one of unigram, bpe"),
    ("vocab_size=4", "more than the 4 special tokens"),
    ("max_vocab_size=-1", "must not be negative"),
    ("min_token_freq=0", "must be positive"),
])
def test_bad_tokenizer_settings_are_clear_errors(item, message):
  with pytest.raises(UserError, match=message):
    config_lib.apply_overrides(config_lib.Config(), [item])


@pytest.mark.parametrize("tokenizer", ["word", "sentencepiece"])
def test_word_tokenizer_with_keras_compat_is_refused(tokenizer):
  with pytest.raises(UserError, match="keras_compat.*tokenizer=char"):
    config_lib.apply_overrides(config_lib.Config(), [f"tokenizer={tokenizer}", "keras_compat=true",
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
  with open(os.path.join(workdir, "vocab.json")) as f:  # with the rules that read its words
    saved = json.load(f)
  assert saved["tokenizer"] == "word" and saved["word_rules"] == WORD_RULES
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


# --- sentencepiece ------------------------------------------------------------------

EXACT = ["Va !", "« Oui »", "l'homme", "C++", "and/or", "Ça va, Zoë ? Très bien, merci !",
         "  deux  espaces ", "Qu’est-ce que c’est ?", "i.e. this", "3.50 €"]


@pytest.fixture(scope="module")
def subwords() -> Vocab:
  return Vocab.from_sentencepiece(train_sentencepiece(EXACT * 3 + ORDINARY, 120, seed=0))


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trips_text_exactly(model_type):
  vocab = Vocab.from_sentencepiece(train_sentencepiece(EXACT + ORDINARY, 100, model_type))
  assert vocab.level == "sentencepiece" and len(vocab) == vocab.processor.get_piece_size()
  assert vocab.tokens[:4] == list(SPECIAL_TOKENS)
  for text in EXACT + ORDINARY:
    ids = vocab.encode(text)
    assert UNK_ID not in ids and len(ids) == len(vocab.tokenize(text))
    assert vocab.decode(ids) == text  # "Va !" keeps its space, "« Oui »" its inner ones
    assert vocab.decode([START_ID] + ids + [END_ID, 7, 8]) == text  # start skipped, stops at end
    assert vocab.decode(ids + [PAD_ID, PAD_ID]) == text


def test_pairs_are_measured_by_the_model_s_own_word_rules():
  """evaluate keeps the pairs a model reads whole: an old model's words are more tokens."""
  config = tiny_config(tokenizer="word", max_source_len=5, max_target_len=5)
  pairs = [("नमस्ते दुनिया", "x")]  # 2 words, 10 tokens under the old rules
  vocabs = lambda rules: tuple(Vocab([], level="word", word_rules=rules) for _ in range(2))
  assert data_lib.drop_long(pairs, config, "test", vocabs(2)) == pairs
  assert data_lib.drop_long(pairs, config, "test", vocabs(1)) == []


def test_unknown_words_are_named_readably_and_nfd_text_is_hinted_at():
  vocab = Vocab(["नमस्ते"], level="word")
  [warning] = input_warnings(vocab, ["नमस्ते दुनिया"], None)
  assert "'दुनिया'" in warning and "NFD" not in warning  # a word with vowel signs, as written
  [warning] = input_warnings(vocab, [unicodedata.normalize("NFD", "été")], None)
  assert "is the text NFD? Normalise it to NFC" in warning
  chars = Vocab(list("abcdefghijklmnopqrstuvwxyz"))
  [warning] = input_warnings(chars, ["cafe\u0301 x\u200d"], None)
  assert "'\\u0301' '\\u200d'" in warning and "NFD" in warning  # hidden ones escaped
  # the other way round: a model trained on NFD text, given NFC input, had no hint
  trained_nfd = Vocab(list(unicodedata.normalize("NFD", "café")))
  [warning] = input_warnings(trained_nfd, ["café"], None)
  assert warning.endswith("'é' (the model was trained on accents written apart from their "
                          "letters, NFD text: retrain on NFC text, as docs/data.md says, or give "
                          "it NFD input)")
  [warning] = input_warnings(trained_nfd, ["cafè"], None)  # è was never seen in any form
  assert "NFD" not in warning


def test_sentencepiece_s_space_mark_in_text_is_warned_of(caplog):
  """SentencePiece reads U+2581 as a space: text holding it comes back with a space there,
  which no message said."""
  import logging
  with caplog.at_level(logging.WARNING, logger="seq2seq_jax"):
    vocab = Vocab.from_sentencepiece(train_sentencepiece(["blanc\u2581chat noir", "abc"] * 20, 30))
  assert "warning: 20 text(s) of the training text hold '\u2581' (U+2581" in caplog.text
  assert vocab.decode(vocab.encode("chat\u2581noir")) == "chat noir"
  assert input_warnings(vocab, ["chat\u2581noir", "abc"], None) == [
      "1 input(s) hold '\u2581' (U+2581, SentencePiece's mark of a space), which "
      "tokenizer=sentencepiece reads as a space: it comes back as one"]


def test_sentencepiece_training_is_seeded_and_byte_identical():
  texts = [t.lower() for t in EXACT + ORDINARY] * 2
  first = train_sentencepiece(texts, 90, "unigram", seed=3)
  assert train_sentencepiece(list(texts), 90, "unigram", seed=3) == first
  assert train_sentencepiece(texts, 90, "bpe", seed=3) == train_sentencepiece(texts, 90, "bpe", seed=3)
  assert Vocab.from_sentencepiece(first) == Vocab.from_sentencepiece(first)
  assert Vocab.from_sentencepiece(first) != Vocab.from_sentencepiece(
      train_sentencepiece(texts, 90, "bpe", seed=3))


def test_sentencepiece_unknowns_read_as_replacement_characters(subwords):
  assert subwords.unknown_tokens("Va ! Zut ~") >= {"~"}
  assert not subwords.unknown_tokens("Va !")
  assert subwords.decode(subwords.encode("Va ~ !")) == "Va \ufffd !"
  assert subwords.decode([UNK_ID]) == "\ufffd"
  warnings = input_warnings(subwords, ["Va ~", "Va ! " * 20], max_source_len=8)
  assert warnings[0] == "characters never seen in training (read as unknown): '~'"
  assert warnings[1] == "1 input(s) longer than max_source_len=8 subword tokens were truncated"


def test_an_input_of_exactly_max_source_len_tokens_is_not_said_to_be_truncated():
  """Inputs up to max_source_len tokens are read whole: one of exactly that length was
  warned of as truncated."""
  vocab = Vocab(list("abc"))
  assert input_warnings(vocab, ["abc", "ab"], max_source_len=3) == []
  assert input_warnings(vocab, ["abca", "abc"], max_source_len=3) == [
      "1 input(s) longer than max_source_len=3 characters were truncated"]


def test_an_input_of_another_script_names_its_first_unknown_characters_and_counts_the_rest():
  """A page of CJK text to a Latin-script model: a warning of one line, not of pages."""
  vocab = Vocab(list("abc "))
  cjk = "".join(chr(0x4E00 + i) for i in range(500))
  [warning] = input_warnings(vocab, [cjk, "abc"], max_source_len=None)
  assert warning == ("characters never seen in training (read as unknown): "
                     + " ".join(repr(c) for c in cjk[:20]) + " and 480 more")


def test_sentencepiece_vocab_rebuilds_from_its_bytes_and_pickles(subwords):
  import pickle
  again = Vocab.from_sentencepiece(subwords.model_proto)
  assert again == subwords and again.tokens == subwords.tokens
  assert pickle.loads(pickle.dumps(subwords)) == subwords
  assert pickle.loads(pickle.dumps(subwords)).encode("Va !") == subwords.encode("Va !")
  assert Vocab(subwords.chars, level="word") != subwords  # the model is the vocabulary
  with pytest.raises(ValueError, match="trained"):
    Vocab.build(["abc"], "sentencepiece")


def test_sentencepiece_vocab_size_too_big_is_lowered_too_small_is_an_error(caplog):
  with caplog.at_level("WARNING", logger="seq2seq_jax.vocab"):
    vocab = Vocab.from_sentencepiece(train_sentencepiece(["ab ba", "abba"], 4000))
  assert len(vocab) < 4000
  assert f"vocab_size=4000 is more than the training text allows: the vocabulary has {len(vocab)} pieces" in caplog.text
  with pytest.raises(UserError, match=r"vocab_size=6 is below the \d+ pieces.*set vocab_size=\d+ or more"):
    train_sentencepiece(["abcdefgh"], 6)


def test_sentencepiece_vocabularies_come_from_the_training_split_only(tmp_path):
  # split_mode=last: the first 8 pairs train; "ß" and "ñ" appear in the held-out tail only
  pairs = [(f"strasse {i}", f"manana {i}") for i in range(8)] + [("straße", "mañana")] * 2
  config = tiny_config(data="tsv:" + write_tsv(tmp_path / "p.tsv", pairs), split_mode="last",
                       val_fraction=0.1, test_fraction=0.1, tokenizer="sentencepiece",
                       vocab_size=40)
  translator, train, val, test = load_run_data(config)
  assert len(train) == 8 and val == test == [pairs[-1]]
  assert translator.src_vocab.unknown_tokens("straße") == {"ß"}
  assert translator.tgt_vocab.unknown_tokens("mañana") == {"ñ"}
  assert "ß" not in "".join(translator.src_vocab.chars) and translator.src_vocab.encode("strasse")
  assert translator.src_vocab != translator.tgt_vocab
  joint, _, _, _ = load_run_data(dataclasses.replace(config, sentencepiece_joint=True))
  assert joint.src_vocab == joint.tgt_vocab  # one model, both sides
  assert not joint.src_vocab.unknown_tokens("strasse manana 7")


def test_sentencepiece_length_limits_count_subword_tokens():
  config = tiny_config(tokenizer="sentencepiece", vocab_size=200, max_source_len=3,
                       max_target_len=4)
  translator, train, val, test = load_run_data(config)
  src, tgt = translator.src_vocab, translator.tgt_vocab
  assert len(train) > 10 and val
  for s, t in train + val + test:
    assert len(src.encode(s)) <= 3 and len(tgt.encode(t)) <= 4
  assert max(len(s) for s, _ in train) > 3  # characters do not count
  # trained before the limits: pieces of sources dropped for length are in the vocabulary
  dropped = [s for s, _ in data_lib.load_splits(config).train if len(src.encode(s)) > 3]
  assert dropped and not src.unknown_tokens(dropped[0])
  with pytest.raises(ValueError, match="need the vocabularies"):
    data_lib.drop_long(train, config, "train")
  chars = tiny_config(max_source_len=3)
  assert data_lib.drop_long(train, chars, "train") == data_lib.drop_long(
      train, chars, "train", (Vocab.build(["x"]), Vocab.build(["y"])))  # characters as before


def test_checkpoint_meta_carries_the_sentencepiece_models(subwords):
  from seq2seq_jax import workdir as workdir_lib
  field = workdir_lib.sentencepiece_field(subwords.model_proto, b"target")
  meta = CheckpointMeta(config={}, src_vocab=subwords.to_list(), tgt_vocab=[],
                        tokenizer="sentencepiece", sentencepiece=field)
  value = json.loads(json.dumps(meta.to_json()))
  again = CheckpointMeta.from_json(value)
  assert again.sentencepiece == field and again.data_facts()["sentencepiece"] == field
  assert workdir_lib.sentencepiece_models(again.sentencepiece) == {
      "src": subwords.model_proto, "tgt": b"target"}
  plain = CheckpointMeta(config={}, src_vocab=["a"], tgt_vocab=["b"]).to_json()
  assert "sentencepiece" not in plain and CheckpointMeta.from_json(plain).sentencepiece is None
  assert "sentencepiece" not in CheckpointMeta.from_json(plain).data_facts()


@pytest.mark.slow
def test_sentencepiece_model_trains_and_translates_from_the_workdir_alone(tmp_path, capsys):
  config = tiny_config(tokenizer="sentencepiece", vocab_size=80, num_epochs=1, numbers_train=96,
                       max_source_len=12, max_target_len=12)
  workdir = str(tmp_path / "spm")
  with pytest.raises(TrainingInterrupted):
    train_and_evaluate(config, workdir, progress=False, stop_after_step=1)
  train_and_evaluate(config, workdir, progress=False)  # resumes: the retrained models match
  rebuilt, _, _, test_pairs = load_run_data(config)
  for side, vocab in (("src", rebuilt.src_vocab), ("tgt", rebuilt.tgt_vocab)):
    with open(os.path.join(workdir, f"sentencepiece.{side}.model"), "rb") as f:
      assert f.read() == vocab.model_proto
  with open(os.path.join(workdir, "vocab.json")) as f:
    assert json.load(f)["tokenizer"] == "sentencepiece"
  # the checkpoint alone: no data, no model files beside it
  for side in ("src", "tgt"):
    os.remove(os.path.join(workdir, f"sentencepiece.{side}.model"))
  task, params, _ = load_trained(workdir)
  assert task.src_vocab == rebuilt.src_vocab and task.tgt_vocab == rebuilt.tgt_vocab
  assert task.checkpoint_meta().sentencepiece is not None
  sources = [s for s, _ in test_pairs[:4]]
  expected = rebuilt.translate(params, sources)
  assert task.translate(params, sources) == expected
  code, out, _ = cli_in_process(capsys, "translate", "--workdir", workdir, *sources)
  assert code == 0 and out.splitlines() == expected
  # the export carries the models and translates the same
  from seq2seq_jax.export import export_workdir
  from seq2seq_jax.exported import ExportedTranslator
  out_dir = str(tmp_path / "export")
  export_workdir(workdir, out_dir, beam_sizes=(), platforms=("cpu",))
  assert os.path.isfile(os.path.join(out_dir, "sentencepiece.src.model"))
  exported = ExportedTranslator.load(out_dir)
  assert exported.src_vocab == task.src_vocab and exported.tgt_vocab == task.tgt_vocab
  assert exported.translate(sources) == expected


def test_translate_calls_name_a_callers_mistake():
  """Translator.translate and ExportedTranslator.translate share these checks: a str would
  be translated one character a sentence, a batch size below 1 gave [None] or ''."""
  from seq2seq_jax.vocab import check_texts
  check_texts(["a", ""], 4)
  check_texts(("a",), None, none_ok=True)
  with pytest.raises(TypeError, match=r"got a str: pass \[text\] for one"):
    check_texts("twelve", 4)
  with pytest.raises(TypeError, match="texts must be a list of strings, got list"):
    check_texts(["a", 1], 4)
  for bad in (0, -1, 2.0, True, None):
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1"):
      check_texts(["a"], bad)

"""data/sentences.py and split_sentences: long texts translated whole, sentence by sentence;
long training pairs turned into sentence pairs."""

import dataclasses

import pytest

from seq2seq_jax.config import Config
from seq2seq_jax.data import drop_long
from seq2seq_jax.data.sentences import join_pieces, pieces, split_long_pairs, split_sentences
from seq2seq_jax.inference import load_trained
from tests.conftest import cli_in_process


def test_sentences_end_at_stops_before_a_capital_or_digit_not_at_abbreviations_or_decimals():
  text = ('Choose Format - Cells. Click the Numbers tab! Enter e.g. 3.14 in the box. '
          'Is it SUMIF? "Yes." (See below.) 2 rows remain.')
  assert split_sentences(text) == [
      "Choose Format - Cells.", "Click the Numbers tab!", "Enter e.g. 3.14 in the box.",
      "Is it SUMIF?", '"Yes."', "(See below.)", "2 rows remain."]
  # French spaces before ? and !; a lower-case word after a stop is no new sentence
  assert split_sentences("Que faire ? Cliquez sur OK ! Voir la fig. 3 et cf. page 2.") == [
      "Que faire ?", "Cliquez sur OK !", "Voir la fig. 3 et cf. page 2."]
  assert split_sentences("Column A. Then OK.") == ["Column A. Then OK."]  # a lone letter
  assert split_sentences("  ") == [] and split_sentences("One") == ["One"]


def test_a_number_before_a_stop_ends_the_sentence():
  """A lone letter before a stop is an initial ("Column A."), a lone digit is not: "He won
  3. Then he left." was one sentence, too long for the model and cut."""
  assert split_sentences("He won 3. Then he left.") == ["He won 3.", "Then he left."]
  assert split_sentences("See step 2. It opens.") == ["See step 2.", "It opens."]


def test_a_text_of_many_abbreviations_is_read_once_not_once_per_abbreviation(monkeypatch):
  """Each candidate boundary looks at the last words before it, not at everything since
  the last cut: "A. A. A. ..." (in a request to serve, say) took quadratic time, about 14 s
  for 48 KB."""
  from seq2seq_jax.data import sentences
  read = []
  real = sentences._ends_in_abbreviation
  monkeypatch.setattr(sentences, "_ends_in_abbreviation", lambda text: read.append(len(text)) or real(text))
  assert split_sentences("A. " * 5000) == [("A. " * 5000).strip()]
  assert len(read) == 4999 and max(read) <= sentences._TAIL


def test_pieces_are_the_text_if_it_fits_else_whole_sentences_packed_in_order():
  fits = lambda text: len(text) <= 30
  assert pieces("Short. Text.", fits) == ["Short. Text."]
  text = "First one here. Second one. Third sentence is long, with a comma, and more words."
  got = pieces(text, fits)
  assert got == ["First one here. Second one.", "Third sentence is long,",
                 "with a comma, and more words."]
  assert all(fits(p) for p in got) and " ".join(got) == text
  # no comma: cut between words; one word longer than the limit stays whole
  assert pieces("aaaa bbbb cccc dddd", lambda t: len(t) <= 9) == ["aaaa bbbb", "cccc dddd"]
  assert pieces("abcdefghijkl", lambda t: len(t) <= 5) == ["abcdefghijkl"]
  # and the words around it are pieces of their own, not cut off with it
  assert pieces("aaaa bbbb abcdefghijkl cccc", lambda t: len(t) <= 9) == [
      "aaaa bbbb", "abcdefghijkl", "cccc"]


def test_scripts_without_capitals_end_sentences_at_their_own_stops():
  """Chinese and Japanese 。！？ (no space after), Hindi ।, Arabic ؟: a long text in them
  was never split, and was cut at the model's limit instead."""
  assert split_sentences("你好，世界。我是学生！「今天」（星期一）？好。") == [
      "你好，世界。", "我是学生！", "「今天」（星期一）？", "好。"]
  assert split_sentences("什么？！真的。") == ["什么？！", "真的。"]  # a run of stops is one end
  # closing brackets and quotes stay with their sentence, at its end too
  assert split_sentences("他说「你好。」") == ["他说「你好。」"]
  assert split_sentences("（注意！）") == ["（注意！）"]
  assert split_sentences('他说"你好。"然后走了。') == ['他说"你好。"', "然后走了。"]
  assert split_sentences("「本当？」と聞いた。") == ["「本当？」と聞いた。"]  # quoted speech goes on
  assert split_sentences("नमस्ते दुनिया। आप कैसे हैं? ठीक।") == [
      "नमस्ते दुनिया।", "आप कैसे हैं?", "ठीक।"]
  assert split_sentences("مرحبا؟ كيف حالك؟") == ["مرحبا؟", "كيف حالك؟"]
  clause = "你好，世界，老师，学生，朋友，谢谢，中国。"
  got = pieces(clause * 3, lambda t: len(t) <= 30)
  assert got == [clause] * 3  # the text's own spacing: none
  small = pieces(clause * 2, lambda t: len(t) <= 12)  # sentences cut at their commas
  assert small[0] == "你好，世界，老师，学生，" and "".join(small) == clause * 2
  assert all(len(piece) <= 12 for piece in small)
  # a sentence with no comma to cut at is cut between characters, not left whole for the
  # model to cut (which lost all of it after the limit)
  long = "我们今天下午在图书馆里学习中文和数学然后回家吃饭" * 2 + "。"
  small = pieces(long, lambda t: len(t) <= 10)
  assert "".join(small) == long and all(len(piece) <= 10 for piece in small) and len(small) == 5
  assert pieces("日本語 text 日本語", lambda t: len(t) <= 5) == ["日本語", "text", "日本語"]
  assert join_pieces(["你好。", "世界！", "Yes.", "No"], [4]) == ["你好。世界！Yes. No"]
  assert join_pieces(["你好，", "世界。"], [2]) == ["你好，世界。"]
  # a number's separators are no place to cut (a comma of text is, with a space after it)
  assert pieces("We paid 1,000,000 dollars", lambda t: len(t) <= 14) == [
      "We paid", "1,000,000", "dollars"]


def test_a_long_training_pair_gives_its_sentence_pairs_when_both_sides_have_as_many():
  fits = lambda s, t: len(s) <= 20 and len(t) <= 20
  pairs = [("Short.", "Court."),
           ("Open the menu. Click OK.", "Ouvrez le menu. Cliquez sur OK."),
           ("One. Two. Three long one.", "Un. Deux."),  # 3 sentences against 2: dropped
           ("A very long sentence without any stop", "Une phrase longue sans point final")]
  kept, split, added = split_long_pairs(pairs, fits)
  assert kept == [("Short.", "Court."), ("Open the menu.", "Ouvrez le menu."),
                  ("Click OK.", "Cliquez sur OK.")]
  assert (split, added) == (1, 2)
  kept, _, _ = split_long_pairs(pairs, fits, excluded_sources={"Click OK."})
  assert ("Click OK.", "Cliquez sur OK.") not in kept  # a held-out split's source


def test_split_sentences_keeps_every_held_out_pair_and_splits_long_training_pairs():
  pairs = [("ab. Cd.", "xy. Zw."), ("ef", "gh")]
  config = Config(max_source_len=4, max_target_len=4)
  assert drop_long(pairs, config, "test") == [("ef", "gh")]
  split = dataclasses.replace(config, split_sentences=True)
  assert drop_long(pairs, split, "test") == pairs
  assert drop_long(pairs, split, "train") == [("ab.", "xy."), ("Cd.", "Zw."), ("ef", "gh")]
  assert drop_long(pairs, split, "train", held_out_sources={"Cd."}) == [("ab.", "xy."), ("ef", "gh")]


@pytest.mark.slow
def test_a_text_longer_than_the_model_reads_is_translated_whole_by_sentences(
    trained_workdir, capsys):
  """The tiny model reads 40 characters: two sentences of 30 give the translations of each,
  joined by a space; without split_sentences the input is cut (and a warning says so)."""
  translator, params, _ = load_trained(trained_workdir)
  first, second = "nine hundred and ninety-nine.", "Eight hundred and eighty-eight."
  assert len(first) <= translator.source_width < len(f"{first} {second}")
  whole = translator.translate(params, [f"{first} {second}"], split_sentences=True)
  assert whole == [" ".join(translator.translate(params, [first, second]))]
  assert translator.translate(params, [f"{first} {second}"]) != whole  # cut at 40
  assert not any("truncated" in w for w in translator.input_warnings(
      [f"{first} {second}"], split_sentences=True))
  code, out, err = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                  "--split-sentences", f"{first} {second}")
  assert code == 0 and out == whole[0] + "\n" and "truncated" not in err
  code, out, err = cli_in_process(capsys, "translate", "--workdir", trained_workdir,
                                  f"{first} {second}")
  assert code == 0 and "truncated" in err
  # a word longer than the model reads is cut even in pieces: said, and the rest translated
  word = "x" * (translator.source_width + 5)
  [warning] = [w for w in translator.input_warnings([f"{first} {word} {second}"],
                                                    split_sentences=True) if "truncated" in w]
  assert warning.startswith("1 input piece(s) (split into sentences and words) longer than "
                            f"max_source_len={translator.source_width}")
  [out] = translator.translate(params, [f"{first} {word} {second}"], split_sentences=True)
  assert out.startswith(whole[0].split(" ")[0]) and out.endswith(whole[0].split(" ")[-1])

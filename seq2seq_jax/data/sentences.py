"""Sentence boundaries: long texts cut into pieces read whole, long pairs into sentence pairs.

`split_sentences` cuts a paragraph after a sentence's end (. ! ? … and what closes it:
quotes, brackets) where the next word starts like a sentence (a capital, a digit, an
opening quote or bracket); abbreviations (e.g., i.e., etc., Mr., a single letter) and
numbers (3.14) are no boundary. French spacing ("Quoi ?") is handled. Scripts without
capitals end a sentence at their own stops: Chinese and Japanese 。！？ (no space after
them), Hindi । ॥, Arabic ؟ and Urdu ۔ (then a space).

`pieces` packs a text's sentences, in order, into as few pieces as fit a length test
(a model's source limit in tokens): a sentence too long alone is cut at its last comma,
semicolon or colon (， ； ： 、 ، ؛ too) that fits, else between words (Chinese and
Japanese, written without spaces: between characters). The pieces keep
the text's own spacing. Joining the pieces' translations with a space (none after a
Chinese or Japanese stop) gives the text's translation (translate and evaluate
`--split-sentences`).

`split_long_pairs` turns a training pair over the length limits into its sentence pairs
when both sides have the same number of sentences (the usual case in translated help
text), so long paragraphs still teach the model.
"""

from __future__ import annotations

import re
from typing import Callable

from seq2seq_jax.vocab import FULLWIDTH_CLOSING

# A sentence ends at . ! ? … (runs of them), then maybe closing quotes or brackets, then
# whitespace; the next one begins with an opening quote/bracket, a capital or a digit.
# Or at a Chinese/Japanese stop (。！？, closing brackets, any spacing) before anything but
# another stop; or at a Hindi, Arabic or Urdu stop, then whitespace. Group "gap": the
# spacing between the two sentences.
_CJK_STOPS = "。！？"
_CJK_CLOSERS = "」』）》〉】〕”’\"'"
# Japanese quoted speech goes on after its closing bracket with a particle: 「本当？」と聞いた。
_KANA = "\u3041-\u309f"
_BOUNDARY_RE = re.compile(
    r"(?<=[.!?…])[\"'»”’)\]]*(?P<gap>\s+)(?=[\"'«“‘(\[¿¡]?[^\W\d_a-zà-ÿ]|[\"'«“‘(\[]?\d)"
    rf"|(?<=[{_CJK_STOPS}])(?:[{_CJK_CLOSERS}]+(?![{_KANA}{_CJK_CLOSERS}])|(?![{_CJK_CLOSERS}]))"
    rf"(?P<cjk_gap>\s*)(?=[^\s{_CJK_STOPS}…{_CJK_CLOSERS}])"
    r"|(?<=[।॥؟۔])[\"'»”’)\]]*(?P<caseless_gap>\s+)(?=\S)", re.UNICODE)
_GAPS = ("gap", "cjk_gap", "caseless_gap")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf approx no nr fig figs mr mrs ms dr st z.b bzw ggf usw vgl ca bspw "
    "p ex p.ex env resp".split())
# where a sentence too long alone may be cut: after a comma, semicolon or colon (the
# fullwidth and Arabic ones too), before the next word
_SOFT_BREAK_RE = re.compile(r"(?<=[,;:،؛])(?=\s+\S)|(?<=[，；：、])(?=\s*\S)")  # not in 1,000
# where a sentence too long for its commas is cut: between words, and between the
# characters of Chinese and Japanese (written without spaces between words)
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK_CHARS}]\s*|[^\s{_CJK_CHARS}]+\s*")


_TAIL = 100  # characters before a candidate boundary that hold its last word (abbreviations are short)


def _ends_in_abbreviation(text: str) -> bool:
  """The text before a candidate boundary ends in an abbreviation or a lone letter."""
  match = re.search(r"(\S+)[.]\s*$", text)
  if not match:
    return False
  word = match.group(1).lstrip("(\"'«“‘[").lower()
  return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _sentence_units(text: str) -> list[str]:
  """The sentences of text, in order, each with the spacing that follows it: their
  concatenation is text."""
  units, start = [], 0
  for match in _BOUNDARY_RE.finditer(text):
    gap = next(name for name in _GAPS if match.group(name) is not None)
    cut = match.start(gap)
    # the last word before the cut decides; only the tail is read, so that a text of
    # many abbreviations ("A. B. C. ...") takes linear time, not quadratic
    tail = text[max(start, cut - _TAIL):cut]
    # French puts a (narrow) space before ? ! : the mark belongs to this sentence
    if gap == "gap" and tail.rstrip().endswith(".") and _ends_in_abbreviation(tail):
      continue
    units.append(text[start:match.end(gap)])
    start = match.end(gap)
  units.append(text[start:])
  return units


def split_sentences(text: str) -> list[str]:
  """The sentences of a paragraph, in order, whitespace at the cuts dropped."""
  return [unit.strip() for unit in _sentence_units(text.strip()) if unit.strip()]


def _cut_to_fit(sentence: str, fits: Callable[[str], bool]) -> list[str]:
  """A sentence too long for `fits`: parts cut at commas, semicolons or colons where they
  all fit, else between words (Chinese and Japanese: between characters; a single word
  that does not fit stays whole: the model cuts it, and translate warns; the words around
  it are still translated)."""
  clauses = [u for u in _SOFT_BREAK_RE.split(sentence) if u]
  if len(clauses) > 1:
    parts = _pack(clauses, fits, lambda part: [part.strip()])
    if all(fits(p) for p in parts):
      return parts
  return _pack(_WORD_RE.findall(sentence), fits, lambda word: [word.strip()])


def _pack(units: list[str], fits: Callable[[str], bool],
          too_long: Callable[[str], list[str]]) -> list[str]:
  """Consecutive units (each with the spacing after it) put together into the fewest
  pieces that fit, in order, with the spacing between them as it was."""
  pieces: list[str] = []
  current = ""
  for unit in units:
    if not unit.strip():
      current += unit
      continue
    if fits((current + unit).strip()):
      current += unit
      continue
    if current.strip():
      pieces.append(current.strip())
    if fits(unit.strip()):
      current = unit
    else:
      pieces.extend(too_long(unit))
      current = ""
  if current.strip():
    pieces.append(current.strip())
  return pieces


def pieces(text: str, fits: Callable[[str], bool]) -> list[str]:
  """The text itself if it fits, else its sentences packed in order into the fewest
  pieces that fit (a sentence too long alone cut further, see `_cut_to_fit`)."""
  if fits(text) or not text.strip():
    return [text]
  return _pack(_sentence_units(text.strip()), fits, lambda s: _cut_to_fit(s.strip(), fits))


def flatten_pieces(texts: list[str], fits: Callable[[str], bool]) -> tuple[list[str], list[int]]:
  """(every text's pieces(text, fits) in order, how many each text has): what a translator
  decodes for texts translated in pieces; join_pieces puts the translations back together."""
  parts = [pieces(text, fits) for text in texts]
  return [piece for part in parts for piece in part], [len(part) for part in parts]


def join_pieces(outputs: list[str], counts: list[int]) -> list[str]:
  """Each text's translation: its pieces' translations joined by a space, none after a
  piece that ends in Chinese or Japanese punctuation (those scripts put no space there)."""
  joined, start = [], 0
  for count in counts:
    text = ""
    for output in outputs[start:start + count]:
      text += output if not text or text[-1] in FULLWIDTH_CLOSING else " " + output
    joined.append(text)
    start += count
  return joined


def split_long_pairs(pairs: list[tuple[str, str]], fits: Callable[[str, str], bool],
                     excluded_sources: set[str] = frozenset()
                     ) -> tuple[list[tuple[str, str]], int, int]:
  """Pairs that fit, as they are; a pair that does not: its sentence pairs (i-th source
  sentence with the i-th target sentence) that fit, when both sides have the same number
  of sentences, more than one. Sentence pairs whose source is in excluded_sources (a later
  split's) are left out. Returns (pairs, long pairs split, sentence pairs added)."""
  kept, split, added = [], 0, 0
  for source, target in pairs:
    if fits(source, target):
      kept.append((source, target))
      continue
    source_sentences, target_sentences = split_sentences(source), split_sentences(target)
    if len(source_sentences) < 2 or len(source_sentences) != len(target_sentences):
      continue
    new = [(s, t) for s, t in zip(source_sentences, target_sentences)
           if fits(s, t) and s not in excluded_sources]
    if new:
      split += 1
      added += len(new)
      kept.extend(new)
  return kept, split, added

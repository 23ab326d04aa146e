"""Character or word vocabularies with reserved pad / start / end / unknown ids.

Two tokenizers (config `tokenizer`):
  char  every character is a token (the Keras example's encoding).
  word  words and punctuation, by one regular expression, no lower-casing:
        - a word is a run of Unicode letters and digits ("naïve", "Straße", "42");
        - a number with inner separators stays whole ("3.14", "1,000", "10:30");
        - an apostrophe (' or ’) between two letters ends the word before it, French
          elision style: "l'homme" -> "l'" "homme", "don't" -> "don'" "t";
        - a hyphen between two letters or digits becomes the joiner token "@-@" (Moses'
          convention): "quatre-vingts" -> "quatre" "@-@" "vingts";
        - any other non-space character is a token of its own; whitespace separates.

`detokenize` joins tokens with spaces, then removes the space before closing punctuation
(. , ! ? ; : ) ] } » ” ’ % …), after opening punctuation (( [ { « “ ‘ ¿ ¡), around "@-@",
after an elided "l'", and inside straight double quotes (alternately opening and
closing). So detokenize(tokenize(s)) == s for ordinary sentences: single spaces, this
punctuation placed as in English. It is not exact where spacing carries no token:
  - runs of spaces, tabs, leading/trailing space and no-break spaces become one space or
    vanish; French spacing before ! ? ; : (e.g. "Va !", usually a no-break space) comes
    back as "Va!";
  - French guillemets lose their inner spaces ("« Oui »" -> "«Oui»");
  - abbreviations gain one ("i.e." -> "i. e."), and symbols not listed above get spaces
    around them ("and/or" -> "and / or", "$5" -> "$ 5", "C++" -> "C + +"), as do a lone
    apostrophe ("dogs' ") and a hyphen not between two letters or digits ("-5" -> "- 5").
Metrics always compare detokenized text with the raw reference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TOKENIZERS = ("char", "word")

# What an unknown id reads as in decoded text, per tokenizer.
UNK_TEXT = {"char": "\ufffd", "word": "<unk>"}
HYPHEN_JOINER = "@-@"
_WORD = r"[^\W_]"  # a Unicode letter or digit (\w without the underscore)
_TOKEN_RE = re.compile(
    rf"\d+(?:[.,:]\d+)+"                    # 3.14  1,000  10:30
    rf"|{_WORD}+(?:['’](?={_WORD}))?"       # a word, keeping an elision apostrophe: l'
    rf"|(?P<joiner>(?<={_WORD})-(?={_WORD}))"  # a hyphen inside a compound
    rf"|\S")                                # any other character: punctuation, symbols
_CLOSING = frozenset(".,!?;:)]}»”’%…")
_OPENING = frozenset("([{«“‘¿¡")
_ELISION = ("'", "’")


def word_tokenize(text: str) -> list[str]:
  """Words and punctuation of text (see the module docstring)."""
  return [HYPHEN_JOINER if m.group("joiner") else m.group() for m in _TOKEN_RE.finditer(text)]


def detokenize(tokens: Iterable[str]) -> str:
  """Text of word tokens: spaces between them except around punctuation (see above)."""
  out: list[str] = []
  glue_next = True  # no space before the first token
  quote_open = False
  for token in tokens:
    if token == HYPHEN_JOINER:
      out.append("-")
      glue_next = True
      continue
    closing_quote = token == '"' and quote_open
    if not (glue_next or token in _CLOSING or closing_quote):
      out.append(" ")
    out.append(token)
    if token == '"':
      quote_open = not quote_open
      glue_next = quote_open  # an opening quote sticks to what follows
    else:
      glue_next = token in _OPENING or (len(token) > 1 and token.endswith(_ELISION))
  return "".join(out)


def tokenize(text: str, level: str) -> list[str]:
  """Tokens of text at level "char" or "word"."""
  if level == "char":
    return list(text)
  if level == "word":
    return word_tokenize(text)
  raise ValueError(f"unknown tokenizer '{level}': use one of {', '.join(TOKENIZERS)}")


class Vocab:
  """Maps tokens (characters or words) to int ids and back; ids 0-3 are the special tokens."""

  def __init__(self, tokens: Sequence[str], start_text: str = "", level: str = "char"):
    """start_text: what a START id in an output reads as ("\t" for Keras-example models,
    whose vocabulary has the start marker as an ordinary, predictable character)."""
    tokens = list(tokens)
    if level not in TOKENIZERS:
      raise ValueError(f"unknown tokenizer '{level}': use one of {', '.join(TOKENIZERS)}")
    self.level = level
    self.start_text = start_text
    if len(set(tokens)) != len(tokens):
      raise ValueError("vocabulary tokens must be unique")
    self.tokens = list(SPECIAL_TOKENS) + tokens
    self._ids = {token: i + len(SPECIAL_TOKENS) for i, token in enumerate(tokens)}

  @classmethod
  def build(cls, texts: Iterable[str], level: str = "char", max_size: int = 0,
            min_freq: int = 1) -> "Vocab":
    """The tokens of texts seen at least min_freq times, the max_size most frequent
    (0 = all; ties broken by the token). Characters are then sorted, as the Keras example;
    words stay most frequent first."""
    counts: Counter[str] = Counter()
    for text in texts:
      counts.update(tokenize(text, level))
    kept = [token for token, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            if count >= min_freq]
    if max_size:
      kept = kept[:max_size]
    return cls(sorted(kept) if level == "char" else kept, level=level)

  @property
  def chars(self) -> list[str]:
    """The ordinary tokens (characters at character level), without the specials."""
    return self.tokens[len(SPECIAL_TOKENS):]

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and (self.tokens, self.level) == (other.tokens, other.level)

  def tokenize(self, text: str) -> list[str]:
    return tokenize(text, self.level)

  def encode(self, text: str) -> list[int]:
    """Token ids of text; unseen tokens map to UNK_ID."""
    return [self._ids.get(token, UNK_ID) for token in self.tokenize(text)]

  def unknown_tokens(self, text: str) -> set[str]:
    """Tokens of text that the vocabulary reads as unknown."""
    return {token for token in self.tokenize(text) if token not in self._ids}

  unknown_chars = unknown_tokens  # the name from character-only days

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids up to the first END_ID; pad is skipped, unknown ids read as
    U+FFFD (characters) or <unk> (words)."""
    out = []
    for i in np.asarray(list(ids)).tolist():
      if i == END_ID:
        break
      if i == UNK_ID:
        out.append(UNK_TEXT[self.level])
      elif i == START_ID:
        if self.start_text:
          out.append(self.start_text)
      elif i >= len(SPECIAL_TOKENS) and i < len(self.tokens):
        out.append(self.tokens[i])
    return "".join(out) if self.level == "char" else detokenize(out)

  def to_list(self) -> list[str]:
    return list(self.chars)

  @classmethod
  def from_list(cls, tokens: Sequence[str], level: str = "char") -> "Vocab":
    return cls(tokens, level=level)


def input_warnings(vocab: "Vocab", sources: list[str], max_source_len: int) -> list[str]:
  """What translating these (already lower-cased, where the model does) sources does
  silently: tokens never seen in training, and inputs cut at max_source_len."""
  unknown = sorted({token for s in sources for token in vocab.unknown_tokens(s)})
  unit = "characters" if vocab.level == "char" else "words"
  warnings = []
  if unknown:
    warnings.append(f"{unit} never seen in training (read as unknown): "
                    + " ".join(repr(token) for token in unknown))
  too_long = sum(len(vocab.tokenize(s)) > max_source_len for s in sources)
  if too_long:
    warnings.append(f"{too_long} input(s) longer than max_source_len={max_source_len} "
                    f"{unit} were truncated")
  return warnings

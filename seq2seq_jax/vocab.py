"""Character vocabularies with reserved pad / start / end / unknown ids."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


class Vocab:
  """Maps characters to int ids and back; ids 0-3 are the special tokens."""

  def __init__(self, chars: Sequence[str], start_text: str = ""):
    """start_text: what a START id in an output reads as ("\t" for Keras-example models,
    whose vocabulary has the start marker as an ordinary, predictable character)."""
    chars = list(chars)
    self.start_text = start_text
    if len(set(chars)) != len(chars):
      raise ValueError("vocabulary characters must be unique")
    self.tokens = list(SPECIAL_TOKENS) + chars
    self._ids = {ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(chars)}

  @classmethod
  def build(cls, texts: Iterable[str]) -> "Vocab":
    """A vocabulary of every character in texts, sorted (as the Keras example)."""
    chars: set[str] = set()
    for text in texts:
      chars.update(text)
    return cls(sorted(chars))

  @property
  def chars(self) -> list[str]:
    return self.tokens[len(SPECIAL_TOKENS):]

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocab) and self.tokens == other.tokens

  def encode(self, text: str) -> list[int]:
    """Character ids of text; unseen characters map to UNK_ID."""
    return [self._ids.get(ch, UNK_ID) for ch in text]

  def unknown_chars(self, text: str) -> set[str]:
    return {ch for ch in text if ch not in self._ids}

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids up to the first END_ID; pad and start are skipped."""
    out = []
    for i in np.asarray(list(ids)).tolist():
      if i == END_ID:
        break
      if i == UNK_ID:
        out.append("\ufffd")
      elif i == START_ID:
        out.append(self.start_text)
      elif i >= len(SPECIAL_TOKENS) and i < len(self.tokens):
        out.append(self.tokens[i])
    return "".join(out)

  def to_list(self) -> list[str]:
    return list(self.chars)

  @classmethod
  def from_list(cls, chars: Sequence[str]) -> "Vocab":
    return cls(chars)

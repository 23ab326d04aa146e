"""Text metrics of decoded outputs: exact match, CER, chrF and BLEU (sacrebleu)."""

from __future__ import annotations

import numpy as np


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (insertions, deletions, substitutions), one row at a time."""
  if len(a) < len(b):
    a, b = b, a
  if not b:
    return len(a)
  b_codes = np.array([ord(ch) for ch in b])
  row = np.arange(len(b) + 1)
  for i, ch in enumerate(a, start=1):
    substitute = row[:-1] + (b_codes != ord(ch))
    new = np.empty_like(row)
    new[0] = i
    np.minimum(substitute, row[1:] + 1, out=new[1:])
    # insertions run left to right: a cumulative min of (new[j-1] + 1)
    new = np.minimum.accumulate(new - np.arange(len(new))) + np.arange(len(new))
    row = new
  return int(row[-1])


def exact_match(hypotheses: list[str], references: list[str]) -> float:
  return float(np.mean([h == r for h, r in zip(hypotheses, references)])) if references else 0.0


def character_error_rate(hypotheses: list[str], references: list[str]) -> float:
  """Total edits over total reference characters."""
  edits = sum(edit_distance(h, r) for h, r in zip(hypotheses, references))
  return edits / max(1, sum(len(r) for r in references))


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
  import sacrebleu  # corpus-level chrF/BLEU as the field reports them
  return {
      "exact_match": exact_match(hypotheses, references),
      "cer": character_error_rate(hypotheses, references),
      "chrf": float(sacrebleu.corpus_chrf(hypotheses, [references]).score),
      "bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score),
  }

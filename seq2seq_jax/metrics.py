"""Text metrics of decoded outputs: exact match, CER, chrF and BLEU (sacrebleu)."""

from __future__ import annotations

import numpy as np


LOWER_IS_BETTER = ("loss", "cer", "mse", "mae")  # errors; every other metric is a score


def lower_is_better(metric: str) -> bool:
  """Is a smaller value of this metric ("val/cer", "test/loss", "loss") the better one?"""
  return metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER


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


def _sacrebleu_metrics() -> dict:
  """chrF and BLEU as sacrebleu.corpus_chrf / corpus_bleu build them by default."""
  from sacrebleu.metrics import BLEU, CHRF  # corpus-level chrF/BLEU as the field reports them
  return {"chrf": CHRF(), "bleu": BLEU()}


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
  scores = {"exact_match": exact_match(hypotheses, references),
            "cer": character_error_rate(hypotheses, references)}
  for name, metric in _sacrebleu_metrics().items():  # sacrebleu refuses an empty corpus
    score = float(metric.corpus_score(hypotheses, [references]).score) if references else 0.0
    # at most 100, which sacrebleu's exp(mean log precision) can pass by a rounding error
    # (100.00000000000004 for a perfect corpus)
    scores[name] = min(score, 100.0)
  return scores


def sacrebleu_signatures() -> dict[str, str]:
  """sacrebleu's signatures of text_metrics' BLEU and chrF, as sacrebleu prints them
  (e.g. nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0). They name the
  settings, the one reference per output and sacrebleu's version, never the text: a
  signature is only known once its metric has scored, so each scores one sentence."""
  signatures = {}
  for name, metric in _sacrebleu_metrics().items():
    metric.corpus_score(["a"], [["a"]])
    signatures[name] = metric.get_signature().format()
  return signatures

"""metrics.py and a run's running totals: CER is edits over the references' characters,
chrF and BLEU score the hypotheses against the references (sacrebleu's corpus scores), and
token accuracy is over real tokens."""

import pytest
import sacrebleu

from seq2seq_jax.metrics import text_metrics
from seq2seq_jax.workdir import Totals


def test_cer_is_edits_over_the_references_characters():
  assert text_metrics(["ab"], ["abcd"])["cer"] == 0.5  # 2 deletions in 4 characters
  assert text_metrics(["abcd"], ["ab"])["cer"] == 1.0  # 2 insertions in 2


def test_chrf_and_bleu_score_the_hypotheses_against_the_references():
  """Not the other way round (both are asymmetric)."""
  hypotheses = ["le chat est sur le tapis", "bonjour"]
  references = ["le chat noir est sur le tapis rouge", "bonjour à tous"]
  scores = text_metrics(hypotheses, references)
  assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
  assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
  assert scores["chrf"] != pytest.approx(text_metrics(references, hypotheses)["chrf"])


def test_token_accuracy_is_correct_over_real_tokens_and_loss_over_its_weight():
  """With loss_on_padding the loss's weight counts padding; accuracy never does."""
  totals = Totals()
  totals.add({"loss_sum": 2.0, "weight": 10.0, "correct": 3.0, "tokens": 4.0})
  assert (totals.loss, totals.token_accuracy) == (0.2, 0.75)

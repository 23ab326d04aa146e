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


def _levenshtein(a, b):
  """The textbook dynamic programme, for comparison."""
  previous = list(range(len(b) + 1))
  for i, ca in enumerate(a, start=1):
    current = [i]
    for j, cb in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3), ("sitting", "kitten", 3), ("flaw", "lawn", 2),
    ("intention", "execution", 5), ("abc", "abc", 0), ("ab", "ba", 2), ("", "", 0),
    ("", "abc", 3), ("abc", "", 3), ("a", "xxxaxxx", 6), ("vingt-deux", "vingt deux", 1),
])
def test_edit_distance_is_levenshteins(a, b, distance):
  """Insertions, deletions and substitutions each cost 1; matching characters cost nothing."""
  from seq2seq_jax.metrics import edit_distance
  assert edit_distance(a, b) == _levenshtein(a, b) == distance


def test_an_empty_output_has_every_reference_character_wrong():
  assert text_metrics([""], ["abc"])["cer"] == 1.0
  assert text_metrics(["", "ab"], ["abc", "ab"])["cer"] == 0.6  # 3 deletions in 5


def test_exact_match_is_the_share_of_outputs_equal_to_their_reference_character_for_character():
  """Case and spaces count: "Bonjour" is not "bonjour", nor "salut " "salut"."""
  scores = text_metrics(["Bonjour", "salut ", "merci", "oui"], ["bonjour", "salut", "merci", "non"])
  assert scores["exact_match"] == 0.25


def test_no_sentences_score_zero_rather_than_fail():
  """sacrebleu refuses an empty corpus, and CER would divide by 0 characters."""
  assert text_metrics([], []) == {"exact_match": 0.0, "cer": 0.0, "chrf": 0.0, "bleu": 0.0}


def test_chrf_and_bleu_are_sacrebleus_defaults_case_and_punctuation_included():
  """Mixed case and punctuation, scored as sacrebleu.corpus_chrf / corpus_bleu score them by
  default (case-sensitive, 13a tokenisation); a perfect corpus is 100, not a hair above."""
  hypotheses = ["Le Chat est sur le tapis.", "Bonjour, Marie !", "il pleut"]
  references = ["le chat est sur le tapis.", "Bonjour Marie !", "Il pleut beaucoup."]
  scores = text_metrics(hypotheses, references)
  assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
  assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
  perfect = text_metrics(references, references)
  assert (perfect["bleu"], perfect["chrf"], perfect["exact_match"], perfect["cer"]) == (
      100.0, 100.0, 1.0, 0.0)

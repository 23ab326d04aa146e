"""inference.py: a Translator reads its input as the model was trained (lower-cased where
it was), and evaluation scores the pairs it decoded against their own references."""

import jax
from num2words import num2words

from seq2seq_jax import model as model_lib
from seq2seq_jax.data import build_vocabs
from seq2seq_jax.inference import evaluate_pairs, make_translator
from seq2seq_jax.metrics import text_metrics
from tests.conftest import tiny_config


def _untrained_translator(**overrides):
  """(translator, its replicated parameters at initialisation, the 39 number pairs)."""
  pairs = [(num2words(n), num2words(n, lang="fr")) for n in range(1, 40)]
  config = tiny_config(**overrides)
  translator = make_translator(config, *build_vocabs(pairs, config))
  params = model_lib.init_params(translator.model, jax.random.key(1))
  return translator, translator.parallel.replicate(params), pairs


def test_a_decoded_subset_is_scored_against_its_own_references():
  """eval_decode_samples below the split's size: the first pairs are decoded and scored
  against their references (sacrebleu would cut a longer reference list silently)."""
  translator, params, pairs = _untrained_translator()
  metrics, hypotheses = evaluate_pairs(translator, params, pairs, decode_limit=3)
  assert len(hypotheses) == 3
  expected = text_metrics(hypotheses, [target for _, target in pairs[:3]])
  assert {name: metrics[name] for name in expected} == expected


def test_a_lower_cased_model_reads_its_input_lower_cased():
  translator, params, _ = _untrained_translator(source_lowercase=True)
  assert (translator.translate(params, ["TWENTY-ONE", "Seven"])
          == translator.translate(params, ["twenty-one", "seven"]))


def test_outputs_may_run_one_token_past_max_target_len_for_the_end_token():
  """A target of max_target_len characters is decoded with its </s>: the decoders run
  max_target_len + 1 steps (they ran max_target_len, so the longest targets never ended)."""
  translator, _, _ = _untrained_translator(max_target_len=7, decode_max_len=0)
  assert translator.decode_max_len == 8
  assert not translator.long_pairs([("one", "x" * 7)])[0]


def test_with_split_sentences_the_loss_is_over_the_pairs_within_the_limits_only():
  """split_sentences translates a long pair sentence by sentence, but the teacher-forced
  loss cannot read it whole: adding a pair over the limits leaves the loss as it was."""
  translator, params, pairs = _untrained_translator(split_sentences=True)
  long = ("one. two. three", "un " * translator.config.max_target_len)
  assert translator.long_pairs([long]) == [True]
  within, _ = evaluate_pairs(translator, params, pairs[:4], decode_limit=1)
  with_long, _ = evaluate_pairs(translator, params, pairs[:4] + [long], decode_limit=1)
  assert with_long["loss"] == within["loss"]

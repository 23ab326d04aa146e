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

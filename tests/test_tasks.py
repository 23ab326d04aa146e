"""The synthetic tasks (addition, echo, reverse): deterministic, disjoint splits, clear errors
for impossible sizes, and learnable."""

import pytest

from seq2seq_jax import data as data_lib
from seq2seq_jax.errors import DataError
from seq2seq_jax.inference import load_trained
from seq2seq_jax.loop import train_and_evaluate
from tests.conftest import tiny_config


def test_addition_pairs_are_sums_deterministic_and_disjoint():
  config = tiny_config(data="addition", task_train=300, task_val=50, task_test=50)
  splits = data_lib.load_splits(config)
  assert splits == data_lib.load_splits(config)
  for source, target in splits.train + splits.val + splits.test:
    a, b = map(int, source.split("+"))
    assert int(target) == a + b and a < 100 and b < 100
  sources = [{s for s, _ in part} for part in (splits.train, splits.val, splits.test)]
  assert len(sources[0]) == 300 and not (sources[0] & sources[1]) and not (sources[0] & sources[2])


@pytest.mark.parametrize("kind", ["echo", "reverse"])
def test_echo_and_reverse(kind):
  config = tiny_config(data=kind, task_train=200, task_val=20, task_test=20, task_min_len=2,
                       task_max_len=6, task_vocab_size=25)
  splits = data_lib.load_splits(config)
  for source, target in splits.train:
    values = source.split()
    assert 2 <= len(values) <= 6 and all(0 <= int(v) < 25 for v in values)
    assert target.split() == (values if kind == "echo" else values[::-1])
  other = data_lib.load_splits(tiny_config(data=kind, task_train=200, task_val=20, task_test=20,
                                           task_min_len=2, task_max_len=6, task_vocab_size=25,
                                           seed=1))
  assert other.train != splits.train


def test_task_lengths_span_task_min_len_to_task_max_len():
  """echo and reverse sources have task_min_len to task_max_len values, both included:
  none was task_max_len long, so a model never saw the longest inputs it was set up for."""
  config = tiny_config(data="echo", task_train=200, task_val=20, task_test=20, task_min_len=1,
                       task_max_len=3, task_vocab_size=25)
  splits = data_lib.load_splits(config)
  assert {len(s.split()) for s, _ in splits.train + splits.val + splits.test} == {1, 2, 3}


def test_task_validation_and_test_splits_have_the_sizes_asked_for():
  """task_val pairs validate and task_test pairs test: the two were swapped."""
  config = tiny_config(data="reverse", task_train=100, task_val=30, task_test=20,
                       task_min_len=2, task_max_len=6, task_vocab_size=25)
  splits = data_lib.load_splits(config)
  assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 30, 20)


def test_impossible_task_sizes_are_clear_errors():
  with pytest.raises(DataError, match="distinct pairs asked for"):
    data_lib.load_splits(tiny_config(data="addition", addition_digits=1, task_train=200))
  with pytest.raises(DataError, match="task_min_len"):
    data_lib.load_splits(tiny_config(data="echo", task_min_len=5, task_max_len=3))


@pytest.mark.slow
def test_repeat_gru_model_learns_echo(tmp_path):
  """The RepeatVector architecture, with GRU cells, end to end: train, restore, decode."""
  # about 750 steps on 1,200 pairs: test exact match 1.0 here, far from 0.9 (600 pairs x 30
  # epochs, 570 steps, ended between 0.88 and 0.96 by CPU and XLA flags)
  config = tiny_config(data="echo", task_train=1200, task_val=50, task_test=50, task_min_len=2,
                       task_max_len=4, task_vocab_size=6, decoder_input="repeat",
                       attention="none", cell="gru", latent_dim=64, batch_size=32,
                       num_epochs=20, learning_rate=1e-2, warmup_steps=20, max_source_len=8,
                       max_target_len=8, eval_every_epochs=20, checkpoint_every_epochs=20,
                       log_every_steps=1000)
  summary = train_and_evaluate(config, str(tmp_path / "echo"), progress=False)
  assert summary["test/exact_match"] >= 0.9
  task, params, _ = load_trained(str(tmp_path / "echo"))
  assert task.translate(params, ["1 2 3", "3 0"]) == ["1 2 3", "3 0"]

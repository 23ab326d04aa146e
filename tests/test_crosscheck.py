"""crosscheck.py: before a run trains, its devices' forward pass must equal the host CPU's
to rounding, or the run stops with one line and nothing is trained.

A device that computes another function is simulated here by the cuDNN code path on a CPU
(cudnn.py, its call replaced by jax.experimental.rnn.lstm_ref) given each row's length in
reverse row order: a fault of the kind suspected on the H200, where the default model
trained on cuDNN translated nothing. The same path with the lengths right passes, and so
does rounding every matmul to bfloat16 (what a TPU's default precision does).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import pytest

from seq2seq_jax import crosscheck, cudnn, loop
from seq2seq_jax import data as data_lib
from seq2seq_jax.checkpoint import Checkpointer
from seq2seq_jax.errors import UserError
from seq2seq_jax.inference import load_run_data, load_trained
from seq2seq_jax.model import build_model
from seq2seq_jax.optim import build_optimizer
from seq2seq_jax.steps import create_state
from tests.conftest import cli_in_process, tiny_config


@pytest.fixture
def lstm_through(monkeypatch):
  """lstm_through(fault): the run's LSTM layers take the cuDNN code path with lstm_ref as the
  call (with fault=True, each row reads another row's length); the host reference stays the
  scan. Returns the calls made."""
  calls = []
  resolve = cudnn.resolve_lstm_impl

  def install(fault: bool):
    def call(x, h_0, c_0, weights, seq_lengths, **kwargs):
      calls.append(kwargs["bidirectional"])
      lengths = seq_lengths[::-1] if fault else seq_lengths
      return cudnn.reference_lstm(x, h_0, c_0, weights, lengths, **kwargs)
    monkeypatch.setattr(cudnn, "lstm_call", call)
    monkeypatch.setattr(cudnn, "cuda_gpu", lambda: True)
    monkeypatch.setattr(cudnn, "resolve_lstm_impl", lambda requested, **kw:
                        "cudnn" if requested == "auto" else resolve(requested, **kw))
    return calls
  return install


def _fresh(config):
  translator, _, val_pairs, _ = load_run_data(config)
  params = create_state(config, translator.model, build_optimizer(config, 10))["params"]
  return translator, params, translator.encode(val_pairs)


def _check(translator, params, data):
  return crosscheck.before_training(translator, params, data, required=True)


def test_auto_checks_a_gpu_or_tpu_and_never_a_cpu():
  assert not crosscheck.wanted("auto", "cpu")
  assert crosscheck.wanted("auto", "gpu") and crosscheck.wanted("auto", "tpu")
  assert crosscheck.wanted("always", "cpu") and not crosscheck.wanted("never", "gpu")


def test_the_discrepancy_is_the_largest_difference_at_scored_positions_relative_to_the_largest_output():
  reference = np.array([[[2.0, -4.0], [1.0, 0.0]], [[9.0, 9.0], [0.5, 0.5]]])  # B=2, T=2, V=2
  scored = np.array([[True, True], [False, True]])
  outputs = reference + np.array([[[0.0, 0.2], [0.1, 0.0]], [[50.0, 0.0], [0.0, 0.0]]])
  assert crosscheck.discrepancy(outputs, reference, scored) == pytest.approx(0.2 / 4.0)
  outputs[1, 1, 0] = np.nan  # a scored NaN is never agreement
  assert crosscheck.discrepancy(outputs, reference, scored) == float("inf")
  assert crosscheck.discrepancy(outputs, reference, np.zeros_like(scored)) == 0.0


def test_the_batches_checked_are_the_shortest_and_the_longest_with_padding_rows():
  config = tiny_config(numbers_val=50)
  translator, _, data = _fresh(config)
  first, last = crosscheck.check_batches(data, 32, 16)
  assert (first["index"] >= 0).all() and (last["index"] < 0).sum() == 32 * 2 - 50
  assert first["src"].shape[1] <= last["src"].shape[1]
  assert crosscheck.check_batches(data_lib.encode_pairs([], translator.src_vocab,
                                                          translator.tgt_vocab), 32, 16) == []


def test_the_runs_forward_pass_equals_the_host_reference():
  translator, params, data = _fresh(tiny_config())
  assert _check(translator, params, data) < 1e-5


def test_the_cudnn_code_path_passes_and_a_layer_reading_other_rows_lengths_is_stopped(lstm_through):
  translator, params, data = _fresh(tiny_config(numbers_val=50))
  calls = lstm_through(fault=False)
  assert _check(translator, params, data) < 1e-5
  assert calls  # the run's forward pass went through the cuDNN code path
  lstm_through(fault=True)
  with pytest.raises(crosscheck.CrosscheckFailed) as error:
    _check(dataclasses.replace(translator), params, data)  # a fresh trace of its forward pass
  message = str(error.value)
  assert "\n" not in message and "CPU cross-check" in message and "cpu_crosscheck=never" in message
  assert "nothing was trained" in message


@pytest.mark.slow
def test_on_a_trained_model_bfloat16_rounding_passes_and_the_fault_stands_out(trained_workdir,
                                                                             lstm_through):
  """A run with bfloat16 matmul operands, checked against the model's float32 definition,
  stays under a fifth of the tolerance; the length fault is over twice it (a trained tiny
  model, its validation batches)."""
  translator, params, _ = load_trained(trained_workdir)
  _, _, val_pairs, _ = load_run_data(translator.config)
  batches = crosscheck.check_batches(translator.encode(val_pairs), 32, 16)
  bfloat16 = dataclasses.replace(translator, model=build_model(
      dataclasses.replace(translator.config, matmul_dtype="bfloat16"),
      len(translator.src_vocab), len(translator.tgt_vocab)))
  assert 0 < crosscheck.check_against_cpu(bfloat16, params, batches) < crosscheck.TOLERANCE / 5
  lstm_through(fault=True)
  faulty = dataclasses.replace(translator, model=build_model(
      translator.config, len(translator.src_vocab), len(translator.tgt_vocab)))
  with pytest.raises(crosscheck.CrosscheckFailed) as error:
    crosscheck.check_against_cpu(faulty, params, batches)
  largest = float(re.search(r"largest difference ([\d.e+-]+)", str(error.value)).group(1))
  assert largest > 2 * crosscheck.TOLERANCE


@pytest.mark.slow
def test_a_run_whose_device_disagrees_stops_before_training_with_one_line(tmp_path, capsys,
                                                                         lstm_through):
  """...and the same workdir then trains with the check off (auto on a CPU checks nothing)."""
  workdir = str(tmp_path / "run")
  lstm_through(fault=True)
  train = ("train", "--config", "configs/tiny.py", "--workdir", workdir, "--set",
           "numbers_train=64", "--set", "num_epochs=1", "--set")
  code, out, err = cli_in_process(capsys, *train, "cpu_crosscheck=always")
  assert code == 2
  [line] = err.strip().splitlines()
  assert "CPU cross-check" in line and "cpu_crosscheck=never" in line
  assert Checkpointer(workdir).latest_step() is None
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  code, out, err = cli_in_process(capsys, *train, "cpu_crosscheck=auto")
  assert code == 0 and "CPU cross-check" not in out + err
  assert os.path.exists(os.path.join(workdir, "results.json"))


def test_without_a_cpu_backend_a_required_check_stops_with_one_line(monkeypatch):
  translator, params, data = _fresh(tiny_config())
  monkeypatch.setattr(crosscheck, "host_cpu", lambda: None)  # as under JAX_PLATFORMS=cuda
  with pytest.raises(UserError, match="JAX_PLATFORMS") as error:
    crosscheck.before_training(translator, params, data, required=True)
  assert "\n" not in str(error.value) and "cpu_crosscheck=never" in str(error.value)
  assert crosscheck.before_training(translator, params, data, required=False) is None


@pytest.mark.slow
def test_a_run_whose_device_agrees_logs_the_check_and_trains(tmp_path, lstm_through, caplog):
  lstm_through(fault=False)
  config = tiny_config(numbers_train=64, cpu_crosscheck="always")
  workdir = str(tmp_path / "run")
  with caplog.at_level("INFO", logger="seq2seq_jax"), pytest.raises(loop.TrainingInterrupted):
    loop.train_and_evaluate(config, workdir, progress=False, stop_after_step=1)
  assert Checkpointer(workdir).latest_step() == 1
  [record] = [r.getMessage() for r in caplog.records if "CPU cross-check" in r.getMessage()]
  assert "computes the host CPU's outputs on 1 batch(es)" in record  # 20 pairs: one batch


def _computing(translator, shift):
  """A copy of translator whose devices compute the model's outputs plus shift(n, outputs) on
  the n-th batch checked (from 0): a device that computes another function where told."""
  forward, calls = translator.forward, []

  def other_function(params, src, tgt_in):
    outputs = np.asarray(forward(params, src, tgt_in))
    calls.append(None)
    return outputs + shift(len(calls) - 1, outputs).astype(outputs.dtype)

  device = dataclasses.replace(translator)
  device.__dict__["forward"] = other_function  # in place of its cached jitted forward pass
  return device


def _largest_difference(error) -> float:
  return float(re.search(r"largest difference ([\d.e+-]+) of", str(error.value)).group(1))


def test_a_difference_over_the_tolerance_on_either_batch_checked_stops_the_run():
  """A tenth of the largest output at one scored position, on the first batch or on the last
  alone, is no rounding, and the line names the devices and that difference; a hundredth is
  taken for rounding, unless a smaller tolerance is given."""
  translator, params, data = _fresh(tiny_config(numbers_val=50))
  batches = crosscheck.check_batches(data, 32, 16)

  def at_first_token_of(batch_number, fraction):
    def shift(n, outputs):
      delta = np.zeros_like(outputs)
      if n == batch_number:
        delta[0, 0, 0] = fraction * np.abs(outputs[batches[n]["tgt_mask"]]).max()
      return delta
    return shift

  for batch_number in (0, 1):
    with pytest.raises(crosscheck.CrosscheckFailed) as error:
      crosscheck.check_against_cpu(_computing(translator, at_first_token_of(batch_number, 0.1)),
                                   params, batches)
    assert re.match(r"CPU cross-check: \d+ x cpu computes other outputs than the host CPU",
                    str(error.value))
    assert _largest_difference(error) == pytest.approx(0.1, rel=0.01)
    assert "at most 0.05 is taken for rounding" in str(error.value)
  within = lambda: _computing(translator, at_first_token_of(1, 0.01))
  assert crosscheck.check_against_cpu(within(), params, batches) == pytest.approx(0.01, rel=0.01)
  with pytest.raises(crosscheck.CrosscheckFailed, match=r"at most 0\.001 is taken") as error:
    crosscheck.check_against_cpu(within(), params, batches, tolerance=0.001)
  assert _largest_difference(error) == pytest.approx(0.01, rel=0.01)


def test_outputs_where_the_loss_counts_nothing_may_differ():
  """Steps after a target's END and a last batch's padding rows are not compared."""
  translator, params, data = _fresh(tiny_config(numbers_val=50))
  batches = crosscheck.check_batches(data, 32, 16)
  last = batches[-1]
  assert (~last["tgt_mask"] & (last["index"] >= 0)[:, None]).any() and (last["index"] < 0).any()
  unscored = lambda n, outputs: np.where(batches[n]["tgt_mask"][..., None], 0.0, 100.0)
  assert crosscheck.check_against_cpu(_computing(translator, unscored), params, batches) < 1e-5


def test_the_positions_compared_are_a_texts_target_tokens_and_every_step_of_a_real_series_row():
  batch = {"index": np.array([0, 1, -1]), "tgt_out": np.zeros((3, 2, 1)),
           "tgt_mask": np.array([[True, False], [True, True], [False, False]])}
  np.testing.assert_array_equal(crosscheck.scored_positions(batch, series=False), batch["tgt_mask"])
  np.testing.assert_array_equal(crosscheck.scored_positions(batch, series=True),
                                [[True, True], [True, True], [False, False]])


def test_the_discrepancy_of_small_outputs_is_relative_to_them_too():
  """Logits near zero (a model at initialisation) that differ by a tenth of the largest differ."""
  reference = np.array([[[1e-3, -2e-3]]])
  scored = np.array([[True]])
  assert crosscheck.discrepancy(reference + 2e-4, reference, scored) == pytest.approx(0.1)


def test_a_bfloat16_run_is_checked_against_the_float32_definition():
  """Its rounding shows, and is taken for rounding."""
  translator, params, data = _fresh(tiny_config(numbers_val=50, matmul_dtype="bfloat16"))
  assert 0 < _check(translator, params, data) < crosscheck.TOLERANCE


def test_the_batches_checked_are_the_runs_first_and_last_evaluation_batches_of_at_most_256_rows(
    monkeypatch):
  """Of the run's batch size and bucket width (the shapes its evaluation compiles), with at most
  256 rows, whatever the batch size: the host's copy of a batch's outputs stays small."""
  checked = []
  monkeypatch.setattr(crosscheck, "check_against_cpu",
                      lambda translator, params, batches: checked.append(batches) or 0.0)
  for batch_size, rows in ((32, 32), (1000, 256)):
    translator, params, data = _fresh(tiny_config(numbers_val=300, batch_size=batch_size,
                                                  bucket_width=4))
    _check(translator, params, data)
    evaluation = list(data_lib.eval_batches(data, rows, 4))
    batches = checked.pop()
    assert len(batches) == 2 and all(len(batch["index"]) == rows for batch in batches)
    for batch, expected in zip(batches, (evaluation[0], evaluation[-1])):
      assert batch.keys() == expected.keys()
      for key in batch:
        np.testing.assert_array_equal(batch[key], expected[key])


def test_a_passing_check_logs_how_many_batches_it_compared(caplog):
  """One where the validation data fit one batch (20 pairs), else the first and the last."""
  for numbers_val, count in ((20, 1), (50, 2)):
    translator, params, data = _fresh(tiny_config(numbers_val=numbers_val))
    with caplog.at_level("INFO", logger="seq2seq_jax"):
      _check(translator, params, data)
    [record] = [r.getMessage() for r in caplog.records if "CPU cross-check" in r.getMessage()]
    assert f"computes the host CPU's outputs on {count} batch(es)" in record
    caplog.clear()

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

"""The benchmark command: its accounting, and a quick end-to-end run of every worker."""

import json
import os

import pytest

from seq2seq_jax import benchmark
from tests.conftest import run_cli


def test_flops_per_sample_at_the_seed_shapes():
  """126 MFLOP per training sample at the Keras example's shapes: 3 x the forward
  matmuls, one-hot input projections counted as lookups."""
  s = benchmark.SEED_SHAPES
  flops = benchmark.train_flops_per_sample(s["src_len"], s["tgt_len"], s["tgt_vocab"], s["latent"])
  assert round(flops / 1e6) == 126


def test_missing_peers_are_skipped_and_named(monkeypatch):
  import importlib.util
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
  found, skipped = benchmark.available_peers(("keras", "torch"))
  assert found == ["keras"] and "pip install 'seq2seq_jax[bench]'" in skipped["torch"]


def test_unknown_peer_is_a_clear_error():
  result = run_cli("benchmark", "--peers", "tensorflow")
  assert result.returncode == 2 and "unknown peer(s) tensorflow" in result.stderr


def test_quick_benchmark_runs_every_measurement(tmp_path):
  """Tiny shapes, one round, seq2seq_jax beside Keras (PyTorch when installed): every
  section of the report is filled and the targets are evaluated."""
  out = tmp_path / "bench.json"
  result = run_cli("benchmark", "--quick", "--rounds", "1", "--peers", "keras,torch",
                   "--output", str(out), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["train_samples_per_s"]["seq2seq_jax"] > 0
  assert report["train_samples_per_s"]["keras"] > 0 and report["train_samples_per_s"]["keras_fit"] > 0
  assert report["epoch_real"]["seq2seq_jax"]["compilations_after_first_epoch"] == 0
  assert report["decode_seed_sentences_per_s"]["keras_predict/1"] > 0
  assert {t["target"] for t in report["targets"]} >= {"train vs keras", "compilations after the first epoch"}
  assert "| seq2seq_jax train step |" in result.stdout  # the human-readable tables
  if "torch" in report["skipped"]:
    assert "torch" not in report["train_samples_per_s"]
  else:
    assert report["train_samples_per_s"]["torch"] > 0

"""The benchmark command: its accounting, and a quick end-to-end run of every worker."""

import json
import os

import numpy as np
import pytest

from seq2seq_jax.bench import harness as benchmark
from seq2seq_jax.errors import DataError
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


def _tab_file(path, pairs):
  path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
  return f"tsv:{path}"


def test_real_length_data_from_a_text_file(tmp_path):
  """--data FILE: pairs over 100 / 120 characters are dropped, a seeded sample is split
  into training and held-out pairs, and the padding each framework pays is reported."""
  rng = np.random.default_rng(0)
  pairs = [("a" * int(n), "b" * int(m)) for n, m in zip(rng.integers(1, 60, 300),
                                                        rng.integers(1, 80, 300))]
  pairs += [("a" * 101, "b"), ("a", "b" * 121)]  # too long: dropped
  spec = _tab_file(tmp_path / "pairs.tsv", pairs)
  report = benchmark.real_length_data(True, str(tmp_path / "real.npz"), spec)
  assert report["data"] == spec
  assert (report["train_pairs"], report["test_pairs"]) == (236, 64)  # 300 kept, 64 held out
  assert report["max_src_len"] <= 100 and report["max_tgt_len"] <= 120
  saved = np.load(tmp_path / "real.npz")
  assert saved["train_src"].dtype == np.int32 and len(saved["test_src"]) == 64
  work = report["steps_over_real"]
  assert work["keras"] > work["torch"] > work["seq2seq_jax"] >= 1.0


def test_real_length_data_needs_enough_pairs(tmp_path):
  spec = _tab_file(tmp_path / "few.tsv", [("one", "un"), ("two", "deux")])
  with pytest.raises(DataError, match="needs at least 24"):
    benchmark.real_length_data(True, str(tmp_path / "real.npz"), spec)


def test_auto_data_is_real_text_when_present_else_numbers(monkeypatch, tmp_path):
  assert benchmark.resolve_real_data("auto", quick=True)[0] == "numbers:fr"
  assert benchmark.resolve_real_data("anki:fra.txt", quick=False) == ("anki:fra.txt", "chosen with --data")
  monkeypatch.setattr(benchmark, "REAL_TEXT", f"gettext:{tmp_path / 'missing'}")
  spec, why = benchmark.resolve_real_data("auto", quick=False)
  assert spec == "numbers:fr" and "no French gettext catalogs" in why and "missing" in why


def test_padded_work_counts_each_frameworks_steps():
  """Two short pairs and two long ones, batches of 2: Keras pads all four to the longest,
  length-sorted batches pad only within each pair of similar lengths."""
  from seq2seq_jax.data import Encoded
  src_len, tgt_len = np.array([2, 9, 3, 8]), np.array([2, 9, 2, 9])  # real steps 44
  data = Encoded(np.ones((4, 9), np.int32), src_len, np.ones((4, 11), np.int32), tgt_len)
  work = benchmark.padded_work(data, batch=2, bucket_width=1)
  assert work["keras"] == pytest.approx(4 * (9 + 10) / 44)
  assert work["seq2seq_jax"] == pytest.approx((2 * (3 + 2) + 2 * (9 + 9)) / 44)
  assert 1.0 <= work["seq2seq_jax"] <= work["torch"] <= work["keras"]


def test_unknown_data_spec_is_a_clear_error():
  result = run_cli("benchmark", "--quick", "--peers", "none", "--data", "fra.txt")
  assert result.returncode == 2 and "data spec" in result.stderr.lower(), result.stderr

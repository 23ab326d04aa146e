"""The benchmark command: its accounting, and a quick end-to-end run of every worker."""

import json
import os

import numpy as np
import pytest

from seq2seq_jax.bench import harness, report as report_lib, work
from seq2seq_jax.errors import DataError
from tests.conftest import cli_in_process, run_cli


def test_flops_per_sample_at_the_seed_shapes():
  """126 MFLOP per training sample at the Keras example's shapes: 3 x the forward
  matmuls, one-hot input projections counted as lookups."""
  s = work.SEED_SHAPES
  flops = work.train_flops_per_sample(s["src_len"], s["tgt_len"], s["tgt_vocab"], s["latent"])
  assert round(flops / 1e6) == 126


def test_missing_peers_are_skipped_and_named(monkeypatch):
  import importlib.util
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
  found, skipped = harness.available_peers(("keras", "torch"))
  assert found == ["keras"] and "pip install 'seq2seq_jax[bench]'" in skipped["torch"]


def test_unknown_peer_is_a_clear_error():
  result = run_cli("benchmark", "--peers", "tensorflow")
  assert result.returncode == 2 and "unknown peer(s) tensorflow" in result.stderr


GOAL_KEYS = {"targets", "target", "met", "at_least", "at_most", "goal"}


def _keys(tree) -> set[str]:
  """Every dict key anywhere in a JSON tree."""
  if isinstance(tree, dict):
    return set(map(str, tree)).union(*map(_keys, tree.values()))
  if isinstance(tree, list):
    return set().union(*map(_keys, tree))
  return set()


def _samples(peer_scale: float) -> dict:
  """Per-round samples as the rounds record them, seq2seq_jax beside Keras, one round."""
  epoch = lambda rate: {"samples_per_s": rate, "seconds": 1.0, "loss": 1.0, "rss_mib": 100.0,
                        "compilations": 0}
  decode = {"sentences_per_s": 10.0, "mean_output_len": 5.0}
  return {"train/seq2seq_jax": [100.0], "train/keras": [100.0 / peer_scale],
          "train/keras_fit": [50.0 / peer_scale], "train/seq2seq_jax_bf16": [150.0],
          "epoch/seq2seq_jax": [epoch(200.0), epoch(300.0)],
          "epoch/keras": [epoch(10.0), epoch(30.0 / peer_scale)],
          "epoch_tail/seq2seq_jax": [100.0, 100.0, 100.0], "epoch_tail/keras": [120.0] * 3,
          "peak_rss_batch8/seq2seq_jax": [500.0], "peak_rss_batch8/keras": [900.0],
          "train_batch/16": [180.0], "decode_seed/seq2seq_jax/1": [40.0],
          "decode_seed/seq2seq_jax/8": [400.0], "decode_seed/keras_predict/1": [2.0],
          "decode_seed/keras_predict_on_batch/1": [4.0],
          "decode_real/seq2seq_jax/1": [decode], "decode_real/keras_predict_on_batch/1": [decode]}


def test_report_gives_measurements_and_ratios_against_the_peers_no_goals():
  """summarise: medians and ratios of ours over the peers' rates; the JSON and the
  tables carry no targets, goals or 'met' verdicts, whatever the numbers."""
  for peer_scale in (0.5, 4.0):  # ours slower than the peer, and faster
    report = {"samples": _samples(peer_scale), "shapes": dict(work.QUICK_SHAPES),
              "matmul_gflops": {"seq2seq_jax": 10.0}, "compile_s": {"seq2seq_jax": 0.5, "keras": 1.0},
              "machine": {"cpu": "cpu", "cores": 2, "platform": "linux", "allocator": "system",
                          "versions": {"jax": "0.4"}},
              "rounds": 1, "skipped": {"torch": "torch is not installed"},
              "seq2seq_jax_devices": {"devices": 2, "xla_flags": ""}, "peak_rss_mib": {"seq2seq_jax": 1.0},
              "real_data": {"data": "numbers:fr", "train_pairs": 256, "test_pairs": 64,
                            "mean_src_len": 5.0, "max_src_len": 9, "mean_tgt_len": 6.0,
                            "max_tgt_len": 11, "chosen": "--quick", "steps_over_real": {"keras": 2.0}}}
    report_lib.summarise(report)
    assert report["ratios"]["train vs keras"] == pytest.approx(peer_scale)  # over the faster of train_on_batch and fit
    assert report["ratios"]["real-length epoch vs keras"] == pytest.approx(10 * peer_scale)
    assert report["ratios"]["decode best batch vs keras loop"] == pytest.approx(200.0)
    assert "train vs torch" not in report["ratios"]  # a skipped peer: no ratio
    assert not _keys(json.loads(json.dumps(report))) & GOAL_KEYS
    text = report_lib.format_report(report)
    assert f"| train vs keras | {peer_scale:,.2f}x |" in text and "| decode best batch vs keras loop | 200.00x |" in text
    words = set(text.replace("|", " ").split())  # ("target" stays: the target sequences)
    assert not {"goal", "goals", "met"} & words and "| target |" not in text
    assert "torch skipped: torch is not installed" in text


@pytest.mark.slow
def test_quick_benchmark_runs_every_measurement(tmp_path):
  """Tiny shapes, one round, seq2seq_jax beside Keras (PyTorch when installed): every
  section of the report is filled, with ratios against the peers and no goals."""
  out = tmp_path / "bench.json"
  result = run_cli("benchmark", "--quick", "--rounds", "1", "--peers", "keras,torch",
                   "--output", str(out), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["train_samples_per_s"]["seq2seq_jax"] > 0
  assert report["train_samples_per_s"]["keras"] > 0 and report["train_samples_per_s"]["keras_fit"] > 0
  assert report["epoch_real"]["seq2seq_jax"]["compilations_after_first_epoch"] == 0
  assert report["decode_seed_sentences_per_s"]["keras_predict/1"] > 0
  assert report["ratios"]["train vs keras"] > 0 and report["ratios"]["decode best batch vs keras loop"] > 0
  assert not _keys(report) & GOAL_KEYS
  assert "| seq2seq_jax train step |" in result.stdout  # the human-readable tables
  assert "| train vs keras |" in result.stdout and "goal" not in result.stdout
  if "torch" in report["skipped"]:
    assert "torch" not in report["train_samples_per_s"]
  else:
    assert report["train_samples_per_s"]["torch"] > 0
  recurrent = report["recurrent"]  # microseconds per step of one layer, our scan by unroll
  assert set(recurrent["us_per_step"]["8"]) >= {"scan/1", "scan/4"}
  assert recurrent["us_per_step"]["8"]["scan/1"]["forward_backward"] > 0
  assert "| lax.scan (lstm_sequence), unroll 1 |" in result.stdout
  if report["device"]["platform"] == "cpu":
    assert recurrent["cudnn"].startswith("not measured") and "cudnn" not in recurrent["us_per_step"]["8"]
    assert "seq2seq_jax_scan" not in report["train_samples_per_s"]  # auto is the scan here


def test_workers_on_an_accelerator_get_no_cpu_settings(monkeypatch):
  """Where a GPU/TPU backend is installed: no mimalloc, no XLA CPU device flags, and the
  JAX workers share the device's memory instead of taking 75% each."""
  from seq2seq_jax import runtime
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("json",))  # an installed module
  for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_PLATFORMS", "XLA_FLAGS", "SEQ2SEQ_JAX_CPU_DEVICES"):
    monkeypatch.delenv(name, raising=False)
  env, allocator = harness.worker_env("mimalloc")
  assert "LD_PRELOAD" not in env and allocator == "system (an accelerator backend is installed)"
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert "XLA_FLAGS" not in harness.worker_devices(env, 64)
  assert runtime.allocator_environment({}) == {} and runtime.launch_environment(64, {}) == {}


class _FakeWorker:
  """A worker answering every op with a plausible measurement, recording what it was asked."""

  def __init__(self, name, log):
    self.name, self.log = name, log

  def __call__(self, op, **kwargs):
    self.log.append((self.name, op, kwargs))
    if op == "matmul":
      return {"gflops": 1000.0}
    if op == "recurrent":
      return {"forward_us_per_step": 10.0, "forward_backward_us_per_step": 30.0, "compile_s": 1.0}
    if op == "epoch":
      return {"samples_per_s": 100.0, "seconds": 1.0, "loss": 1.0, "rss_mib": 10.0, "compilations": 0}
    if op == "decode":
      return {"sentences_per_s": 100.0, "mean_output_len": 5.0}
    if op == "finish":
      return {"rss_mib": 10.0, "peak_rss_mib": 20.0}
    return {"samples_per_s": 100.0, "seconds": 1.0}


def test_the_accelerator_schedule_asks_every_framework_for_the_gpu_work():
  """The harness' GPU path without a GPU: the matmul limit at 4096 x 4096 (highest precision,
  bfloat16, default precision), every framework training at the larger batches, ours also
  with lstm_impl=scan, decoding up to 4096, and the per-step table with cuDNN at two
  batches; the report built from it formats."""
  log = []
  workers = {name: _FakeWorker(name, log) for name in ("seq2seq_jax", "keras", "torch")}
  shapes = dict(work.SEED_SHAPES)
  rates = harness._matmul_rates(workers, accelerator=True)
  assert rates["matmul_n"] == 4096 and {"matmul_gflops_bf16", "matmul_gflops_default_precision"} <= set(rates)
  assert ("seq2seq_jax", "matmul", {"n": 4096, "repeats": 10, "precision": "highest"}) in log
  big, decodes = harness.BATCHES["accelerator"]
  assert big == (256, 1024, 4096) and max(decodes) == 4096
  result = harness._rounds(workers, 1, shapes, 100, big, decodes, lambda _: None,
                           scan_beside=True, peer_batches=True)
  trained = {(name, kw["batch"], kw.get("lstm_impl", "auto")) for name, op, kw in log if op == "train"}
  for name in ("seq2seq_jax", "keras", "torch"):
    assert {(name, b, "auto") for b in (64, 256, 1024, 4096)} <= trained
  assert {("seq2seq_jax", b, "scan") for b in (64, 256, 1024, 4096)} <= trained
  decoded = {(name, kw["batch"]) for name, op, kw in log if op == "decode" and kw["which"] == "seed"}
  assert ("seq2seq_jax", 4096) in decoded and ("torch", 4096) in decoded
  recurrent = harness._recurrent_steps(workers["seq2seq_jax"], 1, shapes, False, cudnn=True,
                                       accelerator=True, say=lambda _: None)
  assert set(recurrent["samples"]) == {f"{b}/{v}" for b in (64, 1024)
                                       for v in ("scan/1", "scan/2", "scan/4", "scan/8", "cudnn")}
  report = dict(result, **rates, recurrent=recurrent, shapes=shapes, rounds=1, skipped={},
                compile_s={"seq2seq_jax": 1.0}, peak_rss_mib={"seq2seq_jax": 20.0},
                machine={"cpu": "cpu", "cores": 16, "platform": "linux", "allocator": "system",
                         "versions": {}},
                device={"platform": "gpu", "name": "NVIDIA H200", "count": 1, "lstm_impl": "cudnn",
                        "default_matmul_precision": None, "peers": {}},
                seq2seq_jax_devices={"devices": 1, "xla_flags": ""},
                real_data={"data": "numbers:fr", "train_pairs": 256, "test_pairs": 64,
                           "mean_src_len": 5.0, "max_src_len": 9, "mean_tgt_len": 6.0,
                           "max_tgt_len": 11, "chosen": "--quick", "steps_over_real": {}})
  report_lib.summarise(report)
  assert set(report["train_by_batch"]) == {"seq2seq_jax", "seq2seq_jax_scan", "keras", "torch"}
  assert report["ratios"]["train batch 4096 vs torch"] == pytest.approx(1.0)
  text = report_lib.format_report(report)
  assert "| one LSTM layer, batch 1024, 59 steps, LSTM 256 (input 256) |" in text
  assert not _keys(json.loads(json.dumps(report))) & GOAL_KEYS


def test_report_on_a_gpu_gives_the_device_steps_and_the_peers_by_batch():
  """An accelerator's report: the device and its float32 / bfloat16 matmul rates, our
  scan's microseconds per step by unroll beside cuDNN's, our train step with the scan
  beside cuDNN's, and the peers at the larger batches, with ratios and no goals; the
  tables read the same from the JSON file."""
  samples = _samples(2.0)
  samples.update({"train/seq2seq_jax_scan": [60.0], "train/torch": [80.0],
                  "train_batch/256": [300.0], "train_batch_scan/256": [200.0],
                  "train_batch_peer/torch/256": [150.0], "train_batch_peer/keras/256": [100.0]})
  step = lambda f, b: {"forward_us_per_step": f, "forward_backward_us_per_step": b, "compile_s": 1.0}
  report = {"samples": samples, "shapes": dict(work.QUICK_SHAPES),
            "matmul_gflops": {"seq2seq_jax": 50_000.0, "torch": 48_000.0}, "matmul_n": 4096,
            "matmul_gflops_bf16": 700_000.0, "matmul_gflops_default_precision": 400_000.0,
            "compile_s": {"seq2seq_jax": 0.5, "keras": 1.0, "torch": 0.0},
            "machine": {"cpu": "cpu", "cores": 16, "platform": "linux", "allocator": "system",
                        "versions": {"jax": "0.10"}},
            "device": {"platform": "gpu", "name": "NVIDIA H200", "count": 1, "lstm_impl": "cudnn",
                       "default_matmul_precision": None,
                       "peers": {"keras": {"platform": "gpu"},
                                 "torch": {"platform": "cuda", "name": "NVIDIA H200", "cudnn": 91000,
                                           "cudnn_allow_tf32": True, "matmul_allow_tf32": False}}},
            "rounds": 1, "skipped": {}, "seq2seq_jax_devices": {"devices": 1, "xla_flags": ""},
            "peak_rss_mib": {"seq2seq_jax": 1.0}, "device_peak_mib": {"seq2seq_jax": 900.0},
            "recurrent": {"steps": 9, "latent": 16, "cudnn": "measured", "samples": {
                "8/scan/1": [step(30.0, 90.0)], "8/scan/4": [step(20.0, 60.0)],
                "8/cudnn": [step(10.0, 20.0)]}},
            "real_data": {"data": "numbers:fr", "train_pairs": 256, "test_pairs": 64,
                          "mean_src_len": 5.0, "max_src_len": 9, "mean_tgt_len": 6.0,
                          "max_tgt_len": 11, "chosen": "--quick", "steps_over_real": {"keras": 2.0}}}
  report_lib.summarise(report)
  fastest = report["recurrent"]["fastest_scan"][8]
  assert fastest["unroll"] == 4 and fastest["scan_over_cudnn"]["forward_backward"] == pytest.approx(3.0)
  assert report["matmul_limit_gflops"] == 50_000.0
  assert report["train_by_batch"]["seq2seq_jax_scan"] == {8: 60.0, 256: 200.0}
  assert report["ratios"]["train batch 256 vs torch"] == pytest.approx(2.0)
  assert report["ratios"]["train batch 256 vs keras"] == pytest.approx(3.0)
  assert report["train_pct_of_bf16_matmul_limit"]["seq2seq_jax_bf16"] > 0
  assert not _keys(json.loads(json.dumps(report))) & GOAL_KEYS
  for text in (report_lib.format_report(report), report_lib.format_report(json.loads(json.dumps(report)))):
    assert "1 GPU device(s), NVIDIA H200" in text and "bfloat16 700,000" in text
    assert "| seq2seq_jax train step, lstm_impl=scan | 60 |" in text
    assert "| lax.scan (lstm_sequence), unroll 4 | 20.0 | 60.0 |" in text
    assert "| cuDNN (jax.experimental.rnn.lstm) | 10.0 | 20.0 |" in text
    assert "Fastest scan unroll at batch 8: 4; its time over cuDNN's: 2.00x forward, 3.00x" in text
    assert "| batch 256 | 300 | 200 | 150 | 100 |" in text
    assert not {"goal", "goals", "met"} & set(text.replace("|", " ").split())


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
  report = work.real_length_data(True, str(tmp_path / "real.npz"), spec)
  assert report["data"] == spec
  assert (report["train_pairs"], report["test_pairs"]) == (236, 64)  # 300 kept, 64 held out
  assert report["max_src_len"] <= 100 and report["max_tgt_len"] <= 120
  saved = np.load(tmp_path / "real.npz")
  assert saved["train_src"].dtype == np.int32 and len(saved["test_src"]) == 64
  padding = report["steps_over_real"]
  assert padding["keras"] > padding["torch"] > padding["seq2seq_jax"] >= 1.0


def test_real_length_data_needs_enough_pairs(tmp_path):
  spec = _tab_file(tmp_path / "few.tsv", [("one", "un"), ("two", "deux")])
  with pytest.raises(DataError, match="needs at least 24"):
    work.real_length_data(True, str(tmp_path / "real.npz"), spec)


def test_auto_data_is_real_text_when_present_else_numbers(monkeypatch, tmp_path):
  assert work.resolve_real_data("auto", quick=True)[0] == "numbers:fr"
  assert work.resolve_real_data("anki:fra.txt", quick=False) == ("anki:fra.txt", "chosen with --data")
  monkeypatch.setattr(work, "REAL_TEXT", f"gettext:{tmp_path / 'missing'}")
  spec, why = work.resolve_real_data("auto", quick=False)
  assert spec == "numbers:fr" and "no French gettext catalogs" in why and "missing" in why


def test_padded_work_counts_each_frameworks_steps():
  """Two short pairs and two long ones, batches of 2: Keras pads all four to the longest,
  length-sorted batches pad only within each pair of similar lengths."""
  from seq2seq_jax.data import Encoded
  src_len, tgt_len = np.array([2, 9, 3, 8]), np.array([2, 9, 2, 9])  # real steps 44
  data = Encoded(np.ones((4, 9), np.int32), src_len, np.ones((4, 11), np.int32), tgt_len)
  padding = work.padded_work(data, batch=2, bucket_width=1)
  assert padding["keras"] == pytest.approx(4 * (9 + 10) / 44)
  assert padding["seq2seq_jax"] == pytest.approx((2 * (3 + 2) + 2 * (9 + 9)) / 44)
  assert 1.0 <= padding["seq2seq_jax"] <= padding["torch"] <= padding["keras"]


def test_unknown_data_spec_is_a_clear_error():
  result = run_cli("benchmark", "--quick", "--peers", "none", "--data", "fra.txt")
  assert result.returncode == 2 and "data spec" in result.stderr.lower(), result.stderr


def test_an_output_path_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys):
  """--output is written at the end of minutes of measuring: a path that cannot be written
  is refused first, in one line, not after the run (whose figures it lost)."""
  missing = tmp_path / "nowhere" / "bench.json"
  for path, message in ((missing, f"--output {missing}: directory '{missing.parent}' does not "
                                  "exist."),
                        (tmp_path, f"--output {tmp_path} is a directory: give a file path.")):
    code, out, err = cli_in_process(capsys, "benchmark", "--quick", "--output", str(path))
    assert (code, out) == (2, "")
    assert err.strip().splitlines() == [f"seq2seq-jax benchmark: error: {message}"]

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


def _cpu_report(samples: dict, shapes: dict) -> dict:
  """A CPU run's report around its per-round samples, seq2seq_jax beside Keras."""
  return {"samples": samples, "shapes": shapes,
          "matmul_gflops": {"seq2seq_jax": 10.0}, "compile_s": {"seq2seq_jax": 0.5, "keras": 1.5},
          "machine": {"cpu": "cpu", "cores": 2, "platform": "linux", "allocator": "system",
                      "versions": {"jax": "0.4"}},
          "rounds": 1, "skipped": {}, "seq2seq_jax_devices": {"devices": 2, "xla_flags": ""},
          "peak_rss_mib": {"seq2seq_jax": 700.0, "keras": 1200.0},
          "real_data": {"data": "numbers:fr", "train_pairs": 256, "test_pairs": 64,
                        "mean_src_len": 5.0, "max_src_len": 9, "mean_tgt_len": 6.0,
                        "max_tgt_len": 11, "chosen": "--quick", "steps_over_real": {"keras": 2.0}}}


def test_percent_of_the_matmul_limit_is_the_training_flops_over_the_measured_rate():
  """A rate's % of the matmul limit: samples/s x FLOPs per sample over the best measured
  matmul GFLOP/s; by batch size, the seed batch (train/seq2seq_jax) beside the larger ones."""
  shapes = dict(work.SEED_SHAPES)  # batch 64: 126 MFLOP per sample
  samples = dict(_samples(2.0), **{"train_batch/256": [180.0]})
  samples.pop("train_batch/16")
  report = _cpu_report(samples, shapes)
  report_lib.summarise(report)
  flops = work.train_flops_per_sample(shapes["src_len"], shapes["tgt_len"], shapes["tgt_vocab"],
                                      shapes["latent"])
  pct = lambda rate: 100.0 * rate * flops / 10e9
  assert report["train_pct_of_matmul_limit"]["seq2seq_jax"] == pytest.approx(pct(100.0))
  assert report["seq2seq_jax_by_batch"] == {
      64: {"samples_per_s": 100.0, "pct_of_matmul_limit": pytest.approx(pct(100.0))},
      256: {"samples_per_s": 180.0, "pct_of_matmul_limit": pytest.approx(pct(180.0))}}
  text = report_lib.format_report(report)
  assert "126 MFLOP per training sample; measured matmul limit 10 GFLOP/s." in text
  assert f"| seq2seq_jax train step | 100 | {pct(100.0):,.1f} | 0.50 | 500 |" in text
  assert f"| batch 64 | 100 | {pct(100.0):,.1f} |" in text
  assert f"| batch 256 | 180 | {pct(180.0):,.1f} |" in text


def test_the_cpu_report_tables_name_each_framework_with_its_own_figures():
  """Every row of the tables carries the figures of its framework: Keras' fit its compile
  time and memory, the decoding tables sentences/s (and mean output tokens), the devices
  and XLA flags ours ran with ("none" when empty), each framework's peak RSS."""
  report = _cpu_report(_samples(2.0), dict(work.QUICK_SHAPES))
  report["samples"]["decode_real/seq2seq_jax/1"] = [{"sentences_per_s": 12.0, "mean_output_len": 7.0}]
  report_lib.summarise(report)
  assert report["ratios"]["decode one sentence vs keras loop"] == pytest.approx(20.0)
  text = report_lib.format_report(report)
  assert "seq2seq_jax ran on 2 XLA CPU device(s), as `seq2seq-jax train` does on this machine " \
      "(XLA_FLAGS `none`)" in text
  assert "| Keras 3 train_on_batch | 50 | 0.1 | 1.50 | 900 |" in text
  assert "| Keras 3 fit | 25 | 0.0 | 1.50 | 900 |" in text
  assert "Peak RSS over the whole run, larger batches included: seq2seq_jax 700 MiB, keras 1,200 MiB." in text
  assert "| seq2seq_jax, batch 8 | 400.0 |" in text and "| keras_predict, batch 1 | 2.0 |" in text
  assert "| seq2seq_jax, batch 1 | 12.0 | 7.0 |" in text
  assert "| decode one sentence vs keras loop | 20.00x |" in text


def test_the_real_length_epoch_row_gives_later_epochs_rate_first_epoch_time_and_recompilations():
  """The first epoch compiles (ours) or builds fit's step (Keras): its time is shown apart,
  the rate is the later epochs' median, recompilations count after the first epoch only,
  and the RSS column is the three epochs run back to back."""
  epoch = lambda rate, seconds, compilations: {"samples_per_s": rate, "seconds": seconds, "loss": 1.0,
                                               "rss_mib": 100.0, "compilations": compilations}
  samples = _samples(2.0)
  samples["epoch/seq2seq_jax"] = [epoch(20.0, 9.5, 4), epoch(300.0, 1.0, 0), epoch(320.0, 1.0, 1)]
  samples["epoch_tail/seq2seq_jax"] = [101.0, 102.0, 104.0]
  report = _cpu_report(samples, dict(work.QUICK_SHAPES))
  report_lib.summarise(report)
  ours = report["epoch_real"]["seq2seq_jax"]
  assert ours["samples_per_s"] == pytest.approx(310.0) and ours["first_epoch_s"] == 9.5
  assert ours["compilations_after_first_epoch"] == 1
  assert ours["rss_mib_consecutive_epochs"] == [101.0, 102.0, 104.0]
  text = report_lib.format_report(report)
  assert "| seq2seq_jax | 310 | 9.5 | 101 102 104 | 1 |" in text
  assert "| keras | 15 | 1.0 | 120 120 120 | - |" in text  # recompilations: ours only


def test_the_gpu_report_gives_the_bfloat16_share_the_fastest_unroll_and_peer_ratios_by_batch():
  """bfloat16 training over the bfloat16 matmul rate; the fastest scan unroll is the one of
  the fastest forward + backward (what training runs); per-batch ratios against the peers
  for the batches beyond the seed one (which is "train vs <peer>"); the per-batch table
  ends with our % of the matmul limit."""
  samples = dict(_samples(2.0), **{"train/torch": [80.0], "train_batch/256": [300.0],
                                   "train_batch_peer/torch/256": [150.0]})
  step = lambda f, b: {"forward_us_per_step": f, "forward_backward_us_per_step": b, "compile_s": 1.0}
  report = dict(_cpu_report(samples, dict(work.QUICK_SHAPES)),
                matmul_gflops={"seq2seq_jax": 50_000.0}, matmul_gflops_bf16=700_000.0,
                device={"platform": "gpu", "name": "NVIDIA H200", "count": 1, "lstm_impl": "scan",
                        "default_matmul_precision": None, "peers": {}},
                recurrent={"steps": 9, "latent": 16, "cudnn": "not measured", "samples": {
                    "8/scan/1": [step(30.0, 90.0)], "8/scan/2": [step(15.0, 70.0)],
                    "8/scan/4": [step(20.0, 60.0)]}})
  report_lib.summarise(report)
  flops = report["train_flops_per_sample"]
  assert report["train_pct_of_bf16_matmul_limit"]["seq2seq_jax_bf16"] == pytest.approx(
      100.0 * 150.0 * flops / 700_000e9)
  assert report["recurrent"]["fastest_scan"][8]["unroll"] == 4
  assert report["ratios"]["train vs torch"] == pytest.approx(100.0 / 80.0)
  assert report["ratios"]["train batch 256 vs torch"] == pytest.approx(2.0)
  assert "train batch 8 vs torch" not in report["ratios"]
  text = report_lib.format_report(report)
  pct = 100.0 * 300.0 * flops / 50_000e9
  assert f"| batch 256 | 300 | 150 | {pct:,.1f} |" in text
  assert "The bfloat16 row is {:.1f}% of the measured bfloat16 matmul rate.".format(
      100.0 * 150.0 * flops / 700_000e9) in text
  assert "Fastest scan unroll at batch 8: 4; cuDNN not measured." in text


# ---------------------------------------------------------------------------
# The coordinator and its workers
# ---------------------------------------------------------------------------

def _worker_env_for_tests() -> dict:
  """This environment with the checkout first on the path: `python -m
  seq2seq_jax.bench.workers` imports the code under test."""
  from tests.conftest import ROOT
  return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


def test_a_worker_that_cannot_start_is_named_with_its_error(tmp_path):
  """A worker that fails to set up answers its error; the coordinator names the worker and
  the error's type and message."""
  from seq2seq_jax.errors import UserError
  spec = {"shapes": dict(work.QUICK_SHAPES), "real_data": str(tmp_path / "missing.npz"),
          "bucket_width": 16}
  with pytest.raises(UserError) as caught:
    harness.WorkerProcess("keras", spec, _worker_env_for_tests(), str(tmp_path))
  assert str(caught.value).startswith("the keras benchmark worker failed: FileNotFoundError: ")
  assert "missing.npz" in str(caught.value)


def test_a_worker_that_dies_is_named_with_its_exit_status_and_its_log(tmp_path):
  from seq2seq_jax.errors import UserError
  with pytest.raises(UserError) as caught:
    harness.WorkerProcess("tensorflow", {}, _worker_env_for_tests(), str(tmp_path))
  text = str(caught.value)
  assert text.startswith("the tensorflow benchmark worker died (exit 2); its log ends:\n")
  assert "invalid choice: 'tensorflow'" in text  # the worker's own stderr, from its log


def test_a_worker_that_died_between_ops_is_named_not_taken_for_a_closed_stdout(tmp_path, capsys,
                                                                               monkeypatch):
  """A worker killed while idle (the OOM killer between two ops): the next op's write to it
  raised BrokenPipeError, which the CLI takes for its own closed stdout (`| head`): exit
  141, no message, the report lost. It is the worker's death, named with its log."""
  import subprocess
  import sys
  from seq2seq_jax.errors import UserError
  from tests.conftest import cli_in_process
  worker = object.__new__(harness.WorkerProcess)
  worker.name, worker.log_path = "keras", str(tmp_path / "keras.log")
  worker.log = open(worker.log_path, "w")
  worker.log.write("Killed\n")
  worker.proc = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
  worker.proc.wait()  # gone: nothing reads what is sent to it
  try:
    with pytest.raises(UserError, match=r"^the keras benchmark worker died \(exit 0\); its "
                       r"log ends:\nKilled\n$"):
      worker._send({"op": "finish"})
    monkeypatch.setattr(harness, "run_benchmark", lambda **kw: worker._send({"op": "finish"}))
    code, out, err = cli_in_process(capsys, "benchmark", "--quick", "--peers", "none")
    assert code == 2 and out == "" and err.startswith(
        "seq2seq-jax benchmark: error: the keras benchmark worker died (exit 0)")
  finally:
    worker.log.close()
    worker.proc.stdin = worker.proc.stdout = None  # their broken pipes are not flushed again


def test_a_report_that_standard_output_cannot_take_is_in_its_output_file(tmp_path, capsys,
                                                                       monkeypatch):
  """`benchmark --output FILE > /dev/full` printed first and lost the report (an hour's run)
  with the file system's path hint: FILE is written first, and the message says it has it."""
  import errno
  import io
  import sys
  from tests.conftest import cli_in_process

  class Full(io.StringIO):
    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self):
      raise io.UnsupportedOperation("fileno")

  monkeypatch.setattr(harness, "run_benchmark", lambda **kw: {"measured": 1})
  monkeypatch.setattr(sys, "stdout", Full())
  output = tmp_path / "report.json"
  code, _, err = cli_in_process(capsys, "benchmark", "--json", "--output", str(output))
  assert code == 2 and err.splitlines() == [
      "seq2seq-jax benchmark: error: standard output cannot be written (No space left on "
      f"device): the report was not all written (--output {output} has it); send the output "
      "where there is room (> FILE)."]
  assert json.loads(output.read_text()) == {"measured": 1}


def test_progress_lines_that_cannot_be_written_stop_and_the_benchmark_goes_on(capsys,
                                                                             monkeypatch):
  """A closed standard error (its reader gone) made the first progress line's BrokenPipeError
  end the command as a closed stdout would: exit 141, the report lost."""
  import io
  import sys
  from tests.conftest import cli_in_process

  class Gone(io.StringIO):
    def write(self, text):
      raise BrokenPipeError(32, "Broken pipe")

  def run_benchmark(progress, **kw):
    progress("starting the keras worker")
    return {"measured": 1}
  monkeypatch.setattr(harness, "run_benchmark", run_benchmark)
  monkeypatch.setattr(sys, "stderr", Gone())
  code, out, _ = cli_in_process(capsys, "benchmark", "--json")
  assert code == 0 and json.loads(out) == {"measured": 1}


def test_no_decoding_batch_at_all_is_refused_before_anything_is_measured(capsys, monkeypatch):
  """`--decode-batches none` measured everything, then failed in the report (a ValueError
  of an empty max) with nothing printed or written."""
  from tests.conftest import cli_in_process
  monkeypatch.setattr(harness, "run_benchmark", lambda **kw: pytest.fail("measured"))
  for value in ("none", "None"):
    code, out, err = cli_in_process(capsys, "benchmark", "--decode-batches", value)
    assert code == 2 and out == "" and err.splitlines() == [
        "seq2seq-jax benchmark: error: --decode-batches takes at least one batch size (e.g. "
        "1,64): decoding is measured at each; leave it out for the default."]


class _EchoWorker:
  """A worker for worker_main: `double` prints chatter and answers, `fail` raises."""

  def __init__(self, spec):
    self.spec = spec

  def double(self, x):
    print("library chatter on stdout")
    return 2 * x

  def fail(self):
    raise ValueError("no such batch")


class _BrokenWorker:
  def __init__(self, spec):
    raise RuntimeError("no data")


def test_a_worker_answers_one_json_line_per_op_and_outlives_a_failing_op(monkeypatch):
  """The worker protocol: one JSON answer per op line on stdout (whatever the libraries
  print goes to stderr); an op that raises is answered with its error, and the next op
  is answered as usual; a worker that cannot start answers its error and exits 1."""
  import io
  import sys
  from seq2seq_jax.bench import workers

  def run(name, lines):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(x) + "\n" for x in lines)))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = workers.worker_main(name)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()

  monkeypatch.setitem(workers.WORKERS, "echo", _EchoWorker)
  monkeypatch.setitem(workers.WORKERS, "broken", _BrokenWorker)
  ops = [{"op": "double", "x": 2}, {"op": "fail"}, {"op": "double", "x": 3}]
  code, answers, err = run("echo", [{"shapes": {}}] + ops)
  assert code == 0 and answers == [
      {"ok": True}, {"ok": True, "result": 4}, {"ok": False, "error": "ValueError: no such batch"},
      {"ok": True, "result": 6}]
  assert "library chatter on stdout" in err
  code, answers, _ = run("broken", [{"shapes": {}}] + ops)
  assert code == 1 and answers == [{"ok": False, "error": "RuntimeError: no data"}]


def test_every_worker_runs_keras_on_jax_with_only_the_allocator_asked_for(monkeypatch):
  """On a CPU: KERAS_BACKEND=jax whatever the shell says, the shell's LD_PRELOAD dropped (every
  framework gets the same allocator), mimalloc only where asked for and installed."""
  from seq2seq_jax import runtime
  monkeypatch.setattr(runtime, "ACCELERATOR_PLUGINS", ("seq2seq_jax_no_such_plugin",))
  monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libsomething_else.so")
  monkeypatch.delenv("SEQ2SEQ_JAX_MIMALLOC", raising=False)
  env, allocator = harness.worker_env("system")
  assert allocator == "system" and "LD_PRELOAD" not in env and env["KERAS_BACKEND"] == "jax"
  env, allocator = harness.worker_env("mimalloc")
  library = runtime.find_mimalloc()
  if library:
    assert allocator == "mimalloc" and env["LD_PRELOAD"] == library
  else:
    assert allocator == "system (mimalloc not installed)" and "LD_PRELOAD" not in env
  assert env["KERAS_BACKEND"] == "jax"


class _FakeProcess(_FakeWorker):
  """harness.WorkerProcess's stand-in: setup answers as the real workers do on `platform`,
  the training rate is 1234.5 samples/s, and the environment and kills are recorded."""

  def __init__(self, name, log, platform, killed, fail_setup=()):
    super().__init__(name, log)
    self.platform, self.killed, self.fail_setup = platform, killed, fail_setup
    self.proc = type("Proc", (), {"kill": lambda _: killed.append(name)})()

  def __call__(self, op, **kwargs):
    answer = super().__call__(op, **kwargs)
    if op == "setup":
      if self.name in self.fail_setup:
        from seq2seq_jax.errors import UserError
        raise UserError(f"the {self.name} benchmark worker failed: RuntimeError: boom")
      if self.name != "seq2seq_jax":
        return {"compile_s": 2.0, "platform": self.platform}
      return {"compile_s": 1.0, "devices": 1, "xla_flags": "", "platform": self.platform,
              "device_kind": "cpu", "cuda": self.platform == "gpu",
              "lstm_impl": "cudnn" if self.platform == "gpu" else "scan",
              "default_matmul_precision": None}
    if op == "train":
      return {"samples_per_s": 1234.5, "seconds": 1.0}
    if op == "finish" and self.platform == "gpu" and self.name != "keras":  # as the real workers
      return dict(answer, device_peak_mib=300.0)
    return answer

  def close(self):
    return self("finish")


def _fake_run(monkeypatch, platform, found, fail_setup=(), killed=None, **kwargs):
  """run_benchmark with stand-in workers (and, but for --quick, stand-in real-length pairs):
  (report, op log, env by worker, progress lines, killed workers)."""
  log, envs, said, killed = [], {}, [], [] if killed is None else killed
  if not kwargs.get("quick"):
    monkeypatch.setattr(harness, "real_length_data", lambda quick, path, spec: {"data": spec})

  def start(name, spec, env, log_dir):
    envs[name] = env
    return _FakeProcess(name, log, platform, killed, fail_setup)
  monkeypatch.setattr(harness, "WorkerProcess", start)
  monkeypatch.setattr(harness, "available_peers",
                      lambda wanted: (list(found), {p: f"{p} is not installed" for p in wanted if p not in found}))
  monkeypatch.setattr(harness, "worker_devices", lambda env, batch: dict(env, FAKE_DEVICES_FOR=str(batch)))
  report = harness.run_benchmark(peers=("keras", "torch"), allocator="system", progress=said.append, **kwargs)
  return report, log, envs, said, killed


def test_a_quick_run_gives_each_framework_its_work_in_alternating_rounds(monkeypatch):
  """--quick on a CPU: tiny shapes, 3 training steps, decoding at batches 1 and 8, the scan
  at unrolls 1 and 4; the order of the frameworks rotates each round; the CPU device
  settings go to our worker only, the matmul limit is asked of the frameworks that have
  one (not Keras); three epochs in a row for memory; each measurement said as it comes."""
  report, log, envs, said, killed = _fake_run(monkeypatch, "cpu", ["keras"], rounds=2, quick=True)
  assert report["shapes"] == work.QUICK_SHAPES and report["skipped"] == {"torch": "torch is not installed"}
  assert envs["seq2seq_jax"]["FAKE_DEVICES_FOR"] == "8" and "FAKE_DEVICES_FOR" not in envs["keras"]
  seed_trains = [(name, kw["steps"]) for name, op, kw in log
                 if op == "train" and kw["batch"] == 8 and len(kw) == 2]
  assert seed_trains == [("seq2seq_jax", 3), ("keras", 3), ("keras", 3), ("seq2seq_jax", 3)]
  assert not [1 for name, op, _ in log if name == "keras" and op == "matmul"]
  assert set(report["decode_seed_sentences_per_s"]) == {
      "seq2seq_jax/1", "seq2seq_jax/8", "keras_predict/1", "keras_predict_on_batch/1"}
  real = {(name, kw["batch"]): kw["sentences"] for name, op, kw in log
          if op == "decode" and kw["which"] == "real"}
  assert real == {("seq2seq_jax", 1): 64, ("seq2seq_jax", 8): 2048, ("keras", 1): 5}
  assert set(report["recurrent"]["samples"]) == {"8/scan/1", "8/scan/4"}
  assert report["epoch_real"]["keras"]["rss_mib_consecutive_epochs"] == [10.0, 10.0, 10.0]
  assert "  train/seq2seq_jax: 1,234.5" in said
  assert "  epoch/keras: samples_per_s 100.0, seconds 1.0, loss 1.0, rss_mib 10.0, compilations 0" in said
  assert killed == [] and "torch skipped: torch is not installed" in report_lib.format_report(report)


def test_on_a_gpu_the_larger_batches_time_as_many_samples_as_the_seed_batch(monkeypatch):
  """An accelerator's run: at least 100 steps at the seed batch, every framework at the
  larger batches for the same samples (at least 5 steps), device memory in the report;
  --batches none trains no larger batch."""
  report, log, _, _, _ = _fake_run(monkeypatch, "gpu", ["keras", "torch"], rounds=1,
                                   data="numbers:fr", train_steps=30)
  steps = {}
  for name, op, kw in log:
    if op == "train" and len(kw) == 2:
      steps.setdefault(name, {})[kw["batch"]] = kw["steps"]
  for name in ("seq2seq_jax", "keras", "torch"):
    assert steps[name] == {64: 100, 256: 25, 1024: 6, 4096: 5}, name
  assert report["device_peak_mib"] == {"seq2seq_jax": 300.0, "torch": 300.0}
  report, log, _, _, _ = _fake_run(monkeypatch, "gpu", ["keras", "torch"], rounds=1,
                                   data="numbers:fr", big_batches=(), decode_batches=(1,))
  assert {kw["batch"] for _, op, kw in log if op == "train"} == {64}


def test_a_worker_that_fails_stops_every_worker_started(monkeypatch):
  """A worker's failure ends the run with its message, and no worker process is left running."""
  from seq2seq_jax.errors import UserError
  killed = []
  with pytest.raises(UserError, match="the keras benchmark worker failed: RuntimeError: boom"):
    _fake_run(monkeypatch, "cpu", ["keras", "torch"], fail_setup=("keras",), killed=killed,
              rounds=1, quick=True)
  assert sorted(killed) == ["keras", "seq2seq_jax", "torch"]


def test_seed_batches_hold_full_length_ordinary_tokens():
  """The seed-shape work: every row at full length, no padding, START, END or unknown id
  (which would end decoding or be masked), the target shifted by one."""
  batch = work.seed_batch(work.QUICK_SHAPES, 5)
  assert batch["src"].shape == (5, 6) and batch["tgt_in"].shape == batch["tgt_out"].shape == (5, 9)
  for key, vocab in (("src", 12), ("tgt_in", 14), ("tgt_out", 14)):
    assert batch[key].min() >= 4 and batch[key].max() < vocab
  np.testing.assert_array_equal(batch["tgt_in"][:, 1:], batch["tgt_out"][:, :-1])
  assert batch["tgt_mask"].all()


def test_real_decoding_batches_are_length_sorted_and_count_only_real_rows():
  """Held-out sources shortest first (as decode_texts sorts), cut into batches; the last
  padded to the batch where asked, its real rows what the rate counts."""
  src = np.array([[5, 5, 5, 0], [5, 0, 0, 0], [5, 5, 5, 5], [5, 5, 0, 0], [5, 5, 0, 0]], np.int32)
  batches, rows = work.real_decode_batches({"test_src": src}, 2, 5, pad=True)
  assert rows == [2, 2, 1]
  assert [list((b != 0).sum(1)) for b in batches] == [[1, 2], [2, 3], [4, 0]]
  batches, rows = work.real_decode_batches({"test_src": src}, 2, 3, pad=False)
  assert rows == [2, 1] and [len(b) for b in batches] == [2, 1]


def test_auto_data_takes_the_catalogs_from_exactly_enough_pairs(monkeypatch):
  needed = sum(work.REAL_PAIRS[False])  # 4096 training + 2048 held-out
  for found, chosen in ((needed, work.REAL_TEXT), (needed - 1, "numbers:fr")):
    monkeypatch.setattr(work, "_text_pairs", lambda spec: [("a", "b")] * found)
    spec, why = work.resolve_real_data("auto", quick=False)
    assert spec == chosen, why
  assert f"holds {needed - 1} usable pairs, fewer than {needed}" in why


def test_real_length_data_from_a_small_file_holds_out_a_third(tmp_path):
  """The fewest pairs a real-length epoch takes, 3 x the batch (24 with --quick): a third
  held out, the rest trained on; pairs of exactly 100 / 120 characters are kept."""
  pairs = [("a" * 100, "b" * 120)] + [("a" * n, "b" * n) for n in range(1, 24)]
  report = work.real_length_data(True, str(tmp_path / "real.npz"), _tab_file(tmp_path / "24.tsv", pairs))
  assert (report["train_pairs"], report["test_pairs"]) == (16, 8)
  with pytest.raises(DataError, match="23 pairs of at most 100 / 120 characters; the real-length "
                                      "epoch needs at least 24"):
    work.real_length_data(True, str(tmp_path / "real.npz"), _tab_file(tmp_path / "23.tsv", pairs[1:]))


def test_a_full_run_trains_on_4096_numbers_and_decodes_2048():
  """Without --quick the embedded numbers:fr gives 4096 training and 2048 held-out pairs
  (numbers up to 999,999: sentences of real lengths, not the quick run's short ones)."""
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    report = work.real_length_data(False, os.path.join(tmp, "real.npz"), "numbers:fr")
  assert (report["train_pairs"], report["test_pairs"]) == (4096, 2048)
  assert report["max_src_len"] > 40


def test_the_pytorch_port_reshuffles_its_batches_each_epoch():
  first, second = work.torch_batches(10, 4, 0), work.torch_batches(10, 4, 1)
  for batches in (first, second):
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
  assert not all(np.array_equal(a, b) for a, b in zip(first, second))


def test_padded_work_counts_the_empty_rows_of_our_last_short_batch():
  """seq2seq_jax computes every batch at full batch size (make_batch pads the last one
  with empty rows): those rows are work too."""
  from seq2seq_jax.data import Encoded
  src_len, tgt_len = np.array([4, 4, 4]), np.array([4, 4, 4])  # real steps 24
  data = Encoded(np.ones((3, 4), np.int32), src_len, np.ones((3, 5), np.int32), tgt_len)
  padding = work.padded_work(data, batch=2, bucket_width=1)
  assert padding["seq2seq_jax"] == pytest.approx(2 * 2 * (4 + 4) / 24)


def test_memory_figures_are_mebibytes():
  """rss_mib: (current, peak) resident memory in MiB, what /proc says in kB over 1024."""
  from seq2seq_jax.bench import workers
  current, peak = workers.rss_mib()
  with open("/proc/self/status") as f:
    kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f
                                              if line.startswith(("VmRSS:", "VmHWM:")))}
  assert current == pytest.approx(kib["VmRSS"] / 1024, rel=0.01)
  assert peak == pytest.approx(kib["VmHWM"] / 1024, rel=0.01)


def test_an_output_counts_its_tokens_up_to_and_including_end():
  from seq2seq_jax.bench import workers
  from seq2seq_jax.vocab import END_ID
  ids = np.array([[5, END_ID, END_ID], [5, 6, 7], [END_ID, 0, 0]])
  np.testing.assert_array_equal(workers._output_length(ids), [2, 3, 1])


def test_the_peers_rates_are_their_rows_over_the_timed_seconds(monkeypatch):
  """Keras and PyTorch workers (their frameworks stood in for): samples/s is batch x steps,
  or the epoch's pairs, over the timed seconds; sentences/s counts every sentence decoded;
  Keras' compile time is its first step less a steady one; Keras' output length counts
  END where it came (a text cut at the length limit has none)."""
  from types import SimpleNamespace
  from seq2seq_jax.bench import workers
  monkeypatch.setattr(workers, "_timed", lambda fn, *args: (fn(*args), 2.0)[1])
  model = SimpleNamespace(train_on_batch=lambda x, y: None, fit=lambda *a, **k: SimpleNamespace(
      history={"loss": [0.5]}))
  arrays = lambda b: ([np.zeros((b, 6, 12)), np.zeros((b, 9, 14))], np.zeros((b, 9, 14)))
  keras = SimpleNamespace(shapes=dict(work.QUICK_SHAPES), seed_model=model, real_model=model,
                          _seed_arrays=arrays, real_x=[np.zeros((10, 3, 5)), np.zeros((10, 4, 7))],
                          real_y=np.zeros((10, 4, 7)))
  assert workers.KerasWorker.train(keras, 8, 3)["samples_per_s"] == 12.0
  assert workers.KerasWorker.train(keras, 8, 3, mode="fit")["samples_per_s"] == 12.0
  assert workers.KerasWorker.epoch(keras)["samples_per_s"] == 5.0
  times = iter([5.0, 1.5, 1.0, 1.2])
  monkeypatch.setattr(workers, "_timed", lambda fn, *args: (fn(*args), next(times))[1])
  assert workers.KerasWorker.setup(keras)["compile_s"] == 4.0

  clock = iter([10.0, 12.0])
  monkeypatch.setattr(workers, "time", SimpleNamespace(perf_counter=lambda: next(clock)))

  class Dense:
    def get_weights(self):
      return [np.zeros((4, 9)), np.zeros(9)]
  outputs = iter(["ab", "ab", "abcde", "abc"])  # the first builds the models, untimed
  keras.real = {"test_src": np.ones((3, 5), np.int32), "test_tgt": np.ones((3, 6), np.int32),
                "src_vocab": 7, "tgt_vocab": 9}
  keras.real_model = SimpleNamespace(layers=[Dense()])
  keras.keras_import = SimpleNamespace(
      example_decoder=lambda model, chars, max_len, predict: lambda source: next(outputs))
  decoded = workers.KerasWorker.decode(keras, "real", 1, 3)
  assert decoded == {"sentences_per_s": 1.5, "mean_output_len": pytest.approx((3 + 5 + 4) / 3)}

  clock = iter([10.0, 12.0])
  ends = lambda model, src, start, end, max_len: np.full((len(src), 3), 5)
  torch = SimpleNamespace(shapes=dict(work.QUICK_SHAPES), seed_model=None, real_model=None,
                          peer=SimpleNamespace(greedy_decode=ends),
                          real={"test_src": np.ones((6, 4), np.int32), "test_tgt": np.ones((6, 5), np.int32)})
  assert workers.TorchWorker.decode(torch, "real", 4, 6)["sentences_per_s"] == 3.0  # 4 + 2 rows

"""`seq2seq-jax benchmark`, the coordinator of the workers and their rounds.

seq2seq_jax against Keras 3 (JAX backend) and PyTorch on the same work, measured side by
side in one run.

Each framework runs in its own worker process (a JAX thread pool in the same process
starves PyTorch's) that waits, idle, on its stdin for the next measurement, so the
rounds alternate between frameworks and every framework sees the same machine noise;
the report gives medians over rounds, and ratios of ours to the peers' (report.py).
Every worker gets the same allocator (mimalloc when installed, as `seq2seq-jax train`
uses).

The work:
- train at the Keras example's shapes (batch 64, source 16 steps over 71 tokens, target
  59 steps over 93, LSTM 256): our jitted train step, Keras' `train_on_batch` and `fit`
  on the example's model as published, a plain PyTorch `nn.LSTM` port;
- an epoch of real-length pairs (--data; by default real English -> French text, the
  French gettext catalogs of the machine's software, else the embedded numbers:fr): we
  bucket by length and mask, the Keras example pads every pair to the data set's
  maximum, PyTorch pads each batch to its longest pair;
- greedy decoding: our batched decoder, the example's one-`predict`-per-character loop,
  a batched PyTorch loop; at the seed shapes with END suppressed (all 59 steps, equal
  work everywhere) and on held-out real pairs after training (each stops at its END).

- microseconds per time step of one LSTM layer: our scan at several unrolls (forward, and
  forward plus backward), and on an NVIDIA GPU cuDNN's (jax.experimental.rnn) beside it.

Wherever JAX has a GPU (a jax[cuda...] build installed) every worker runs there: no
mimalloc and no CPU device flags, XLA_PYTHON_CLIENT_PREALLOCATE=false so that the three
processes share the GPU, training batches 64, 256, 1024 and 4096, decoding batches up to
4096, our train step with lstm_impl=auto (cuDNN) and =scan side by side, and the matmul
limit is the device's float32 rate on a 4096 x 4096 matmul at the highest precision
(bfloat16 and JAX's default precision measured beside it). On a CPU it runs as before.

The shapes and the real-length pairs are in work.py, the workers in workers.py, the
medians, ratios and tables in report.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from typing import Any

from seq2seq_jax.bench.report import summarise
from seq2seq_jax.bench.work import (BUCKET_WIDTH, QUICK_SHAPES, SEED_SHAPES, real_length_data,
                                    resolve_real_data)

PEERS = ("keras", "torch")
# by the platform JAX's worker finds: (training batches beyond the seed batch, decoding batches)
BATCHES = {"cpu": ((256, 1024), (1, 64, 512, 2048)),
           "accelerator": ((256, 1024, 4096), (1, 64, 256, 1024, 4096))}
SCAN_UNROLLS = (1, 2, 4, 8)  # the scan's unrolls measured per recurrent step
ACCELERATOR_MATMUL = 4096  # n of the n x n matmuls that give an accelerator's limit


# ---------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------

class WorkerProcess:
  """One worker process (workers.py): ops in, answers out, its stderr in a log."""

  def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], log_dir: str):
    self.name = name
    self.log_path = os.path.join(log_dir, f"{name}.log")
    self.log = open(self.log_path, "w")
    self.proc = subprocess.Popen([sys.executable, "-m", "seq2seq_jax.bench.workers", "--worker", name],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                 text=True, env=env)
    self._send(spec)

  def _send(self, message: dict[str, Any]) -> Any:
    from seq2seq_jax.errors import UserError
    try:
      self.proc.stdin.write(json.dumps(message) + "\n")
      self.proc.stdin.flush()
      line = self.proc.stdout.readline()
    except BrokenPipeError:  # it died between two ops; not a closed stdout (the CLI's 141)
      line = ""
    if not line:
      self.log.flush()
      with open(self.log_path) as f:
        tail = f.read()[-2000:]
      raise UserError(f"the {self.name} benchmark worker died (exit {self.proc.wait()}); "
                      f"its log ends:\n{tail}")
    answer = json.loads(line)
    if not answer["ok"]:
      raise UserError(f"the {self.name} benchmark worker failed: {answer['error']}")
    return answer.get("result")

  def __call__(self, op: str, **kwargs) -> Any:
    return self._send(dict(kwargs, op=op))

  def close(self) -> dict[str, Any]:
    result = self("finish")
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    self.log.close()
    return result


def worker_env(allocator: str) -> tuple[dict[str, str], str]:
  """The environment every worker runs in, and the allocator it names. Every worker gets
  the allocator `seq2seq-jax train` preloads (runtime.allocator_environment: none where a
  GPU/TPU backend is installed); the seq2seq_jax worker also gets its CPU devices, added
  by worker_devices. With an accelerator backend, the JAX processes (ours and Keras')
  allocate its memory as they need it instead of 75% each up front."""
  from seq2seq_jax.runtime import accelerator_installed, allocator_environment
  env = dict(os.environ, KERAS_BACKEND="jax")
  env.pop("LD_PRELOAD", None)
  env.pop("SEQ2SEQ_JAX_MIMALLOC", None)
  accelerator = accelerator_installed(env)
  if accelerator:
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  preload = allocator_environment(env) if allocator == "mimalloc" else {}
  env.update(preload, SEQ2SEQ_JAX_MIMALLOC="0")
  if preload:
    return env, "mimalloc"
  if allocator == "mimalloc":
    return env, ("system (an accelerator backend is installed)" if accelerator
                 else "system (mimalloc not installed)")
  return env, "system"


def worker_devices(env: dict[str, str], batch: int) -> dict[str, str]:
  """env with the XLA CPU device settings `seq2seq-jax train` uses at this batch size."""
  from seq2seq_jax.runtime import device_environment
  return dict(env, **device_environment(batch, env))


def machine_info() -> dict[str, Any]:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  except OSError:
    pass
  versions = {}
  for package in ("jax", "flax", "keras", "torch"):
    try:
      from importlib.metadata import version
      versions[package] = version(package)
    except Exception:
      versions[package] = None
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "versions": versions}


def available_peers(wanted: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
  found, skipped = [], {}
  for peer in wanted:
    if importlib.util.find_spec(peer) is None:
      skipped[peer] = f"{peer} is not installed: pip install 'seq2seq_jax[bench]'"
    else:
      found.append(peer)
  return found, skipped


def run_benchmark(rounds: int = 5, peers: tuple[str, ...] = PEERS, quick: bool = False,
                  allocator: str = "mimalloc", data: str = "auto", train_steps: int = 30,
                  big_batches: tuple[int, ...] | None = None,
                  decode_batches: tuple[int, ...] | None = None,
                  progress=None) -> dict[str, Any]:
  """Runs the whole comparison; returns the report (see report.format_report). Batches
  None: BATCHES for the platform JAX's worker runs on."""
  say = progress or (lambda message: None)
  shapes = dict(QUICK_SHAPES if quick else SEED_SHAPES)
  if quick:
    train_steps, big_batches, decode_batches = 3, (16,), (1, 8)
  found, skipped = available_peers(peers)
  env, allocator_name = worker_env(allocator)
  report: dict[str, Any] = {"machine": dict(machine_info(), allocator=allocator_name),
                            "rounds": rounds, "shapes": shapes, "skipped": skipped}
  with tempfile.TemporaryDirectory(prefix="seq2seq_jax_bench_") as tmp:
    data_path = os.path.join(tmp, "real.npz")
    spec, why = resolve_real_data(data, quick)
    say(f"real-length pairs: {spec} ({why})")
    report["real_data"] = dict(real_length_data(quick, data_path, spec), chosen=why)
    spec = {"shapes": shapes, "real_data": data_path, "bucket_width": BUCKET_WIDTH}
    names = ["seq2seq_jax"] + found
    workers = {}
    try:
      for name in names:
        say(f"starting the {name} worker")
        workers[name] = WorkerProcess(
            name, spec, worker_devices(env, shapes["batch"]) if name == "seq2seq_jax" else env, tmp)
      report["compile_s"], setups = {}, {}
      for name, worker in workers.items():
        setups[name] = setup = worker("setup")
        report["compile_s"][name] = setup["compile_s"]
        if name == "seq2seq_jax":
          report["seq2seq_jax_devices"] = {"devices": setup["devices"], "xla_flags": setup["xla_flags"]}
      ours = setups["seq2seq_jax"]
      accelerator = ours["platform"] != "cpu"
      report["device"] = {
          "platform": ours["platform"], "name": ours["device_kind"], "count": ours["devices"],
          "lstm_impl": ours["lstm_impl"], "default_matmul_precision": ours["default_matmul_precision"],
          "peers": {name: {k: v for k, v in setups[name].items() if k != "compile_s"}
                    for name in found if name in setups}}
      default_big, default_decodes = BATCHES["accelerator" if accelerator else "cpu"]
      if accelerator and not quick:  # steps of a few milliseconds: time more of them
        train_steps = max(train_steps, 100)
      big_batches = default_big if big_batches is None else big_batches
      decode_batches = default_decodes if decode_batches is None else decode_batches
      report.update(_matmul_rates(workers, accelerator and not quick))
      report.update(_rounds(workers, rounds, shapes, train_steps, big_batches, decode_batches, say,
                            scan_beside=ours["lstm_impl"] != "scan", peer_batches=accelerator))
      report["recurrent"] = _recurrent_steps(workers["seq2seq_jax"], rounds, shapes, quick,
                                             cudnn=ours["cuda"], accelerator=accelerator, say=say)
      finished = {name: w.close() for name, w in workers.items()}
      report["peak_rss_mib"] = {name: f["peak_rss_mib"] for name, f in finished.items()}
      device_peaks = {name: f["device_peak_mib"] for name, f in finished.items() if "device_peak_mib" in f}
      if device_peaks:
        report["device_peak_mib"] = device_peaks
      workers = {}
    finally:
      for worker in workers.values():
        worker.proc.kill()
  summarise(report)
  return report


def _shown(value) -> str:
  """A measurement in a progress line: a number, or a dict's numbers."""
  if isinstance(value, dict):
    return ", ".join(f"{k} {_shown(v)}" for k, v in value.items() if isinstance(v, (int, float)))
  return f"{value:,.1f}" if isinstance(value, float) else str(value)


def _recorder(samples: dict[str, list], say):
  """record(key, value): keeps a measurement in samples[key] and says it as it is taken
  (a run cut short has still told it)."""
  def record(key, value):
    samples.setdefault(key, []).append(value)
    say(f"  {key}: {_shown(value)}")
  return record


def _matmul_rates(workers, accelerator: bool) -> dict[str, Any]:
  """The matmul limit: on a CPU the best f32 1024 x 1024 rate of XLA and PyTorch; on an
  accelerator the 4096 x 4096 float32 rate at the highest precision (XLA, and PyTorch's
  own float32), with bfloat16 and JAX's default float32 precision (TF32 where the GPU has
  it) beside it."""
  if not accelerator:
    return {"matmul_gflops": {name: workers[name]("matmul")["gflops"]
                              for name in workers if name != "keras"}}
  n, repeats = ACCELERATOR_MATMUL, 10
  ours = workers["seq2seq_jax"]
  rates = {"seq2seq_jax": ours("matmul", n=n, repeats=repeats, precision="highest")["gflops"]}
  if "torch" in workers:
    rates["torch"] = workers["torch"]("matmul", n=n, repeats=repeats)["gflops"]
  return {"matmul_gflops": rates, "matmul_n": n,
          "matmul_gflops_bf16": ours("matmul", n=n, repeats=repeats, dtype="bfloat16")["gflops"],
          "matmul_gflops_default_precision": ours("matmul", n=n, repeats=repeats)["gflops"]}


def _recurrent_steps(worker, rounds, shapes, quick, cudnn, accelerator, say) -> dict[str, Any]:
  """Per-step times of one LSTM layer at the seed shapes' batch, latent and target length
  (on an accelerator also at batch 1024): the scan at SCAN_UNROLLS, cuDNN beside it on an
  NVIDIA GPU. Per-round samples; report.py takes the medians."""
  unrolls = (1, 4) if quick else SCAN_UNROLLS
  batches = (shapes["batch"],) + ((1024,) if accelerator and not quick else ())
  variants = [("scan", u) for u in unrolls] + ([("cudnn", 1)] if cudnn else [])
  samples: dict[str, list] = {}
  record = _recorder(samples, say)
  for r in range(rounds):
    say(f"recurrent steps: round {r + 1}/{rounds}")
    for batch in batches:
      for impl, unroll in variants:
        record(f"{batch}/{impl}" + (f"/{unroll}" if impl == "scan" else ""), worker(
            "recurrent", batch=batch, steps=shapes["tgt_len"], impl=impl, unroll=unroll,
            repeats=3 if quick else 5))
  return {"steps": shapes["tgt_len"], "latent": shapes["latent"], "samples": samples,
          "cudnn": "measured" if cudnn else "not measured: no NVIDIA GPU with JAX's CUDA build"}


def _rounds(workers, rounds, shapes, train_steps, big_batches, decode_batches, say,
            scan_beside: bool = False, peer_batches: bool = False) -> dict[str, Any]:
  """Alternating rounds (the order rotates each round), in phases: the seed-shape work at
  the example's batch size and the real-length epochs; then memory over consecutive
  epochs; then larger batches (which raise every allocator's high-water mark, so they come
  after the memory readings); then decoding the real pairs with the trained models.
  scan_beside: also our train step with lstm_impl=scan (where auto runs cuDNN);
  peer_batches: the peers train at the larger batches too (on an accelerator)."""
  batch = shapes["batch"]
  samples: dict[str, list] = {}
  names = list(workers)
  record = _recorder(samples, say)

  def alternate(phase, measure):
    for r in range(rounds):
      say(f"{phase}: round {r + 1}/{rounds}")
      for name in names[r % len(names):] + names[:r % len(names)]:
        measure(name, workers[name])

  min_steps = 5 if peer_batches else 2  # the timed steps at the larger batches
  small_decodes = [b for b in decode_batches if b <= batch]
  large_decodes = [b for b in decode_batches if b > batch]

  def seed_work(name, w):
    record(f"train/{name}", w("train", batch=batch, steps=train_steps)["samples_per_s"])
    if name == "seq2seq_jax":  # mixed precision, beside it (the peers run float32)
      record("train/seq2seq_jax_bf16", w("train", batch=batch, steps=train_steps,
                                         matmul_dtype="bfloat16")["samples_per_s"])
    if name == "seq2seq_jax" and scan_beside:  # cuDNN's layers above; our scan beside them
      record("train/seq2seq_jax_scan", w("train", batch=batch, steps=train_steps,
                                         lstm_impl="scan")["samples_per_s"])
    if name == "keras":
      record("train/keras_fit", w("train", batch=batch, steps=train_steps, mode="fit")["samples_per_s"])
    record(f"epoch/{name}", w("epoch"))
    if name == "keras":  # the example's loop, one sentence at a time (~50 ms each)
      for predict, n in (("predict", 4), ("predict_on_batch", 8)):
        record(f"decode_seed/keras_{predict}/1",
               w("decode", which="seed", batch=1, sentences=n, predict=predict)["sentences_per_s"])
      return
    for b in small_decodes:
      record(f"decode_seed/{name}/{b}",
             w("decode", which="seed", batch=b, sentences=max(b, min(2048, 64 * b)))["sentences_per_s"])

  def large_batches(name, w):
    if name == "seq2seq_jax":
      for big in big_batches:
        steps = max(min_steps, train_steps * batch // big)
        record(f"train_batch/{big}", w("train", batch=big, steps=steps)["samples_per_s"])
        if scan_beside:
          record(f"train_batch_scan/{big}", w("train", batch=big, steps=steps,
                                              lstm_impl="scan")["samples_per_s"])
    elif peer_batches:
      for big in big_batches:
        steps = max(min_steps, train_steps * batch // big)
        record(f"train_batch_peer/{name}/{big}", w("train", batch=big, steps=steps)["samples_per_s"])
    if name != "keras":
      for b in large_decodes:
        record(f"decode_seed/{name}/{b}",
               w("decode", which="seed", batch=b, sentences=max(b, 2048))["sentences_per_s"])
    if name == "seq2seq_jax":  # mixed precision beside it (the peers run float32)
      for b in large_decodes:
        record(f"decode_seed/seq2seq_jax_bf16/{b}", w("decode", which="seed", batch=b,
               sentences=max(b, 2048), matmul_dtype="bfloat16")["sentences_per_s"])

  def real_decoding(name, w):  # each trained model ends its sentences where it learned to
    if name == "keras":
      record("decode_real/keras_predict_on_batch/1",
             w("decode", which="real", batch=1, sentences=5, predict="predict_on_batch"))
      return
    for b in decode_batches:
      record(f"decode_real/{name}/{b}",
             w("decode", which="real", batch=b, sentences=64 if b == 1 else 2048))

  alternate("batch %d and real-length epochs" % batch, seed_work)
  for name in names:  # memory over consecutive epochs, nothing else in between
    for _ in range(3):
      record(f"epoch_tail/{name}", workers[name]("epoch")["rss_mib"])
    record(f"peak_rss_batch{batch}/{name}", workers[name]("finish")["peak_rss_mib"])
  alternate("larger batches", large_batches)
  alternate("decoding real pairs", real_decoding)
  return {"samples": samples}

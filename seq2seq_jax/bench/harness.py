"""`seq2seq-jax benchmark`: seq2seq_jax against Keras 3 (JAX backend) and PyTorch on the
same work, measured side by side in one run.

Each framework runs in its own worker process (a JAX thread pool in the same process
starves PyTorch's) that waits, idle, on its stdin for the next measurement, so the
rounds alternate between frameworks and every framework sees the same machine noise;
the report gives medians over rounds. Every worker gets the same allocator (mimalloc
when installed, as `seq2seq-jax train` uses).

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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from seq2seq_jax.vocab import END_ID, START_ID

SEED_SHAPES = {"batch": 64, "src_len": 16, "src_vocab": 71, "tgt_len": 59, "tgt_vocab": 93,
               "latent": 256}
QUICK_SHAPES = {"batch": 8, "src_len": 6, "src_vocab": 12, "tgt_len": 9, "tgt_vocab": 14,
                "latent": 16}
PEERS = ("keras", "torch")
END_SUPPRESSED = -1e9  # output bias of END for seed-shape decoding: every row runs all steps


def train_flops_per_sample(src_len: int, tgt_len: int, tgt_vocab: int, latent: int) -> float:
  """Matmul FLOPs of one training sample: 3 x the forward pass (forward, and backward
  for inputs and weights); one-hot input projections count as row lookups, not matmuls."""
  gates = 4 * latent
  forward = 2 * (src_len * latent * gates + tgt_len * (latent * gates + latent * tgt_vocab))
  return 3.0 * forward


def rss_mib() -> tuple[float, float]:
  """(current, peak) resident memory of this process in MiB."""
  with open("/proc/self/statm") as f:
    current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
  return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args) -> float:
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start


def seed_batch(shapes: dict[str, int], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random full-length token ids at the seed shapes (ids >= 4: no padding, no specials)."""
  rng = np.random.default_rng(seed)
  tgt = rng.integers(4, shapes["tgt_vocab"], (batch, shapes["tgt_len"] + 1)).astype(np.int32)
  return {"src": rng.integers(4, shapes["src_vocab"], (batch, shapes["src_len"])).astype(np.int32),
          "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:],
          "tgt_mask": np.ones((batch, shapes["tgt_len"]), bool),
          "index": np.arange(batch, dtype=np.int32)}


# ---------------------------------------------------------------------------
# Workers: one per framework, each in its own process
# ---------------------------------------------------------------------------

class Worker:
  """Answers ops: setup, train, epoch, decode, matmul, finish."""

  def __init__(self, spec: dict[str, Any]):
    self.spec = spec
    self.shapes = spec["shapes"]
    real = np.load(spec["real_data"])
    self.real = {k: real[k] for k in real.files}

  def finish(self) -> dict[str, Any]:
    current, peak = rss_mib()
    return {"rss_mib": current, "peak_rss_mib": peak}


class JaxWorker(Worker):
  """seq2seq_jax: the library's own model, train step and decoder."""

  def __init__(self, spec):
    super().__init__(spec)
    import jax
    from seq2seq_jax import data as data_lib
    from seq2seq_jax import train as train_lib
    from seq2seq_jax.config import Config, validate
    from seq2seq_jax.decode import make_greedy_decoder
    from seq2seq_jax.model import build_model
    from seq2seq_jax.optim import build_optimizer
    from seq2seq_jax.parallel import DataParallel
    self.jax, self.data_lib, self.train_lib = jax, data_lib, train_lib
    # the devices `seq2seq-jax train` gets here (runtime.py: one per CPU core), batches
    # split over them as in training
    self.parallel = DataParallel()
    self.make_greedy_decoder = make_greedy_decoder
    shapes = self.shapes
    # the example's model: one-hot inputs, LSTM encoder/decoder, no attention, Keras RMSprop
    self.config = validate(Config(
        input_mode="onehot", attention="none", latent_dim=shapes["latent"], num_layers=1,
        dropout=0.0, reverse_source=False, batch_size=shapes["batch"], lr_schedule="constant",
        learning_rate=1e-3, clip_norm=0.0, loss_on_padding=False, bucket_width=spec["bucket_width"]))
    self.tx = build_optimizer(self.config, 1)
    self.rng = jax.random.key(0)
    self.build_model = build_model
    # (model, step) per matmul dtype: float32 as the peers, and bfloat16 mixed precision
    self.seed_programs = {}
    self.seed_model, self.seed_step = self._seed_program("float32")
    self.states = {(shapes["batch"], "float32"): self._new_state(self.seed_model)}
    self.real_model = build_model(self.config, int(self.real["src_vocab"]), int(self.real["tgt_vocab"]))
    self.real_state = self._new_state(self.real_model)
    self.real_step = self._jit_step(self.real_model, self.config)
    self.real_train = data_lib.Encoded(self.real["train_src"], self.real["train_src_len"],
                                       self.real["train_tgt"], self.real["train_tgt_len"])
    self.epochs = 0
    self.decoders = {}

  def _jit_step(self, model, config):
    """The library's train step for model, jitted as `seq2seq-jax train` jits it."""
    return self.jax.jit(functools.partial(self.train_lib.train_step, model=model, tx=self.tx,
                                          config=config), donate_argnums=(0,))

  def _new_state(self, model):
    return self.parallel.replicate(self.train_lib.create_state(self.config, model, self.tx))

  def _place(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Split over the devices when the rows divide evenly (a single sentence stays on one)."""
    if len(batch["src"]) % self.parallel.size:
      return self.jax.device_put(batch, self.parallel.devices[0])
    return self.parallel.shard_batch(batch)

  def setup(self) -> dict[str, Any]:
    jax = self.jax
    size = self.shapes["batch"]
    batch = self._place(seed_batch(self.shapes, size))
    start = time.perf_counter()
    key = (size, "float32")
    lowered = self.seed_step.lower(self.states[key], batch, self.rng)
    trace_s = time.perf_counter() - start
    lowered.compile()
    compile_s = time.perf_counter() - start
    for _ in range(2):  # warm the jit cache (a second, cached, compile of the same program)
      self.states[key], _ = self.seed_step(self.states[key], batch, self.rng)
    jax.block_until_ready(self.states[key])
    return {"compile_s": compile_s, "trace_s": trace_s, "devices": self.parallel.size,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}

  def _seed_program(self, matmul_dtype: str):
    if matmul_dtype not in self.seed_programs:
      config = dataclasses.replace(self.config, matmul_dtype=matmul_dtype)
      model = self.build_model(config, self.shapes["src_vocab"], self.shapes["tgt_vocab"])
      self.seed_programs[matmul_dtype] = (model, self._jit_step(model, config))
    return self.seed_programs[matmul_dtype]

  def train(self, batch: int, steps: int, matmul_dtype: str = "float32") -> dict[str, Any]:
    jax = self.jax
    arrays = self._place(seed_batch(self.shapes, batch))
    model, train_step = self._seed_program(matmul_dtype)
    state = self.states.get((batch, matmul_dtype))
    if state is None:  # another batch size or dtype: its own state, compiled and warmed once
      state = self._new_state(model)
      state, _ = train_step(state, arrays, self.rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = self.parallel.settle(train_step(state, arrays, self.rng))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    self.states[(batch, matmul_dtype)] = state
    return {"samples_per_s": batch * steps / seconds, "seconds": seconds}

  def epoch(self) -> dict[str, Any]:
    jax, data_lib = self.jax, self.data_lib
    before = self.train_lib.compilation_count()
    batches = data_lib.epoch_batches(self.real_train, self.config.batch_size, 0, self.epochs,
                                     self.config.bucket_width)
    start = time.perf_counter()
    state = self.real_state
    for rows in batches:
      batch = data_lib.make_batch(self.real_train, rows, self.config.batch_size,
                                  self.config.bucket_width)
      state, metrics = self.parallel.settle(
          self.real_step(state, self.parallel.shard_batch(batch), self.rng))
    loss = float(metrics["loss"])
    seconds = time.perf_counter() - start
    self.real_state = state
    self.epochs += 1
    return {"samples_per_s": len(self.real_train) / seconds, "seconds": seconds, "loss": loss,
            "compilations": self.train_lib.compilation_count() - before, "rss_mib": rss_mib()[0]}

  def _decoder(self, which: str, max_len: int, matmul_dtype: str):
    if (which, matmul_dtype) not in self.decoders:
      model = self._seed_program(matmul_dtype)[0] if which == "seed" else self.real_model
      self.decoders[(which, matmul_dtype)] = self.make_greedy_decoder(model, max_len)
    return self.decoders[(which, matmul_dtype)]

  def decode(self, which: str, batch: int, sentences: int,
             matmul_dtype: str = "float32") -> dict[str, Any]:
    """Sentences per second decoding `sentences` sources in batches of `batch` (seed
    shapes: with the float32 step's parameters, through float32 or bfloat16 matmuls)."""
    jax = self.jax
    if which == "seed":
      params = jax.tree.map(lambda x: x, self.states[(self.shapes["batch"], "float32")]["params"])
      bias = params["output_dense"]["bias"]
      params["output_dense"]["bias"] = bias.at[END_ID].set(END_SUPPRESSED)
      src = seed_batch(self.shapes, batch)["src"]
      max_len = self.shapes["tgt_len"]
      sources = [src] * max(1, sentences // batch)
    else:
      params = self.real_state["params"]
      max_len = self.real["test_tgt"].shape[1] - 1
      sources, real_rows = real_decode_batches(self.real, batch, sentences, pad=True)
    decoder = self._decoder(which, max_len, matmul_dtype)
    if batch % self.parallel.size:  # one sentence: one device
      params = jax.device_put(params, self.parallel.devices[0])
    place = lambda src: self._place({"src": src})["src"]
    jax.block_until_ready(decoder(params, place(sources[0])))  # compile outside the timing
    start = time.perf_counter()
    outputs = [self.parallel.settle(decoder(params, place(src))) for src in sources]
    outputs = [np.asarray(o) for o in outputs]
    seconds = time.perf_counter() - start
    if which == "seed":
      real_rows = [batch] * len(sources)
    lengths = np.concatenate([_output_length(o[:n]) for o, n in zip(outputs, real_rows)])
    return {"sentences_per_s": sum(real_rows) / seconds, "mean_output_len": float(lengths.mean())}

  def matmul(self) -> dict[str, Any]:
    jax = self.jax
    n, repeats = 1024, 20
    a = self.parallel.replicate(jax.random.normal(jax.random.key(0), (n, n)))
    x = jax.device_put(a, self.parallel.batch_sharding)  # rows split over the devices

    @jax.jit
    def chain(x):
      for _ in range(repeats):
        x = (x @ a) * 0.03  # a dependent chain: each matmul really runs
      return x

    jax.block_until_ready(chain(x))
    best = 0.0
    for _ in range(5):
      seconds = _timed(lambda: jax.block_until_ready(chain(x)))
      best = max(best, 2 * n ** 3 * repeats / seconds / 1e9)
    return {"gflops": best}


def real_decode_batches(real: dict[str, np.ndarray], batch: int, sentences: int,
                        pad: bool) -> tuple[list[np.ndarray], list[int]]:
  """The first `sentences` held-out sources sorted by length (as decode_texts does) and cut
  into batches, the last padded to `batch` rows when pad; also each batch's real rows."""
  src = real["test_src"][:sentences]
  src = src[np.argsort((src != 0).sum(1), kind="stable")]
  chunks = [src[i:i + batch] for i in range(0, len(src), batch)]
  return [_pad_rows(c, batch) if pad else c for c in chunks], [len(c) for c in chunks]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + x.shape[1:], x.dtype)
  out[:len(x)] = x
  return out


def _output_length(ids_BxL: np.ndarray, end_id: int = END_ID) -> np.ndarray:
  """Tokens up to and including the first END (all of them when there is none)."""
  ended_BxL = ids_BxL == end_id
  return np.where(ended_BxL.any(1), ended_BxL.argmax(1) + 1, ids_BxL.shape[1])


class KerasWorker(Worker):
  """The Keras lstm_seq2seq example as published, Keras 3 on its JAX backend."""

  def __init__(self, spec):
    super().__init__(spec)
    from seq2seq_jax import keras_import
    self.keras_import = keras_import
    s = self.shapes
    self.seed_model = keras_import.build_example_model(s["src_vocab"], s["tgt_vocab"], s["latent"])
    self.real_model = keras_import.build_example_model(int(self.real["src_vocab"]),
                                                       int(self.real["tgt_vocab"]), s["latent"])
    # the example's arrays for the real pairs: one-hot, padded to the data set's maximum
    self.real_x = [_onehot(self.real["train_src"], int(self.real["src_vocab"])),
                   _onehot(self.real["train_tgt"][:, :-1], int(self.real["tgt_vocab"]))]
    self.real_y = _onehot(self.real["train_tgt"][:, 1:], int(self.real["tgt_vocab"]))

  def _seed_arrays(self, batch: int):
    b = seed_batch(self.shapes, batch)
    return ([_onehot(b["src"], self.shapes["src_vocab"]), _onehot(b["tgt_in"], self.shapes["tgt_vocab"])],
            _onehot(b["tgt_out"], self.shapes["tgt_vocab"]))

  def setup(self) -> dict[str, Any]:
    x, y = self._seed_arrays(self.shapes["batch"])
    first = _timed(self.seed_model.train_on_batch, x, y)
    steady = min(_timed(self.seed_model.train_on_batch, x, y) for _ in range(3))
    self.seed_model.fit(x, y, batch_size=self.shapes["batch"], epochs=1, verbose=0)  # build fit's step
    return {"compile_s": first - steady}

  def train(self, batch: int, steps: int, mode: str = "train_on_batch") -> dict[str, Any]:
    x, y = self._seed_arrays(batch)
    if mode == "fit":  # fit over steps batches of the same arrays
      xs, ys = [np.concatenate([a] * steps) for a in x], np.concatenate([y] * steps)
      seconds = _timed(lambda: self.seed_model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0,
                                                   shuffle=False))
    else:
      seconds = _timed(lambda: [self.seed_model.train_on_batch(x, y) for _ in range(steps)])
    return {"samples_per_s": batch * steps / seconds, "seconds": seconds}

  def epoch(self) -> dict[str, Any]:
    history = {}
    seconds = _timed(lambda: history.update(self.real_model.fit(
        self.real_x, self.real_y, batch_size=self.shapes["batch"], epochs=1, verbose=0).history))
    return {"samples_per_s": len(self.real_y) / seconds, "seconds": seconds,
            "loss": float(history["loss"][-1]), "rss_mib": rss_mib()[0]}

  def decode(self, which: str, batch: int, sentences: int, predict: str = "predict") -> dict[str, Any]:
    """The example's decode_sequence, one sentence at a time (batch is ignored)."""
    model = self.seed_model if which == "seed" else self.real_model
    vocab = self.shapes["tgt_vocab"] if which == "seed" else int(self.real["tgt_vocab"])
    # one character per token id, START and END where the example's loop looks them up
    tgt_chars = [chr(0x100 + i) for i in range(vocab)]
    tgt_chars[START_ID], tgt_chars[END_ID] = "\t", "\n"
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"][0]
    kernel, bias = dense.get_weights()
    if which == "seed":
      dense.set_weights([kernel, np.where(np.arange(vocab) == END_ID, END_SUPPRESSED, bias)])
      src = seed_batch(self.shapes, sentences)["src"]
      src_vocab, max_len = self.shapes["src_vocab"], self.shapes["tgt_len"] - 1
    else:
      src = self.real["test_src"][:sentences]
      src_vocab, max_len = int(self.real["src_vocab"]), self.real["test_tgt"].shape[1] - 2
    decode_sequence = self.keras_import.example_decoder(model, tgt_chars, max_len, predict=predict)
    decode_sequence(_onehot(src[:1], src_vocab))  # build the inference models' functions
    start = time.perf_counter()
    outputs = [decode_sequence(_onehot(src[i:i + 1], src_vocab)) for i in range(len(src))]
    seconds = time.perf_counter() - start
    if which == "seed":
      dense.set_weights([kernel, bias])
    lengths = [len(o) + (len(o) <= max_len) for o in outputs]  # tokens + END, as _output_length
    return {"sentences_per_s": len(src) / seconds, "mean_output_len": float(np.mean(lengths))}


def _onehot(ids: np.ndarray, vocab: int) -> np.ndarray:
  return np.eye(vocab, dtype=np.float32)[ids]


class TorchWorker(Worker):
  """The same model in PyTorch nn.LSTM (seq2seq_jax.bench.torch_peer)."""

  def __init__(self, spec):
    super().__init__(spec)
    from seq2seq_jax.bench import torch_peer
    self.peer = torch_peer
    s = self.shapes
    self.seed_model, self.seed_opt = torch_peer.build(s["src_vocab"], s["tgt_vocab"], s["latent"])
    self.real_model, self.real_opt = torch_peer.build(int(self.real["src_vocab"]),
                                                      int(self.real["tgt_vocab"]), s["latent"])
    self.epochs = 0

  def setup(self) -> dict[str, Any]:
    self.train(self.shapes["batch"], 2)
    return {"compile_s": 0.0}

  def train(self, batch: int, steps: int) -> dict[str, Any]:
    b = seed_batch(self.shapes, batch)
    step = lambda: self.peer.train_step(self.seed_model, self.seed_opt, b["src"], b["tgt_in"], b["tgt_out"])
    seconds = _timed(lambda: [step() for _ in range(steps)])
    return {"samples_per_s": batch * steps / seconds, "seconds": seconds}

  def epoch(self) -> dict[str, Any]:
    """Shuffled batches, each padded to its own longest pair; padding ignored by the loss."""
    src, src_len = self.real["train_src"], self.real["train_src_len"]
    tgt, tgt_len = self.real["train_tgt"], self.real["train_tgt_len"]
    batches = torch_batches(len(src), self.shapes["batch"], self.epochs)
    start = time.perf_counter()
    for rows in batches:
      s_len, t_len = int(src_len[rows].max()), int(tgt_len[rows].max())
      tgt_rows = tgt[rows, :t_len + 1]
      loss = self.peer.train_step(self.real_model, self.real_opt, src[rows, :s_len],
                                  tgt_rows[:, :-1], tgt_rows[:, 1:], ignore_index=0)
    seconds = time.perf_counter() - start
    self.epochs += 1
    return {"samples_per_s": len(src) / seconds, "seconds": seconds, "loss": loss,
            "rss_mib": rss_mib()[0]}

  def decode(self, which: str, batch: int, sentences: int) -> dict[str, Any]:
    if which == "seed":
      model, end_id, max_len = self.seed_model, -1, self.shapes["tgt_len"]  # END suppressed
      sources = [seed_batch(self.shapes, batch)["src"]] * max(1, sentences // batch)
    else:
      model, end_id, max_len = self.real_model, END_ID, self.real["test_tgt"].shape[1] - 1
      sources, _ = real_decode_batches(self.real, batch, sentences, pad=False)
    decode = lambda src: self.peer.greedy_decode(model, src, START_ID, end_id, max_len)
    decode(sources[0])
    start = time.perf_counter()
    outputs = [decode(src) for src in sources]
    seconds = time.perf_counter() - start
    lengths = np.concatenate([_output_length(o) for o in outputs])
    return {"sentences_per_s": sum(len(s) for s in sources) / seconds,
            "mean_output_len": float(lengths.mean())}

  def matmul(self) -> dict[str, Any]:
    return {"gflops": self.peer.matmul_gflops()}


WORKERS = {"seq2seq_jax": JaxWorker, "keras": KerasWorker, "torch": TorchWorker}


def worker_main(name: str) -> int:
  """A worker's loop: one JSON op per stdin line, one JSON answer per stdout line."""
  out = sys.stdout
  sys.stdout = sys.stderr  # library chatter must not reach the answer channel
  spec = json.loads(sys.stdin.readline())
  try:
    worker = WORKERS[name](spec)
    answer = {"ok": True}
  except Exception as error:  # reported to the coordinator, which names the worker
    answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
  out.write(json.dumps(answer) + "\n")
  out.flush()
  if not answer["ok"]:
    return 1
  for line in sys.stdin:
    op = json.loads(line)
    try:
      result = getattr(worker, op.pop("op"))(**op)
      answer = {"ok": True, "result": result}
    except Exception as error:
      answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    out.write(json.dumps(answer) + "\n")
    out.flush()
  return 0


# ---------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------

class WorkerProcess:
  def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], log_dir: str):
    self.name = name
    self.log_path = os.path.join(log_dir, f"{name}.log")
    self.log = open(self.log_path, "w")
    self.proc = subprocess.Popen([sys.executable, "-m", "seq2seq_jax.bench.harness", "--worker", name],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                 text=True, env=env)
    self._send(spec)

  def _send(self, message: dict[str, Any]) -> Any:
    from seq2seq_jax.errors import UserError
    self.proc.stdin.write(json.dumps(message) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
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


REAL_TEXT = "gettext:/usr/share/locale/fr/LC_MESSAGES"  # real English -> French text, offline
REAL_MAX_LEN = (100, 120)  # source, target characters kept (configs/gettext_fr.py's limits)
REAL_PAIRS = {True: (256, 64), False: (4096, 2048)}  # (train, held-out) pairs, by --quick
BUCKET_WIDTH = 16  # seq2seq_jax's length buckets on the real pairs (train's default)


def resolve_real_data(spec: str, quick: bool) -> tuple[str, str]:
  """(data spec, why) of the real-length pairs. "auto": the French gettext catalogs of
  this machine's software (real sentences, whose lengths vary as natural text's do) when
  they hold enough pairs, else the embedded numbers:fr (synthetic, lengths vary little);
  --quick always takes numbers:fr."""
  if spec != "auto":
    return spec, "chosen with --data"
  if quick:
    return "numbers:fr", "--quick"
  from seq2seq_jax import data as data_lib
  directory = data_lib.parse_spec(REAL_TEXT)[1]
  try:
    found = len(_text_pairs(REAL_TEXT))
  except data_lib.DataError as error:
    return "numbers:fr", f"auto: no French gettext catalogs to use ({error})"
  if found < sum(REAL_PAIRS[False]):
    return "numbers:fr", (f"auto: {directory} holds {found} usable pairs, fewer than "
                          f"{sum(REAL_PAIRS[False])}")
  return REAL_TEXT, f"auto: the French gettext catalogs of this machine ({found} usable pairs)"


def _text_pairs(spec: str) -> list[tuple[str, str]]:
  """Every pair of a text data spec whose lengths fit REAL_MAX_LEN."""
  from seq2seq_jax import data as data_lib
  from seq2seq_jax.config import Config
  splits = data_lib.load_splits(Config(data=spec, val_fraction=0.0, test_fraction=0.0,
                                       split_mode="last"))
  return [(s, t) for s, t in splits.train + splits.val + splits.test
          if len(s) <= REAL_MAX_LEN[0] and len(t) <= REAL_MAX_LEN[1]]


def real_length_data(quick: bool, path: str, spec: str = "numbers:fr") -> dict[str, Any]:
  """Real-length pairs encoded as int32 ids, saved for the workers: numbers:fr generated
  with a seed; any other data spec (gettext:DIR, anki:FILE, tsv:FILE) read, its pairs
  longer than REAL_MAX_LEN dropped, and a seeded sample drawn."""
  from seq2seq_jax import data as data_lib
  from seq2seq_jax.config import Config
  train_n, test_n = REAL_PAIRS[quick]
  batch = (QUICK_SHAPES if quick else SEED_SHAPES)["batch"]
  if data_lib.parse_spec(spec)[0] == "numbers":
    config = Config(data=spec, numbers_max=999 if quick else 999_999,
                    numbers_train=train_n, numbers_val=0, numbers_test=test_n)
    splits = data_lib.load_splits(config)
    train, test = splits.train, splits.test
  else:
    pairs = _text_pairs(spec)
    if len(pairs) < 3 * batch:
      raise data_lib.DataError(
          f"--data {spec}: {len(pairs)} pairs of at most {REAL_MAX_LEN[0]} / "
          f"{REAL_MAX_LEN[1]} characters; the real-length epoch needs at least {3 * batch}.")
    order = np.random.default_rng(0).permutation(len(pairs))
    test_n = min(test_n, len(pairs) // 3)
    test = [pairs[i] for i in order[:test_n]]
    train = [pairs[i] for i in order[test_n:test_n + train_n]]
  src_vocab, tgt_vocab = data_lib.build_vocabs(train + test)
  encoded = {name: data_lib.encode_pairs(pairs, src_vocab, tgt_vocab)
             for name, pairs in (("train", train), ("test", test))}
  arrays = {f"{name}_{field}": getattr(e, f) for name, e in encoded.items()
            for field, f in (("src", "src_NxS"), ("src_len", "src_len_N"), ("tgt", "tgt_NxT"),
                             ("tgt_len", "tgt_len_N"))}
  np.savez(path, src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab), **arrays)
  src_len, tgt_len = encoded["train"].src_len_N, encoded["train"].tgt_len_N
  return {"data": spec, "steps_over_real": padded_work(encoded["train"], batch, BUCKET_WIDTH),
          "train_pairs": len(train), "test_pairs": len(test),
          "src_vocab": len(src_vocab), "tgt_vocab": len(tgt_vocab),
          "mean_src_len": float(src_len.mean()), "max_src_len": int(src_len.max()),
          "mean_tgt_len": float(tgt_len.mean()), "max_tgt_len": int(tgt_len.max())}


def torch_batches(n: int, batch: int, epoch: int) -> list[np.ndarray]:
  """The PyTorch port's batches of an epoch: n rows shuffled (seeded by the epoch) and
  cut in order."""
  order = np.random.default_rng([0, epoch]).permutation(n)
  return [order[i:i + batch] for i in range(0, n, batch)]


def padded_work(data, batch: int, bucket_width: int) -> dict[str, float]:
  """Time steps each framework computes in an epoch of data (a data.Encoded) over its real
  steps (source + target lengths): the Keras example pads every pair to the data set's
  longest, the PyTorch port each of its first epoch's batches (torch_batches) to its
  longest pair, seq2seq_jax each length-sorted full batch to its bucket
  (data.epoch_batches and make_batch, as train)."""
  from seq2seq_jax import data as data_lib
  real = float(data.src_len_N.sum() + data.tgt_len_N.sum())
  keras = len(data) * (data.src_NxS.shape[1] + data.tgt_NxT.shape[1] - 1)
  torch = sum(len(rows) * (data.src_len_N[rows].max() + data.tgt_len_N[rows].max())
              for rows in torch_batches(len(data), batch, 0))
  ours = 0
  for rows in data_lib.epoch_batches(data, batch, 0, 0, bucket_width):
    shapes = data_lib.make_batch(data, rows, batch, bucket_width)
    ours += batch * (shapes["src"].shape[1] + shapes["tgt_in"].shape[1])
  return {"seq2seq_jax": ours / real, "keras": keras / real, "torch": float(torch) / real}


def worker_env(allocator: str) -> tuple[dict[str, str], str]:
  """The environment every worker runs in, and the allocator it names. Every worker gets
  the allocator `seq2seq-jax train` preloads (runtime.allocator_environment); the
  seq2seq_jax worker also gets its CPU devices, added by worker_devices."""
  from seq2seq_jax.runtime import allocator_environment
  env = dict(os.environ, KERAS_BACKEND="jax")
  env.pop("LD_PRELOAD", None)
  env.pop("SEQ2SEQ_JAX_MIMALLOC", None)
  preload = allocator_environment(env) if allocator == "mimalloc" else {}
  env.update(preload, SEQ2SEQ_JAX_MIMALLOC="0")
  if preload:
    return env, "mimalloc"
  return env, "system (mimalloc not installed)" if allocator == "mimalloc" else "system"


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


def _median(values: list[float]) -> float:
  return float(statistics.median(values))


def run_benchmark(rounds: int = 5, peers: tuple[str, ...] = PEERS, quick: bool = False,
                  allocator: str = "mimalloc", data: str = "auto", train_steps: int = 30,
                  big_batches: tuple[int, ...] = (256, 1024),
                  decode_batches: tuple[int, ...] = (1, 64, 512, 2048),
                  progress=None) -> dict[str, Any]:
  """Runs the whole comparison; returns the report (see format_report)."""
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
      report["compile_s"] = {}
      for name, worker in workers.items():
        setup = worker("setup")
        report["compile_s"][name] = setup["compile_s"]
        if name == "seq2seq_jax":
          report["seq2seq_jax_devices"] = {"devices": setup["devices"], "xla_flags": setup["xla_flags"]}
      report["matmul_gflops"] = {name: workers[name]("matmul")["gflops"]
                                 for name in workers if name != "keras"}
      report.update(_rounds(workers, rounds, shapes, train_steps, big_batches, decode_batches, say))
      report["peak_rss_mib"] = {name: w.close()["peak_rss_mib"] for name, w in workers.items()}
      workers = {}
    finally:
      for worker in workers.values():
        worker.proc.kill()
  _summarise(report)
  return report


def _rounds(workers, rounds, shapes, train_steps, big_batches, decode_batches, say) -> dict[str, Any]:
  """Alternating rounds (the order rotates each round), in phases: the seed-shape work at
  the example's batch size and the real-length epochs; then memory over consecutive
  epochs; then larger batches (which raise every allocator's high-water mark, so they come
  after the memory readings); then decoding the real pairs with the trained models."""
  batch = shapes["batch"]
  samples: dict[str, list] = {}
  names = list(workers)

  def record(key, value):
    samples.setdefault(key, []).append(value)

  def alternate(phase, measure):
    for r in range(rounds):
      say(f"{phase}: round {r + 1}/{rounds}")
      for name in names[r % len(names):] + names[:r % len(names)]:
        measure(name, workers[name])

  small_decodes = [b for b in decode_batches if b <= batch]
  large_decodes = [b for b in decode_batches if b > batch]

  def seed_work(name, w):
    record(f"train/{name}", w("train", batch=batch, steps=train_steps)["samples_per_s"])
    if name == "seq2seq_jax":  # mixed precision, beside the targets (the peers run float32)
      record("train/seq2seq_jax_bf16", w("train", batch=batch, steps=train_steps,
                                         matmul_dtype="bfloat16")["samples_per_s"])
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
        steps = max(2, train_steps * batch // big)
        record(f"train_batch/{big}", w("train", batch=big, steps=steps)["samples_per_s"])
    if name != "keras":
      for b in large_decodes:
        record(f"decode_seed/{name}/{b}",
               w("decode", which="seed", batch=b, sentences=max(b, 2048))["sentences_per_s"])
    if name == "seq2seq_jax":  # mixed precision beside it (not in the targets: not the same work)
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


def _summarise(report: dict[str, Any]) -> None:
  """Medians, ratios, % of the matmul limit and targets from the per-round samples."""
  samples, shapes = report["samples"], report["shapes"]
  med = lambda key: _median(samples[key]) if key in samples else None
  flops = train_flops_per_sample(shapes["src_len"], shapes["tgt_len"], shapes["tgt_vocab"], shapes["latent"])
  limit = max(report["matmul_gflops"].values())
  report["train_flops_per_sample"] = flops
  report["matmul_limit_gflops"] = limit
  pct = lambda rate: None if rate is None else 100.0 * rate * flops / (limit * 1e9)
  train = {name.split("/", 1)[1]: med(name) for name in samples if name.startswith("train/")}
  report["train_samples_per_s"] = train
  report["train_pct_of_matmul_limit"] = {k: pct(v) for k, v in train.items()}
  batches = {int(k.split("/")[1]): med(k) for k in samples if k.startswith("train_batch/")}
  batches[shapes["batch"]] = train["seq2seq_jax"]
  report["seq2seq_jax_by_batch"] = {b: {"samples_per_s": v, "pct_of_matmul_limit": pct(v)}
                                    for b, v in sorted(batches.items())}
  epoch = {}
  for key in samples:
    if key.startswith("epoch/"):
      runs = samples[key]
      later = runs[1:] or runs  # the first epoch compiles (ours) or builds (Keras' fit)
      epoch[key.split("/", 1)[1]] = {
          "samples_per_s": _median([r["samples_per_s"] for r in later]),
          "first_epoch_s": runs[0]["seconds"],
          "rss_mib_per_epoch": [round(r["rss_mib"], 1) for r in runs],
          "rss_mib_consecutive_epochs": [round(x, 1) for x in samples.get(f"epoch_tail/{key[6:]}", [])],
          "compilations_after_first_epoch": sum(r.get("compilations", 0) for r in runs[1:])}
  report["epoch_real"] = epoch
  decode_seed = {k.split("/", 1)[1]: med(k) for k in samples if k.startswith("decode_seed/")}
  report["decode_seed_sentences_per_s"] = decode_seed
  report["decode_real"] = {k.split("/", 1)[1]: {
      "sentences_per_s": _median([r["sentences_per_s"] for r in samples[k]]),
      "mean_output_len": _median([r["mean_output_len"] for r in samples[k]])}
      for k in samples if k.startswith("decode_real/")}
  ratios, targets = {}, []

  def ratio(name, ours, theirs, target=None):
    if ours is None or theirs is None:
      return
    ratios[name] = ours / theirs
    if target is not None:
      targets.append({"target": name, "value": round(ours / theirs, 2), "at_least": target,
                      "met": ours / theirs >= target})

  ours_train = train["seq2seq_jax"]
  keras_train = max(filter(None, [train.get("keras"), train.get("keras_fit")]), default=None)
  ratio("train vs keras", ours_train, keras_train, 1.5)
  ratio("train vs torch", ours_train, train.get("torch"), 1.0)
  ratio("train bfloat16 vs keras", train.get("seq2seq_jax_bf16"), keras_train)  # not the same work:
  ratio("train bfloat16 vs torch", train.get("seq2seq_jax_bf16"), train.get("torch"))  # no target
  ours_epoch = epoch["seq2seq_jax"]["samples_per_s"]
  ratio("real-length epoch vs keras", ours_epoch, epoch.get("keras", {}).get("samples_per_s"), 3.0)
  ratio("real-length epoch vs torch", ours_epoch, epoch.get("torch", {}).get("samples_per_s"), 2.0)
  best_decode = max(v for k, v in decode_seed.items() if k.startswith("seq2seq_jax/"))
  keras_loop = decode_seed.get("keras_predict/1")  # the example's loop as published
  ratio("decode best batch vs keras loop", best_decode, keras_loop, 300.0)
  ratio("decode bfloat16 best batch vs keras loop", max(
      (v for k, v in decode_seed.items() if k.startswith("seq2seq_jax_bf16/")), default=None), keras_loop)
  ratio("decode one sentence vs keras loop", decode_seed.get("seq2seq_jax/1"), keras_loop, 30.0)
  ratio("decode one sentence vs keras loop with predict_on_batch", decode_seed.get("seq2seq_jax/1"),
        decode_seed.get("keras_predict_on_batch/1"))
  ratio("decode best batch vs torch best batch", best_decode,
        max((v for k, v in decode_seed.items() if k.startswith("torch/")), default=None))
  best_pct = max(v["pct_of_matmul_limit"] for v in report["seq2seq_jax_by_batch"].values())
  targets += [
      {"target": "train % of matmul limit (best batch)", "value": round(best_pct, 1), "at_least": 50.0,
       "met": best_pct >= 50.0},
      {"target": "decode sentences/s (best batch, all steps)", "value": round(best_decode),
       "at_least": 10_000, "met": best_decode >= 10_000},
      {"target": "train step compile seconds", "value": round(report["compile_s"]["seq2seq_jax"], 2),
       "at_most": 2.0, "met": report["compile_s"]["seq2seq_jax"] <= 2.0},
      {"target": "compilations after the first epoch", "value":
       epoch["seq2seq_jax"]["compilations_after_first_epoch"], "at_most": 0,
       "met": epoch["seq2seq_jax"]["compilations_after_first_epoch"] == 0}]
  report["peak_rss_mib_at_batch"] = {k.split("/", 1)[1]: v[0] for k, v in samples.items()
                                     if k.startswith("peak_rss_batch")}
  report["ratios"] = ratios
  report["targets"] = targets


def format_report(report: dict[str, Any]) -> str:
  """The report as Markdown tables (what the README carries)."""
  m, s = report["machine"], report["shapes"]
  fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
  lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; allocator {m['allocator']}; "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
           + f". Medians of {report['rounds']} alternating rounds.", "",
           f"seq2seq_jax ran on {report['seq2seq_jax_devices']['devices']} XLA CPU device(s), as "
           "`seq2seq-jax train` does on this machine (XLA_FLAGS "
           f"`{report['seq2seq_jax_devices']['xla_flags'] or 'none'}`); Keras and PyTorch as their "
           "users run them, one process with every core.", "",
           f"Seed shapes: batch {s['batch']}, source {s['src_len']} x {s['src_vocab']}, target "
           f"{s['tgt_len']} x {s['tgt_vocab']}, LSTM {s['latent']}; "
           f"{report['train_flops_per_sample'] / 1e6:.0f} MFLOP per training sample; measured matmul "
           f"limit {report['matmul_limit_gflops']:.0f} GFLOP/s.", "",
           f"| training (seed shapes) | samples/s | % of matmul limit | compile s | peak RSS MiB at batch {s['batch']} |",
           "|---|---|---|---|---|"]
  train = report["train_samples_per_s"]
  for key, label in (("seq2seq_jax", "seq2seq_jax train step"),
                     ("seq2seq_jax_bf16", "seq2seq_jax, bfloat16 matmuls (matmul_dtype)"),
                     ("keras", "Keras 3 train_on_batch"),
                     ("keras_fit", "Keras 3 fit"), ("torch", "PyTorch nn.LSTM")):
    if key in train:
      framework = key.split("_fit")[0]
      lines.append(f"| {label} | {fmt(train[key])} | {fmt(report['train_pct_of_matmul_limit'][key], 1)} "
                   f"| {fmt(report['compile_s'].get(framework), 2)} | {fmt(report['peak_rss_mib_at_batch'].get(framework))} |")
  lines.append("")
  lines.append("Peak RSS over the whole run, larger batches included: " + ", ".join(
      f"{name} {fmt(v)} MiB" for name, v in report["peak_rss_mib"].items()) + ".")
  lines += ["", "| seq2seq_jax by batch size | samples/s | % of matmul limit |", "|---|---|---|"]
  for b, v in report["seq2seq_jax_by_batch"].items():
    lines.append(f"| batch {b} | {fmt(v['samples_per_s'])} | {fmt(v['pct_of_matmul_limit'], 1)} |")
  real = report["real_data"]
  lines += ["", f"Real-length epoch: {real['train_pairs']} {real['data']} pairs, source mean "
            f"{real['mean_src_len']:.1f} / max {real['max_src_len']}, target mean {real['mean_tgt_len']:.1f} "
            f"/ max {real['max_tgt_len']} tokens ({real['chosen']}). Time steps computed over "
            "real steps: " + ", ".join(f"{name} {v:.2f}x" for name, v in real["steps_over_real"].items())
            + " (the Keras example pads to the data set's longest pair, PyTorch each batch to "
            "its longest, seq2seq_jax length-sorted batches to their bucket).", "",
            "| epoch of real-length pairs | samples/s | first epoch s | RSS MiB, 3 last epochs in a row | compilations after epoch 1 |",
            "|---|---|---|---|---|"]
  for name, e in report["epoch_real"].items():
    lines.append(f"| {name} | {fmt(e['samples_per_s'])} | {fmt(e['first_epoch_s'], 1)} | "
                 f"{' '.join(fmt(x) for x in e['rss_mib_consecutive_epochs'])} | "
                 f"{e['compilations_after_first_epoch'] if name == 'seq2seq_jax' else '-'} |")
  lines += ["", "| greedy decoding, seed shapes, all steps | sentences/s |", "|---|---|"]
  for key, v in report["decode_seed_sentences_per_s"].items():
    name, batch = key.rsplit("/", 1)
    lines.append(f"| {name}, batch {batch} | {fmt(v, 1)} |")
  lines += ["", "| greedy decoding, real pairs after training | sentences/s | mean output tokens |",
            "|---|---|---|"]
  for key, v in report["decode_real"].items():
    name, batch = key.rsplit("/", 1)
    lines.append(f"| {name}, batch {batch} | {fmt(v['sentences_per_s'], 1)} | {fmt(v['mean_output_len'], 1)} |")
  lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
  for t in report["targets"]:
    goal = f">= {t['at_least']}" if "at_least" in t else f"<= {t['at_most']}"
    lines.append(f"| {t['target']} | {t['value']} | {goal} | {'yes' if t['met'] else 'no'} |")
  for peer, why in report["skipped"].items():
    lines.append(f"\n{peer} skipped: {why}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m seq2seq_jax.bench.harness")
  parser.add_argument("--worker", choices=sorted(WORKERS), required=True)
  args = parser.parse_args(argv)
  return worker_main(args.worker)


if __name__ == "__main__":
  sys.exit(main())

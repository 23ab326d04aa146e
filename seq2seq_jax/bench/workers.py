"""The benchmark's workers: one per framework, each in its own process.

A JAX thread pool in the same process starves PyTorch's. Each answers the coordinator's ops
(setup, train, epoch, decode, matmul, recurrent, finish) one JSON line at a time on stdin /
stdout.

  python -m seq2seq_jax.bench.workers --worker {seq2seq_jax,keras,torch}
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

from seq2seq_jax.bench.work import END_SUPPRESSED, real_decode_batches, seed_batch, torch_batches
from seq2seq_jax.vocab import END_ID, START_ID


def rss_mib() -> tuple[float, float]:
  """(current, peak) resident memory of this process in MiB."""
  with open("/proc/self/statm") as f:
    current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
  return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args) -> float:
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start


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
    from seq2seq_jax import steps as steps_lib
    from seq2seq_jax.config import Config, validate
    from seq2seq_jax.decode import make_greedy_decoder
    from seq2seq_jax.model import build_model
    from seq2seq_jax.optim import build_optimizer
    from seq2seq_jax.parallel import DataParallel
    from seq2seq_jax.runtime import CompilationCounter
    self.jax, self.data_lib, self.steps_lib = jax, data_lib, steps_lib
    self.CompilationCounter = CompilationCounter
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
    self.device = jax.devices()[0]
    # (model, step) per (matmul dtype, lstm_impl): float32 as the peers, bfloat16 mixed
    # precision beside it; lstm_impl auto (cuDNN on a GPU) and, on a GPU, the scan beside it
    self.seed_programs = {}
    self.seed_model, self.seed_step = self._seed_program("float32")
    self.states = {(shapes["batch"], "float32", "auto"): self._new_state(self.seed_model)}
    self.real_model = build_model(self.config, int(self.real["src_vocab"]), int(self.real["tgt_vocab"]))
    self.real_state = self._new_state(self.real_model)
    self.real_step = self._jit_step(self.real_model, self.config)
    self.real_train = data_lib.Encoded(self.real["train_src"], self.real["train_src_len"],
                                       self.real["train_tgt"], self.real["train_tgt_len"])
    self.epochs = 0
    self.decoders = {}
    self.recurrent_programs = {}

  def _jit_step(self, model, config):
    """The library's train step for model, jitted as `seq2seq-jax train` jits it."""
    return self.jax.jit(functools.partial(self.steps_lib.train_step, model=model, tx=self.tx,
                                          config=config), donate_argnums=(0,))

  def _new_state(self, model):
    return self.parallel.replicate(self.steps_lib.create_state(self.config, model, self.tx))

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
    key = (size, "float32", "auto")
    lowered = self.seed_step.lower(self.states[key], batch, self.rng)
    trace_s = time.perf_counter() - start
    lowered.compile()
    compile_s = time.perf_counter() - start
    for _ in range(2):  # warm the jit cache (a second, cached, compile of the same program)
      self.states[key], _ = self.seed_step(self.states[key], batch, self.rng)
    jax.block_until_ready(self.states[key])
    from seq2seq_jax import cudnn
    return {"compile_s": compile_s, "trace_s": trace_s, "devices": self.parallel.size,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "platform": self.device.platform,
            "device_kind": self.device.device_kind, "cuda": cudnn.cuda_gpu(),
            "lstm_impl": cudnn.resolve_lstm_impl(self.config.lstm_impl),
            "default_matmul_precision": jax.config.jax_default_matmul_precision}

  def _seed_program(self, matmul_dtype: str, lstm_impl: str = "auto"):
    if (matmul_dtype, lstm_impl) not in self.seed_programs:
      config = dataclasses.replace(self.config, matmul_dtype=matmul_dtype, lstm_impl=lstm_impl)
      model = self.build_model(config, self.shapes["src_vocab"], self.shapes["tgt_vocab"])
      self.seed_programs[(matmul_dtype, lstm_impl)] = (model, self._jit_step(model, config))
    return self.seed_programs[(matmul_dtype, lstm_impl)]

  def train(self, batch: int, steps: int, matmul_dtype: str = "float32",
            lstm_impl: str = "auto") -> dict[str, Any]:
    jax = self.jax
    arrays = self._place(seed_batch(self.shapes, batch))
    model, train_step = self._seed_program(matmul_dtype, lstm_impl)
    state = self.states.get((batch, matmul_dtype, lstm_impl))
    if state is None:  # another batch size or dtype: its own state, compiled and warmed once
      state = self._new_state(model)
      state, _ = train_step(state, arrays, self.rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = self.parallel.settle(train_step(state, arrays, self.rng))
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    self.states[(batch, matmul_dtype, lstm_impl)] = state
    return {"samples_per_s": batch * steps / seconds, "seconds": seconds}

  def epoch(self) -> dict[str, Any]:
    data_lib = self.data_lib
    with self.CompilationCounter() as compilations:
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
            "compilations": compilations.count, "rss_mib": rss_mib()[0]}

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
      params = jax.tree.map(lambda x: x, self.states[(self.shapes["batch"], "float32", "auto")]["params"])
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

  def matmul(self, n: int = 1024, repeats: int = 20, dtype: str = "float32",
             precision: str | None = None) -> dict[str, Any]:
    """The best rate of a chain of n x n matmuls (dtype operands; precision None: JAX's
    default, "highest": full float32 where the default would round, e.g. TF32 on a GPU)."""
    jax = self.jax
    a = self.parallel.replicate(jax.random.normal(jax.random.key(0), (n, n)).astype(dtype))
    x = jax.device_put(a, self.parallel.batch_sharding)  # rows split over the devices

    @jax.jit
    def chain(x):
      for _ in range(repeats):  # a dependent chain: each matmul really runs
        x = (jax.numpy.matmul(x, a, precision=precision) * 0.03).astype(dtype)
      return x

    jax.block_until_ready(chain(x))
    best = 0.0
    for _ in range(5):
      seconds = _timed(lambda: jax.block_until_ready(chain(x)))
      best = max(best, 2 * n ** 3 * repeats / seconds / 1e9)
    return {"gflops": best}

  def recurrent(self, batch: int, steps: int, impl: str = "scan", unroll: int = 1,
                repeats: int = 5) -> dict[str, Any]:
    """Microseconds per time step of one LSTM layer (hidden size latent, an input of the
    same width, every step valid) over `steps` steps: forward (h at every step) and forward
    plus backward (gradients of the parameters and inputs); impl "scan" (lstm_sequence, the
    hand-written gradient, `unroll` steps per iteration) or "cudnn" (cudnn.lstm_layer).
    On one device; medians of `repeats` runs after a compiled warm-up."""
    key = (batch, steps, impl, unroll)
    if key not in self.recurrent_programs:
      self.recurrent_programs[key] = self._recurrent_program(batch, steps, impl, unroll)
    (forward, both), (params, x), compile_s = self.recurrent_programs[key]
    jax = self.jax
    timings = {}
    for name, fn in (("forward", forward), ("forward_backward", both)):
      runs = sorted(_timed(lambda: jax.block_until_ready(fn(params, x))) for _ in range(repeats))
      timings[f"{name}_us_per_step"] = runs[len(runs) // 2] / steps * 1e6
    return dict(timings, compile_s=compile_s)

  def _recurrent_program(self, batch: int, steps: int, impl: str, unroll: int):
    """((forward, forward and backward), their arguments, seconds to compile and warm)."""
    jax, jnp = self.jax, self.jax.numpy
    from seq2seq_jax import cudnn
    from seq2seq_jax import model as model_lib
    hidden = self.shapes["latent"]
    keys = jax.random.split(jax.random.key(1), 3)
    params = (jax.random.normal(keys[0], (hidden, 4 * hidden)) * hidden ** -0.5,
              jax.random.normal(keys[1], (hidden, 4 * hidden)) * hidden ** -0.5,
              jnp.zeros((4 * hidden,)).at[hidden:2 * hidden].set(1.0))
    x = jax.random.normal(keys[2], (batch, steps, hidden))
    params, x = jax.device_put((params, x), self.device)
    carry = (jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))
    if impl == "cudnn":
      layer = lambda p, x: cudnn.lstm_layer(x, carry, p)[1]
    else:
      def layer(p, x):
        kernel, recurrent_kernel, bias = p
        xproj_TxBx4H = model_lib.matmul(jnp.swapaxes(x, 0, 1), kernel) + bias
        return model_lib.lstm_time_major(xproj_TxBx4H, carry, recurrent_kernel, None, None,
                                         unroll)[1]
    forward = jax.jit(layer)
    both = jax.jit(jax.grad(lambda p, x: jnp.sum(layer(p, x)), argnums=(0, 1)))
    start = time.perf_counter()
    jax.block_until_ready((forward(params, x), both(params, x)))
    return (forward, both), (params, x), time.perf_counter() - start

  def finish(self) -> dict[str, Any]:
    result = super().finish()
    stats = getattr(self.device, "memory_stats", lambda: None)() or {}
    if "peak_bytes_in_use" in stats and self.device.platform != "cpu":
      result["device_peak_mib"] = stats["peak_bytes_in_use"] / 2 ** 20
    return result


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
    import jax
    return {"compile_s": first - steady, "platform": jax.devices()[0].platform}

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
    return {"compile_s": 0.0, **self.peer.describe_device()}

  def train(self, batch: int, steps: int) -> dict[str, Any]:
    b = seed_batch(self.shapes, batch)
    step = lambda: self.peer.train_step(self.seed_model, self.seed_opt, b["src"], b["tgt_in"], b["tgt_out"])
    seconds = _timed(lambda: [step() for _ in range(steps)])  # each step reads its loss back
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

  def matmul(self, n: int = 1024, repeats: int = 20) -> dict[str, Any]:
    return {"gflops": self.peer.matmul_gflops(n, repeats)}

  def finish(self) -> dict[str, Any]:
    result = super().finish()
    peak = self.peer.peak_device_mib()
    if peak is not None:
      result["device_peak_mib"] = peak
    return result


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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m seq2seq_jax.bench.workers")
  parser.add_argument("--worker", choices=sorted(WORKERS), required=True)
  args = parser.parse_args(argv)
  return worker_main(args.worker)


if __name__ == "__main__":
  sys.exit(main())

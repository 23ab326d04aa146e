"""The cuDNN LSTM path against the scan on one GPU: where the two compute different things.

Run on a GPU machine from the source tree (PYTHONPATH=.); `--standin` runs it on a CPU with
cuDNN's packed call replaced by jax.experimental.rnn.lstm_ref (a dry run of the script).
Prints one JSON object per probe and writes them all to --output.

Probes (each reports relative errors ||a - b|| / ||b||):
  layer    one LSTM layer, ours (cudnn.lstm_layer) and jax.experimental.rnn.lstm called
           directly, against the scan, at the default model's shapes (B=128, I=64, H=128),
           forward-only and under jax.grad, for several lengths patterns (all full; mixed
           in random order, longest first, shortest first; with empty rows)
  shapes   forward outputs of one layer and of the bidirectional pair over batch and width
  repeat   the same jitted gradient called three times (does anything carry over?)
  model    the default model on real batches: loss through the eval program and through the
           train program (value_and_grad), cuDNN path and scan, at the initial parameters
           and after training steps on the cuDNN path; gradients cuDNN vs scan
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tree_rel(a, b) -> dict[str, float]:
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree.leaves(b)
  return {jax.tree_util.keystr(path): round(rel(x, y), 6) for (path, x), y in zip(flat_a, flat_b)}


def emit(records, **record):
  records.append(record)
  print(json.dumps(record), flush=True)


def layer_probes(records, cudnn, model_lib, B=128, I=64, H=128):
  from jax.experimental import rnn
  key = jax.random.key(0)
  k = jax.random.split(key, 6)
  params = (jax.random.normal(k[0], (I, 4 * H)) / np.sqrt(I),
            jax.random.normal(k[1], (H, 4 * H)) / np.sqrt(H),
            jax.random.normal(k[2], (4 * H,)) * 0.1)
  zero = (jnp.zeros((B, H)), jnp.zeros((B, H)))
  # the decoder starts from the encoder's final (h, c): with attention=none the H200 run
  # stalled where a model ignoring its source would, so initial and final states are
  # probed apart from outputs, from a zero carry and from a random one
  given = (jax.random.normal(jax.random.fold_in(key, 7), (B, H)) * 0.5,
           jax.random.normal(jax.random.fold_in(key, 8), (B, H)) * 0.5)

  def scan(x, carry, params, mask):
    kernel, recurrent, bias = params
    return model_lib.lstm_layer_scan(x @ kernel + bias, carry, recurrent, mask)

  def ours(x, carry, params, mask):
    return cudnn.lstm_layer(x, carry, params, mask)

  def raw(x, carry, params, mask):  # jax's call as documented, no wrapper of ours
    lengths = jnp.maximum(jnp.sum(mask, axis=1, dtype=jnp.int32), 1)
    call = cudnn.lstm_call or rnn.lstm
    y, h, c = call(x, carry[0][None], carry[1][None], cudnn.pack_cudnn_weights(*params), lengths,
                   input_size=I, hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False)
    y = jnp.where(mask[..., None], y, 0.0)
    empty_Bx1 = (jnp.sum(mask, axis=1) == 0)[:, None]  # rows of no step: compare as held
    return (jnp.where(empty_Bx1, carry[0], h[0]), jnp.where(empty_Bx1, carry[1], c[0])), y

  def loss(run, x, carry, params, mask, w):
    (h, c), y = run(x, carry, params, mask)
    return jnp.sum(jnp.where(mask[..., None], y, 0.0) * w) + jnp.sum(h * w[:, 0]) + jnp.sum(c)

  rng = np.random.default_rng(0)
  for T in (16, 48, 80):
    mixed = rng.integers(1, T + 1, B)
    # the GPU tests that passed on the H200 had rows longest first; eval batches are sorted
    # shortest first (data.eval_batches), training batches are in random order per bucket
    patterns = {"full": np.full(B, T), "mixed, random order": mixed,
                "mixed, longest first": np.sort(mixed)[::-1].copy(),
                "mixed, shortest first": np.sort(mixed),
                "mixed+empty rows": np.concatenate([rng.integers(1, T + 1, B - 8), np.zeros(8, int)])}
    cases = [(name, lengths, zero, "zero") for name, lengths in patterns.items()]
    cases += [(name, patterns[name], given, "random") for name in ("full", "mixed, random order",
                                                                   "mixed, shortest first")]
    for name, lengths, carry, carry_name in cases:
      x = jax.random.normal(jax.random.fold_in(k[3], T), (B, T, I))
      w = jax.random.normal(jax.random.fold_in(k[4], T), (B, T, H))
      mask = jnp.asarray(np.arange(T)[None, :] < lengths[:, None])
      with jax.default_matmul_precision("highest"):
        want = jax.jit(scan)(x, carry, params, mask)
        # argnums: the input, the initial carry (without attention, the decoder's gradient
        # reaches the encoder only through it: dh_0, dc_0) and the parameters
        want_g = jax.jit(jax.grad(functools.partial(loss, scan), argnums=(0, 1, 2)))(
            x, carry, params, mask, w)
      for label, run in (("ours", ours), ("raw", raw)):
        got = jax.jit(run)(x, carry, params, mask)
        # the forward values as the train program computes them (under value_and_grad)
        (_, got_in_grad), got_g = jax.jit(jax.value_and_grad(
            lambda x, c, p: (loss(run, x, c, p, mask, w), run(x, c, p, mask)),
            argnums=(0, 1, 2), has_aux=True))(x, carry, params)
        emit(records, probe="layer", impl=label, T=T, lengths=name, initial_carry=carry_name,
             fwd_y=round(rel(jnp.where(mask[..., None], got[1], 0), jnp.where(mask[..., None], want[1], 0)), 6),
             fwd_h=round(rel(got[0][0], want[0][0]), 6), fwd_c=round(rel(got[0][1], want[0][1]), 6),
             train_fwd_y=round(rel(jnp.where(mask[..., None], got_in_grad[1], 0),
                                   jnp.where(mask[..., None], want[1], 0)), 6),
             grad_x=round(rel(got_g[0], want_g[0]), 6),
             grad_initial_carry=[round(rel(g, wg), 6) for g, wg in zip(got_g[1], want_g[1])],
             grad_params=[round(rel(g, wg), 6) for g, wg in zip(got_g[2], want_g[2])])
  # does one call's result depend on an earlier call? the same gradient three times
  grad = jax.jit(jax.grad(functools.partial(loss, ours), argnums=2))
  T = 32
  x = jax.random.normal(k[5], (B, T, I))
  w = jnp.ones((B, T, H))
  mask = jnp.asarray(np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None])
  first = grad(x, zero, params, mask, w)
  again = [grad(x, zero, params, mask, w) for _ in range(2)]
  emit(records, probe="repeat", rel_2nd=[round(rel(a, b), 8) for a, b in zip(again[0], first)],
       rel_3rd=[round(rel(a, b), 8) for a, b in zip(again[1], first)])


def shape_probes(records, cudnn, model_lib):
  """Forward-only and train-program outputs of one layer and of the bidirectional pair
  against the scan over batch, width and input sizes (the GPU tests' small shapes first)."""
  rng = np.random.default_rng(1)
  for B, I, H in ((4, 16, 32), (4, 64, 128), (128, 16, 32), (128, 64, 128), (512, 64, 128)):
    T = 32
    k = jax.random.split(jax.random.key(B * 1000 + H), 8)
    mk = lambda i: (jax.random.normal(k[i], (I, 4 * H)) / np.sqrt(I),
                    jax.random.normal(k[i + 1], (H, 4 * H)) / np.sqrt(H),
                    jax.random.normal(k[i + 2], (4 * H,)) * 0.1)
    forward, backward = mk(0), mk(3)
    x = jax.random.normal(k[6], (B, T, I))
    mask = jnp.asarray(np.arange(T)[None, :] < rng.integers(1, T + 1, B)[:, None])
    zero = (jnp.zeros((B, H)), jnp.zeros((B, H)))

    def scan_layer(x, params):
      kernel, recurrent, bias = params
      return model_lib.lstm_layer_scan(x @ kernel + bias, zero, recurrent, mask)

    def scan_pair(x, f, b):
      ff, fo = scan_layer(x, f)
      bf, bo = scan_layer(model_lib.reverse_valid_steps(x, mask), b)
      return ff, bf, jnp.concatenate([fo, model_lib.reverse_valid_steps(bo, mask)], -1)

    with jax.default_matmul_precision("highest"):
      want1 = jax.jit(scan_layer)(x, forward)
      want2 = jax.jit(scan_pair)(x, forward, backward)
    got1 = jax.jit(lambda x, p: cudnn.lstm_layer(x, zero, p, mask))(x, forward)
    got2 = jax.jit(lambda x, f, b: cudnn.lstm_bidirectional(x, zero, zero, f, b, mask))(x, forward, backward)
    masked = lambda y: jnp.where(mask[..., None], y, 0.0)
    emit(records, probe="shapes", B=B, I=I, H=H, T=T,
         layer_y=round(rel(masked(got1[1]), masked(want1[1])), 6),
         layer_h=round(rel(got1[0][0], want1[0][0]), 6),
         pair_y=round(rel(masked(got2[2]), masked(want2[2])), 6),
         pair_h_fwd=round(rel(got2[0][0], want2[0][0]), 6),
         pair_h_bwd=round(rel(got2[1][0], want2[1][0]), 6))


def model_probes(records, cudnn, steps: int, standin: bool):
  from seq2seq_jax import data as data_lib
  from seq2seq_jax.config import Config
  from seq2seq_jax.decode import make_greedy_decoder
  from seq2seq_jax.inference import load_run_data
  from seq2seq_jax.model import build_model
  from seq2seq_jax.optim import build_optimizer
  from seq2seq_jax.steps import create_state, loss_and_counts, train_step

  config = Config()
  translator, train_pairs, val_pairs, _ = load_run_data(config)
  train, val = translator.encode(train_pairs), translator.encode(val_pairs)
  sizes = len(translator.src_vocab), len(translator.tgt_vocab)
  models = {impl: build_model(dataclasses.replace(config, lstm_impl=impl), *sizes)
            for impl in ("cudnn", "scan")}
  total = data_lib.steps_per_epoch(train, config.batch_size) * config.num_epochs
  tx = build_optimizer(config, total)
  state = create_state(config, models["scan"], tx)
  rows = data_lib.epoch_batches(train, config.batch_size, config.seed, 0, config.bucket_width)
  batches = [data_lib.make_batch(train, r, config.batch_size, config.bucket_width) for r in rows]
  val_batches = list(data_lib.eval_batches(val, config.batch_size, config.bucket_width))
  probe_batches = {"train[0]": batches[0], "val[0]": val_batches[0], "val[-1] (padding rows)": val_batches[-1]}

  def eval_loss(impl):
    return jax.jit(lambda p, b: loss_and_counts(p, b, model=models[impl], config=config,
                                                train=False)[0])

  def grad_loss(impl):
    return jax.jit(jax.value_and_grad(lambda p, b: loss_and_counts(
        p, b, model=models[impl], config=config, train=True, dropout_rng=jax.random.key(0))[0]))

  fns = {impl: (eval_loss(impl), grad_loss(impl)) for impl in models}
  decoders = {impl: make_greedy_decoder(m, translator.decode_max_len) for impl, m in models.items()}

  def probe(step, params):
    for name, batch in probe_batches.items():
      out = {}
      grads = {}
      for impl, (ev, gr) in fns.items():
        out[f"{impl}_eval"] = float(ev(params, batch))
        value, grads[impl] = gr(params, batch)
        out[f"{impl}_train"] = float(value)
      rels = tree_rel(grads["cudnn"], grads["scan"])
      emit(records, probe="model", step=step, batch=name, **{k: round(v, 5) for k, v in out.items()},
           grad_rel_max=max(rels.values()), grad_rel_encoder={k: v for k, v in rels.items() if "encoder" in k})
    src = probe_batches["val[0]"]["src"]
    ids = {impl: np.asarray(decoder(params, src)) for impl, decoder in decoders.items()}
    emit(records, probe="decode", step=step, rows_equal=int(np.all(ids["cudnn"] == ids["scan"], axis=1).sum()),
         rows=len(src))

  step_fn = jax.jit(functools.partial(train_step, model=models["cudnn"], tx=tx, config=config),
                    donate_argnums=(0,))
  base_rng = jax.random.key(1)
  probe(0, state["params"])
  marks = sorted({min(steps, m) for m in (steps // 3, steps)})
  t0 = time.time()
  for i in range(steps):
    state, metrics = step_fn(state, batches[i % len(batches)], base_rng)
    if i + 1 in marks:
      emit(records, probe="train", step=i + 1, loss=float(metrics["loss"]),
           seconds=round(time.time() - t0, 1))
      probe(i + 1, state["params"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--standin", action="store_true", help="CPU: lstm_ref instead of cuDNN")
  parser.add_argument("--steps", type=int, default=150, help="training steps on the cuDNN path")
  parser.add_argument("--skip", default="", help="comma-separated probes to skip: layer, shapes, model")
  parser.add_argument("--output", default="cudnn_probe.json")
  args = parser.parse_args(argv)
  from seq2seq_jax import cudnn
  from seq2seq_jax import model as model_lib
  if args.standin:
    cudnn.cuda_gpu = lambda: True
    cudnn.lstm_call = cudnn.reference_lstm
  records = []
  emit(records, probe="devices", devices=str(jax.devices()), jax=jax.__version__)
  try:
    if "layer" not in args.skip:
      layer_probes(records, cudnn, model_lib)
    if "shapes" not in args.skip:
      shape_probes(records, cudnn, model_lib)
    if "model" not in args.skip:
      model_probes(records, cudnn, args.steps, args.standin)
  finally:
    with open(args.output, "w") as f:
      json.dump(records, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())

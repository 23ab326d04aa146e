"""cudnn.py and lstm_impl / scan_unroll: the cuDNN LSTM path, tested on any machine.

On a CPU the packed weights run through jax.experimental.rnn.lstm_ref (cudnn.reference_lstm),
which takes cuDNN's packed layout: the same outputs, final states and gradients as our scan
show that the packing (gate order, biases, transposes), the lengths, the bidirectional pair
and the model's use of them are right. The cuDNN call itself is compared with the scan on a
GPU (skipped elsewhere, with the reason). Also: what `auto` picks, the vectorised sweep
step forcing the scan, scan_unroll, and experiments/accelerator_check.sh failing fast.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from seq2seq_jax import cudnn
from seq2seq_jax import model as model_lib
from seq2seq_jax.config import Config, apply_overrides, from_dict, load_config_file
from seq2seq_jax.workdir import check_workdir_config
from seq2seq_jax.decode import greedy_decode
from seq2seq_jax.errors import UserError
from seq2seq_jax.optim import build_optimizer
from seq2seq_jax.steps import create_state, loss_and_counts, vectorized_train_step
from tests.conftest import ROOT, tiny_config

PLATFORM = jax.devices()[0].platform
ON_GPU = PLATFORM == "gpu"
NO_GPU = f"needs an NVIDIA GPU with JAX's CUDA build (jax.devices()[0].platform is {PLATFORM!r})"


def _params(key, in_dim: int, hidden: int) -> cudnn.Params:
  k = jax.random.split(key, 3)
  return (jax.random.normal(k[0], (in_dim, 4 * hidden)) * 0.4,
          jax.random.normal(k[1], (hidden, 4 * hidden)) * 0.4,
          jax.random.normal(k[2], (4 * hidden,)) * 0.3)


def _scan_layer(x, carry, params, mask):
  """Our scan as RecurrentLayer runs it: the input projection, then lstm_sequence (the
  hand-written gradient)."""
  kernel, recurrent_kernel, bias = params
  return model_lib.lstm_layer_scan(x @ kernel + bias, carry, recurrent_kernel, mask)


def _scan_bidirectional(x, forward_carry, backward_carry, forward, backward, mask):
  """Our encoder's pair: the backward layer over each row's valid steps reversed."""
  f_final, f_out = _scan_layer(x, forward_carry, forward, mask)
  b_final, b_rev = _scan_layer(model_lib.reverse_valid_steps(x, mask), backward_carry, backward, mask)
  return f_final, b_final, jnp.concatenate([f_out, model_lib.reverse_valid_steps(b_rev, mask)], -1)


@pytest.fixture
def reference(monkeypatch):
  """cudnn's layers run the packed weights through lstm_ref; counts the calls."""
  calls = []

  def call(*args, **kwargs):
    calls.append(kwargs["bidirectional"])
    return cudnn.reference_lstm(*args, **kwargs)

  monkeypatch.setattr(cudnn, "lstm_call", call)
  return calls


@pytest.fixture
def one_cuda_gpu(monkeypatch, reference):
  """lstm_impl=cudnn believes it is on an NVIDIA GPU; the layers run lstm_ref."""
  monkeypatch.setattr(cudnn, "cuda_gpu", lambda: True)
  return reference


# --- the packing --------------------------------------------------------------

def test_packing_is_jax_cudnn_layout():
  """W_ih = kernel^T and W_hh = recurrent_kernel^T with the gate blocks in place (Keras'
  i, f, c, o is cuDNN's i, f, g, o), our bias as the input bias, a zero recurrent bias; a
  bidirectional pair packs forward then backward, weights before biases."""
  I, H = 5, 3
  forward, backward = _params(jax.random.key(0), I, H), _params(jax.random.key(1), I, H)
  flat = cudnn.pack_cudnn_weights(*forward)
  assert flat.shape == (rnn.get_num_params_in_lstm(I, H, 1, False),) and flat.dtype == jnp.float32
  W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, I, H, 1, False)
  np.testing.assert_array_equal(W_ih[0], forward[0].T)
  np.testing.assert_array_equal(W_hh[0], forward[1].T)
  np.testing.assert_array_equal(W_ih[0][2 * H:3 * H], forward[0][:, 2 * H:3 * H].T)  # g is Keras' c
  np.testing.assert_array_equal(b_ih[0], forward[2])
  assert not np.asarray(b_hh[0]).any()
  pair = cudnn.pack_cudnn_layers([forward, backward])
  assert pair.shape == (rnn.get_num_params_in_lstm(I, H, 1, True),)
  W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(pair, I, H, 1, True)
  for d, params in enumerate((forward, backward)):
    np.testing.assert_array_equal(W_ih[d], params[0].T)
    np.testing.assert_array_equal(W_hh[d], params[1].T)
    np.testing.assert_array_equal(b_ih[d], params[2])


LENGTHS = [(6, [6, 3, 1, 0]), (1, [1, 0, 1])]  # rows of different lengths, padding only, one step


def _inputs(T, lengths, I=4, H=3, directions=1):
  keys = jax.random.split(jax.random.key(T), 4)
  B = len(lengths)
  x = jax.random.normal(keys[0], (B, T, I))
  mask = jnp.arange(T)[None, :] < jnp.array(lengths)[:, None]
  carries = [(jax.random.normal(jax.random.fold_in(keys[1], d), (B, H)),
              jax.random.normal(jax.random.fold_in(keys[2], d), (B, H))) for d in range(directions)]
  params = [_params(jax.random.fold_in(keys[3], d), I, H) for d in range(directions)]
  return x, mask, carries, params


def _check(got, want, mask, name):
  """Outputs compared at every step: at padded ones the scan holds the carry, and the
  cuDNN path puts the final h there too (cuDNN itself writes zeros)."""
  del mask
  np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


def _objective(mask, weights):
  """A loss over valid outputs and the final carries, as a model's."""
  def objective(run, x, *rest):
    *finals, out = run(x, *rest)
    value = jnp.sum(jnp.where(mask[..., None], out, 0.0) * weights)
    for h, c in finals:
      value = value + jnp.sum(h * h) + jnp.sum(jnp.tanh(c))
    return value
  return objective


def _values_and_grads(run, objective, *args):
  """run's results and objective's gradients w.r.t. every argument, in one jitted program,
  its float32 matmuls at full precision: on a GPU JAX's default rounds them to TF32 (relative
  error about 1e-3, seen on an H200), which these float32 tolerances do not allow."""
  both = lambda *args: (run(*args), jax.grad(objective, argnums=(1, 2, 3))(run, *args))
  with jax.default_matmul_precision("highest"):
    return jax.jit(both)(*args)


@pytest.mark.parametrize("T, lengths", LENGTHS)
def test_packed_weights_in_lstm_ref_equal_our_scan(reference, T, lengths):
  """The same outputs, final (h, c) and gradients (inputs, kernel, recurrent kernel, bias,
  initial carry) as our scan, padded rows and an all-padding row included."""
  x, mask, (carry,), (params,) = _inputs(T, lengths)
  ours = lambda x, carry, params: _scan_layer(x, carry, params, mask)
  theirs = lambda x, carry, params: cudnn.lstm_layer(x, carry, params, mask)
  objective = _objective(mask, jax.random.normal(jax.random.key(9), x.shape[:2] + (3,)))
  (want_final, want_out), want = _values_and_grads(ours, objective, x, carry, params)
  (got_final, got_out), got = _values_and_grads(theirs, objective, x, carry, params)
  _check(got_out, want_out, mask, "outputs")
  for g, w, name in zip(got_final, want_final, "hc"):
    np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"final {name}")
  names = ["x", "h0", "c0", "kernel", "recurrent_kernel", "bias"]
  for g, w, name in zip(jax.tree.leaves(got), jax.tree.leaves(want), names):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
  assert reference  # the packed call ran


@pytest.mark.parametrize("T, lengths", LENGTHS)
def test_bidirectional_pair_in_one_call_equals_our_two_scans(reference, T, lengths):
  """cuDNN's bidirectional call (one pair of pseudo-layers) reads each row's valid steps
  last to first, as our backward layer over reverse_valid_steps does: same outputs in
  source order, final carries and gradients."""
  x, mask, carries, params = _inputs(T, lengths, directions=2)
  ours = lambda x, carries, params: _scan_bidirectional(x, *carries, *params, mask)
  theirs = lambda x, carries, params: cudnn.lstm_bidirectional(x, *carries, *params, mask)
  objective = _objective(mask, jax.random.normal(jax.random.key(3), x.shape[:2] + (6,)))
  want, want_grads = _values_and_grads(ours, objective, x, carries, params)
  got, got_grads = _values_and_grads(theirs, objective, x, carries, params)
  _check(got[2], want[2], mask, "outputs")
  for g, w in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(want[:2])):
    np.testing.assert_allclose(g, w, atol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  assert reference and all(reference)  # bidirectional calls only


# --- the model on the cuDNN path ------------------------------------------------

MODEL_CASES = {
    "keras example": dict(input_mode="onehot", attention="none", latent_dim=8),
    "bidirectional, 2 layers, attention, dropout": dict(
        bidirectional_encoder=True, num_layers=2, latent_dim=8, embed_dim=6, dropout=0.25,
        reverse_source=True),
    "repeat decoder, 2 layers": dict(decoder_input="repeat", attention="none", num_layers=2,
                                     latent_dim=8, embed_dim=6),
}


def _batch():
  src = jnp.array([[5, 6, 7, 8, 9, 0], [8, 9, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.int32)
  tgt = jnp.array([[1, 5, 6, 7, 2], [1, 7, 2, 0, 0], [1, 2, 0, 0, 0]], jnp.int32)
  return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:], "tgt_mask": tgt[:, 1:] != 0,
          "index": jnp.array([0, 1, -1])}


def _loss_and_grads(config, params, impl):
  model = model_lib.build_model(Config(**{**config.to_dict(), "lstm_impl": impl}), 12, 12)
  loss = lambda p: loss_and_counts(p, _batch(), model=model, config=config, train=True,
                                   dropout_rng=jax.random.key(4))[0]
  with jax.default_matmul_precision("highest"):  # float32 tolerances; TF32 on a GPU otherwise
    return jax.jit(jax.value_and_grad(loss))(params)


def _init(config, impl):
  model = model_lib.build_model(Config(**{**config.to_dict(), "lstm_impl": impl}), 12, 12)
  return jax.jit(functools.partial(model_lib.init_params, model))(jax.random.key(1))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_trains_the_same_on_the_cudnn_path(one_cuda_gpu, case):
  """The whole model's loss and every parameter's gradient, its LSTM layers through the
  packed call (lstm_ref here) and through the scan: one-hot inputs, embeddings, stacked
  and bidirectional layers with dropout between them (ours, the same masks), attention,
  the repeat decoder, a padding-only row. The parameters are the same either way."""
  config = tiny_config(**MODEL_CASES[case])
  params, cudnn_params = _init(config, "scan"), _init(config, "cudnn")
  jax.tree.map(np.testing.assert_array_equal, cudnn_params, params)  # checkpoints are the same
  one_cuda_gpu.clear()
  want_loss, want = _loss_and_grads(config, params, "scan")
  assert not one_cuda_gpu
  got_loss, got = _loss_and_grads(config, params, "cudnn")
  assert one_cuda_gpu  # the packed path ran
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got, want)


def _eval_batches():
  """Batches as evaluation cuts them: rows shortest first (data.eval_batches), the second
  with padding-only rows and another source width; then one longest first."""
  src = jnp.array([[5, 0, 0, 0, 0, 0, 0, 0], [6, 7, 0, 0, 0, 0, 0, 0], [8, 9, 5, 6, 0, 0, 0, 0],
                   [5, 6, 7, 8, 9, 10, 11, 0]], jnp.int32)
  tgt = jnp.array([[1, 5, 2, 0, 0], [1, 6, 7, 2, 0], [1, 8, 9, 5, 2], [1, 5, 6, 7, 2]], jnp.int32)
  first = {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:], "tgt_mask": tgt[:, 1:] != 0,
           "index": jnp.arange(4)}
  return [first, _batch(), jax.tree.map(lambda x: x[::-1], first)]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_evaluation_and_decoding_on_the_cudnn_path_equal_the_scan_on_several_batches(
    one_cuda_gpu, case):
  """What failed on the H200 was evaluation, not training: the eval program's loss
  (train=False) and greedy decoding, on batches of several shapes (rows shortest first, a
  padding-only row, rows longest first), through the packed call and through the scan."""
  config = tiny_config(**MODEL_CASES[case])
  params = _init(config, "scan")
  models = {impl: model_lib.build_model(Config(**{**config.to_dict(), "lstm_impl": impl}), 12, 12)
            for impl in ("scan", "cudnn")}
  for batch in _eval_batches():
    results = {}
    for impl, model in models.items():
      one_cuda_gpu.clear()
      loss = jax.jit(lambda p, b: loss_and_counts(p, b, model=model, config=config,
                                                  train=False)[0])
      decode = jax.jit(functools.partial(greedy_decode, model=model, max_len=6))
      with jax.default_matmul_precision("highest"):
        results[impl] = (float(loss(params, batch)), np.asarray(decode(params, batch["src"])))
      assert bool(one_cuda_gpu) == (impl == "cudnn")  # the packed call ran, or did not
    np.testing.assert_allclose(results["cudnn"][0], results["scan"][0], rtol=1e-5)
    np.testing.assert_array_equal(results["cudnn"][1], results["scan"][1])


# --- what auto picks -------------------------------------------------------------

def test_auto_is_the_scan_on_every_platform():
  """auto never picks cuDNN: on one H200 the scan trained faster at every batch measured and
  right where cuDNN was not (docs/accelerators.md). cudnn is asked for by name only."""
  resolve = cudnn.resolve_lstm_impl
  for cuda in (True, False):
    assert resolve("auto", cuda=cuda) == "scan"
  assert resolve("auto", matmul_dtype="bfloat16", cuda=True) == "scan"
  assert resolve("auto", cell="gru", cuda=True) == "scan"
  assert resolve("scan", cuda=True) == "scan"
  assert resolve("cudnn", cuda=True) == "cudnn"
  assert resolve("auto") == "scan"  # this machine, whatever it is
  assert Config().lstm_impl == "auto" and model_lib.ModelConfig().lstm_impl == "auto"


def test_cudnn_without_a_cuda_gpu_is_one_line_naming_auto_and_scan():
  with pytest.raises(UserError) as error:
    cudnn.resolve_lstm_impl("cudnn", cuda=False)
  message = str(error.value)
  assert "\n" not in message and "lstm_impl=auto" in message and "lstm_impl=scan" in message
  if not ON_GPU:  # at build time, before anything compiles
    with pytest.raises(UserError, match="lstm_impl=cudnn needs an NVIDIA GPU"):
      model_lib.build_model(Config(lstm_impl="cudnn"), 5, 5)
  with pytest.raises(UserError, match="float32"):
    cudnn.resolve_lstm_impl("cudnn", matmul_dtype="bfloat16", cuda=True)


def test_config_validates_the_two_fields():
  assert apply_overrides(Config(), ["lstm_impl=scan", "scan_unroll=4"]).scan_unroll == 4
  with pytest.raises(UserError, match="lstm_impl' must be one of auto, scan;"):
    apply_overrides(Config(), ["lstm_impl=cuda"])
  with pytest.raises(UserError, match="scan_unroll' must not be negative"):
    apply_overrides(Config(), ["scan_unroll=-1"])
  assert {"lstm_impl", "scan_unroll"} <= set(model_lib.MODEL_FIELDS)


def test_lstm_impl_cudnn_is_refused_in_one_line_naming_why_and_the_scan(tmp_path):
  """On an H200 the default model trained through cuDNN translated nothing: a new run, a
  config file or a sweep asking for it stops before anything is written."""
  with pytest.raises(UserError) as error:
    apply_overrides(Config(), ["lstm_impl=cudnn"])
  message = str(error.value)
  assert "\n" not in message and "withdrawn" in message and "lstm_impl=scan" in message
  assert "translated nothing" in message and "docs/accelerators.md" in message
  path = tmp_path / "cudnn.py"
  path.write_text("from seq2seq_jax.config import Config\n"
                  "def get_config():\n  return Config(lstm_impl='cudnn')\n")
  with pytest.raises(UserError, match="withdrawn"):
    load_config_file(path)


def test_a_run_saved_with_lstm_impl_cudnn_loads_and_resumes_on_the_scan(tmp_path):
  """Its parameters are the same whichever implementation trained them: the saved config
  loads as the scan (translate, evaluate), and resuming it with auto is no config change."""
  saved = dict(Config().to_dict(), lstm_impl="cudnn")
  assert from_dict(saved, "a saved run").lstm_impl == "scan"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_workdir_config(str(tmp_path), Config())  # no CheckpointError


def test_bfloat16_and_step_by_step_decoding_run_the_scan(one_cuda_gpu):
  """On a (simulated) CUDA GPU: auto with bfloat16 matmuls keeps every layer on the scan;
  with lstm_impl=cudnn greedy decoding runs only the encoder through cuDNN, its steps
  through the scan's cell."""
  config = tiny_config(input_mode="onehot", attention="none", latent_dim=8)
  src = _batch()["src"]
  bf16 = model_lib.build_model(Config(**{**config.to_dict(), "matmul_dtype": "bfloat16"}), 12, 12)
  params = jax.eval_shape(functools.partial(model_lib.init_params, bf16), jax.random.key(0))
  jax.eval_shape(lambda p: bf16.apply({"params": p}, src, _batch()["tgt_in"]), params)
  assert not one_cuda_gpu
  model = model_lib.build_model(dataclasses.replace(config, lstm_impl="cudnn"), 12, 12)
  jax.eval_shape(functools.partial(greedy_decode, model=model, max_len=7), params, src)
  assert one_cuda_gpu == [False]  # the one encoder layer, once


def test_the_vectorised_sweep_step_runs_the_scan(one_cuda_gpu):
  """cuDNN's primitive has no batching rule: under vmap the layers run the scan."""
  config = tiny_config(input_mode="onehot", attention="none", latent_dim=8, lstm_impl="cudnn")
  model = model_lib.build_model(config, 12, 12)
  assert model_lib.with_scan_lstm(model).config.lstm_impl == "scan"
  state = create_state(config, model, build_optimizer(config, 10))
  one_cuda_gpu.clear()
  step = functools.partial(vectorized_train_step, model=model, config=config, total_steps=10)
  states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  hyper = {"learning_rate": jnp.array([1e-3, 2e-3])}
  jax.eval_shape(step, states, _batch(), jax.random.key(0), hyper)
  assert not one_cuda_gpu
  jax.eval_shape(lambda p: loss_and_counts(p, _batch(), model=model, config=config, train=True)[0],
                 state["params"])
  assert one_cuda_gpu  # the same model, not vectorised: cuDNN's layers


# --- scan_unroll -------------------------------------------------------------------

def test_scan_unroll_default_is_the_platform_one():
  assert Config().scan_unroll == 0 and model_lib.resolve_scan_unroll(0, "cpu") == 1
  assert model_lib.resolve_scan_unroll(0, "gpu") == model_lib.PLATFORM_SCAN_UNROLL["gpu"]
  assert model_lib.resolve_scan_unroll(0, "something else") == 1
  assert model_lib.resolve_scan_unroll(3, "cpu") == model_lib.resolve_scan_unroll(3, "gpu") == 3


def test_unrolling_changes_no_result():
  """lstm_sequence unrolled by 3 over 7 steps (not a multiple): the same outputs and
  gradients."""
  x, mask, (carry,), (params,) = _inputs(7, [7, 4, 2])
  kernel, recurrent_kernel, bias = params
  xproj = x @ kernel + bias

  def loss(unroll, xproj, recurrent_kernel):
    (h, c), out = model_lib.lstm_layer_scan(xproj, carry, recurrent_kernel, mask, None, unroll)
    return jnp.sum(out ** 2) + jnp.sum(c)

  for unroll in (1, 3):
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)(
        unroll, xproj, recurrent_kernel)
    if unroll == 1:
      want_value, want_grads = value, grads
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), grads, want_grads)


@pytest.mark.slow
def test_the_model_unrolled_gives_the_same_loss_and_translations():
  """scan_unroll 4 against 1 (encoder, input-feeding decoder and greedy decoding scans)."""
  outputs = []
  for unroll in (1, 4):
    config = tiny_config(latent_dim=8, embed_dim=6, scan_unroll=unroll)
    model = model_lib.build_model(config, 12, 12)
    params = model_lib.init_params(model, jax.random.key(2))
    loss_value = loss_and_counts(params, _batch(), model=model, config=config, train=False)[0]
    decode = jax.jit(functools.partial(greedy_decode, model=model, max_len=9))
    outputs.append((float(loss_value), np.asarray(decode(params, _batch()["src"]))))
  assert outputs[0][0] == pytest.approx(outputs[1][0], rel=1e-6)
  np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


# --- on a GPU: the cuDNN call itself -------------------------------------------------

@pytest.mark.skipif(not ON_GPU, reason=NO_GPU)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_cudnn_equals_the_scan_on_the_gpu(bidirectional):
  """jax.experimental.rnn.lstm (cuDNN) against our scan at full float32 precision: outputs,
  final carry and gradients, padded rows and a padding-only row included."""
  assert cudnn.cuda_gpu() and cudnn.lstm_call is None
  T, lengths = 9, [9, 5, 1, 0]
  x, mask, carries, params = _inputs(T, lengths, I=16, H=32, directions=2 if bidirectional else 1)
  if bidirectional:
    ours = lambda x, carries, params: _scan_bidirectional(x, *carries, *params, mask)
    theirs = lambda x, carries, params: cudnn.lstm_bidirectional(x, *carries, *params, mask)
  else:
    ours = lambda x, carries, params: _scan_layer(x, carries[0], params[0], mask)
    theirs = lambda x, carries, params: cudnn.lstm_layer(x, carries[0], params[0], mask)
  with jax.default_matmul_precision("highest"):
    want, got = jax.jit(ours)(x, carries, params), jax.jit(theirs)(x, carries, params)
    out_want, out_got = want[-1], got[-1]
    _check(out_got, out_want, mask, "outputs")
    for g, w in zip(jax.tree.leaves(got[:-1]), jax.tree.leaves(want[:-1])):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    objective = _objective(mask, jax.random.normal(jax.random.key(3), out_want.shape))
    grad = jax.jit(jax.grad(objective, argnums=(1, 2, 3)), static_argnums=0)
    for g, w in zip(jax.tree.leaves(grad(theirs, x, carries, params)),
                    jax.tree.leaves(grad(ours, x, carries, params))):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not ON_GPU, reason=NO_GPU)
def test_the_keras_example_model_trains_the_same_through_cudnn_on_the_gpu():
  """The benchmark's model (one-hot inputs, no attention): loss and gradients with
  lstm_impl=cudnn and =scan, at full float32 precision."""
  config = tiny_config(input_mode="onehot", attention="none", latent_dim=32)
  params = _init(config, "scan")
  with jax.default_matmul_precision("highest"):
    want_loss, want = _loss_and_grads(config, params, "scan")
    got_loss, got = _loss_and_grads(config, params, "cudnn")
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5), got, want)


# --- the device check's failure path ---------------------------------------------------

SCRIPT = os.path.join(ROOT, "experiments", "accelerator_check.sh")


def _run_script(path_dir, tmp_path, *args, **env_extra):
  env = {"PATH": str(path_dir), "HOME": str(tmp_path), "ACCEL_VENV": str(tmp_path / "venv"),
         **env_extra}
  start = time.perf_counter()
  result = subprocess.run([shutil.which("bash"), SCRIPT, *(args or [str(tmp_path / "out")])],
                          env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
  return result, time.perf_counter() - start


def _working_nvidia_smi(bin_dir):
  """A PATH whose nvidia-smi answers as a GPU machine's, and the tools the script uses."""
  bin_dir.mkdir(exist_ok=True)
  fake = bin_dir / "nvidia-smi"
  fake.write_text("#!" + shutil.which("bash") + "\necho 'NVIDIA H200, 580.1, 143771 MiB'\n")
  fake.chmod(0o755)
  for tool in ("dirname", "date", "mkdir", "tee", "head", "printf"):
    if shutil.which(tool):
      os.symlink(shutil.which(tool), bin_dir / tool)
  return bin_dir


def test_accelerator_check_help_says_what_it_needs(tmp_path):
  result, _ = _run_script(tmp_path, tmp_path, "--help", PATH=os.environ["PATH"])
  assert result.returncode == 0, result.stderr
  for needed in ("nvidia-smi", "CUDA build", "installs nothing", "PYTHON", "ACCEL_INSTALL",
                 "lstm_impl=auto", "lstm_impl=scan", "4 minutes", "Exit status", "ACCEL_WHEELS",
                 "TEST_WORKERS"):
    assert needed in result.stdout, needed


def test_the_accelerator_launcher_has_help_and_takes_no_option_for_a_workdir(tmp_path):
  """experiments/launch_accelerator.sh --help took --help for its WORKDIR and started a
  training there; now it prints its usage, and any other option is refused in one line."""
  import subprocess
  launcher = os.path.join(ROOT, "experiments", "launch_accelerator.sh")
  shown = subprocess.run(["bash", launcher, "--help"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
  assert shown.returncode == 0 and shown.stdout.startswith("Train on a GPU or TPU host.")
  assert "--check [OUTPUT_DIR]" in shown.stdout and "set -euo" not in shown.stdout
  refused = subprocess.run(["bash", launcher, "--workdir", "x"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=60)
  assert refused.returncode == 2 and refused.stderr.count("\n") == 1
  assert refused.stderr.startswith("usage: experiments/launch_accelerator.sh [WORKDIR]")
  assert refused.stderr.endswith("(got: --workdir)\n") and not os.listdir(tmp_path)


def test_accelerator_check_without_a_cuda_jax_stops_in_one_line_installing_nothing(tmp_path):
  """A GPU machine whose python3 has no CUDA JAX (here: none on PATH), or a PYTHON whose JAX
  runs on the CPU: one line naming what to set, exit 2, no venv, no output directory."""
  bin_dir = _working_nvidia_smi(tmp_path / "bin")
  result, seconds = _run_script(bin_dir, tmp_path)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "no python3 here has a JAX that sees the GPU" in result.stderr
  assert "PYTHON" in result.stderr and "ACCEL_INSTALL=1" in result.stderr and seconds < 5
  # a PYTHON whose JAX runs on the CPU (this one, held there where it could see a GPU)
  cpu_python = tmp_path / "cpu_python"
  cpu_python.write_text(f"#!{shutil.which('bash')}\nJAX_PLATFORMS=cpu exec {sys.executable} \"$@\"\n")
  cpu_python.chmod(0o755)
  result, _ = _run_script(bin_dir, tmp_path, PYTHON=str(cpu_python))
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert f"PYTHON={cpu_python} has no JAX that sees a GPU" in result.stderr
  assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()


def test_accelerator_check_refuses_an_unknown_option_or_a_used_output_directory(tmp_path):
  """`--foo` was taken for the output directory; a folder of an earlier check had its
  trainings' saved results read as new ones. One line each, exit 2, nothing written."""
  bin_dir = _working_nvidia_smi(tmp_path / "bin")
  result, _ = _run_script(bin_dir, tmp_path, "--foo")
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "usage: experiments/accelerator_check.sh [--help] [OUTPUT_DIR] (got: --foo)" in result.stderr
  used = tmp_path / "used"
  used.mkdir()
  (used / "summary.txt").write_text("an earlier check\n")
  result, _ = _run_script(bin_dir, tmp_path, str(used), PATH=f"{bin_dir}:{os.environ['PATH']}")
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert f"the output directory {used} is not a new or empty folder" in result.stderr
  assert os.listdir(used) == ["summary.txt"] and not (tmp_path / "venv").exists()


def _wheels(folder, *names, requires=()):
  """A folder of one minimal pure wheel per name, each holding an empty package (the first
  wheel's Requires-Dist lines: requires)."""
  folder.mkdir()
  for name in names:
    info = f"{name}-1.0.dist-info"
    needs = "".join(f"Requires-Dist: {line}\n" for line in requires if name == names[0])
    files = {f"{name}/__init__.py": "",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{needs}",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
      for path, text in files.items():
        wheel.writestr(path, text)
  return folder


def _fake_gpu_python(tmp_path, phases: str):
  """An interpreter whose JAX "sees a GPU" and that runs the check's phases as the bash
  case arms `phases` say; anything else runs this Python."""
  fake = tmp_path / "gpu_python"
  fake.write_text(f"""#!{shutil.which('bash')}
case "$*" in
  *default_backend*) exit 0 ;;
{phases}
  *) exec {sys.executable} "$@" ;;
esac
""")
  fake.chmod(0o755)
  return fake


@pytest.mark.slow
@pytest.mark.parametrize("auto, scan, code, line", [
    ("0.996", "0.995", 0, None),
    ("0.0", "0.996", 3, "the two trainings disagree: lstm_impl=auto test exact match 0.0, "
                        "lstm_impl=scan 0.996"),
    ("0.5", "0.51", 1, "both trainings translate badly: lstm_impl=auto test exact match 0.5, "
                       "lstm_impl=scan 0.51, below 0.9")])
def test_accelerator_check_judges_the_two_trainings_in_one_line(tmp_path, auto, scan, code, line):
  """The whole check with stand-ins for the trainings, tests and benchmark: every report
  written; trainings that agree pass, trainings that disagree, or that agree on a bad
  model, end the check with one line naming both exact matches."""
  bin_dir = _working_nvidia_smi(tmp_path / "bin")
  fake = _fake_gpu_python(tmp_path, f"""
  "-m seq2seq_jax train"*)  # -m seq2seq_jax train --workdir W --set lstm_impl=IMPL
    mkdir -p "$5"; impl=${{7#lstm_impl=}}
    [[ $impl == auto ]] && em={auto} || em={scan}
    echo '{{"test/exact_match": '$em'}}' > "$5/results.json"; echo "trained $impl" ;;
  "-m pytest"*) echo "3 passed in 1.00s" ;;
  "-m seq2seq_jax benchmark"*)
    while [[ $1 != --output ]]; do shift; done
    echo "{{}}" > "$2"; echo "| the report |" ;;""")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(fake))
  if code == 0:  # carried wheels: one of a package the interpreter lacks, one it has newer
    env["ACCEL_WHEELS"] = str(_wheels(tmp_path / "wheels", "carried_only", "numpy"))
  out = tmp_path / "out"
  result = subprocess.run([shutil.which("bash"), SCRIPT, str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == code, (result.stdout, result.stderr)
  if code == 0:  # only the lacking one installed: a carried numpy would shadow the machine's
    assert sorted(os.listdir(out / "site-packages")) == [
        "carried_only", "carried_only-1.0.dist-info"]
    assert "skipped numpy-1.0-py3-none-any.whl: the interpreter has numpy" in (
        out / "wheels.log").read_text()
    assert ("wheels (1 of 2; the interpreter has the rest at the same or a newer version)"
            in (out / "summary.txt").read_text())
  assert result.stderr == ("" if line is None else f"accelerator_check: {line} (logs: "
                           f"{out}/train_auto.log, {out}/train_scan.log).\n")
  assert (out / "trainings.txt").read_text().startswith(
      f"lstm_impl=auto test exact match {auto} (exit 0); lstm_impl=scan {scan} (exit 0)")
  for report in ("versions.txt", "pytest.txt", "benchmark.json", "summary.txt"):
    assert (out / report).exists(), report
  assert (out / "benchmark.md").read_text() == "| the report |\n"
  summary = (out / "summary.txt").read_text()
  assert "3 passed" in summary and "benchmark" in summary and "done" in summary


@pytest.mark.slow
def test_accelerator_check_carries_a_wheel_newer_than_the_interpreter_s_and_stops_where_it_cannot_tell(
    tmp_path):
  """A package the interpreter has at an older version than the carried wheel (an old
  SQLAlchemy under a carried Optuna) is installed over it; an interpreter that cannot say
  which wheels it lacks stops the check in one line (it went on with none installed). The
  carried wheels install without their dependencies: the requirements the interpreter does
  not meet are named (a newer numpy, a package it lacks), those it meets or that are another
  platform's are not."""
  bin_dir = _working_nvidia_smi(tmp_path / "bin")
  wheels = _wheels(tmp_path / "wheels", "pytest", "numpy",  # pytest 1.0, renamed 999.0
                   requires=("numpy>=999", "no_such_dependency", "pluggy",
                             'colorama; sys_platform == "win32"', "pygments; extra == 'dev'"))
  os.replace(wheels / "pytest-1.0-py3-none-any.whl", wheels / "pytest-999.0-py3-none-any.whl")
  import numpy  # the same version with a local label is not newer
  os.replace(wheels / "numpy-1.0-py3-none-any.whl",
             wheels / f"numpy-{numpy.__version__}+cpu-py3-none-any.whl")
  (wheels / "notawheel.whl").write_bytes(b"")
  fake = _fake_gpu_python(tmp_path, """
  "-m seq2seq_jax"*|"-m pytest"*) exit 0 ;;""")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(fake),
             ACCEL_WHEELS=str(wheels), TRAIN_LIMIT="5", TESTS_LIMIT="5", BENCH_LIMIT="5")
  out = tmp_path / "out"
  subprocess.run([shutil.which("bash"), SCRIPT, str(out)], env=env, capture_output=True,
                 text=True, timeout=60)
  assert "installing pytest-999.0-py3-none-any.whl: the interpreter has pytest" in (
      out / "wheels.log").read_text()
  log = (out / "wheels.log").read_text()
  assert f"skipped numpy-{numpy.__version__}+cpu-py3-none-any.whl: the interpreter has" in log
  assert "skipped notawheel.whl: not a wheel's name" in log
  assert "wheels (1 of 3; the interpreter has the rest at the same or a newer version; " \
         "requirements unmet: 2, see wheels.log)" in (out / "summary.txt").read_text()
  assert [line for line in log.splitlines() if line.startswith("unmet")] == [
      f"unmet: pytest 1.0 needs numpy>=999; the interpreter has {numpy.__version__}: carry its "
      "wheel too",
      "unmet: pytest 1.0 needs no_such_dependency; the interpreter has none: carry its wheel too"]
  broken = _fake_gpu_python(tmp_path, """
  "- "*) exit 3 ;;""")
  result = subprocess.run([shutil.which("bash"), SCRIPT, str(tmp_path / "out2")],
                          env=dict(env, PYTHON=str(broken)), capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "could not read which wheels of ACCEL_WHEELS" in result.stderr


@pytest.mark.slow
def test_accelerator_check_stops_every_phase_on_ctrl_c(tmp_path):
  """Each phase runs under `timeout`, in a process group of its own that a Ctrl-C at the
  terminal does not reach: the check went on to the end and left trainings running on the
  GPU. Now the trainings and the tests each get the SIGINT (and save, or print their
  failures so far), and the check ends with exit 130."""
  bin_dir = _working_nvidia_smi(tmp_path / "bin")
  marks = tmp_path / "marks"
  fake = _fake_gpu_python(tmp_path, f"""
  "-m seq2seq_jax train"*|"-m pytest"*)  # until interrupted
    trap 'echo "interrupted $1 $2 $3" >> {marks}; kill $! 2>/dev/null; exit 130' INT
    echo "started $1 $2 $3" >> {marks}
    sleep 60 & wait
    echo "not interrupted $1 $2 $3" >> {marks} ;;""")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=str(fake))
  process = subprocess.Popen([shutil.which("bash"), SCRIPT, str(tmp_path / "out")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 60
    while not (marks.exists() and marks.read_text().count("started") == 3):
      assert time.monotonic() < deadline and process.poll() is None, process.communicate()
      time.sleep(0.1)
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
  finally:
    process.kill()
  assert process.returncode == 130 and time.monotonic() - start < 10, (out, err)
  lines = marks.read_text().splitlines()
  assert sorted(line for line in lines if line.startswith("interrupted")) == [
      "interrupted -m pytest tests/test_cudnn.py", "interrupted -m seq2seq_jax train",
      "interrupted -m seq2seq_jax train"], lines
  assert "stopped by Ctrl-C" in (tmp_path / "out" / "summary.txt").read_text()


def test_accelerator_check_fails_fast_without_nvidia_smi(tmp_path):
  """A PATH without nvidia-smi: one line saying what it needs, exit 2, nothing installed
  or written; a nvidia-smi that cannot reach the driver: the same, naming its message."""
  empty = tmp_path / "bin"
  empty.mkdir()
  result, seconds = _run_script(empty, tmp_path)
  assert result.returncode == 2 and not result.stdout and seconds < 5
  assert result.stderr.count("\n") == 1, result.stderr
  assert "nvidia-smi is not on PATH" in result.stderr and "CUDA driver" in result.stderr
  assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()
  fake = empty / "nvidia-smi"
  fake.write_text("#!" + shutil.which("bash") + "\necho 'NVIDIA-SMI has failed because it "
                  "could not communicate with the NVIDIA driver.'\nexit 9\n")
  fake.chmod(0o755)
  result, _ = _run_script(empty, tmp_path)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert "needs a working CUDA driver" in result.stderr and "NVIDIA-SMI has failed" in result.stderr
  assert not (tmp_path / "venv").exists()

"""model.py: the cells equal NumPy references, the scan equals a Python loop, padding changes
nothing, Keras' initialisers and layout, attention, bidirectional encoders, tying and bfloat16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import model as model_lib
from seq2seq_jax.config import Config
from seq2seq_jax.steps import loss_and_counts
from seq2seq_jax.vocab import PAD_ID
from tests.conftest import jit_apply, tiny_config


def numpy_lstm_step(x, h, c, kernel, recurrent_kernel, bias):
  """Keras' LSTM equations with gates i, f, c, o, written independently in NumPy."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  z = x @ kernel + h @ recurrent_kernel + bias
  H = h.shape[-1]
  i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
  c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
  return sigmoid(o) * np.tanh(c), c


def test_lstm_cell_matches_numpy_reference():
  rng = np.random.default_rng(0)
  B, D, H = 3, 5, 4
  x, h, c = rng.normal(size=(B, D)), rng.normal(size=(B, H)), rng.normal(size=(B, H))
  kernel, rk, bias = rng.normal(size=(D, 4 * H)), rng.normal(size=(H, 4 * H)), rng.normal(size=4 * H)
  got_h, got_c = model_lib.lstm_cell(jnp.asarray(x @ kernel + bias, jnp.float32),
                                     (jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)),
                                     jnp.asarray(rk, jnp.float32))
  want_h, want_c = numpy_lstm_step(x, h, c, kernel, rk, bias)
  np.testing.assert_allclose(got_h, want_h, atol=1e-5)
  np.testing.assert_allclose(got_c, want_c, atol=1e-5)


def numpy_gru_step(x, h, kernel, recurrent_kernel, bias):
  """Keras 3 GRU (reset_after=True, gates z, r, h), written independently in NumPy."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  H = h.shape[-1]
  xz = x @ kernel + bias[0]
  hz = h @ recurrent_kernel + bias[1]
  z = sigmoid(xz[:, :H] + hz[:, :H])
  r = sigmoid(xz[:, H:2 * H] + hz[:, H:2 * H])
  hh = np.tanh(xz[:, 2 * H:] + r * hz[:, 2 * H:])
  return z * h + (1 - z) * hh


@pytest.mark.slow
def test_gru_cell_matches_numpy_reference():
  rng = np.random.default_rng(2)
  B, D, H = 3, 5, 4
  x, h = rng.normal(size=(B, D)), rng.normal(size=(B, H))
  kernel, rk, bias = rng.normal(size=(D, 3 * H)), rng.normal(size=(H, 3 * H)), rng.normal(size=(2, 3 * H))
  (got,) = model_lib.gru_cell(jnp.asarray(x @ kernel + bias[0], jnp.float32),
                              (jnp.asarray(h, jnp.float32),), jnp.asarray(rk, jnp.float32),
                              jnp.asarray(bias[1], jnp.float32))
  np.testing.assert_allclose(got, numpy_gru_step(x, h, kernel, rk, bias), atol=1e-5)
  config = tiny_config(cell="gru", latent_dim=8, embed_dim=6)
  params = model_lib.init_params(model_lib.build_model(config, 10, 12), jax.random.key(0))
  layer = params["encoder_gru_0"]
  assert layer["kernel"].shape == (6, 24) and layer["recurrent_kernel"].shape == (8, 24)
  assert layer["bias"].shape == (2, 24)


@pytest.mark.slow
def test_repeat_decoder_is_causal_and_ignores_decoder_inputs():
  """RepeatVector decoder: step t depends only on the source, so the first T of a
  longer decode equal a T-step decode, whatever the (unused) decoder inputs."""
  config = tiny_config(decoder_input="repeat", attention="none", num_layers=2)
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(4))
  assert "tgt_embed" not in params and params["decoder_lstm_0"]["kernel"].shape[0] == 32
  src = jnp.array([[5, 6, 7, 0], [4, 9, 10, 8]], jnp.int32)
  short = model.apply({"params": params}, src, jnp.zeros((2, 4), jnp.int32))
  long = model.apply({"params": params}, src, jnp.full((2, 9), 7, jnp.int32))
  np.testing.assert_allclose(short, long[:, :4], atol=1e-6)
  assert not np.allclose(short[0], short[1])  # but it does depend on the source


def test_scan_equals_python_loop():
  rng = np.random.default_rng(1)
  B, T, H = 2, 7, 3
  xproj = jnp.asarray(rng.normal(size=(B, T, 4 * H)), jnp.float32)
  rk = jnp.asarray(rng.normal(size=(H, 4 * H)) * 0.5, jnp.float32)
  carry0 = (jnp.zeros((B, H)), jnp.zeros((B, H)))
  (h_T, c_T), hs = model_lib.lstm_scan(xproj, carry0, rk)
  carry, outputs = carry0, []
  for t in range(T):
    carry = model_lib.lstm_cell(xproj[:, t], carry, rk)
    outputs.append(carry[0])
  np.testing.assert_allclose(hs, jnp.stack(outputs, 1), atol=1e-6)
  np.testing.assert_allclose(h_T, carry[0], atol=1e-6)
  np.testing.assert_allclose(c_T, carry[1], atol=1e-6)


def test_keras_initialisers_and_layout():
  config = tiny_config(latent_dim=8, embed_dim=6)
  params = model_lib.init_params(model_lib.build_model(config, 10, 12), jax.random.key(0))
  layer = params["encoder_lstm_0"]
  assert layer["kernel"].shape == (6, 32) and layer["recurrent_kernel"].shape == (8, 32)
  np.testing.assert_array_equal(layer["bias"], np.r_[np.zeros(8), np.ones(8), np.zeros(16)])
  rk = np.asarray(layer["recurrent_kernel"])
  np.testing.assert_allclose(rk @ rk.T, np.eye(8), atol=1e-5)  # orthogonal rows


def _model_and_params(**overrides):
  config = tiny_config(**overrides)
  model = model_lib.build_model(config, 11, 13)
  return config, model, model_lib.init_params(model, jax.random.key(3))


@pytest.mark.parametrize("overrides", [
    dict(attention="none"), dict(attention="general", num_layers=2),
    dict(attention="dot", input_mode="onehot", reverse_source=True),
    dict(cell="gru", attention="general"), dict(decoder_input="repeat", cell="gru"),
    dict(attention="additive"), dict(attention="additive", input_feeding=False, cell="gru"),
    dict(bidirectional_encoder=True, num_layers=2, attention="general"),
    dict(bidirectional_encoder=True, cell="gru", attention="additive", reverse_source=True),
    dict(bidirectional_encoder=True, input_mode="onehot", attention="none", label_smoothing=0.1)])
@pytest.mark.slow
def test_padding_does_not_change_encoder_state_or_loss(overrides):
  config, model, params = _model_and_params(**overrides)
  src = jnp.array([[5, 6, 7, 8, 0], [4, 9, 0, 0, 0]], jnp.int32)
  src_padded = jnp.pad(src, ((0, 0), (0, 6)))
  carries, enc, mask = jit_apply(model, params, src, method="encode")
  carries_p, enc_p, mask_p = jit_apply(model, params, src_padded, method="encode")
  for carry, carry_p in zip(carries, carries_p):
    for a, b in zip(carry, carry_p):
      np.testing.assert_allclose(a, b, atol=1e-6)
  # the unpadded sentence alone gives the same state as inside the padded batch
  alone, _, _ = jit_apply(model, params, src[1:, :2], method="encode")
  np.testing.assert_allclose(alone[-1][0][0], carries[-1][0][1], atol=1e-6)
  tgt = jnp.array([[1, 5, 6, 7], [1, 8, 0, 0]], jnp.int32)
  out = jnp.array([[5, 6, 7, 2], [8, 2, 0, 0]], jnp.int32)
  batch = {"src": src, "tgt_in": tgt, "tgt_out": out, "index": jnp.array([0, 1]),
           "tgt_mask": out != 0}
  padded = {"src": src_padded, "tgt_in": jnp.pad(tgt, ((0, 0), (0, 5))),
            "tgt_out": jnp.pad(out, ((0, 0), (0, 5))), "index": jnp.array([0, 1]),
            "tgt_mask": jnp.pad(out, ((0, 0), (0, 5))) != 0}
  evaluate = jax.jit(functools.partial(loss_and_counts, model=model, config=config, train=False))
  loss, counts = evaluate(params, batch)
  loss_p, counts_p = evaluate(params, padded)
  np.testing.assert_allclose(loss, loss_p, rtol=1e-6)
  assert float(counts["tokens"]) == float(counts_p["tokens"]) == 6


def test_onehot_mode_is_one_hot_times_kernel():
  config, model, params = _model_and_params(input_mode="onehot", attention="none")
  layer = params["encoder_lstm_0"]
  ids = jnp.array([[4, 7, 2]])
  one_hot = jax.nn.one_hot(ids, 11)
  projected = model_lib.LSTMLayer(config.latent_dim, 11, onehot=True).apply(
      {"params": layer}, ids, method=model_lib.LSTMLayer.project)
  np.testing.assert_allclose(projected, one_hot @ layer["kernel"] + layer["bias"], atol=1e-6)


def test_reverse_source_reverses_only_the_real_characters():
  config, model, params = _model_and_params(reverse_source=True, attention="none")
  forward_config, forward_model, _ = _model_and_params(reverse_source=False, attention="none")
  src = jnp.array([[5, 6, 7, 0, 0]], jnp.int32)
  reversed_carries, _, _ = model.apply({"params": params}, src, method=model.encode)
  manual, _, _ = forward_model.apply({"params": params}, jnp.array([[7, 6, 5, 0, 0]]),
                                     method=forward_model.encode)
  np.testing.assert_allclose(reversed_carries[0][0], manual[0][0], atol=1e-6)


# ---------------------------------------------------------------------------
# Variants: additive attention, bidirectional encoder, label smoothing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(attention="additive"), dict(attention="additive", input_feeding=False, num_layers=2),
    dict(bidirectional_encoder=True, num_layers=2, attention="general"),
    dict(bidirectional_encoder=True, cell="gru", attention="dot", input_feeding=False),
    dict(bidirectional_encoder=True, attention="none", input_mode="onehot")])
@pytest.mark.slow
def test_teacher_forced_decoder_equals_step_by_step_loop(overrides):
  """The training path (one scan, or layer by layer then attention over all steps) gives
  the logits of decode_step called once per target character, as decoding uses."""
  config, model, params = _model_and_params(**overrides)
  src = jnp.array([[5, 6, 7, 8, 0], [4, 9, 0, 0, 0]], jnp.int32)
  tgt_in = jnp.array([[1, 5, 6, 7, 8], [1, 8, 4, 0, 0]], jnp.int32)
  want = jit_apply(model, params, src, tgt_in)
  carries, enc, mask = jit_apply(model, params, src, method="encode")
  state = jit_apply(model, params, carries, method="initial_decoder_state")
  for t in range(tgt_in.shape[1]):
    state, logits = jit_apply(model, params, state, enc, mask, tgt_in[:, t], method="decode_step")
    np.testing.assert_allclose(logits, want[:, t], atol=2e-5)


def test_additive_attention_matches_numpy_reference():
  rng = np.random.default_rng(4)
  B, T, S, H = 2, 3, 5, 4
  h, enc = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
  wq, wk, v, wc = (rng.normal(size=(H, H)), rng.normal(size=(H, H)), rng.normal(size=H),
                   rng.normal(size=(2 * H, H)))
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  scores = np.tanh((h @ wq)[:, :, None, :] + (enc @ wk)[:, None, :, :]) @ v  # BxTxS
  scores = np.where(mask[:, None, :], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.tanh(np.concatenate([weights @ enc, h], -1) @ wc)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = model_lib.additive_attention(f32(h), f32(enc @ wk), f32(enc), jnp.asarray(mask), f32(wq),
                                     f32(v), f32(wc))
  np.testing.assert_allclose(got, want, atol=1e-5)
  # padded source positions get no weight: changing them changes nothing
  enc_changed = enc.copy()
  enc_changed[0, 3:] = 100.0
  again = model_lib.additive_attention(f32(h), f32(enc_changed @ wk), f32(enc_changed),
                                       jnp.asarray(mask), f32(wq), f32(v), f32(wc))
  np.testing.assert_allclose(again, got, atol=1e-6)


def test_bidirectional_encoder_reads_backwards_and_bridges_both_final_states():
  config, model, params = _model_and_params(bidirectional_encoder=True, attention="general")
  assert params["encoder_lstm_0"]["kernel"].shape == (16, 128)  # forward layout unchanged
  assert params["encoder_bridge_0_h"]["kernel"].shape == (64, 32)
  src = jnp.array([[5, 6, 7, 0, 0]], jnp.int32)
  carries, enc, mask = model.apply({"params": params}, src, method=model.encode)
  embed = lambda ids: params["src_embed"]["embedding"][ids]
  layer = model_lib.LSTMLayer(32, 16)
  zero = (jnp.zeros((1, 32)), jnp.zeros((1, 32)))
  (fh, fc), forward = layer.apply({"params": params["encoder_lstm_0"]}, embed(src[:, :3]), zero)
  (bh, bc), backward = layer.apply({"params": params["encoder_backward_lstm_0"]},
                                   embed(src[:, 2::-1]), zero)  # "7 6 5"
  bridge = lambda part, f, b: (jnp.concatenate([f, b], -1) @ params[f"encoder_bridge_0_{part}"]["kernel"]
                               + params[f"encoder_bridge_0_{part}"]["bias"])
  np.testing.assert_allclose(carries[0][0], bridge("h", fh, bh), atol=1e-5)
  np.testing.assert_allclose(carries[0][1], bridge("c", fc, bc), atol=1e-5)
  proj = params["encoder_outputs_proj"]
  both = jnp.concatenate([forward, backward[:, ::-1]], -1)  # backward outputs in source order
  np.testing.assert_allclose(enc[:, :3], both @ proj["kernel"] + proj["bias"], atol=1e-5)


def test_label_smoothing_is_the_smoothed_cross_entropy_over_real_tokens():
  config, model, params = _model_and_params(attention="general", label_smoothing=0.2)
  src = jnp.array([[5, 6, 7, 8, 0], [4, 9, 0, 0, 0]], jnp.int32)
  tgt = jnp.array([[1, 5, 6, 7], [1, 8, 0, 0]], jnp.int32)
  out = jnp.array([[5, 6, 7, 2], [8, 2, 0, 0]], jnp.int32)
  batch = {"src": src, "tgt_in": tgt, "tgt_out": out, "index": jnp.array([0, 1]),
           "tgt_mask": out != 0}
  loss, _ = loss_and_counts(params, batch, model=model, config=config, train=False)
  logp = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, src, tgt), -1))
  target = np.full(logp.shape, 0.2 / 13) + 0.8 * np.eye(13)[np.asarray(out)]
  per_token = -(target * logp).sum(-1)
  np.testing.assert_allclose(loss, per_token[np.asarray(out) != 0].mean(), rtol=1e-5)
  plain, _ = loss_and_counts(params, batch, model=model, config=tiny_config(attention="general"),
                             train=False)
  target_logp = np.take_along_axis(logp, np.asarray(out)[..., None], -1)[..., 0]
  np.testing.assert_allclose(plain, -target_logp[np.asarray(out) != 0].mean(), rtol=1e-5)


def two_row_batch(empty_rows: int = 0) -> dict:
  """Two sentences (4 and 2 source tokens; 4 and 2 target tokens with END), and
  empty_rows padding rows (index -1) such as a last batch holds."""
  src = jnp.array([[5, 6, 7, 8, 0], [4, 9, 0, 0, 0]], jnp.int32)
  tgt_in = jnp.array([[1, 5, 6, 7], [1, 8, 0, 0]], jnp.int32)
  tgt_out = jnp.array([[5, 6, 7, 2], [8, 2, 0, 0]], jnp.int32)
  pad = lambda a: jnp.pad(a, ((0, empty_rows), (0, 0)))
  return {"src": pad(src), "tgt_in": pad(tgt_in), "tgt_out": pad(tgt_out),
          "index": jnp.array([0, 1] + [-1] * empty_rows), "tgt_mask": pad(tgt_out) != 0}


def test_token_accuracy_counts_no_padding_position():
  """A model that predicts PAD everywhere gets none of the 6 real tokens right (its PAD
  predictions at padded positions are not counted)."""
  config = tiny_config(attention="general")
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(3))
  params["output_dense"]["bias"] = params["output_dense"]["bias"].at[PAD_ID].set(100.0)
  _, counts = loss_and_counts(params, two_row_batch(), model=model, config=config, train=False)
  assert (float(counts["tokens"]), float(counts["correct"])) == (6.0, 0.0)


def test_loss_on_padding_weighs_the_padded_positions_of_real_rows_only():
  """Keras' loss (loss_on_padding) counts a sentence's padding, but not the empty rows
  that fill a last batch: adding them changes neither the loss nor its weight."""
  config = tiny_config(attention="none", loss_on_padding=True)
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(3))
  loss = jax.jit(functools.partial(loss_and_counts, model=model, config=config, train=False))
  (plain, counts), (padded, padded_counts) = (loss(params, two_row_batch(n)) for n in (0, 2))
  assert float(counts["weight"]) == float(padded_counts["weight"]) == 8.0  # 2 rows x 4
  np.testing.assert_allclose(plain, padded, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("T, lengths", [(7, [7, 4, 1]), (1, [1, 0, 1])])
def test_fused_lstm_equals_autodiff_of_the_scan_values_and_gradients(T, lengths):
  """lstm_sequence's hand-written backward pass gives autodiff's gradients for every
  input, with padded (held) steps and cotangents on outputs and the final carry; also
  for a one-step sequence (the backward scan's first and last step at once)."""
  B, H = 3, 5
  keys = jax.random.split(jax.random.key(0), 6)
  xproj = jax.random.normal(keys[0], (B, T, 4 * H))
  carry = (jax.random.normal(keys[1], (B, H)), jax.random.normal(keys[2], (B, H)))
  kernel = jax.random.normal(keys[3], (H, 4 * H)) * 0.5
  mask = jnp.arange(T)[None, :] < jnp.array(lengths)[:, None]
  weights_h = jax.random.normal(keys[4], (B, T, H))
  weights_c = jax.random.normal(keys[5], (B, H))

  def objective(run, xproj, h0, c0, kernel):
    (h, c), outputs = run(xproj, (h0, c0), kernel, mask)
    return jnp.sum(outputs * weights_h) + jnp.sum(c * weights_c) + jnp.sum(h ** 2)

  reference = lambda x, carry, k, m: model_lib.lstm_scan(x, carry, k, m)
  args = (xproj, *carry, kernel)
  (want_carry, want_out) = reference(xproj, carry, kernel, mask)
  (got_carry, got_out) = model_lib.lstm_layer_scan(xproj, carry, kernel, mask)
  np.testing.assert_allclose(got_out, want_out, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got_carry, want_carry)
  want = jax.grad(objective, argnums=(1, 2, 3, 4))(reference, *args)
  got = jax.jit(jax.grad(objective, argnums=(1, 2, 3, 4)), static_argnums=0)(
      model_lib.lstm_layer_scan, *args)
  for g, w, name in zip(got, want, ("xproj", "h0", "c0", "kernel")):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
  # padded steps get no gradient from the input projection
  for row, length in enumerate(lengths):
    assert not np.asarray(got[0])[row, length:].any()


@pytest.mark.slow
def test_fused_and_unfused_models_train_the_same():
  """The whole model's loss gradient with fused_lstm on and off."""
  config = tiny_config(attention="none", reverse_source=True)
  src = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  tgt = jnp.array([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
  batch = {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:], "tgt_mask": tgt[:, 1:] != 0,
           "index": jnp.arange(2)}
  grads = []
  for fused in (True, False):
    cfg = tiny_config(attention="none", reverse_source=True, fused_lstm=fused)
    model = model_lib.build_model(cfg, 12, 12)
    params = model_lib.init_params(model, jax.random.key(1))
    grads.append(jax.grad(lambda p: loss_and_counts(p, batch, model=model, config=cfg,
                                                    train=True)[0])(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)


@pytest.mark.slow
def test_bfloat16_matmuls_fused_gradient_matches_autodiff():
  """With bfloat16 matmul operands the hand-written backward pass still gives autodiff's
  gradients (to bfloat16 rounding), and the outputs stay float32 and near float32's."""
  B, T, H = 4, 6, 8
  keys = jax.random.split(jax.random.key(2), 5)
  xproj = jax.random.normal(keys[0], (B, T, 4 * H))
  carry = (jax.random.normal(keys[1], (B, H)), jax.random.normal(keys[2], (B, H)))
  kernel = jax.random.normal(keys[3], (H, 4 * H)) * 0.5
  mask = jnp.arange(T)[None, :] < jnp.array([6, 3, 1, 5])[:, None]
  weights = jax.random.normal(keys[4], (B, T, H))
  bf16 = jnp.bfloat16

  def autodiff(x, carry, k, m):
    return model_lib.rnn_scan(lambda xp, c: model_lib.lstm_cell(xp, c, k, bf16), x, carry, m)

  fused = lambda x, carry, k, m: model_lib.lstm_layer_scan(x, carry, k, m, bf16)
  objective = lambda run, x, k: jnp.sum(run(x, carry, k, mask)[1] * weights)
  got_out = fused(xproj, carry, kernel, mask)[1]
  assert got_out.dtype == jnp.float32
  np.testing.assert_allclose(got_out, autodiff(xproj, carry, kernel, mask)[1], atol=1e-5)
  np.testing.assert_allclose(got_out, model_lib.lstm_layer_scan(xproj, carry, kernel, mask)[1],
                             atol=3e-2)  # float32 matmuls: within bfloat16 rounding
  got = jax.grad(objective, argnums=(1, 2))(fused, xproj, kernel)
  want = jax.grad(objective, argnums=(1, 2))(autodiff, xproj, kernel)
  for g, w, name in zip(got, want, ("xproj", "kernel")):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, w, rtol=3e-2, atol=3e-2 * float(jnp.abs(w).max()), err_msg=name)


@pytest.mark.slow
def test_bfloat16_training_keeps_float32_parameters_and_optimizer_state():
  from seq2seq_jax import steps as steps_lib
  from seq2seq_jax.optim import build_optimizer
  src = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  tgt = jnp.array([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
  batch = {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:], "tgt_mask": tgt[:, 1:] != 0,
           "index": jnp.arange(2)}
  losses = {}
  for dtype in ("float32", "bfloat16"):
    cfg = tiny_config(matmul_dtype=dtype)
    model, tx = model_lib.build_model(cfg, 12, 12), build_optimizer(cfg, 10)
    state = steps_lib.create_state(cfg, model, tx)
    state, metrics = steps_lib.train_step(state, batch, jax.random.key(0), model=model, tx=tx, config=cfg)
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state["opt_state"]) if x.ndim} == {jnp.dtype(jnp.float32)}
    losses[dtype] = float(metrics["loss"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=1e-2)


def test_the_model_keeps_only_its_own_settings():
  """build_model takes a run config and keeps the model's fields: training, data and
  logging settings never reach the module."""
  import dataclasses as dc

  from seq2seq_jax.model import MODEL_FIELDS, ModelConfig, build_model
  run = Config(attention="dot", latent_dim=48)
  model = build_model(run, 7, 9)
  assert isinstance(model.config, ModelConfig)
  assert [f.name for f in dc.fields(model.config)] == list(MODEL_FIELDS)
  assert (model.config.attention, model.config.latent_dim) == ("dot", 48)
  other_run = dc.replace(run, learning_rate=0.5, data="tsv:x.tsv", num_epochs=99)
  assert build_model(other_run, 7, 9).config == model.config
  assert ModelConfig() == ModelConfig.from_config(Config())  # one set of defaults


def test_tied_embeddings_are_one_table_and_tie_output_reads_logits_from_it():
  """tie_embeddings: source and target tokens index one table (a target token's gradient
  reaches it); tie_output: logits = readout @ table^T + output_bias, no output Dense."""
  from seq2seq_jax.config import apply_overrides
  config = apply_overrides(Config(), ["tokenizer=sentencepiece", "sentencepiece_joint=true",
                                      "tie_embeddings=true", "tie_output=true", "embed_dim=16",
                                      "latent_dim=16"])
  model = model_lib.build_model(config, 11, 11)
  params = model_lib.init_params(model, jax.random.key(0))
  assert "tgt_embed" not in params and "output_dense" not in params
  assert params["src_embed"]["embedding"].shape == (11, 16) and params["output_bias"].shape == (11,)
  src, tgt = jnp.array([[4, 5, 0]]), jnp.array([[1, 9, 2]])
  grad = jax.grad(lambda p: model.apply({"params": p}, src, tgt).sum())(params)
  assert np.abs(np.asarray(grad["src_embed"]["embedding"][9])).sum() > 0  # 9: a target token
  readout = jax.random.normal(jax.random.key(1), (2, 16))
  table = params["src_embed"]["embedding"]
  logits = model.apply({"params": params}, readout, method=lambda m, r: m._output(r))
  np.testing.assert_allclose(logits, readout @ table.T + params["output_bias"], rtol=1e-6)


def test_tying_is_refused_where_the_tables_cannot_be_one():
  from seq2seq_jax.config import apply_overrides
  from seq2seq_jax.errors import UserError
  with pytest.raises(UserError, match="tie_embeddings .*sentencepiece_joint=true"):
    apply_overrides(Config(), ["tie_embeddings=true"])  # characters: two vocabularies
  with pytest.raises(UserError, match=r"tie_output .*embed_dim=latent_dim \(now 64 and 128\)"):
    apply_overrides(Config(), ["tie_output=true"])


def test_accuracy_under_loss_on_padding_counts_the_real_tokens_only():
  """loss_on_padding weighs the padded positions in the loss, not in token accuracy: its
  denominator stays the 6 real tokens (it was the loss weight, 8, lowering the accuracy)."""
  config = tiny_config(attention="none", loss_on_padding=True)
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(3))
  loss = jax.jit(functools.partial(loss_and_counts, model=model, config=config, train=False))
  _, counts = loss(params, two_row_batch(1))
  assert (float(counts["weight"]), float(counts["tokens"])) == (8.0, 6.0)


def test_a_series_batch_weighs_every_real_window_the_first_included():
  """Window index 0 is a real row: a batch of windows 0 and 1 and an empty row weighs
  2 x T x F values; the first window of every split had been left out of the loss."""
  config = tiny_config(input_mode="real", decoder_input="repeat", attention="none",
                       data="series:x.csv", best_metric="val/loss")
  model = model_lib.build_model(config, 2, 2)
  params = model_lib.init_params(model, jax.random.key(3))
  rng = np.random.default_rng(0)
  batch = {"src": jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32),
           "tgt_in": jnp.zeros((3, 3), jnp.int32),
           "tgt_out": jnp.asarray(rng.normal(size=(3, 3, 2)), jnp.float32),
           "index": jnp.array([0, 1, -1])}
  loss = jax.jit(functools.partial(loss_and_counts, model=model, config=config, train=False))
  _, counts = loss(params, batch)
  assert float(counts["weight"]) == 2 * 3 * 2


def _train_twice(config, method, *args):
  """The model's method under train=True with two dropout keys: (first, second)."""
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(3))
  run = jax.jit(lambda key: model.apply({"params": params}, *args, train=True, method=method,
                                        rngs={"dropout": key}))
  return model, params, [np.asarray(jax.tree.leaves(run(jax.random.key(k)))[0]) for k in (0, 1)]


def test_dropout_applies_to_the_encoder_s_embeddings():
  """One embed-mode encoder layer: dropout's only place is on the embedded source, so the
  encoder's output under training depends on the dropout key (it had ignored dropout)."""
  config = tiny_config(attention="none", num_layers=1, dropout=0.5)
  src = two_row_batch()["src"]
  _, _, (first, second) = _train_twice(config, "encode", src)
  assert not np.allclose(first, second)


def test_dropout_applies_before_the_output_layer():
  """A one-layer repeat decoder reads no embedding: dropout's only place is on its readout,
  so its logits under training depend on the dropout key (it had ignored dropout)."""
  config = tiny_config(attention="none", num_layers=1, decoder_input="repeat", dropout=0.5)
  model = model_lib.build_model(config, 11, 13)
  params = model_lib.init_params(model, jax.random.key(3))
  batch = two_row_batch()
  carries, enc, mask = jit_apply(model, params, batch["src"], method="encode")
  _, _, (first, second) = _train_twice(config, "decode", carries, enc, mask, batch["tgt_in"])
  assert not np.allclose(first, second)

"""The LSTM encoder-decoder as Flax Linen modules.

Parameters follow Keras' LSTM layout exactly (kernel: in x 4H, recurrent_kernel:
H x 4H, bias: 4H, gates ordered i, f, c, o) and every carry is Keras' `(h, c)`,
so Keras weights load without reordering. The input projection of a whole
sequence is one matmul; only the recurrent matmul runs inside `lax.scan`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seq2seq_jax.config import Config
from seq2seq_jax.vocab import PAD_ID

Carry = tuple[jax.Array, jax.Array]  # (h_BxH, c_BxH), Keras order
NEG_INF = -1e9


def lstm_cell(xproj_Bx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array) -> Carry:
  """One LSTM step given the precomputed input projection (x @ kernel + bias)."""
  h_BxH, c_BxH = carry
  z_Bx4H = xproj_Bx4H + h_BxH @ recurrent_kernel_Hx4H
  i, f, g, o = jnp.split(z_Bx4H, 4, axis=-1)
  c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
  h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
  return h_BxH, c_BxH


def lstm_scan(xproj_BxTx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array,
              mask_BxT: jax.Array | None = None, unroll: int = 1) -> tuple[Carry, jax.Array]:
  """Runs lstm_cell over time. Where mask is False the carry is held unchanged,
  so right padding never changes the final state. Returns (carry, h_BxTxH)."""

  def step(carry, inputs):
    xproj_Bx4H, mask_B = inputs
    new = lstm_cell(xproj_Bx4H, carry, recurrent_kernel_Hx4H)
    if mask_B is not None:
      keep_Bx1 = mask_B[:, None]
      new = tuple(jnp.where(keep_Bx1, n, o) for n, o in zip(new, carry))
    return new, new[0]

  xs = (jnp.swapaxes(xproj_BxTx4H, 0, 1),
        None if mask_BxT is None else jnp.swapaxes(mask_BxT, 0, 1))
  carry, h_TxBxH = jax.lax.scan(step, carry, xs, unroll=unroll)
  return carry, jnp.swapaxes(h_TxBxH, 0, 1)


def forget_bias_init(key, shape, dtype=jnp.float32):
  """Keras unit_forget_bias: zeros, with the forget gate's quarter set to one."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


class LSTMLayer(nn.Module):
  """One LSTM layer, Keras parameter layout and initialisers."""
  hidden: int
  in_dim: int
  onehot: bool = False  # inputs are ids and the kernel is indexed (= one-hot @ kernel)
  feed_dim: int = 0  # > 0: a second input (attentional state, "input feeding")

  def setup(self):
    if self.feed_dim:
      self.feed_kernel = self.param("feed_kernel", nn.initializers.glorot_uniform(),
                                    (self.feed_dim, 4 * self.hidden))
    self.kernel = self.param("kernel", nn.initializers.glorot_uniform(),
                             (self.in_dim, 4 * self.hidden))
    self.recurrent_kernel = self.param(
        "recurrent_kernel", nn.initializers.orthogonal(), (self.hidden, 4 * self.hidden))
    self.bias = self.param("bias", forget_bias_init, (4 * self.hidden,))

  def project(self, x: jax.Array) -> jax.Array:
    """x @ kernel + bias; x is ids (one-hot mode) or features (..., D)."""
    if self.onehot:
      return self.kernel[x] + self.bias
    return x @ self.kernel + self.bias

  def __call__(self, x, carry: Carry, mask_BxT=None, unroll: int = 1):
    return lstm_scan(self.project(x), carry, self.recurrent_kernel, mask_BxT, unroll)

  def step(self, x_B, carry: Carry) -> Carry:
    return lstm_cell(self.project(x_B), carry, self.recurrent_kernel)


def luong_attention(h_BxTxH: jax.Array, enc_BxSxH: jax.Array, mask_BxS: jax.Array,
                    query_kernel_HxH: jax.Array | None, combine_kernel_2HxH: jax.Array) -> jax.Array:
  """Luong attention: tanh(W_c [context; h]), scores h W_q e ("general") or h e ("dot")."""
  query_BxTxH = h_BxTxH if query_kernel_HxH is None else h_BxTxH @ query_kernel_HxH
  scores_BxTxS = jnp.einsum("bth,bsh->bts", query_BxTxH, enc_BxSxH)
  scores_BxTxS = jnp.where(mask_BxS[:, None, :], scores_BxTxS, NEG_INF)
  weights_BxTxS = jax.nn.softmax(scores_BxTxS, axis=-1)
  context_BxTxH = jnp.einsum("bts,bsh->bth", weights_BxTxS, enc_BxSxH)
  return jnp.tanh(jnp.concatenate([context_BxTxH, h_BxTxH], -1) @ combine_kernel_2HxH)


# The decoder's recurrent state: (carry per layer, attentional vector fed back at the next step).
DecoderState = tuple[list[Carry], jax.Array]


class Seq2Seq(nn.Module):
  """Encoder LSTM stack whose final (h, c) per layer seeds the decoder stack."""
  src_vocab_size: int
  tgt_vocab_size: int
  config: Config

  def setup(self):
    cfg = self.config
    onehot = cfg.input_mode == "onehot"
    H = cfg.latent_dim
    self.feeding = cfg.attention != "none" and cfg.input_feeding
    if not onehot:
      self.src_embed = nn.Embed(self.src_vocab_size, cfg.embed_dim, name="src_embed")
      self.tgt_embed = nn.Embed(self.tgt_vocab_size, cfg.embed_dim, name="tgt_embed")

    def stack(prefix: str, vocab_size: int, feed_dim: int = 0) -> list[LSTMLayer]:
      first_in = vocab_size if onehot else cfg.embed_dim
      return [LSTMLayer(H, first_in if k == 0 else H, onehot=onehot and k == 0,
                        feed_dim=feed_dim if k == 0 else 0, name=f"{prefix}_lstm_{k}")
              for k in range(cfg.num_layers)]
    self.encoder = stack("encoder", self.src_vocab_size)
    self.decoder = stack("decoder", self.tgt_vocab_size, H if self.feeding else 0)
    glorot = nn.initializers.glorot_uniform()
    if cfg.attention == "general":
      self.attention_query = self.param("attention_query", glorot, (H, H))
    if cfg.attention != "none":
      self.attention_combine = self.param("attention_combine", glorot, (2 * H, H))
    self.output_dense = nn.Dense(self.tgt_vocab_size, kernel_init=glorot, name="output_dense")
    self.dropout = nn.Dropout(cfg.dropout)

  # -- encoder -----------------------------------------------------------------
  def encode(self, src_BxS: jax.Array, train: bool = False) -> tuple[list[Carry], jax.Array, jax.Array]:
    """Returns (final carry per layer, encoder outputs BxSxH, source mask BxS)."""
    mask_BxS = src_BxS != PAD_ID
    if self.config.reverse_source:
      length_Bx1 = mask_BxS.sum(axis=1, keepdims=True)
      t_1xS = jnp.arange(src_BxS.shape[1])[None, :]
      src_BxS = jnp.take_along_axis(
          src_BxS, jnp.where(t_1xS < length_Bx1, length_Bx1 - 1 - t_1xS, t_1xS), axis=1)
    x = src_BxS if self.config.input_mode == "onehot" else self.src_embed(src_BxS)
    batch = src_BxS.shape[0]
    carries = []
    for k, layer in enumerate(self.encoder):
      if k > 0 or self.config.input_mode != "onehot":
        x = self.dropout(x, deterministic=not train)
      zeros_BxH = jnp.zeros((batch, self.config.latent_dim), jnp.float32)
      carry, x = layer(x, (zeros_BxH, zeros_BxH), mask_BxS)
      carries.append(carry)
    return carries, x, mask_BxS

  # -- decoder -----------------------------------------------------------------
  def initial_decoder_state(self, carries: list[Carry]) -> DecoderState:
    """The encoder's final (h, c) per layer, and a zero attentional vector."""
    return list(carries), jnp.zeros_like(carries[-1][0])

  def _attend(self, h_BxTxH, enc_BxSxH, mask_BxS) -> jax.Array:
    if self.config.attention == "none":
      return h_BxTxH
    query = self.attention_query if self.config.attention == "general" else None
    return luong_attention(h_BxTxH, enc_BxSxH, mask_BxS, query, self.attention_combine)

  def _step_fn(self, enc_BxSxH, mask_BxS):
    """A pure function (state, xproj0_Bx4H) -> (state, readout_BxH): one decoder step
    after the first layer's input projection; parameters are closed over."""
    layers = self.decoder
    arrays = [(layer.kernel, layer.recurrent_kernel, layer.bias) for layer in layers]
    feed_kernel = layers[0].feed_kernel if self.feeding else None
    query = self.attention_query if self.config.attention == "general" else None
    combine = self.attention_combine if self.config.attention != "none" else None

    def step(state: DecoderState, xproj0_Bx4H: jax.Array):
      carries, feed_BxH = state
      if feed_kernel is not None:
        xproj0_Bx4H = xproj0_Bx4H + feed_BxH @ feed_kernel
      new_carries, x_BxH = [], None
      for k, (kernel, recurrent_kernel, bias) in enumerate(arrays):
        xproj_Bx4H = xproj0_Bx4H if k == 0 else x_BxH @ kernel + bias
        carry = lstm_cell(xproj_Bx4H, carries[k], recurrent_kernel)
        new_carries.append(carry)
        x_BxH = carry[0]
      if combine is not None:
        x_BxH = luong_attention(x_BxH[:, None], enc_BxSxH, mask_BxS, query, combine)[:, 0]
      return (new_carries, x_BxH), x_BxH

    return step

  def decode(self, carries: list[Carry], enc_BxSxH, mask_BxS, tgt_in_BxT, train: bool = False) -> jax.Array:
    """Teacher-forced decoder over the whole target: logits BxTxV."""
    x = tgt_in_BxT if self.config.input_mode == "onehot" else self.tgt_embed(tgt_in_BxT)
    if self.config.input_mode != "onehot":
      x = self.dropout(x, deterministic=not train)
    if self.feeding:  # the attentional vector feeds the next step: one scan over all layers
      xproj0_BxTx4H = self.decoder[0].project(x)
      step = self._step_fn(enc_BxSxH, mask_BxS)
      _, readout_TxBxH = jax.lax.scan(step, self.initial_decoder_state(carries),
                                      jnp.swapaxes(xproj0_BxTx4H, 0, 1))
      readout_BxTxH = jnp.swapaxes(readout_TxBxH, 0, 1)
    else:  # layer by layer, attention over all steps at once afterwards
      for k, layer in enumerate(self.decoder):
        if k > 0:
          x = self.dropout(x, deterministic=not train)
        _, x = layer(x, carries[k])
      readout_BxTxH = self._attend(x, enc_BxSxH, mask_BxS)
    return self.output_dense(self.dropout(readout_BxTxH, deterministic=not train))

  def decode_step(self, state: DecoderState, enc_BxSxH, mask_BxS, prev_B) -> tuple[DecoderState, jax.Array]:
    """One decoding step from the previous token ids: (state, logits BxV)."""
    x = prev_B if self.config.input_mode == "onehot" else self.tgt_embed(prev_B)
    state, readout_BxH = self._step_fn(enc_BxSxH, mask_BxS)(state, self.decoder[0].project(x))
    return state, self.output_dense(readout_BxH)

  def __call__(self, src_BxS, tgt_in_BxT, train: bool = False) -> jax.Array:
    carries, enc_BxSxH, mask_BxS = self.encode(src_BxS, train)
    return self.decode(carries, enc_BxSxH, mask_BxS, tgt_in_BxT, train)


def build_model(config: Config, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
  return Seq2Seq(src_vocab_size, tgt_vocab_size, config)


def init_params(model: Seq2Seq, rng: jax.Array) -> Any:
  src = jnp.ones((1, 3), jnp.int32)
  tgt = jnp.ones((1, 2), jnp.int32)
  return model.init({"params": rng}, src, tgt)["params"]


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))

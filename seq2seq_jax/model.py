"""The recurrent encoder-decoder as Flax Linen modules.

Parameters follow Keras' layouts exactly. LSTM: kernel in x 4H, recurrent_kernel
H x 4H, bias 4H, gates ordered i, f, c, o, carry `(h, c)`. GRU (Keras 3,
reset_after=True): kernel in x 3H, recurrent_kernel H x 3H, bias 2 x 3H (input,
recurrent), gates z, r, h, carry `(h,)`. So Keras weights load without
reordering. The input projection of a whole sequence is one matmul; only the
recurrent matmul runs inside `lax.scan`.

Variants, all configuration of one module: attention none | dot | general (Luong) |
additive (Bahdanau's score), with or without input feeding; a bidirectional encoder;
LSTM or GRU cells; stacked layers with dropout between them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax import cudnn
from seq2seq_jax.config import Config
from seq2seq_jax.vocab import PAD_ID

MATMUL_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


# The run settings the model reads (config.py documents each); everything else stays out.
MODEL_FIELDS = ("input_mode", "embed_dim", "tie_embeddings", "tie_output", "latent_dim", "num_layers", "cell", "decoder_input",
                "dropout", "reverse_source", "attention", "input_feeding",
                "bidirectional_encoder", "fused_lstm", "matmul_dtype", "lstm_impl", "scan_unroll")


def _model_config_from(cls, config: Any) -> "ModelConfig":
  """The model fields of a run config (a Config or a ModelConfig)."""
  return cls(**{name: getattr(config, name) for name in MODEL_FIELDS})


# The model's own settings: MODEL_FIELDS of Config, with its types and defaults, frozen.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    [(f.name, f.type, dataclasses.field(default=f.default))
     for f in dataclasses.fields(Config) if f.name in MODEL_FIELDS],
    frozen=True, namespace={"from_config": classmethod(_model_config_from), "__module__": __name__})
Carry = tuple[jax.Array, ...]  # LSTM (h_BxH, c_BxH), Keras order; GRU (h_BxH,)
NEG_INF = -1e9

# scan_unroll 0: time steps per scan iteration by platform (docs/accelerators.md). cpu:
# measured, 1 (unrolled by 2, 4 or 8, lstm_sequence's saving and backward scans copy the
# whole T x B x 4H gate buffer every iteration instead of updating it in place: training
# at the seed shapes 1.6-2.4x slower; decoding and forward-only scans within noise). gpu:
# measured once on an H200, 1 (one layer's forward + backward per step: at batch 64 unroll
# 2 was 3% faster, within noise; at batch 1024 unroll 1 fastest, 4 and 8 up to 2.4x slower).
# tpu: 1, unmeasured (the same copies would be made).
PLATFORM_SCAN_UNROLL = {"cpu": 1, "gpu": 1, "tpu": 1}


def resolve_scan_unroll(scan_unroll: int, platform: str | None = None) -> int:
  """Time steps per iteration of the recurrent scans: scan_unroll, or for 0 the platform's
  default (PLATFORM_SCAN_UNROLL; 1 for a platform it does not name)."""
  if scan_unroll > 0:
    return scan_unroll
  return PLATFORM_SCAN_UNROLL.get(platform or jax.default_backend(), 1)


def matmul_operand(x: jax.Array, dtype: Any = None) -> jax.Array:
  """x as a matmul operand: unchanged for float32 (dtype None), else rounded to dtype."""
  return x if dtype is None else x.astype(dtype)


def matmul(a: jax.Array, b: jax.Array, dtype: Any = None) -> jax.Array:
  """a @ b. With dtype bfloat16 the operands are rounded to bfloat16 and the products
  summed in float32 (mixed precision: about 1.6x the float32 matmul rate on a CPU with
  AVX512-BF16, more on GPU/TPU); parameters and everything elementwise stay float32."""
  return jnp.matmul(matmul_operand(a, dtype), matmul_operand(b, dtype),
                    preferred_element_type=jnp.float32)


def mixed_dot_general(dtype: Any) -> Callable[..., jax.Array]:
  """lax.dot_general with matmul's operand rule, for Flax layers (their biases stay float32)."""
  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type  # products are always summed in float32
    return jax.lax.dot_general(matmul_operand(lhs, dtype), matmul_operand(rhs, dtype),
                               dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32)
  return dot_general


def _gate_affine(hidden: int) -> tuple[jax.Array, jax.Array]:
  """(scale_4H, shift_4H) such that every gate activation is scale * tanh(scale * z) + shift:
  sigmoid(x) = 0.5 tanh(0.5 x) + 0.5 for i, f, o; tanh for c."""
  half, one = jnp.full((hidden,), 0.5), jnp.ones((hidden,))
  return (jnp.concatenate([half, half, one, half]),
          jnp.concatenate([half, half, jnp.zeros((hidden,)), half]))


def lstm_activations(z_Bx4H: jax.Array) -> jax.Array:
  """Keras' gate order i, f, c, o and activations (sigmoid, sigmoid, tanh, sigmoid),
  computed as one tanh over all 4H pre-activations: XLA fuses that into one loop, where
  four separate activations of slices cost as much as the recurrent matmul on a CPU."""
  scale_4H, shift_4H = _gate_affine(z_Bx4H.shape[-1] // 4)
  return jnp.tanh(z_Bx4H * scale_4H) * scale_4H + shift_4H


def lstm_gates(z_Bx4H: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The activated gates (i, f, g, o) of pre-activations z."""
  return tuple(jnp.split(lstm_activations(z_Bx4H), 4, axis=-1))


def lstm_cell(xproj_Bx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array,
              dtype: Any = None) -> Carry:
  """One LSTM step given the precomputed input projection (x @ kernel + bias)."""
  h_BxH, c_BxH = carry
  i, f, g, o = lstm_gates(xproj_Bx4H + matmul(h_BxH, recurrent_kernel_Hx4H, dtype))
  c_BxH = f * c_BxH + i * g
  h_BxH = o * jnp.tanh(c_BxH)
  return h_BxH, c_BxH


def gru_cell(xproj_Bx3H: jax.Array, carry: Carry, recurrent_kernel_Hx3H: jax.Array,
             recurrent_bias_3H: jax.Array, dtype: Any = None) -> Carry:
  """One GRU step (Keras 3, reset_after=True) given x @ kernel + input bias."""
  (h_BxH,) = carry
  x_z, x_r, x_h = jnp.split(xproj_Bx3H, 3, axis=-1)
  r_z, r_r, r_h = jnp.split(matmul(h_BxH, recurrent_kernel_Hx3H, dtype) + recurrent_bias_3H, 3, axis=-1)
  z = jax.nn.sigmoid(x_z + r_z)
  r = jax.nn.sigmoid(x_r + r_r)
  candidate = jnp.tanh(x_h + r * r_h)
  return (z * h_BxH + (1.0 - z) * candidate,)


def rnn_scan(cell: Callable[[jax.Array, Carry], Carry], xproj_BxTxG: jax.Array, carry: Carry,
             mask_BxT: jax.Array | None = None, unroll: int = 1) -> tuple[Carry, jax.Array]:
  """Runs a cell over time. Where mask is False the carry is held unchanged, so
  right padding never changes the final state. Returns (carry, h_BxTxH)."""

  def step(carry, inputs):
    xproj_BxG, mask_B = inputs
    new = cell(xproj_BxG, carry)
    if mask_B is not None:
      keep_Bx1 = mask_B[:, None]
      new = tuple(jnp.where(keep_Bx1, n, o) for n, o in zip(new, carry))
    return new, new[0]

  xs = (jnp.swapaxes(xproj_BxTxG, 0, 1),
        None if mask_BxT is None else jnp.swapaxes(mask_BxT, 0, 1))
  carry, h_TxBxH = jax.lax.scan(step, carry, xs, unroll=unroll)
  return carry, jnp.swapaxes(h_TxBxH, 0, 1)


def lstm_scan(xproj_BxTx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array,
              mask_BxT: jax.Array | None = None, unroll: int = 1) -> tuple[Carry, jax.Array]:
  """rnn_scan of lstm_cell."""
  cell = lambda xproj, c: lstm_cell(xproj, c, recurrent_kernel_Hx4H)
  return rnn_scan(cell, xproj_BxTx4H, carry, mask_BxT, unroll)


def _lstm_forward(xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H, keep_TxB, dtype,
                  save=False, unroll=1):
  """The LSTM over time, time-major: outputs h_TxBxH and cells c_TxBxH. With save, also
  what the backward pass reads: the gate activations (i, f, g, o) of every step,
  written over that step's input projection in xproj's own buffer (XLA updates it in
  place, so the largest residual needs no buffer of its own, nor zero-filling), and
  every step's incoming h transposed, h_prev_HxTxB, in the layout the recurrent
  kernel's gradient reads it (no transpose of the whole sequence afterwards)."""
  recurrent_kernel_Hx4H = matmul_operand(recurrent_kernel_Hx4H, dtype)  # once, not every step
  steps, batch = keep_TxB.shape

  def cell(h_BxH, c_BxH, xproj_Bx4H, keep_B):
    gates_Bx4H = lstm_activations(xproj_Bx4H + matmul(h_BxH, recurrent_kernel_Hx4H, dtype))
    i, f, g, o = jnp.split(gates_Bx4H, 4, axis=-1)
    new_c_BxH = f * c_BxH + i * g
    new_h_BxH = o * jnp.tanh(new_c_BxH)
    keep_Bx1 = keep_B[:, None] > 0  # masked steps hold the carry
    return (jnp.where(keep_Bx1, new_h_BxH, h_BxH), jnp.where(keep_Bx1, new_c_BxH, c_BxH),
            gates_Bx4H)

  if not save:
    def step(carry, inputs):
      h_BxH, c_BxH, _ = cell(*carry, *inputs)
      return (h_BxH, c_BxH), (h_BxH, c_BxH)

    _, (h_TxBxH, c_TxBxH) = jax.lax.scan(step, (h0_BxH, c0_BxH), (xproj_TxBx4H, keep_TxB),
                                         unroll=unroll)
    return h_TxBxH, c_TxBxH

  def saving_step(carry, inputs):
    h_BxH, c_BxH, gates_TxBx4H, h_prev_HxTxB = carry
    keep_B, t = inputs
    h_prev_HxTxB = jax.lax.dynamic_update_slice_in_dim(h_prev_HxTxB, h_BxH.T[:, None], t, axis=1)
    xproj_Bx4H = jax.lax.dynamic_index_in_dim(gates_TxBx4H, t, 0, keepdims=False)
    h_BxH, c_BxH, gates_Bx4H = cell(h_BxH, c_BxH, xproj_Bx4H, keep_B)
    gates_TxBx4H = jax.lax.dynamic_update_index_in_dim(gates_TxBx4H, gates_Bx4H, t, 0)
    return (h_BxH, c_BxH, gates_TxBx4H, h_prev_HxTxB), (h_BxH, c_BxH)

  h_prev_HxTxB = jnp.zeros((h0_BxH.shape[1], steps, batch), h0_BxH.dtype)
  (_, _, gates_TxBx4H, h_prev_HxTxB), (h_TxBxH, c_TxBxH) = jax.lax.scan(
      saving_step, (h0_BxH, c0_BxH, xproj_TxBx4H, h_prev_HxTxB), (keep_TxB, jnp.arange(steps)),
      unroll=unroll)
  return h_TxBxH, c_TxBxH, gates_TxBx4H, h_prev_HxTxB


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def lstm_sequence(xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H, keep_TxB, dtype=None,
                  unroll=1):
  """An LSTM layer over a whole (time-major) sequence: (h_TxBxH, final c_BxH); the
  final h is h_TxBxH[-1]. Steps where keep is 0 hold the carry. Equal to scanning lstm_cell; its gradient is hand-written the way
  cuDNN and oneDNN do it: the backward scan computes only the per-step gate gradients
  and the carry's, and the recurrent kernel's gradient is then one large matmul over
  all steps instead of a small outer-product accumulation inside every step. dtype: the
  matmuls' operand dtype (see matmul); unroll: time steps per iteration of both scans."""
  h_TxBxH, c_TxBxH = _lstm_forward(xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H,
                                   keep_TxB, dtype, unroll=unroll)
  return h_TxBxH, c_TxBxH[-1]


def _lstm_sequence_fwd(xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H, keep_TxB, dtype,
                       unroll):
  h_TxBxH, c_TxBxH, gates_TxBx4H, h_prev_HxTxB = _lstm_forward(
      xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H, keep_TxB, dtype, save=True,
      unroll=unroll)
  return (h_TxBxH, c_TxBxH[-1]), (h_prev_HxTxB, c_TxBxH, gates_TxBx4H, c0_BxH,
                                  recurrent_kernel_Hx4H, keep_TxB)


def _lstm_sequence_bwd(dtype, unroll, residuals, cotangents):
  """The backward scan writes each step's gate gradient dz over that step's gate
  activations, in their buffer, which so becomes dz_TxBx4H. Each step reads the previous
  step's gates only after that write: the buffer then has one user per step, the update,
  and XLA updates it in place (a read before the update made it copy the whole buffer)."""
  dh_TxBxH, dc_last_BxH = cotangents
  h_prev_HxTxB, c_TxBxH, gates_TxBx4H, c0_BxH, recurrent_kernel_Hx4H, keep_TxB = residuals
  kernel_T_4HxH = matmul_operand(recurrent_kernel_Hx4H.T, dtype)
  last = keep_TxB.shape[0] - 1

  def step(carry, inputs):
    dh_BxH, dc_BxH, gates_Bx4H, buffer_TxBx4H = carry  # dh, dc: flowing back into step t
    dh_out_BxH, c_BxH, keep_B, t = inputs
    c_prev_BxH = jnp.where(t > 0, jax.lax.dynamic_index_in_dim(
        c_TxBxH, jnp.maximum(t - 1, 0), 0, keepdims=False), c0_BxH)
    dh_BxH = dh_BxH + dh_out_BxH
    i, f, g, o = jnp.split(gates_Bx4H, 4, axis=-1)
    tanh_c_BxH = jnp.tanh(c_BxH)
    dc_new_BxH = dc_BxH + dh_BxH * o * (1.0 - tanh_c_BxH * tanh_c_BxH)
    dz_Bx4H = jnp.concatenate([dc_new_BxH * g * i * (1.0 - i),
                               dc_new_BxH * c_prev_BxH * f * (1.0 - f),
                               dc_new_BxH * i * (1.0 - g * g),
                               dh_BxH * tanh_c_BxH * o * (1.0 - o)], -1)
    keep_Bx1 = keep_B[:, None] > 0
    dz_Bx4H = jnp.where(keep_Bx1, dz_Bx4H, 0.0)
    buffer_TxBx4H = jax.lax.dynamic_update_index_in_dim(buffer_TxBx4H, dz_Bx4H, t, 0)
    next_gates_Bx4H = jax.lax.dynamic_index_in_dim(buffer_TxBx4H, jnp.maximum(t - 1, 0), 0,
                                                   keepdims=False)
    dh_prev_BxH = jnp.where(keep_Bx1, matmul(dz_Bx4H, kernel_T_4HxH, dtype), dh_BxH)
    dc_prev_BxH = jnp.where(keep_Bx1, dc_new_BxH * f, dc_BxH)
    return (dh_prev_BxH, dc_prev_BxH, next_gates_Bx4H, buffer_TxBx4H), None

  (dh0_BxH, dc0_BxH, _, dz_TxBx4H), _ = jax.lax.scan(
      step, (jnp.zeros_like(c0_BxH), dc_last_BxH, gates_TxBx4H[last], gates_TxBx4H),
      (dh_TxBxH, c_TxBxH, keep_TxB, jnp.arange(last + 1)), reverse=True, unroll=unroll)
  d_kernel_Hx4H = jax.lax.dot_general(  # sum over steps and batch rows of h_{t-1}^T dz_t
      matmul_operand(h_prev_HxTxB, dtype), matmul_operand(dz_TxBx4H, dtype),
      (((1, 2), (0, 1)), ((), ())), preferred_element_type=jnp.float32)
  return dz_TxBx4H, dh0_BxH, dc0_BxH, d_kernel_Hx4H, jnp.zeros_like(keep_TxB)


lstm_sequence.defvjp(_lstm_sequence_fwd, _lstm_sequence_bwd)


def lstm_time_major(xproj_TxBx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array,
                    mask_BxT: jax.Array | None = None, dtype: Any = None,
                    unroll: int = 1) -> tuple[Carry, jax.Array]:
  """lstm_sequence over time-major projections: (final (h, c), h_TxBxH)."""
  h0_BxH, c0_BxH = carry
  steps, batch = xproj_TxBx4H.shape[:2]
  keep_TxB = (jnp.ones((steps, batch), jnp.float32) if mask_BxT is None
              else jnp.swapaxes(mask_BxT, 0, 1).astype(jnp.float32))
  h_TxBxH, c_BxH = lstm_sequence(xproj_TxBx4H, h0_BxH, c0_BxH, recurrent_kernel_Hx4H, keep_TxB,
                                 dtype, unroll)
  return (h_TxBxH[-1], c_BxH), h_TxBxH


def lstm_layer_scan(xproj_BxTx4H: jax.Array, carry: Carry, recurrent_kernel_Hx4H: jax.Array,
                    mask_BxT: jax.Array | None = None, dtype: Any = None,
                    unroll: int = 1) -> tuple[Carry, jax.Array]:
  """rnn_scan of lstm_cell through lstm_sequence: (final (h, c), h_BxTxH)."""
  carry, h_TxBxH = lstm_time_major(jnp.swapaxes(xproj_BxTx4H, 0, 1), carry,
                                   recurrent_kernel_Hx4H, mask_BxT, dtype, unroll)
  return carry, jnp.swapaxes(h_TxBxH, 0, 1)


def forget_bias_init(key, shape, dtype=jnp.float32):
  """Keras unit_forget_bias: zeros, with the forget gate's quarter set to one."""
  del key
  hidden = shape[0] // 4
  return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


class RecurrentLayer(nn.Module):
  """One LSTM or GRU layer, Keras parameter layout and initialisers."""
  hidden: int
  in_dim: int
  cell: str = "lstm"
  onehot: bool = False  # inputs are ids and the kernel is indexed (= one-hot @ kernel)
  feed_dim: int = 0  # > 0: a second input (attentional state, "input feeding")
  fused: bool = True  # LSTM: lstm_sequence's hand-written gradient (False: autodiff of the scan)
  matmul_dtype: Any = None  # None: float32 matmuls; jnp.bfloat16: mixed precision (see matmul)
  lstm_impl: str = "scan"  # LSTM over a sequence: "scan", or "cudnn" (cudnn.lstm_layer)
  unroll: int = 1  # time steps per scan iteration

  def setup(self):
    gates = (4 if self.cell == "lstm" else 3) * self.hidden
    glorot = nn.initializers.glorot_uniform()
    if self.feed_dim:
      self.feed_kernel = self.param("feed_kernel", glorot, (self.feed_dim, gates))
    self.kernel = self.param("kernel", glorot, (self.in_dim, gates))
    self.recurrent_kernel = self.param("recurrent_kernel", nn.initializers.orthogonal(),
                                       (self.hidden, gates))
    if self.cell == "lstm":
      self.bias = self.param("bias", forget_bias_init, (gates,))
    else:
      self.bias = self.param("bias", nn.initializers.zeros_init(), (2, gates))

  def project_fn(self) -> Callable[[jax.Array], jax.Array]:
    """A pure x -> x @ kernel + input bias; x is ids (one-hot mode) or features."""
    kernel, input_bias, onehot = self.kernel, self.bias if self.cell == "lstm" else self.bias[0], self.onehot
    dtype = self.matmul_dtype
    return lambda x: (kernel[x] if onehot else matmul(x, kernel, dtype)) + input_bias

  def cell_fn(self) -> Callable[[jax.Array, Carry], Carry]:
    """A pure (xproj, carry) -> carry."""
    recurrent_kernel, dtype = self.recurrent_kernel, self.matmul_dtype
    if self.cell == "lstm":
      return lambda xproj, carry: lstm_cell(xproj, carry, recurrent_kernel, dtype)
    recurrent_bias = self.bias[1]
    return lambda xproj, carry: gru_cell(xproj, carry, recurrent_kernel, recurrent_bias, dtype)

  def zero_carry(self, batch: int) -> Carry:
    zeros_BxH = jnp.zeros((batch, self.hidden), jnp.float32)
    return (zeros_BxH, zeros_BxH) if self.cell == "lstm" else (zeros_BxH,)

  def project(self, x: jax.Array) -> jax.Array:
    return self.project_fn()(x)

  @property
  def runs_cudnn(self) -> bool:
    """Its sequences run through cuDNN (an LSTM layer with lstm_impl "cudnn", no second input)."""
    return self.cell == "lstm" and self.lstm_impl == "cudnn" and not self.feed_dim

  def cudnn_inputs(self, x: jax.Array) -> jax.Array:
    """x as cuDNN's float32 input features: ids one-hot (cuDNN multiplies by the kernel)."""
    return jax.nn.one_hot(x, self.in_dim, dtype=jnp.float32) if self.onehot else x

  def cudnn_params(self) -> cudnn.Params:
    return self.kernel, self.recurrent_kernel, self.bias

  def __call__(self, x, carry: Carry, mask_BxT=None, unroll: int | None = None):
    unroll = self.unroll if unroll is None else unroll
    if self.runs_cudnn:
      return cudnn.lstm_layer(self.cudnn_inputs(x), carry, self.cudnn_params(), mask_BxT)
    if self.cell == "lstm" and self.fused:
      # inputs go time-major before the projection: the T x B x 4H projections are then
      # written once, in the order the scan reads them (no 4H-wide transpose)
      carry, h_TxBxH = lstm_time_major(self.project(jnp.swapaxes(x, 0, 1)), carry,
                                       self.recurrent_kernel, mask_BxT, self.matmul_dtype,
                                       unroll)
      return carry, jnp.swapaxes(h_TxBxH, 0, 1)
    return rnn_scan(self.cell_fn(), self.project(x), carry, mask_BxT, unroll)

  def step(self, x_B, carry: Carry) -> Carry:
    return self.cell_fn()(self.project(x_B), carry)


LSTMLayer = RecurrentLayer  # the name used by Keras users


class Dropout(nn.Module):
  """nn.Dropout with the rate given at call time, so it can be traced (one value per
  trial of a vectorised sweep); a Python rate draws and scales exactly as nn.Dropout."""

  @nn.compact
  def __call__(self, x: jax.Array, rate: float | jax.Array, train: bool) -> jax.Array:
    if not train or (isinstance(rate, (int, float)) and rate == 0.0):
      return x
    keep_prob = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep_prob, shape=x.shape)
    return jax.lax.select(mask, x / keep_prob, jnp.zeros_like(x))


def traced_dropout_rate(rate: float) -> np.float32:
  """The float32 rate whose in-graph 1 - rate equals nn.Dropout's float64 1 - rate
  rounded to float32 (the two differ by an ulp for some rates, e.g. 0.33)."""
  return np.float32(1.0) - np.float32(1.0 - rate)


def attentional_vector(scores_BxTxS: jax.Array, h_BxTxH: jax.Array, enc_BxSxH: jax.Array,
                       mask_BxS: jax.Array, combine_kernel_2HxH: jax.Array) -> jax.Array:
  """tanh(W_c [context; h]) with context the softmax(scores)-weighted encoder outputs,
  source padding masked."""
  scores_BxTxS = jnp.where(mask_BxS[:, None, :], scores_BxTxS, NEG_INF)
  weights_BxTxS = jax.nn.softmax(scores_BxTxS, axis=-1)
  context_BxTxH = jnp.einsum("bts,bsh->bth", weights_BxTxS, enc_BxSxH)
  return jnp.tanh(jnp.concatenate([context_BxTxH, h_BxTxH], -1) @ combine_kernel_2HxH)


def luong_attention(h_BxTxH: jax.Array, enc_BxSxH: jax.Array, mask_BxS: jax.Array,
                    query_kernel_HxH: jax.Array | None, combine_kernel_2HxH: jax.Array) -> jax.Array:
  """Luong attention: tanh(W_c [context; h]), scores h W_q e ("general") or h e ("dot")."""
  query_BxTxH = h_BxTxH if query_kernel_HxH is None else h_BxTxH @ query_kernel_HxH
  scores_BxTxS = jnp.einsum("bth,bsh->bts", query_BxTxH, enc_BxSxH)
  return attentional_vector(scores_BxTxS, h_BxTxH, enc_BxSxH, mask_BxS, combine_kernel_2HxH)


def additive_attention(h_BxTxH: jax.Array, keys_BxSxA: jax.Array, enc_BxSxH: jax.Array,
                       mask_BxS: jax.Array, query_kernel_HxA: jax.Array, score_A: jax.Array,
                       combine_kernel_2HxH: jax.Array) -> jax.Array:
  """Bahdanau's additive score v^T tanh(W_q h + W_k e), keys = e W_k precomputed once per
  source; the attentional vector tanh(W_c [context; h]) as Luong's."""
  query_BxTxA = h_BxTxH @ query_kernel_HxA
  hidden_BxTxSxA = jnp.tanh(query_BxTxA[:, :, None, :] + keys_BxSxA[:, None, :, :])
  scores_BxTxS = hidden_BxTxSxA @ score_A
  return attentional_vector(scores_BxTxS, h_BxTxH, enc_BxSxH, mask_BxS, combine_kernel_2HxH)


def reverse_valid_steps(x_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """Each row's unmasked (leading) steps in reverse order, padding left in place; x is
  BxS ids or BxSxF features. Its own inverse."""
  length_Bx1 = mask_BxS.sum(axis=1, keepdims=True)
  t_1xS = jnp.arange(x_BxS.shape[1])[None, :]
  index_BxS = jnp.where(t_1xS < length_Bx1, length_Bx1 - 1 - t_1xS, t_1xS)
  if x_BxS.ndim == 3:
    index_BxS = index_BxS[:, :, None]
  return jnp.take_along_axis(x_BxS, index_BxS, axis=1)


# The decoder's recurrent state: (carry per layer, attentional vector fed back at the next step).
DecoderState = tuple[list[Carry], jax.Array]


class Seq2Seq(nn.Module):
  """Encoder stack whose final state seeds the decoder stack (decoder_input="previous"),
  or whose final top-layer h is repeated as the decoder's input at every step
  (decoder_input="repeat", the RepeatVector encoder-decoder).

  bidirectional_encoder: every encoder layer k gets a backward twin
  (encoder_backward_{cell}_k) reading each sentence's characters last to first; layer k+1
  reads both directions' outputs concatenated (2H). Decoder layer k starts from
  encoder_bridge_k_{h,c}([forward; backward] final state), a linear Dense 2H -> H per
  carry part; attention reads the top outputs through encoder_outputs_proj (Dense 2H -> H).

  input_mode "real": sources are float features BxSxF (time series) and the output
  layer is linear over tgt_vocab_size target features.
  """
  src_vocab_size: int
  tgt_vocab_size: int
  config: ModelConfig

  def setup(self):
    cfg = self.config
    onehot = cfg.input_mode == "onehot"
    H = cfg.latent_dim
    self.matmul_dtype = MATMUL_DTYPES[cfg.matmul_dtype]
    # what the LSTM layers run here (cudnn.resolve_lstm_impl), and the scans' unroll
    lstm_impl = cudnn.resolve_lstm_impl(cfg.lstm_impl, cell=cfg.cell, matmul_dtype=cfg.matmul_dtype)
    self.unroll = resolve_scan_unroll(cfg.scan_unroll)
    self.repeat = cfg.decoder_input == "repeat"
    self.feeding = cfg.attention != "none" and cfg.input_feeding and not self.repeat
    if cfg.input_mode == "embed":
      self.src_embed = nn.Embed(self.src_vocab_size, cfg.embed_dim, name="src_embed")
      if not self.repeat and not cfg.tie_embeddings:
        self.tgt_embed = nn.Embed(self.tgt_vocab_size, cfg.embed_dim, name="tgt_embed")

    glorot = nn.initializers.glorot_uniform()

    def stack(prefix: str, first_in: int, first_onehot: bool, feed_dim: int = 0, rest_in: int = H):
      return [RecurrentLayer(H, first_in if k == 0 else rest_in, cfg.cell,
                             onehot=first_onehot and k == 0, feed_dim=feed_dim if k == 0 else 0,
                             fused=cfg.fused_lstm, matmul_dtype=self.matmul_dtype,
                             lstm_impl=lstm_impl, unroll=self.unroll,
                             name=f"{prefix}_{cfg.cell}_{k}")
              for k in range(cfg.num_layers)]
    src_in = {"onehot": self.src_vocab_size, "embed": cfg.embed_dim,
              "real": self.src_vocab_size}[cfg.input_mode]
    tgt_in = H if self.repeat else (self.tgt_vocab_size if onehot else cfg.embed_dim)
    self.bidirectional = cfg.bidirectional_encoder
    encoder_out = 2 * H if self.bidirectional else H
    self.encoder = stack("encoder", src_in, onehot, rest_in=encoder_out)
    if self.bidirectional:
      self.encoder_backward = stack("encoder_backward", src_in, onehot, rest_in=encoder_out)
      carry_parts = ("h", "c") if cfg.cell == "lstm" else ("h",)
      self.encoder_bridges = [[nn.Dense(H, kernel_init=glorot, name=f"encoder_bridge_{k}_{part}")
                               for part in carry_parts] for k in range(cfg.num_layers)]
      if cfg.attention != "none":
        self.encoder_outputs_proj = nn.Dense(H, kernel_init=glorot, name="encoder_outputs_proj")
    self.decoder = stack("decoder", tgt_in, onehot and not self.repeat, H if self.feeding else 0)
    if cfg.attention == "general":
      self.attention_query = self.param("attention_query", glorot, (H, H))
    if cfg.attention == "additive":
      self.additive_query = self.param("additive_query", glorot, (H, H))
      self.additive_key = self.param("additive_key", glorot, (H, H))
      self.additive_score = self.param("additive_score", nn.initializers.glorot_uniform(
          in_axis=0, out_axis=()), (H,))
    if cfg.attention != "none":
      self.attention_combine = self.param("attention_combine", glorot, (2 * H, H))
    if cfg.tie_output:  # logits = readout @ target embedding^T + output_bias
      self.output_bias = self.param("output_bias", nn.initializers.zeros_init(),
                                    (self.tgt_vocab_size,))
    else:
      self.output_dense = nn.Dense(self.tgt_vocab_size, kernel_init=glorot, name="output_dense",
                                   dot_general=mixed_dot_general(self.matmul_dtype))
    self.dropout = Dropout()

  # -- encoder -----------------------------------------------------------------
  def encode(self, src_BxS: jax.Array, train: bool = False, dropout_rate: float | jax.Array | None = None,
             ) -> tuple[list[Carry], jax.Array, jax.Array]:
    """Returns (final carry per layer, encoder outputs BxSxH, source mask BxS).

    dropout_rate: overrides config.dropout (a traced value in vectorised sweeps).

    A bidirectional encoder without attention returns its outputs BxSx2H (nothing reads them).
    """
    if self.config.input_mode == "real":  # BxSxF features, never padded
      mask_BxS = jnp.ones(src_BxS.shape[:2], bool)
    else:
      mask_BxS = src_BxS != PAD_ID
    if self.config.reverse_source:
      src_BxS = reverse_valid_steps(src_BxS, mask_BxS)
    x = self.src_embed(src_BxS) if self.config.input_mode == "embed" else src_BxS
    carries = []
    for k, layer in enumerate(self.encoder):
      if k > 0 or self.config.input_mode == "embed":
        x = self.dropout(x, self._rate(dropout_rate), train)
      zero_carry = layer.zero_carry(src_BxS.shape[0])
      if self.bidirectional and layer.runs_cudnn:  # both directions in one cuDNN call
        backward = self.encoder_backward[k]
        carry, backward_carry, x = cudnn.lstm_bidirectional(
            layer.cudnn_inputs(x), zero_carry, zero_carry, layer.cudnn_params(),
            backward.cudnn_params(), mask_BxS)
        carries.append(tuple(bridge(jnp.concatenate([f, b], -1)) for bridge, f, b in
                             zip(self.encoder_bridges[k], carry, backward_carry)))
        continue
      carry, forward_BxSxH = layer(x, zero_carry, mask_BxS)
      if not self.bidirectional:
        carries.append(carry)
        x = forward_BxSxH
        continue
      # the backward layer reads each sentence's real steps reversed, so padding never
      # enters its state; its outputs are put back in source order
      backward_carry, backward_rev_BxSxH = self.encoder_backward[k](
          reverse_valid_steps(x, mask_BxS), zero_carry, mask_BxS)
      carries.append(tuple(bridge(jnp.concatenate([f, b], -1)) for bridge, f, b in
                           zip(self.encoder_bridges[k], carry, backward_carry)))
      x = jnp.concatenate([forward_BxSxH, reverse_valid_steps(backward_rev_BxSxH, mask_BxS)], -1)
    if self.bidirectional and self.config.attention != "none":
      x = self.encoder_outputs_proj(x)
    return carries, x, mask_BxS

  # -- decoder -----------------------------------------------------------------
  def initial_decoder_state(self, carries: list[Carry]) -> DecoderState:
    """The encoder's final state per layer, and a zero attentional vector."""
    return list(carries), jnp.zeros_like(carries[-1][0])

  def _attention_fn(self, enc_BxSxH, mask_BxS) -> Callable[[jax.Array], jax.Array] | None:
    """A pure h_BxTxH -> attentional vectors BxTxH over this source (None: no attention);
    parameters and the additive keys are computed once, outside any step."""
    attention = self.config.attention
    if attention == "none":
      return None
    combine = self.attention_combine
    if attention == "additive":
      query, score = self.additive_query, self.additive_score
      keys_BxSxA = enc_BxSxH @ self.additive_key
      return lambda h: additive_attention(h, keys_BxSxA, enc_BxSxH, mask_BxS, query, score, combine)
    query = self.attention_query if attention == "general" else None
    return lambda h: luong_attention(h, enc_BxSxH, mask_BxS, query, combine)

  def _attend(self, h_BxTxH, enc_BxSxH, mask_BxS) -> jax.Array:
    attend = self._attention_fn(enc_BxSxH, mask_BxS)
    if attend is None:
      return h_BxTxH
    if self.config.attention == "additive":  # one step at a time: BxSxA, not BxTxSxA, in memory
      attend_step = lambda h_BxH: attend(h_BxH[:, None])[:, 0]
      return jnp.swapaxes(jax.lax.map(attend_step, jnp.swapaxes(h_BxTxH, 0, 1)), 0, 1)
    return attend(h_BxTxH)

  def _step_fn(self, enc_BxSxH, mask_BxS):
    """A pure function (state, xproj0_BxG) -> (state, readout_BxH): one decoder step
    after the first layer's input projection; parameters are closed over."""
    cells = [layer.cell_fn() for layer in self.decoder]
    projections = [layer.project_fn() for layer in self.decoder]
    feed_kernel = self.decoder[0].feed_kernel if self.feeding else None
    attend = self._attention_fn(enc_BxSxH, mask_BxS)

    def step(state: DecoderState, xproj0_BxG: jax.Array):
      carries, feed_BxH = state
      if feed_kernel is not None:
        xproj0_BxG = xproj0_BxG + matmul(feed_BxH, feed_kernel, self.matmul_dtype)
      new_carries, x_BxH = [], None
      for k, cell in enumerate(cells):
        carry = cell(xproj0_BxG if k == 0 else projections[k](x_BxH), carries[k])
        new_carries.append(carry)
        x_BxH = carry[0]
      if attend is not None:
        x_BxH = attend(x_BxH[:, None])[:, 0]
      return (new_carries, x_BxH), x_BxH

    return step

  def decode(self, carries: list[Carry], enc_BxSxH, mask_BxS, tgt_in_BxT, train: bool = False,
             dropout_rate: float | jax.Array | None = None) -> jax.Array:
    """Teacher-forced decoder over the whole target: logits (or values) BxTxV.

    With decoder_input="repeat" only the length of tgt_in is used: each output step t
    depends on steps <= t only, so T steps give the first T of any longer decode.
    """
    if self.repeat:
      steps = tgt_in_BxT.shape[1]
      top_h_BxH = carries[-1][0]
      x = jnp.broadcast_to(top_h_BxH[:, None, :], (top_h_BxH.shape[0], steps, top_h_BxH.shape[1]))
      carries = [layer.zero_carry(top_h_BxH.shape[0]) for layer in self.decoder]
    elif self.config.input_mode == "onehot":
      x = tgt_in_BxT
    else:
      x = self.dropout(self._target_embed()(tgt_in_BxT), self._rate(dropout_rate), train)
    if self.feeding:  # the attentional vector feeds the next step: one scan over all layers
      xproj0_BxTxG = self.decoder[0].project(x)
      step = self._step_fn(enc_BxSxH, mask_BxS)
      _, readout_TxBxH = jax.lax.scan(step, self.initial_decoder_state(carries),
                                      jnp.swapaxes(xproj0_BxTxG, 0, 1), unroll=self.unroll)
      readout_BxTxH = jnp.swapaxes(readout_TxBxH, 0, 1)
    else:  # layer by layer, attention over all steps at once afterwards
      for k, layer in enumerate(self.decoder):
        if k > 0:
          x = self.dropout(x, self._rate(dropout_rate), train)
        _, x = layer(x, carries[k])
      readout_BxTxH = self._attend(x, enc_BxSxH, mask_BxS)
    return self._output(self.dropout(readout_BxTxH, self._rate(dropout_rate), train))

  def decode_step(self, state: DecoderState, enc_BxSxH, mask_BxS, prev_B) -> tuple[DecoderState, jax.Array]:
    """One decoding step from the previous token ids: (state, logits BxV)."""
    x = prev_B if self.config.input_mode == "onehot" else self._target_embed()(prev_B)
    state, readout_BxH = self._step_fn(enc_BxSxH, mask_BxS)(state, self.decoder[0].project(x))
    return state, self._output(readout_BxH)

  def _target_embed(self) -> nn.Embed:
    """The target tokens' embedding: the source's with tie_embeddings."""
    return self.src_embed if self.config.tie_embeddings else self.tgt_embed

  def _output(self, readout: jax.Array) -> jax.Array:
    """Logits (or values) over the target vocabulary: the output Dense, or with tie_output
    the target embedding transposed plus output_bias."""
    if not self.config.tie_output:
      return self.output_dense(readout)
    table_VxE = self._target_embed().embedding
    return matmul(readout, table_VxE.T, self.matmul_dtype) + self.output_bias

  def _rate(self, dropout_rate: float | jax.Array | None) -> float | jax.Array:
    return self.config.dropout if dropout_rate is None else dropout_rate

  def __call__(self, src_BxS, tgt_in_BxT, train: bool = False,
               dropout_rate: float | jax.Array | None = None) -> jax.Array:
    carries, enc_BxSxH, mask_BxS = self.encode(src_BxS, train, dropout_rate)
    return self.decode(carries, enc_BxSxH, mask_BxS, tgt_in_BxT, train, dropout_rate)


def build_model(config: Any, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
  """The model of a run config (Config or ModelConfig): it keeps only its own settings.
  lstm_impl=cudnn where it cannot run is a UserError now, not at the first step."""
  model_config = ModelConfig.from_config(config)
  if model_config.lstm_impl == "cudnn":
    cudnn.resolve_lstm_impl("cudnn", cell=model_config.cell, matmul_dtype=model_config.matmul_dtype)
  return Seq2Seq(src_vocab_size, tgt_vocab_size, model_config)


def with_scan_lstm(model: Seq2Seq) -> Seq2Seq:
  """The same model with its LSTM layers on the scan whatever its lstm_impl: for code under
  jax.vmap (the vectorised sweep step), since cuDNN's primitive has no batching rule."""
  if model.config.lstm_impl == "scan":
    return model
  return model.clone(config=dataclasses.replace(model.config, lstm_impl="scan"))


def init_params(model: Seq2Seq, rng: jax.Array) -> Any:
  if model.config.input_mode == "real":
    src = jnp.ones((1, 3, model.src_vocab_size), jnp.float32)
    return model.init({"params": rng}, src, jnp.ones((1, 2), jnp.int32))["params"]
  src = jnp.ones((1, 3), jnp.int32)
  tgt = jnp.ones((1, 2), jnp.int32)
  return model.init({"params": rng}, src, tgt)["params"]


def count_params(params: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))

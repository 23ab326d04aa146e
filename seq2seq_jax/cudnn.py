"""cuDNN LSTM layers (jax.experimental.rnn) on our Keras-layout parameters.

Withdrawn from runs; kept for diagnosis and the benchmark.

On one NVIDIA H200 (2026-12-04, jax 0.11.2) the default model trained through these layers
translated nothing (test exact match 0.000; the scan 0.996 on the same GPU) and trained
slower than the scan at every batch measured. The cause was not found there; the CPU
reference (lstm_ref) on the same code path trains exactly as the scan. So runs never take
this path: `auto` is the scan everywhere and config.py refuses lstm_impl=cudnn. What stays:
the per-step cuDNN timing of `seq2seq-jax benchmark`, experiments/cudnn_probe.py (the GPU
probe that compares this path with the scan), and the tests of its semantics on a CPU.
docs/accelerators.md has the figures and what the probe is to measure next.

`resolve_lstm_impl` decides what an LSTM layer runs; `pack_cudnn_weights` packs our
parameters into cuDNN's flat weight vector; `lstm_layer` and `lstm_bidirectional` run a
layer, or a forward and backward pair, in one cuDNN call.

Parameters stay in Keras' layout (kernel in x 4H, recurrent_kernel H x 4H, bias 4H, gates
i, f, c, o): they are packed inside the jitted function on every call, so a checkpoint is
the same whichever implementation trained it. cuDNN's LSTM (CUDNN_LSTM, linear layers 0-3
on the input and 4-7 on the recurrent state) orders its gates i, f, g, o, where g is
Keras' c, the cell candidate (tanh) gate: the order is the same, the matrices are stored
transposed (W_ih 4H x in, W_hh 4H x H), and cuDNN has two biases where Keras has one.
`pack_cudnn_weights` writes our bias as cuDNN's input bias and a zero recurrent bias: the
bias then enters once, with the input projection, as in our scan (x W + b, then + h U),
and its gradient is the input bias' gradient alone (the zero bias is a constant).

What cuDNN's call does not do, the scan does: bfloat16 matmuls (the call is float32 only),
vmap (the primitive has no batching rule: the vectorised sweep step asks for the scan,
`model.with_scan_lstm`), dropout inside the call (ours stays between layers), GRU cells,
and the decoder's step-by-step decoding (one step per call: the scan's cell).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from seq2seq_jax.errors import UserError

LSTM_IMPLS = ("auto", "scan", "cudnn")

# For each of cuDNN's gates (i, f, g, o), the index of the Keras gate (i, f, c, o) it reads.
CUDNN_GATE_ORDER = (0, 1, 2, 3)

# The call that runs a packed LSTM: None is jax.experimental.rnn.lstm (cuDNN); the CPU tests
# set reference_lstm, which runs the same packed weights through jax.experimental.rnn.lstm_ref.
lstm_call: Callable[..., tuple[jax.Array, jax.Array, jax.Array]] | None = None


def cuda_gpu() -> bool:
  """JAX's default devices are NVIDIA GPUs with cuDNN's RNN kernels linked (the CUDA plugin)."""
  try:
    device = jax.devices()[0]
  except RuntimeError:
    return False
  if device.platform != "gpu":
    return False
  try:
    from jax._src.lib import gpu_rnn
  except ImportError:
    return False
  return gpu_rnn is not None and getattr(gpu_rnn, "_cuda_rnn", None) is not None


def platform_name() -> str:
  """The platform of JAX's default devices: cpu, gpu or tpu."""
  return jax.default_backend()


def resolve_lstm_impl(requested: str, *, cell: str = "lstm", matmul_dtype: str = "float32",
                      cuda: bool | None = None) -> str:
  """What an LSTM layer runs here for lstm_impl `requested`: "scan" or "cudnn".

  auto: the scan, on every platform. On one H200 (2026-12-04) the scan trained faster than
  cuDNN at every batch measured (64 to 4096) and was right where cuDNN was not
  (docs/accelerators.md). cudnn: cuDNN, or a UserError where there is no CUDA GPU.
  cuda: the machine's (None: asked of JAX)."""
  if requested not in LSTM_IMPLS:
    raise UserError(f"lstm_impl must be one of {', '.join(LSTM_IMPLS)}; got {requested!r}.")
  if requested != "cudnn" or cell != "lstm":
    return "scan"
  if matmul_dtype != "float32":
    raise UserError("lstm_impl=cudnn runs float32 matmuls only: set matmul_dtype=float32, "
                    "or lstm_impl=auto or lstm_impl=scan.")
  cuda = cuda_gpu() if cuda is None else cuda
  if not cuda:
    raise UserError(f"lstm_impl=cudnn needs an NVIDIA GPU with JAX's CUDA build "
                    f"(jax[cuda12]); JAX runs on {platform_name()} here: set lstm_impl=auto "
                    "or lstm_impl=scan.")
  return "cudnn"


def _gates_as_rows(matrix_Nx4H: jax.Array) -> jax.Array:
  """A Keras in x 4H (or H x 4H) matrix as cuDNN's 4H x in: gate blocks in cuDNN's order."""
  blocks = jnp.split(matrix_Nx4H, 4, axis=-1)
  return jnp.concatenate([blocks[k] for k in CUDNN_GATE_ORDER], axis=-1).T


def _bias_in_cudnn_order(bias_4H: jax.Array) -> jax.Array:
  blocks = jnp.split(bias_4H, 4)
  return jnp.concatenate([blocks[k] for k in CUDNN_GATE_ORDER])


def pack_cudnn_layers(layers: Sequence[tuple[jax.Array, jax.Array, jax.Array]]) -> jax.Array:
  """cuDNN's flat weight vector of several pseudo-layers (a bidirectional pair is forward,
  then backward), each (kernel, recurrent_kernel, bias) in Keras' layout: every W_ih, W_hh
  first, then every (b_ih, b_hh), as jax.experimental.rnn lays them out."""
  weights, biases = [], []
  for kernel, recurrent_kernel, bias in layers:
    weights += [_gates_as_rows(kernel).ravel(), _gates_as_rows(recurrent_kernel).ravel()]
    biases += [_bias_in_cudnn_order(bias), jnp.zeros_like(bias)]
  return jnp.concatenate(weights + biases).astype(jnp.float32)


def pack_cudnn_weights(kernel: jax.Array, recurrent_kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """One LSTM layer's Keras parameters (kernel in x 4H, recurrent_kernel H x 4H, bias 4H, gates
  i, f, c, o) as cuDNN's flat weights (W_ih, W_hh, b_ih, b_hh; gates i, f, g, o): our bias
  is the input bias, the recurrent bias is zero (see the module docstring for why)."""
  return pack_cudnn_layers([(kernel, recurrent_kernel, bias)])


def reference_lstm(x, h_0, c_0, weights, seq_lengths, input_size: int, hidden_size: int,
                   num_layers: int, dropout: float, bidirectional: bool, precision=None):
  """jax.experimental.rnn.lstm's signature, run by its CPU reference lstm_ref on the same
  packed weights (unpacked by jax's unpack_lstm_weights): the cuDNN path tested anywhere."""
  from jax.experimental import rnn
  del precision
  W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                                   bidirectional)
  return rnn.lstm_ref(x, h_0, c_0, W_ih, W_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size,
                      num_layers, dropout, bidirectional)


Carry = tuple[jax.Array, jax.Array]
Params = tuple[jax.Array, jax.Array, jax.Array]  # kernel, recurrent_kernel, bias (Keras layout)


def _run(x_BxTxI: jax.Array, carries: Sequence[Carry], layers: Sequence[Params],
         mask_BxT: jax.Array | None, bidirectional: bool) -> tuple[list[Carry], jax.Array]:
  """One cuDNN call over right-padded rows: the final (h, c) per direction and y_BxTx(D*H).

  A row's length is its mask's count (the data put padding only at the end). Rows of no
  valid step (the padding rows of a last batch) run one step inside the call, since a
  length must be at least 1, and keep their initial carry, as the scan's masked steps do.
  At padded steps cuDNN writes zeros; they are replaced by the final h, what the scan's
  held carry outputs there, so every output is the scan's (attention over a source with no
  valid step reads them all)."""
  batch, steps, input_size = x_BxTxI.shape
  hidden = layers[0][1].shape[0]
  if mask_BxT is None:
    lengths_B = jnp.full((batch,), steps, jnp.int32)
  else:
    lengths_B = jnp.sum(mask_BxT, axis=1, dtype=jnp.int32)
  h0 = jnp.stack([carry[0] for carry in carries]).astype(jnp.float32)
  c0 = jnp.stack([carry[1] for carry in carries]).astype(jnp.float32)
  call = lstm_call
  if call is None:
    from jax.experimental import rnn
    call = rnn.lstm
  y, h_n, c_n = call(x_BxTxI.astype(jnp.float32), h0, c0, pack_cudnn_layers(layers),
                     jnp.maximum(lengths_B, 1), input_size=input_size, hidden_size=hidden,
                     num_layers=1, dropout=0.0, bidirectional=bidirectional)
  empty_Bx1 = (lengths_B == 0)[:, None]
  finals = [(jnp.where(empty_Bx1, h0[d], h_n[d]), jnp.where(empty_Bx1, c0[d], c_n[d]))
            for d in range(len(layers))]
  if mask_BxT is not None:
    held_BxDH = jnp.concatenate([h for h, _ in finals], axis=-1)
    y = jnp.where(mask_BxT[:, :, None], y, held_BxDH[:, None, :])
  return finals, y


def lstm_layer(x_BxTxI: jax.Array, carry: Carry, params: Params,
               mask_BxT: jax.Array | None = None) -> tuple[Carry, jax.Array]:
  """An LSTM layer through cuDNN, as the scan's RecurrentLayer call: (final (h, c), h_BxTxH);
  masked (padded, trailing) steps hold the carry."""
  (final,), y_BxTxH = _run(x_BxTxI, [carry], [params], mask_BxT, bidirectional=False)
  return final, y_BxTxH


def lstm_bidirectional(x_BxTxI: jax.Array, forward_carry: Carry, backward_carry: Carry,
                       forward: Params, backward: Params, mask_BxT: jax.Array | None = None,
                       ) -> tuple[Carry, Carry, jax.Array]:
  """A forward layer and a backward one reading each row's valid steps last to first, in one
  cuDNN call: (forward final, backward final, [forward; backward] outputs in source order,
  BxTx2H), what our encoder computes with reverse_valid_steps around the backward scan."""
  (fwd, bwd), y_BxTx2H = _run(x_BxTxI, [forward_carry, backward_carry], [forward, backward],
                              mask_BxT, bidirectional=True)
  return fwd, bwd, y_BxTx2H


def describe(impl: str) -> str:
  """A one-line name of the implementation for logs and reports."""
  return {"cudnn": "cuDNN (jax.experimental.rnn.lstm)", "scan": "lax.scan"}.get(impl, impl)

"""Greedy decoding: one jitted `lax.scan` over output steps carrying (h, c)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.model import Seq2Seq
from seq2seq_jax.vocab import END_ID, PAD_ID, START_ID, Vocab


def greedy_decode(params: Any, src_BxS: jax.Array, *, model: Seq2Seq, max_len: int) -> jax.Array:
  """Argmax decoding of max_len steps: ids_BxL, END then PAD once a row has ended."""
  variables = {"params": params}
  if model.config.decoder_input == "repeat":  # no feedback: every step in one pass
    placeholder_BxL = jnp.zeros((src_BxS.shape[0], max_len), jnp.int32)
    ids_BxL = jnp.argmax(model.apply(variables, src_BxS, placeholder_BxL), -1).astype(jnp.int32)
    ended_BxL = jnp.cumsum(ids_BxL == END_ID, axis=1) - (ids_BxL == END_ID) > 0
    return jnp.where(ended_BxL, PAD_ID, ids_BxL)
  carries, enc_BxSxH, mask_BxS = model.apply(variables, src_BxS, method=Seq2Seq.encode)
  batch = src_BxS.shape[0]

  def step(carry, _):
    state, prev_B, done_B = carry
    state, logits_BxV = model.apply(variables, state, enc_BxSxH, mask_BxS, prev_B,
                                    method=Seq2Seq.decode_step)
    next_B = jnp.where(done_B, PAD_ID, jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32))
    done_B = done_B | (next_B == END_ID)
    return (state, next_B, done_B), next_B

  state = model.apply(variables, carries, method=Seq2Seq.initial_decoder_state)
  start_B = jnp.full((batch,), START_ID, jnp.int32)
  done_B = jnp.zeros((batch,), bool)
  _, ids_LxB = jax.lax.scan(step, (state, start_B, done_B), None, length=max_len)
  return ids_LxB.T


def make_greedy_decoder(model: Seq2Seq, max_len: int) -> Callable[[Any, jax.Array], jax.Array]:
  """greedy_decode compiled for one model and output length."""
  return jax.jit(functools.partial(greedy_decode, model=model, max_len=max_len))


def decode_texts(decoder, params: Any, src_NxS: np.ndarray, tgt_vocab: Vocab,
                 batch_size: int, bucket_width: int = 0,
                 place: Callable[[np.ndarray], jax.Array] | None = None,
                 fetch: Callable[[jax.Array], np.ndarray] = np.asarray) -> list[str]:
  """Decodes rows of source ids in fixed-size, length-sorted batches; texts in row order.

  place puts a batch on the devices (e.g. sharded over a mesh), fetch brings ids back.
  """
  lengths_N = (src_NxS != PAD_ID).sum(axis=1)
  order = np.argsort(lengths_N, kind="stable")
  texts: list[str | None] = [None] * len(order)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    width = max(1, int(lengths_N[rows].max(initial=1)))
    if bucket_width:
      width = min(-(-width // bucket_width) * bucket_width, src_NxS.shape[1])
    src_BxS = np.zeros((batch_size, width), np.int32)
    src_BxS[:len(rows)] = src_NxS[rows, :width]
    ids_BxL = fetch(decoder(params, place(src_BxS) if place else src_BxS))
    for row, ids in zip(rows, ids_BxL):
      texts[row] = tgt_vocab.decode(ids)
  return texts

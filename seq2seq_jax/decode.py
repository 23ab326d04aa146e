"""Decoding: greedy, beam search and sampling.

Greedy is a jitted `lax.scan` over output steps carrying (h, c), in chunks that stop once
every sentence has ended; beam search is one jitted `lax.while_loop` over fixed-shape
B x K beams."""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.config import (DEFAULT_LENGTH_PENALTY, SEED_RANGE, check_length_penalty,
                                check_temperature, seed_range_text)
from seq2seq_jax.errors import UserError, is_whole_number
from seq2seq_jax.model import Seq2Seq, resolve_scan_unroll
from seq2seq_jax.vocab import END_ID, PAD_ID, START_ID, Vocab


def first_argmax(x_BxTxV: jax.Array) -> jax.Array:
  """jnp.argmax over the last axis (the first index of the maximum) as int32, computed as
  two plain reductions: XLA's CPU backend runs argmax's (value, index) reduction several
  times slower (it was 5% of a greedy decoding step)."""
  max_BxTx1 = jnp.max(x_BxTxV, axis=-1, keepdims=True)
  index_V = jnp.arange(x_BxTxV.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(x_BxTxV == max_BxTx1, index_V, x_BxTxV.shape[-1]), axis=-1)


def _cut_after_end(ids_BxL: jax.Array) -> jax.Array:
  """PAD after each row's first END."""
  ended_BxL = jnp.cumsum(ids_BxL == END_ID, axis=1) - (ids_BxL == END_ID) > 0
  return jnp.where(ended_BxL, PAD_ID, ids_BxL)


DECODE_CHUNK = 8  # output steps per lax.scan between checks whether every row has ended


def _scan_decode(params: Any, src_BxS: jax.Array, choose: Callable[[jax.Array, jax.Array], jax.Array],
                 *, model: Seq2Seq, max_len: int) -> jax.Array:
  """Decodes up to max_len steps choosing each token with choose(logits_..xV, step):
  ids_BxL, END then PAD once a row has ended. Repeat models decode every step in one
  pass, with step None.

  The steps run as a `lax.scan` over chunks of DECODE_CHUNK steps inside a
  `lax.while_loop` that stops once every row of the batch has ended: a batch of short
  sentences costs short-sentence time, with the same output as running all max_len steps.
  The chunk's scan unrolls the model's scan_unroll steps per iteration (at most a chunk).
  """
  variables = {"params": params}
  if model.config.decoder_input == "repeat":  # no feedback: every step in one pass
    placeholder_BxL = jnp.zeros((src_BxS.shape[0], max_len), jnp.int32)
    return _cut_after_end(choose(model.apply(variables, src_BxS, placeholder_BxL), None))
  carries, enc_BxSxH, mask_BxS = model.apply(variables, src_BxS, method=Seq2Seq.encode)
  batch = src_BxS.shape[0]
  chunk = min(DECODE_CHUNK, max_len)
  num_chunks = -(-max_len // chunk)
  unroll = min(resolve_scan_unroll(model.config.scan_unroll), chunk)

  def step(carry, t):
    state, prev_B, done_B = carry
    state, logits_BxV = model.apply(variables, state, enc_BxSxH, mask_BxS, prev_B,
                                    method=Seq2Seq.decode_step)
    next_B = jnp.where(done_B, PAD_ID, choose(logits_BxV, t))
    done_B = done_B | (next_B == END_ID)
    return (state, next_B, done_B), next_B

  def run_chunk(loop):
    k, carry, ids_BxCL = loop
    carry, ids_CxB = jax.lax.scan(step, carry, k * chunk + jnp.arange(chunk), unroll=unroll)
    ids_BxCL = jax.lax.dynamic_update_slice_in_dim(ids_BxCL, ids_CxB.T, k * chunk, axis=1)
    return k + 1, carry, ids_BxCL

  def not_done(loop):
    k, (_, _, done_B), _ = loop
    return (k < num_chunks) & ~jnp.all(done_B)

  state = model.apply(variables, carries, method=Seq2Seq.initial_decoder_state)
  start_B = jnp.full((batch,), START_ID, jnp.int32)
  done_B = jnp.zeros((batch,), bool)
  ids_BxCL = jnp.full((batch, num_chunks * chunk), PAD_ID, jnp.int32)
  loop = (jnp.zeros((), jnp.int32), (state, start_B, done_B), ids_BxCL)
  _, _, ids_BxCL = jax.lax.while_loop(not_done, run_chunk, loop)
  return ids_BxCL[:, :max_len]


def greedy_decode(params: Any, src_BxS: jax.Array, *, model: Seq2Seq, max_len: int) -> jax.Array:
  """Argmax decoding of up to max_len steps: ids_BxL, END then PAD once a row has ended;
  stops early once every row has ended."""
  argmax = lambda logits, t: first_argmax(logits)
  return _scan_decode(params, src_BxS, argmax, model=model, max_len=max_len)


def _check_max_len(max_len: int) -> None:
  """An output length the decoders can run: a whole number of steps, at least one."""
  if not is_whole_number(max_len) or max_len < 1:
    raise UserError(f"max_len (output tokens) must be a whole number of at least 1, got "
                    f"{max_len!r}.")


def make_greedy_decoder(model: Seq2Seq, max_len: int) -> Callable[[Any, jax.Array], jax.Array]:
  """greedy_decode compiled for one model and output length."""
  _check_max_len(max_len)
  return jax.jit(functools.partial(greedy_decode, model=model, max_len=max_len))


def gnmt_length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's ((5 + length) / 6) ** alpha (Wu et al. 2016); alpha 0 ranks by plain log-prob."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _check_beam_model(model: Seq2Seq) -> None:
  if model.config.decoder_input != "previous":
    raise UserError("beam search needs a decoder fed its previous token "
                    "(decoder_input=previous); a decoder_input=repeat model's steps do not "
                    "depend on earlier outputs, so its greedy output is already the best.")


def beam_search(params: Any, src_BxS: jax.Array, *, model: Seq2Seq, max_len: int,
                beam_size: int, length_penalty: float = DEFAULT_LENGTH_PENALTY, return_scores: bool = False):
  """Beam search with K = beam_size fixed-shape beams per sentence: ids_BxL of the best
  hypothesis, END then PAD (with return_scores, also its score_B).

  A hypothesis' score is its log-probability divided by gnmt_length_penalty(length,
  length_penalty), length counting END. Candidates are ranked by that score at every
  step; a finished hypothesis stays in its beam and extends only with PAD at zero cost,
  so it competes with the live ones until the end. The loop stops when every beam of
  every sentence has finished (or after max_len steps); each sentence's result depends
  only on its own rows, never on the batch. beam_size 1 is greedy_decode.
  """
  check_length_penalty(length_penalty)
  _check_beam_model(model)
  variables = {"params": params}
  batch, K = src_BxS.shape[0], beam_size
  carries, enc_BxSxH, mask_BxS = model.apply(variables, src_BxS, method=Seq2Seq.encode)
  state = model.apply(variables, carries, method=Seq2Seq.initial_decoder_state)
  # row b * K + k of every tiled array is beam k of sentence b
  state, enc_BKxSxH, mask_BKxS = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0),
                                              (state, enc_BxSxH, mask_BxS))
  vocab = model.tgt_vocab_size
  pad_only_V = jnp.where(jnp.arange(vocab) == PAD_ID, 0.0, -jnp.inf)
  beam_rows_Bx1 = jnp.arange(batch)[:, None] * K

  def body(loop):
    t, state, ids_BxKxL, logp_BxK, length_BxK, finished_BxK = loop
    prev_BK = jnp.where(t == 0, START_ID, ids_BxKxL[:, :, jnp.maximum(t - 1, 0)].reshape(-1))
    state, logits_BKxV = model.apply(variables, state, enc_BKxSxH, mask_BKxS, prev_BK,
                                     method=Seq2Seq.decode_step)
    logprobs_BxKxV = jax.nn.log_softmax(logits_BKxV, axis=-1).reshape(batch, K, vocab)
    logprobs_BxKxV = jnp.where(finished_BxK[:, :, None], pad_only_V, logprobs_BxKxV)
    cand_logp_BxKV = (logp_BxK[:, :, None] + logprobs_BxKxV).reshape(batch, K * vocab)
    cand_length_BxK = jnp.where(finished_BxK, length_BxK, t + 1)
    cand_score_BxKV = cand_logp_BxKV / jnp.repeat(
        gnmt_length_penalty(cand_length_BxK, length_penalty), vocab, axis=1)
    _, top_BxK = jax.lax.top_k(cand_score_BxKV, K)
    parent_BxK, token_BxK = top_BxK // vocab, (top_BxK % vocab).astype(jnp.int32)
    logp_BxK = jnp.take_along_axis(cand_logp_BxKV, top_BxK, axis=1)
    length_BxK = jnp.take_along_axis(cand_length_BxK, parent_BxK, axis=1)
    finished_BxK = jnp.take_along_axis(finished_BxK, parent_BxK, axis=1) | (token_BxK == END_ID)
    ids_BxKxL = jnp.take_along_axis(ids_BxKxL, parent_BxK[:, :, None], axis=1)
    ids_BxKxL = jax.lax.dynamic_update_slice_in_dim(ids_BxKxL, token_BxK[:, :, None], t, axis=2)
    state = jax.tree.map(lambda x: x[(beam_rows_Bx1 + parent_BxK).reshape(-1)], state)
    return t + 1, state, ids_BxKxL, logp_BxK, length_BxK, finished_BxK

  def not_done(loop):
    t, *_, finished_BxK = loop
    return (t < max_len) & ~jnp.all(finished_BxK)

  # only beam 0 is alive at first, so the K first candidates are K different tokens
  logp_BxK = jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf), (batch, 1))
  loop = (jnp.zeros((), jnp.int32), state, jnp.full((batch, K, max_len), PAD_ID, jnp.int32),
          logp_BxK, jnp.zeros((batch, K), jnp.int32), jnp.zeros((batch, K), bool))
  _, _, ids_BxKxL, logp_BxK, length_BxK, _ = jax.lax.while_loop(not_done, body, loop)
  score_BxK = logp_BxK / gnmt_length_penalty(jnp.maximum(length_BxK, 1), length_penalty)
  best_B = jnp.argmax(score_BxK, axis=1)
  ids_BxL = jnp.take_along_axis(ids_BxKxL, best_B[:, None, None], axis=1)[:, 0]
  if return_scores:
    return ids_BxL, jnp.take_along_axis(score_BxK, best_B[:, None], axis=1)[:, 0]
  return ids_BxL


def make_beam_decoder(model: Seq2Seq, max_len: int, beam_size: int,
                      length_penalty: float = DEFAULT_LENGTH_PENALTY) -> Callable[[Any, jax.Array], jax.Array]:
  """beam_search compiled for one model, output length, beam size and length penalty."""
  _check_beam_model(model)  # now, not at the first batch
  _check_max_len(max_len)
  check_length_penalty(length_penalty)
  if not is_whole_number(beam_size) or beam_size < 1:
    raise UserError(f"beam size must be a whole number of at least 1, got {beam_size!r}.")
  return jax.jit(functools.partial(beam_search, model=model, max_len=max_len,
                                   beam_size=beam_size, length_penalty=length_penalty))


def _sample_token(logits_BxV: jax.Array, key: jax.Array, temperature: float,
                  top_k: int) -> jax.Array:
  """A token per row from softmax(logits / temperature) restricted to the top_k ids
  (top_k 0: all); temperature 0 is argmax."""
  if temperature == 0.0:
    return first_argmax(logits_BxV)
  # from the row's largest logit down: a small temperature sends the others towards -inf,
  # never the largest (0) to inf, so it approaches argmax instead of overflowing
  logits_BxV = (logits_BxV - logits_BxV.max(axis=-1, keepdims=True)) / temperature
  if 0 < top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def sample_decode(params: Any, src_BxS: jax.Array, rng: jax.Array, *, model: Seq2Seq,
                  max_len: int, temperature: float = 1.0, top_k: int = 0) -> jax.Array:
  """Ancestral sampling of max_len steps: ids_BxL, END then PAD once a row has ended.

  Step t draws with jax.random.fold_in(rng, t): the same rng gives the same output for the
  same batch. temperature -> 0 and top_k=1 approach greedy_decode (temperature 0 is it).
  """
  check_temperature(temperature)
  draw = lambda logits, t: _sample_token(  # a repeat model's one pass (t None) draws with rng
      logits, rng if t is None else jax.random.fold_in(rng, t), temperature, top_k)
  return _scan_decode(params, src_BxS, draw, model=model, max_len=max_len)


def make_sample_decoder(model: Seq2Seq, max_len: int, temperature: float = 1.0, top_k: int = 0,
                        seed: int = 0) -> Callable[[Any, jax.Array], jax.Array]:
  """sample_decode compiled once; call n draws with fold_in(key(seed), n), so a run with
  the same seed, inputs and batch size gives the same samples."""
  _check_max_len(max_len)  # now, not at the first batch
  check_temperature(temperature)
  if not is_whole_number(top_k) or top_k < 0:
    raise UserError(f"top_k must be a whole number, 0 for every token, got {top_k!r}.")
  if not is_whole_number(seed) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
    raise UserError(f"the seed must be {seed_range_text()}, got {seed!r}.")
  sample = jax.jit(functools.partial(sample_decode, model=model, max_len=max_len,
                                     temperature=temperature, top_k=top_k))
  base_rng = jax.random.key(seed)
  calls = [0]

  def decoder(params: Any, src_BxS: jax.Array) -> jax.Array:
    rng = jax.random.fold_in(base_rng, calls[0])
    calls[0] += 1
    return sample(params, src_BxS, rng)

  return decoder


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

"""Encoding to int32 ids (never one-hot) and batching.

Seeded per-epoch shuffles, length buckets, fixed batch sizes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from seq2seq_jax.vocab import END_ID, PAD_ID, START_ID, Vocab


# ---------------------------------------------------------------------------
# Encoding: int32 ids, never one-hot
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Encoded:
  """A split as padded int32 arrays.

  src_NxS: source ids, PAD after the end.  tgt_NxT: START, target ids, END, PAD.
  """
  src_NxS: np.ndarray
  src_len_N: np.ndarray
  tgt_NxT: np.ndarray
  tgt_len_N: np.ndarray  # target ids + END (the decoder's output steps)

  def __len__(self) -> int:
    return len(self.src_len_N)


def encode_sources(texts: list[str], vocab: Vocab, max_len: int | None = None,
                   keras_width: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Padded ids and lengths; keras_width > 0: padded with the space character to that
  width, as the Keras example's encoder input (no masking: spaces are real input)."""
  ids = [vocab.encode(t)[:max_len] if max_len else vocab.encode(t) for t in texts]
  lengths = np.array([len(x) for x in ids], dtype=np.int32)
  width = max(1, int(lengths.max(initial=0)))
  if keras_width:
    out = np.full((len(ids), max(width, keras_width)), vocab.encode(" ")[0], dtype=np.int32)
    for row, x in enumerate(ids):
      out[row, :len(x)] = x
    return out, np.full(len(ids), out.shape[1], np.int32)
  out = np.full((len(ids), width), PAD_ID, dtype=np.int32)
  for row, x in enumerate(ids):
    out[row, :len(x)] = x
  return out, lengths


def encode_pairs(pairs: list[Pair], src_vocab: Vocab, tgt_vocab: Vocab,
                 keras_dims: dict[str, int] | None = None) -> Encoded:
  """keras_dims: pad as the Keras example (spaces up to its maximum lengths)."""
  src, src_len = encode_sources([s for s, _ in pairs], src_vocab,
                                keras_width=keras_dims["max_encoder_seq_length"] if keras_dims else 0)
  tgt_ids = [[START_ID] + tgt_vocab.encode(t) + [END_ID] for _, t in pairs]
  tgt_len = np.array([len(x) - 1 for x in tgt_ids], dtype=np.int32)
  width = max(2, int(tgt_len.max(initial=0)) + 1)
  pad = PAD_ID
  if keras_dims:  # decoder input and target: max_decoder_seq_length steps, space padded
    width, pad = max(width, keras_dims["max_decoder_seq_length"] + 1), tgt_vocab.encode(" ")[0]
  tgt = np.full((len(pairs), width), pad, dtype=np.int32)
  for row, x in enumerate(tgt_ids):
    tgt[row, :len(x)] = x
  return Encoded(src, src_len, tgt, tgt_len)


# ---------------------------------------------------------------------------
# Batching: seeded per-epoch shuffle, length buckets, fixed batch size
# ---------------------------------------------------------------------------

def _round_up(n: int, width: int) -> int:
  return int(math.ceil(n / width) * width) if width else n


def make_batch(data: Encoded, rows: np.ndarray, batch_size: int, bucket_width: int) -> dict[str, np.ndarray]:
  """Rows of data padded to batch_size rows; lengths rounded up to bucket_width.

  Padding rows have zero length and zero weight, so every batch has the same
  number of rows and few distinct shapes (one compiled program each).
  """
  src_len = int(data.src_len_N[rows].max(initial=1))
  tgt_len = int(data.tgt_len_N[rows].max(initial=1))
  if not bucket_width:  # one shape for the whole split
    src_len, tgt_len = data.src_NxS.shape[1], data.tgt_NxT.shape[1] - 1
  else:
    src_len = min(_round_up(src_len, bucket_width), data.src_NxS.shape[1])
    tgt_len = min(_round_up(tgt_len, bucket_width), data.tgt_NxT.shape[1] - 1)
  # int32 ids (text) or float32 values (series:PATH, BxTxF)
  src = np.zeros((batch_size, src_len) + data.src_NxS.shape[2:], data.src_NxS.dtype)
  tgt = np.zeros((batch_size, tgt_len + 1) + data.tgt_NxT.shape[2:], data.tgt_NxT.dtype)
  n = len(rows)
  src[:n] = data.src_NxS[rows, :src_len]
  tgt[:n] = data.tgt_NxT[rows, :tgt_len + 1]
  return {
      "src": src,
      "tgt_in": tgt[:, :-1],
      "tgt_out": tgt[:, 1:],
      # target steps up to and including END: what token accuracy counts
      "tgt_mask": np.arange(tgt_len)[None, :] < np.concatenate(
          [data.tgt_len_N[rows], np.zeros(batch_size - n, np.int32)])[:, None],
      "index": np.concatenate([rows, np.full(batch_size - n, -1)]).astype(np.int32),
  }


def bucket_keys(data: Encoded, bucket_width: int) -> np.ndarray:
  """Each example's (source, target) length bucket as one sortable int, ordered by the
  longer side's bucket, then the source's, then the target's. Lengths in
  ((k - 1) * width, k * width] share bucket k per side, and a batch is padded to its
  largest bucket per side, so batch shapes come from a small fixed set."""
  src_bucket = (-(-data.src_len_N // bucket_width)).astype(np.int64)
  tgt_bucket = (-(-data.tgt_len_N // bucket_width)).astype(np.int64)
  base = int(max(src_bucket.max(initial=0), tgt_bucket.max(initial=0))) + 1
  return (np.maximum(src_bucket, tgt_bucket) * base + src_bucket) * base + tgt_bucket


def epoch_batches(data: Encoded, batch_size: int, seed: int, epoch: int,
                  bucket_width: int) -> list[np.ndarray]:
  """Row indices of every training batch of an epoch, deterministic in (seed, epoch).

  Examples are shuffled, sorted (stably) by length bucket, cut into consecutive full
  batches, and the batches shuffled again: each batch holds similar lengths and only the
  last is short, so little work goes to padding, neither to padded steps nor to empty
  rows. The sorted sequence of buckets is the same every epoch, so the batch boundaries
  fall on the same buckets and every epoch has the same batch shapes (nothing compiles
  after the first).
  """
  rng = np.random.default_rng([seed, 101, epoch])
  order = rng.permutation(len(data))
  if bucket_width:
    order = order[np.argsort(bucket_keys(data, bucket_width)[order], kind="stable")]
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  return [batches[i] for i in rng.permutation(len(batches))]


def eval_batches(data: Encoded, batch_size: int, bucket_width: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, length-sorted for little padding; `index` maps back."""
  order = np.argsort(np.maximum(data.src_len_N, data.tgt_len_N), kind="stable")
  for i in range(0, len(order), batch_size):
    yield make_batch(data, order[i:i + batch_size], batch_size, bucket_width)


def steps_per_epoch(data: Encoded, batch_size: int) -> int:
  """Exact batch count of an epoch, bucketed or not: epoch_batches cuts full batches
  across buckets, so only the last is short."""
  return int(math.ceil(len(data) / batch_size))

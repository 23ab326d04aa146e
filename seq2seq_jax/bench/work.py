"""The work every framework is measured on.

The Keras example's shapes and a random batch at them, the FLOPs of a training sample, and
the real-length pairs (--data) with the padding each framework's batching pays on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seq2seq_jax.errors import DataError

# the Keras lstm_seq2seq example's shapes (LSTM 256 over its fra-eng sample), and tiny ones
SEED_SHAPES = {"batch": 64, "src_len": 16, "src_vocab": 71, "tgt_len": 59, "tgt_vocab": 93,
               "latent": 256}
QUICK_SHAPES = {"batch": 8, "src_len": 6, "src_vocab": 12, "tgt_len": 9, "tgt_vocab": 14,
                "latent": 16}
END_SUPPRESSED = -1e9  # output bias of END for seed-shape decoding: every row runs all steps


def train_flops_per_sample(src_len: int, tgt_len: int, tgt_vocab: int, latent: int) -> float:
  """Matmul FLOPs of one training sample: 3 x the forward pass (forward, and backward
  for inputs and weights); one-hot input projections count as row lookups, not matmuls."""
  gates = 4 * latent
  forward = 2 * (src_len * latent * gates + tgt_len * (latent * gates + latent * tgt_vocab))
  return 3.0 * forward


def seed_batch(shapes: dict[str, int], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random full-length token ids at the seed shapes (ids >= 4: no padding, no specials)."""
  rng = np.random.default_rng(seed)
  tgt = rng.integers(4, shapes["tgt_vocab"], (batch, shapes["tgt_len"] + 1)).astype(np.int32)
  return {"src": rng.integers(4, shapes["src_vocab"], (batch, shapes["src_len"])).astype(np.int32),
          "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:],
          "tgt_mask": np.ones((batch, shapes["tgt_len"]), bool),
          "index": np.arange(batch, dtype=np.int32)}


def real_decode_batches(real: dict[str, np.ndarray], batch: int, sentences: int,
                        pad: bool) -> tuple[list[np.ndarray], list[int]]:
  """The first `sentences` held-out sources sorted by length (as decode_texts does) and cut
  into batches, the last padded to `batch` rows when pad; also each batch's real rows."""
  src = real["test_src"][:sentences]
  src = src[np.argsort((src != 0).sum(1), kind="stable")]
  chunks = [src[i:i + batch] for i in range(0, len(src), batch)]
  return [_pad_rows(c, batch) if pad else c for c in chunks], [len(c) for c in chunks]


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + x.shape[1:], x.dtype)
  out[:len(x)] = x
  return out


# ---------------------------------------------------------------------------
# The real-length pairs
# ---------------------------------------------------------------------------

REAL_TEXT = "gettext:/usr/share/locale/fr/LC_MESSAGES"  # real English -> French text, offline
REAL_MAX_LEN = (100, 120)  # source, target characters kept (configs/gettext_fr.py's limits)
REAL_PAIRS = {True: (256, 64), False: (4096, 2048)}  # (train, held-out) pairs, by --quick
BUCKET_WIDTH = 16  # seq2seq_jax's length buckets on the real pairs (train's default)


def resolve_real_data(spec: str, quick: bool) -> tuple[str, str]:
  """(data spec, why) of the real-length pairs. "auto": the French gettext catalogs of
  this machine's software (real sentences, whose lengths vary as natural text's do) when
  they hold enough pairs, else the embedded numbers:fr (synthetic, lengths vary little);
  --quick always takes numbers:fr."""
  if spec != "auto":
    return spec, "chosen with --data"
  if quick:
    return "numbers:fr", "--quick"
  from seq2seq_jax import data as data_lib
  directory = data_lib.parse_spec(REAL_TEXT)[1]
  try:
    found = len(_text_pairs(REAL_TEXT))
  except DataError as error:
    return "numbers:fr", f"auto: no French gettext catalogs to use ({error})"
  if found < sum(REAL_PAIRS[False]):
    return "numbers:fr", (f"auto: {directory} holds {found} usable pairs, fewer than "
                          f"{sum(REAL_PAIRS[False])}")
  return REAL_TEXT, f"auto: the French gettext catalogs of this machine ({found} usable pairs)"


def _text_pairs(spec: str) -> list[tuple[str, str]]:
  """Every pair of a text data spec whose lengths fit REAL_MAX_LEN."""
  from seq2seq_jax import data as data_lib
  from seq2seq_jax.config import Config
  splits = data_lib.load_splits(Config(data=spec, val_fraction=0.0, test_fraction=0.0,
                                       split_mode="last"))
  return [(s, t) for s, t in splits.train + splits.val + splits.test
          if len(s) <= REAL_MAX_LEN[0] and len(t) <= REAL_MAX_LEN[1]]


def real_length_data(quick: bool, path: str, spec: str = "numbers:fr") -> dict[str, Any]:
  """Real-length pairs encoded as int32 ids, saved for the workers: numbers:fr generated
  with a seed; any other data spec (gettext:DIR, anki:FILE, tsv:FILE) read, its pairs
  longer than REAL_MAX_LEN dropped, and a seeded sample drawn."""
  from seq2seq_jax import data as data_lib
  from seq2seq_jax.config import Config
  train_n, test_n = REAL_PAIRS[quick]
  batch = (QUICK_SHAPES if quick else SEED_SHAPES)["batch"]
  if data_lib.parse_spec(spec)[0] == "numbers":
    config = Config(data=spec, numbers_max=999 if quick else 999_999,
                    numbers_train=train_n, numbers_val=0, numbers_test=test_n)
    splits = data_lib.load_splits(config)
    train, test = splits.train, splits.test
  else:
    pairs = _text_pairs(spec)
    if len(pairs) < 3 * batch:
      raise DataError(
          f"--data {spec}: {len(pairs)} pairs of at most {REAL_MAX_LEN[0]} / "
          f"{REAL_MAX_LEN[1]} characters; the real-length epoch needs at least {3 * batch}.")
    order = np.random.default_rng(0).permutation(len(pairs))
    test_n = min(test_n, len(pairs) // 3)
    test = [pairs[i] for i in order[:test_n]]
    train = [pairs[i] for i in order[test_n:test_n + train_n]]
  src_vocab, tgt_vocab = data_lib.build_vocabs(train + test)
  encoded = {name: data_lib.encode_pairs(pairs, src_vocab, tgt_vocab)
             for name, pairs in (("train", train), ("test", test))}
  arrays = {f"{name}_{field}": getattr(e, f) for name, e in encoded.items()
            for field, f in (("src", "src_NxS"), ("src_len", "src_len_N"), ("tgt", "tgt_NxT"),
                             ("tgt_len", "tgt_len_N"))}
  np.savez(path, src_vocab=len(src_vocab), tgt_vocab=len(tgt_vocab), **arrays)
  src_len, tgt_len = encoded["train"].src_len_N, encoded["train"].tgt_len_N
  return {"data": spec, "steps_over_real": padded_work(encoded["train"], batch, BUCKET_WIDTH),
          "train_pairs": len(train), "test_pairs": len(test),
          "src_vocab": len(src_vocab), "tgt_vocab": len(tgt_vocab),
          "mean_src_len": float(src_len.mean()), "max_src_len": int(src_len.max()),
          "mean_tgt_len": float(tgt_len.mean()), "max_tgt_len": int(tgt_len.max())}


def torch_batches(n: int, batch: int, epoch: int) -> list[np.ndarray]:
  """The PyTorch port's batches of an epoch: n rows shuffled (seeded by the epoch) and
  cut in order."""
  order = np.random.default_rng([0, epoch]).permutation(n)
  return [order[i:i + batch] for i in range(0, n, batch)]


def padded_work(data, batch: int, bucket_width: int) -> dict[str, float]:
  """Time steps each framework computes in an epoch of data (a data.Encoded) over its real
  steps (source + target lengths): the Keras example pads every pair to the data set's
  longest, the PyTorch port each of its first epoch's batches (torch_batches) to its
  longest pair, seq2seq_jax each length-sorted full batch to its bucket
  (data.epoch_batches and make_batch, as train)."""
  from seq2seq_jax import data as data_lib
  real = float(data.src_len_N.sum() + data.tgt_len_N.sum())
  keras = len(data) * (data.src_NxS.shape[1] + data.tgt_NxT.shape[1] - 1)
  torch = sum(len(rows) * (data.src_len_N[rows].max() + data.tgt_len_N[rows].max())
              for rows in torch_batches(len(data), batch, 0))
  ours = 0
  for rows in data_lib.epoch_batches(data, batch, 0, 0, bucket_width):
    shapes = data_lib.make_batch(data, rows, batch, bucket_width)
    ours += batch * (shapes["src"].shape[1] + shapes["tgt_in"].shape[1])
  return {"seq2seq_jax": ours / real, "keras": keras / real, "torch": float(torch) / real}

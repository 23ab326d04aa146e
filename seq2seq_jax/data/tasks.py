"""Embedded sequence tasks, deterministic from a seed: addition, echo and reverse.

  addition  "53+7" -> "60": operands below 10**addition_digits.
  echo      "4 17 3" -> "4 17 3": task_min_len..task_max_len integers below task_vocab_size.
  reverse   "4 17 3" -> "3 17 4".
Sources are distinct across the train, validation and test splits.
"""

from __future__ import annotations

import numpy as np

from seq2seq_jax.config import Config
from seq2seq_jax.errors import DataError

TASKS = ("addition", "echo", "reverse")
Pair = tuple[str, str]


def _possible_sources(kind: str, config: Config) -> float:
  if kind == "addition":
    return float(10 ** config.addition_digits) ** 2
  return float(sum(config.task_vocab_size ** n
                   for n in range(config.task_min_len, config.task_max_len + 1)))


def _draw(kind: str, config: Config, rng: np.random.Generator) -> Pair:
  if kind == "addition":
    a, b = rng.integers(0, 10 ** config.addition_digits, size=2).tolist()
    return f"{a}+{b}", str(a + b)
  length = int(rng.integers(config.task_min_len, config.task_max_len + 1))
  values = rng.integers(0, config.task_vocab_size, size=length).tolist()
  target = values if kind == "echo" else values[::-1]
  return " ".join(map(str, values)), " ".join(map(str, target))


def task_pairs(kind: str, config: Config) -> tuple[list[Pair], list[Pair], list[Pair]]:
  """(train, val, test) pairs of an embedded task."""
  if kind not in TASKS:
    raise DataError(f"unknown task '{kind}': use one of {', '.join(TASKS)}.")
  if config.task_min_len > config.task_max_len:
    raise DataError(f"task_min_len={config.task_min_len} is above task_max_len="
                    f"{config.task_max_len}.")
  total = config.task_train + config.task_val + config.task_test
  if total > 0.9 * _possible_sources(kind, config):
    raise DataError(f"{kind}: {total} distinct pairs asked for, but only about "
                    f"{_possible_sources(kind, config):.0f} sources exist; raise the lengths, "
                    "the vocabulary or addition_digits, or ask for fewer pairs.")
  rng = np.random.default_rng([config.seed, 29])
  pairs: dict[str, str] = {}
  while len(pairs) < total:
    source, target = _draw(kind, config, rng)
    pairs.setdefault(source, target)
  items = list(pairs.items())
  a, b = config.task_train, config.task_train + config.task_val
  return items[:a], items[a:b], items[b:]

"""Real-valued sequences: `series:PATH` CSV files cut into sliding windows.

A window of `series_input_steps` rows (every column) predicts the next
`series_output_steps` rows of the target columns. Splits are chronological
(train, then validation, then test windows); every column is standardised with the
training rows' mean and standard deviation, stored in the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any

import numpy as np

from seq2seq_jax.config import Config
from seq2seq_jax.data.batches import Encoded
from seq2seq_jax.data.sources import read_text
from seq2seq_jax.errors import DataError


@dataclasses.dataclass
class Scaler:
  """Per-column standardisation; targets use their columns' statistics."""
  columns: list[str]
  targets: list[int]
  mean_F: np.ndarray
  std_F: np.ndarray

  def to_dict(self) -> dict[str, Any]:
    return {"columns": self.columns, "targets": self.targets,
            "mean": self.mean_F.tolist(), "std": self.std_F.tolist()}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "Scaler":
    return cls(list(values["columns"]), list(values["targets"]),
               np.asarray(values["mean"], np.float64), np.asarray(values["std"], np.float64))

  def scale(self, rows_NxF: np.ndarray) -> np.ndarray:
    return ((rows_NxF - self.mean_F) / self.std_F).astype(np.float32)

  def unscale_targets(self, values_xT: np.ndarray) -> np.ndarray:
    return values_xT * self.std_F[self.targets] + self.mean_F[self.targets]


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
  """(column names, values RxF) of a numeric CSV; a non-numeric first row is a header."""
  reader = csv.reader(io.StringIO(read_text(path)))
  try:
    rows = [row for row in reader if any(c.strip() for c in row)]
  except csv.Error as error:
    why = ("a carriage return (\\r) inside the line" if "new-line character" in str(error)
           else f"not CSV ({error})")
    raise DataError(f"{path}:{reader.line_num}: {why}; fix the line.") from None
  if not rows:
    raise DataError(f"{path}: no rows.")

  def is_number(cell: str) -> bool:
    try:
      float(cell)
      return True
    except ValueError:
      return False

  header = None
  if not all(is_number(c) for c in rows[0]):
    header, rows = [c.strip() for c in rows[0]], rows[1:]
  width = len(header) if header else len(rows[0]) if rows else 0
  names = header or [f"column_{i}" for i in range(width)]
  values = np.empty((len(rows), width), np.float64)
  first_data_row = 2 if header else 1
  for r, row in enumerate(rows):
    line = r + first_data_row
    if len(row) != width:
      raise DataError(f"{path}:{line}: {len(row)} columns, expected {width}.")
    for c, cell in enumerate(row):
      try:
        values[r, c] = float(cell)
      except ValueError:
        raise DataError(f"{path}:{line}: column {c + 1} ('{names[c]}') is not a number: "
                        f"{cell!r}.") from None
      if not np.isfinite(values[r, c]):
        raise DataError(f"{path}:{line}: column {c + 1} ('{names[c]}') is {cell!r}; "
                        "fill or drop missing values first.")
  return names, values


def _target_columns(spec: str, names: list[str], path: str) -> list[int]:
  if not spec.strip():
    return list(range(len(names)))
  targets = []
  for item in spec.split(","):
    item = item.strip()
    if item in names:
      targets.append(names.index(item))
    elif item.isdigit() and int(item) < len(names):
      targets.append(int(item))
    else:
      raise DataError(f"series_targets: '{item}' is not a column of {path} "
                      f"(columns: {', '.join(names)}).")
    if targets.count(targets[-1]) > 1:  # one column forecast twice would count twice
      raise DataError(f"series_targets: '{item}' names column {names[targets[-1]]!r} of "
                      f"{path} again: name each target column once.")
  return targets


def windows(values_RxF: np.ndarray, targets: list[int], n_in: int, n_out: int) -> Encoded:
  """Sliding windows as an Encoded split: src N x n_in x F, tgt N x (1 + n_out) x F_t
  whose first step is a zero placeholder (the decoder's unused 'start')."""
  count = len(values_RxF) - n_in - n_out + 1
  starts = np.arange(max(count, 0))
  src = np.stack([values_RxF[s:s + n_in] for s in starts]) if count > 0 else np.zeros(
      (0, n_in, values_RxF.shape[1]), np.float32)
  tgt = np.zeros((len(starts), n_out + 1, len(targets)), np.float32)
  for i, s in enumerate(starts):
    tgt[i, 1:] = values_RxF[s + n_in:s + n_in + n_out][:, targets]
  return Encoded(src.astype(np.float32), np.full(len(starts), n_in, np.int32), tgt,
                 np.full(len(starts), n_out, np.int32))


@dataclasses.dataclass
class SeriesSplits:
  train: Encoded
  val: Encoded
  test: Encoded
  scaler: Scaler

  def get(self, name: str) -> Encoded:
    if name not in ("train", "val", "test"):
      raise DataError(f"unknown split '{name}': use train, val or test.")
    return getattr(self, name)


def load_series(config: Config, path: str, scaler: Scaler | None = None) -> SeriesSplits:
  """Chronological train/val/test windows of a CSV, scaled with the training rows'
  statistics (or with `scaler`, e.g. the one stored in a checkpoint)."""
  names, values = read_csv(path)
  n_in, n_out = config.series_input_steps, config.series_output_steps
  rows = len(values)
  n_val = int(round(rows * config.val_fraction))
  n_test = int(round(rows * config.test_fraction))
  n_train = rows - n_val - n_test
  if n_train < n_in + n_out:
    raise DataError(f"{path}: {rows} rows leave {n_train} for training, too few for one "
                    f"window of {n_in} input + {n_out} output steps; add rows or lower "
                    "series_input_steps / series_output_steps / the held-out fractions.")
  if scaler is None:
    std = values[:n_train].std(axis=0)
    scaler = Scaler(names, _target_columns(config.series_targets, names, path),
                    values[:n_train].mean(axis=0), np.where(std > 0, std, 1.0))
  elif scaler.columns != names:
    raise DataError(f"{path}: columns {names} differ from the model's {scaler.columns}.")
  scaled = scaler.scale(values)
  # each held-out split starts n_in rows early so its first window has full context
  bounds = [(0, n_train), (n_train - n_in, n_train + n_val), (n_train + n_val - n_in, rows)]
  parts = [windows(scaled[max(a, 0):b], scaler.targets, n_in, n_out) for a, b in bounds]
  return SeriesSplits(*parts, scaler)


def series_metrics(predictions_NxTxF: np.ndarray, data: Encoded, scaler: Scaler) -> dict[str, float]:
  """MSE/MAE in the data's units, and those of the naive last-value forecast."""
  truth = scaler.unscale_targets(data.tgt_NxT[:, 1:])
  predicted = scaler.unscale_targets(predictions_NxTxF)
  last_NxF = data.src_NxS[:, -1, :][:, scaler.targets]
  naive = scaler.unscale_targets(np.broadcast_to(last_NxF[:, None, :], truth.shape))
  return {
      "mse": float(np.mean((predicted - truth) ** 2)),
      "mae": float(np.mean(np.abs(predicted - truth))),
      "baseline_mse": float(np.mean((naive - truth) ** 2)),
      "baseline_mae": float(np.mean(np.abs(naive - truth))),
  }

"""The run's accelerator checked against the host CPU before it trains.

The model's outputs on real batches must agree to rounding, or the run stops with one line
before it trains.

Why: on one NVIDIA H200 (2026-12-04) a default run trained for six epochs and saved a model
that translated nothing, with no error (its LSTM layers then went through cuDNN; the cause
is not known, docs/accelerators.md). A device whose forward pass computes another function
than the model's definition shows here, whatever the cause: the run's own jitted forward
pass on its devices beside the same parameters and batches through the model as defined
(the scan, float32 matmul operands) on the host CPU, which every JAX installation has, at
float32's full precision. (Whether the H200's fault shows on these batches is not known: it
has not been reproduced.)

What agreement means: the largest difference of an output (a logit, or a series value) at a
scored position, relative to the largest output there, at most 0.05. Measured on the CPU
(2026-12-06, experiments/crosscheck_margins.py), the default model on the first and last
validation batches, at initialisation and after one and two epochs: bfloat16 matmul
operands (matmul_dtype=bfloat16, or every matmul as a TPU's default precision rounds
float32; NVIDIA's TF32 rounds less) moved the logits by at most 0.0053 of the largest; an
LSTM whose rows read each other's lengths (the CPU stand-in of cuDNN's call given the
lengths in reverse row order) by 0.17 to 1.3. Other models' margins are unmeasured.
tests/test_crosscheck.py pins both on a tiny model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Iterable

import jax
import numpy as np

from seq2seq_jax import data as data_lib
from seq2seq_jax.errors import UserError
from seq2seq_jax.model import Seq2Seq
from seq2seq_jax.parallel import to_numpy

log = logging.getLogger(__name__)

# The largest output difference, relative to the largest output, taken for rounding.
TOLERANCE = 0.05
# Rows of a checked batch at most: the host's copy of a batch's logits stays small (256 x
# 64 steps x 4,000 subwords is 262 MB) whatever the run's batch size.
CHECK_ROWS = 256


class CrosscheckFailed(UserError):
  """The devices compute other outputs than the host CPU for the same parameters."""


def wanted(setting: str, platform: str) -> bool:
  """Whether a run checks its devices (config cpu_crosscheck): auto on a GPU or TPU; a CPU
  run is its own reference."""
  return setting == "always" or (setting == "auto" and platform != "cpu")


def discrepancy(outputs: np.ndarray, reference: np.ndarray, scored: np.ndarray) -> float:
  """The largest |outputs - reference| at scored positions (leading axes of the outputs,
  e.g. B x T), relative to the largest |reference| there; infinite where either is not finite."""
  outputs, reference = outputs[scored], reference[scored]
  if outputs.size == 0:
    return 0.0
  largest_difference = np.max(np.abs(outputs - reference))
  if not np.isfinite(largest_difference):
    return float("inf")
  return float(largest_difference) / max(float(np.max(np.abs(reference))), 1e-6)


def scored_positions(batch: dict[str, np.ndarray], series: bool) -> np.ndarray:
  """The positions a loss counts: target tokens (text), every step of a real row (series)."""
  if series:
    return np.broadcast_to((batch["index"] >= 0)[:, None], batch["tgt_out"].shape[:2])
  return batch["tgt_mask"]


def host_cpu() -> jax.Device | None:
  """The host's first CPU device; None where JAX runs without its CPU backend (JAX_PLATFORMS)."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


def before_training(translator, params, data, required: bool) -> float | None:
  """What a run whose cpu_crosscheck wants it does before its first step: check_against_cpu
  on data's first and last evaluation batches. Without a CPU backend: a UserError where the
  check is required (cpu_crosscheck=always), else a warning and None."""
  if host_cpu() is None:
    message = (f"CPU cross-check: JAX runs without its CPU backend here (JAX_PLATFORMS="
               f"{os.environ.get('JAX_PLATFORMS', '')!r}); add cpu to JAX_PLATFORMS (e.g. "
               "cuda,cpu) to check the devices, or set cpu_crosscheck=never")
    if required:
      raise UserError(message + ".")
    log.warning("%s; not checked.", message)
    return None
  batch_size = translator.parallel.round_batch_size(min(translator.config.batch_size, CHECK_ROWS))
  return check_against_cpu(translator, params, check_batches(data, batch_size,
                                                             translator.config.bucket_width))


def reference_model(model: Seq2Seq) -> Seq2Seq:
  """The model as defined: LSTM layers on the scan, float32 matmul operands."""
  return model.clone(config=dataclasses.replace(model.config, lstm_impl="scan",
                                                matmul_dtype="float32"))


def reference_translator(translator):
  """A copy of translator whose forward pass (compiled once per batch shape) is the model as
  defined (reference_model)."""
  return dataclasses.replace(translator, model=reference_model(translator.model))


def reference_outputs(reference, host_params, batch: dict[str, np.ndarray]) -> np.ndarray:
  """The outputs of a reference_translator's forward pass on the host CPU at float32's full
  precision."""
  with jax.default_matmul_precision("highest"):
    placed = jax.device_put((host_params, batch["src"], batch["tgt_in"]), host_cpu())
    return np.asarray(reference.forward(*placed))


def check_against_cpu(translator, params, batches: Iterable[dict[str, np.ndarray]],
                      tolerance: float = TOLERANCE) -> float:
  """The largest discrepancy of the run's forward pass (translator.forward on its devices)
  from the host CPU's over batches; CrosscheckFailed above tolerance."""
  parallel = translator.parallel
  started = time.time()
  host_params = jax.tree.map(to_numpy, params)
  reference = reference_translator(translator)
  worst, count = 0.0, 0
  for batch in batches:
    placed = parallel.shard_batch(batch)
    outputs = to_numpy(parallel.settle(translator.forward(params, placed["src"], placed["tgt_in"])))
    expected = reference_outputs(reference, host_params, batch)
    worst = max(worst, discrepancy(outputs, expected, scored_positions(batch, translator.is_series)))
    count += 1
  if jax.process_count() > 1:  # one decision for all processes: none goes on alone
    from jax.experimental import multihost_utils
    worst = float(np.max(multihost_utils.process_allgather(np.float32(worst))))
  device = parallel.devices[0]
  where = f"{parallel.size} x {device.device_kind}" + (
      "" if device.device_kind.lower() == device.platform else f" ({device.platform})")
  if worst > tolerance:
    raise CrosscheckFailed(
        f"CPU cross-check: {where} computes other outputs than the host CPU for the same "
        f"parameters (largest difference {worst:.3g} of the largest output; at most "
        f"{tolerance:g} is taken for rounding), so what it trains would be wrong; nothing was trained. Run "
        "experiments/accelerator_check.sh on this machine and report it (docs/accelerators.md); "
        "--set cpu_crosscheck=never trains anyway.")
  log.info("CPU cross-check: %s computes the host CPU's outputs on %d batch(es) (largest "
           "difference %.2g of the largest output; at most %g is taken for rounding), %.1fs", where,
           count, worst, tolerance, time.time() - started)
  return worst


def check_batches(data, batch_size: int, bucket_width: int) -> list[dict[str, np.ndarray]]:
  """The first and last evaluation batches of encoded data: its shortest rows, and its
  longest with the padding rows a last batch has."""
  first = last = None
  for batch in data_lib.eval_batches(data, batch_size, bucket_width):
    first = batch if first is None else first
    last = batch
  return [] if first is None else [first] if last is first else [first, last]

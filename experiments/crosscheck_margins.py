"""The CPU cross-check's margins (docs/accelerators.md), measured on the default model.

How far rounding and a simulated device fault move the default model's logits from the host
reference.

For the first and last validation batches, at initialisation and after each of --epochs
epochs of training on the scan, prints crosscheck.discrepancy from the reference of:
matmul_dtype=bfloat16 (the LSTM and output matmuls' operands rounded to bfloat16); every
matmul's operands rounded to bfloat16, attention and bridges too (what a TPU's default
precision does to float32 matmuls); the cuDNN code path with its call run by lstm_ref; the
same with each row given another row's length (lengths in reverse row order). About 6
minutes on 2 CPU cores.

  PYTHONPATH=. python3 experiments/crosscheck_margins.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.lax import lax as lax_internal

from seq2seq_jax import crosscheck, cudnn
from seq2seq_jax import data as data_lib
from seq2seq_jax.config import Config
from seq2seq_jax.inference import load_run_data
from seq2seq_jax.model import build_model
from seq2seq_jax.optim import build_optimizer
from seq2seq_jax.steps import create_state, train_step


@contextlib.contextmanager
def _every_matmul_in_bfloat16():
  """lax.dot_general (which jnp.matmul, @ and flax's Dense call) with float32 operands
  rounded to bfloat16 and products summed in float32, while tracing."""
  original = lax_internal.dot_general

  def rounded(lhs, rhs, *args, preferred_element_type=None, **kwargs):
    out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
    if jnp.issubdtype(out_dtype, jnp.floating):
      lhs, rhs = (x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x
                  for x in (lhs, rhs))
      return original(lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs).astype(out_dtype)
    return original(lhs, rhs, *args, preferred_element_type=preferred_element_type, **kwargs)

  lax_internal.dot_general = jax.lax.dot_general = rounded
  try:
    yield
  finally:
    lax_internal.dot_general = jax.lax.dot_general = original


def _faulty_lstm(x, h_0, c_0, weights, seq_lengths, **kwargs):
  return cudnn.reference_lstm(x, h_0, c_0, weights, seq_lengths[::-1], **kwargs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=2)
  args = parser.parse_args()
  config = Config(lstm_impl="scan")
  translator, train_pairs, val_pairs, _ = load_run_data(config)
  sizes = len(translator.src_vocab), len(translator.tgt_vocab)
  # the cuDNN code path on a CPU: layers resolve to "cudnn", their call is lstm_ref
  cudnn.cuda_gpu = lambda: True
  variants = {"matmul_dtype=bfloat16": (build_model(dataclasses.replace(config, matmul_dtype="bfloat16"), *sizes), None),
              "every matmul bfloat16": (translator.model, "bfloat16"),
              "cudnn path (lstm_ref)": (build_model(dataclasses.replace(config, lstm_impl="cudnn"), *sizes),
                                        cudnn.reference_lstm),
              "lengths of other rows": (build_model(dataclasses.replace(config, lstm_impl="cudnn"), *sizes),
                                        _faulty_lstm)}
  reference = crosscheck.reference_translator(translator)
  batches = crosscheck.check_batches(translator.encode(val_pairs), config.batch_size,
                                     config.bucket_width)

  def report(label: str, params) -> None:
    host_params = jax.tree.map(np.asarray, params)
    cells = []
    for name, (model, call) in variants.items():
      cudnn.lstm_call = None if call == "bfloat16" else call
      forward = dataclasses.replace(translator, model=model).forward
      rounding = _every_matmul_in_bfloat16 if call == "bfloat16" else contextlib.nullcontext
      values = []
      for batch in batches:
        expected = crosscheck.reference_outputs(reference, host_params, batch)
        with jax.default_matmul_precision("highest"), rounding():
          outputs = np.asarray(forward(params, batch["src"], batch["tgt_in"]))
        values.append(crosscheck.discrepancy(outputs, expected,
                                             crosscheck.scored_positions(batch, series=False)))
      cells.append(f"{name}: " + " / ".join(f"{v:.2g}" for v in values))
    print(f"{label:<14} " + "   ".join(cells), flush=True)

  tx = build_optimizer(config, 10_000)
  state = create_state(config, translator.model, tx)
  report("initialisation", state["params"])
  step = jax.jit(functools.partial(train_step, model=translator.model, tx=tx, config=config))
  train_data = translator.encode(train_pairs)
  rng = jax.random.key(config.seed)
  for epoch in range(args.epochs):
    for rows in data_lib.epoch_batches(train_data, config.batch_size, config.seed, epoch,
                                       config.bucket_width):
      batch = data_lib.make_batch(train_data, rows, config.batch_size, config.bucket_width)
      state, metrics = step(state, batch, rng)
    report(f"epoch {epoch + 1} (loss {float(metrics['loss']):.2f})", state["params"])


if __name__ == "__main__":
  main()

"""Devices: multi-host start-up, the data-parallel mesh and array placement.

Data parallelism is JAX's own SPMD: batches are sharded over a `data` mesh axis,
parameters and optimizer state are replicated, and `jit` inserts the gradient
all-reduce. No pmap, no hand-written replication.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seq2seq_jax.errors import UserError

log = logging.getLogger(__name__)
DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """jax.distributed.initialize() when a multi-process launch is described.

  Explicit settings: JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES,
  JAX_PROCESS_ID. On TPU pods and SLURM/Open MPI clusters JAX finds them itself
  when SEQ2SEQ_JAX_DISTRIBUTED=1.
  """
  if getattr(maybe_initialize_distributed, "_done", False):
    return
  wanted = os.environ.get("SEQ2SEQ_JAX_DISTRIBUTED", "").strip()
  if wanted not in ("", "0", "1"):  # "true" was ignored: each host then trained alone
    raise UserError(f"SEQ2SEQ_JAX_DISTRIBUTED={wanted!r}: set 1 (JAX finds the cluster's "
                    "processes itself), or 0 or nothing (one process, unless "
                    "JAX_COORDINATOR_ADDRESS names a coordinator).")
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    try:
      num_processes = int(os.environ["JAX_NUM_PROCESSES"])
      process_id = int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError):
      raise UserError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and "
                      "JAX_PROCESS_ID must be set to whole numbers too.") from None
    # CPU devices of several processes talk through gloo (GPU/TPU ignore this setting).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif wanted == "1":
    jax.distributed.initialize()
  maybe_initialize_distributed._done = True


def is_primary() -> bool:
  """Only process 0 writes logs, metrics and tables."""
  return jax.process_index() == 0


class DataParallel:
  """A 1-D mesh over every device; batches split along their first axis."""

  def __init__(self, devices: list | None = None):
    self.devices = list(devices if devices is not None else jax.devices())
    self.mesh = Mesh(np.array(self.devices), (DATA_AXIS,))
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())

  @property
  def size(self) -> int:
    return len(self.devices)

  def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
    if batch_size % self.size:
      raise UserError(f"{what}={batch_size} does not divide evenly over {self.size} devices; "
                      f"use a multiple of {self.size} (e.g. "
                      f"{-(-batch_size // self.size) * self.size}).")

  def round_batch_size(self, batch_size: int) -> int:
    """The smallest multiple of the device count that is at least batch_size."""
    return -(-batch_size // self.size) * self.size

  def replicate(self, tree: Any) -> Any:
    return jax.device_put(tree, self.replicated)

  def abstract_replicated(self, tree: Any) -> Any:
    """Shapes, dtypes and the replicated sharding of tree: a restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated),
                        tree)

  def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch (the same NumPy arrays on every host) as arrays sharded over
    the data axis; each process places only the rows of its own devices."""
    if self.size == 1 and jax.process_count() == 1:
      return jax.device_put(batch, self.devices[0])
    return {key: jax.make_array_from_callback(value.shape, self.batch_sharding,
                                              lambda index, value=value: value[index])
            for key, value in batch.items()}

  @property
  def one_program_at_a_time(self) -> bool:
    """Several CPU devices in one process: a program with collectives must finish on
    every device before the next is dispatched. With programs queued ahead, jax 0.10's
    CPU client can deadlock: one device's launch of the next program waits for its
    inputs while holding what another device needs to launch the current one, whose
    all-reduce then waits forever (XLA aborts after 40 s). Measured: 4 of 4 stress runs
    of queued train steps on 2 CPU devices aborted within 2.5-6 minutes."""
    return self.size > 1 and jax.process_count() == 1 and self.devices[0].platform == "cpu"

  def settle(self, tree: Any) -> Any:
    """tree, after waiting for it on every device where one_program_at_a_time and tree
    spans several devices (a one-device program has no collectives: it stays queued);
    call it on each program's outputs before dispatching the next."""
    if self.one_program_at_a_time and any(
        isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
        for x in jax.tree.leaves(tree)):
      jax.block_until_ready(tree)
    return tree

  def describe(self) -> dict[str, Any]:
    return {
        "devices": [str(d) for d in self.devices],
        "device_kind": self.devices[0].device_kind,
        "platform": self.devices[0].platform,
        "num_devices": self.size,
        "num_processes": jax.process_count(),
        "mesh": dict(self.mesh.shape),
    }


def any_process(flag: bool) -> bool:
  """Whether flag is true in any process of the run: one decision for all of them, so
  none goes on alone into a collective that the others never join."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def to_numpy(x: jax.Array) -> np.ndarray:
  """A global array's value on this host: replicated arrays from a local copy,
  sharded ones gathered from every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))

"""Data parallelism on a `jax.sharding` mesh, on one host or several.

One mesh axis, `data`, spans every device of every process. Batches are split
along it; parameters, optimizer state and the on-device data set are
replicated. XLA's SPMD partitioner inserts the gradient all-reduce, so the
training step itself is written for one device and stays pure.

Several hosts join through `jax.distributed.initialize`. Every process runs
the same program on the same (seeded) batch indices and contributes the
slice of each global batch that lives on its own devices; only process 0
writes files and prints.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distill.errors import UserError

DATA_AXIS = "data"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins a multi-process run through `jax.distributed.initialize`.

  With no arguments JAX reads the cluster's own variables (SLURM, Open MPI,
  Cloud TPU, ...). Explicit values come from `--coordinator HOST:PORT
  --num-processes N --process-id I` or DISTILL_COORDINATOR,
  DISTILL_NUM_PROCESSES and DISTILL_PROCESS_ID.
  """
  coordinator = coordinator or os.environ.get("DISTILL_COORDINATOR") or None
  if num_processes is None and os.environ.get("DISTILL_NUM_PROCESSES"):
    num_processes = int(os.environ["DISTILL_NUM_PROCESSES"])
  if process_id is None and os.environ.get("DISTILL_PROCESS_ID"):
    process_id = int(os.environ["DISTILL_PROCESS_ID"])
  if coordinator is not None and (num_processes is None or process_id is None):
    raise UserError("--coordinator needs --num-processes and --process-id as well")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  except (RuntimeError, ValueError) as e:
    raise UserError(f"could not join the distributed run: {e}") from None


def leave() -> None:
  """Leaves a multi-process run through JAX's shutdown barrier (waits for every process);
  nothing when this process joined none."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """A 1-D mesh over every device of every process, its axis named `data`."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of arrays every device holds whole (parameters, the data set)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """The sharding that splits axis `batch_axis` across the mesh's `data` axis."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_divides(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """Refuses a global batch that does not split evenly across the devices."""
  devices = mesh.size
  if batch_size % devices:
    raise UserError(f"{what} {batch_size} does not divide across {devices} devices; choose a "
                    f"multiple of {devices}")


def put(array: Any, sharding: NamedSharding) -> jax.Array:
  """Places a host array (the same on every process) with `sharding`.

  Each process hands over only the slices its own devices hold, so a batch
  sharded across hosts is fed in parts, one per process.
  """
  array = np.asarray(array)
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` whole on every device."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda leaf: put(np.asarray(leaf), sharding), tree)


def fetch(array: jax.Array) -> np.ndarray:
  """A replicated (or single-process) array as numpy, on every process."""
  if isinstance(array, jax.Array) and not array.is_fully_addressable:
    return np.asarray(array.addressable_data(0))
  return np.asarray(array)


def process_zero_decides(flag: bool) -> bool:
  """Process 0's `flag`, on every process (the flag itself when there is one process).

  For a choice read from a clock, which each process reads at its own moment:
  a collective step such as a checkpoint save must be started by all or none.
  """
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(name)

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

import hashlib
import json
import os
import signal
import socket
import sys
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
  # The count first: with 0 processes no process id is valid, and the id's range would blame
  # the id.
  if num_processes is not None and num_processes < 1:
    raise UserError(f"--num-processes must be 1 or more, got {num_processes}")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise UserError(f"--process-id must be in [0, {num_processes}), got {process_id}")
  if coordinator is not None:
    if process_id == 0:
      _check_port_free(coordinator)
    # JAX waits in silence for the others (and aborts the process when they never come).
    print(f"process {process_id} of {num_processes}: waiting for every process at "
          f"{coordinator} (up to {_JOIN_SECONDS} s)", file=sys.stderr, flush=True)
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=_JOIN_SECONDS)
  except (RuntimeError, ValueError) as e:
    message = str(e)
    if coordinator is None and "coordinator_address" in message:
      # --distributed with no cluster around: JAX's message names its own argument, not ours.
      message = (f"{message.rstrip('.')}; no cluster variables (SLURM, Open MPI, TPU) were "
                 "found, so give --coordinator HOST:PORT --num-processes N --process-id I")
    raise UserError(f"could not join the distributed run: {message}") from None
  _keep_stdout_for_results()


# How long a process waits for the others to join (jax.distributed's initialization_timeout).
_JOIN_SECONDS = int(os.environ.get("DISTILL_JOIN_TIMEOUT", "300"))


def _check_port_free(coordinator: str) -> None:
  """Refuses, on process 0, a coordinator port another program holds: JAX's service binds it
  on every address and crashes the process when it cannot."""
  port = coordinator.rpartition(":")[2]
  if not port.isdigit():
    raise UserError(f"--coordinator {coordinator} needs a port: HOST:PORT")
  try:
    probe = socket.socket(socket.AF_INET6)
  except OSError:  # no IPv6 here
    probe = socket.socket(socket.AF_INET)
  with probe:
    # As the service binds: a port a finished run's connections still wait on (TIME_WAIT) is
    # free; one a program listens on is not.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("", int(port)))
    except OSError as e:
      raise UserError(f"could not join the distributed run: port {port} is in use on this host "
                      f"({e.strerror}); give --coordinator another port") from None


def _keep_stdout_for_results() -> None:
  """Sends what native libraries print to stdout (Gloo's 'connected to 1 peer ranks') to
  stderr, keeping stdout for the result lines Python writes, as on one process."""
  if jax.process_count() == 1:
    return
  sys.stdout.flush()
  results = os.dup(1)
  os.dup2(2, 1)
  sys.stdout = os.fdopen(results, "w", buffering=1)


def check_same_on_every_process(values: dict[str, Any]) -> None:
  """Refuses, on every process at once, a run whose processes were started with different
  `values` (the resolved recipe's hash, the run folder, ...): each would train its own copy of
  the "replicated" model with its own settings, or wait for the others in a collective they
  never reach. Nothing for one process."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # noqa: PLC0415

  keys = sorted(values)
  digests = np.asarray([int.from_bytes(hashlib.sha256(json.dumps(
      values[key], sort_keys=True, default=str).encode()).digest()[:4], "big") & 0x7FFFFFFF
                        for key in keys], np.int32)
  every = np.asarray(multihost_utils.process_allgather(digests)).reshape(-1, len(keys))
  differing = [key for index, key in enumerate(keys) if len(set(every[:, index])) > 1]
  if differing:
    others = [str(i) for i in range(len(every)) if (every[i] != every[0]).any()]
    many = len(others) > 1
    raise UserError(f"the processes were started differently: process{'es' if many else ''} "
                    f"{', '.join(others)} differ{'' if many else 's'} from process 0 in "
                    f"{' and '.join(differing)}; start every process with the same command and "
                    "settings (only --process-id differs)")


def stop_on_every_process(signal_name: str | None) -> str | None:
  """The stop signal (its name) that reached any process, on every process; for one process
  its own. A stop that only one host saw must stop them all at the same step: the others
  would wait in the next step's collective for the one saving its checkpoint."""
  if jax.process_count() == 1:
    return signal_name
  from jax.experimental import multihost_utils  # noqa: PLC0415

  code = signal.Signals[signal_name].value if signal_name else 0
  codes = np.asarray(multihost_utils.process_allgather(np.asarray(code, np.int32)))
  found = int(codes.max())
  return signal.Signals(found).name if found else None


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

"""Feeders: each dispatch's batch, wherever the training split lives.

The loop, the benchmark and the step-0 check ask a feeder for the rows of a
dispatch (K consecutive steps) and never where the data is:

* `DeviceFeeder`: the split fits in memory, so it lives on the devices as
  uint8 (with the teaching strategy's per-example columns); the host sends
  only batch indices and the step gathers the rows itself.
* `HostFeeder`: a streamed split stays on disk; Grain's threads read each
  dispatch's rows (this process's share) ahead of the step, and they travel
  with the dispatch.

Either way the step sees the same columns for a batch: 'index' (positions in
the split), 'images', 'labels' and the strategy's own, and the batches are
those of `DataOrder`: a pure function of (seed, step).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from distill import parallel
from distill.errors import UserError

Columns = dict[str, Any]


def check_batch_fits(batch_size: int, num_examples: int, what: str = "batch size",
                     where: str = "") -> None:
  """Refuses a batch larger than the training split: no step could be drawn from it."""
  if batch_size > num_examples:
    raise UserError(f"{what} {batch_size} is larger than the {num_examples} training "
                    f"examples{where}")


class DataOrder:
  """Batch indices as a pure function of (seed, step).

  Each epoch is a fresh permutation seeded by (seed, epoch); the last partial
  batch of an epoch is dropped. Because nothing depends on history, a resumed
  run sees exactly the batches an uninterrupted run would have seen.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    check_batch_fits(batch_size, num_examples)
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // batch_size
    self._epoch = -1
    self._permutation = np.empty(0, np.int32)

  def indices(self, first_step: int, count: int) -> np.ndarray:
    """Indices [count, batch_size] for steps first_step .. first_step+count-1."""
    # One slice per epoch the steps fall in, not one per step: a small model's dispatch
    # takes about a millisecond, and the loop makes these between dispatches.
    parts = []
    step, end = first_step, first_step + count
    while step < end:
      epoch, position = divmod(step, self.steps_per_epoch)
      steps = min(end - step, self.steps_per_epoch - position)
      start = position * self.batch_size
      parts.append(self._epoch_permutation(epoch)[start:start + steps * self.batch_size]
                   .reshape(steps, self.batch_size))
      step += steps
    return np.concatenate(parts)

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch` (the latest one is kept)."""
    if epoch != self._epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._permutation = rng.permutation(self.num_examples).astype(np.int32)
      self._epoch = epoch
    return self._permutation

  def local_indices(self, first_step: int, count: int) -> np.ndarray:
    """This process's share [count, B / processes] of the batches of `count` steps."""
    indices = self.indices(first_step, count)
    share = indices.shape[1] // jax.process_count()
    return indices[:, jax.process_index() * share:(jax.process_index() + 1) * share]


def pixel_stats(images_NxHxWxC, max_rows: int = 100_000) -> tuple[list[float], list[float]]:
  """Per-channel mean and standard deviation of uint8 images, on the 0..1 scale.

  `images_NxHxWxC` is an array or anything indexable like one (a streamed
  data set's rows); above `max_rows` images an evenly spaced sample is used,
  so a data set larger than memory costs one bounded read.
  """
  count = len(images_NxHxWxC)
  positions = (np.arange(count) if count <= max_rows
               else np.linspace(0, count - 1, max_rows).astype(np.int64))
  channels = images_NxHxWxC.shape[-1]
  # Chunked float64 sums: exact enough and no 8x copy of a large data set.
  total = np.zeros(channels)
  total_sq = np.zeros(channels)
  pixels = 0
  for start in range(0, len(positions), 4096):
    rows = positions[start:start + 4096]
    chunk = images_NxHxWxC[rows].reshape(-1, channels).astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += (chunk**2).sum(0)
    pixels += len(chunk)
  mean = total / pixels
  std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 1e-12))
  return mean.tolist(), std.tolist()


class DeviceFeeder:
  """The whole split (and the strategy's columns) on every device; dispatches send indices.

  Args:
    images, labels: the training split, uint8 [N, H, W, C] and int [N].
    columns: more per-example arrays [N, ...] to gather with each batch.
    order: the batch order.
    mesh: the devices (see `parallel.make_mesh`).
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, columns: Columns,
               order: DataOrder, mesh):
    self.order = order
    self.mesh = mesh
    self.data = parallel.put_replicated(
        {"images": images, "labels": np.asarray(labels).astype(np.int32), **columns}, mesh)

  @staticmethod
  def gather(data: Columns, indices_B: jax.Array) -> Columns:
    """Inside the step: the batch's rows of every column, gathered on the device."""
    return {"index": indices_B, **{name: value[indices_B] for name, value in data.items()}}

  def dispatches(self, plan: list[tuple[int, int]]) -> Iterator[np.ndarray | jax.Array]:
    """The batch indices [K, B] of each (first step, K) of `plan`, split over the devices.

    In one process they stay a numpy array: the compiled step places them with
    the sharding it was compiled for (see `rows_like`) in ~3 us, where
    `jax.device_put` takes ~65 us of the host's time per dispatch, time a small
    model's steps wait for on CPU. Several processes each hand over their share.
    """
    for first, count in plan:
      indices = self.order.indices(first, count)
      yield indices if jax.process_count() == 1 else parallel.put(indices, self.sharding)

  @property
  def sharding(self):
    """Where a dispatch's indices [K, B] go: split on the batch axis."""
    return parallel.batch_sharded(self.mesh, batch_axis=1)

  def rows_like(self, rows: np.ndarray | jax.Array) -> jax.ShapeDtypeStruct:
    """What the step is compiled for: a dispatch's indices, with their sharding."""
    return jax.ShapeDtypeStruct(rows.shape, rows.dtype, sharding=self.sharding)

  def first_batch(self) -> jax.Array:
    """Step 0's batch indices [B] (for the step-0 loss check)."""
    return parallel.put(self.order.indices(0, 1)[0], parallel.batch_sharded(self.mesh))


class HostFeeder:
  """A split on disk: each dispatch's rows are read in Grain's threads and sent with it.

  Args:
    images: the split's images, indexable by position (`distill.data.stream.Rows`).
    labels: int [N], in memory.
    columns: more per-example rows, indexable by position (read per batch).
    order: the batch order; each process reads only its share of a batch.
    mesh: the devices of every process.
    threads, buffer: Grain's reading threads and the dispatches read ahead.
  """

  data: Columns = {}

  def __init__(self, images, labels: np.ndarray, columns: Columns, order: DataOrder, mesh, *,
               threads: int = 2, buffer: int = 4):
    self.order = order
    self.mesh = mesh
    self._images = images
    self._labels = np.asarray(labels).astype(np.int32)
    self._columns = columns
    self._threads, self._buffer = threads, buffer

  @staticmethod
  def gather(data: Columns, rows: Columns) -> Columns:
    """Inside the step: the rows came with the dispatch."""
    del data
    return rows

  def _read(self, positions_KxB: np.ndarray) -> Columns:
    """This process's rows [K, b, ...] of the positions [K, b]."""
    flat = positions_KxB.reshape(-1)
    rows = {"index": flat.astype(np.int32), "images": self._images[flat],
            "labels": self._labels[flat],
            **{name: np.asarray(column[flat], np.float32)
               for name, column in self._columns.items()}}
    return {name: value.reshape(*positions_KxB.shape, *value.shape[1:])
            for name, value in rows.items()}

  def _put(self, rows: Columns) -> Columns:
    """This process's rows [K, b, ...] as global arrays [K, B, ...] split on the batch."""
    sharding = parallel.batch_sharded(self.mesh, batch_axis=1)
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in rows.items()}

  def dispatches(self, plan: list[tuple[int, int]]) -> Iterator[Columns]:
    """Each dispatch's rows, read ahead by Grain's threads, in plan order."""
    import grain  # noqa: PLC0415 (only streamed runs need it)

    lock = threading.Lock()

    def read(dispatch: int) -> Columns:
      with lock:  # DataOrder caches the epoch's permutation: one thread at a time.
        positions = np.array(self.order.local_indices(*plan[dispatch]), copy=True)
      return self._read(positions)

    # Grain keeps the dispatches in order and at most `buffer` read ahead.
    iterator = iter(grain.MapDataset.range(len(plan)).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=self._threads, prefetch_buffer_size=self._buffer)))
    iterator.start_prefetch()  # Read while the step compiles.
    try:
      for rows in iterator:
        yield self._put(rows)
    finally:
      iterator.close()

  @staticmethod
  def rows_like(rows: Columns) -> Columns:
    """What the step is compiled for: the rows come placed, with their shardings."""
    return rows

  def first_batch(self) -> Columns:
    """Step 0's rows [B, ...] (for the step-0 loss check)."""
    rows = self._put(self._read(self.order.local_indices(0, 1)))
    return jax.tree.map(lambda value: value[0], rows)


def make_feeder(images, labels: np.ndarray, columns_for, order: DataOrder, mesh):
  """The feeder for a split: on the devices when it is an array in memory, else from disk.

  `columns_for(on_device)` gives the teaching strategy's per-example columns
  in the form that feeder reads.
  """
  if isinstance(images, np.ndarray):
    return DeviceFeeder(images, labels, columns_for(True), order, mesh)
  return HostFeeder(images, labels, columns_for(False), order, mesh)

"""A trained model and its jitted forward passes: logits of uint8 images, in batches.

`TrainedModel` is what training hands back and what a finished run restores
to: the model split into (graphdef, params, rest) with the pixel statistics
its inputs are standardised by. Its `predict` is one jitted function that
takes uint8 images, so normalisation happens on the device like in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill import backend, parallel
from distill.augment import augment_views
from distill.io import array_sha256


def normalize(images_uint8: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 images -> float32, standardised per channel."""
  return (images_uint8.astype(jnp.float32) / 255.0 - mean) / std


def _host_stats(stats) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) as float32 numpy, baked into a jitted function as constants.

  Accepts lists or arrays placed anywhere (a replicated array spans processes).
  """
  return tuple(np.asarray(parallel.fetch(s), np.float32) for s in stats)


def make_predict(graphdef, rest, stats, mesh=None) -> Callable[[Any, Any], jax.Array]:
  """(params, uint8 images [B, ...]) -> float32 logits [B, C], jitted, the batch split over `mesh`.

  `mesh` defaults to every device (see `parallel.make_mesh`); B must divide by
  its size (`predict_in_batches` pads to that).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  stats = _host_stats(stats)

  @partial(backend.jit, out_shardings=parallel.replicated(mesh))
  def predict_sharded(params, images_uint8):
    logits = nnx.merge(graphdef, params, rest)(normalize(images_uint8, *stats))
    return logits.astype(jnp.float32)

  def predict(params, images_uint8):
    return predict_sharded(params, parallel.put(images_uint8, parallel.batch_sharded(mesh)))

  return predict


class DeviceValidation:
  """A split kept on the devices, scored by one compiled program: (cross-entropy, accuracy).

  The loop's periodic validation: the images travel to the devices once,
  padded to whole batches [num_batches, B, ...] (padding rows carry label
  -1 and count for nothing), and each evaluation is a single dispatch that
  maps the forward pass over the batches and returns two scalars, instead of
  a transfer, a dispatch and a fetch per batch. Nothing waits for the result
  until it is read.

  Args:
    graphdef, rest, stats: the model split and the pixel statistics (see `make_predict`).
    images, labels: the split, uint8 [N, H, W, C] and int [N], in memory.
    batch_size: rows per forward pass (rounded up to divide over the devices).
    mesh: see `parallel.make_mesh`.
  """

  def __init__(self, graphdef, rest, stats, images: np.ndarray, labels: np.ndarray,
               batch_size: int, mesh):
    from distill import losses  # noqa: PLC0415
    from distill.metrics import accuracy  # noqa: PLC0415

    devices = mesh.size
    batch = -(-min(batch_size, len(images)) // devices) * devices
    num_batches = -(-len(images) // batch)
    padding = num_batches * batch - len(images)
    images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([np.asarray(labels, np.int32), np.full(padding, -1, np.int32)])
    sharding = parallel.batch_sharded(mesh, batch_axis=1)
    self.images = parallel.put(images.reshape(num_batches, batch, *images.shape[1:]), sharding)
    self.labels = parallel.put(labels.reshape(num_batches, batch), sharding)
    mean, std = _host_stats(stats)

    def score(params, batch_images, batch_labels):
      logits = nnx.merge(graphdef, params, rest)(normalize(batch_images, mean, std))
      logits = logits.astype(jnp.float32)
      valid = (batch_labels >= 0).astype(jnp.float32)
      labels_or_zero = jnp.maximum(batch_labels, 0)
      nll = losses.hard_cross_entropy(logits, labels_or_zero, reduction="none")
      correct = accuracy(logits, labels_or_zero, reduction="none")
      return jnp.sum(nll * valid), jnp.sum(correct * valid)

    @partial(backend.jit, out_shardings=parallel.replicated(mesh))
    def evaluate(params, images_KxB, labels_KxB):
      nll, correct = jax.lax.map(lambda batch: score(params, *batch), (images_KxB, labels_KxB))
      count = jnp.sum(labels_KxB >= 0).astype(jnp.float32)
      return jnp.sum(nll) / count, jnp.sum(correct) / count

    self._evaluate = evaluate

  def __call__(self, params) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) of the model with `params`, still on the device."""
    return self._evaluate(params, self.images, self.labels)


def make_view_predict(graphdef, rest, stats, *, num_views: int, seed: int,
                      augment_settings: dict[str, Any]) -> Callable[..., jax.Array]:
  """A jitted (params, uint8 images [B, ...], example indices [B]) -> logits [B, K, C].

  View v of example i is `augment_views` of (seed, i, v): the same function a
  student taught with `teaching=views` replays.
  """
  settings = dict(augment_settings)
  mesh = parallel.make_mesh()
  stats = _host_stats(stats)

  @partial(backend.jit, out_shardings=parallel.replicated(mesh))
  def predict_sharded(params, images_uint8, indices_B):
    model = nnx.merge(graphdef, params, rest)
    images = normalize(images_uint8, *stats)
    views = [model(augment_views(images, indices_B, jnp.full_like(indices_B, v), seed, settings))
             for v in range(num_views)]
    return jnp.stack(views, axis=1).astype(jnp.float32)

  def predict(params, images_uint8, indices_B):
    sharding = parallel.batch_sharded(mesh)
    return predict_sharded(params, parallel.put(images_uint8, sharding),
                           parallel.put(indices_B, sharding))

  return predict


def predict_in_batches(predict, params, images: np.ndarray, batch_size: int,
                       progress: str | None = None, pass_indices: bool = False) -> np.ndarray:
  """Outputs of `predict` for all `images`, padding the last batch so only one shape compiles.

  `progress` names a tqdm bar to show (None: no bar). `pass_indices` also
  hands `predict` each row's index in `images` (for per-example views).
  """
  from distill.console import progress as progress_bar  # noqa: PLC0415

  # Every device gets an equal share of each batch.
  devices = jax.device_count()
  batch_size = -(-min(batch_size, len(images)) // devices) * devices
  outputs = []
  in_flight = None  # (outputs on the device, valid rows) of the previous batch
  starts = range(0, len(images), batch_size)
  for start in progress_bar(starts, desc=progress or "", quiet=progress is None, unit="batch"):
    chunk = images[start:start + batch_size]
    valid = len(chunk)
    indices = np.arange(start, start + batch_size, dtype=np.int32)
    if valid < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - valid, axis=0)])
    extra = (indices,) if pass_indices else ()
    # Queue this batch before fetching the last one, so the device never waits
    # for the host to slice, pad and transfer.
    queued = (predict(params, chunk, *extra), valid)
    if in_flight is not None:
      outputs.append(parallel.fetch(in_flight[0])[:in_flight[1]])
    in_flight = queued
  if in_flight is not None:
    outputs.append(parallel.fetch(in_flight[0])[:in_flight[1]])
  return np.concatenate(outputs)


def params_sha256(params) -> str:
  """A hash of the parameter values, for checking two runs ended identically."""
  return array_sha256(*[parallel.fetch(x) for x in jax.tree.leaves(params)])


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedModel:
  """A trained classifier: the split NNX model and the pixel statistics of its inputs.

  Attributes:
    graphdef, rest: the model's structure and non-parameter state (`nnx.split`).
    params: its parameters (on the devices).
    stats: (per-channel mean, std) on the 0..1 scale, of the training images.
  """

  graphdef: Any
  rest: Any
  params: Any
  stats: tuple[list[float], list[float]]
  # The jitted (params, uint8 images [B, ...]) -> float32 logits [B, C] (see
  # `make_predict`); built when not given. Training passes the one it
  # validated with, so nothing compiles twice.
  predict: Callable[[Any, Any], jax.Array] | None = None

  def __post_init__(self):
    if self.predict is None:
      object.__setattr__(self, "predict", make_predict(self.graphdef, self.rest, self.stats))

  def logits(self, images, batch_size: int, progress: str | None = None) -> np.ndarray:
    """Float32 logits [N, C] of uint8 images [N, ...], `batch_size` at a time."""
    return predict_in_batches(self.predict, self.params, images, batch_size, progress=progress)

  def view_logits(self, images, batch_size: int, *, num_views: int, seed: int,
                  augment_settings: dict[str, Any], progress: str | None = None) -> np.ndarray:
    """Logits [N, K, C] of K augmented views of each image (see `make_view_predict`)."""
    predict = make_view_predict(self.graphdef, self.rest, self.stats, num_views=num_views,
                                seed=seed, augment_settings=augment_settings)
    return predict_in_batches(predict, self.params, images, batch_size, progress=progress,
                              pass_indices=True)

  def params_sha256(self) -> str:
    """See `params_sha256`."""
    return params_sha256(self.params)

"""One training loop for teachers and students.

What differs between a teacher and a student — the model, the objective, the
targets, whether to augment — is passed in; the loop itself is the same.

The hot path is one jitted function that runs `steps_per_dispatch` optimizer
steps with `lax.scan`. The whole training split lives on the device as uint8;
the host sends only batch indices, and sampling, normalisation and
augmentation happen inside the step. The training state is donated, so XLA
updates it in place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distill import losses, parallel
from distill.augment import augment, augment_views, mixup
from distill.checkpoint import Checkpointer
from distill.errors import UserError
from distill.io import array_sha256, write_text

Batch = dict[str, jax.Array]


# --------------------------------------------------------------------------
# Objectives: name -> what the loop minimises.


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training loss over (logits, batch) and the loss it must start at.

  Attributes:
    name: registry name ('hard' or 'soft').
    loss: (logits [B, C], batch) -> scalar float32.
    uses_targets: whether the batch must carry the teacher's `targets`.
    expected_init_loss: (n_classes, the first batch's targets or None) -> the
      loss of a uniform prediction. Soft CE starts at log(C) whatever the
      targets; KL starts at log(C) - H(targets), so it needs them.
  """

  name: str
  loss: Callable[[jax.Array, Batch], jax.Array]
  uses_targets: bool
  expected_init_loss: Callable[[int, Any], float]


def _hard_objective(label_smoothing: float = 0.0, **_: Any) -> Objective:
  return Objective(
      name="hard",
      loss=lambda logits, batch: losses.hard_cross_entropy(
          logits, batch["labels"], label_smoothing=label_smoothing),
      uses_targets=False,
      expected_init_loss=lambda n, _targets: losses.expected_init_loss(n, kind="hard"),
  )


def _soft_objective(temperature: float = 1.0, alpha: float = 1.0, soft_loss: str = "soft_ce",
                    label_smoothing: float = 0.0, **_: Any) -> Objective:
  """`alpha * T^2 * soft(student/T, teacher at T) + (1 - alpha) * hard CE` (Hinton et al. 2015)."""
  def loss(logits, batch):
    return losses.distillation_loss(
        logits, target_probs=batch["targets"], labels=batch["labels"], temperature=temperature,
        alpha=alpha, kind=soft_loss, label_smoothing=label_smoothing)

  return Objective(
      name="soft", loss=loss, uses_targets=True,
      expected_init_loss=lambda n, targets: losses.expected_init_loss(
          n, kind=soft_loss, temperature=temperature, alpha=alpha, target_probs=targets))


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "hard": _hard_objective,
    "soft": _soft_objective,
}


def make_objective(name: str, **settings: Any) -> Objective:
  """Builds the registered objective `name`.

  'hard': one-hot cross-entropy (label_smoothing). 'soft': the distillation
  loss (temperature, alpha, soft_loss = 'soft_ce' | 'kl', label_smoothing for
  the hard part when alpha < 1).
  """
  if name not in OBJECTIVES:
    raise UserError(f"unknown loss '{name}'; valid: {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name](**settings)


@dataclasses.dataclass
class Teaching:
  """Where a student's soft targets come from (the recipe's `student.teaching`).

  Attributes:
    mode: 'targets' (exported probabilities of the un-augmented images),
      'online' (the frozen teacher runs inside the step on the student's exact
      augmented batch) or 'views' (exported targets of K augmented views per
      image, replayed exactly).
    temperature: the softmax temperature of the targets (the student's T).
    teacher_logits: 'targets': [N, C]; 'views': [N, K, C], row-aligned with
      the training images.
    teacher: 'online': the teacher's (graphdef, rest, params).
    mixup: 'online': Beta(mixup, mixup) image mixing; 0 is off.
    view_seed, view_augment: 'views': the seed and augment settings the views
      were exported with.
  """

  mode: str
  temperature: float = 1.0
  teacher_logits: np.ndarray | None = None
  teacher: tuple[Any, Any, Any] | None = None
  mixup: float = 0.0
  view_seed: int = 0
  view_augment: dict[str, Any] | None = None


# --------------------------------------------------------------------------
# Data order and preprocessing.


class DataOrder:
  """Batch indices as a pure function of (seed, step).

  Each epoch is a fresh permutation seeded by (seed, epoch); the last partial
  batch of an epoch is dropped. Because nothing depends on history, a resumed
  run sees exactly the batches an uninterrupted run would have seen.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int):
    if batch_size > num_examples:
      raise UserError(
          f"batch size {batch_size} is larger than the {num_examples} training examples")
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // batch_size
    self._epoch = -1
    self._permutation = np.empty(0, np.int32)

  def indices(self, first_step: int, count: int) -> np.ndarray:
    """Indices [count, batch_size] for steps first_step .. first_step+count-1."""
    rows = []
    for step in range(first_step, first_step + count):
      epoch, position = divmod(step, self.steps_per_epoch)
      if epoch != self._epoch:
        rng = np.random.default_rng([self.seed, epoch])
        self._permutation = rng.permutation(self.num_examples).astype(np.int32)
        self._epoch = epoch
      start = position * self.batch_size
      rows.append(self._permutation[start:start + self.batch_size])
    return np.stack(rows)


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


def normalize(images_uint8: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """uint8 images -> float32, standardised per channel."""
  return (images_uint8.astype(jnp.float32) / 255.0 - mean) / std


# --------------------------------------------------------------------------
# Optimizer.


def make_schedule(settings: dict[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to 1% of it at `total_steps`."""
  warmup = min(settings["warmup_steps"], max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=settings["learning_rate"], warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=settings["learning_rate"] * 0.01)


def make_optimizer(settings: dict[str, Any], total_steps: int) -> optax.GradientTransformation:
  """AdamW on `make_schedule`, with global-norm clipping.

  Weight decay applies to matrices and kernels only: decaying biases, norms and
  position embeddings towards zero only hurts.
  """
  schedule = make_schedule(settings, total_steps)
  parts = []
  if settings["grad_clip"] > 0:
    parts.append(optax.clip_by_global_norm(settings["grad_clip"]))
  parts.append(optax.adamw(schedule, weight_decay=settings["weight_decay"],
                           mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)))
  return optax.chain(*parts)


# --------------------------------------------------------------------------
# The pure, jitted pieces.


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything static the step closes over."""

  graphdef: Any
  rest: Any
  objective: Objective
  optimizer: optax.GradientTransformation
  augment_settings: tuple[tuple[str, Any], ...] | None
  seed: int
  unroll: bool = False
  teaching: str | None = None  # None: hard labels only
  temperature: float = 1.0
  mixup: float = 0.0
  num_views: int = 0
  view_seed: int = 0
  view_augment: tuple[tuple[str, Any], ...] | None = None
  teacher_graphdef: Any = None
  teacher_rest: Any = None


def should_unroll(model: nnx.Module) -> bool:
  """Whether to unroll the multi-step scan for `model` on this backend.

  XLA:CPU runs convolutions inside a while-loop body about 13x slower than the
  same steps in straight-line code (measured here: a 17k-parameter CNN step
  took 967 ms in a scan, 61 ms unrolled). For matmul-only models the scan is
  faster (ViT: 5,240 vs 4,700 images/s) and compiles 6x quicker, so only
  convolutional models on CPU are unrolled.
  """
  has_conv = any(isinstance(module, nnx.Conv) for _, module in nnx.iter_modules(model))
  return has_conv and jax.default_backend() == "cpu"


def _forward(ctx: StepContext, params, images: jax.Array) -> jax.Array:
  return nnx.merge(ctx.graphdef, params, ctx.rest)(images)


def _student_batch(ctx: StepContext, data: Batch, stats, teacher_params, step, rows):
  """The images and labels/targets of one step, built on the device from (seed, step).

  `rows` is the batch's example indices [B] into the on-device `data`, or,
  for a streamed data set, the rows themselves ({'index', 'images', 'labels',
  and 'teacher_logits' for exported targets}).

  Returns:
    (normalised, augmented images [B, H, W, C]; {'labels', and 'targets' when taught}).
  """
  if isinstance(rows, dict):  # Streamed: the rows came with the dispatch.
    indices_B = rows["index"]
  else:  # On the device: gather the batch.
    indices_B = rows
    rows = {name: value[indices_B] for name, value in data.items() if name != "view_logits"}
  batch = {"labels": rows["labels"]}
  images = normalize(rows["images"], *stats)
  key = jax.random.fold_in(jax.random.key(ctx.seed), step)
  if ctx.teaching == "views":
    # Each example replays one of the K views the teacher labelled at export.
    views_B = jax.random.randint(jax.random.fold_in(key, 1), indices_B.shape, 0, ctx.num_views)
    images = augment_views(images, indices_B, views_B, ctx.view_seed, dict(ctx.view_augment))
    batch["targets"] = losses.softmax(data["view_logits"][indices_B, views_B],
                                      temperature=ctx.temperature)
  elif ctx.augment_settings is not None:
    images = augment(images, key, dict(ctx.augment_settings))
  if ctx.teaching == "online":
    if ctx.mixup > 0:
      images = mixup(images, jax.random.fold_in(key, 2), ctx.mixup)
    teacher = nnx.merge(ctx.teacher_graphdef, teacher_params, ctx.teacher_rest)
    teacher_logits = jax.lax.stop_gradient(teacher(images))
    batch["targets"] = losses.softmax(teacher_logits, temperature=ctx.temperature)
  elif ctx.teaching == "targets":
    batch["targets"] = (rows["targets"] if "targets" in rows else
                        losses.softmax(rows["teacher_logits"], temperature=ctx.temperature))
  return images, batch


def _train_step(ctx: StepContext, data: Batch, stats, teacher_params, state, rows):
  """One optimizer step on one batch (see `_student_batch` for `rows`)."""
  images, batch = _student_batch(ctx, data, stats, teacher_params, state["step"], rows)

  def loss_fn(params):
    logits = _forward(ctx, params, images)
    return ctx.objective.loss(logits, batch), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = ctx.optimizer.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = {
      "loss": loss,
      "accuracy": losses.accuracy(logits, batch["labels"]),
      "grad_norm": optax.tree.norm(grads),
  }
  if "targets" in batch:
    metrics["teacher_agreement"] = jnp.mean(
        jnp.argmax(logits, -1) == jnp.argmax(batch["targets"], -1))
  new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
  return new_state, metrics


def _train_chunk(ctx: StepContext, state, data: Batch, stats, teacher_params, rows_K):
  """`K` optimizer steps in one dispatch; returns the state and per-step metrics [K].

  `ctx.unroll` (see `should_unroll`) trades compile time for speed where a
  while-loop body is slow.
  """
  return jax.lax.scan(partial(_train_step, ctx, data, stats, teacher_params), state,
                      rows_K, unroll=ctx.unroll)


def _first_loss(ctx: StepContext, params, data: Batch, stats, teacher_params, rows):
  """The loss of the untrained model on the first step's exact batch, and its targets."""
  images, batch = _student_batch(ctx, data, stats, teacher_params, 0, rows)
  logits = _forward(ctx, params, images).astype(jnp.float32)
  return ctx.objective.loss(logits, batch), logits, batch.get("targets")


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

  @partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def predict_sharded(params, images_uint8):
    logits = nnx.merge(graphdef, params, rest)(normalize(images_uint8, *stats))
    return logits.astype(jnp.float32)

  def predict(params, images_uint8):
    return predict_sharded(params, parallel.put(images_uint8, parallel.batch_sharded(mesh)))

  return predict


def make_view_predict(graphdef, rest, stats, *, num_views: int, seed: int,
                      augment_settings: dict[str, Any]) -> Callable[..., jax.Array]:
  """A jitted (params, uint8 images [B, ...], example indices [B]) -> logits [B, K, C].

  View v of example i is `augment_views` of (seed, i, v): the same function a
  student taught with `teaching=views` replays.
  """
  settings = dict(augment_settings)
  mesh = parallel.make_mesh()
  stats = _host_stats(stats)

  @partial(jax.jit, out_shardings=parallel.replicated(mesh))
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
  from tqdm.auto import tqdm  # noqa: PLC0415

  # Every device gets an equal share of each batch.
  devices = jax.device_count()
  batch_size = -(-min(batch_size, len(images)) // devices) * devices
  outputs = []
  in_flight = None  # (outputs on the device, valid rows) of the previous batch
  starts = range(0, len(images), batch_size)
  for start in tqdm(starts, desc=progress, disable=progress is None or not parallel.is_primary(),
                    leave=False, unit="batch"):
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


# --------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  """What a finished training run hands back to the workflow."""

  graphdef: Any
  rest: Any
  params: Any
  stats: tuple[list[float], list[float]]
  predict: Callable[[Any, jax.Array], jax.Array]  # make_predict's jitted forward pass
  init_loss: float
  init_loss_expected: float
  final_train_loss: float
  steps: int
  train_seconds: float  # all stretches of a resumed run, compilation excluded
  compile_seconds: float  # this stretch's
  images_per_second: float  # this stretch's
  resumed_from: int | None


class _StopFlag:
  """Turns SIGINT/SIGTERM into a flag the loop checks between dispatches.

  Stopping between dispatches (rather than raising inside one) guarantees the
  state we checkpoint is a whole step, not a half-donated buffer. A second
  Ctrl-C stops at once.
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals stay as they are.
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal_name is not None:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class TrainingSetup:
  """A model, its optimizer and its data made ready for the jitted loop.

  `fit` trains from it; `distill bench` times its `chunk_fn` bare.
  """

  ctx: StepContext
  state: dict[str, Any]
  data: Batch
  stats: tuple[jax.Array, jax.Array]
  teacher_params: Any
  order: DataOrder
  schedule: optax.Schedule
  predict: Callable[[Any, jax.Array], jax.Array]
  chunk_fn: Callable[..., Any]  # jitted K-step dispatch; donates the state
  pixel_mean: list[float]
  pixel_std: list[float]
  mesh: Any
  # Streamed data sets: the host-side rows (None when the data is on the device).
  streamed: dict[str, Any] | None = None

  def put_indices(self, indices_KxB: np.ndarray) -> jax.Array:
    """Batch indices for one dispatch, each device (and process) holding its share."""
    return parallel.put(indices_KxB, parallel.batch_sharded(self.mesh, batch_axis=1))

  def local_indices(self, first_step: int, count: int) -> np.ndarray:
    """This process's share [count, B / processes] of the batches of `count` steps."""
    indices = self.order.indices(first_step, count)
    share = indices.shape[1] // jax.process_count()
    return indices[:, jax.process_index() * share:(jax.process_index() + 1) * share]

  def read_rows(self, positions_KxB: np.ndarray, images: np.ndarray | None = None) -> dict:
    """Host rows of a streamed data set for positions [K, b] (this process's share).

    `images` may carry the rows already read, flat [K * b, ...] (by the
    prefetching threads).
    """
    shape = positions_KxB.shape
    flat = positions_KxB.reshape(-1)
    rows = {"index": flat.astype(np.int32),
            "images": self.streamed["images"][flat] if images is None else images,
            "labels": self.streamed["labels"][flat]}
    if "teacher_logits" in self.streamed:
      rows["teacher_logits"] = np.asarray(self.streamed["teacher_logits"][flat], np.float32)
    return {name: value.reshape(*shape, *value.shape[1:]) for name, value in rows.items()}

  def put_rows(self, rows: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Places this process's rows [K, b, ...] as global arrays [K, B, ...] split on the batch."""
    sharding = parallel.batch_sharded(self.mesh, batch_axis=1)
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in rows.items()}

  def first_loss(self) -> tuple[float, int, np.ndarray | None]:
    """(step-0 loss, number of classes, that batch's targets) on the first real batch."""
    if self.streamed is not None:
      rows = self.put_rows(self.read_rows(self.local_indices(0, 1)))
      rows = jax.tree.map(lambda value: value[0], rows)
    else:
      rows = parallel.put(self.order.indices(0, 1)[0], parallel.batch_sharded(self.mesh))
    loss, logits, targets = jax.jit(partial(_first_loss, self.ctx),
                                    out_shardings=parallel.replicated(self.mesh))(
        self.state["params"], self.data, self.stats, self.teacher_params, rows)
    return (float(parallel.fetch(loss)), int(logits.shape[-1]),
            None if targets is None else parallel.fetch(targets))


def prepare_training(*, model: nnx.Module, images: np.ndarray, labels: np.ndarray,
                     objective: Objective, teaching: Teaching | None, settings: dict[str, Any],
                     augment_settings: dict[str, Any] | None, seed: int,
                     mesh=None) -> TrainingSetup:
  """Splits `model`, builds its optimizer and puts the training data on the devices.

  The data set, parameters and optimizer state are replicated on every device
  of `mesh` (default: all of them); each step's batch is split across them.

  Args: as for `fit`, plus `mesh` (see `parallel.make_mesh`).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_divides(settings["batch_size"], mesh, "batch_size")
  if objective.uses_targets and teaching is None:
    raise UserError(f"the '{objective.name}' loss needs a teacher (targets, online or views)")
  teaching = teaching if objective.uses_targets else None
  total_steps = settings["steps"]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  mean, std = pixel_stats(images)
  stats = parallel.put_replicated(
      (np.asarray(mean, np.float32), np.asarray(std, np.float32)), mesh)
  optimizer = make_optimizer(settings, total_steps)
  state = parallel.put_replicated(
      {"params": params, "opt_state": optimizer.init(params), "step": jnp.asarray(0, jnp.int32)},
      mesh)
  # A streamed data set (images that are not an array in memory) stays on the
  # host; its rows travel with each dispatch.
  streamed = None if isinstance(images, np.ndarray) else {"images": images, "labels": labels}
  data = {"images": images, "labels": labels.astype(np.int32)} if streamed is None else {}
  teacher_params = None
  extra: dict[str, Any] = {}
  if teaching is not None:
    extra = {"teaching": teaching.mode, "temperature": teaching.temperature}
    if teaching.mode in ("targets", "views"):
      expected_ndim = 2 if teaching.mode == "targets" else 3
      logits = teaching.teacher_logits
      if logits is None or logits.ndim != expected_ndim or len(logits) != len(images):
        raise UserError(f"teaching={teaching.mode} needs teacher logits of {expected_ndim} "
                        f"dimensions, one row per training image ({len(images)})")
    if streamed is not None and teaching.mode == "views":
      raise UserError("teaching=views needs the data set in memory; stream with targets or online")
    if streamed is not None and teaching.mode == "targets":
      streamed["teacher_logits"] = teaching.teacher_logits
    elif teaching.mode == "targets":
      data["targets"] = np.asarray(
          losses.softmax(teaching.teacher_logits, temperature=teaching.temperature))
    elif teaching.mode == "views":
      data["view_logits"] = teaching.teacher_logits.astype(np.float32)
      extra.update(num_views=int(teaching.teacher_logits.shape[1]), view_seed=teaching.view_seed,
                   view_augment=tuple(sorted(teaching.view_augment.items())))
    elif teaching.mode == "online":
      if teaching.teacher is None:
        raise UserError("teaching=online needs the teacher model")
      teacher_graphdef, teacher_rest, teacher_params = teaching.teacher
      teacher_params = parallel.put_replicated(teacher_params, mesh)
      extra.update(mixup=teaching.mixup, teacher_graphdef=teacher_graphdef,
                   teacher_rest=teacher_rest)
    else:
      raise UserError(f"unknown teaching '{teaching.mode}'; valid: targets, online, views")
  data = parallel.put_replicated(data, mesh)
  ctx = StepContext(
      graphdef=graphdef, rest=rest, objective=objective, optimizer=optimizer,
      augment_settings=tuple(sorted(augment_settings.items())) if augment_settings else None,
      seed=seed, unroll=should_unroll(model), **extra)
  every_device = parallel.replicated(mesh)
  return TrainingSetup(
      ctx=ctx, state=state, data=data, stats=stats, teacher_params=teacher_params,
      order=DataOrder(len(images), settings["batch_size"], seed),
      schedule=make_schedule(settings, total_steps),
      predict=make_predict(graphdef, rest, stats, mesh),
      chunk_fn=jax.jit(partial(_train_chunk, ctx), donate_argnums=0,
                       out_shardings=(every_device, every_device)),
      pixel_mean=mean, pixel_std=std, mesh=mesh, streamed=streamed)


def fit(
    *,
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    objective: Objective,
    settings: dict[str, Any],
    augment_settings: dict[str, Any] | None,
    workdir: Path,
    seed: int,
    checkpoint_meta: dict[str, Any],
    teaching: Teaching | None = None,
    strict_init_check: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> TrainResult:
  """Trains `model` and returns its final parameters; resumes from a checkpoint in `workdir`.

  Args:
    model: an NNX classifier, freshly initialised.
    images, labels: the training split, uint8 [N, H, W, C] and int [N].
    val_images, val_labels: the validation split for periodic evaluation.
    objective: what to minimise (see `make_objective`).
    settings: the role's recipe section (steps, batch_size, optimizer, cadences).
    augment_settings: the recipe's `augment` table, or None for no augmentation.
    workdir: the run directory; checkpoints and `metrics.jsonl` go here.
    seed: seeds the data order and the augmentation.
    checkpoint_meta: JSON stored with each checkpoint; a resumed run must match
      its `recipe_hash`.
    teaching: where the soft targets come from (needed by the 'soft' objective).
    strict_init_check: raise instead of warning when the step-0 loss is off.
    quiet: hide the progress bar.
    echo, warn: where to print normal and loud messages.
  """
  from tqdm.auto import tqdm  # noqa: PLC0415

  workdir = Path(workdir)
  total_steps = settings["steps"]
  batch_size = settings["batch_size"]
  setup = prepare_training(model=model, images=images, labels=labels, objective=objective,
                           teaching=teaching, settings=settings,
                           augment_settings=augment_settings, seed=seed)
  state, data, stats, order = setup.state, setup.data, setup.stats, setup.order
  teacher_params, predict, schedule = setup.teacher_params, setup.predict, setup.schedule

  # Init check: the untrained model's loss on the exact batch step 0 trains on.
  init_loss, num_classes, first_targets = setup.first_loss()
  expected = objective.expected_init_loss(num_classes, first_targets)
  check = losses.init_loss_check(init_loss, num_classes, expected=expected,
                                 tolerance=settings["init_check_tolerance"])
  if check.ok:
    echo(check.message)
  elif strict_init_check:
    raise UserError(check.message + " (--strict-init-check)")
  else:
    warn(check.message)

  checkpointer = Checkpointer(workdir)
  start_step = 0
  resumed_from = None
  earlier_seconds = 0.0
  latest = checkpointer.latest_step()
  metrics_path = workdir / "metrics.jsonl"
  if latest is not None:
    saved_meta = checkpointer.restore_meta(latest)
    if saved_meta.get("recipe_hash") != checkpoint_meta.get("recipe_hash"):
      raise UserError(
          f"{workdir} holds an unfinished run with a different recipe; "
          "re-run with --restart to start over, or use another --workdir")
    state, _ = checkpointer.restore(latest, state)
    start_step = resumed_from = int(state["step"])
    # Earlier stretches' training time, so a resumed run reports its whole cost.
    earlier_seconds = float(saved_meta.get("train_seconds", 0.0))
    echo(f"resuming from step {start_step} ({checkpointer.directory})")
    log_records = _read_metrics(metrics_path, upto_step=start_step)
  else:
    log_records = []
    metrics_path.unlink(missing_ok=True)

  log_every, eval_every = settings["log_every"], settings["eval_every"]
  checkpoint_every = settings["checkpoint_every"]
  plan = _dispatch_plan(start_step, total_steps, settings["steps_per_dispatch"],
                        (log_every, eval_every, checkpoint_every))
  compiled: dict[int, Any] = {}
  compile_seconds = 0.0
  window: list[dict[str, jax.Array]] = []
  last_train_loss = init_loss
  step = start_step
  progress = tqdm(total=total_steps, initial=start_step, disable=quiet or not parallel.is_primary(),
                  unit="step",
                  desc=f"train {checkpoint_meta.get('role', '')}".strip(), dynamic_ncols=True,
                  leave=False)
  prefetched = None
  if setup.streamed is not None:
    from distill.stream import prefetch_batches  # noqa: PLC0415 (Grain, only when streaming)

    # Threads read the next dispatches' rows from disk while this one trains.
    prefetched = prefetch_batches(
        _PositionReader(setup.streamed["images"]),
        lambda d: setup.local_indices(*plan[d]).reshape(-1), 0, len(plan), buffer_size=4)
  loop_start = time.perf_counter()

  def stretch_seconds() -> float:
    # This stretch's training time; compilation is reported apart.
    return time.perf_counter() - loop_start - compile_seconds

  # However the loop ends (done, diverged, stopped, failed): bar, checkpoints
  # (waiting for an async save) and reader threads are closed.
  try:
    with _StopFlag() as stop:
      for first, count in plan:
        if prefetched is not None:
          batch = next(prefetched)
          positions = batch["index"].reshape(count, -1)
          rows = setup.put_rows(setup.read_rows(positions, batch["images"]))
        else:
          rows = setup.put_indices(order.indices(first, count))
        if count not in compiled:
          t0 = time.perf_counter()
          compiled[count] = setup.chunk_fn.lower(
              state, data, stats, teacher_params, rows).compile()
          compile_seconds += time.perf_counter() - t0
        state, chunk_metrics = compiled[count](state, data, stats, teacher_params, rows)
        window.append(chunk_metrics)
        step += count
        progress.update(count)

        # Read once: a signal handled while this step logs or evaluates
        # must not stop the run before this step's checkpoint is saved.
        stopping = stop.signal_name is not None
        at_log = step % log_every == 0 or step == total_steps
        at_checkpoint = step % checkpoint_every == 0 or step == total_steps or stopping
        if at_log or at_checkpoint:
          # Checked before every save too, so a checkpoint never holds a diverged state.
          record = _summarise(window, step)
          if at_log:
            window = []
          if not math.isfinite(record["loss"]):
            good = checkpointer.latest_step()
            kept = (f"the last good checkpoint (step {good}) is kept in {checkpointer.directory}"
                    if good is not None else "no checkpoint had been saved yet")
            raise UserError(f"training diverged: the loss became {record['loss']} by step {step}; "
                            f"{kept}. Try a lower learning rate.")
        if at_log:
          last_train_loss = record["loss"]
          record["learning_rate"] = float(schedule(step))
          if step % eval_every == 0 or step == total_steps:
            val_logits = predict_in_batches(predict, state["params"], val_images,
                                            settings["eval_batch_size"])
            record["val_loss"] = float(losses.hard_cross_entropy(val_logits, val_labels))
            record["val_accuracy"] = float(losses.accuracy(val_logits, val_labels))
          record["elapsed_seconds"] = round(time.perf_counter() - loop_start, 3)
          log_records.append(record)
          write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in log_records))
          progress.set_postfix({k: f"{record[k]:.4f}" for k in ("loss", "accuracy", "val_accuracy")
                                if k in record}, refresh=False)
        if at_checkpoint:
          checkpointer.save(step, state, {**checkpoint_meta, "step": step, "train_seconds":
                                          round(earlier_seconds + stretch_seconds(), 3)})
        if stopping and step < total_steps:
          raise UserError(
              f"stopped by {stop.signal_name} at step {step}; checkpoint saved. "
              "Run the same command again to resume.", exit_code=130)
  finally:
    progress.close()
    checkpointer.close()
    if prefetched is not None:
      prefetched.close()
  jax.block_until_ready(state)
  seconds = stretch_seconds()
  steps_run = total_steps - start_step
  return TrainResult(
      graphdef=setup.ctx.graphdef, rest=setup.ctx.rest, params=state["params"],
      stats=(setup.pixel_mean, setup.pixel_std), predict=predict,
      init_loss=init_loss, init_loss_expected=expected, final_train_loss=last_train_loss,
      steps=total_steps, train_seconds=earlier_seconds + seconds,
      compile_seconds=compile_seconds,
      images_per_second=steps_run * batch_size / max(seconds, 1e-9),
      resumed_from=resumed_from)


def _dispatch_plan(start: int, total: int, per_dispatch: int,
                   cadences: tuple[int, ...]) -> list[tuple[int, int]]:
  """(first step, step count) of every dispatch from `start` to `total`.

  A dispatch never crosses a log, eval or checkpoint boundary, so those
  happen at exact steps whatever steps_per_dispatch is.
  """
  plan = []
  step = start
  while step < total:
    next_event = min(total, *((step // every + 1) * every for every in cadences))
    count = min(per_dispatch, next_event - step)
    plan.append((step, count))
    step += count
  return plan


class _PositionReader:
  """Reads rows of a streamed split by position, for the prefetching threads."""

  def __init__(self, images):
    self._images = images

  def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Labels are in memory already; only the images come from disk.
    return self._images[positions], np.zeros(len(positions), np.int32)


def _summarise(window: list[dict[str, jax.Array]], step: int) -> dict[str, Any]:
  """Means of the per-step metrics since the last log line (one host sync)."""
  fetched = jax.tree.map(parallel.fetch, window)
  record: dict[str, Any] = {"step": step}
  for key in fetched[0]:
    values = np.concatenate([np.atleast_1d(chunk[key]) for chunk in fetched])
    record[key] = float(np.mean(values))
  return record


def _read_metrics(path: Path, upto_step: int) -> list[dict[str, Any]]:
  """The logged records up to `upto_step`: a resumed run rewrites what came after."""
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # Written atomically, so only a hand-edited file gets here.
    if record.get("step", 0) <= upto_step:
      records.append(record)
  return records

"""The jitted training step, its optimizer, and the setup that makes a model ready for it.

The hot path is one jitted function that runs `steps_per_dispatch` optimizer
steps with `lax.scan`. The feeder's rows come in (indices into the split on
the device, or the rows themselves); normalisation, augmentation and the
teaching strategy's targets happen inside the step. The training state is
donated, so XLA updates it in place. Nothing in here touches files or the
host's clock: that is the loop's business (`distill.loop`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distill import backend, parallel
from distill.augment import augment
from distill.config import TrainSettings
from distill.errors import UserError
from distill.feeders import DataOrder, make_feeder, pixel_stats
from distill.inference import TrainedModel, make_predict, normalize
from distill.metrics import accuracy
from distill.teaching import HardLabels, Objective, logits_of

Batch = dict[str, jax.Array]


def make_schedule(settings: TrainSettings, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then cosine decay to 1% of it at `total_steps`."""
  warmup = min(settings.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=settings.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=settings.learning_rate * 0.01)


def make_optimizer(settings: TrainSettings, total_steps: int) -> optax.GradientTransformation:
  """AdamW on `make_schedule`, with global-norm clipping.

  Weight decay applies to matrices and kernels only: decaying biases, norms and
  position embeddings towards zero only hurts.
  """
  schedule = make_schedule(settings, total_steps)
  parts = []
  if settings.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(settings.grad_clip))
  parts.append(optax.adamw(schedule, weight_decay=settings.weight_decay,
                           mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)))
  return optax.chain(*parts)


def initial_state(params, optimizer: optax.GradientTransformation, mesh,
                  aux: Any = None) -> dict[str, Any]:
  """{'params', 'opt_state', 'step': 0}, replicated on every device of `mesh`.

  `aux` (an objective's own trainable parameters, e.g. a hint's projection)
  is trained beside the model's: the state then holds 'aux' too and the
  optimizer updates the pair (params, aux).
  """
  if aux is None:
    state = {"params": params, "opt_state": optimizer.init(params)}
  else:
    state = {"params": params, "aux": aux, "opt_state": optimizer.init((params, aux))}
  return parallel.put_replicated({**state, "step": jnp.asarray(0, jnp.int32)}, mesh)


def should_unroll(model: nnx.Module) -> bool:
  """Whether to unroll the multi-step scan for `model` on this backend.

  XLA:CPU runs convolutions inside a while-loop body about 13x slower than the
  same steps in straight-line code (measured here: a 17k-parameter CNN step
  took 967 ms in a scan, 61 ms unrolled). For matmul-only models the scan is
  faster (ViT: 5,240 vs 4,700 images/s) and compiles 6x quicker, so only
  convolutional models on CPU are unrolled. The choice per backend lives in
  `distill.backend` (`unroll_conv_scan`).
  """
  has_conv = any(isinstance(module, nnx.Conv) for _, module in nnx.iter_modules(model))
  return has_conv and backend.choices().unroll_conv_scan


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static the step closes over: the model's structure and the chosen objects."""

  graphdef: Any
  rest: Any
  objective: Objective
  optimizer: optax.GradientTransformation
  teaching: HardLabels
  gather: Callable[[Batch, Any], Batch]  # the feeder's: (device data, dispatch rows) -> columns
  augment_settings: tuple[tuple[str, Any], ...] | None
  unroll: bool = False

  def augment(self, images: jax.Array, key: jax.Array) -> jax.Array:
    """The recipe's augmentation, or the images unchanged when the run does not augment."""
    if self.augment_settings is None:
      return images
    return augment(images, key, dict(self.augment_settings))


def _batch(spec: StepSpec, data: Batch, stats, run_key, teacher_state, step, rows):
  """The images and the batch of one step, built on the device from (the run's key, step).

  `run_key` is the key data of `jax.random.key(seed)`: an argument rather than
  a constant of the program, so that runs differing only in their seed share
  one compiled step.

  Returns:
    (normalised, augmented images [B, H, W, C]; {'labels', 'step', and the
     teacher's entries when taught: see `HardLabels.targets`}).
  """
  columns = spec.gather(data, rows)
  images = normalize(columns["images"], *stats)
  key = jax.random.fold_in(jax.random.wrap_key_data(run_key), step)
  images, teacher = spec.teaching.targets(images, columns, key, teacher_state, spec.augment)
  return images, {"labels": columns["labels"], "step": step, **teacher}


def _outputs(spec: StepSpec, params, images: jax.Array):
  return spec.objective.forward(nnx.merge(spec.graphdef, params, spec.rest), images)


def _teacher_choice(batch: Batch) -> jax.Array | None:
  """The teacher's predicted class per example, when the batch carries the teacher."""
  for key in ("targets", "teacher_logits"):
    if key in batch:
      return jnp.argmax(batch[key], -1)
  return None


def _labelled_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 accuracy over the batch's labelled rows: an unlabelled image's label is -1."""
  labelled = (labels >= 0).astype(jnp.float32)
  correct = accuracy(logits, labels, reduction="none")
  return jnp.sum(correct * labelled) / jnp.maximum(jnp.sum(labelled), 1.0)


def train_step(spec: StepSpec, data: Batch, stats, run_key, teacher_state, state, rows):
  """One optimizer step on one batch: (new state, metrics)."""
  images, batch = _batch(spec, data, stats, run_key, teacher_state, state["step"], rows)
  has_aux = "aux" in state

  def loss_fn(trainable):
    params, aux = trainable if has_aux else (trainable, None)
    outputs = _outputs(spec, params, images)
    return spec.objective.loss(outputs, batch, aux), logits_of(outputs)

  trainable = (state["params"], state["aux"]) if has_aux else state["params"]
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = spec.optimizer.update(grads, state["opt_state"], trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics = {
      "loss": loss,
      "accuracy": _labelled_accuracy(logits, batch["labels"]),
      "grad_norm": optax.tree.norm(grads),
  }
  teacher_choice = _teacher_choice(batch)
  if teacher_choice is not None:
    metrics["teacher_agreement"] = jnp.mean(jnp.argmax(logits, -1) == teacher_choice)
  new_state = {"opt_state": opt_state, "step": state["step"] + 1}
  if has_aux:
    new_state["params"], new_state["aux"] = trainable
  else:
    new_state["params"] = trainable
  return new_state, metrics


def train_chunk(spec: StepSpec, state, data: Batch, stats, run_key, teacher_state, rows_K):
  """`K` optimizer steps in one dispatch; returns the state and per-step metrics [K].

  `spec.unroll` (see `should_unroll`) trades compile time for speed where a
  while-loop body is slow.
  """
  step_fn = partial(train_step, spec, data, stats, run_key, teacher_state)
  if spec.unroll and jax.tree.leaves(rows_K)[0].shape[0] == 1:
    # `lax.scan(unroll=True)` over one step still emits a while loop (an unroll factor of 1
    # is a rolled loop), where a convolution ran ~50x slower on XLA:CPU: one straight call.
    state, metrics = step_fn(state, jax.tree.map(lambda rows: rows[0], rows_K))
    return state, jax.tree.map(lambda value: value[None], metrics)
  return jax.lax.scan(step_fn, state, rows_K, unroll=spec.unroll)


def first_loss(spec: StepSpec, state, data: Batch, stats, run_key, teacher_state, rows):
  """The loss of the untrained model on the first step's exact batch, its logits and the batch."""
  images, batch = _batch(spec, data, stats, run_key, teacher_state, 0, rows)
  outputs = _outputs(spec, state["params"], images)
  loss = spec.objective.loss(outputs, batch, state.get("aux"))
  return loss, logits_of(outputs).astype(jnp.float32), batch


@dataclasses.dataclass
class TrainingSetup:
  """A model, its optimizer, its feeder and its teacher made ready for the jitted loop.

  `loop.fit` trains from it; `distill bench` times its `chunk_fn` bare.
  """

  spec: StepSpec
  state: dict[str, Any]
  feeder: Any  # feeders.DeviceFeeder or HostFeeder
  stats: tuple[jax.Array, jax.Array]
  run_key: jax.Array  # key data of jax.random.key(seed), on every device
  teacher_state: Any
  schedule: optax.Schedule
  chunk_fn: Callable[..., Any]  # jitted K-step dispatch; donates the state
  predict: Callable[[Any, Any], jax.Array]  # jitted forward pass (see `inference.make_predict`)
  pixel_mean: list[float]
  pixel_std: list[float]
  mesh: Any

  def step_inputs(self) -> tuple[Any, ...]:
    """What every step reads beside the state and its rows: (data, stats, run key, teacher)."""
    return self.feeder.data, self.stats, self.run_key, self.teacher_state

  def run_chunk(self, compiled, state, rows):
    """One dispatch of a compiled `chunk_fn` on the feeder's rows."""
    return compiled(state, *self.step_inputs(), rows)

  def compile(self, state, rows):
    """`chunk_fn` compiled for the shapes of `rows` (one per dispatch length)."""
    return self.chunk_fn.lower(state, *self.step_inputs(),
                               self.feeder.rows_like(rows)).compile()

  def first_loss(self) -> tuple[float, int, dict[str, np.ndarray]]:
    """(step-0 loss, number of classes, that batch on the host) on the first real batch."""
    loss, logits, batch = backend.jit(partial(first_loss, self.spec),
                                      out_shardings=parallel.replicated(self.mesh))(
        self.state, *self.step_inputs(), self.feeder.first_batch())
    return (float(parallel.fetch(loss)), int(logits.shape[-1]),
            {key: parallel.fetch(value) for key, value in batch.items()})

  def trained(self, params) -> TrainedModel:
    """The model with `params`, ready to predict."""
    return TrainedModel(self.spec.graphdef, self.spec.rest, params,
                        (self.pixel_mean, self.pixel_std), self.predict)


def prepare_training(*, model: nnx.Module, images, labels: np.ndarray, objective: Objective,
                     teaching: HardLabels | None, settings: TrainSettings,
                     augment_settings: dict[str, Any] | None, seed: int,
                     mesh=None, stats_images=None) -> TrainingSetup:
  """Splits `model`, builds its optimizer and feeder and places the teacher.

  Parameters and optimizer state are replicated on every device of `mesh`
  (default: all of them); each step's batch is split across them.

  Args:
    model: an NNX classifier, freshly initialised.
    images, labels: the training split (an array, or rows read from disk).
    objective: what to minimise (see `teaching.make_objective`).
    teaching: where the targets come from; None (or `HardLabels()`) for labels only.
    settings: the role's training settings.
    augment_settings: the recipe's `augment` table, or None for no augmentation.
    seed: seeds the data order and the augmentation.
    mesh: see `parallel.make_mesh`.
    stats_images: the images the pixel statistics come from (default `images`):
      every training image, when the run trains on the labelled ones only, so
      that the model normalises its inputs as it will after a restore.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_divides(settings.batch_size, mesh, "batch_size")
  if objective.uses_targets and (teaching is None or type(teaching) is HardLabels):
    raise UserError(f"the '{objective.name}' loss needs a teacher (targets, online or views)")
  # A run that does not learn from targets ignores any teacher it is given.
  teaching = teaching if objective.uses_targets else HardLabels()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  mean, std = pixel_stats(images if stats_images is None else stats_images)
  stats = parallel.put_replicated(
      (np.asarray(mean, np.float32), np.asarray(std, np.float32)), mesh)
  optimizer = make_optimizer(settings, settings.steps)
  order = DataOrder(len(images), settings.batch_size, seed)
  feeder = make_feeder(images, labels, partial(teaching.columns, len(images)), order, mesh)
  teacher_state = teaching.device_state()
  if teacher_state is not None:
    teacher_state = parallel.put_replicated(teacher_state, mesh)
  spec = StepSpec(
      graphdef=graphdef, rest=rest, objective=objective, optimizer=optimizer, teaching=teaching,
      gather=feeder.gather,
      augment_settings=tuple(sorted(augment_settings.items())) if augment_settings else None,
      unroll=should_unroll(model))
  every_device = parallel.replicated(mesh)
  aux = None if objective.init_aux is None else objective.init_aux()
  return TrainingSetup(
      spec=spec, state=initial_state(params, optimizer, mesh, aux), feeder=feeder, stats=stats,
      run_key=parallel.put_replicated(jax.random.key_data(jax.random.key(seed)), mesh),
      teacher_state=teacher_state, schedule=make_schedule(settings, settings.steps),
      chunk_fn=backend.jit(partial(train_chunk, spec), donate_argnums=0,
                           out_shardings=(every_device, every_device)),
      predict=make_predict(graphdef, rest, stats, mesh), pixel_mean=mean, pixel_std=std, mesh=mesh)

"""What a run learns from: the objective (the loss) and the teaching strategy (the targets).

An `Objective` is the loss the step minimises and the loss it must start at.
A teaching strategy says where a student's soft targets come from; it is
chosen once, before training, and the jitted step asks it for each batch's
targets without knowing which strategy it holds:

  HardLabels       no teacher: labels only (the teacher itself, the baseline)
  ExportedTargets  the teacher's probabilities of the un-augmented images
  OnlineTeacher    the frozen teacher labels the student's exact augmented batch
  ReplayedViews    exported logits of K augmented views per image, replayed exactly

A strategy hands the data feeder its per-example columns (arrays row-aligned
with the training images, gathered with each batch), hands the step its
device state (an online teacher's parameters), and builds the targets inside
the step from both. Its static settings are closed over by the jitted step;
its arrays never are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from distill import losses
from distill.augment import augment_views, mixup
from distill.errors import UserError

Batch = dict[str, jax.Array]
# (images [B, H, W, C], key) -> augmented images: the recipe's augmentation, or identity.
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


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


# --------------------------------------------------------------------------
# Teaching strategies.


class HardLabels:
  """No teacher: the batch carries labels only. The teacher's own training, and the baseline."""

  name = "hard"
  # Whether the student sees augmented images whatever the recipe's student.augment says.
  always_augments = False

  def columns(self, num_examples: int, on_device: bool) -> dict[str, Any]:
    """Per-example arrays (row-aligned with the training images) the feeder gathers per batch.

    `on_device`: whether the feeder keeps the columns in device memory (else
    it reads the rows of each batch on the host).
    """
    del num_examples, on_device
    return {}

  def device_state(self) -> Any:
    """What the step needs on the device beside the columns (an online teacher's parameters)."""
    return None

  def targets(self, images: jax.Array, columns: Batch, key: jax.Array, device_state: Any,
              augment: AugmentFn) -> tuple[jax.Array, jax.Array | None]:
    """Inside the step: (the images the student trains on, their soft targets or None).

    Args:
      images: the batch, normalised [B, H, W, C], not yet augmented.
      columns: the batch's rows of every column ('index', 'labels', and this
        strategy's own).
      key: the step's random key, `fold_in(key(seed), step)`.
      device_state: `device_state()`, placed on the devices.
      augment: the recipe's augmentation (identity when the run does not augment).
    """
    del columns, device_state
    return augment(images, key), None


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedTargets(HardLabels):
  """The teacher's exported probabilities of the un-augmented training images.

  `teacher_logits` is [N, C], row-aligned with the training images: an array,
  or for a streamed data set anything indexable by position (read per batch).
  """

  teacher_logits: Any
  temperature: float = 1.0
  name = "targets"

  def columns(self, num_examples: int, on_device: bool) -> dict[str, Any]:
    _check_rows(self.teacher_logits, num_examples, 2, self.name)
    if on_device:
      # Softened once for the whole split, not again at every step.
      return {"targets": np.asarray(losses.softmax(self.teacher_logits,
                                                   temperature=self.temperature))}
    return {"teacher_logits": self.teacher_logits}

  def targets(self, images, columns, key, device_state, augment):
    del device_state
    images = augment(images, key)
    if "targets" in columns:
      return images, columns["targets"]
    return images, losses.softmax(columns["teacher_logits"], temperature=self.temperature)


@dataclasses.dataclass(frozen=True, eq=False)
class OnlineTeacher(HardLabels):
  """The frozen teacher runs inside the step on the student's exact augmented batch.

  `teacher` is its (graphdef, rest, params); `mixup` > 0 mixes image pairs
  with a Beta(mixup, mixup) weight before the teacher labels them.
  """

  teacher: tuple[Any, Any, Any]
  temperature: float = 1.0
  mixup: float = 0.0
  name = "online"
  always_augments = True

  def device_state(self) -> Any:
    return self.teacher[2]

  def targets(self, images, columns, key, device_state, augment):
    del columns
    images = augment(images, key)
    if self.mixup > 0:
      images = mixup(images, jax.random.fold_in(key, 2), self.mixup)
    graphdef, rest, _ = self.teacher
    teacher_logits = jax.lax.stop_gradient(nnx.merge(graphdef, device_state, rest)(images))
    return images, losses.softmax(teacher_logits, temperature=self.temperature)


@dataclasses.dataclass(frozen=True, eq=False)
class ReplayedViews(HardLabels):
  """Exported logits of K augmented views per image; each step replays one view per example.

  `view_logits` is [N, K, C]; view v of example i is `augment_views` of
  (view_seed, i, v) under `view_augment`, the settings it was exported with.
  """

  view_logits: np.ndarray
  view_seed: int
  view_augment: Mapping[str, Any]
  temperature: float = 1.0
  name = "views"
  always_augments = True

  def columns(self, num_examples: int, on_device: bool) -> dict[str, Any]:
    if not on_device:
      raise UserError("teaching=views needs the data set in memory; stream with targets or online")
    _check_rows(self.view_logits, num_examples, 3, self.name)
    return {"view_logits": np.asarray(self.view_logits, np.float32)}

  def targets(self, images, columns, key, device_state, augment):
    del device_state, augment  # The views carry their own augmentation.
    indices_B = columns["index"]
    views_B = jax.random.randint(jax.random.fold_in(key, 1), indices_B.shape, 0,
                                 self.view_logits.shape[1])
    images = augment_views(images, indices_B, views_B, self.view_seed, dict(self.view_augment))
    chosen = jax.numpy.take_along_axis(columns["view_logits"], views_B[:, None, None],
                                       axis=1)[:, 0]
    return images, losses.softmax(chosen, temperature=self.temperature)


def _check_rows(logits: Any, num_examples: int, ndim: int, mode: str) -> None:
  if logits is None or logits.ndim != ndim or len(logits) != num_examples:
    raise UserError(f"teaching={mode} needs teacher logits of {ndim} dimensions, one row per "
                    f"training image ({num_examples})")


"""What a run learns from: the objective (the loss) and the teaching strategy (the targets).

An `Objective` is the loss the step minimises and the loss it must start at;
`make_objective(method, ...)` builds one by name:

  hard   one-hot cross-entropy (the teacher itself, and every baseline)
  kd     the distillation loss of Hinton et al. (soft CE or KL at T, weighted by alpha)
  dkd    decoupled KD (Zhao et al. 2022): target and non-target terms weighted apart
  dist   DIST (Huang et al. 2022): Pearson correlations within and across examples
  token  DeiT's distillation token (Touvron et al. 2021): a second head learns from the teacher
  hint   FitNets' hints (Romero et al. 2015): a learned projection of a student layer
         matches a teacher layer, added to the KD loss

A teaching strategy says where a student's soft targets come from; it is
chosen once, before training, and the jitted step asks it for each batch's
targets without knowing which strategy it holds:

  HardLabels       no teacher: labels only (the teacher itself, the baseline)
  ExportedTargets  the teacher's outputs on the un-augmented images, exported once
  OnlineTeacher    the frozen teacher labels the student's exact augmented batch
  ReplayedViews    exported logits of K augmented views per image, replayed exactly

A strategy hands the data feeder its per-example columns (arrays row-aligned
with the training images, gathered with each batch), hands the step its
device state (an online teacher's parameters), and builds the targets inside
the step from both, in the form the objective asks for (probabilities at T,
or raw logits). Its static settings are closed over by the jitted step; its
arrays never are.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill import losses
from distill.augment import augment_views, mixup
from distill.errors import UserError

Batch = dict[str, jax.Array]
# (images [B, H, W, C], key) -> augmented images: the recipe's augmentation, or identity.
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
# What a model's forward pass hands the loss: logits [B, C], or a dict holding 'logits'.
Outputs = jax.Array | dict[str, jax.Array]

# The forms a strategy can put the teacher in: batch['targets'] (probabilities at T) or
# batch['teacher_logits'].
TEACHER_FORMS = ("probs", "logits")


def logits_of(outputs: Outputs) -> jax.Array:
  """The logits a model's outputs predict with (its 'logits' entry when it returns several)."""
  return outputs["logits"] if isinstance(outputs, dict) else outputs


def _plain_forward(model: nnx.Module, images: jax.Array) -> Outputs:
  return model(images)


# --------------------------------------------------------------------------
# Objectives: name -> what the loop minimises.


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training loss over a model's outputs and the batch, and the loss it must start at.

  Attributes:
    name: registry name ('hard', 'kd', 'dkd', 'dist', 'token' or 'hint').
    loss: (outputs, batch, aux) -> scalar float32. `outputs` is what `forward`
      returned; `aux` the objective's own trainable parameters (a hint's
      projection), None for most.
    uses_targets: whether the batch must carry the teacher.
    expected_init_loss: (n_classes, the first batch on the host: 'labels' and
      the teacher's 'targets' / 'teacher_logits' / 'teacher_features') -> the
      loss of a uniform student. Checked at step 0 of every run.
    teacher_form: how the strategy must hand the teacher to the loss: 'probs'
      (batch['targets'], probabilities at the strategy's temperature) or
      'logits' (batch['teacher_logits']).
    teacher_layer: the teacher layer whose output the batch must carry as
      'teacher_features' (hints), else None.
    forward: (model, images) -> outputs. The model's plain call, unless the
      method needs more than its logits (a distillation token's two heads, a
      hint's inner features).
    init_aux: () -> the objective's own trainable parameters, trained and
      checkpointed with the student (a hint's projection); None when it has
      none.
    reads_labels: whether the loss reads the label of every example it
      trains on (hard labels, a hard term, DKD's target class); one that does
      not can learn from images that have no label.
    reads: the shared student settings its loss reads, of 'temperature',
      'alpha' and 'soft_loss' (a method's own table aside): a summary records
      the others as None, and a run refuses them given (`reads_setting`).
  """

  name: str
  loss: Callable[[Outputs, Batch, Any], jax.Array]
  uses_targets: bool
  expected_init_loss: Callable[[int, Mapping[str, np.ndarray]], float]
  teacher_form: str = "probs"
  teacher_layer: int | None = None
  forward: Callable[[nnx.Module, jax.Array], Outputs] = _plain_forward
  init_aux: Callable[[], Any] | None = None
  reads_labels: bool = True
  reads: frozenset[str] = frozenset()


def _hard_objective(label_smoothing: float = 0.0, **_: Any) -> Objective:
  return Objective(
      name="hard",
      loss=lambda logits, batch, aux=None: losses.hard_cross_entropy(
          logits, batch["labels"], label_smoothing=label_smoothing),
      uses_targets=False,
      expected_init_loss=lambda n, _batch: losses.expected_init_loss(n, kind="hard"),
  )


def _kd_loss(logits, batch, *, temperature, alpha, soft_loss, label_smoothing):
  return losses.distillation_loss(
      logits, target_probs=batch["targets"], labels=batch["labels"], temperature=temperature,
      alpha=alpha, kind=soft_loss, label_smoothing=label_smoothing)


def _kd_expected(n, batch, *, temperature, alpha, soft_loss):
  return losses.expected_init_loss(n, kind=soft_loss, temperature=temperature, alpha=alpha,
                                   target_probs=batch.get("targets"))


# What plain KD's loss reads of the shared student settings; a hint reads them too.
_KD_READS = frozenset({"temperature", "alpha", "soft_loss"})


def _kd_objective(temperature: float = 1.0, alpha: float = 1.0, soft_loss: str = "soft_ce",
                  label_smoothing: float = 0.0, **_: Any) -> Objective:
  """`alpha * T^2 * soft(student/T, teacher at T) + (1 - alpha) * hard CE` (Hinton et al. 2015)."""
  return Objective(
      name="kd",
      loss=lambda logits, batch, aux=None: _kd_loss(
          logits, batch, temperature=temperature, alpha=alpha, soft_loss=soft_loss,
          label_smoothing=label_smoothing),
      uses_targets=True,
      expected_init_loss=lambda n, batch: _kd_expected(
          n, batch, temperature=temperature, alpha=alpha, soft_loss=soft_loss),
      reads_labels=alpha < 1.0, reads=_KD_READS)


def _dkd_objective(temperature: float = 4.0, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
                   dkd_warmup_steps: int = 0, label_smoothing: float = 0.0,
                   **_: Any) -> Objective:
  """Hard CE + ramp * DKD(alpha TCKD + beta NCKD) at T (Zhao et al. 2022, mdistiller's DKD).

  `ramp` = min(step / warmup, 1), mdistiller's warm-up of the DKD term; 1 without one.
  """
  def ramp(step):
    if dkd_warmup_steps <= 0:
      return 1.0
    # `step` is a traced int32 in the jitted step, a Python int in the step-0 check.
    return jnp.minimum(jnp.asarray(step, jnp.float32) / dkd_warmup_steps, 1.0)

  def loss(logits, batch, aux=None):
    return (losses.hard_cross_entropy(logits, batch["labels"], label_smoothing=label_smoothing)
            + ramp(batch["step"]) * losses.dkd_loss(
                logits, batch["teacher_logits"], batch["labels"], alpha=dkd_alpha,
                beta=dkd_beta, temperature=temperature))

  def expected(n, batch):
    weight = 1.0 if dkd_warmup_steps <= 0 else 0.0  # the ramp is 0 at step 0
    return math.log(n) + weight * losses.expected_init_dkd(
        batch["teacher_logits"], batch["labels"], alpha=dkd_alpha, beta=dkd_beta,
        temperature=temperature)

  return Objective(name="dkd", loss=loss, uses_targets=True, expected_init_loss=expected,
                   teacher_form="logits", reads=frozenset({"temperature"}))


def _dist_objective(temperature: float = 1.0, dist_beta: float = 1.0, dist_gamma: float = 1.0,
                    label_smoothing: float = 0.0, **_: Any) -> Objective:
  """Hard CE + DIST(beta inter-class + gamma intra-class) at T (Huang et al. 2022)."""
  def loss(logits, batch, aux=None):
    return (losses.hard_cross_entropy(logits, batch["labels"], label_smoothing=label_smoothing)
            + losses.dist_loss(logits, batch["teacher_logits"], beta=dist_beta,
                               gamma=dist_gamma, temperature=temperature))

  return Objective(
      name="dist", loss=loss, uses_targets=True, teacher_form="logits",
      expected_init_loss=lambda n, batch: math.log(n) + losses.expected_init_dist(
          beta=dist_beta, gamma=dist_gamma, temperature=temperature),
      reads=frozenset({"temperature"}))


def _token_forward(model: nnx.Module, images: jax.Array) -> Outputs:
  if not hasattr(model, "token_heads"):
    raise UserError("method=token needs a ViT student with a distillation token")
  class_logits, distill_logits = model.token_heads(images)
  return {"logits": losses.token_predictions(class_logits, distill_logits),
          "class_logits": class_logits, "distill_logits": distill_logits}


def _token_objective(temperature: float = 1.0, token_variant: str = "hard",
                     **_: Any) -> Objective:
  """DeiT: the class head learns the labels, the distillation head the teacher (hard or soft)."""
  def loss(outputs, batch, aux=None):
    return losses.token_loss(outputs["class_logits"], outputs["distill_logits"],
                             batch["labels"], batch["teacher_logits"], variant=token_variant,
                             temperature=temperature)

  return Objective(
      name="token", loss=loss, uses_targets=True, teacher_form="logits", forward=_token_forward,
      expected_init_loss=lambda n, batch: losses.expected_init_token(
          n, variant=token_variant, temperature=temperature),
      # A hard token learns the teacher's top class, at no temperature.
      reads=frozenset({"temperature"}) if token_variant == "soft" else frozenset())


HINT_MATCHES = ("tokens", "pooled")


def hint_match(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> str:
  """How a hint compares a student layer of `student_shape` with a teacher layer.

  'tokens' when both are [B, T, D] with the same T (ViT to ViT, token by
  token); otherwise 'pooled': each is averaged over every axis but the batch
  and the last ([B, D]), e.g. a CNN's feature map against a ViT's tokens.
  """
  same_tokens = (len(student_shape) == 3 and len(teacher_shape) == 3
                 and student_shape[1] == teacher_shape[1])
  return "tokens" if same_tokens else "pooled"


def _pooled(features):
  if features.ndim <= 2:
    return features
  return features.mean(axis=tuple(range(1, features.ndim - 1)))


def _hint_forward(student_layer: int):
  def forward(model: nnx.Module, images: jax.Array) -> Outputs:
    if not hasattr(model, "forward_features"):
      raise UserError("method=hint needs a student with inner layers (vit, cnn or mlp)")
    logits, features = model.forward_features(images)
    return {"logits": logits, "features": features[student_layer]}
  return forward


def _hint_objective(temperature: float = 1.0, alpha: float = 1.0, soft_loss: str = "soft_ce",
                    label_smoothing: float = 0.0, hint_weight: float = 1.0,
                    hint_kind: str = "mse", hint_student_layer: int = -1,
                    hint_teacher_layer: int = -1, hint_match: str = "pooled",
                    hint_widths: tuple[int, int] | None = None, **_: Any) -> Objective:
  """KD + weight * hint(projection(student layer), teacher layer) (Romero et al. 2015).

  The projection is linear, zero-initialised and trained with the student
  (its `aux` parameters, checkpointed with it): a zero projection makes the
  step-0 hint term a function of the teacher's features alone. `hint_match`
  (see `hint_match`) says whether tokens meet tokens or pooled features meet
  pooled features; `hint_widths` is (the student layer's width, the teacher
  layer's width), which size the projection.
  """
  if hint_match not in HINT_MATCHES:
    raise UserError(f"hint_match must be one of {', '.join(HINT_MATCHES)}, got '{hint_match}'")
  compare = (lambda x: x) if hint_match == "tokens" else _pooled

  def loss(outputs, batch, aux):
    projected = compare(outputs["features"]) @ aux["kernel"] + aux["bias"]
    return (_kd_loss(outputs["logits"], batch, temperature=temperature, alpha=alpha,
                     soft_loss=soft_loss, label_smoothing=label_smoothing)
            + hint_weight * losses.hint_loss(projected, compare(batch["teacher_features"]),
                                             kind=hint_kind))

  def expected(n, batch):
    teacher = compare(np.asarray(batch["teacher_features"], np.float32))
    return (_kd_expected(n, batch, temperature=temperature, alpha=alpha, soft_loss=soft_loss)
            + hint_weight * losses.expected_init_hint(teacher, kind=hint_kind))

  def init_aux():
    if hint_widths is None:
      raise UserError("method=hint needs the widths of the two layers it joins (hint_widths)")
    student_width, teacher_width = hint_widths
    # Zero, so that step 0 is checkable (see the docstring); the student's
    # features still give the kernel a gradient.
    return {"kernel": jnp.zeros((student_width, teacher_width), jnp.float32),
            "bias": jnp.zeros((teacher_width,), jnp.float32)}

  return Objective(
      name="hint", loss=loss, uses_targets=True, expected_init_loss=expected,
      teacher_layer=hint_teacher_layer, forward=_hint_forward(hint_student_layer),
      init_aux=init_aux, reads_labels=alpha < 1.0, reads=_KD_READS)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "hard": _hard_objective,
    "kd": _kd_objective,
    "dkd": _dkd_objective,
    "dist": _dist_objective,
    "token": _token_objective,
    "hint": _hint_objective,
}
# What a student on the teacher's soft labels learns by, before methods had names.
OBJECTIVES["soft"] = _kd_objective


def reads_setting(name: str, key: str, method_options: Mapping[str, Any] | None = None) -> bool:
  """Whether the registered objective `name`, with its own settings `method_options` (a
  token's variant), reads the shared student setting `key` ('temperature', 'alpha' or
  'soft_loss'): see `Objective.reads`."""
  if name not in OBJECTIVES:
    return False
  options = {f"{name}_{option}": value for option, value in (method_options or {}).items()}
  return key in OBJECTIVES[name](**options).reads


def make_objective(name: str, **settings: Any) -> Objective:
  """Builds the registered objective `name` ('soft' is 'kd').

  'hard': one-hot cross-entropy (label_smoothing). 'kd': the distillation
  loss (temperature, alpha, soft_loss = 'soft_ce' | 'kl', label_smoothing for
  the hard part when alpha < 1). 'dkd' (dkd_alpha, dkd_beta,
  dkd_warmup_steps), 'dist' (dist_beta, dist_gamma), 'token' (token_variant
  'hard' | 'soft') and 'hint' (the KD settings plus hint_weight, hint_kind
  'mse' | 'cosine', hint_student_layer, hint_teacher_layer) take the
  temperature too. Settings a method does not read are ignored.
  """
  if name not in OBJECTIVES:
    raise UserError(f"unknown method '{name}'; valid: {', '.join(OBJECTIVES)}")
  # Another method's setting is ignored (callers pass one set to every method), but a name
  # no method reads is a typo that would train at its default (tempreature=5: T=1).
  known = {parameter for factory in OBJECTIVES.values()
           for parameter in inspect.signature(factory).parameters if parameter != "_"}
  unknown = sorted(set(settings) - known)
  if unknown:
    close = difflib.get_close_matches(unknown[0], known, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"make_objective: no method reads {', '.join(map(repr, unknown))}; "
                    f"{guess}the settings are {', '.join(sorted(known))}")
  return OBJECTIVES[name](**settings)


# --------------------------------------------------------------------------
# Teaching strategies.


def _teacher_entries(logits: jax.Array, form: str, temperature: float) -> Batch:
  """The teacher's logits in the form the objective asked for (see `TEACHER_FORMS`)."""
  if form == "logits":
    return {"teacher_logits": logits.astype(jnp.float32)}
  return {"targets": losses.softmax(logits, temperature=temperature)}


class HardLabels:
  """No teacher: the batch carries labels only. The teacher's own training, and the baseline."""

  name = "hard"
  # Whether the student sees augmented images whatever the recipe's student.augment says.
  always_augments = False
  # Whether it can hand the step a teacher layer's features (hints need a teacher that runs).
  gives_features = False

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
              augment: AugmentFn) -> tuple[jax.Array, Batch]:
    """Inside the step: (the images the student trains on, the teacher's entries of the batch).

    The entries are {} without a teacher, else 'targets' (probabilities at
    the temperature) or 'teacher_logits', as `form` says, and
    'teacher_features' when a layer was asked for.

    Args:
      images: the batch, normalised [B, H, W, C], not yet augmented.
      columns: the batch's rows of every column ('index', 'labels', and this
        strategy's own).
      key: the step's random key, `fold_in(key(seed), step)`.
      device_state: `device_state()`, placed on the devices.
      augment: the recipe's augmentation (identity when the run does not augment).
    """
    del columns, device_state
    return augment(images, key), {}


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedTargets(HardLabels):
  """The teacher's exported logits of the un-augmented training images.

  `teacher_logits` is [N, C], row-aligned with the training images: an array,
  or for a streamed data set anything indexable by position (read per batch).
  `form` is what the objective reads (see `TEACHER_FORMS`).
  """

  teacher_logits: Any
  temperature: float = 1.0
  form: str = "probs"
  name = "targets"

  def columns(self, num_examples: int, on_device: bool) -> dict[str, Any]:
    """The teacher's logits, or on the device its probabilities at the temperature."""
    _check_rows(self.teacher_logits, num_examples, 2, self.name)
    if on_device and self.form == "probs":
      # Softened once for the whole split, not again at every step.
      return {"targets": np.asarray(losses.softmax(self.teacher_logits,
                                                   temperature=self.temperature))}
    if on_device:
      return {"teacher_logits": np.asarray(self.teacher_logits, np.float32)}
    return {"teacher_logits": self.teacher_logits}

  def targets(self, images, columns, key, device_state, augment):
    """The batch's exported targets, read from its columns (see `HardLabels.targets`)."""
    del device_state
    images = augment(images, key)
    if "targets" in columns:
      return images, {"targets": columns["targets"]}
    return images, _teacher_entries(columns["teacher_logits"], self.form, self.temperature)


@dataclasses.dataclass(frozen=True, eq=False)
class OnlineTeacher(HardLabels):
  """The frozen teacher runs inside the step on the student's exact augmented batch.

  `apply(params, images)` is the teacher's forward pass on the student's
  normalised images, returning logits, or (logits, [features per layer])
  when `feature_layer` is set; `params` its parameters (the step's device
  state). `mixup` > 0 mixes image pairs with a Beta(mixup, mixup) weight
  before the teacher labels them. `always_augments` False leaves the
  augmentation to the recipe's student.augment, as for exported targets:
  a hint run needs the teacher in the step for its inner layer, not for
  consistent teaching, and un-augmented it differs from KD on exported
  targets by the hint term alone.
  """

  apply: Callable[[Any, jax.Array], Any]
  params: Any
  temperature: float = 1.0
  mixup: float = 0.0
  form: str = "probs"
  feature_layer: int | None = None
  always_augments: bool = True
  name = "online"
  gives_features = True

  def device_state(self) -> Any:
    """The teacher's parameters, placed on the devices once for the whole run."""
    return self.params

  def targets(self, images, columns, key, device_state, augment):
    """The teacher's outputs on the student's augmented (and mixed) batch."""
    del columns
    images = augment(images, key)
    if self.mixup > 0:
      images = mixup(images, jax.random.fold_in(key, 2), self.mixup)
    outputs = jax.lax.stop_gradient(self.apply(device_state, images))
    if self.feature_layer is None:
      return images, _teacher_entries(outputs, self.form, self.temperature)
    logits, features = outputs
    entries = _teacher_entries(logits, self.form, self.temperature)
    entries["teacher_features"] = features[self.feature_layer].astype(jnp.float32)
    return images, entries


def nnx_apply(graphdef: Any, rest: Any, *, with_features: bool = False):
  """An NNX model's forward pass as `apply(params, images)` for `OnlineTeacher`."""
  if with_features:
    return lambda params, images: nnx.merge(graphdef, params, rest).forward_features(images)
  return lambda params, images: nnx.merge(graphdef, params, rest)(images)


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
  form: str = "probs"
  name = "views"
  always_augments = True

  def columns(self, num_examples: int, on_device: bool) -> dict[str, Any]:
    """Every view's logits, on the device (views cannot be streamed)."""
    if not on_device:
      raise UserError("teaching=views needs the data set in memory; stream with targets or online")
    _check_rows(self.view_logits, num_examples, 3, self.name)
    return {"view_logits": np.asarray(self.view_logits, np.float32)}

  def targets(self, images, columns, key, device_state, augment):
    """One stored view per example, drawn at random: its image, rebuilt, and its logits."""
    del device_state, augment  # The views carry their own augmentation.
    indices_B = columns["index"]
    views_B = jax.random.randint(jax.random.fold_in(key, 1), indices_B.shape, 0,
                                 self.view_logits.shape[1])
    images = augment_views(images, indices_B, views_B, self.view_seed, dict(self.view_augment))
    chosen = jnp.take_along_axis(columns["view_logits"], views_B[:, None, None], axis=1)[:, 0]
    return images, _teacher_entries(chosen, self.form, self.temperature)


def _check_rows(logits: Any, num_examples: int, ndim: int, mode: str) -> None:
  if logits is None or logits.ndim != ndim or len(logits) != num_examples:
    raise UserError(f"teaching={mode} needs teacher logits of {ndim} dimensions, one row per "
                    f"training image ({num_examples})")

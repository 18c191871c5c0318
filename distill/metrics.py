"""Evaluation metrics as pure jax.numpy functions: accuracy, agreement, NLL, calibration.

They follow `distill.losses`' conventions and share its input checks
(`distill._inputs`): logits with classes on the last axis and any leading
batch shape, computed in float32 whatever the input dtype, and a
``reduction`` of 'mean', 'sum' or 'none' where one applies. Concrete labels
outside [0, C) raise ValueError; traced ones (under jax.jit) are not checked.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np

from distill._inputs import (
    _as_labels,
    _as_logits,
    _check_label_range,
    _check_reduction,
    _check_same_shape,
    _reduce,
)
from distill.losses import _hard_ce_per_example, softmax


def accuracy(logits, labels, *, reduction="mean"):
  """Top-1 accuracy: whether argmax(logits) equals the label.

  Args:
    logits: array [..., C], any float dtype.
    labels: integer array [...] of class indices.
    reduction: 'mean' (fraction correct), 'sum' (number correct, handy for
      accumulating over batches) or 'none' (per-example 0/1).

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.
  """
  _check_reduction(reduction)
  x = _as_logits(logits)
  y = _as_labels(labels, x)
  correct = (jnp.argmax(x, axis=-1) == y).astype(jnp.float32)
  return _reduce(correct, reduction)


def top1_agreement(logits_a, logits_b, *, reduction="mean"):
  """How often two models (e.g. student and teacher) pick the same class.

  Args:
    logits_a: array [..., C], any float dtype.
    logits_b: array [..., C] of the same shape.
    reduction: 'mean' (fraction equal), 'sum' or 'none' (per-example 0/1).

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for mismatched shapes or an unknown reduction.
  """
  _check_reduction(reduction)
  a = _as_logits(logits_a, "logits_a")
  b = _as_logits(logits_b, "logits_b")
  _check_same_shape(a, b, "logits_a", "logits_b")
  same = (jnp.argmax(a, axis=-1) == jnp.argmax(b, axis=-1))
  return _reduce(same.astype(jnp.float32), reduction)


def negative_log_likelihood(logits, labels, *, reduction="mean"):
  """Negative log-likelihood of the labels: unsmoothed hard cross-entropy.

  Args:
    logits: array [..., C], any float dtype.
    labels: integer array [...] of class indices in [0, C).
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.
  """
  # Not hard_cross_entropy itself: its advice for float labels (soft_cross_entropy) is no
  # fix for a metric.
  _check_reduction(reduction)
  x = _as_logits(logits)
  y = _as_labels(labels, x)
  return _reduce(_hard_ce_per_example(x, y, 0.0), reduction)


def expected_calibration_error(logits, labels, n_bins=15):
  """Expected calibration error over equal-width confidence bins.

  The confidence of an example is its max softmax probability. Examples go
  into ``n_bins`` equal-width bins (lo, hi] over [0, 1], and
  ``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|``; empty bins
  contribute nothing.

  Args:
    logits: array [..., C], any float dtype; all leading axes are pooled.
    labels: integer array [...] of class indices.
    n_bins: number of bins, an int >= 1.

  Returns:
    float32 scalar in [0, 1].

  Raises:
    ValueError: for invalid n_bins or mismatched shapes.
  """
  try:  # a numpy integer (from a computation) is a count too; a bool is not
    # np.bool_ too: older numpy gives it an __index__.
    count = None if isinstance(n_bins, (bool, np.bool_)) else operator.index(n_bins)
  except TypeError:
    count = None
  if count is None or count < 1:
    raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
  n_bins = count
  x = _as_logits(logits)
  y = _as_labels(labels, x)
  probs = softmax(x).reshape(-1, x.shape[-1])
  y = y.reshape(-1)
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == y).astype(jnp.float32)
  # Bin b holds confidences in (b / n, (b + 1) / n]; confidence > 0 always,
  # and the clip only guards rounding at the ends.
  bins = jnp.clip(jnp.ceil(confidence * n_bins).astype(jnp.int32) - 1,
                  0, n_bins - 1)
  conf_sum = jnp.zeros(n_bins, jnp.float32).at[bins].add(confidence)
  correct_sum = jnp.zeros(n_bins, jnp.float32).at[bins].add(correct)
  # (n_b / N) * |acc_b - conf_b| = |correct_sum_b - conf_sum_b| / N.
  return jnp.sum(jnp.abs(correct_sum - conf_sum)) / y.shape[0]


def summary_metrics(logits, labels, teacher_logits=None) -> dict[str, float]:
  """A model's evaluation on a split, as a run's summary and the report record it.

  Args:
    logits: array [N, C] of the model's logits.
    labels: integer array [N] of class indices.
    teacher_logits: optional array [N, C] of a teacher's logits on the same images.

  Returns:
    {'accuracy', 'nll', 'ece'} as Python floats, and 'agreement' (top-1
    agreement with the teacher) when teacher_logits is given.
  """
  # Inside the compiled program below the labels are traced, where their range cannot be
  # read: concrete ones are checked here, as the metrics called one by one check them.
  # Lists (and numbers) as arrays: the compiled program would take a list for a tree of scalars.
  logits, labels, teacher_logits = (
      a if a is None or hasattr(a, "dtype") else np.asarray(a)
      for a in (logits, labels, teacher_logits))
  if np.ndim(logits) >= 1 and np.issubdtype(labels.dtype, np.integer):  # others: told below
    _check_label_range(labels, np.shape(logits)[-1])
  # One compiled program per shape instead of one per operation: evaluated eagerly, the
  # metrics compile some forty small programs (about a second) on every run.
  return {name: float(value)
          for name, value in jax.device_get(_summary_metrics(logits, labels,
                                                             teacher_logits)).items()}


@jax.jit
def _summary_metrics(logits, labels, teacher_logits):
  metrics = {
      "accuracy": accuracy(logits, labels),
      "nll": negative_log_likelihood(logits, labels),
      "ece": expected_calibration_error(logits, labels),
  }
  if teacher_logits is not None:
    metrics["agreement"] = top1_agreement(logits, teacher_logits)
  return metrics

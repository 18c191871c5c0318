"""Argument and array checks shared by `distill.losses` and `distill.metrics`.

Hyperparameters are Python values checked eagerly, so a mistake raises a
ValueError before anything is traced; arrays become float32 logits, integer
labels or stop-gradient targets of matching shapes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

_REDUCTIONS = ("mean", "sum", "none")


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(
        f'unknown {name} {value!r}; expected one of '
        f'{", ".join(repr(c) for c in choices)}')
  return value


def _check_reduction(reduction):
  return _check_choice("reduction", reduction, _REDUCTIONS)


def _python_number(name, value, what="a Python number"):
  """`value` as a float; a traced array (under jax.jit) or a non-number says how to pass it."""
  # float() would take '2' and True silently, so strings and bools are refused first.
  dtype = getattr(value, "dtype", None)
  if (isinstance(value, (str, bytes, bool))
      or (dtype is not None and np.dtype(dtype).kind in "bUSO")):
    raise ValueError(f"{name} must be {what}, got {value!r} (a {type(value).__name__})")
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    if isinstance(value, jax.core.Tracer):
      raise ValueError(
          f"{name} must be {what}, got {value!r} (under jax.jit, pass it as a "
          "static argument)") from e
    raise ValueError(f"{name} must be {what}, got {value!r} (a {type(value).__name__})") from e


def _check_temperature(temperature):
  t = _python_number("temperature", temperature, "a positive number")
  if not math.isfinite(t) or t <= 0.0:
    raise ValueError(
        f"temperature must be finite and > 0, got {temperature!r}")
  return t


def _check_alpha(alpha):
  a = _python_number("alpha", alpha)
  # `not 0 <= a <= 1` is also true for nan, which must be rejected too.
  if not 0.0 <= a <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
  return a


def _check_label_smoothing(label_smoothing):
  s = _python_number("label_smoothing", label_smoothing)
  # 1.0 would make the target uniform and the labels irrelevant.
  if not 0.0 <= s < 1.0:
    raise ValueError(
        f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  return s


def _check_n_classes(n_classes):
  # numpy integers are accepted: `labels.max() + 1` is one. Bools are not (np.bool_ is no
  # np.integer).
  if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
    raise ValueError(f"n_classes must be an int, got {n_classes!r}")
  if n_classes < 2:
    raise ValueError(f"n_classes must be >= 2, got {n_classes}")
  return int(n_classes)


def _as_logits(logits, name="logits"):
  x = jnp.asarray(logits)
  if x.ndim < 1:
    raise ValueError(
        f"{name} must have a class axis (last axis), got a scalar")
  if x.shape[-1] == 0:
    raise ValueError(f"{name} have no classes (shape {x.shape}); the last axis holds the classes")
  # float32 even for bf16/f16 inputs: exp/log/sum lose too much otherwise.
  return x.astype(jnp.float32)


def _labels_advice(y, logits, soft_ce):
  """What to do with non-integer labels `y`; soft_ce: the caller is hard_cross_entropy."""
  if y.shape == logits.shape[:-1]:
    return f"got dtype {y.dtype} (shape {y.shape}); pass labels.astype(int)"
  if y.shape != logits.shape:
    if soft_ce:
      return f"got dtype {y.dtype}; pass probabilities to soft_cross_entropy instead"
    return (f"got dtype {y.dtype} (shape {y.shape}); pass integers of shape "
            f"{logits.shape[:-1]}")
  # Only reached on the way to an error, so reading the values costs a correct call nothing;
  # a traced array's values are unknown, and its shape alone has to do.
  if isinstance(y, jax.core.Tracer):
    if soft_ce:
      return (f"got dtype {y.dtype} with the logits' class axis (shape {y.shape}); pass "
              "labels.argmax(-1) if they are one-hot, or probabilities to soft_cross_entropy")
    return (f"got dtype {y.dtype} with the logits' class axis (shape {y.shape}); "
            "pass labels.argmax(-1)")
  v = np.asarray(y)
  if np.isin(v, (0, 1)).all() and (v.sum(axis=-1) == 1).all():
    return f"got one-hot rows (dtype {y.dtype}, shape {y.shape}); pass labels.argmax(-1)"
  if soft_ce:
    return (f"got dtype {y.dtype} (shape {y.shape}); pass probabilities to "
            "soft_cross_entropy instead")
  return (f"got dtype {y.dtype} with the logits' class axis (shape {y.shape}); "
          "pass labels.argmax(-1)")


def _as_labels(labels, logits, *, soft_ce=False):
  """Integer labels of the logits' shape without the class axis.

  soft_ce: the caller is hard_cross_entropy, whose float labels may belong in
  soft_cross_entropy; everywhere else (metrics, DKD) they need argmax or astype.
  """
  y = jnp.asarray(labels)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(
        "labels must be integer class indices, " + _labels_advice(y, logits, soft_ce))
  if y.shape != logits.shape[:-1]:
    raise ValueError(
        f"labels shape {y.shape} must equal the logits shape without the "
        f"class axis {logits.shape[:-1]}")
  return y


def _as_targets(target_probs, logits):
  t = jnp.asarray(target_probs)
  if t.shape != logits.shape:
    raise ValueError(
        f"target_probs shape {t.shape} must equal the logits shape "
        f"{logits.shape}")
  # Targets come from a teacher (or are data): they are never differentiated.
  return jax.lax.stop_gradient(t.astype(jnp.float32))


def _reduce(per_example, reduction):
  if reduction == "mean":
    return jnp.mean(per_example)
  if reduction == "sum":
    return jnp.sum(per_example)
  return per_example


def _check_weight(name, value):
  w = _python_number(name, value)
  # `not w >= 0` is also true for nan, which must be rejected too.
  if not math.isfinite(w) or not w >= 0.0:
    raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
  return w


def _check_same_shape(a, b, name_a, name_b):
  if a.shape != b.shape:
    raise ValueError(
        f"{name_a} shape {a.shape} must equal {name_b} shape {b.shape}")


def _check_two_classes(logits, name):
  # With one class there is no non-target class (DKD) and nothing to
  # correlate (DIST): the losses would be nan or constant.
  if logits.shape[-1] < 2:
    raise ValueError(
        f"{name} must have at least 2 classes on the last axis, got shape "
        f"{logits.shape}")


def _as_teacher(x, name):
  # The teacher is never differentiated, even if the caller forgets to stop it.
  return jax.lax.stop_gradient(_as_logits(x, name))

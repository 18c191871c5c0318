"""Argument and array checks shared by `distill.losses` and `distill.metrics`.

Hyperparameters are Python values checked eagerly, so a mistake raises a
ValueError before anything is traced; arrays become float32 logits, integer
labels or stop-gradient targets of matching shapes.

Values are checked only where they are concrete: labels in [0, C) and targets
that are probabilities. A traced array (inside jax.jit, or differentiated by
grad or mapped by vmap) could be read only through a host sync, so it is never
checked, and the compiled program is the same as without any check.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_REDUCTIONS = ("mean", "sum", "none")
# How far a row of target probabilities may sum from 1 (plus float32 eps per class, the
# rounding of a float32 sum). Targets rounded to bfloat16 and back are off by up to
# 2**-8 ~ 0.004 (about 0.003 seen for softmaxes of 10 to 1000 classes), so 1e-3 would refuse
# them; every mistake this catches (logits, probabilities scaled, unnormalised) is off by far
# more.
_ROW_SUM_TOLERANCE = 1e-2


def _is_traced(x):
  """Whether `x` is a JAX tracer (under jax.jit, grad or vmap): its values are unknown."""
  return isinstance(x, jax.core.Tracer)


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
    if _is_traced(value):
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
  if _is_traced(y):
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
    one_hot = ("; if they are one-hot rows, pass labels.argmax(-1)"
               if y.shape == logits.shape else "")
    raise ValueError(
        f"labels shape {y.shape} must equal the logits shape without the "
        f"class axis {logits.shape[:-1]}{one_hot}")
  # The original, not `y`: jnp.asarray wraps int64 labels past int32 into range.
  _check_label_range(labels, logits.shape[-1])
  return y


def _as_targets(target_probs, logits):
  t = jnp.asarray(target_probs)
  if t.shape != logits.shape:
    raise ValueError(
        f"target_probs shape {t.shape} must equal the logits shape "
        f"{logits.shape}")
  _check_probabilities(target_probs)
  # Targets come from a teacher (or are data): they are never differentiated.
  return jax.lax.stop_gradient(t.astype(jnp.float32))


def _label_extremes(xp, y):
  return xp.min(y), xp.max(y)


def _probability_extremes(xp, t):
  """(lowest entry, lowest row sum, highest row sum) of `t` as float32, what the losses use."""
  t = t.astype(xp.float32)
  sums = xp.sum(t, axis=-1)
  return xp.min(t), xp.min(sums), xp.max(sums)


# One compiled call per shape for a jax array, which returns three scalars: the array itself
# never leaves the device.
_DEVICE_REDUCTIONS = {fn: jax.jit(functools.partial(fn, jnp))
                      for fn in (_label_extremes, _probability_extremes)}


def _concrete_extremes(raw, reduction):
  """`reduction`'s scalars for the concrete array `raw`, or None where they cannot be read.

  numpy arrays and lists are reduced with numpy; a jax array where it lives, with only the
  scalars copied back. None for a tracer, and for an array spread over other hosts too.
  """
  if _is_traced(raw):
    return None
  if isinstance(raw, jax.Array):
    if not raw.is_fully_addressable or raw.size == 0:
      return None
    # A concrete array closed over by a function being traced would give tracers.
    with jax.ensure_compile_time_eval():
      return jax.device_get(_DEVICE_REDUCTIONS[reduction](raw))
  v = np.asarray(raw)
  return None if v.size == 0 else reduction(np, v)


def _check_label_range(labels, n_classes):
  """Refuses concrete integer labels outside [0, n_classes), which would give NaN losses."""
  extremes = _concrete_extremes(labels, _label_extremes)
  if extremes is None:
    return
  lo, hi = (int(v) for v in extremes)
  if lo >= 0 and hi < n_classes:
    return
  if lo >= 0:
    got, fix = f"{hi}", f"pass logits with at least {hi + 1} classes, or labels below {n_classes}"
  elif hi < n_classes:
    got, fix = f"{lo}", "leave rows without a label (negative) out of the loss"
  else:
    got, fix = f"{lo} and {hi}", f"pass labels in [0, {n_classes})"
  raise ValueError(f"labels must be class indices in [0, {n_classes}) (the logits have "
                   f"{n_classes} classes); got {got}: {fix}")


def _check_probabilities(target_probs, name="target_probs"):
  """Refuses concrete targets that are not probabilities: negative, or rows not summing to 1."""
  extremes = _concrete_extremes(target_probs, _probability_extremes)
  if extremes is None:
    return
  low, low_sum, high_sum = (float(v) for v in extremes)
  n_classes = np.shape(target_probs)[-1]
  tolerance = _ROW_SUM_TOLERANCE + n_classes * float(np.finfo(np.float32).eps)
  problems = []
  if low < 0.0:
    problems.append(f"entries down to {low:.4g}")
  # Written so that NaN sums fail too.
  if not (abs(low_sum - 1.0) <= tolerance and abs(high_sum - 1.0) <= tolerance):
    problems.append(f"row sums {low_sum:.4g}..{high_sum:.4g}")
  if problems:
    raise ValueError(
        f"{name} rows must be probabilities (>= 0, summing to 1); got {' and '.join(problems)}: "
        "pass softmax(teacher_logits, temperature=T), or use a loss that takes teacher logits "
        "(dkd_loss, dist_loss, token_loss)")


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

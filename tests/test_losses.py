"""Tests for distill.losses against direct float64 numpy formulas."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import losses
from distill.metrics import (
  accuracy,
  expected_calibration_error,
  negative_log_likelihood,
  summary_metrics,
  top1_agreement,
)

C = 5
LEADING_SHAPES = [(4,), (2, 3)]
REDUCTIONS = ["mean", "sum", "none"]


# ---------------------------------------------------------------------------
# float64 numpy reference.
# ---------------------------------------------------------------------------


def np_logsumexp(x, axis=-1):
  m = np.max(x, axis=axis, keepdims=True)
  return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)))


def np_log_softmax(x, temperature=1.0):
  x = np.asarray(x, np.float64) / temperature
  return x - np_logsumexp(x)


def np_softmax(x, temperature=1.0):
  return np.exp(np_log_softmax(x, temperature))


def np_reduce(per_example, reduction):
  if reduction == "mean":
    return np.mean(per_example)
  if reduction == "sum":
    return np.sum(per_example)
  return per_example


def np_hard_ce(x, labels, label_smoothing=0.0):
  logp = np_log_softmax(x)
  n = x.shape[-1]
  target = (1 - label_smoothing) * np.eye(n)[labels] + label_smoothing / n
  return -np.sum(target * logp, axis=-1)


def np_soft_ce(x, t, temperature=1.0):
  return -np.sum(t * np_log_softmax(x, temperature), axis=-1)


def np_entropy(t):
  t = np.asarray(t, np.float64)
  return -np.sum(np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0),
                 axis=-1)


def np_kl(x, t, temperature=1.0):
  return -np_entropy(t) - np.sum(t * np_log_softmax(x, temperature), axis=-1)


def np_ece(logits, labels, n_bins):
  p = np_softmax(logits).reshape(-1, logits.shape[-1])
  labels = labels.reshape(-1)
  conf = p.max(-1)
  correct = (p.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, n_bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:], strict=True):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
  return ece


def random_problem(leading, seed=0, n_classes=C, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=leading + (n_classes,)) * scale
  labels = rng.integers(0, n_classes, size=leading)
  targets = np_softmax(rng.normal(size=leading + (n_classes,)) * 2.0)
  return logits.astype(np.float32), labels.astype(np.int32), targets


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
  actual = np.asarray(actual)
  assert actual.dtype == np.float32
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Softmax and each loss against numpy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.3])
def test_log_softmax_and_softmax_match_numpy(leading, temperature):
  x, _, _ = random_problem(leading)
  assert_close(losses.log_softmax(x, temperature),
               np_log_softmax(x, temperature))
  assert_close(losses.softmax(x, temperature), np_softmax(x, temperature))


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_hard_cross_entropy_matches_numpy(leading, reduction, label_smoothing):
  x, y, _ = random_problem(leading)
  got = losses.hard_cross_entropy(
      x, y, label_smoothing=label_smoothing, reduction=reduction)
  want = np_reduce(np_hard_ce(x, y, label_smoothing), reduction)
  assert got.shape == np.shape(want)
  assert_close(got, want)


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_cross_entropy_matches_numpy(leading, reduction, temperature):
  x, _, t = random_problem(leading)
  got = losses.soft_cross_entropy(
      x, t, temperature=temperature, reduction=reduction)
  want = np_reduce(np_soft_ce(x, t, temperature), reduction)
  assert got.shape == np.shape(want)
  assert_close(got, want)


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_divergence_matches_numpy(leading, reduction, temperature):
  x, _, t = random_problem(leading)
  t[..., 0] = 0.0  # Zeros in the targets must be handled as 0 * log 0 = 0.
  t /= t.sum(-1, keepdims=True)
  got = losses.kl_divergence(x, t, temperature=temperature,
                             reduction=reduction)
  want = np_reduce(np_kl(x, t, temperature), reduction)
  assert got.shape == np.shape(want)
  assert_close(got, want)


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["soft_ce", "kl"])
def test_distillation_loss_matches_numpy(leading, reduction, kind):
  x, y, t = random_problem(leading)
  temperature, alpha, smoothing = 2.0, 0.7, 0.1
  got = losses.distillation_loss(
      x, target_probs=t, labels=y, temperature=temperature, alpha=alpha,
      kind=kind, label_smoothing=smoothing, reduction=reduction)
  soft = (np_soft_ce if kind == "soft_ce" else np_kl)(x, t, temperature)
  want = np_reduce(
      alpha * temperature**2 * soft
      + (1 - alpha) * np_hard_ce(x, y, smoothing), reduction)
  assert got.shape == np.shape(want)
  assert_close(got, want)


# ---------------------------------------------------------------------------
# Numerics: extreme logits and low-precision inputs.
# ---------------------------------------------------------------------------


def extreme_logits():
  # Class 0 wins by 1e4 over class 2 and by 2e4 over class 1.
  return np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)


def test_extreme_logits_log_softmax_is_finite_and_exact():
  x = extreme_logits()
  logp = np.asarray(losses.log_softmax(x))
  assert np.all(np.isfinite(logp))
  np.testing.assert_allclose(logp[0], [0.0, -2e4, -1e4], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.softmax(x))[0], [1, 0, 0])


def test_extreme_logits_losses_match_analytic_limit():
  x = extreme_logits()
  right = np.array([0, 1], np.int32)
  wrong = np.array([1, 0], np.int32)
  assert float(losses.hard_cross_entropy(x, right)) == 0.0
  np.testing.assert_allclose(float(losses.hard_cross_entropy(x, wrong)), 2e4,
                             rtol=1e-6)

  one_hot_wrong = np.eye(3, dtype=np.float32)[wrong]
  np.testing.assert_allclose(
      float(losses.soft_cross_entropy(x, one_hot_wrong)), 2e4, rtol=1e-6)
  # KL of a one-hot target is its cross-entropy (the target entropy is 0).
  np.testing.assert_allclose(
      float(losses.kl_divergence(x, one_hot_wrong)), 2e4, rtol=1e-6)
  half = np.full((2, 3), 0.5, np.float32) * np.array([1, 0, 1], np.float32)
  # log_softmax rows are [0, -2e4, -1e4] and [-2e4, 0, -1e4], so the KLs are
  # log .5 + (0 + 1e4) / 2 and log .5 + (2e4 + 1e4) / 2.
  want = np.mean([math.log(0.5) + 5e3, math.log(0.5) + 1.5e4])
  np.testing.assert_allclose(float(losses.kl_divergence(x, half)), want,
                             rtol=1e-6)

  for fn in (losses.soft_cross_entropy, losses.kl_divergence):
    grad = jax.grad(fn)(x, one_hot_wrong)
    assert np.all(np.isfinite(np.asarray(grad)))
  grad = jax.grad(losses.hard_cross_entropy)(x, wrong, label_smoothing=0.1)
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_give_float32(dtype):
  x, y, t = random_problem((4,))
  xb = jnp.asarray(x, dtype)
  tb = jnp.asarray(t, dtype)
  outputs = [
      losses.log_softmax(xb),
      losses.softmax(xb),
      losses.hard_cross_entropy(xb, y, label_smoothing=0.1),
      losses.soft_cross_entropy(xb, tb),
      losses.kl_divergence(xb, tb),
      losses.distillation_loss(xb, target_probs=tb, labels=y, alpha=0.5),
      accuracy(xb, y),
      expected_calibration_error(xb, y),
  ]
  for out in outputs:
    assert out.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out)))
  # The upcast happens before the log-softmax: results match float32 math on
  # the (rounded) bf16 values.
  x_rounded = np.asarray(xb.astype(jnp.float32))
  assert_close(losses.hard_cross_entropy(xb, y), np.mean(np_hard_ce(x_rounded,
                                                                    y)))


# ---------------------------------------------------------------------------
# Identities.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_soft_ce_with_one_hot_targets_equals_hard_ce(leading):
  x, y, _ = random_problem(leading)
  one_hot = np.eye(C, dtype=np.float32)[y]
  assert_close(losses.soft_cross_entropy(x, one_hot, reduction="none"),
               losses.hard_cross_entropy(x, y, reduction="none"))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_of_own_softmax_is_zero(temperature):
  x, _, _ = random_problem((2, 3))
  own = losses.softmax(x, temperature)
  assert_close(losses.kl_divergence(x, own, temperature=temperature,
                                    reduction="none"),
               np.zeros((2, 3)), atol=1e-6)


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_soft_ce_minus_kl_is_target_entropy(leading):
  x, _, t = random_problem(leading)
  t[..., 1] = 0.0
  t /= t.sum(-1, keepdims=True)
  diff = (losses.soft_cross_entropy(x, t, reduction="none")
          - losses.kl_divergence(x, t, reduction="none"))
  assert_close(diff, np_entropy(t))


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_ce_gradient_is_softmax_minus_target(leading, temperature):
  x, _, t = random_problem(leading)
  n = int(np.prod(leading))
  grad = jax.grad(losses.soft_cross_entropy)(x, t, temperature=temperature)
  # d/dx of -sum(t * log_softmax(x / T)) is (softmax(x / T) - t) / T.
  want = (np_softmax(x, temperature) - t) / (temperature * n)
  assert_close(grad, want, atol=1e-6)
  grad_kl = jax.grad(losses.kl_divergence)(x, t, temperature=temperature)
  assert_close(grad_kl, want, atol=1e-6)


def test_gradient_wrt_targets_is_zero():
  x, y, t = random_problem((4,))
  fns = [
      lambda t_: losses.soft_cross_entropy(x, t_),
      lambda t_: losses.kl_divergence(x, t_),
      lambda t_: losses.distillation_loss(x, target_probs=t_, labels=y,
                                          alpha=0.5, temperature=2.0),
      lambda t_: losses.distillation_loss(x, target_probs=t_, kind="kl"),
  ]
  for fn in fns:
    grad = np.asarray(jax.grad(fn)(jnp.asarray(t, jnp.float32)))
    np.testing.assert_array_equal(grad, np.zeros_like(grad))


def test_kl_gradient_is_finite_with_zero_targets():
  x, _, _ = random_problem((4,))
  t = np.eye(C, dtype=np.float32)[[0, 1, 2, 3]]
  grad = np.asarray(jax.grad(losses.kl_divergence)(x, t))
  assert np.all(np.isfinite(grad))
  assert_close(grad, (np_softmax(x) - t) / 4, atol=1e-6)


# ---------------------------------------------------------------------------
# Temperature and mixing.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 2.0, 8.0])
def test_temperature_divides_logits(temperature):
  x, _, t = random_problem((2, 3))
  assert_close(losses.soft_cross_entropy(x, t, temperature=temperature),
               losses.soft_cross_entropy(x / temperature, t))
  assert_close(losses.kl_divergence(x, t, temperature=temperature),
               losses.kl_divergence(x / temperature, t))


@pytest.mark.parametrize("kind", ["soft_ce", "kl"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_loss_mixes_with_alpha_and_t_squared(
    kind, alpha, temperature):
  x, y, t = random_problem((4,))
  soft_fn = (losses.soft_cross_entropy if kind == "soft_ce"
             else losses.kl_divergence)
  soft = soft_fn(x, t, temperature=temperature)
  hard = losses.hard_cross_entropy(x, y)  # Always at T = 1.
  got = losses.distillation_loss(x, target_probs=t, labels=y,
                                 temperature=temperature, alpha=alpha,
                                 kind=kind)
  assert_close(got, alpha * temperature**2 * soft + (1 - alpha) * hard)


def test_distillation_loss_needs_only_the_weighted_inputs():
  x, y, t = random_problem((4,))
  assert_close(losses.distillation_loss(x, target_probs=t, alpha=1.0),
               losses.soft_cross_entropy(x, t))
  assert_close(losses.distillation_loss(x, labels=y, alpha=0.0),
               losses.hard_cross_entropy(x, y))


def test_distillation_loss_under_jit_with_static_hyperparameters():
  x, y, t = random_problem((2, 3))
  fn = jax.jit(losses.distillation_loss,
               static_argnames=("temperature", "alpha", "kind",
                                "label_smoothing", "reduction"))
  got = fn(x, target_probs=t, labels=y, temperature=2.0, alpha=0.5, kind="kl")
  want = losses.distillation_loss(x, target_probs=t, labels=y,
                                  temperature=2.0, alpha=0.5, kind="kl")
  assert_close(got, want)


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------

_X, _Y, _T = random_problem((4,))


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature must be finite and > 0"),
    (dict(temperature=-1.0), "temperature must be finite and > 0"),
    (dict(temperature=float("nan")), "temperature must be finite and > 0"),
    (dict(temperature=float("inf")), "temperature must be finite and > 0"),
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(alpha=float("nan")), r"alpha must be in \[0, 1\]"),
    (dict(target_probs=None), "target_probs is required"),
    (dict(labels=None), "labels are required"),
    (dict(kind="mse"), "unknown kind 'mse'.*'soft_ce', 'kl'"),
    (dict(reduction="avg"), "unknown reduction 'avg'.*'mean', 'sum', 'none'"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    (dict(labels=_Y.astype(np.float32)), "labels must be integer"),
    (dict(labels=_Y[:2]), "labels shape"),
    (dict(target_probs=_T[:2]), "target_probs shape"),
])
def test_distillation_loss_rejects_invalid_values(kwargs, match):
  args = dict(target_probs=_T, labels=_Y, temperature=2.0, alpha=0.5,
              kind="soft_ce")
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    losses.distillation_loss(_X, **args)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.soft_cross_entropy(_X, _T, temperature=0.0),
     "temperature"),
    (lambda: losses.kl_divergence(_X, _T, reduction="avg"), "reduction"),
    (lambda: losses.hard_cross_entropy(_X, _Y, label_smoothing=-0.1),
     "label_smoothing"),
    (lambda: losses.log_softmax(_X, temperature=float("nan")), "temperature"),
    (lambda: losses.hard_cross_entropy(np.float32(1.0), _Y), "class axis"),
    (lambda: top1_agreement(_X, _X[:2]), "shape"),
    (lambda: expected_calibration_error(_X, _Y, n_bins=0), "n_bins"),
    (lambda: expected_calibration_error(_X, _Y, n_bins=np.bool_(True)), "n_bins"),
    (lambda: losses.expected_init_loss(1), "n_classes"),
    (lambda: losses.expected_init_loss(C, kind="mse"), "unknown kind"),
    (lambda: losses.expected_init_loss(C, kind="kl"), "needs target_probs"),
    (lambda: losses.expected_init_loss(C, kind="kl", target_probs=_T[:, :2]),
     "classes"),
    (lambda: losses.init_loss_check(1.0, C, tolerance=-1.0), "tolerance"),
])
def test_other_functions_reject_invalid_values(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def _one_hot(y):
  return np.eye(C, dtype=np.float32)[y]


@pytest.mark.parametrize("call", [
    lambda x, y: accuracy(x, y),
    lambda x, y: expected_calibration_error(x, y),
    lambda x, y: negative_log_likelihood(x, y),
    lambda x, y: summary_metrics(x, y),  # traced under jax.jit: the shape says it
    lambda x, y: losses.hard_cross_entropy(x, y),
    lambda x, y: losses.distillation_loss(x, labels=y, alpha=0.0),
])
def test_one_hot_labels_are_told_to_take_argmax(call):
  with pytest.raises(ValueError, match=r"^labels must be integer class indices, .*; pass "
                     r"labels\.argmax\(-1\)") as raised:
    call(_X, _one_hot(_Y))
  assert "soft_cross_entropy" not in str(raised.value)
  # Integer one-hot rows too (inside jit JAX adds lines of its own to the message).
  with pytest.raises(ValueError, match=r"; if they are one-hot rows, pass labels\.argmax\(-1\)"):
    call(_X, _one_hot(_Y).astype(np.int32))


def test_probability_labels_keep_soft_cross_entropy_advice_only_in_hard_cross_entropy():
  probs = np_softmax(_X).astype(np.float32)
  with pytest.raises(ValueError, match="pass probabilities to soft_cross_entropy instead$"):
    losses.hard_cross_entropy(_X, probs)
  for metric in (accuracy, negative_log_likelihood, expected_calibration_error):
    with pytest.raises(ValueError, match=r"pass labels\.argmax\(-1\)$"):
      metric(_X, probs)


def test_float_class_indices_are_told_to_cast():
  with pytest.raises(ValueError, match=r"shape \(4,\)\); pass labels\.astype\(int\)$"):
    accuracy(_X, _Y.astype(np.float32))


def test_n_classes_may_be_a_numpy_integer():
  # `labels.max() + 1` is an np.int64.
  assert losses.expected_init_loss(np.int64(C)) == pytest.approx(math.log(C))
  assert losses.init_loss_check(math.log(C), np.int32(C)).ok
  with pytest.raises(ValueError, match="n_classes must be an int, got np.True_"):
    losses.expected_init_loss(np.bool_(True))


def test_logits_without_classes_say_so():
  with pytest.raises(ValueError, match=r"^logits have no classes \(shape \(4, 0\)\)"):
    losses.softmax(np.zeros((4, 0), np.float32))
  # An empty batch is fine: only the class axis must not be empty.
  assert losses.softmax(np.zeros((0, C), np.float32)).shape == (0, C)


@pytest.mark.parametrize("temperature, message", [
    ("2", "temperature must be a positive number, got '2' (a str)"),
    ("abc", "temperature must be a positive number, got 'abc' (a str)"),
    (True, "temperature must be a positive number, got True (a bool)"),
    (np.array(True), "temperature must be a positive number, got array(True) (a ndarray)"),
    ([1.0], "temperature must be a positive number, got [1.0] (a list)"),
])
@pytest.mark.parametrize("loss", [
    lambda t: losses.soft_cross_entropy(_X, _T, temperature=t),
    lambda t: losses.kl_divergence(_X, _T, temperature=t),
    lambda t: losses.distillation_loss(_X, target_probs=_T, temperature=t),
    lambda t: losses.softmax(_X, temperature=t),
    lambda t: losses.expected_init_loss(C, temperature=t),
])
def test_temperature_must_be_a_number_not_a_string_or_bool(loss, temperature, message):
  with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
    loss(temperature)


def test_temperature_jit_advice_only_for_a_traced_value():
  with pytest.raises(ValueError, match=r"under jax\.jit, pass it as a static argument"):
    jax.jit(lambda t: losses.soft_cross_entropy(_X, _T, temperature=t))(2.0)
  # Numpy scalars are numbers.
  assert_close(losses.soft_cross_entropy(_X, _T, temperature=np.float32(2.0)),
               losses.soft_cross_entropy(_X, _T, temperature=2.0))


def test_out_of_range_labels_give_nan_under_jit():
  # Traced labels cannot be read without a host sync, so they are not checked.
  x, _, _ = random_problem((4,))
  labels = np.array([0, C, -1, 1], np.int32)
  per_example = np.asarray(jax.jit(functools.partial(
      losses.hard_cross_entropy, reduction="none"))(x, labels))
  assert np.isfinite(per_example[[0, 3]]).all()
  assert np.isnan(per_example[[1, 2]]).all()


# ---------------------------------------------------------------------------
# Values of concrete arrays: labels in [0, C), targets that are probabilities.
# ---------------------------------------------------------------------------

# Every function that takes labels, called as (logits, labels).
_LABEL_TAKERS = {
    "hard_cross_entropy": lambda x, y: losses.hard_cross_entropy(x, y),
    "hard_cross_entropy smoothed": lambda x, y: losses.hard_cross_entropy(
        x, y, label_smoothing=0.1),
    "distillation_loss": lambda x, y: losses.distillation_loss(
        x, target_probs=_T, labels=y, alpha=0.5),
    "distillation_loss alpha=0": lambda x, y: losses.distillation_loss(x, labels=y, alpha=0.0),
    "dkd_loss": lambda x, y: losses.dkd_loss(x, -x, y),
    "token_loss hard": lambda x, y: losses.token_loss(x, x, y, -x),
    "token_loss soft": lambda x, y: losses.token_loss(x, x, y, -x, variant="soft"),
    "expected_init_dkd": lambda x, y: losses.expected_init_dkd(x, y),
    "accuracy": lambda x, y: accuracy(x, y),
    "negative_log_likelihood": lambda x, y: negative_log_likelihood(x, y),
    "expected_calibration_error": lambda x, y: expected_calibration_error(x, y),
    # Its metrics are computed in one compiled program, where labels are traced.
    "summary_metrics": lambda x, y: summary_metrics(x, y)["nll"],
}

# Every function that takes target probabilities, called as (logits, targets).
_TARGET_TAKERS = {
    "soft_cross_entropy": lambda x, t: losses.soft_cross_entropy(x, t),
    "soft_cross_entropy T=4": lambda x, t: losses.soft_cross_entropy(x, t, temperature=4.0),
    "kl_divergence": lambda x, t: losses.kl_divergence(x, t),
    "distillation_loss": lambda x, t: losses.distillation_loss(
        x, target_probs=t, labels=_Y, temperature=4.0, alpha=0.9),
    "distillation_loss kl": lambda x, t: losses.distillation_loss(
        x, target_probs=t, temperature=2.0, kind="kl"),
    "expected_init_loss kl": lambda x, t: losses.expected_init_loss(
        C, kind="kl", target_probs=t),
}

_AS = {"numpy": np.asarray, "list": lambda a: np.asarray(a).tolist(), "jax": jnp.asarray}


@pytest.mark.parametrize("as_array", _AS.values(), ids=_AS.keys())
@pytest.mark.parametrize("labels, message", [
    ([1, 2, 3, C + 7],
     rf"got {C + 7}: pass logits with at least {C + 8} classes, or labels below {C}$"),
    ([1, 2, C, 0], rf"got {C}: pass logits with at least {C + 1} classes"),
    ([1, -1, 3, 0], r"got -1: leave rows without a label \(negative\) out of the loss$"),
    ([1, -3, C, 0], rf"got -3 and {C}: pass labels in \[0, {C}\)$"),
])
@pytest.mark.parametrize("call", _LABEL_TAKERS.values(), ids=_LABEL_TAKERS.keys())
def test_labels_out_of_range_are_refused_in_one_line(call, labels, message, as_array):
  prefix = rf"^labels must be class indices in \[0, {C}\) \(the logits have {C} classes\); "
  with pytest.raises(ValueError, match=prefix + message) as raised:
    call(_X, as_array(np.array(labels, np.int32)))
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize("as_array", _AS.values(), ids=_AS.keys())
@pytest.mark.parametrize("call", _LABEL_TAKERS.values(), ids=_LABEL_TAKERS.keys())
def test_labels_at_both_ends_of_the_range_are_accepted(call, as_array):
  assert np.isfinite(call(_X, as_array(np.array([0, C - 1, 2, 0], np.int32))))


def test_int64_labels_past_int32_are_refused_before_they_wrap():
  # jnp.asarray would wrap 2**32 + 1 to 1, a valid but wrong label.
  with pytest.raises(ValueError, match=r"; got 4294967297: "):
    losses.hard_cross_entropy(_X, np.array([0, 1, 2**32 + 1, 2], np.int64))


def _non_probabilities():
  """Targets a new user might pass where probabilities belong, and what the error says."""
  number = r"-?[0-9.]+(e[-+][0-9]+)?"
  one_hot = np.eye(C)[_Y]
  return {
      "logits": (_X, rf"got entries down to {number} and row sums {number}\.\.{number}: "),
      "positive logits": (np.abs(_X) + 0.5, rf"got row sums {number}\.\.{number}: "),
      "probabilities x2": (2 * _T, r"got row sums 2\.\.2: "),
      # Rows summing to 1, with a negative entry.
      "negative entry": (1.5 * one_hot - 0.5 * np.roll(one_hot, 1, axis=-1),
                         r"got entries down to -0\.5: "),
      "unnormalised": (_T[:, ::-1] * np.array([[1.0], [0.83], [1.0], [12.1]]),
                       r"got row sums 0\.83\.\.12\.1: "),
      "nan": (np.where(np.eye(C)[_Y] > 0, np.nan, _T), r"got row sums nan\.\.nan: "),
  }


@pytest.mark.parametrize("as_array", _AS.values(), ids=_AS.keys())
@pytest.mark.parametrize("case", _non_probabilities().keys())
@pytest.mark.parametrize("call", _TARGET_TAKERS.values(), ids=_TARGET_TAKERS.keys())
def test_targets_that_are_not_probabilities_are_refused_in_one_line(call, case, as_array):
  targets, message = _non_probabilities()[case]
  advice = (r"pass softmax\(teacher_logits, temperature=T\), or use a loss that takes teacher "
            r"logits \(dkd_loss, dist_loss, token_loss\)$")
  with pytest.raises(ValueError, match=r"^target_probs rows must be probabilities \(>= 0, "
                     r"summing to 1\); " + message + advice) as raised:
    call(_X, as_array(targets.astype(np.float32)))
  assert "\n" not in str(raised.value)


def test_swapped_student_logits_and_teacher_probs_are_refused():
  with pytest.raises(ValueError, match="^target_probs rows must be probabilities"):
    losses.soft_cross_entropy(_T.astype(np.float32), _X)
  with pytest.raises(ValueError, match="^target_probs rows must be probabilities"):
    losses.distillation_loss(_T.astype(np.float32), target_probs=_X)


@functools.cache  # built once: each test case reads one of them
def _realistic_targets():
  """Targets the toolkit exports, and near relatives: every one of them must pass."""
  rng = np.random.default_rng(7)
  cases = {}
  for n_classes in (10, 1000):
    for scale in (3.0, 30.0, 1e3):
      logits = (rng.normal(size=(256, n_classes)) * scale).astype(np.float32)
      for temperature in (1.0, 4.0):
        probs = losses.softmax(logits, temperature=temperature)
        key = f"C={n_classes} scale={scale:g} T={temperature:g}"
        cases[f"{key} float32"] = probs
        # A bfloat16 model's logits, computed in float32 by softmax.
        cases[f"{key} bf16 logits"] = losses.softmax(
            jnp.asarray(logits, jnp.bfloat16), temperature=temperature)
        # Probabilities stored in bfloat16 and read back: rows are off by up to 2**-8.
        cases[f"{key} bf16 probs"] = probs.astype(jnp.bfloat16).astype(jnp.float32)
        cases[f"{key} float64"] = np.asarray(probs, np.float64)
  one_hot = np.eye(C, dtype=np.float32)[_Y]
  cases["one-hot"] = one_hot
  cases["label-smoothed"] = 0.9 * one_hot + 0.1 / C
  cases["mixup"] = 0.3 * one_hot + 0.7 * _T[::-1]
  return cases


@pytest.mark.parametrize("case", _realistic_targets().keys())
def test_softmax_targets_pass_whatever_their_rounding(case):
  targets = _realistic_targets()[case]
  logits = np.zeros(targets.shape, np.float32)
  for loss in (losses.soft_cross_entropy, losses.kl_divergence):
    assert np.isfinite(loss(logits, targets, temperature=4.0))
    assert np.isfinite(loss(logits, np.asarray(targets), temperature=4.0))
  assert np.isfinite(losses.expected_init_loss(targets.shape[-1], kind="kl",
                                               target_probs=targets))


def test_bf16_rounded_targets_need_more_than_a_1e_3_tolerance():
  # Why the tolerance is 1e-2: exported targets stored in bfloat16 miss 1 by more than 1e-3.
  worst = max(float(np.max(np.abs(np.asarray(t, np.float64).sum(axis=-1) - 1.0)))
              for key, t in _realistic_targets().items() if key.endswith("bf16 probs"))
  assert 1e-3 < worst < 2.0**-8


def test_a_closed_over_concrete_array_is_checked_while_tracing():
  bad = jnp.asarray([0, 1, C, 2], jnp.int32)
  with pytest.raises(ValueError, match=rf"^labels must be class indices .*; got {C}: "):
    jax.jit(lambda x: losses.hard_cross_entropy(x, bad))(_X)
  with pytest.raises(ValueError, match="^target_probs rows must be probabilities"):
    jax.jit(lambda x: losses.soft_cross_entropy(x, np.float32(2.0) * _T))(_X)
  good = jnp.asarray(_Y)
  assert_close(jax.jit(lambda x: losses.hard_cross_entropy(x, good))(_X),
               np.mean(np_hard_ce(_X, _Y)))


@pytest.mark.parametrize("call", [
    lambda x, y, t: losses.hard_cross_entropy(x, y, reduction="none"),
    lambda x, y, t: losses.distillation_loss(x, target_probs=t, labels=y, alpha=0.5,
                                             reduction="none"),
    lambda x, y, t: losses.dkd_loss(x, -x, y, reduction="none"),
    lambda x, y, t: losses.token_loss(x, x, y, -x, reduction="none"),
    lambda x, y, t: accuracy(x, y, reduction="none"),
], ids=["hard_cross_entropy", "distillation_loss", "dkd_loss", "token_loss", "accuracy"])
def test_traced_labels_are_not_checked(call):
  labels = np.array([0, C, -1, 1], np.int32)
  got = np.asarray(jax.jit(call)(_X, labels, _T))  # no error: nothing is read back
  assert got.shape == (4,)
  batched = jax.vmap(lambda x, y: call(x[None], y[None], _T[:1])[0])(_X, labels)
  assert np.asarray(batched).shape == (4,)


@pytest.mark.parametrize("call", [
    lambda x, t: losses.soft_cross_entropy(x, t),
    lambda x, t: losses.kl_divergence(x, t),
    lambda x, t: losses.distillation_loss(x, target_probs=t, temperature=2.0),
])
def test_traced_targets_are_not_checked(call):
  for not_probabilities in (2 * _T, _X, -_T):
    assert np.isfinite(jax.jit(call)(_X, not_probabilities))  # no error: nothing is read back


def test_jitted_losses_on_valid_inputs_are_unchanged():
  # The compiled program holds the loss and nothing else: the same jaxpr as the bare formula.
  x, y, t = (jnp.asarray(a, jnp.float32 if a.dtype.kind == "f" else None)
             for a in random_problem((8,), seed=3))

  def bare_hard(x, y):
    return jnp.mean(losses._hard_ce_per_example(x.astype(jnp.float32), y, 0.0))

  def bare_soft(x, t):
    targets = jax.lax.stop_gradient(t.astype(jnp.float32))
    return jnp.mean(losses._soft_ce_per_example(x.astype(jnp.float32), targets, 2.0))

  checked_soft = functools.partial(losses.soft_cross_entropy, temperature=2.0)
  assert (str(jax.make_jaxpr(losses.hard_cross_entropy)(x, y))
          == str(jax.make_jaxpr(bare_hard)(x, y)))
  assert str(jax.make_jaxpr(checked_soft)(x, t)) == str(jax.make_jaxpr(bare_soft)(x, t))
  np.testing.assert_array_equal(jax.jit(losses.hard_cross_entropy)(x, y), jax.jit(bare_hard)(x, y))
  np.testing.assert_array_equal(jax.jit(checked_soft)(x, t), jax.jit(bare_soft)(x, t))
  # And the same numbers eagerly, where the check runs and passes.
  assert_close(losses.hard_cross_entropy(x, y), np.mean(np_hard_ce(x, y)))
  assert_close(checked_soft(x, t), np.mean(np_soft_ce(x, t, 2.0)))


# ---------------------------------------------------------------------------
# Initial-loss check.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["soft_ce", "kl", "hard"])
@pytest.mark.parametrize("temperature, alpha", [(1.0, 1.0), (3.0, 0.7),
                                                (2.0, 0.0)])
def test_expected_init_loss_equals_loss_of_zero_logits(kind, temperature,
                                                       alpha):
  _, y, t = random_problem((2, 3), seed=1)
  t[0, 0, 2] = 0.0
  t /= t.sum(-1, keepdims=True)
  zeros = np.zeros((2, 3, C), np.float32)
  if kind == "hard":
    measured = losses.hard_cross_entropy(zeros, y, label_smoothing=0.1)
  else:
    measured = losses.distillation_loss(
        zeros, target_probs=t, labels=y, temperature=temperature, alpha=alpha,
        kind=kind)
  expected = losses.expected_init_loss(
      C, kind=kind, temperature=temperature, alpha=alpha, target_probs=t)
  assert isinstance(expected, float)
  np.testing.assert_allclose(float(measured), expected, rtol=1e-5)
  assert losses.init_loss_check(measured, C, expected=expected).ok


def test_expected_init_loss_of_kl_subtracts_mean_target_entropy():
  _, _, t = random_problem((4,))
  got = losses.expected_init_loss(C, kind="kl", target_probs=t)
  np.testing.assert_allclose(got, math.log(C) - np.mean(np_entropy(t)),
                             rtol=1e-5)


def test_init_loss_check_ok_at_log_c():
  result = losses.init_loss_check(jnp.float32(math.log(10)), 10)
  assert result.ok
  assert result.expected == pytest.approx(math.log(10))
  assert result.tolerance == 0.05
  assert result.message == "init loss 2.3026 vs expected log(10) = 2.3026 (ok)"
  # Within the relative tolerance on both sides.
  assert losses.init_loss_check(math.log(10) * 1.04, 10).ok
  assert losses.init_loss_check(math.log(10) * 0.96, 10).ok
  assert not losses.init_loss_check(math.log(10) * 1.06, 10).ok


def test_init_loss_check_fires_far_from_log_c():
  result = losses.init_loss_check(3 * math.log(10), 10)
  assert not result.ok
  assert result.message.startswith("WARNING: init loss 6.9078 is far from "
                                   "expected log(10) = 2.3026")
  assert "(rel. diff 200%, tolerance 5%)" in result.message
  assert "badly scaled" in result.message
  # A tolerance of 0 fires on float noise, which must not read as 'off by 0%'.
  noise = losses.init_loss_check(math.log(10) * (1 + 3e-7), 10, tolerance=0.0)
  assert "(rel. diff 3.0e-05%, tolerance 0%)" in noise.message


def test_init_loss_check_fires_for_nan():
  result = losses.init_loss_check(float("nan"), 10)
  assert not result.ok
  assert "WARNING" in result.message
  assert "not finite" in result.message
  assert not losses.init_loss_check(jnp.inf, 10).ok


def test_init_loss_check_is_frozen():
  result = losses.init_loss_check(1.0, 3)
  with pytest.raises(AttributeError):
    result.ok = False  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Evaluation metrics.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("leading", LEADING_SHAPES)
@pytest.mark.parametrize("n_bins", [1, 10, 15, np.int64(15)])
def test_expected_calibration_error_matches_numpy(leading, n_bins):
  rng = np.random.default_rng(3)
  big = (50,) + leading
  logits = (rng.normal(size=big + (C,)) * 2.0).astype(np.float32)
  labels = rng.integers(0, C, size=big).astype(np.int32)
  got = expected_calibration_error(logits, labels, n_bins=n_bins)
  assert_close(got, np_ece(logits, labels, n_bins))


def test_expected_calibration_error_of_perfect_confident_model_is_zero():
  labels = np.array([0, 1, 2, 1], np.int32)
  logits = np.eye(3, dtype=np.float32)[labels] * 1e4
  assert float(expected_calibration_error(logits, labels)) == 0.0


@pytest.mark.parametrize("leading", LEADING_SHAPES)
def test_accuracy_agreement_and_nll(leading):
  x, y, _ = random_problem(leading)
  x2, _, _ = random_problem(leading, seed=5)
  pred = np.argmax(x, -1)
  assert_close(accuracy(x, y), np.mean(pred == y))
  assert_close(accuracy(x, y, reduction="sum"), np.sum(pred == y))
  assert accuracy(x, y, reduction="none").shape == leading
  assert_close(top1_agreement(x, x2),
               np.mean(pred == np.argmax(x2, -1)))
  assert float(top1_agreement(x, x)) == 1.0
  assert_close(negative_log_likelihood(x, y),
               np.mean(np_hard_ce(x, y)))
  assert_close(accuracy(np.eye(C, dtype=np.float32), np.arange(C)),
               1.0)


def test_summary_metrics_are_the_metrics_as_floats():
  x, y, _ = random_problem((64,))
  teacher, _, _ = random_problem((64,), seed=5)
  alone = summary_metrics(x, y)
  assert set(alone) == {"accuracy", "nll", "ece"}
  assert all(type(value) is float for value in alone.values())
  together = summary_metrics(x, y, teacher)
  assert together["agreement"] == pytest.approx(float(top1_agreement(x, teacher)))
  for name, metric in (("accuracy", accuracy), ("nll", negative_log_likelihood),
                       ("ece", expected_calibration_error)):
    assert alone[name] == together[name] == pytest.approx(float(metric(x, y)), rel=1e-6)
  with pytest.raises(ValueError, match="logits_b shape"):
    summary_metrics(x, y, teacher[:10])

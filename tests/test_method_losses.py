"""Tests for DKD, DIST, hint and distillation-token losses against float64 numpy formulas."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from test_losses import np_log_softmax, np_logsumexp, np_reduce, np_softmax

import distill
from distill import losses

LEADING_SHAPES = [(4,), (2, 3)]
CLASSES = [2, 5, 10]
LOW_PRECISION = [jnp.float16, jnp.bfloat16]


def rand_logits(seed, shape, scale=2.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def rand_labels(seed, shape, n_classes):
  return np.random.default_rng(seed).integers(0, n_classes, size=shape).astype(np.int32)


def extreme_logits(seed, shape):
  """Logits of exactly +-1e4: every probability is 0 or 1 in float32."""
  return np.random.default_rng(seed).choice([-1e4, 1e4], size=shape).astype(np.float32)


def as_f64(x):
  """The float64 values an array holds (after rounding to its own dtype)."""
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def jit_grad(f, **kwargs):
  """jax.grad under jit: one compile instead of one per eager op, and checks jit works."""
  return jax.jit(jax.grad(f, **kwargs))


def num_grad(f, x, h=1e-6):
  """Central-difference gradient of a float64 scalar function."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = h
    g[i] = (f(x + e) - f(x - e)) / (2 * h)
  return g


# ---------------------------------------------------------------------------
# float64 numpy reference.
# ---------------------------------------------------------------------------


def np_kl(p, q):
  return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)))


def np_dkd(s, t, labels, alpha, beta, temperature):
  """DKD per example, in probability space, straight from the paper's definitions."""
  c = s.shape[-1]
  ps = np_softmax(s, temperature).reshape(-1, c)
  pt = np_softmax(t, temperature).reshape(-1, c)
  out = []
  for ps_i, pt_i, y in zip(ps, pt, np.reshape(labels, -1), strict=True):
    other = np.arange(c) != y
    bs = np.array([ps_i[y], ps_i[other].sum()])
    bt = np.array([pt_i[y], pt_i[other].sum()])
    qs = ps_i[other] / ps_i[other].sum()
    qt = pt_i[other] / pt_i[other].sum()
    out.append((alpha * np_kl(bt, bs) + beta * np_kl(qt, qs)) * temperature**2)
  return np.reshape(out, np.shape(labels))


def np_dkd_mdistiller(s, t, labels, alpha, beta, temperature):
  """mdistiller's dkd_loss transcribed to numpy (for [B, C] and moderate logits)."""
  gt = np.eye(s.shape[-1])[labels]
  other = 1.0 - gt

  def cat_mask(p):
    return np.stack([(p * gt).sum(1), (p * other).sum(1)], axis=1)

  ps = cat_mask(np_softmax(s, temperature))
  pt = cat_mask(np_softmax(t, temperature))
  def kl_div(log_q, p):
    # torch's kl_div(log_q, p, size_average=False): sum p * (log p - log q), 0 where p = 0.
    return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0))

  tckd = kl_div(np.log(ps), pt) * temperature**2 / s.shape[0]
  pt2 = np_softmax(t / temperature - 1000.0 * gt)
  log_ps2 = np_log_softmax(s / temperature - 1000.0 * gt)
  nckd = kl_div(log_ps2, pt2) * temperature**2 / s.shape[0]
  return alpha * tckd + beta * nckd


def np_dkd_logspace(s, t, labels, alpha, beta, temperature):
  """DKD per example in log space with the target column removed: exact in float64."""
  c = s.shape[-1]
  ls = np_log_softmax(s, temperature).reshape(-1, c)
  lt = np_log_softmax(t, temperature).reshape(-1, c)
  out = []
  for ls_i, lt_i, y in zip(ls, lt, np.reshape(labels, -1), strict=True):
    other = np.arange(c) != y
    s_nt = np_logsumexp(ls_i[other])[0]
    t_nt = np_logsumexp(lt_i[other])[0]
    tckd = np.exp(lt_i[y]) * (lt_i[y] - ls_i[y]) + np.exp(t_nt) * (t_nt - s_nt)
    lqs = ls_i[other] - s_nt
    lqt = lt_i[other] - t_nt
    nckd = np.sum(np.exp(lqt) * (lqt - lqs))
    out.append((alpha * tckd + beta * nckd) * temperature**2)
  return np.reshape(out, np.shape(labels))


def np_pearson_eps(a, b, axis, eps=1e-8):
  a = a - a.mean(axis=axis, keepdims=True)
  b = b - b.mean(axis=axis, keepdims=True)
  return (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis) + eps)


def np_dist(s, t, beta, gamma, temperature):
  """DIST as in the reference code: Pearson with eps 1e-8."""
  ys = np_softmax(s, temperature)
  yt = np_softmax(t, temperature)
  inter = 1.0 - np_pearson_eps(ys, yt, axis=1).mean()
  intra = 1.0 - np_pearson_eps(ys, yt, axis=0).mean()
  return temperature**2 * (beta * inter + gamma * intra)


def np_hint(s, t, kind):
  s = np.asarray(s, np.float64)
  t = np.asarray(t, np.float64)
  if kind == "mse":
    return ((s - t) ** 2).reshape(s.shape[0], -1).mean(axis=1)
  norms = (np.maximum(np.linalg.norm(s, axis=-1), 1e-8)
           * np.maximum(np.linalg.norm(t, axis=-1), 1e-8))
  return (1.0 - (s * t).sum(-1) / norms).reshape(s.shape[0], -1).mean(axis=1)


def np_ce(x, labels):
  logp = np_log_softmax(x)
  return -np.take_along_axis(logp, np.asarray(labels)[..., None], axis=-1)[..., 0]


def np_token(c, d, labels, t, variant, temperature):
  class_term = np_ce(c, labels)
  if variant == "hard":
    distill_term = np_ce(d, np.argmax(t, axis=-1))
  else:
    distill_term = temperature**2 * -np.sum(
        np_softmax(t, temperature) * np_log_softmax(d, temperature), axis=-1)
  return 0.5 * class_term + 0.5 * distill_term


# ---------------------------------------------------------------------------
# DKD.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LEADING_SHAPES)
@pytest.mark.parametrize("n_classes", CLASSES)
@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0),
                                                    (0.0, 1.0, 2.0)])
def test_dkd_matches_numpy(shape, n_classes, alpha, beta, temperature):
  s = rand_logits(0, (*shape, n_classes))
  t = rand_logits(1, (*shape, n_classes), scale=3.0)
  y = rand_labels(2, shape, n_classes)
  want = np_dkd(s, t, y, alpha, beta, temperature)
  for reduction in ("mean", "sum", "none"):
    got = losses.dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=temperature,
                          reduction=reduction)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_reduce(want, reduction), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np_dkd_logspace(s, t, y, alpha, beta, temperature), want,
                             rtol=1e-10, atol=1e-12)


def test_dkd_matches_mdistiller_code():
  s = rand_logits(3, (8, 10))
  t = rand_logits(4, (8, 10), scale=3.0)
  y = rand_labels(5, (8,), 10)
  got = losses.dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)
  np.testing.assert_allclose(got, np_dkd_mdistiller(s, t, y, 1.0, 8.0, 4.0), rtol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 6])
def test_dkd_gradient(n_classes):
  s = rand_logits(6, (3, n_classes))
  t = rand_logits(7, (3, n_classes), scale=3.0)
  y = rand_labels(8, (3,), n_classes)
  got = jit_grad(lambda x: losses.dkd_loss(x, t, y, alpha=1.0, beta=2.0, temperature=2.0))(s)
  want = num_grad(lambda x: np.mean(np_dkd(x, t, y, 1.0, 2.0, 2.0)), s)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_dkd_low_precision(dtype):
  s = jnp.asarray(rand_logits(9, (4, 7)), dtype)
  t = jnp.asarray(rand_logits(10, (4, 7), scale=3.0), dtype)
  y = rand_labels(11, (4,), 7)
  got = losses.dkd_loss(s, t, y)
  assert got.dtype == jnp.float32
  want = np.mean(np_dkd(as_f64(s), as_f64(t), y, 1.0, 8.0, 4.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_extreme_logits(temperature):
  s = extreme_logits(12, (16, 6))
  t = extreme_logits(13, (16, 6))
  y = rand_labels(14, (16,), 6)
  # The teacher's target among ties and both extremes at once, so that p_t
  # rounds to 0 and to 1 for some examples.
  t[0] = -1e4
  t[0, y[0]] = 1e4
  s[1] = 1e4
  s[1, y[1]] = -1e4

  def loss(x):
    return losses.dkd_loss(x, t, y, alpha=1.0, beta=8.0, temperature=temperature)

  got = loss(s)
  want = np_dkd_logspace(s, t, y, 1.0, 8.0, temperature)
  assert np.all(np.isfinite(want)) and np.mean(want) > 1e3
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)
  # Per example too, so that no small term hides behind a large one.
  per_example = losses.dkd_loss(s, t, y, temperature=temperature, reduction="none")
  np.testing.assert_allclose(per_example, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(jit_grad(loss)(s)))


def test_dkd_bad_labels_give_nan_under_jit():
  # Traced labels cannot be checked without a host sync (concrete ones raise: test_losses).
  s = rand_logits(15, (3, 4))
  jitted = jax.jit(functools.partial(losses.dkd_loss, reduction="none"))
  got = jitted(s, s, np.array([0, 4, -1], np.int32))
  assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])


def test_dkd_under_jit():
  s = rand_logits(16, (4, 5))
  t = rand_logits(17, (4, 5))
  y = rand_labels(18, (4,), 5)
  jitted = jax.jit(functools.partial(losses.dkd_loss, alpha=1.0, beta=8.0, temperature=4.0))
  np.testing.assert_allclose(jitted(s, t, y), losses.dkd_loss(s, t, y), rtol=1e-6)


# ---------------------------------------------------------------------------
# DIST.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch,n_classes", [(2, 2), (4, 5), (16, 10), (8, 100)])
@pytest.mark.parametrize("beta,gamma,temperature", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0),
                                                    (1.0, 0.0, 2.0), (0.0, 1.0, 1.0)])
def test_dist_matches_paper(batch, n_classes, beta, gamma, temperature):
  s = rand_logits(20, (batch, n_classes))
  t = rand_logits(21, (batch, n_classes), scale=3.0)
  got = losses.dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature)
  assert got.dtype == jnp.float32
  ys = np_softmax(s, temperature)
  yt = np_softmax(t, temperature)
  inter = 1.0 - np.mean([stats.pearsonr(ys[i], yt[i])[0] for i in range(batch)])
  intra = 1.0 - np.mean([stats.pearsonr(ys[:, c], yt[:, c])[0] for c in range(n_classes)])
  paper = temperature**2 * (beta * inter + gamma * intra)
  # The reference code's eps moves each Pearson by at most eps / (|a| |b|) of
  # the centred vectors: ~1e-2 for the rarest columns of 100 classes.
  def eps_bound(axis):
    a = ys - ys.mean(axis, keepdims=True)
    b = yt - yt.mean(axis, keepdims=True)
    return np.mean(1e-8 / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis)))

  bound = temperature**2 * (beta * eps_bound(1) + gamma * eps_bound(0))
  np.testing.assert_allclose(got, paper, rtol=1e-5, atol=1e-6 + bound)
  np.testing.assert_allclose(got, np_dist(s, t, beta, gamma, temperature), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_dist_gradient(temperature):
  s = rand_logits(22, (4, 5), scale=1.0)
  t = rand_logits(23, (4, 5), scale=2.0)
  got = jit_grad(lambda x: losses.dist_loss(x, t, beta=1.0, gamma=2.0,
                                            temperature=temperature))(s)
  want = num_grad(lambda x: np_dist(x, t, 1.0, 2.0, temperature), s)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_dist_low_precision(dtype):
  s = jnp.asarray(rand_logits(24, (6, 7)), dtype)
  t = jnp.asarray(rand_logits(25, (6, 7), scale=3.0), dtype)
  got = losses.dist_loss(s, t, temperature=2.0)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_dist(as_f64(s), as_f64(t), 1.0, 1.0, 2.0), rtol=1e-5)


def test_dist_extreme_logits():
  s = extreme_logits(26, (8, 6))
  t = extreme_logits(27, (8, 6))

  def loss(x):
    return losses.dist_loss(x, t, temperature=4.0)

  np.testing.assert_allclose(loss(s), np_dist(as_f64(s), as_f64(t), 1.0, 1.0, 4.0), rtol=1e-5)
  assert np.all(np.isfinite(jit_grad(loss)(s)))


@pytest.mark.parametrize("n_classes", [3, 10, 26, 100])
def test_dist_uniform_student_is_exact(n_classes):
  # A float32 mean of C equal values is off by ~1e-9 for these C; without
  # exact centring the Pearson of a uniform row would not be 0.
  t = rand_logits(28, (8, n_classes), scale=3.0)
  zeros = np.zeros_like(t)
  for beta, gamma, temperature in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:

    def loss(x, beta=beta, gamma=gamma, temperature=temperature):
      return losses.dist_loss(x, t, beta=beta, gamma=gamma, temperature=temperature)

    want = losses.expected_init_dist(beta=beta, gamma=gamma, temperature=temperature)
    assert want == temperature**2 * (beta + gamma)
    assert float(loss(zeros)) == pytest.approx(want, rel=1e-7)
    # The eps-regularised Pearson's gradient at a constant vector is finite
    # (of order 1 / eps), never nan.
    assert np.all(np.isfinite(jit_grad(loss)(zeros)))


def test_dist_single_example_without_intra():
  s = rand_logits(29, (1, 5))
  t = rand_logits(30, (1, 5))
  got = losses.dist_loss(s, t, gamma=0.0)
  np.testing.assert_allclose(got, np_dist(s, t, 1.0, 0.0, 1.0), rtol=1e-5)


# ---------------------------------------------------------------------------
# Hints.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 5), (2, 3, 2, 4)])
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hint_matches_numpy(shape, kind):
  s = rand_logits(31, shape)
  t = rand_logits(32, shape)
  want = np_hint(s, t, kind)
  for reduction in ("mean", "sum", "none"):
    got = losses.hint_loss(s, t, kind=kind, reduction=reduction)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_reduce(want, reduction), rtol=1e-5, atol=1e-6)


def test_hint_mse_gradient_is_analytic():
  s = rand_logits(33, (3, 2, 4))
  t = rand_logits(34, (3, 2, 4))
  got = jit_grad(lambda x: losses.hint_loss(x, t))(s)
  # d/ds mean_b mean_e (s - t)^2 = 2 (s - t) / (B * elements per example).
  np.testing.assert_allclose(got, 2.0 * (s - t) / s.size, rtol=1e-5, atol=1e-7)


def test_hint_cosine_gradient():
  s = rand_logits(35, (3, 2, 4))
  t = rand_logits(36, (3, 2, 4))
  got = jit_grad(lambda x: losses.hint_loss(x, t, kind="cosine"))(s)
  want = num_grad(lambda x: np.mean(np_hint(x, t, "cosine")), s)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hint_low_precision(dtype, kind):
  s = jnp.asarray(rand_logits(37, (4, 6)), dtype)
  t = jnp.asarray(rand_logits(38, (4, 6)), dtype)
  got = losses.hint_loss(s, t, kind=kind)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.mean(np_hint(as_f64(s), as_f64(t), kind)), rtol=1e-5)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hint_zero_vectors(kind):
  t = rand_logits(39, (3, 4))
  t[1] = 0.0
  zeros = np.zeros_like(t)

  def loss(x):
    return losses.hint_loss(x, t, kind=kind, reduction="none")

  got = loss(zeros)
  assert np.all(np.isfinite(got))
  if kind == "cosine":
    np.testing.assert_array_equal(got, 1.0)
  np.testing.assert_allclose(losses.hint_loss(zeros, zeros, kind=kind), 0.0 if kind == "mse"
                             else 1.0)
  assert np.all(np.isfinite(jit_grad(lambda x: jnp.sum(loss(x)))(zeros)))


# ---------------------------------------------------------------------------
# Distillation token.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LEADING_SHAPES)
@pytest.mark.parametrize("n_classes", CLASSES)
@pytest.mark.parametrize("variant,temperature", [("hard", 1.0), ("soft", 1.0), ("soft", 3.0)])
def test_token_matches_numpy(shape, n_classes, variant, temperature):
  c = rand_logits(40, (*shape, n_classes))
  d = rand_logits(41, (*shape, n_classes))
  t = rand_logits(42, (*shape, n_classes), scale=3.0)
  y = rand_labels(43, shape, n_classes)
  want = np_token(c, d, y, t, variant, temperature)
  for reduction in ("mean", "sum", "none"):
    got = losses.token_loss(c, d, y, t, variant=variant, temperature=temperature,
                            reduction=reduction)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_reduce(want, reduction), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_token_gradients_are_analytic(variant):
  c = rand_logits(44, (3, 5))
  d = rand_logits(45, (3, 5))
  t = rand_logits(46, (3, 5), scale=3.0)
  y = rand_labels(47, (3,), 5)
  temperature = 2.0
  gc, gd = jit_grad(lambda a, b: losses.token_loss(a, b, y, t, variant=variant,
                                                   temperature=temperature),
                    argnums=(0, 1))(c, d)
  n = c.shape[0]
  # d CE / d logits = softmax - target; the soft term's T**2 / T = T.
  np.testing.assert_allclose(gc, 0.5 * (np_softmax(c) - np.eye(5)[y]) / n, atol=1e-6)
  if variant == "hard":
    want_d = 0.5 * (np_softmax(d) - np.eye(5)[np.argmax(t, -1)]) / n
  else:
    want_d = 0.5 * temperature * (np_softmax(d, temperature) - np_softmax(t, temperature)) / n
  np.testing.assert_allclose(gd, want_d, atol=1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_token_low_precision(dtype, variant):
  c, d, t = (jnp.asarray(rand_logits(seed, (4, 6)), dtype) for seed in (48, 49, 50))
  y = rand_labels(51, (4,), 6)
  got = losses.token_loss(c, d, y, t, variant=variant, temperature=2.0)
  assert got.dtype == jnp.float32
  want = np.mean(np_token(as_f64(c), as_f64(d), y, as_f64(t), variant, 2.0))
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_token_extreme_logits(variant):
  c, d, t = (extreme_logits(seed, (8, 5)) for seed in (52, 53, 54))
  y = rand_labels(55, (8,), 5)

  def loss(a, b):
    return losses.token_loss(a, b, y, t, variant=variant, temperature=2.0)

  got = loss(c, d)
  np.testing.assert_allclose(got, np.mean(np_token(c, d, y, t, variant, 2.0)), rtol=1e-5)
  grads = jit_grad(loss, argnums=(0, 1))(c, d)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 6)])
def test_token_predictions(shape):
  c = rand_logits(56, shape)
  d = rand_logits(57, shape)
  got = losses.token_predictions(c, d)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, np.log(0.5 * (np_softmax(c) + np_softmax(d))), rtol=1e-5,
                             atol=1e-6)
  # Valid logits: already normalised, and softmax gives back the mean.
  np.testing.assert_allclose(losses.log_softmax(got), got, atol=1e-6)
  np.testing.assert_allclose(losses.softmax(got), 0.5 * (np_softmax(c) + np_softmax(d)),
                             atol=1e-6)


def test_token_predictions_extreme_and_low_precision():
  c = extreme_logits(58, (6, 5))
  d = extreme_logits(59, (6, 5))
  got = losses.token_predictions(c, d)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(np.sum(np.exp(as_f64(got)), -1), 1.0, rtol=1e-6)
  grad = jit_grad(lambda a: jnp.sum(losses.token_predictions(a, d)[:, 0]))(c)
  assert np.all(np.isfinite(grad))
  for dtype in LOW_PRECISION:
    cl, dl = jnp.asarray(rand_logits(60, (3, 4)), dtype), jnp.asarray(rand_logits(61, (3, 4)),
                                                                       dtype)
    want = np.log(0.5 * (np_softmax(as_f64(cl)) + np_softmax(as_f64(dl))))
    got = losses.token_predictions(cl, dl)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# The teacher is never differentiated.
# ---------------------------------------------------------------------------


def test_no_gradient_into_teacher():
  s = rand_logits(62, (4, 5))
  t = rand_logits(63, (4, 5))
  y = rand_labels(64, (4,), 5)
  fns = {
      "dkd": lambda tt: losses.dkd_loss(s, tt, y),
      "dist": lambda tt: losses.dist_loss(s, tt, temperature=2.0),
      "hint_mse": lambda tt: losses.hint_loss(s, tt),
      "hint_cosine": lambda tt: losses.hint_loss(s, tt, kind="cosine"),
      "token_hard": lambda tt: losses.token_loss(s, s, y, tt),
      "token_soft": lambda tt: losses.token_loss(s, s, y, tt, variant="soft", temperature=3.0),
  }
  for name, fn in fns.items():
    np.testing.assert_array_equal(jit_grad(fn)(t), 0.0, err_msg=name)


# ---------------------------------------------------------------------------
# Step-0 expectations equal the losses at a uniform student.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", LEADING_SHAPES)
@pytest.mark.parametrize("n_classes", CLASSES)
@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_expected_init_dkd(shape, n_classes, alpha, beta, temperature):
  t = rand_logits(65, (*shape, n_classes), scale=3.0)
  y = rand_labels(66, shape, n_classes)
  want = losses.dkd_loss(np.zeros_like(t), t, y, alpha=alpha, beta=beta, temperature=temperature)
  got = losses.expected_init_dkd(t, y, alpha=alpha, beta=beta, temperature=temperature)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # And the closed form from the docstring, in float64.
  pt = np_softmax(t, temperature).reshape(-1, n_classes)
  closed = []
  for p, label in zip(pt, y.reshape(-1), strict=True):
    p_t = p[label]
    q = np.delete(p, label) / (1.0 - p_t)
    tckd = p_t * np.log(n_classes * p_t) + (1 - p_t) * np.log(
        n_classes * (1 - p_t) / (n_classes - 1))
    nckd = np.log(n_classes - 1) + np.sum(q * np.log(q))
    closed.append((alpha * tckd + beta * nckd) * temperature**2)
  np.testing.assert_allclose(got, np.mean(closed), rtol=1e-5)


def test_expected_init_dkd_confident_teacher():
  t = extreme_logits(67, (8, 5))
  y = rand_labels(68, (8,), 5)
  got = losses.expected_init_dkd(t, y, temperature=1.0)
  assert math.isfinite(got)
  zeros = np.zeros_like(t)
  np.testing.assert_allclose(got, losses.dkd_loss(zeros, t, y, temperature=1.0), rtol=1e-6)
  # The non-target renormalisation must not lose precision next to logits of
  # -1e4 (float32 spacing ~1e-3 there).
  want = np_dkd_logspace(zeros, t, y, 1.0, 8.0, 1.0)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-6)
  np.testing.assert_allclose(losses.dkd_loss(zeros, t, y, temperature=1.0, reduction="none"),
                             want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 5)])
def test_expected_init_hint(kind, shape):
  t = rand_logits(69, shape)
  got = losses.expected_init_hint(t, kind=kind)
  np.testing.assert_allclose(got, losses.hint_loss(np.zeros_like(t), t, kind=kind), rtol=1e-6)
  if kind == "mse":
    np.testing.assert_allclose(got, np.mean(as_f64(t) ** 2), rtol=1e-6)
  else:
    assert got == 1.0


@pytest.mark.parametrize("n_classes", CLASSES)
@pytest.mark.parametrize("variant,temperature", [("hard", 1.0), ("hard", 3.0), ("soft", 1.0),
                                                 ("soft", 3.0)])
def test_expected_init_token(n_classes, variant, temperature):
  t = rand_logits(70, (6, n_classes), scale=3.0)
  y = rand_labels(71, (6,), n_classes)
  zeros = np.zeros_like(t)
  got = losses.expected_init_token(n_classes, variant=variant, temperature=temperature)
  want = losses.token_loss(zeros, zeros, y, t, variant=variant, temperature=temperature)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if variant == "hard" or temperature == 1.0:
    assert got == pytest.approx(math.log(n_classes))


def test_expected_init_token_takes_a_numpy_n_classes():
  # `labels.max() + 1` is an np.int64.
  assert losses.expected_init_token(np.int64(5)) == pytest.approx(math.log(5))


# ---------------------------------------------------------------------------
# Validation and exports.
# ---------------------------------------------------------------------------


# Each call with the start of the message its own check raises: a bare ValueError would also
# accept one JAX raises for a bad shape deeper in, so a missing check could go unnoticed.
@pytest.mark.parametrize("call, message", [
    (lambda s, y: losses.dkd_loss(s, s, y, alpha=-1.0), "alpha must be finite and >= 0, got -1.0"),
    (lambda s, y: losses.dkd_loss(s, s, y, beta=float("nan")),
     "beta must be finite and >= 0, got nan"),
    (lambda s, y: losses.dkd_loss(s, s, y, alpha=None), "alpha must be a Python number, got None"),
    (lambda s, y: losses.dkd_loss(s, s, y, temperature=0.0),
     "temperature must be finite and > 0, got 0.0"),
    (lambda s, y: losses.dkd_loss(s, s, y, reduction="avg"), "unknown reduction 'avg'"),
    (lambda s, y: losses.dkd_loss(s[:, :1], s[:, :1], y),
     "student_logits must have at least 2 classes on the last axis, got shape (4, 1)"),
    (lambda s, y: losses.dkd_loss(s, s[:, :4], y),
     "student_logits shape (4, 5) must equal teacher_logits shape (4, 4)"),
    (lambda s, y: losses.dkd_loss(s, s, y.astype(np.float32)),
     "labels must be integer class indices, got dtype float32"),
    (lambda s, y: losses.dkd_loss(s, s, np.eye(5, dtype=np.float32)[y]),
     "labels must be integer class indices, got one-hot rows (dtype float32, shape (4, 5)); "
     "pass labels.argmax(-1)"),
    (lambda s, y: losses.dkd_loss(s, s, y, temperature="2"),
     "temperature must be a positive number, got '2' (a str)"),
    (lambda s, y: losses.dist_loss(s, s, temperature=True),
     "temperature must be a positive number, got True (a bool)"),
    (lambda s, y: losses.token_loss(s, s, y, s, temperature="abc"),
     "temperature must be a positive number, got 'abc' (a str)"),
    (lambda s, y: losses.expected_init_token(np.bool_(True)), "n_classes must be an int"),
    (lambda s, y: losses.dkd_loss(s[:, :0], s[:, :0], y),
     "student_logits have no classes (shape (4, 0))"),
    (lambda s, y: losses.dkd_loss(s, s, y[:3]),
     "labels shape (3,) must equal the logits shape without the class axis (4,)"),
    (lambda s, y: losses.dist_loss(s, s, beta=-1.0), "beta must be finite and >= 0, got -1.0"),
    (lambda s, y: losses.dist_loss(s, s, gamma=float("inf")),
     "gamma must be finite and >= 0, got inf"),
    (lambda s, y: losses.dist_loss(s, s, temperature=-2.0),
     "temperature must be finite and > 0, got -2.0"),
    (lambda s, y: losses.dist_loss(s[None], s[None]),
     "dist_loss needs a [batch, classes] batch, got shape (1, 4, 5)"),
    (lambda s, y: losses.dist_loss(s[0], s[0]),
     "dist_loss needs a [batch, classes] batch, got shape (5,)"),
    (lambda s, y: losses.dist_loss(s[:1], s[:1]),
     "gamma=1.0 > 0 weights the intra-class term"),
    (lambda s, y: losses.dist_loss(s[:, :1], s[:, :1]),
     "student_logits must have at least 2 classes on the last axis, got shape (4, 1)"),
    (lambda s, y: losses.dist_loss(s, s[:3]),
     "student_logits shape (4, 5) must equal teacher_logits shape (3, 5)"),
    (lambda s, y: losses.hint_loss(s, s, kind="l1"), "unknown kind 'l1'"),
    (lambda s, y: losses.hint_loss(s, s, reduction="max"), "unknown reduction 'max'"),
    (lambda s, y: losses.hint_loss(s[0], s[0]),
     "features must be [batch, ..., dim], at least 2-D, got shape (5,)"),
    (lambda s, y: losses.hint_loss(s, s[:, :3]),
     "student_features shape (4, 5) must equal teacher_features shape (4, 3)"),
    (lambda s, y: losses.token_loss(s, s, y, s, variant="medium"), "unknown variant 'medium'"),
    (lambda s, y: losses.token_loss(s, s, y, s, temperature=float("nan")),
     "temperature must be finite and > 0, got nan"),
    (lambda s, y: losses.token_loss(s, s, y, s, reduction=None), "unknown reduction None"),
    (lambda s, y: losses.token_loss(s, s[:, :3], y, s),
     "distill_logits shape (4, 3) must equal class_logits shape (4, 5)"),
    (lambda s, y: losses.token_loss(s, s, y, s[:, :3]),
     "teacher_logits shape (4, 3) must equal class_logits shape (4, 5)"),
    (lambda s, y: losses.token_predictions(s, s[:3]),
     "distill_logits shape (3, 5) must equal class_logits shape (4, 5)"),
    (lambda s, y: losses.expected_init_dkd(s, y, alpha=-0.5),
     "alpha must be finite and >= 0, got -0.5"),
    (lambda s, y: losses.expected_init_dkd(s[:, :1], y),
     "teacher_logits must have at least 2 classes on the last axis, got shape (4, 1)"),
    (lambda s, y: losses.expected_init_dist(beta=-1.0), "beta must be finite and >= 0, got -1.0"),
    (lambda s, y: losses.expected_init_dist(temperature=0.0),
     "temperature must be finite and > 0, got 0.0"),
    (lambda s, y: losses.expected_init_hint(s, kind="l2"), "unknown kind 'l2'"),
    (lambda s, y: losses.expected_init_hint(s[0]),
     "features must be [batch, ..., dim], at least 2-D, got shape (5,)"),
    (lambda s, y: losses.expected_init_token(1), "n_classes must be >= 2, got 1"),
    (lambda s, y: losses.expected_init_token(5, variant="x"), "unknown variant 'x'"),
    (lambda s, y: losses.expected_init_token(5, temperature=0.0),
     "temperature must be finite and > 0, got 0.0"),
])
def test_bad_arguments_raise(call, message):
  s = rand_logits(72, (4, 5))
  y = rand_labels(73, (4,), 5)
  with pytest.raises(ValueError, match="^" + re.escape(message)):
    call(s, y)


def test_top_level_exports():
  # Every public function of the loss library, its step-0 expectations too.
  public = [name for name, value in vars(losses).items()
            if callable(value) and not name.startswith("_")
            and getattr(value, "__module__", None) == losses.__name__]
  assert "expected_init_dkd" in public and "dist_loss" in public
  for name in public:
    assert getattr(distill, name) is getattr(losses, name)
    assert name in distill.__all__

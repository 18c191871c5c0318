"""Distillation losses as pure jax.numpy functions (evaluation metrics: `distill.metrics`).

Every function here takes logits with classes on the last axis and any leading
batch shape (but ``dist_loss``, whose intra-class term correlates over the
batch: exactly ``[B, C]``), and computes in float32 whatever the input dtype, so bf16/f16
model outputs are safe: a log-softmax in bf16 loses most of its precision.
Probabilities are always derived from a max-shifted log-softmax (never
``log(softmax(x))``), which keeps results finite for logits as large as
+-1e4.

Losses take ``reduction`` (but ``dist_loss``, one number for the batch it couples):

* ``'mean'`` (default): the mean over every leading (batch) element.
* ``'sum'``: the sum over every leading element.
* ``'none'``: the per-example array, with the leading shape of the logits.

Hyperparameters (temperature, alpha, label smoothing, reduction, kind) are
Python values checked eagerly, so a mistake raises a ``ValueError`` before
anything is traced. Under ``jax.jit`` pass them as static arguments.

What the teacher is given as differs by loss, so read the argument names:

* ``target_probs`` (soft_cross_entropy, kl_divergence, distillation_loss):
  probabilities, e.g. ``softmax(teacher_logits, temperature=T)``;
* ``teacher_logits`` (dkd_loss, dist_loss, token_loss): logits, which the
  loss divides by T and softmaxes itself. Probabilities are valid logits too,
  so passing them here cannot be refused: it gives a different loss silently.

Concrete arrays are also checked for values: labels must lie in [0, C) and
``target_probs`` rows must be >= 0 and sum to 1 (within 1e-2), else a one-line
``ValueError`` says what to pass. Traced arrays (any array inside
``jax.jit``, or one that ``grad`` differentiates or ``vmap`` maps over) are
not checked, since reading them would need a host sync, so a compiled loss is
unchanged: there a bad label gives NaN for its example.

Teacher targets are wrapped in ``jax.lax.stop_gradient`` inside the soft
losses: a distillation loss must never push gradients into the teacher, even
when the caller forgets to stop them.

Example::

  loss = distillation_loss(
      student_logits,
      target_probs=softmax(teacher_logits, temperature=4.0),
      labels=labels,
      temperature=4.0,
      alpha=0.9,
  )
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from distill._inputs import (
  _as_labels,
  _as_logits,
  _as_targets,
  _as_teacher,
  _check_alpha,
  _check_choice,
  _check_label_smoothing,
  _check_n_classes,
  _check_probabilities,
  _check_reduction,
  _check_same_shape,
  _check_temperature,
  _check_two_classes,
  _check_weight,
  _reduce,
)

_SOFT_KINDS = ("soft_ce", "kl")
_INIT_KINDS = ("soft_ce", "kl", "hard")


# ---------------------------------------------------------------------------
# Softmax.
# ---------------------------------------------------------------------------


def log_softmax(logits, temperature=1.0):
  """Numerically stable log-softmax over the last axis, in float32.

  Args:
    logits: array [..., C] of any float dtype.
    temperature: Python number > 0; the logits are divided by it.

  Returns:
    float32 array [..., C] of log-probabilities of ``logits / temperature``.
  """
  t = _check_temperature(temperature)
  x = _as_logits(logits) / t
  # The shift cancels analytically, so it needs no gradient; stopping it
  # avoids a spurious gradient path through argmax ties.
  shift = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  shifted = x - shift
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def softmax(logits, temperature=1.0):
  """Numerically stable softmax over the last axis, in float32.

  Args:
    logits: array [..., C] of any float dtype.
    temperature: Python number > 0; the logits are divided by it.

  Returns:
    float32 array [..., C] of probabilities of ``logits / temperature``.
  """
  return jnp.exp(log_softmax(logits, temperature))


# ---------------------------------------------------------------------------
# Losses.
# ---------------------------------------------------------------------------


def _gather_label(logp, labels):
  """logp[..., label], NaN for labels outside [0, C)."""
  n_classes = logp.shape[-1]
  # Map negative labels out of range so that they, like labels >= C, gather
  # NaN instead of silently wrapping around to the last classes.
  idx = jnp.where(labels < 0, n_classes, labels)
  return jnp.take_along_axis(
      logp, idx[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]


def _hard_ce_per_example(logits, labels, label_smoothing):
  logp = log_softmax(logits)
  nll = -_gather_label(logp, labels)
  if label_smoothing == 0.0:
    return nll
  # Target (1 - s) * one_hot + s / C, written as a mix of the two CEs.
  uniform_ce = -jnp.mean(logp, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform_ce


def hard_cross_entropy(logits, labels, *, label_smoothing=0.0,
                       reduction="mean"):
  """Cross-entropy against integer labels, optionally label-smoothed.

  Concrete labels outside [0, C) raise ValueError; traced ones (under
  jax.jit, where they cannot be read) give NaN for their example rather than
  a silently wrong loss.

  Args:
    logits: array [..., C] of any float dtype.
    labels: integer array [...] of class indices in [0, C).
    label_smoothing: Python number in [0, 1); the target is
      ``(1 - label_smoothing) * one_hot + label_smoothing / C``.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for bad hyperparameters, non-integer labels, concrete labels
      outside [0, C) or mismatched shapes.
  """
  _check_reduction(reduction)
  s = _check_label_smoothing(label_smoothing)
  x = _as_logits(logits)
  y = _as_labels(labels, x, soft_ce=True)
  return _reduce(_hard_ce_per_example(x, y, s), reduction)


def _soft_ce_per_example(logits, targets, temperature):
  return -jnp.sum(targets * log_softmax(logits, temperature), axis=-1)


def _safe_log(targets):
  """log(targets) where targets > 0, and 0 elsewhere (so that 0 * log 0 = 0).

  Feeding log a safe 1 where the target is 0 keeps both the value and the
  gradient of the masked branch finite (no 0 * inf = nan).
  """
  return jnp.log(jnp.where(targets > 0, targets, 1.0))


def _kl_per_example(logits, targets, temperature):
  logp = log_softmax(logits, temperature)
  terms = jnp.where(targets > 0, targets * (_safe_log(targets) - logp), 0.0)
  return jnp.sum(terms, axis=-1)


def soft_cross_entropy(logits, target_probs, *, temperature=1.0,
                       reduction="mean"):
  """Cross-entropy against a target distribution: -sum(t * log_softmax(x/T)).

  No T^2 factor is applied here; ``distillation_loss`` applies it. Targets are
  not differentiated (stop_gradient).

  Args:
    logits: array [..., C] of student logits, any float dtype.
    target_probs: array [..., C] of target probabilities, not logits: e.g.
      ``softmax(teacher_logits, temperature=T)`` at the same temperature.
    temperature: Python number > 0 dividing the student logits.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for a bad temperature or reduction, mismatched shapes, or
      concrete target_probs that are not probabilities (a negative entry, or
      a row not summing to 1 within 1e-2).
  """
  _check_reduction(reduction)
  t = _check_temperature(temperature)
  x = _as_logits(logits)
  targets = _as_targets(target_probs, x)
  return _reduce(_soft_ce_per_example(x, targets, t), reduction)


def kl_divergence(logits, target_probs, *, temperature=1.0, reduction="mean"):
  """KL(target || softmax(logits / T)) = sum(t * (log t - log_softmax(x/T))).

  Zero target entries contribute 0 (0 * log 0 = 0) with a finite gradient, so
  one-hot or sparse targets are fine. It differs from soft_cross_entropy only
  by the target entropy, a constant for the student, so both give the same
  gradients; KL is 0 at a perfect match, which makes it easier to read.

  Args:
    logits: array [..., C] of student logits, any float dtype.
    target_probs: array [..., C] of target probabilities summing to 1, not
      logits: e.g. ``softmax(teacher_logits, temperature=T)``; not
      differentiated (stop_gradient).
    temperature: Python number > 0 dividing the student logits.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for a bad temperature or reduction, mismatched shapes, or
      concrete target_probs that are not probabilities (a negative entry, or
      a row not summing to 1 within 1e-2).
  """
  _check_reduction(reduction)
  t = _check_temperature(temperature)
  x = _as_logits(logits)
  targets = _as_targets(target_probs, x)
  return _reduce(_kl_per_example(x, targets, t), reduction)


def distillation_loss(student_logits, *, target_probs=None, labels=None,
                      temperature=1.0, alpha=1.0, kind="soft_ce",
                      label_smoothing=0.0, reduction="mean"):
  """Hinton-style distillation: a soft teacher term mixed with hard labels.

  ``alpha * T**2 * soft + (1 - alpha) * hard_CE(student_logits, labels)``,
  where ``soft`` is soft_cross_entropy or kl_divergence of the student logits
  at temperature T against ``target_probs``, and the hard term uses T = 1.
  The T**2 factor keeps the soft gradients on the same scale as the hard ones
  when T changes (the soft gradient shrinks as 1/T**2).

  A term whose weight is 0 is not computed, so ``alpha=1`` needs no labels and
  ``alpha=0`` needs no targets.

  Args:
    student_logits: array [..., C], any float dtype.
    target_probs: array [..., C] of teacher probabilities, not logits:
      normally ``softmax(teacher_logits, temperature=T)`` at the same
      temperature; never differentiated. Required when alpha > 0.
    labels: integer array [...] of class indices in [0, C). Required when
      alpha < 1.
    temperature: Python number, finite and > 0.
    alpha: Python number in [0, 1], the weight of the soft term.
    kind: 'soft_ce' or 'kl', the soft term.
    label_smoothing: Python number in [0, 1) for the hard term.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for any invalid hyperparameter, a missing input, mismatched
      shapes, or (for concrete arrays) labels outside [0, C) or target_probs
      that are not probabilities.
  """
  _check_reduction(reduction)
  t = _check_temperature(temperature)
  a = _check_alpha(alpha)
  s = _check_label_smoothing(label_smoothing)
  _check_choice("kind", kind, _SOFT_KINDS)
  if a > 0.0 and target_probs is None:
    raise ValueError(
        f"alpha={alpha} > 0 weights the soft term, so target_probs is "
        "required (pass the teacher softmax, or alpha=0 for labels only)")
  if a < 1.0 and labels is None:
    raise ValueError(
        f"alpha={alpha} < 1 weights the hard term, so labels are required "
        "(pass labels, or alpha=1 for the teacher only)")

  x = _as_logits(student_logits, "student_logits")
  per_example = jnp.zeros(x.shape[:-1], jnp.float32)
  if a > 0.0:
    targets = _as_targets(target_probs, x)
    soft_fn = _soft_ce_per_example if kind == "soft_ce" else _kl_per_example
    per_example = per_example + a * t * t * soft_fn(x, targets, t)
  if a < 1.0:
    y = _as_labels(labels, x)
    per_example = per_example + (1.0 - a) * _hard_ce_per_example(x, y, s)
  return _reduce(per_example, reduction)


# ---------------------------------------------------------------------------
# Initial-loss sanity check.
# ---------------------------------------------------------------------------


def expected_init_loss(n_classes, *, kind="soft_ce", temperature=1.0,
                       alpha=1.0, target_probs=None):
  """The loss a model predicting the uniform distribution must have.

  A freshly initialised classifier should predict roughly uniformly, so its
  first loss should be close to this value; a large gap means a badly scaled
  head or wrong targets/labels. Per kind, for uniform predictions:

  * 'hard': hard cross-entropy = log(C), label smoothing or not.
  * 'soft_ce': soft cross-entropy = log(C) whatever the targets, since they
    sum to 1.
  * 'kl': log(C) - H(target), with H averaged over the batch; this needs
    ``target_probs``.

  For 'soft_ce' and 'kl' the result is combined as distillation_loss combines
  it: ``alpha * T**2 * soft + (1 - alpha) * log(C)`` (mean reduction).

  Args:
    n_classes: number of classes C (int >= 2).
    kind: 'soft_ce', 'kl' or 'hard'. For 'hard', temperature and alpha are
      ignored.
    temperature: Python number > 0, as passed to distillation_loss.
    alpha: Python number in [0, 1], as passed to distillation_loss.
    target_probs: array [..., C] of target probabilities (not logits);
      required for kind='kl' with alpha > 0, ignored otherwise.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: for invalid arguments, missing target_probs, or concrete
      target_probs that are not probabilities.
  """
  c = _check_n_classes(n_classes)
  _check_choice("kind", kind, _INIT_KINDS)
  log_c = math.log(c)
  if kind == "hard":
    return log_c
  t = _check_temperature(temperature)
  a = _check_alpha(alpha)
  soft = log_c
  if kind == "kl" and a > 0.0:
    if target_probs is None:
      raise ValueError(
          "kind='kl' needs target_probs: the expected KL is log(C) minus the "
          "mean entropy of the targets")
    targets = jnp.asarray(target_probs, jnp.float32)
    if targets.ndim < 1 or targets.shape[-1] != c:
      raise ValueError(
          f"target_probs must have {c} classes on the last axis, got shape "
          f"{targets.shape}")
    # The entropy below means nothing for logits or unnormalised rows.
    _check_probabilities(target_probs)
    # Same 0 * log 0 = 0 convention as kl_divergence.
    plogp = targets * _safe_log(targets)
    soft = log_c + float(jnp.mean(jnp.sum(plogp, axis=-1)))
  return a * t * t * soft + (1.0 - a) * log_c


@dataclasses.dataclass(frozen=True)
class InitLossCheck:
  """Outcome of init_loss_check.

  Attributes:
    measured: the loss that was measured.
    expected: the loss a uniform predictor would have.
    tolerance: the relative tolerance used.
    ok: whether ``|measured - expected| <= tolerance * |expected|`` and
      measured is finite.
    message: one human-readable line; starts with 'WARNING:' when not ok.
  """
  measured: float
  expected: float
  tolerance: float
  ok: bool
  message: str


def init_loss_check(loss, n_classes, *, expected=None, tolerance=0.05):
  """Compares a model's first loss with the loss of a uniform predictor.

  The check is relative: it passes when
  ``|measured - expected| <= tolerance * |expected|``, so the default 0.05
  allows 5% either way. A non-finite loss always fails. Nothing is printed or
  raised; the caller decides what to do with the result.

  Args:
    loss: the measured loss, a Python number or a scalar array.
    n_classes: number of classes C (int >= 2).
    expected: the expected loss; defaults to log(C). Pass
      expected_init_loss(...) for KL or temperature-scaled losses.
    tolerance: relative tolerance, a finite Python number >= 0.

  Returns:
    An InitLossCheck, with a one-line message such as
    ``init loss 2.3026 vs expected log(10) = 2.3026 (ok)``.

  Raises:
    ValueError: for invalid n_classes or tolerance.
  """
  c = _check_n_classes(n_classes)
  tol = float(tolerance)
  if not math.isfinite(tol) or tol < 0.0:
    raise ValueError(f"tolerance must be finite and >= 0, got {tolerance!r}")
  measured = float(loss)
  if expected is None:
    exp_value = math.log(c)
    exp_text = f"log({c}) = {exp_value:.4f}"
  else:
    exp_value = float(expected)
    exp_text = f"{exp_value:.4f}"

  if not math.isfinite(measured):
    return InitLossCheck(
        measured=measured, expected=exp_value, tolerance=tol, ok=False,
        message=(f"WARNING: init loss {measured} is not finite (expected "
                 f"{exp_text}): the head is badly scaled or the "
                 "targets/labels are wrong"))

  diff = abs(measured - exp_value)
  ok = diff <= tol * abs(exp_value)
  if ok:
    message = f"init loss {measured:.4f} vs expected {exp_text} (ok)"
  else:
    rel = diff / abs(exp_value) if exp_value != 0.0 else math.inf
    # Below 1% in two significant figures: a tolerance of 0 must not read 'off by 0%'.
    rel_text = f"{rel:.0%}" if rel >= 0.01 else f"{100 * rel:#.2g}%"
    message = (f"WARNING: init loss {measured:.4f} is far from expected "
               f"{exp_text} (rel. diff {rel_text}, tolerance {100 * tol:g}%): the head is badly "
               "scaled or the targets/labels are wrong")
  return InitLossCheck(measured=measured, expected=exp_value, tolerance=tol,
                       ok=ok, message=message)


# ---------------------------------------------------------------------------
# Method losses: DKD, DIST, feature hints and the DeiT distillation token,
# with the loss each must have at step 0 for a uniform student.
# ---------------------------------------------------------------------------

_HINT_KINDS = ("mse", "cosine")
_TOKEN_VARIANTS = ("hard", "soft")
# DIST's Pearson eps, as in the reference code; also the norm floor of the
# cosine hint (torch.nn.functional.cosine_similarity's default).
_EPS = 1e-8


def _max_and_lse_where(x, where):
  """(m, log(sum(exp(x - m)))) over the entries where ``where``, keepdims.

  m is the max of the included entries along the last axis. Excluded entries
  become exactly -inf inside the sum, so they contribute exp(-inf) = 0 and no
  gradient: exact masking, never a finite offset that a large logit could
  outweigh. At least one entry per row must be included. The two parts are
  returned apart because adding them rounds: at logits of 1e4 float32 spacing
  is ~1e-3, which must not land on a log-probability near 0.
  """
  masked = jnp.where(where, x, -jnp.inf)
  # The shift cancels analytically (see log_softmax); it is finite because
  # some entry is included.
  shift = jax.lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True))
  lse = jnp.log(jnp.sum(jnp.exp(masked - shift), axis=-1, keepdims=True))
  return shift, lse


def _dkd_parts(z, is_target, labels):
  """The pieces DKD needs from one model's scaled logits z = logits / T.

  Returns (log p_t, log(1 - p_t), log q) where q is the distribution over
  the non-target classes renormalised to sum to 1 (the entry of log q at the
  target is finite but meaningless).

  * log(1 - p_t) is a logsumexp over the non-target log-probabilities, never
    log1p(-p_t): p_t rounds to 1 for a confident model, and log(0) = -inf.
  * log q is the log-softmax of the non-target logits themselves, shifted by
    their own max, not log p - log(1 - p_t): when the target dominates, both
    of those are ~-2e4 and their difference keeps only float32's ~1e-3
    absolute precision there, which NCKD (weighted by beta) would amplify.
  """
  logp = log_softmax(z)
  log_pt = _gather_label(logp, labels)
  shift, lse = _max_and_lse_where(logp, ~is_target)
  z_shift, z_lse = _max_and_lse_where(z, ~is_target)
  return log_pt, (shift + lse)[..., 0], (z - z_shift) - z_lse


def _dkd_per_example(xs, xt, labels, alpha, beta, t):
  is_target = jnp.arange(xs.shape[-1]) == labels[..., None]
  s_t, s_nt, s_q = _dkd_parts(xs / t, is_target, labels)
  t_t, t_nt, t_q = _dkd_parts(xt / t, is_target, labels)
  # Binary KL(b_t || b_s); exp of a log-probability is <= 1, so every term is
  # finite even when a probability underflows to 0.
  tckd = jnp.exp(t_t) * (t_t - s_t) + jnp.exp(t_nt) * (t_nt - s_nt)
  # Teacher weights of the non-target KL, exactly 0 at the target: exp of
  # -inf there, not exp(t_q) (which may overflow) zeroed afterwards, so no
  # 0 * inf reaches the gradient.
  t_w = jnp.exp(jnp.where(is_target, -jnp.inf, t_q))
  nckd = jnp.sum(t_w * (t_q - s_q), axis=-1)
  return (alpha * tckd + beta * nckd) * (t * t)


def dkd_loss(student_logits, teacher_logits, labels, *, alpha=1.0, beta=8.0,
             temperature=4.0, reduction="mean"):
  """Decoupled knowledge distillation (DKD; Zhao et al., CVPR 2022).

  With p = softmax(logits / T) and t the label of an example:

  * b = [p_t, 1 - p_t], the binary target / non-target probabilities, and
    ``TCKD = KL(b_teacher || b_student)``;
  * q_k = p_k / (1 - p_t) for k != t, the non-target classes renormalised,
    and ``NCKD = KL(q_teacher || q_student)``;
  * ``loss = (alpha * TCKD + beta * NCKD) * T**2`` per example, then reduced
    (the default mean matches mdistiller's ``kl_div(size_average=False) *
    T**2 / batch``).

  Unlike the reference code (which masks the target with a -1000 offset and
  takes the log of probabilities, so logits of +-1e4 give inf/nan or a wrong
  NCKD) everything is computed in log space with exact masking: log p_t from
  the log-softmax, log(1 - p_t) as a logsumexp over the non-target
  log-probabilities. DKD's warm-up (ramping the loss weight over the first
  epochs) is a training schedule concern and is not done here.

  Args:
    student_logits: array [..., C] (C >= 2), any float dtype.
    teacher_logits: array [..., C] of the teacher's logits, not
      probabilities (softmaxed here at T; probabilities would be read as
      logits, a silently different loss); never differentiated.
    labels: integer array [...] of class indices in [0, C); concrete labels
      outside raise ValueError, traced ones give NaN for their example.
    alpha: Python number >= 0, weight of TCKD.
    beta: Python number >= 0, weight of NCKD.
    temperature: Python number > 0 applied to both models.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for bad hyperparameters, fewer than 2 classes, non-integer
      labels, concrete labels outside [0, C) or mismatched shapes.
  """
  _check_reduction(reduction)
  a = _check_weight("alpha", alpha)
  b = _check_weight("beta", beta)
  t = _check_temperature(temperature)
  xs = _as_logits(student_logits, "student_logits")
  xt = _as_teacher(teacher_logits, "teacher_logits")
  _check_same_shape(xs, xt, "student_logits", "teacher_logits")
  _check_two_classes(xs, "student_logits")
  y = _as_labels(labels, xs)
  return _reduce(_dkd_per_example(xs, xt, y, a, b, t), reduction)


def _centred(x, axis):
  """x - mean(x) along ``axis``, exactly 0 for a constant vector.

  The mean is taken of the differences from the first element: the same
  function, but a float32 mean of C equal values need not equal them (for
  C = 10 it is off by ~1e-9, comparable to the Pearson eps), while the
  differences of equal values are exactly 0.
  """
  d = x - jax.lax.index_in_dim(x, 0, axis=axis, keepdims=True)
  return d - jnp.mean(d, axis=axis, keepdims=True)


def _safe_norm(x, axis):
  """Euclidean norm along ``axis`` with gradient 0 (not nan) at 0."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pearson(a, b, axis):
  """DIST's Pearson: cosine of the centred vectors, eps in the denominator."""
  a = _centred(a, axis)
  b = _centred(b, axis)
  return (jnp.sum(a * b, axis=axis)
          / (_safe_norm(a, axis) * _safe_norm(b, axis) + _EPS))


def dist_loss(student_logits, teacher_logits, *, beta=1.0, gamma=1.0,
              temperature=1.0):
  """DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022).

  With y = softmax(logits / T) for a batch [B, C] and
  ``pearson(u, v) = <u - mean u, v - mean v> / (|u - mean u| |v - mean v| +
  1e-8)`` (the reference code's eps):

  * ``inter = 1 - mean_i pearson(y_s[i, :], y_t[i, :])`` (over each row's
    classes);
  * ``intra = 1 - mean_c pearson(y_s[:, c], y_t[:, c])`` (over the batch);
  * ``loss = T**2 * (beta * inter + gamma * intra)``.

  The loss couples the examples of a batch, so it takes exactly one batch
  axis and has no ``reduction``.

  Step 0: a uniform student (e.g. a zero-initialised head) has constant
  probabilities, so every centred row and column is exactly 0 (the centring
  is exact for constant vectors, see ``_centred``), each Pearson is
  0 / (0 + eps) = 0, and the loss is exactly ``T**2 * (beta + gamma)``
  whatever the teacher (see expected_init_dist). Its gradient there is
  finite but of order 1 / eps, as in the reference code: the eps-regularised
  Pearson turns from -1 to 1 within ~eps of a constant vector. Clip
  gradients (or initialise the head randomly) when DIST starts from an
  exactly uniform student.

  Args:
    student_logits: array [B, C] (C >= 2; B >= 2 unless gamma = 0), any
      float dtype.
    teacher_logits: array [B, C] of the teacher's logits, not probabilities
      (softmaxed here at T); never differentiated (stop_gradient).
    beta: Python number >= 0, weight of the inter-class (per-example) term.
    gamma: Python number >= 0, weight of the intra-class (per-class) term.
    temperature: Python number > 0 applied to both models.

  Returns:
    float32 scalar.

  Raises:
    ValueError: for bad hyperparameters, inputs that are not [B, C], or
      mismatched shapes.
  """
  b = _check_weight("beta", beta)
  g = _check_weight("gamma", gamma)
  t = _check_temperature(temperature)
  xs = _as_logits(student_logits, "student_logits")
  xt = _as_teacher(teacher_logits, "teacher_logits")
  _check_same_shape(xs, xt, "student_logits", "teacher_logits")
  if xs.ndim != 2:
    raise ValueError(
        f"dist_loss needs a [batch, classes] batch, got shape {xs.shape}")
  _check_two_classes(xs, "student_logits")
  if g > 0.0 and xs.shape[0] < 2:
    raise ValueError(
        f"gamma={gamma} > 0 weights the intra-class term, a correlation "
        f"across the batch, which needs at least 2 examples; got shape "
        f"{xs.shape}")
  ys = softmax(xs, t)
  yt = softmax(xt, t)
  loss = jnp.zeros((), jnp.float32)
  # A term whose weight is 0 is not computed, so gamma=0 works for B=1.
  if b > 0.0:
    loss = loss + b * (1.0 - jnp.mean(_pearson(ys, yt, axis=1)))
  if g > 0.0:
    loss = loss + g * (1.0 - jnp.mean(_pearson(ys, yt, axis=0)))
  return (t * t) * loss


def hint_loss(student_features, teacher_features, *, kind="mse",
              reduction="mean"):
  """FitNets-style feature matching (hints) on projected student features.

  The student features must already be projected to the teacher's shape
  [B, ..., D] (the projection is part of the student). Per example b:

  * 'mse': ``mean over every non-batch element of (s - t)**2``;
  * 'cosine': ``1 - cos(s, t)`` along the last axis, averaged over the other
    non-batch axes, with ``cos(s, t) = <s, t> / (max(|s|, 1e-8) *
    max(|t|, 1e-8))`` (torch's cosine_similarity), so a zero vector has
    cosine 0 and loss 1.

  With a zero-initialised projection the cosine's gradient at step 0 is
  finite but of order 1e8 (cosine is scale-invariant, so it changes fastest
  next to 0): clip gradients, or use 'mse' there.

  Args:
    student_features: array [B, ..., D] (at least 2-D), any float dtype.
    teacher_features: array of the same shape; never differentiated.
    kind: 'mse' or 'cosine'.
    reduction: 'mean', 'sum' or 'none' over the batch axis.

  Returns:
    float32 scalar, or float32 array [B] for reduction='none'.

  Raises:
    ValueError: for an unknown kind or reduction, fewer than 2 axes, or
      mismatched shapes.
  """
  _check_reduction(reduction)
  _check_choice("kind", kind, _HINT_KINDS)
  s = _as_logits(student_features, "student_features")
  t = _as_teacher(teacher_features, "teacher_features")
  _check_same_shape(s, t, "student_features", "teacher_features")
  if s.ndim < 2:
    raise ValueError(
        f"features must be [batch, ..., dim], at least 2-D, got shape "
        f"{s.shape}")
  if kind == "mse":
    per_example = jnp.mean(jnp.square(s - t), axis=tuple(range(1, s.ndim)))
  else:
    norms = (jnp.maximum(_safe_norm(s, -1), _EPS)
             * jnp.maximum(_safe_norm(t, -1), _EPS))
    cos = jnp.sum(s * t, axis=-1) / norms
    per_example = jnp.mean(1.0 - cos, axis=tuple(range(1, s.ndim - 1)))
  return _reduce(per_example, reduction)


def token_loss(class_logits, distill_logits, labels, teacher_logits, *,
               variant="hard", temperature=1.0, reduction="mean"):
  """DeiT's distillation-token loss (Touvron et al., ICML 2021).

  The class token's head learns the labels and the distillation token's head
  learns the teacher, with equal weights:

  * 'hard': ``0.5 * CE(class, labels) + 0.5 * CE(distill, argmax teacher)``;
  * 'soft': ``0.5 * CE(class, labels) + 0.5 * T**2 *
    soft_CE(distill / T, softmax(teacher / T))``.

  The soft term is a cross-entropy over the classes: it differs from DeiT's
  KL by the teacher's entropy (same gradients), and is not divided by C as
  DeiT's code does (its ``kl_div(reduction='sum') / numel``).

  Args:
    class_logits: array [..., C] from the class token's head.
    distill_logits: array [..., C] from the distillation token's head.
    labels: integer array [...] of class indices in [0, C).
    teacher_logits: array [..., C] of the teacher's logits, not probabilities
      (argmaxed, or softmaxed here at T); never differentiated.
    variant: 'hard' or 'soft'.
    temperature: Python number > 0, used by 'soft' only (checked always).
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for bad hyperparameters, non-integer labels, concrete labels
      outside [0, C) or mismatched shapes.
  """
  _check_reduction(reduction)
  _check_choice("variant", variant, _TOKEN_VARIANTS)
  t = _check_temperature(temperature)
  xc = _as_logits(class_logits, "class_logits")
  xd = _as_logits(distill_logits, "distill_logits")
  xt = _as_teacher(teacher_logits, "teacher_logits")
  _check_same_shape(xd, xc, "distill_logits", "class_logits")
  _check_same_shape(xt, xc, "teacher_logits", "class_logits")
  y = _as_labels(labels, xc)
  class_term = _hard_ce_per_example(xc, y, 0.0)
  if variant == "hard":
    distill_term = _hard_ce_per_example(xd, jnp.argmax(xt, axis=-1), 0.0)
  else:
    distill_term = (t * t) * _soft_ce_per_example(xd, softmax(xt, t), t)
  return _reduce(0.5 * class_term + 0.5 * distill_term, reduction)


def token_predictions(class_logits, distill_logits):
  """DeiT's test-time prediction: the mean of the two heads' softmaxes.

  ``log((softmax(class) + softmax(distill)) / 2)``, computed as
  ``logaddexp(log_softmax(class), log_softmax(distill)) - log 2`` so it stays
  finite for logits of +-1e4. The result is a normalised log-distribution,
  so it is valid logits for any loss or metric here (its softmax is the mean
  of the softmaxes). DeiT's code averages the logits instead; the paper
  (and this) averages the softmaxes.

  Args:
    class_logits: array [..., C], any float dtype.
    distill_logits: array [..., C] of the same shape.

  Returns:
    float32 array [..., C].

  Raises:
    ValueError: for mismatched shapes.
  """
  xc = _as_logits(class_logits, "class_logits")
  xd = _as_logits(distill_logits, "distill_logits")
  _check_same_shape(xd, xc, "distill_logits", "class_logits")
  return jnp.logaddexp(log_softmax(xc), log_softmax(xd)) - math.log(2.0)


def expected_init_dkd(teacher_logits, labels, *, alpha=1.0, beta=8.0,
                      temperature=4.0):
  """dkd_loss (mean reduction) for a uniform student: all-zero logits.

  A uniform student has p_t = 1/C, so b_student = [1/C, (C-1)/C], and its
  non-target distribution is uniform over C-1 classes. With the teacher's
  p_t, b and q at temperature T:

  * ``TCKD = p_t log(C p_t) + (1 - p_t) log(C (1 - p_t) / (C - 1))``;
  * ``NCKD = KL(q_teacher || uniform) = log(C - 1) - H(q_teacher)``;
  * the result is ``mean over examples of (alpha TCKD + beta NCKD) * T**2``.

  Args:
    teacher_logits: array [..., C] (C >= 2) of the teacher's logits.
    labels: integer array [...] of class indices in [0, C).
    alpha, beta, temperature: as passed to dkd_loss.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: as dkd_loss.
  """
  a = _check_weight("alpha", alpha)
  b = _check_weight("beta", beta)
  t = _check_temperature(temperature)
  xt = _as_logits(teacher_logits, "teacher_logits")
  _check_two_classes(xt, "teacher_logits")
  y = _as_labels(labels, xt)
  c = xt.shape[-1]
  is_target = jnp.arange(c) == y[..., None]
  t_t, t_nt, t_q = _dkd_parts(xt / t, is_target, y)
  # KL against the uniform student's b = [1/C, (C-1)/C], written with
  # log-probabilities so a confident teacher stays finite.
  tckd = (jnp.exp(t_t) * (t_t + math.log(c))
          + jnp.exp(t_nt) * (t_nt - math.log((c - 1) / c)))
  q_w = jnp.exp(jnp.where(is_target, -jnp.inf, t_q))
  neg_entropy = jnp.sum(q_w * jnp.where(is_target, 0.0, t_q), axis=-1)
  nckd = math.log(c - 1) + neg_entropy
  return float(jnp.mean(a * tckd + b * nckd)) * t * t


def expected_init_dist(*, beta=1.0, gamma=1.0, temperature=1.0):
  """dist_loss for a uniform student: ``T**2 * (beta + gamma)``.

  A uniform student's probabilities are constant along both rows and
  columns, so every centred vector is 0 and every Pearson is
  0 / (0 + eps) = 0: inter = intra = 1 whatever the teacher.

  Args:
    beta, gamma, temperature: as passed to dist_loss.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: for bad hyperparameters.
  """
  b = _check_weight("beta", beta)
  g = _check_weight("gamma", gamma)
  t = _check_temperature(temperature)
  return t * t * (b + g)


def expected_init_hint(teacher_features, *, kind="mse"):
  """hint_loss (mean reduction) for zero student features.

  A zero-initialised projection makes the projected student features 0, so:

  * 'mse': ``mean((0 - t)**2)`` = the mean of the teacher features squared
    (every example has the same number of elements, so the mean of the
    per-example means is the overall mean);
  * 'cosine': ``1 - 0 = 1``, since the cosine of a zero vector is 0.

  Args:
    teacher_features: array [B, ..., D] (at least 2-D).
    kind: 'mse' or 'cosine'.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: for an unknown kind or features with fewer than 2 axes.
  """
  _check_choice("kind", kind, _HINT_KINDS)
  t = _as_logits(teacher_features, "teacher_features")
  if t.ndim < 2:
    raise ValueError(
        f"features must be [batch, ..., dim], at least 2-D, got shape "
        f"{t.shape}")
  if kind == "cosine":
    return 1.0
  return float(jnp.mean(jnp.square(t)))


def expected_init_token(n_classes, *, variant="hard", temperature=1.0):
  """token_loss (any reduction's per-example value) for a uniform student.

  Uniform predictions have cross-entropy log(C) against any target that sums
  to 1: ``-sum_k y_k log(1/C) = log(C)``. That holds for the labels, for the
  teacher's argmax and for the teacher's softmax alike, so:

  * 'hard': ``0.5 log(C) + 0.5 log(C) = log(C)``;
  * 'soft': ``0.5 log(C) + 0.5 T**2 log(C)``, which is log(C) at T = 1 (the
    T**2 factor scales the soft term's value too, not only its gradient).

  Args:
    n_classes: number of classes C (int >= 2).
    variant: 'hard' or 'soft'.
    temperature: Python number > 0, as passed to token_loss.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: for invalid arguments.
  """
  c = _check_n_classes(n_classes)
  _check_choice("variant", variant, _TOKEN_VARIANTS)
  t = _check_temperature(temperature)
  log_c = math.log(c)
  if variant == "hard":
    return log_c
  return 0.5 * log_c + 0.5 * t * t * log_c

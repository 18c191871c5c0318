"""Distillation losses and evaluation metrics as pure jax.numpy functions.

Every function here takes logits with classes on the last axis and any leading
batch shape, and computes in float32 whatever the input dtype, so bf16/f16
model outputs are safe: a log-softmax in bf16 loses most of its precision.
Probabilities are always derived from a max-shifted log-softmax (never
``log(softmax(x))``), which keeps results finite for logits as large as
+-1e4.

Losses take ``reduction``:

* ``'mean'`` (default): the mean over every leading (batch) element.
* ``'sum'``: the sum over every leading element.
* ``'none'``: the per-example array, with the leading shape of the logits.

Hyperparameters (temperature, alpha, label smoothing, reduction, kind) are
Python values checked eagerly, so a mistake raises a ``ValueError`` before
anything is traced. Under ``jax.jit`` pass them as static arguments.

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

_REDUCTIONS = ("mean", "sum", "none")
_SOFT_KINDS = ("soft_ce", "kl")
_INIT_KINDS = ("soft_ce", "kl", "hard")


# ---------------------------------------------------------------------------
# Validation helpers. They run on Python values, before any tracing.
# ---------------------------------------------------------------------------


def _check_reduction(reduction):
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f'unknown reduction {reduction!r}; expected one of '
        f'{", ".join(repr(r) for r in _REDUCTIONS)}')
  return reduction


def _check_temperature(temperature):
  try:
    t = float(temperature)
  except TypeError as e:
    raise ValueError(
        f"temperature must be a Python number, got {temperature!r} (under "
        "jax.jit, pass it as a static argument)") from e
  if not math.isfinite(t) or t <= 0.0:
    raise ValueError(
        f"temperature must be finite and > 0, got {temperature!r}")
  return t


def _check_alpha(alpha):
  try:
    a = float(alpha)
  except TypeError as e:
    raise ValueError(
        f"alpha must be a Python number, got {alpha!r} (under jax.jit, pass "
        "it as a static argument)") from e
  # `not 0 <= a <= 1` is also true for nan, which must be rejected too.
  if not 0.0 <= a <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
  return a


def _check_label_smoothing(label_smoothing):
  try:
    s = float(label_smoothing)
  except TypeError as e:
    raise ValueError(
        f"label_smoothing must be a Python number, got {label_smoothing!r} "
        "(under jax.jit, pass it as a static argument)") from e
  # 1.0 would make the target uniform and the labels irrelevant.
  if not 0.0 <= s < 1.0:
    raise ValueError(
        f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
  return s


def _check_n_classes(n_classes):
  if isinstance(n_classes, bool) or not isinstance(n_classes, int):
    raise ValueError(f"n_classes must be an int, got {n_classes!r}")
  if n_classes < 2:
    raise ValueError(f"n_classes must be >= 2, got {n_classes}")
  return n_classes


def _as_logits(logits, name="logits"):
  x = jnp.asarray(logits)
  if x.ndim < 1:
    raise ValueError(
        f"{name} must have a class axis (last axis), got a scalar")
  # float32 even for bf16/f16 inputs: exp/log/sum lose too much otherwise.
  return x.astype(jnp.float32)


def _as_labels(labels, logits):
  y = jnp.asarray(labels)
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(
        f"labels must be integer class indices, got dtype {y.dtype}; "
        "pass probabilities to soft_cross_entropy instead")
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


def _hard_ce_per_example(logits, labels, label_smoothing):
  logp = log_softmax(logits)
  n_classes = logp.shape[-1]
  # Map negative labels out of range so that they, like labels >= C, gather
  # NaN instead of silently wrapping around to the last classes.
  idx = jnp.where(labels < 0, n_classes, labels)
  picked = jnp.take_along_axis(
      logp, idx[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
  nll = -picked
  if label_smoothing == 0.0:
    return nll
  # Target (1 - s) * one_hot + s / C, written as a mix of the two CEs.
  uniform_ce = -jnp.mean(logp, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform_ce


def hard_cross_entropy(logits, labels, *, label_smoothing=0.0,
                       reduction="mean"):
  """Cross-entropy against integer labels, optionally label-smoothed.

  Labels outside [0, C) give NaN for their example rather than a silently
  wrong loss.

  Args:
    logits: array [..., C] of any float dtype.
    labels: integer array [...] of class indices in [0, C).
    label_smoothing: Python number in [0, 1); the target is
      ``(1 - label_smoothing) * one_hot + label_smoothing / C``.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for bad hyperparameters, non-integer labels or mismatched
      shapes.
  """
  _check_reduction(reduction)
  s = _check_label_smoothing(label_smoothing)
  x = _as_logits(logits)
  y = _as_labels(labels, x)
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
  not differentiated (stop_gradient) and are assumed to be probabilities
  summing to 1 over the last axis; this is not checked.

  Args:
    logits: array [..., C] of student logits, any float dtype.
    target_probs: array [..., C] of target probabilities (e.g. a teacher's
      softmax at the same temperature).
    temperature: Python number > 0 dividing the student logits.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for a bad temperature or reduction, or mismatched shapes.
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
    target_probs: array [..., C] of target probabilities summing to 1; not
      differentiated (stop_gradient).
    temperature: Python number > 0 dividing the student logits.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for a bad temperature or reduction, or mismatched shapes.
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
    target_probs: array [..., C] of teacher probabilities, normally the
      teacher's softmax at the same temperature; never differentiated.
      Required when alpha > 0.
    labels: integer array [...] of class indices. Required when alpha < 1.
    temperature: Python number, finite and > 0.
    alpha: Python number in [0, 1], the weight of the soft term.
    kind: 'soft_ce' or 'kl', the soft term.
    label_smoothing: Python number in [0, 1) for the hard term.
    reduction: 'mean', 'sum' or 'none'.

  Returns:
    float32 scalar, or float32 array [...] for reduction='none'.

  Raises:
    ValueError: for any invalid hyperparameter, a missing input, or
      mismatched shapes.
  """
  _check_reduction(reduction)
  t = _check_temperature(temperature)
  a = _check_alpha(alpha)
  s = _check_label_smoothing(label_smoothing)
  if kind not in _SOFT_KINDS:
    raise ValueError(
        f'unknown kind {kind!r}; expected one of '
        f'{", ".join(repr(k) for k in _SOFT_KINDS)}')
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
    target_probs: array [..., C] of target probabilities; required for
      kind='kl' with alpha > 0, ignored otherwise.

  Returns:
    The expected loss as a Python float.

  Raises:
    ValueError: for invalid arguments or missing target_probs.
  """
  c = _check_n_classes(n_classes)
  if kind not in _INIT_KINDS:
    raise ValueError(
        f'unknown kind {kind!r}; expected one of '
        f'{", ".join(repr(k) for k in _INIT_KINDS)}')
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
    message = (f"WARNING: init loss {measured:.4f} is far from expected "
               f"{exp_text} (rel. diff {rel:.0%}): the head is badly scaled "
               "or the targets/labels are wrong")
  return InitLossCheck(measured=measured, expected=exp_value, tolerance=tol,
                       ok=ok, message=message)


# ---------------------------------------------------------------------------
# Evaluation metrics.
# ---------------------------------------------------------------------------


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
  if a.shape != b.shape:
    raise ValueError(
        f"logits_a shape {a.shape} must equal logits_b shape {b.shape}")
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
  return hard_cross_entropy(logits, labels, reduction=reduction)


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
  if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
    raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
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

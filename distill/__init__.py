"""distill: teacher -> student knowledge distillation on JAX, Flax and Optax.

The losses are importable straight from the package::

    from distill import soft_cross_entropy
    loss = soft_cross_entropy(student_logits, teacher_probs)

They are loaded on first use so that `import distill` (and `distill --help`)
does not pay for importing JAX.
"""

__version__ = "0.1.0"

_LOSSES = (
    "log_softmax", "softmax", "hard_cross_entropy", "soft_cross_entropy", "kl_divergence",
    "distillation_loss", "expected_init_loss", "init_loss_check", "InitLossCheck",
    "dkd_loss", "dist_loss", "hint_loss", "token_loss", "token_predictions",
    "expected_init_dkd", "expected_init_dist", "expected_init_hint", "expected_init_token",
)
_METRICS = ("accuracy", "top1_agreement", "negative_log_likelihood", "expected_calibration_error")

__all__ = ["__version__", *_LOSSES, *_METRICS]


def __getattr__(name):
  if name in _LOSSES:
    from distill import losses  # noqa: PLC0415

    return getattr(losses, name)
  if name in _METRICS:
    from distill import metrics  # noqa: PLC0415

    return getattr(metrics, name)
  raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__():
  return sorted(__all__)

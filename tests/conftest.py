"""Test settings: never download, JAX on CPU."""

import os

os.environ["DISTILL_OFFLINE"] = "1"
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# The tiny digits setting every workflow test shares: seconds, not minutes.
TINY = [
    "teacher.steps=20", "teacher.batch_size=32", "teacher.vit.width=16", "teacher.vit.depth=1",
    "teacher.vit.heads=2", "teacher.log_every=10", "teacher.eval_every=10",
    "teacher.checkpoint_every=10", "teacher.warmup_steps=2", "teacher.steps_per_dispatch=5",
    "student.steps=20", "student.batch_size=32", "student.log_every=10", "student.eval_every=10",
    "student.checkpoint_every=10", "student.warmup_steps=2", "student.steps_per_dispatch=5",
]


@pytest.fixture
def tiny_overrides():
  """Overrides shrinking the digits recipe to a few seconds per run."""
  return list(TINY)

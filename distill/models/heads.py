"""The classifier head shared by every model."""

import jax
from flax import nnx

from distill.models import dense


def classifier_head(in_features: int, num_classes: int, *, head_init_scale: float,
                    rngs: nnx.Rngs) -> nnx.Linear:
  """A linear head whose initial logits are zero by default.

  Zero logits make the model predict uniformly at initialization, so the
  loss at step 0 is exactly log(num_classes) for hard and soft cross-entropy;
  the init check relies on this. A positive `head_init_scale` draws the kernel
  from a normal with that standard deviation instead (mainly to show the
  check firing).
  """
  kernel_init = (nnx.initializers.zeros_init() if head_init_scale == 0
                 else nnx.initializers.normal(head_init_scale))
  return dense.linear(in_features, num_classes, kernel_init=kernel_init,
                      bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def flatten(x: jax.Array) -> jax.Array:
  """[B, ...] -> [B, prod(...)]."""
  return x.reshape(x.shape[0], -1)

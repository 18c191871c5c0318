"""Fully connected students: an MLP and a linear (logistic regression) model."""

import jax
from flax import nnx

from distill.models import dense, register
from distill.models.heads import classifier_head, flatten


@register("mlp")
class MLP(nnx.Module):
  """Flatten, GELU hidden layers, linear head."""

  @staticmethod
  def inner_layer_count(settings: dict) -> int:
    """One inner layer a hidden layer (`forward_features`), for `models.inner_layer_count`."""
    return len(settings["hidden"])

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int],
               hidden: list[int] = (512, 256), head_init_scale: float = 0.0,
               dtype=None, rngs: nnx.Rngs):
    in_features = image_shape[0] * image_shape[1] * image_shape[2]
    sizes = [in_features, *hidden]
    self.layers = nnx.List([dense.linear(a, b, dtype=dtype, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
    self.head = classifier_head(sizes[-1], num_classes, head_init_scale=head_init_scale, rngs=rngs)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.forward_features(images_BxHxWxC)[0]

  def forward_features(self, images_BxHxWxC: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(logits [B, classes], each hidden layer's output [B, width]): what a hint can match."""
    x = flatten(images_BxHxWxC)
    hidden = []
    for layer in self.layers:
      x = nnx.gelu(layer(x))
      hidden.append(x)
    return self.head(x), hidden


@register("linear")
class Linear(nnx.Module):
  """Multinomial logistic regression on raw pixels."""

  @staticmethod
  def inner_layer_count(settings: dict) -> int:
    """None: the pixels go straight to the head (for `models.inner_layer_count`)."""
    del settings
    return 0

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int],
               head_init_scale: float = 0.0, dtype=None, rngs: nnx.Rngs):
    del dtype  # One matmul: float32 keeps logistic regression exact.
    in_features = image_shape[0] * image_shape[1] * image_shape[2]
    self.head = classifier_head(in_features, num_classes, head_init_scale=head_init_scale,
                                rngs=rngs)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.head(flatten(images_BxHxWxC))

"""A small convolutional student."""

from flax import nnx
import jax
import jax.numpy as jnp

from distill.models import register
from distill.models.heads import classifier_head


@register("cnn")
class CNN(nnx.Module):
  """Stages of 3x3 conv + GroupNorm + ReLU, 2x2 max-pool between stages.

  GroupNorm rather than BatchNorm keeps the model free of running statistics,
  so training and evaluation are the same pure function of the parameters.
  With the default channels (32, 64) it has about 65k parameters.
  """

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int],
               channels: list[int] = (32, 64), blocks_per_stage: int = 2,
               head_init_scale: float = 0.0, dtype=None, rngs: nnx.Rngs):
    convs, norms = [], []
    in_channels = image_shape[2]
    for out_channels in channels:
      for _ in range(blocks_per_stage):
        convs.append(nnx.Conv(in_channels, out_channels, (3, 3), use_bias=False, dtype=dtype,
                              rngs=rngs))
        norms.append(nnx.GroupNorm(out_channels, num_groups=min(8, out_channels),
                                   dtype=jnp.float32, rngs=rngs))
        in_channels = out_channels
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.blocks_per_stage = blocks_per_stage
    self.head = classifier_head(in_channels, num_classes, head_init_scale=head_init_scale, rngs=rngs)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    x = images_BxHxWxC
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = nnx.relu(norm(conv(x)))
      last_of_stage = (i + 1) % self.blocks_per_stage == 0
      if last_of_stage and i + 1 < len(self.convs):
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    return self.head(jnp.mean(x, axis=(1, 2)))

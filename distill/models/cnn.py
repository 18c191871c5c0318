"""A small convolutional student, and the conv stages it shares with the ViT's CNN stem."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from distill import backend
from distill.errors import UserError
from distill.models import register
from distill.models.heads import classifier_head, flatten

# Rank of each position of a 2x2 window, first in row-major order highest: the gradient of a
# window's maximum goes to its first maximal position, as XLA's select-and-scatter sends it.
_WINDOW_RANK = np.array([[4, 3], [2, 1]], np.int8).reshape(1, 1, 2, 1, 2, 1)

# A first conv over at most this many input channels (an image's: grey, RGB, RGBA) is computed as
# one matmul of gathered neighbourhoods where the backend chooses so (`NeighbourhoodConv`). Wider
# inputs make the gathered copy k·k times too large: at 32 and 64 channels it ran 1.5-2x slower
# than XLA:CPU's convolution.
GATHERED_MAX_CHANNELS = 4


def pools_that_fit(height: int, width: int) -> int:
  """How many 2x2 max-pools (each halving, floored) leave a height x width image a pixel."""
  return min(height, width).bit_length() - 1


def pooled_too_small(height: int, width: int, pools: int, where: str) -> str | None:
  """Why `pools` 2x2 max-pools leave nothing of a height x width image, or None if they do not.

  The middle of a one-line error (the caller names the setting before it and
  what to change after it): an image pooled to zero rows or columns fails
  only later, deep in training (a zero division, or a mean of nothing).
  `where` says where the pools run ('after each stage').
  """
  if pools <= pools_that_fit(height, width):
    return None
  need = 2 ** pools
  return (f"halve the image {pools} time{'s' if pools != 1 else ''} (a 2x2 max-pool {where}), "
          f"so they need {need}x{need} pixels or more, and the image is {height}x{width}")


def _windows_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H//2, 2, W//2, 2, C]: the 2x2 windows (an odd last row/column dropped)."""
  batch, height, width, channels = x_BxHxWxC.shape
  cropped = x_BxHxWxC[:, :height // 2 * 2, :width // 2 * 2]
  return cropped.reshape(batch, height // 2, 2, width // 2, 2, channels)


@jax.custom_vjp
def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2 ('VALID'): the values and gradients of `nnx.max_pool`, faster.

  XLA differentiates `reduce_window` max with select-and-scatter, which took
  40 ms of a ~100 ms CNN step on a 2-core CPU for one 128x28x28x32 pool; the
  same gradient from the 2x2 windows as a reshape takes 6 ms. It is bit-for-bit
  the same: each window's gradient goes to its first maximal position in
  row-major order, ties included (and ties are common after a ReLU).

  Without a gradient (validation, export, `distill predict`, a teacher inside
  a student's step) the pool is the elementwise maximum of each window's four
  positions. As a reduction, XLA:CPU's YNNPACK reduce fusion took the next
  layer's convolution into YNNPACK with it, whose kernel ran the forward pass
  1.3-1.7x slower than XLA's own. Under a gradient the reduction stays (see
  `_max_pool_2x2_forward`). Both give the same bits: a maximum is exact.
  """
  windows = _windows_2x2(x_BxHxWxC)
  return jnp.maximum(jnp.maximum(windows[:, :, 0, :, 0], windows[:, :, 0, :, 1]),
                     jnp.maximum(windows[:, :, 1, :, 0], windows[:, :, 1, :, 1]))


def _max_pool_2x2_forward(x_BxHxWxC):
  # A training step pools by reduction: with the elementwise form its XLA:CPU fusions ran the
  # CNN student's step 1.6x slower, and as a reduction its convolutions stay XLA's own.
  pooled = _windows_2x2(x_BxHxWxC).max(axis=(2, 4))
  return pooled, (x_BxHxWxC, pooled)


def _max_pool_2x2_backward(residuals, grad_pooled):
  x_BxHxWxC, pooled = residuals
  batch, height, width, channels = x_BxHxWxC.shape
  windows = _windows_2x2(x_BxHxWxC)
  is_max = windows == pooled[:, :, None, :, None, :]
  rank = jnp.where(is_max, jnp.asarray(_WINDOW_RANK), jnp.int8(0))
  first_max = is_max & (rank == rank.max(axis=(2, 4), keepdims=True))
  grad = jnp.where(first_max, grad_pooled[:, :, None, :, None, :],
                   jnp.zeros((), grad_pooled.dtype))
  grad = grad.reshape(batch, height // 2 * 2, width // 2 * 2, channels)
  return (jnp.pad(grad, ((0, 0), (0, height % 2), (0, width % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_2x2_forward, _max_pool_2x2_backward)


class GroupNorm(nnx.GroupNorm):
  """`nnx.GroupNorm` over [B, H, W, C], its statistics summed per channel first.

  Flax sums each group's statistics over a [B, H, W, groups, C/groups] view,
  whose reduced axes straddle the kept one. On XLA:CPU (an AMD EPYC, 2 cores)
  that took 10.6 ms forward and backward for a 128x28x28x32 activation in 8
  groups, against 6.5 ms for the same statistics summed over the pixels of
  each channel ([B, H·W, C] -> [B, C], contiguous rows) and then over each
  group's channels; the CNN student's step ran 1.05x faster. Same parameters
  and paths as `nnx.GroupNorm`, so checkpoints load either way; the sums run
  in another order, so results move in the last bits.
  """

  def __call__(self, x, *, mask=None):
    """Normalizes x [B, H, W, C] by the mean and variance of each image's channel groups."""
    if (mask is not None or self.axis_name is not None or self.reduction_axes is not None
        or not self.use_fast_variance):
      return super().__call__(x, mask=mask)  # settings the conv stages never use: flax's path
    batch, channels = x.shape[0], x.shape[-1]
    x, scale, bias = self.promote_dtype(
        (x, self.scale[...] if self.scale else None, self.bias[...] if self.bias else None),
        dtype=self.dtype)
    # Statistics in at least float32, as flax computes them.
    rows = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)).reshape(batch, -1, channels)
    count = rows.shape[1] * self.group_size

    def group_sums(per_channel_BxC):
      return per_channel_BxC.reshape(batch, self.num_groups, self.group_size).sum(-1)

    def per_channel(per_group_BxG):  # [B, groups] -> [B, 1, 1, C], broadcasting against x
      return jnp.repeat(per_group_BxG, self.group_size, axis=1).reshape(
          batch, *([1] * (x.ndim - 2)), channels)

    mean = group_sums(rows.sum(1)) / count
    mean_of_squares = group_sums((rows * rows).sum(1)) / count
    # E[x²] - E[x]², clipped at 0 against round-off, as flax's fast variance computes it.
    variance = jnp.maximum(0.0, mean_of_squares - mean * mean)
    multiplier = lax.rsqrt(per_channel(variance) + self.epsilon)
    if scale is not None:
      multiplier = multiplier * scale
    y = (x - per_channel(mean)) * multiplier
    if bias is not None:
      y = y + bias
    return jnp.asarray(y, self.dtype)


class NeighbourhoodConv(nnx.Module):
  """A stride-1, 'SAME'-padded k×k convolution computed as one matmul.

  It gathers each pixel's k×k neighbourhood into a vector ([B, H, W, k·k·C])
  and multiplies by the kernel. Parameters (`kernel` [k, k, C, F], and `bias`
  [F] with `use_bias`), their initialisation and the output are those of
  `nnx.Conv`, so checkpoints of either load into the other.

  Why not `nnx.Conv` over an image's few channels, whose gathered copy is
  small: XLA:CPU runs convolutions inside a `lax.scan` body about 13x slower
  than straight-line code (see `step.should_unroll`), so a ViT whose only
  convolution is its stem keeps the scanned multi-step dispatch without one
  (it compiles in seconds instead of tens of seconds and holds one step's
  activations, not ten). And a convolution's kernel gradient makes XLA:CPU
  lay the whole output gradient out batch-last first, where the matmul's is
  one product of the narrow neighbourhoods with it: the conv stages' first
  layer over a 1-channel 128x28x28 batch (32 filters) took 5.3 ms forward and
  backward as a convolution and 3.0 ms as this.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               use_bias: bool = True, dtype=None, rngs: nnx.Rngs):
    if kernel_size % 2 == 0:
      raise UserError(f"a gathered convolution's kernel size must be odd, got {kernel_size}")
    self.kernel_size = kernel_size
    self.dtype = dtype
    kernel_shape = (kernel_size, kernel_size, in_features, out_features)
    # Keys drawn in nnx.Conv's order: a seed gives the weights an nnx.Conv stem would get.
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), kernel_shape))
    self.bias = (nnx.Param(nnx.initializers.zeros_init()(rngs.params(), (out_features,)))
                 if use_bias else None)

  def neighbourhoods(self, images_BxHxWxC: jax.Array) -> jax.Array:
    """Each pixel's k×k neighbourhood, zero-padded at the borders: [B, H, W, k·k·C]."""
    (x,) = nnx.nn.dtypes.promote_dtype((images_BxHxWxC,), dtype=self.dtype)
    k = self.kernel_size
    _, height, width, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    # Concatenated in the kernel's (row, column, channel) order, so the kernel
    # flattens to the matching [k*k*C, F] matrix. Cross-correlation, like lax.conv.
    return jnp.concatenate(
        [padded[:, dy:dy + height, dx:dx + width, :] for dy in range(k) for dx in range(k)],
        axis=-1)

  def project(self, neighbourhoods: jax.Array, activation=None) -> jax.Array:
    """[..., k·k·C] neighbourhoods -> [..., F] outputs, then `activation`.

    Any leading layout works.
    """
    x, kernel, bias = nnx.nn.dtypes.promote_dtype(
        (neighbourhoods, self.kernel[...], None if self.bias is None else self.bias[...]),
        dtype=self.dtype)
    # One 2-D matmul: its backward pass (kernel and bias gradients summed over
    # every pixel) then compiles to plain 2-D dots and reductions, which ran 5x
    # faster on XLA:CPU than the same sums over a [B, T, p, p, F] activation.
    rows = x.reshape(-1, x.shape[-1]) @ kernel.reshape(-1, kernel.shape[-1])
    if bias is not None:
      rows = rows + bias
    if activation is not None:
      rows = activation(rows)
    return rows.reshape(*x.shape[:-1], kernel.shape[-1])

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.project(self.neighbourhoods(images_BxHxWxC))


def _conv_3x3(in_channels: int, out_channels: int, *, first: bool, dtype,
              rngs: nnx.Rngs) -> nnx.Module:
  """A bias-free 'SAME' 3x3 conv: the gathered matmul over an image's few channels, if chosen.

  Both kinds hold the same `kernel`, drawn alike, so checkpoints load either way.
  """
  if (first and in_channels <= GATHERED_MAX_CHANNELS
      and backend.choices().conv_stem == "gathered"):
    return NeighbourhoodConv(in_channels, out_channels, 3, use_bias=False, dtype=dtype, rngs=rngs)
  return nnx.Conv(in_channels, out_channels, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)


class ConvStages(nnx.Module):
  """Stages of (3x3 conv + GroupNorm + ReLU) x blocks, a 2x2 max-pool between stages.

  GroupNorm rather than BatchNorm keeps the model free of running statistics,
  so training and evaluation are the same pure function of the parameters.
  With `pool_last` the last stage is pooled too, so the output is the input's
  size divided by 2 ** len(channels) (floored).
  """

  def __init__(self, in_channels: int, channels: list[int], *, blocks_per_stage: int,
               pool_last: bool, key_prefix: str = "", dtype=None, rngs: nnx.Rngs):
    # `key_prefix` names the recipe keys in errors: the ViT's stem reads them
    # as stem_channels and stem_blocks_per_stage.
    if not channels or blocks_per_stage < 1:
      raise UserError(f"conv stages need at least one stage and one block per stage, got "
                      f"{key_prefix}channels {list(channels)} and "
                      f"{key_prefix}blocks_per_stage {blocks_per_stage}")
    convs, norms = [], []
    for out_channels in channels:
      for _ in range(blocks_per_stage):
        convs.append(_conv_3x3(in_channels, out_channels, first=not convs, dtype=dtype,
                               rngs=rngs))
        norms.append(GroupNorm(out_channels, num_groups=min(8, out_channels),
                               dtype=jnp.float32, rngs=rngs))
        in_channels = out_channels
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.blocks_per_stage = blocks_per_stage
    self.pool_last = pool_last
    self.out_channels = in_channels

  @property
  def pool_count(self) -> int:
    """How many 2x2 max-pools the stages run: one after each stage, the last only if pooled."""
    return len(self.convs) // self.blocks_per_stage - (0 if self.pool_last else 1)

  def output_size(self, height: int, width: int) -> tuple[int, int]:
    """The spatial size of the output for a height x width input."""
    return height // 2 ** self.pool_count, width // 2 ** self.pool_count

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.stage_outputs(images_BxHxWxC)[-1]

  def stage_outputs(self, images_BxHxWxC: jax.Array) -> list[jax.Array]:
    """Each stage's output [B, H', W', C'] (after its pooling), first to last."""
    x = images_BxHxWxC
    outputs = []
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
      x = nnx.relu(norm(conv(x)))
      last_of_stage = (i + 1) % self.blocks_per_stage == 0
      last_block = i + 1 == len(self.convs)
      if last_of_stage and (not last_block or self.pool_last):
        x = max_pool_2x2(x)
      if last_of_stage:
        outputs.append(x)
    return outputs


@register("cnn")
class CNN(ConvStages):
  """Conv stages (see `ConvStages`), then a linear head.

  A subclass rather than a `ConvStages` attribute, so the parameters keep the
  paths (convs, norms, head) that earlier checkpoints were saved with.

  `pool` chooses what the head sees. "mean" averages the last stage over
  space (about 65k parameters with the default channels (32, 64)). "flatten"
  max-pools after the last stage too and keeps every position: the head then
  knows where in the image a feature fired, which a mean throws away, at the
  price of a larger head (7 x 7 x 64 x 10 weights on 28 x 28 images).
  """

  @staticmethod
  def inner_layer_count(settings: dict) -> int:
    """One inner layer a stage (`forward_features`), for `models.inner_layer_count`."""
    return len(settings["channels"])

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int],
               channels: list[int] = (32, 64), blocks_per_stage: int = 2,
               pool: str = "mean", head_init_scale: float = 0.0, dtype=None,
               rngs: nnx.Rngs):
    if pool not in ("mean", "flatten"):
      raise UserError(f"cnn pool must be 'mean' or 'flatten', got '{pool}'")
    super().__init__(image_shape[2], list(channels), blocks_per_stage=blocks_per_stage,
                     pool_last=pool == "flatten", dtype=dtype, rngs=rngs)
    self._check_image_size(image_shape[0], image_shape[1], list(channels), pool)
    self.pool = pool
    head_features = self.out_channels
    if pool == "flatten":
      height, width = self.output_size(image_shape[0], image_shape[1])
      head_features *= height * width
    self.head = classifier_head(head_features, num_classes, head_init_scale=head_init_scale,
                                rngs=rngs)

  def _check_image_size(self, height: int, width: int, channels: list[int], pool: str) -> None:
    """Refuses an image the stages' pools leave no pixel of, saying how many stages fit."""
    where = "after each stage" if pool == "flatten" else "between stages"
    too_small = pooled_too_small(height, width, self.pool_count, where)
    if too_small is None:
      return
    # A pool a stage, less one with 'mean' (its last stage is not pooled).
    fit_mean = pools_that_fit(height, width) + 1
    fit_flatten = fit_mean - 1
    if pool == "mean":
      advice = f"list at most {fit_mean} channels with pool = 'mean'"
    elif fit_flatten:
      advice = (f"list at most {fit_flatten} channels with pool = 'flatten', or {fit_mean} with "
                f"pool = 'mean'")
    else:
      advice = "list 1 channel with pool = 'mean'"
    raise UserError(f"cnn channels {channels} with pool = '{pool}' {too_small}: {advice}")

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.forward_features(images_BxHxWxC)[0]

  def forward_features(self, images_BxHxWxC: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(logits [B, classes], each stage's feature map): what a hint can match."""
    stages = self.stage_outputs(images_BxHxWxC)
    x = stages[-1]
    if self.pool == "flatten":
      return self.head(flatten(x)), stages
    return self.head(jnp.mean(x, axis=(1, 2))), stages

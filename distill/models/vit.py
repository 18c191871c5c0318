"""Vision Transformer (Dosovitskiy et al. 2021), sized by the recipe."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from distill import backend
from distill.errors import UserError
from distill.models import dense, register
from distill.models.cnn import ConvStages, NeighbourhoodConv, pooled_too_small, pools_that_fit
from distill.models.heads import classifier_head


@jax.custom_vjp
def softmax_last(logits: jax.Array) -> jax.Array:
  """`jax.nn.softmax` over the last axis (its values), with its gradient written out as a VJP.

  jax's softmax defines a JVP, and the transpose of that JVP sums the
  attention scores' gradient over a [1, B, heads, T, S] view that XLA:CPU
  reduced slowly: 7.9 of the CIFAR-10 ViT's ~80 ms of ops a step, against
  2.6 ms for the sum written here; the ViT's step ran 1.06x faster (compiled
  steps alternated in one process, 10 rounds). The gradient is p·(g - Σ p·g),
  summed in another order than jax's, so results move in the last bits.
  """
  return jax.nn.softmax(logits, axis=-1)


def _softmax_last_forward(logits):
  probs = jax.nn.softmax(logits, axis=-1)
  return probs, probs


def _softmax_last_backward(probs, grad):
  weighted = grad * probs
  return (weighted - probs * weighted.sum(axis=-1, keepdims=True),)


softmax_last.defvjp(_softmax_last_forward, _softmax_last_backward)


def attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask=None,
              dropout_rate: float = 0.0, deterministic: bool = True, dtype=None,
              module=None, is_causal: bool = False, **options) -> jax.Array:
  """The ViT's `attention_fn`: `nnx.dot_product_attention`, its softmax from `softmax_last`.

  For the ViT's unmasked attention without dropout, the computation of
  `jax.nn.dot_product_attention`'s XLA path (which `nnx.dot_product_attention`
  calls then): scores in float32 (bfloat16 inputs multiplied with float32
  accumulation), scaled by 1/sqrt(depth), softmax, then the weighted values.
  Anything else (a mask, dropout, sown weights) goes to flax's function.
  """
  if (mask is not None or is_causal or module is not None or query.ndim != 4
      or (dropout_rate > 0.0 and not deterministic) or options.get("bias") is not None):
    if is_causal:  # flax 0.12.1 has no `is_causal` (and never passes it)
      options["is_causal"] = True
    return nnx.dot_product_attention(
        query, key, value, mask=mask, dropout_rate=dropout_rate, deterministic=deterministic,
        dtype=dtype, module=module, **options)
  query, key, value = nnx.nn.dtypes.promote_dtype((query, key, value), dtype=dtype)
  precision = lax.DotAlgorithmPreset.BF16_BF16_F32 if query.dtype == jnp.bfloat16 else None
  scale = jnp.array(1.0 / np.sqrt(query.shape[-1]), dtype=jnp.promote_types(query.dtype,
                                                                             jnp.float32))

  def heads_attention(query_BxTxNxH):
    logits = jnp.einsum("BTNH,BSNH->BNTS", query_BxTxNxH, key, precision=precision,
                        preferred_element_type=scale.dtype) * scale
    probs = softmax_last(logits.astype(jnp.float32)).astype(key.dtype)
    return jnp.einsum("BNTS,BSNH->BTNH", probs, value)

  # Mapped over a unit axis of query-head groups, as jax lays out grouped-query attention:
  # the same program as jax's, so the forward pass gives its values to the last bit.
  batch, tokens, heads, depth = query.shape
  grouped = query.reshape(batch, tokens, heads, 1, depth)
  return jax.vmap(heads_attention, in_axes=3, out_axes=3)(grouped).reshape(query.shape)


def self_attention(layer: nnx.MultiHeadAttention, x_BxTxD: jax.Array) -> jax.Array:
  """`layer(x_BxTxD)` with its query, key and value projections computed as one product.

  The three [D, heads, depth] kernels are joined into one [D, 3·heads·depth]
  matrix for the step (a copy of 3·D² numbers), so the forward pass runs one
  matmul where `nnx.MultiHeadAttention` runs three, and the backward pass one
  kernel gradient and one input gradient (as PyTorch's and timm's fused `qkv`
  do). Both products are `dense` layers, whose kernel gradient is taken by
  rows. The parameters stay the module's own, so checkpoints and imported
  weights load as before; values agree with `layer(x)` to float rounding.
  """
  projections = (layer.query, layer.key, layer.value)
  width = x_BxTxD.shape[-1]
  kernel = jnp.concatenate([p.kernel[...] for p in projections], axis=1).reshape(width, -1)
  bias = jnp.concatenate([p.bias[...] for p in projections], axis=0).reshape(-1)
  x, kernel, bias = nnx.nn.dtypes.promote_dtype((x_BxTxD, kernel, bias), dtype=layer.dtype)
  qkv = dense.matmul(x, kernel) + bias
  # Split along the last axis, where each is one contiguous block: the gradient joins
  # them back in place, where a [3, ...] axis moved to the front would cost a transpose.
  query, key, value = (part.reshape(*x.shape[:-1], layer.num_heads, layer.head_dim)
                       for part in jnp.split(qkv, 3, axis=-1))
  heads = layer.attention_fn(query, key, value, dtype=layer.dtype)
  out_kernel = layer.out.kernel[...].reshape(-1, layer.out_features)
  heads, out_kernel, out_bias = nnx.nn.dtypes.promote_dtype(
      (heads.reshape(*x.shape[:-1], -1), out_kernel, layer.out.bias[...]), dtype=layer.dtype)
  return dense.matmul(heads, out_kernel) + out_bias


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, width: int, heads: int, mlp_ratio: int, *, dtype=None,
               norm_eps: float = 1e-6, exact_gelu: bool = False, rngs: nnx.Rngs):
    # `norm_eps` and `exact_gelu` exist for imported timm / transformers ViTs
    # (erf GELU, HF's 1e-12 eps); their defaults are nnx's own, so recipes compute as before.
    self.exact_gelu = exact_gelu
    # Norms compute in float32 whatever the matmul dtype: their statistics need it.
    self.attention_norm = nnx.LayerNorm(width, epsilon=norm_eps, dtype=jnp.float32, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False,
                                            dtype=dtype, attention_fn=attention, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, epsilon=norm_eps, dtype=jnp.float32, rngs=rngs)
    self.mlp_in = dense.linear(width, width * mlp_ratio, dtype=dtype, rngs=rngs)
    self.mlp_out = dense.linear(width * mlp_ratio, width, dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BxTxD: jax.Array) -> jax.Array:
    x = tokens_BxTxD
    normed = self.attention_norm(x)
    x = x + (self_attention(self.attention, normed) if backend.choices().fused_qkv
             else self.attention(normed))
    hidden = nnx.gelu(self.mlp_in(self.mlp_norm(x)), approximate=not self.exact_gelu)
    return x + self.mlp_out(hidden)


def _dividing_sizes(height: int, width: int) -> str:
  """The patch sizes that divide a height x width image, for an error: '1, 2, 4'."""
  return ", ".join(str(size) for size in range(1, math.gcd(height, width) + 1)
                   if height % size == 0 and width % size == 0)


@register("vit")
class ViT(nnx.Module):
  """Patch embedding, class token, learned positions, encoder blocks, head.

  `stem='patch'` embeds non-overlapping patch×patch tiles with one linear map;
  `stem='conv'` first runs a 3×3 convolution, which helps on small data sets
  (Xiao et al. 2021, "Early convolutions help transformers see better");
  `stem='cnn'` first runs conv stages with pooling (`stem_channels`, each
  `stem_blocks_per_stage` 3×3 conv + GroupNorm + ReLU blocks and a 2×2
  max-pool, as in the CNN student), and
  `patch` then tiles their smaller output: the hybrid of Dosovitskiy et al.,
  with a small CNN in place of their ResNet.

  `distill_token=True` adds DeiT's distillation token (Touvron et al. 2021)
  after the class token, with a head of its own: `token_heads` returns both
  heads' logits for training, and the model predicts with the log of their
  mean softmax, as DeiT does at test time.
  """

  @staticmethod
  def inner_layer_count(settings: dict) -> int:
    """One inner layer an encoder block (`forward_features`), for `models.inner_layer_count`."""
    return int(settings["depth"])

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int], patch: int = 4,
               width: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 4,
               stem: str = "patch", stem_channels: list[int] = (32, 64),
               stem_blocks_per_stage: int = 1, head_init_scale: float = 0.0, dtype=None,
               norm_eps: float = 1e-6, exact_gelu: bool = False, distill_token: bool = False,
               rngs: nnx.Rngs):
    height, width_px, channels = image_shape
    if stem not in ("patch", "conv", "cnn"):
      raise UserError(f"vit stem must be 'patch', 'conv' or 'cnn', got '{stem}'")
    conv_stem = cnn_stem = None
    stem_out = channels
    if stem == "conv":
      # How the stem computes is a per-backend choice (`distill.backend`). Both kinds hold the
      # same `kernel` and `bias`, drawn alike, so a checkpoint of either loads into the other.
      if backend.choices().conv_stem == "conv":
        conv_stem = nnx.Conv(channels, width // 2, (3, 3), padding="SAME", dtype=dtype,
                             rngs=rngs)
      else:
        conv_stem = NeighbourhoodConv(channels, width // 2, 3, dtype=dtype, rngs=rngs)
      stem_out = width // 2
    elif stem == "cnn":
      cnn_stem = ConvStages(channels, list(stem_channels), blocks_per_stage=stem_blocks_per_stage,
                            pool_last=True, key_prefix="stem_", dtype=dtype, rngs=rngs)
      # Pooled to no row or column, every patch divides the stem output: refused here, or
      # training fails on a zero division.
      too_small = pooled_too_small(height, width_px, cnn_stem.pool_count,
                                   "after each stem stage")
      if too_small is not None:
        fit = pools_that_fit(height, width_px)
        fewer = f"list at most {fit} stem_channels, or " if fit else ""
        raise UserError(f"vit stem_channels {list(stem_channels)} {too_small}: {fewer}use "
                        f"stem = 'patch' with a patch that divides {height}x{width_px} "
                        f"({_dividing_sizes(height, width_px)} do)")
      height, width_px = cnn_stem.output_size(height, width_px)
      stem_out = cnn_stem.out_channels
    # `stem` is the conv stem's name in checkpoints saved before the CNN stem existed.
    self.stem = conv_stem
    self.cnn_stem = cnn_stem
    if height % patch or width_px % patch:
      raise UserError(f"vit patch {patch} must divide the "
                      f"{'stem output' if stem == 'cnn' else 'image'} "
                      f"size {height}x{width_px}; {_dividing_sizes(height, width_px)} do")
    if width % heads:
      raise UserError(f"vit width {width} must be divisible by heads {heads}")
    self.patch = patch
    self.patch_embed = dense.linear(patch * patch * stem_out, width, dtype=dtype, rngs=rngs)
    num_tokens = (height // patch) * (width_px // patch) + (2 if distill_token else 1)
    self.class_token = nnx.Param(jnp.zeros((1, 1, width)))
    self.distill_token = nnx.Param(jnp.zeros((1, 1, width))) if distill_token else None
    self.positions = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, num_tokens, width)))
    self.blocks = nnx.List([EncoderBlock(width, heads, mlp_ratio, dtype=dtype, norm_eps=norm_eps,
                                         exact_gelu=exact_gelu, rngs=rngs)
                            for _ in range(depth)])
    self.final_norm = nnx.LayerNorm(width, epsilon=norm_eps, dtype=jnp.float32, rngs=rngs)
    self.head = classifier_head(width, num_classes, head_init_scale=head_init_scale, rngs=rngs)
    # Zero-initialised like the class head, so both heads start uniform (step 0 = log C).
    self.distill_head = (classifier_head(width, num_classes, head_init_scale=head_init_scale,
                                         rngs=rngs) if distill_token else None)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    return self.forward_features(images_BxHxWxC)[0]

  def forward_features(self, images_BxHxWxC: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """(logits [B, classes], the tokens [B, T, D] after each block): what a hint can match."""
    block_tokens = self.block_tokens(images_BxHxWxC)
    if self.distill_token is not None:
      from distill.losses import token_predictions  # noqa: PLC0415 (models import no losses)

      return token_predictions(*self._heads(block_tokens[-1])), block_tokens
    return self.head(self.final_norm(block_tokens[-1][:, 0])), block_tokens

  def token_heads(self, images_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(class head's logits, distillation head's logits), each [B, classes]."""
    if self.distill_token is None:
      raise UserError("this ViT has no distillation token (build it with distill_token=True)")
    return self._heads(self.block_tokens(images_BxHxWxC)[-1])

  def _heads(self, tokens_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
    normed = self.final_norm(tokens_BxTxD[:, :2])
    return self.head(normed[:, 0]), self.distill_head(normed[:, 1])

  def block_tokens(self, images_BxHxWxC: jax.Array) -> list[jax.Array]:
    """The tokens [B, T, D] after each encoder block, first to last."""
    x = images_BxHxWxC
    if self.cnn_stem is not None:
      x = self.cnn_stem(x)
    gathered = isinstance(self.stem, NeighbourhoodConv)
    if gathered:
      # Tile the (narrow) neighbourhoods, not the (wide) stem output: the stem then
      # writes its activations straight in token order, with no transpose of them.
      x = self.stem.neighbourhoods(x)
    elif self.stem is not None:
      x = nnx.gelu(self.stem(x))
    batch, height, width, channels = x.shape
    p = self.patch
    # [B, H/p, p, W/p, p, C] -> [B, (H/p)(W/p), p, p, C]: tiles as tokens.
    x = x.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // p) * (width // p), p, p, channels)
    if gathered:
      x = self.stem.project(x, activation=nnx.gelu)
    x = x.reshape(*x.shape[:2], -1)
    tokens = self.patch_embed(x)
    leading = [jnp.broadcast_to(token[...], (batch, 1, tokens.shape[-1]))
               for token in (self.class_token, self.distill_token) if token is not None]
    tokens = jnp.concatenate([*leading, tokens], axis=1) + self.positions[...]
    outputs = []
    for block in self.blocks:
      tokens = block(tokens)
      outputs.append(tokens)
    return outputs

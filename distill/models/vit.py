"""Vision Transformer (Dosovitskiy et al. 2021), sized by the recipe."""

import jax
import jax.numpy as jnp
from flax import nnx

from distill import backend
from distill.errors import UserError
from distill.models import dense, register
from distill.models.cnn import ConvStages, NeighbourhoodConv
from distill.models.heads import classifier_head


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
                                            dtype=dtype, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, epsilon=norm_eps, dtype=jnp.float32, rngs=rngs)
    self.mlp_in = dense.linear(width, width * mlp_ratio, dtype=dtype, rngs=rngs)
    self.mlp_out = dense.linear(width * mlp_ratio, width, dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BxTxD: jax.Array) -> jax.Array:
    x = tokens_BxTxD
    x = x + self.attention(self.attention_norm(x))
    hidden = nnx.gelu(self.mlp_in(self.mlp_norm(x)), approximate=not self.exact_gelu)
    return x + self.mlp_out(hidden)


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
      height, width_px = cnn_stem.output_size(height, width_px)
      stem_out = cnn_stem.out_channels
    # `stem` is the conv stem's name in checkpoints saved before the CNN stem existed.
    self.stem = conv_stem
    self.cnn_stem = cnn_stem
    if height % patch or width_px % patch:
      raise UserError(f"vit patch {patch} must divide the "
                      f"{'stem output' if stem == 'cnn' else 'image'} "
                      f"size {height}x{width_px}")
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

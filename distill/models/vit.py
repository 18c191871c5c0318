"""Vision Transformer (Dosovitskiy et al. 2021), sized by the recipe."""

from flax import nnx
import jax
import jax.numpy as jnp

from distill.errors import UserError
from distill.models import register
from distill.models.heads import classifier_head


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, width: int, heads: int, mlp_ratio: int, *, dtype=None, rngs: nnx.Rngs):
    # Norms compute in float32 whatever the matmul dtype: their statistics need it.
    self.attention_norm = nnx.LayerNorm(width, dtype=jnp.float32, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False,
                                            dtype=dtype, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, dtype=jnp.float32, rngs=rngs)
    self.mlp_in = nnx.Linear(width, width * mlp_ratio, dtype=dtype, rngs=rngs)
    self.mlp_out = nnx.Linear(width * mlp_ratio, width, dtype=dtype, rngs=rngs)

  def __call__(self, tokens_BxTxD: jax.Array) -> jax.Array:
    x = tokens_BxTxD
    x = x + self.attention(self.attention_norm(x))
    return x + self.mlp_out(nnx.gelu(self.mlp_in(self.mlp_norm(x))))


@register("vit")
class ViT(nnx.Module):
  """Patch embedding, class token, learned positions, encoder blocks, head.

  `stem='patch'` embeds non-overlapping patch×patch tiles with one linear map;
  `stem='conv'` first runs a 3×3 convolution, which helps on small data sets
  (Xiao et al. 2021, "Early convolutions help transformers see better").
  """

  def __init__(self, *, num_classes: int, image_shape: tuple[int, int, int], patch: int = 4,
               width: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 4,
               stem: str = "patch", head_init_scale: float = 0.0, dtype=None,
               rngs: nnx.Rngs):
    height, width_px, channels = image_shape
    if height % patch or width_px % patch:
      raise UserError(f"vit patch {patch} must divide the image size {height}x{width_px}")
    if width % heads:
      raise UserError(f"vit width {width} must be divisible by heads {heads}")
    if stem not in ("patch", "conv"):
      raise UserError(f"vit stem must be 'patch' or 'conv', got '{stem}'")
    self.patch = patch
    self.stem = (nnx.Conv(channels, width // 2, (3, 3), dtype=dtype, rngs=rngs) if stem == "conv" else None)
    stem_channels = width // 2 if stem == "conv" else channels
    self.patch_embed = nnx.Linear(patch * patch * stem_channels, width, dtype=dtype, rngs=rngs)
    num_tokens = (height // patch) * (width_px // patch) + 1
    self.class_token = nnx.Param(jnp.zeros((1, 1, width)))
    self.positions = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, num_tokens, width)))
    self.blocks = nnx.List([EncoderBlock(width, heads, mlp_ratio, dtype=dtype, rngs=rngs) for _ in range(depth)])
    self.final_norm = nnx.LayerNorm(width, dtype=jnp.float32, rngs=rngs)
    self.head = classifier_head(width, num_classes, head_init_scale=head_init_scale, rngs=rngs)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    x = images_BxHxWxC
    if self.stem is not None:
      x = nnx.gelu(self.stem(x))
    batch, height, width, channels = x.shape
    p = self.patch
    # [B, H/p, p, W/p, p, C] -> [B, (H/p)(W/p), p*p*C]: tiles as tokens.
    x = x.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // p) * (width // p), p * p * channels)
    tokens = self.patch_embed(x)
    class_token = jnp.broadcast_to(self.class_token[...], (batch, 1, tokens.shape[-1]))
    tokens = jnp.concatenate([class_token, tokens], axis=1) + self.positions[...]
    for block in self.blocks:
      tokens = block(tokens)
    return self.head(self.final_norm(tokens[:, 0]))

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compiled_forward
from flax import nnx

from distill import losses, step
from distill.errors import UserError
from distill.models import count_params, create_model, inner_layer_count, model_names

SETTINGS = {
    "vit": {"patch": 4, "width": 32, "depth": 2, "heads": 4, "mlp_ratio": 2},
    "vit_conv": {"patch": 4, "width": 32, "depth": 1, "heads": 2, "stem": "conv"},
    "vit_cnn": {"patch": 1, "width": 32, "depth": 1, "heads": 2, "stem": "cnn",
                "stem_channels": [4, 8]},
    "cnn": {"channels": [8, 16]},
    "cnn_flatten": {"channels": [8, 16], "blocks_per_stage": 1, "pool": "flatten"},
    "mlp": {"hidden": [32]},
    "linear": {},
}


def _build(key, image_shape=(28, 28, 1), **extra):
  name = key.split("_")[0]
  return create_model(name, num_classes=10, image_shape=image_shape, **SETTINGS[key], **extra)


def _gradients(loss, model, *inputs):
  """The gradients of `loss(model, *inputs)` as one compiled program, with respect to the
  model's parameters and then each input.

  jax.jit over the split model, as distill itself compiles: nnx.jit of the lowest flax
  allowed passes jit an argument jax 0.10 does not take.
  """
  graphdef, state = nnx.split(model)
  return jax.jit(jax.grad(lambda state, *xs: loss(nnx.merge(graphdef, state), *xs),
                          argnums=tuple(range(1 + len(inputs)))))(state, *inputs)


def test_registry_lists_all_models():
  assert model_names() == ["cnn", "linear", "mlp", "vit"]


@pytest.mark.parametrize("key", SETTINGS)
@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_shapes_and_params(key, image_shape):
  model = _build(key, image_shape)
  logits = compiled_forward(model, jnp.zeros((3, *image_shape)))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  assert count_params(model) > 0


def test_param_counts_match_architecture():
  # linear: 784*10 weights + 10 biases.
  assert count_params(_build("linear")) == 7850
  # The default CNN student stays under 100k parameters.
  cnn = create_model("cnn", num_classes=10, image_shape=(28, 28, 1))
  assert count_params(cnn) < 100_000
  # Flattened: conv 3*3*1*8 + norm 2*8 + conv 3*3*8*16 + norm 2*16, then a
  # head on the 7x7x16 map left by two 2x2 pools: 7*7*16*10 + 10.
  assert count_params(_build("cnn_flatten")) == 72 + 16 + 1152 + 32 + 7850
  # The CNN stem: the same two stages, then 1x1 tokens of 8 channels embedded in 32.
  stem = 3 * 3 * 1 * 4 + 2 * 4 + 3 * 3 * 4 * 8 + 2 * 8
  vit_cnn = _build("vit_cnn")
  vit_patch = create_model("vit", num_classes=10, image_shape=(28, 28, 1),
                           **{**SETTINGS["vit_cnn"], "patch": 7, "stem": "patch"})
  assert (count_params(vit_cnn) - count_params(vit_patch)
          == stem + (8 - 49) * 32 + (50 - 17) * 32)
  # Two blocks per stage add a 4->4 and an 8->8 conv, each with its norm.
  deeper = _build("vit_cnn", stem_blocks_per_stage=2)
  assert (count_params(deeper) - count_params(vit_cnn)
          == 3 * 3 * 4 * 4 + 2 * 4 + 3 * 3 * 8 * 8 + 2 * 8)
  assert compiled_forward(deeper, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


def test_cnn_keeps_its_checkpoint_layout():
  # Checkpoints of earlier runs hold convs/norms/head at the top level.
  state = nnx.state(_build("cnn"), nnx.Param)
  paths = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(state)}
  assert {"convs/0/kernel", "norms/3/scale", "head/kernel", "head/bias"} <= paths


@pytest.mark.parametrize("key", SETTINGS)
def test_init_loss_is_log_num_classes(key):
  model = _build(key)
  images = jax.random.normal(jax.random.key(0), (16, 28, 28, 1))
  labels = jnp.arange(16) % 10
  targets = jax.nn.softmax(jax.random.normal(jax.random.key(1), (16, 10)) * 3)
  logits = compiled_forward(model, images)
  for loss in (losses.hard_cross_entropy(logits, labels),
               losses.soft_cross_entropy(logits, targets)):
    assert losses.init_loss_check(float(loss), 10).ok


@pytest.mark.parametrize("key", SETTINGS)
def test_init_check_fires_for_badly_scaled_head(key):
  model = _build(key, head_init_scale=10.0)
  images = jax.random.normal(jax.random.key(0), (64, 28, 28, 1))
  loss = float(losses.hard_cross_entropy(compiled_forward(model, images), jnp.arange(64) % 10))
  check = losses.init_loss_check(loss, 10)
  assert not check.ok and "WARNING" in check.message


def test_vit_rejects_bad_geometry():
  with pytest.raises(UserError, match="patch 5 must divide the image size 28x28; 1, 2, 4, 7, 14, "
                                      "28 do"):
    create_model("vit", num_classes=10, image_shape=(28, 28, 1), patch=5)
  with pytest.raises(UserError, match="divisible by heads"):
    create_model("vit", num_classes=10, image_shape=(28, 28, 1), width=30, heads=4)
  with pytest.raises(UserError, match="patch 2 must divide the stem output size 7x7; 1, 7 do"):
    create_model("vit", num_classes=10, image_shape=(28, 28, 1), patch=2, stem="cnn")
  with pytest.raises(UserError, match="stem must be 'patch', 'conv' or 'cnn', got 'resnet'"):
    create_model("vit", num_classes=10, image_shape=(28, 28, 1), stem="resnet")
  with pytest.raises(UserError, match="cnn pool must be 'mean' or 'flatten', got 'max'"):
    create_model("cnn", num_classes=10, image_shape=(28, 28, 1), pool="max")
  with pytest.raises(UserError, match="at least one stage and one block per stage"):
    create_model("cnn", num_classes=10, image_shape=(28, 28, 1), blocks_per_stage=0)
  with pytest.raises(UserError, match=r"got channels \[\]"):
    create_model("cnn", num_classes=10, image_shape=(28, 28, 1), channels=[])
  with pytest.raises(UserError, match="one block per stage, got stem_channels \\[32, 64\\] "
                                      "and stem_blocks_per_stage 0"):
    create_model("vit", num_classes=10, image_shape=(28, 28, 1), stem="cnn",
                 stem_blocks_per_stage=0)


def test_vit_cnn_stem_refuses_an_image_its_pools_leave_empty():
  # Three 2x2 pools take 6x10 to 0x1, which every patch size divides: a crash in training.
  with pytest.raises(UserError, match=r"^vit stem_channels \[4, 8, 16\] halve the image 3 times "
                                      r"\(a 2x2 max-pool after each stem stage\), so they need "
                                      r"8x8 pixels or more, and the image is 6x10: list at most 2 "
                                      r"stem_channels, or use stem = 'patch' with a patch that "
                                      r"divides 6x10 \(1, 2 do\)$"):
    create_model("vit", num_classes=3, image_shape=(6, 10, 1), stem="cnn",
                 stem_channels=[4, 8, 16], patch=1, width=8, depth=1, heads=2)
  # An image one pixel tall leaves no stem stage to keep.
  with pytest.raises(UserError, match=r"and the image is 1x10: use stem = 'patch' with a patch "
                                      r"that divides 1x10 \(1 do\)$"):
    create_model("vit", num_classes=3, image_shape=(1, 10, 1), stem="cnn", stem_channels=[4],
                 patch=1, width=8, depth=1, heads=2)
  # As many stages as fit build.
  create_model("vit", num_classes=3, image_shape=(6, 10, 1), stem="cnn", stem_channels=[4, 8],
               patch=1, width=8, depth=1, heads=2)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_vit_patch_larger_than_the_image_is_refused(stem):
  with pytest.raises(UserError, match=r"^vit patch 4 must divide the image size 2x6; 1, 2 do$"):
    create_model("vit", num_classes=3, image_shape=(2, 6, 1), stem=stem, patch=4, width=8,
                 depth=1, heads=2)


def test_cnn_refuses_an_image_its_pools_leave_empty():
  with pytest.raises(UserError, match=r"^cnn channels \[4, 8, 8\] with pool = 'flatten' halve "
                                      r"the image 3 times \(a 2x2 max-pool after each stage\), "
                                      r"so they need 8x8 pixels or more, and the image is 6x10: "
                                      r"list at most 2 channels with pool = 'flatten', or 3 with "
                                      r"pool = 'mean'$"):
    create_model("cnn", num_classes=3, image_shape=(6, 10, 1), channels=[4, 8, 8],
                 blocks_per_stage=1, pool="flatten")
  with pytest.raises(UserError, match=r"^cnn channels \[4, 8, 8, 8\] with pool = 'mean' halve "
                                      r"the image 3 times \(a 2x2 max-pool between stages\), "
                                      r"so they need 8x8 pixels or more, and the image is 6x10: "
                                      r"list at most 3 channels with pool = 'mean'$"):
    create_model("cnn", num_classes=3, image_shape=(6, 10, 1), channels=[4, 8, 8, 8],
                 blocks_per_stage=1)
  with pytest.raises(UserError, match=r"the image is 1x10: list 1 channel with pool = 'mean'$"):
    create_model("cnn", num_classes=3, image_shape=(1, 10, 1), channels=[4], pool="flatten")
  # As many stages as fit build, and train without a NaN.
  for channels, pool in (([4, 8], "flatten"), ([4, 8, 8], "mean")):
    model = create_model("cnn", num_classes=3, image_shape=(6, 10, 1), channels=channels,
                         blocks_per_stage=1, pool=pool)
    # Jitted: op by op, each of the CNN's gradient ops compiled on its own took most of 9 s.
    grads = _gradients(lambda m: m(jnp.ones((2, 6, 10, 1))).sum(), model)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_models_without_pooling_take_a_one_pixel_image(name):
  model = create_model(name, num_classes=3, image_shape=(1, 1, 1))
  assert compiled_forward(model, jnp.zeros((2, 1, 1, 1))).shape == (2, 3)


def test_unknown_model_and_bad_setting():
  with pytest.raises(UserError, match="unknown model 'resnet'.*cnn"):
    create_model("resnet", num_classes=10, image_shape=(28, 28, 1))
  with pytest.raises(UserError, match="bad settings for model 'cnn'"):
    create_model("cnn", num_classes=10, image_shape=(28, 28, 1), depth=3)


def test_same_seed_same_params():
  def params(seed):
    model = create_model("mlp", num_classes=10, image_shape=(8, 8, 1), seed=seed, hidden=[8])
    return jax.tree.leaves(nnx.state(model, nnx.Param))

  first, again, other = params(3), params(3), params(4)
  assert len(first) == len(again) == len(other) > 0
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)
  # Zero-initialised leaves (biases, the head) match whatever the seed, so only some must differ.
  assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("key", SETTINGS)
def test_bfloat16_compute_keeps_float32_params_and_logits(key):
  # A non-zero head, so the logits carry the body's bfloat16 rounding.
  model = _build(key, compute_dtype="bfloat16", head_init_scale=0.5)
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in params)
  images = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  logits = compiled_forward(model, images)
  assert logits.dtype == jnp.float32
  reference = compiled_forward(_build(key, head_init_scale=0.5), images)
  scale = float(jnp.abs(reference).max())
  assert scale > 0.1
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale)
  assert not np.array_equal(np.asarray(logits), np.asarray(reference)) or key == "linear"


@pytest.mark.parametrize(("channels", "use_bias"), [(1, True), (3, True), (1, False)])
def test_neighbourhood_conv_is_nnx_conv(channels, use_bias):
  # The ViT's conv stem and the conv stages' first layer compute a 'SAME' 3x3
  # convolution as one matmul; it must draw the same weights from a seed (and
  # no bias key without a bias) and give nnx.Conv's outputs and gradients.
  # Imported here, not at the top: importing a model module registers its models,
  # and the registry loads the built-in ones only while it is still empty.
  from distill.models.cnn import NeighbourhoodConv  # noqa: PLC0415

  rngs_ours, rngs_conv = nnx.Rngs(4), nnx.Rngs(4)
  ours = NeighbourhoodConv(channels, 8, 3, use_bias=use_bias, rngs=rngs_ours)
  conv = nnx.Conv(channels, 8, (3, 3), use_bias=use_bias, rngs=rngs_conv)
  np.testing.assert_array_equal(ours.kernel[...], conv.kernel[...])
  # The next layer's weights come from the same keys.
  np.testing.assert_array_equal(jax.random.key_data(rngs_ours.params()),
                                jax.random.key_data(rngs_conv.params()))
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(conv))
  if use_bias:
    bias = jax.random.normal(jax.random.key(1), (8,))
    ours.bias[...], conv.bias[...] = bias, bias
  images = jax.random.normal(jax.random.key(2), (2, 12, 10, channels))
  np.testing.assert_allclose(ours(images), conv(images), atol=1e-5)
  # The tiled layout the ViT uses: neighbourhoods first, then project any leading shape.
  tiled = ours.project(ours.neighbourhoods(images).reshape(2, 6, 2, 5, 2, -1),
                       activation=jnp.tanh)
  np.testing.assert_allclose(tiled.reshape(2, 12, 10, 8), jnp.tanh(conv(images)), atol=1e-5)

  def loss(module):
    return jnp.sum(jnp.sin(module(images)))
  (ours_grads,), (conv_grads,) = _gradients(loss, ours), _gradients(loss, conv)
  for name in ("kernel", "bias") if use_bias else ("kernel",):
    np.testing.assert_allclose(ours_grads[name][...], conv_grads[name][...], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_vit_attention_is_jax_attention_with_the_softmax_gradient_written_out(dtype):
  # The ViT's attention_fn must give flax's (jax.nn.dot_product_attention's) outputs
  # bit for bit, so checkpoints predict as before, and its gradients to round-off.
  from distill.models.vit import attention, softmax_last  # noqa: PLC0415 (see above)

  query, key, value = (jax.random.normal(jax.random.key(i), (3, 5, 2, 8)).astype(dtype)
                       for i in range(3))
  np.testing.assert_array_equal(jax.jit(attention)(query, key, value),
                                jax.jit(nnx.dot_product_attention)(query, key, value))

  def loss(function):
    return lambda *qkv: jnp.sum(jnp.sin(3.0 * function(*qkv).astype(jnp.float32)))

  ours = jax.jit(jax.grad(loss(attention), argnums=(0, 1, 2)))(query, key, value)
  flax_grads = jax.jit(jax.grad(loss(nnx.dot_product_attention), argnums=(0, 1, 2)))(
      query, key, value)
  tolerance = 1e-5 if dtype == jnp.float32 else 0.05
  for a, b in zip(ours, flax_grads, strict=True):
    assert float(jnp.abs(b.astype(jnp.float32)).max()) > 0.1
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), atol=tolerance)
  logits = jax.random.normal(jax.random.key(5), (4, 7))
  cotangent = jax.random.normal(jax.random.key(6), (4, 7))
  np.testing.assert_allclose(jax.vjp(softmax_last, logits)[1](cotangent)[0],
                             jax.vjp(jax.nn.softmax, logits)[1](cotangent)[0], atol=1e-6)
  # A mask (which the ViT never passes) goes to flax's own function.
  mask = jnp.tril(jnp.ones((5, 5), bool))[None, None]
  np.testing.assert_array_equal(attention(query, key, value, mask=mask),
                                nnx.dot_product_attention(query, key, value, mask=mask))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_self_attention_is_the_modules_own(dtype):
  # One [D, 3·heads·depth] product for query, key and value must give the module's outputs
  # (checkpoints predict as before) and its parameters' gradients to round-off.
  from distill.models.vit import attention, self_attention  # noqa: PLC0415 (see above)

  layer = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, dtype=dtype,
                                 attention_fn=attention, rngs=nnx.Rngs(0))
  for index, projection in enumerate((layer.query, layer.key, layer.value, layer.out)):
    projection.bias[...] = jax.random.normal(jax.random.key(10 + index), projection.bias.shape)
  x = jax.random.normal(jax.random.key(1), (3, 5, 32))
  graphdef, params = nnx.split(layer)

  def loss(function):
    def value(params):
      out = function(nnx.merge(graphdef, params), x).astype(jnp.float32)
      return jnp.sum(jnp.sin(3.0 * out))
    return value

  fused = jax.jit(lambda p: self_attention(nnx.merge(graphdef, p), x))(params)
  plain = jax.jit(lambda p: nnx.merge(graphdef, p)(x))(params)
  assert fused.dtype == plain.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 0.05
  np.testing.assert_allclose(fused.astype(jnp.float32), plain.astype(jnp.float32),
                             atol=tolerance)
  ours = jax.jit(jax.grad(loss(self_attention)))(params)
  flax_grads = jax.jit(jax.grad(loss(lambda module, inputs: module(inputs))))(params)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(ours),
                               jax.tree_util.tree_leaves_with_path(flax_grads), strict=True):
    # The key's bias moves every score of a query alike, which the softmax cancels.
    if "key" not in str(path[0]) or "bias" not in str(path[1]):
      assert float(jnp.abs(b).max()) > 0.01, path
    np.testing.assert_allclose(a, b, atol=tolerance * 10, rtol=tolerance, err_msg=str(path))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 4), (1, 5, 4, 2)])
def test_max_pool_2x2_is_nnx_max_pool_bit_for_bit(shape):
  # The conv stages pool with a reshape and their own gradient instead of XLA's
  # select-and-scatter (6x faster on CPU); values and gradients must be the same
  # bits, odd sizes (a dropped last row/column) and tied maxima included: after
  # a ReLU, windows of zeros tie.
  from distill.models.cnn import max_pool_2x2  # noqa: PLC0415

  def reference(x):
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))

  noise = jax.random.normal(jax.random.key(0), shape)
  for images in (noise, jnp.maximum(jnp.round(noise * 2) / 2, 0.0)):  # the second ties often
    pooled, pull_back = jax.vjp(max_pool_2x2, images)
    expected, expected_pull_back = jax.vjp(reference, images)
    np.testing.assert_array_equal(pooled, expected)
    # Without a gradient the pool takes its elementwise form (faster to evaluate on CPU):
    # the same bits, eager and compiled.
    np.testing.assert_array_equal(max_pool_2x2(images), expected)
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(images), expected)
    grad_pooled = jax.random.normal(jax.random.key(1), pooled.shape)
    np.testing.assert_array_equal(pull_back(grad_pooled)[0], expected_pull_back(grad_pooled)[0])


@pytest.mark.parametrize(("shape", "groups", "dtype"), [
    ((4, 6, 6, 16), 8, jnp.float32), ((2, 5, 3, 6), 3, jnp.float32), ((3, 4, 4, 8), 8, None)])
def test_group_norm_is_nnx_group_norm(shape, groups, dtype):
  # The conv stages' GroupNorm sums its statistics per channel first (faster on
  # XLA:CPU): the same function and parameters as flax's, to round-off.
  from distill.models.cnn import GroupNorm  # noqa: PLC0415

  ours = GroupNorm(shape[-1], num_groups=groups, dtype=dtype, rngs=nnx.Rngs(0))
  flax_norm = nnx.GroupNorm(shape[-1], num_groups=groups, dtype=dtype, rngs=nnx.Rngs(0))
  for module in (ours, flax_norm):  # scale and bias away from 1 and 0
    module.scale[...] = jnp.linspace(0.5, 2.0, shape[-1])
    module.bias[...] = jnp.linspace(-1.0, 1.0, shape[-1])
  assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(flax_norm))
  images = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)

  def loss(module, x):
    return jnp.sum(jnp.sin(module(x)))

  np.testing.assert_allclose(ours(images), flax_norm(images), rtol=1e-5, atol=1e-5)
  # Jitted, as training takes them (op by op, each compiled alone, took seconds).
  ours_grads = _gradients(loss, ours, images)
  flax_grads = _gradients(loss, flax_norm, images)
  np.testing.assert_allclose(ours_grads[1], flax_grads[1], rtol=1e-4, atol=1e-4)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(ours_grads[0][name][...], flax_grads[0][name][...],
                               rtol=1e-4, atol=1e-4)


def test_conv_stem_vit_has_no_convolution_and_is_scanned():
  # Convolutions inside lax.scan are slow on XLA:CPU, so such models are
  # unrolled; the matmul stem keeps the ViT teacher on the (cheaper) scan.
  assert not step.should_unroll(_build("vit_conv"))
  assert step.should_unroll(_build("cnn")) == (jax.default_backend() == "cpu")
  assert step.should_unroll(_build("vit_cnn")) == (jax.default_backend() == "cpu")
  from distill.models.cnn import NeighbourhoodConv  # noqa: PLC0415 (see above)

  with pytest.raises(UserError, match="kernel size must be odd"):
    NeighbourhoodConv(1, 4, 2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name, settings", [
    ("vit", dict(patch=4, width=8, depth=3, heads=2)),
    ("vit", dict(patch=1, width=8, depth=2, heads=2, stem="cnn", stem_channels=[4, 8])),
    ("cnn", dict(channels=[4, 8, 8], blocks_per_stage=1)),
    ("mlp", dict(hidden=[8, 4])),
])
def test_inner_layer_count_is_what_forward_features_returns(name, settings):
  """Recipes are checked against the count before any model is built: it must be the truth."""
  model = create_model(name, num_classes=3, image_shape=(8, 8, 1), **settings)
  _, features = model.forward_features(jnp.zeros((2, 8, 8, 1)))
  assert inner_layer_count(name, settings) == len(features) > 1
  assert inner_layer_count("linear", {}) == 0


def test_a_teacher_warns_when_its_recipes_student_cannot_take_the_images(tmp_path, monkeypatch):
  """Students start from the teacher's recipe: one whose CNN pools a 6x10 image to nothing is
  said as the teacher starts (abstractly built, no parameters), not after it has trained."""
  from conftest import TINY_FLAGS, run_cli  # noqa: PLC0415

  from distill import loop  # noqa: PLC0415

  def stop_before_training(**_):
    raise UserError("stopped where training starts")

  # Said before training: the run is stopped where it would start to train.
  monkeypatch.setattr(loop, "fit", stop_before_training)
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "small.npz", x=rng.integers(0, 256, (60, 6, 10), np.uint8),
           y=np.arange(60) % 2)
  result = run_cli("teacher", "--recipe", "digits", "--dataset", "npz", "--data-dir",
                   tmp_path / "small.npz", "-w", tmp_path / "t", *TINY_FLAGS,
                   "--set", "teacher.vit.stem=patch", "--set", "teacher.vit.patch=2",
                   "--set", "data.val_size=4", "--set", "teacher.steps=2",
                   "--set", "teacher.batch_size=8", "--set", "student.batch_size=8",
                   "--set", "student.cnn.channels=[8,8,8]",
                   "--no-export")
  assert result.exit_code == 2 and "stopped where training starts" in result.stderr, (
      result.output)
  assert ("students of this teacher will not train with the recipe's student: the student "
          "(student.cnn.*): cnn channels") in " ".join(result.stderr.split())

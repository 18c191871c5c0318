"""Dense layers with a row-wise kernel gradient: nnx.Linear's forward, autodiff's gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill import backend
from distill.models import dense


def _pair(in_features, out_features, dtype=None):
  """A `dense.linear` and an `nnx.Linear` holding the same (random) parameters."""
  ours = dense.linear(in_features, out_features, dtype=dtype, rngs=nnx.Rngs(0))
  plain = nnx.Linear(in_features, out_features, dtype=dtype, rngs=nnx.Rngs(0))
  bias = jax.random.normal(jax.random.key(1), (out_features,))
  ours.bias[...] = bias
  plain.bias[...] = bias
  return ours, plain


def _gradients(layer, x):
  """d(loss)/d(bias, kernel, x) of a loss that weights every output differently."""
  graphdef, params = nnx.split(layer)
  weights = jax.random.normal(jax.random.key(2), (*x.shape[:-1], layer.kernel.shape[1]))

  def loss(params, inputs):
    return jnp.sum(nnx.merge(graphdef, params)(inputs).astype(jnp.float32) * weights)

  param_grads, input_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  return [*jax.tree.leaves(param_grads), input_grad]


@pytest.fixture(params=[True, False], ids=["narrow-transposed", "one-dot"])
def narrow_choice(request, monkeypatch):
  """Both ways of computing a narrow layer's kernel gradient, whatever this backend's choice."""
  chosen = dataclasses.replace(backend.choices(),
                               transpose_narrow_weight_gradients=request.param)
  monkeypatch.setattr(backend, "choices", lambda backend_name=None: chosen)
  return request.param


@pytest.mark.parametrize("shape", [(16, 24), (4, 5, 24)], ids=["rows", "batch-tokens"])
@pytest.mark.parametrize("out_features", [10, 48], ids=["narrow", "wide"])
def test_forward_is_nnx_linear_and_gradients_are_autodiffs(shape, out_features, narrow_choice):
  ours, plain = _pair(shape[-1], out_features)
  x = jax.random.normal(jax.random.key(3), shape)
  # The forward pass is nnx.Linear's own product: bit for bit.
  np.testing.assert_array_equal(np.asarray(ours(x)), np.asarray(plain(x)))
  # The gradients add the same products in another order.
  for got, want in zip(_gradients(ours, x), _gradients(plain, x), strict=True):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_gives_float32_parameter_gradients(narrow_choice):
  ours, plain = _pair(24, 10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(3), (16, 24))
  ours_grads, plain_grads = _gradients(ours, x), _gradients(plain, x)
  for got, want in zip(ours_grads, plain_grads, strict=True):
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=2e-2, atol=2e-2)


def test_products_that_are_not_a_dense_layer_are_left_to_dot_general():
  x = jax.random.normal(jax.random.key(0), (3, 4, 5))
  y = jax.random.normal(jax.random.key(1), (3, 5, 6))
  batched = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_array_equal(
      np.asarray(dense.rows_dot_general(x, y, batched)),
      np.asarray(jax.lax.dot_general(x, y, batched)))
  kernel = y[0]
  plain = (((2,), (0,)), ((), ()))
  typed = dense.rows_dot_general(x, kernel, plain, preferred_element_type=jnp.float32)
  np.testing.assert_array_equal(np.asarray(typed), np.asarray(x @ kernel))
  # Only a plain dense product takes the custom gradient.
  def jaxpr(lhs, rhs, dimension_numbers):
    return str(jax.make_jaxpr(
        lambda a, b: dense.rows_dot_general(a, b, dimension_numbers))(lhs, rhs))

  assert "custom_vjp_call" in jaxpr(x, kernel, plain)
  assert "custom_vjp_call" not in jaxpr(x, y, batched)


@pytest.mark.parametrize("width, transposed", [(32, False), (49, True)])
def test_the_backends_narrow_output_width_picks_the_layers_that_transpose(
    width, transposed, monkeypatch):
  chosen = dataclasses.replace(backend.choices(), transpose_narrow_weight_gradients=True,
                               narrow_output_width=width)
  monkeypatch.setattr(backend, "choices", lambda backend_name=None: chosen)
  layer, _ = _pair(64, 48)
  graphdef, params = nnx.split(layer)
  x = jnp.ones((16, 64))
  gradient = jax.make_jaxpr(jax.grad(
      lambda p: jnp.sum(nnx.merge(graphdef, p)(x))))(params)
  # The transposed path is the one that keeps its transposes behind optimisation barriers.
  assert ("optimization_barrier" in str(gradient)) is transposed

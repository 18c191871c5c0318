"""Dense layers whose kernel gradient is one 2-D matmul over every row of the batch.

`linear(...)` is an `nnx.Linear` (same parameters, initialisation, forward
pass and checkpoints) built with `rows_dot_general`, which changes only how
the backward pass computes the kernel gradient:

* Over all leading axes at once. JAX differentiates a [B, T, in] @ [in, out]
  product into a kernel gradient that contracts B and T together, and
  XLA:CPU lays both 3-D operands out again ([B, T, F] -> [F, B, T]) before
  its dot. Flattened to [B·T, in]ᵀ @ [B·T, out] the same sum needs no copy
  (the CIFAR-10 ViT's step: 8% faster on an Intel Xeon).
* For a narrow output (a classifier head; on the CPU any layer up to 64
  wide, `BackendChoices.narrow_output_width`), optionally as (gᵀ @ x)ᵀ from a
  transposed copy of the small gradient g (`BackendChoices.
  transpose_narrow_weight_gradients`). XLA:CPU hands a dot to YNNPACK's fast
  kernels only when its operands come in canonical row-major order; the head's
  [rows, in]ᵀ @ [rows, 10] does not, and ran through XLA's own dot at about
  3.5 times PyTorch's time, while copying g ([rows, 10]) costs next to nothing.

The sums are the same products added in another order, so gradients agree
with plain autodiff to float rounding, not bit for bit.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax import lax

from distill import backend


def linear(in_features: int, out_features: int, **kwargs) -> nnx.Linear:
  """`nnx.Linear(in_features, out_features, **kwargs)` computing its kernel gradient by rows."""
  return nnx.Linear(in_features, out_features, dot_general=rows_dot_general, **kwargs)


def rows_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, out_sharding=None) -> jax.Array:
  """`lax.dot_general` for a dense layer, with the kernel gradient of `matmul`.

  A product that is not a dense layer's plain [..., in] @ [in, out] (batch
  dimensions, a precision, an output type or sharding) is left to
  `lax.dot_general` and plain autodiff.
  """
  (lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch) = dimension_numbers
  plain = (rhs.ndim == 2 and tuple(lhs_contracting) == (lhs.ndim - 1,)
           and tuple(rhs_contracting) == (0,) and not lhs_batch and not rhs_batch
           and precision is None and preferred_element_type is None and out_sharding is None)
  if plain:
    return matmul(lhs, rhs)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, out_sharding=out_sharding)


def _contract_last(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., in] @ kernel [in, out], as `nnx.Linear` computes it."""
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., in] @ kernel [in, out], as a `linear` layer computes it (kernel gradient by rows).

  The backward pass is `_matmul_backward`.
  """
  return _contract_last(x, kernel)


def _matmul_forward(x, kernel):
  return _contract_last(x, kernel), (x, kernel)


def _matmul_backward(residuals, grad):
  x, kernel = residuals
  # The input gradient is the one autodiff gives: grad [..., out] @ kernelᵀ.
  grad_x = lax.dot_general(grad, kernel, (((grad.ndim - 1,), (1,)), ((), ())))
  in_features, out_features = kernel.shape
  return grad_x, kernel_gradient(x.reshape(-1, in_features), grad.reshape(-1, out_features))


matmul.defvjp(_matmul_forward, _matmul_backward)


def kernel_gradient(x_rows: jax.Array, grad_rows: jax.Array) -> jax.Array:
  """Σ over rows of x ⊗ grad: [rows, in], [rows, out] -> [in, out]."""
  choices = backend.choices()
  if (choices.transpose_narrow_weight_gradients
      and grad_rows.shape[1] < choices.narrow_output_width):
    # The barriers keep XLA from folding the transposes back into the dot, which would
    # restore the non-canonical operand order this avoids.
    grad_t = lax.optimization_barrier(grad_rows.T)
    return lax.optimization_barrier(grad_t @ x_rows).T
  return x_rows.T @ grad_rows

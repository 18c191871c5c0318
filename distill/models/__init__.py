"""Model registry: name -> factory building an NNX classifier.

Every factory takes `num_classes`, `image_shape` (H, W, C), `rngs`, and its own
keyword settings from the recipe, and returns a module mapping float images
[B, H, W, C] to logits [B, num_classes].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distill.errors import UserError

_FACTORIES: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorator adding a model factory to the registry under `name`."""

  def add(factory: Callable[..., Any]) -> Callable[..., Any]:
    _FACTORIES[name] = factory
    return factory

  return add


def model_names() -> list[str]:
  """Names a recipe may use for `model`."""
  _load_builtin()
  return sorted(_FACTORIES)


def inner_layer_count(name: str, settings: dict[str, Any]) -> int | None:
  """How many inner layers model `name` built with `settings` exposes to a hint.

  The length of the list `forward_features` returns, known from the settings
  alone, so a recipe is checked before any model is built. None for a model
  that does not say (one registered from outside).
  """
  _load_builtin()
  if name not in _FACTORIES:
    raise UserError(f"unknown model '{name}'; valid: {', '.join(sorted(_FACTORIES))}")
  count = getattr(_FACTORIES[name], "inner_layer_count", None)
  return None if count is None else int(count(settings))


def create_model(name: str, *, num_classes: int, image_shape: tuple[int, int, int],
                 seed: int = 0, compute_dtype: str = "float32", **settings: Any):
  """Builds the registered model `name` with freshly initialised parameters.

  Parameters are always float32; `compute_dtype='bfloat16'` runs the matmuls
  and convolutions in bfloat16 (norms, the head and the loss stay float32).
  """
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  _load_builtin()
  if name not in _FACTORIES:
    raise UserError(f"unknown model '{name}'; valid: {', '.join(sorted(_FACTORIES))}")
  try:
    return _FACTORIES[name](num_classes=num_classes, image_shape=tuple(image_shape),
                            dtype=jnp.dtype(compute_dtype), rngs=nnx.Rngs(seed), **settings)
  except TypeError as e:
    raise UserError(f"bad settings for model '{name}': {e}") from None


def count_params(model) -> int:
  """Number of trainable scalars in `model`."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _load_builtin() -> None:
  # Imported on first use so that `distill --help` never pays for Flax. Always, not only
  # while the registry is empty: importing one model module first (vit registers cnn too)
  # must not hide the others. A second import is a dictionary lookup.
  from distill.models import cnn, mlp, vit  # noqa: F401, PLC0415

"""A Python function as a teacher: `package.module:function` on uint8 NHWC images.

The function takes images uint8 [B, H, W, C] as the data set stores them and
returns logits [B, C]. A JAX function that traces runs inside the student's
jitted step (online teaching); any other (NumPy, PyTorch, a remote call)
is called on concrete NumPy batches only.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distill.errors import UserError, one_line
from distill.importers import ForeignTeacher

# The batch the function is tried on: 2, not 1, so the batch axis is told apart from a class axis.
_PROBE_BATCH = 2


def _parse(source: str) -> tuple[str, list[str]]:
  """(module, attribute path) of 'package.module:function' (the function may be obj.method)."""
  module, sep, attribute = source.partition(":")
  names = attribute.split(".")
  if (not sep or ":" in attribute
      or not all(part.isidentifier() for part in [*module.split("."), *names])):
    raise UserError(f"{source!r} is not a callable teacher: write package.module:function")
  return module, names


def _resolve(source: str) -> Any:
  """The object `source` names, imported.

  A module in the current folder imports too, as with `python -m`: the
  `distill` script's own folder is what Python puts on `sys.path`. The folder
  goes last, so it never hides an installed package.
  """
  module_name, names = _parse(source)
  if os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  try:
    target = importlib.import_module(module_name)
  except ImportError as error:
    raise UserError(f"cannot import module {module_name} for teacher {source} "
                    f"({one_line(error)}); it must be importable from the current folder or "
                    "sys.path (PYTHONPATH)") from None
  # The module's own code may fail in any way while it is imported.
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise UserError(f"importing module {module_name} for teacher {source} failed "
                    f"({type(error).__name__}: {one_line(error)})") from None
  for depth, name in enumerate(names):
    if not hasattr(target, name):
      owner = ".".join([module_name, *names[:depth]])
      raise UserError(f"{owner} has no attribute {name!r} (teacher {source})")
    target = getattr(target, name)
  if not callable(target):
    kind = type(target).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    raise UserError(f"{source} is not callable: it is {article} {kind}, not a function")
  return target


def _to_uint8(pixels):
  """Float pixels as the uint8 images the function takes: rounded, clipped to 0..255."""
  if isinstance(pixels, np.ndarray):
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
  return jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8)


def open_callable(source: str, image_shape: tuple[int, int, int] | None = None) -> ForeignTeacher:
  """Imports the function `source` ('package.module:function') as a teacher.

  Args:
    source: where the function is: it takes uint8 [B, H, W, C] and returns logits [B, C].
    image_shape: the data set's (H, W, C); the function is tried once on zeros of that shape,
      to learn its class count and whether it traces under jax.jit.
  """
  if image_shape is None:
    raise ValueError("open_callable needs the data set's image_shape (H, W, C)")
  function = _resolve(source)

  def check(outputs, batch: int):
    shape = getattr(outputs, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != batch:
      shown = list(shape) if shape is not None else type(outputs).__name__
      raise UserError(f"{source} returned {shown} for {batch} images; a teacher must return "
                      "logits [batch, classes]")

  def apply(params, pixels):
    del params  # The function holds its own weights.
    outputs = function(_to_uint8(pixels))
    if isinstance(outputs, (list, tuple)):
      # Rows of scores as Python lists: an array like any other. Under jax.jit a list of
      # tracers stacks with jnp; NumPy cannot take tracers, so such a function runs on the host.
      outputs = np.asarray(outputs) if isinstance(pixels, np.ndarray) else jnp.asarray(outputs)
    check(outputs, pixels.shape[0])
    # Concrete NumPy in, NumPy out: a function that cannot trace never meets jnp here.
    if isinstance(pixels, np.ndarray) and not isinstance(outputs, jax.Array):
      return np.asarray(outputs, np.float32)
    return jnp.asarray(outputs, jnp.float32)

  probe_shape = (_PROBE_BATCH, *(int(n) for n in image_shape))
  traceable, reason = True, None
  try:
    jax.eval_shape(apply, None, jax.ShapeDtypeStruct(probe_shape, jnp.float32))
  except UserError:
    raise
  # Any failure to trace (a tracer turned into NumPy, Python control flow on values, a
  # non-JAX library) means the function must be called on concrete arrays instead.
  except Exception as error:  # pylint: disable=broad-exception-caught
    traceable, reason = False, f"{type(error).__name__}: {one_line(error)}"[:300]
  try:
    outputs = apply(None, np.zeros(probe_shape, np.float32))
  except UserError:
    raise
  # The user's function may fail in any way; say so in one line.
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise UserError(f"{source} failed on {_PROBE_BATCH} black uint8 images of shape "
                    f"{list(image_shape)} ({type(error).__name__}: {one_line(error)})") from None
  num_classes = int(outputs.shape[1])
  if num_classes < 2:
    raise UserError(f"{source} returned {num_classes} class scores per image; a teacher must "
                    "score at least 2 classes")
  details: dict[str, Any] = {
      "function": source,
      "module_file": getattr(importlib.import_module(source.partition(":")[0]), "__file__", None),
      "traceable": traceable,
  }
  if reason is not None:
    details["not_traceable_because"] = reason
  return ForeignTeacher(kind="callable", source=source, num_classes=num_classes, apply=apply,
                        can_teach_online=traceable, details=details)

"""Checks of a user's own images and labels, shared by the loaders and the shard writer.

Each refusal says what is wrong and ends with the numpy call that fixes it.
"""

from __future__ import annotations

import numpy as np

from distill.errors import UserError


def uint8_hint(x: np.ndarray) -> str:
  """How to turn non-uint8 images into uint8 0..255, as '; ...' to end a message ('' if unsure)."""
  if x.dtype == np.bool_:
    return "; convert with `(x * 255).astype(np.uint8)`"
  if not x.size or x.dtype.kind not in "fiu":
    return ""
  if x.dtype.kind == "f" and not np.isfinite(x).all():
    return "; they hold NaN or infinite values: fix those, then scale them to 0..255"
  low, high = x.min().item(), x.max().item()
  floats = x.dtype.kind == "f"
  if floats and low >= 0 and high <= 1:
    return "; they look like 0..1 floats: convert with `(x * 255).round().astype(np.uint8)`"
  if low >= 0 and high <= 255:
    rounded = ".round()" if floats else ""
    return f"; they lie in 0..255: convert with `x{rounded}.astype(np.uint8)`"
  normalised = " (normalised?)" if floats else ""
  return (f"; they range over {low:g}..{high:g}{normalised}: scale them to 0..255, then "
          "`.astype(np.uint8)`")


def channels_first(shape: tuple[int, ...]) -> bool:
  """Whether an image array's shape is PyTorch's [N, C, H, W] rather than [N, H, W, C].

  Axis 1 of 1, 3 or 4 with both later axes above 4: read as NHWC, those would
  be images at most 4 pixels high with more than 4 channels, which no real
  image set is, while channels-first images would train as scrambled pixels
  (or fail a ViT's patch check).
  """
  return len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) > 4


def channels_first_advice(shape: tuple[int, ...]) -> str:
  """What is wrong with a channels-first image array and the fix: 'shape ..., which ...'."""
  return (f"shape {tuple(shape)}, which looks channels-first [N, C, H, W]; images must be "
          "channels-last [N, H, W, C]: convert with `x.transpose(0, 2, 3, 1)`")


def check_two_classes(labels: np.ndarray, class_names: tuple[str, ...], subject: str) -> None:
  """Refuses labels of a single class: a classifier would have nothing to tell apart.

  `subject` begins the message: '<where>: every training image'.
  """
  present = np.unique(labels)
  if len(present) >= 2:
    return
  label = int(present[0])
  name = class_names[label] if label < len(class_names) else str(label)
  named = "" if name == str(label) else f" (class {name!r})"
  raise UserError(f"{subject} has label {label}{named}; a classifier needs at least two "
                  "classes: add images of another class")


def first_few(values, limit: int = 5, *, quoted: bool = False) -> str:
  """'1, 2, 3, 4, 5 and 12 more': the first `limit` values of many (`quoted`: as repr)."""
  values = [repr(value) if quoted else str(value) for value in np.asarray(values).tolist()]
  shown = ", ".join(values[:limit])
  return shown + (f" and {len(values) - limit:,} more" if len(values) > limit else "")

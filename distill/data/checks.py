"""Checks of a user's own images and labels, shared by the loaders and the shard writer.

Each refusal says what is wrong and ends with the numpy call that fixes it.
"""

from __future__ import annotations

import numpy as np

from distill.errors import UserError, first_few


def uint8_hint(x: np.ndarray, name: str = "x") -> str:
  """How to turn non-uint8 images into uint8 0..255, as '; ...' to end a message ('' if unsure):
  a numpy call on the array called `name` ('x', 'x_test') that fits the values it holds."""
  if x.dtype == np.bool_:
    return f"; convert with `({name} * 255).astype(np.uint8)`"
  if not x.size or x.dtype.kind not in "fiu":
    return ""
  if x.dtype.kind == "f" and not np.isfinite(x).all():
    return "; they hold NaN or infinite values: fix those, then scale them to 0..255"
  low, high = x.min().item(), x.max().item()
  floats = x.dtype.kind == "f"
  if floats and low >= 0 and high <= 1:
    return f"; they look like 0..1 floats: convert with `({name} * 255).round().astype(np.uint8)`"
  if floats and low >= -1 and high <= 1:
    return ("; they look like -1..1 floats (normalised): convert with "
            f"`(({name} + 1) * 127.5).round().astype(np.uint8)`")
  if low >= 0 and high <= 255:
    rounded = ".round()" if floats else ""
    return f"; they lie in 0..255: convert with `{name}{rounded}.astype(np.uint8)`"
  if low == high:
    return f"; every value is {low:g}: save the images themselves (was the array ever filled?)"
  if x.dtype == np.uint16:
    return f"; they look like 16-bit images: convert with `({name} // 257).astype(np.uint8)`"
  normalised = " (normalised?)" if floats else ""
  return (f"; they range over {low:g}..{high:g}{normalised}: convert with "
          f"`(({name} - {low:g}) * (255 / {high - low:g})).round().astype(np.uint8)`")


def channels_first(shape: tuple[int, ...]) -> bool:
  """Whether an image array's shape is PyTorch's [N, C, H, W] rather than [N, H, W, C].

  Axis 1 of 1, 3 or 4 with both later axes above 4: read as NHWC, those would
  be images at most 4 pixels high with more than 4 channels, which no real
  image set is, while channels-first images would train as scrambled pixels
  (or fail a ViT's patch check).
  """
  return len(shape) == 4 and shape[1] in (1, 3, 4) and min(shape[2:]) > 4


def channels_first_advice(shape: tuple[int, ...], name: str = "x") -> str:
  """What is wrong with a channels-first image array (called `name`) and the fix: 'shape ...,
  which ...'."""
  return (f"shape {tuple(shape)}, which looks channels-first [N, C, H, W]; images must be "
          f"channels-last [N, H, W, C]: convert with `{name}.transpose(0, 2, 3, 1)`")


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


def checked_images(x: np.ndarray, what: str, *, allow_empty: bool = False,
                   name: str = "x") -> np.ndarray:
  """uint8 images as NHWC, adding a channel axis to [N, H, W].

  `allow_empty` lets N be 0 (one chunk of a stream may be); `what` names the
  array in the message, e.g. "data.npz: key 'x'", and `name` in the numpy call
  that fixes it ('x_test').
  """
  x = np.asarray(x)
  if x.dtype != np.uint8:
    # Both problems at once: a file fixed for one should not fail on the other.
    also = (f"; it also has {channels_first_advice(x.shape, name)}" if channels_first(x.shape)
            else "")
    raise UserError(f"{what} must be uint8 images (0..255), got {x.dtype}"
                    f"{uint8_hint(x, name)}{also}")
  if channels_first(x.shape):
    raise UserError(f"{what} has {channels_first_advice(x.shape, name)}")
  if x.ndim == 3:
    x = x[..., np.newaxis]
  elif x.ndim != 4:
    raise UserError(f"{what} must be images shaped [N,H,W] or [N,H,W,C], got "
                    f"shape {x.shape}")
  if not len(x) and not allow_empty:
    raise UserError(f"{what} is empty")
  if 0 in x.shape[1:]:
    raise UserError(f"{what} has empty images, shape {x.shape}")
  return np.ascontiguousarray(x)


def check_gray_levels(x: np.ndarray, what: str) -> None:
  """Refuses uint8 images that hold no picture: one value throughout, or only 0 and 1.

  Both trained without complaint to chance: 0..1 floats cast to uint8 (`(x / 255).astype(
  np.uint8)`) keep only 0 and 1, which the model reads as near-black, and an array that
  was never filled is all one value. `what` names the array, e.g. "data.npz: key 'x'".
  """
  if not x.size:
    return
  low, high = int(x.min()), int(x.max())
  if low == high:
    raise UserError(f"{what} holds blank images: every pixel of every image is {low}; save the "
                    "images themselves (was the array ever filled?)")
  if high == 1:
    raise UserError(f"{what} holds only the values 0 and 1 in uint8 (0..255): images scaled to "
                    "0..1 and cast lose every gray level; save `(x * 255).round().astype("
                    "np.uint8)` of the 0..1 floats (of 0/1 masks: `x * 255`)")


def checked_labels(y: np.ndarray, what: str, num_images: int,
                    images_what: str, num_classes: int | None = None
                    ) -> np.ndarray:
  """Integer labels as a flat array, one per image, in [0, num_classes)."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:  # keras returns some labels as [N, 1].
    y = y[:, 0]
  if y.ndim != 1:
    one_hot = (y.ndim == 2 and y.size and np.isin(y, (0, 1)).all()
               and (y.sum(axis=1) == 1).all())
    hint = "; for one-hot labels, save `y.argmax(axis=1)`" if one_hot else ""
    raise UserError(f"{what} must be labels shaped [N], got shape {y.shape}{hint}")
  if not np.issubdtype(y.dtype, np.integer):
    raise UserError(f"{what} must hold integer labels, got {y.dtype}{label_dtype_hint(y)}")
  if len(y) != num_images:
    raise UserError(f"{what} has {len(y)} labels but {images_what} has "
                    f"{num_images} images")
  if len(y) and y.min() < 0:
    raise UserError(f"{what} has negative label {int(y.min())}; {label_range_fix(y)}")
  if num_classes is not None and len(y) and y.max() >= num_classes:
    raise UserError(f"{what} has label {int(y.max())}, outside [0, "
                    f"{num_classes}) for {num_classes} classes; {label_range_fix(y, num_classes)}")
  return y


def label_dtype_hint(y: np.ndarray) -> str:
  """How to turn labels of another type into integer class indices ('; ...', or '')."""
  if y.dtype.kind in "USO":
    return ("; for class names as labels, save `classes, y = np.unique(y, "
            "return_inverse=True)` and pass the names as `class_names=classes`")
  if y.dtype.kind == "b" or (y.dtype.kind == "f" and np.isfinite(y).all()
                             and (y == np.round(y)).all()):
    return "; they are whole numbers: save `y.astype(np.int64)`"
  return ""


# Labels are class indices, so an npz without class_names has max(label) + 1
# classes. More than this many, and more than _MAX_CLASSES_PER_LABEL for each
# label that occurs, is taken for labels that are not indices (ids, a stray
# 999 or 10**9), whose classes and head would mostly be empty, or not fit in memory.
_MAX_UNNAMED_CLASSES = 1000
_MAX_CLASSES_PER_LABEL = 100
_REMAP = ("remap them with `classes, y = np.unique(y, return_inverse=True)` and save "
          "`class_names=classes.astype(str)`")


def label_range_fix(labels: np.ndarray, num_classes: int | None = None,
                    keys: tuple[str, ...] = ("y",)) -> str:
  """How to bring labels outside 0..num_classes-1 into it, ending with the numpy call.

  `labels`: every label of `keys` (the arrays the call names); `num_classes`:
  how many classes there are (class_names'), None where the labels decide.
  """
  low, high = int(labels.min()), int(labels.max())
  if num_classes is not None and low == 1 and high == num_classes:  # counted from 1
    shifted = " and ".join(f"`{key} - 1`" for key in keys)
    return (f"labels are class indices 0..{num_classes - 1} and these run 1..{num_classes}: "
            f"save {shifted}")
  if num_classes is None or low < 0:
    indices, remap = "0..K-1", _REMAP
  else:  # named classes: more names would fit the labels too
    indices = f"0..{num_classes - 1}"
    remap = f"give class_names a name for every label up to {high}, or {_REMAP}"
  unlabelled = ("; if -1 marks images without a label, leave them out: `keep = y >= 0`, then "
                "save `x[keep]` and `y[keep]`" if low == -1 else "")
  return f"labels are class indices {indices}: {remap}{unlabelled}"


def check_same_numbering(y: np.ndarray, y_key: str, other: np.ndarray, other_key: str,
                         where: str) -> None:
  """Refuses held-out labels (y_test) that look counted from another number than `y`'s.

  y_test + 1 against y made one class more than the data has, that no training image
  has: the run trained, scored near 0 and warned only of a gap in y. Classes that only
  `other` has and no shift explains are left to `classes_from_labels`' note.

  Args:
    y: the training labels; y_key: their key, as the file spells it.
    other: labels of images held out of training; other_key: their key.
    where: begins the message (the file).
  """
  # int64: a shift of uint8 labels would wrap around.
  train, held_out = np.unique(y).astype(np.int64), np.unique(other).astype(np.int64)
  if not len(held_out) or np.isin(held_out, train).all():
    return
  shift = _numbering_shift(held_out, train)
  if shift is None:
    return
  high_key, high, low_key, low = ((other_key, held_out, y_key, train) if shift < 0 else
                                  (y_key, train, other_key, held_out))
  # Class indices start at 0: shift the labels that run higher down, unless that makes some
  # negative.
  fix = (f"{high_key} - {abs(shift)}" if high[0] - abs(shift) >= 0 else
         f"{low_key} + {abs(shift)}")
  raise UserError(f"{where}: key {high_key!r} {_runs(high)} but key {low_key!r} {_runs(low)}: "
                  f"do they count from different numbers? save `{fix}`")


def _runs(labels: np.ndarray) -> str:
  """'runs 1..10' for sorted labels, or 'is all 10' for one."""
  return f"runs {labels[0]}..{labels[-1]}" if len(labels) > 1 else f"is all {labels[0]}"


def _numbering_shift(held_out: np.ndarray, train: np.ndarray) -> int | None:
  """The shift that lines up an end of the two label ranges and makes every held-out class
  a training class (the smaller such shift); None where none does. Both sorted and unique."""
  ends = {int(train[0] - held_out[0]), int(train[-1] - held_out[-1])} - {0}
  for shift in sorted(ends, key=abs):
    if np.isin(held_out + shift, train).all():
      return shift
  return None


def classes_from_labels(y: np.ndarray, y_test: np.ndarray | None,
                         what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """Class names 0..max(label) for labels without names, and a note on classes without images.

  Raises:
    UserError: when the labels' range is absurd for how few labels occur
      (see _MAX_UNNAMED_CLASSES).
  """
  present = np.unique(y if y_test is None else np.concatenate([y, y_test]))
  num_classes = int(present[-1]) + 1
  if (num_classes > _MAX_UNNAMED_CLASSES
      and num_classes > _MAX_CLASSES_PER_LABEL * len(present)):
    raise UserError(
        f"{what} has labels up to {int(present[-1]):,}, which makes {num_classes:,} classes, "
        f"but only {len(present)} distinct labels occur ({first_few(present)}); labels are "
        f"class indices 0..K-1: {_REMAP} (refused: more than {_MAX_UNNAMED_CLASSES:,} classes "
        f"and over {_MAX_CLASSES_PER_LABEL} per label present)")
  class_names = tuple(str(label) for label in range(num_classes))
  # The user's whole training key, before any split: a class emptied by the
  # validation split, train_limit or data.labelled is not the labels' doing.
  empty = np.setdiff1d(np.arange(num_classes), y)
  if not len(empty):
    return class_names, ()
  which = (f"class {empty[0]} of the {num_classes:,} has" if len(empty) == 1 else
           f"{len(empty):,} of the {num_classes:,} classes ({first_few(empty)}) have")
  # Not a numbering mistake (check_same_numbering refuses those), yet test images of classes
  # no training image has: the model cannot get them right.
  num_tested = 0 if y_test is None else len(np.intersect1d(empty, y_test))
  whom = ("it" if len(empty) == 1 else "them" if num_tested == len(empty) else
          f"{num_tested:,} of them")
  tested = (f", but the test labels have images of {whom}, which no model trained on these "
            "gets right" if num_tested else "")
  return class_names, (
      f"{what}: {which} no training images{tested}; labels are class indices 0..K-1 with K = "
      f"largest label + 1, so gaps in yours make empty classes: if they are not indices, "
      f"{_REMAP}",)


def majority_note(y_test: np.ndarray, class_names: tuple[str, ...]) -> str | None:
  """A note when one class is most of the test set, so that an accuracy reads against what
  always guessing it scores (90% of a 90%-one-class set is no skill); None for a set whose
  largest class is under twice an even share."""
  if not len(y_test):
    return None
  counts = np.bincount(np.asarray(y_test), minlength=len(class_names))
  top = int(counts.argmax())
  share = counts[top] / len(y_test)
  if share < 2 / len(class_names) or share < 0.3:
    return None
  return (f"note: class {class_names[top]!r} is {share:.1%} of the test images: a model that "
          f"always answers it scores {share:.2%}, the accuracy to beat")


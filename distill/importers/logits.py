"""Logits a teacher computed anywhere (PyTorch, a cloud API, ...), saved in a .npz file.

The file holds:

  train_logits  [N, C]  every training image in the data set's own order, before distill
                        splits off validation; or, with val_logits, distill's training rows
                        (`x_train` of `distill.workflow.load_data`) (required)
  test_logits   [M, C]  the test set (required)
  val_logits    [V, C]  distill's validation rows (`x_val`) (optional)
  class_names   [C]     strings (optional)

Such a teacher only gives targets: it cannot run on new images (augmented
views, online teaching).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError, one_line
from distill.importers import ForeignTeacher

_SPLITS = {"train_logits": "train", "test_logits": "test", "val_logits": "val"}
_REQUIRED = ("train_logits", "test_logits")
_EXPECTED = "train_logits, test_logits, and optionally val_logits and class_names"


def _read(path: Path) -> dict[str, np.ndarray]:
  """Every array in the .npz at `path`, without unpickling anything."""
  if not path.is_file():
    raise UserError(f"{path} does not exist")
  arrays = {}
  try:
    with np.load(path, allow_pickle=False) as npz:
      for key in npz.files:
        try:
          arrays[key] = npz[key]
        # numpy refuses object arrays (lists of Python str, ragged lists) without pickle.
        except ValueError as error:
          if "allow_pickle" not in str(error):
            raise
          raise UserError(f"{key} in {path} is an array of Python objects; save it as plain "
                          "numbers (logits) or np.array(names, dtype=str) (class_names)") from None
  except UserError:
    raise
  # A damaged or foreign file fails as zipfile, OSError, ValueError or EOFError.
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise UserError(f"{path} is not a readable .npz file "
                    f"({type(error).__name__}: {one_line(error)})") from None
  return arrays


def _check_logits(key: str, array: np.ndarray, path: Path) -> np.ndarray:
  """`array` as float32 [N, C], or a UserError naming `key` and what is wrong with it."""
  if array.ndim != 2:
    raise UserError(f"{key} in {path} has shape {list(array.shape)}; it must be 2-D "
                    "[images, classes]")
  if not np.issubdtype(array.dtype, np.floating):
    raise UserError(f"{key} in {path} has dtype {array.dtype}; logits must be floating point")
  if array.shape[0] == 0 or array.shape[1] < 2:
    raise UserError(f"{key} in {path} has shape {list(array.shape)}; it needs at least one row "
                    "and 2 classes")
  bad = nonfinite_values(array)
  if bad:
    raise UserError(f"{key} in {path} holds {bad}")
  return array.astype(np.float32)


# Logits from probabilities: floored, since a softmax rounds tiny ones to 0, whose log is -inf.
LOG_OF_PROBABILITIES = "np.log(np.maximum(probs, 1e-12))"


def nonfinite_values(logits: np.ndarray) -> str | None:
  """What in `logits` [N, C] is NaN or infinite, in words, or None where all is finite.

  Where the only such values are -inf, they are the log of probabilities a
  softmax rounded to 0, and the words say how to take that log instead.
  """
  bad = ~np.isfinite(logits)
  if not bad.any():
    return None
  row = int(np.argwhere(bad)[0, 0])
  text = f"{int(bad.sum()):,} values that are NaN or infinite (the first in row {row:,})"
  if (np.isneginf(logits) == bad).all():
    text += f"; -inf is the log of a probability of 0: floor them first, {LOG_OF_PROBABILITIES}"
  return text


def _class_names(array: np.ndarray, num_classes: int, path: Path) -> list[str]:
  """class_names as a list of str, checked against the logits' class count."""
  if array.dtype.kind not in "US" or array.ndim != 1:
    raise UserError(f"class_names in {path} must be a 1-D array of strings; it has dtype "
                    f"{array.dtype} and shape {list(array.shape)}")
  if len(array) != num_classes:
    raise UserError(f"class_names in {path} has {len(array)} names; the logits have "
                    f"{num_classes} classes")
  return [name.decode() if isinstance(name, bytes) else str(name) for name in array.tolist()]


def open_logits(path: str | Path) -> ForeignTeacher:
  """Reads a .npz of teacher logits (see the module docstring for its keys) as a teacher."""
  path = Path(path)
  arrays = _read(path)
  for key in _REQUIRED:
    if key not in arrays:
      found = ", ".join(sorted(arrays)) or "no arrays"
      raise UserError(f"{path} has no {key} (it has {found}; expected {_EXPECTED})")
  known = {*_SPLITS, "class_names"}
  # A key that looks like logits but is not one of ours is most likely a misspelling, which
  # would otherwise drop those logits without a word; anything else (labels, ids) is ignored.
  for key in sorted(arrays):
    if key not in known and "logit" in key.lower():
      raise UserError(f"{path} has an array named {key!r}; expected {_EXPECTED}")
  logits = {split: _check_logits(key, arrays[key], path)
            for key, split in _SPLITS.items() if key in arrays}
  num_classes = logits["train"].shape[1]
  for key, split in _SPLITS.items():
    if split in logits and logits[split].shape[1] != num_classes:
      raise UserError(f"{key} in {path} has {logits[split].shape[1]} classes; train_logits has "
                      f"{num_classes}")
  class_names = (_class_names(arrays["class_names"], num_classes, path)
                 if "class_names" in arrays else None)
  details: dict[str, Any] = {
      "file": str(path),
      "shapes": {key: list(arrays[key].shape) for key in _SPLITS if key in arrays},
  }
  ignored = sorted(set(arrays) - known)
  if ignored:
    details["ignored_arrays"] = ignored
  return ForeignTeacher(kind="logits", source=str(path), num_classes=num_classes,
                        class_names=class_names, logits=logits, details=details)


# The packaged data sets' sizes (all training images, test images), to name the one a logits
# file of the wrong row count fits. Kept here rather than loaded: loading Fashion-MNIST or
# CIFAR-10 to word an error may mean a download. tests/test_import_foreign.py checks digits.
_PACKAGED_SIZES = {"digits": (1_438, 359), "fashion_mnist": (60_000, 10_000),
                   "mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}
# How to choose each: its own recipe where it has one.
_CHOOSE = {"digits": "--recipe digits", "fashion_mnist": "--recipe fashion_mnist",
           "mnist": "--dataset mnist", "cifar10": "--recipe cifar10"}


def _fitting_datasets(rows: dict[str, int], dataset_name: str) -> list[str]:
  """The other packaged data sets whose training and test sizes the logits' rows match."""
  train = rows["train"] + rows.get("val", 0)
  return [name for name, sizes in _PACKAGED_SIZES.items()
          if name != dataset_name and sizes == (train, rows["test"])]


def check_logits_fit(teacher: ForeignTeacher, *, num_train: int, num_val: int | None,
                     num_test: int, num_classes: int, num_full: int | None = None,
                     dataset_name: str = "the data", named_as: str | None = None) -> bool:
  """Raises UserError, in one line, naming every way a logits teacher does not fit the data.

  A file fits in one of two shapes: train_logits of all `num_full` training
  images in the data set's own order (distill splits them as it
  splits the images), or train_logits of distill's `num_train` training rows
  with val_logits of its `num_val` validation rows. The error states both,
  with the numbers, and names another packaged data set the rows do fit.

  Args:
    teacher: what `open_logits` returned.
    num_train: distill's training rows (after its validation split).
    num_val: distill's validation rows; None when the data set comes unsplit (a stream's
      rows are its training set), and then val_logits have nothing to label.
    num_test: its test images.
    num_classes: its classes.
    num_full: all its training images, before the validation split (and data.train_limit);
      default `num_train + num_val`.
    dataset_name: the data set's name, to match against the packaged ones.
    named_as: how the error names the data set (say, how the recipe chose it); default
      `dataset_name`.

  Returns:
    Whether the file has val_logits in distill's split (the second shape).
  """
  if teacher.logits is None:
    raise ValueError(f"{teacher.source} is a {teacher.kind} teacher, not logits")
  differences = []
  if teacher.num_classes != num_classes:
    differences.append(f"the logits have {teacher.num_classes} classes; the data set has "
                       f"{num_classes}")
  rows = {split: len(array) for split, array in teacher.logits.items()}
  full = num_full or num_train + (num_val or 0)
  split = "val" in rows
  row_problem = None
  if split and num_val is None:
    row_problem = (f"val_logits has {rows['val']:,} rows, but the data set has no validation "
                   "split to label; give train_logits alone")
  elif split and rows["train"] == full:
    row_problem = (f"train_logits has all {full:,} training images, which already cover the "
                   f"{num_val:,} validation rows; drop val_logits")
  elif split and (rows["train"], rows["val"]) != (num_train, num_val):
    row_problem = f"train_logits has {rows['train']:,} rows and val_logits {rows['val']:,}"
  elif not split and rows["train"] != full:
    row_problem = f"train_logits has {rows['train']:,} rows"
  if row_problem:
    differences.append(row_problem)
  if rows["test"] != num_test:
    differences.append(f"test_logits has {rows['test']:,} rows; the data set's test images "
                       f"number {num_test:,}")
  if not differences:
    return split
  if row_problem:
    accepted = f"it takes train_logits of all {full:,} training images in its own order"
    if num_val is not None:
      accepted += (f", or of distill's {num_train:,} training rows with val_logits of its "
                   f"{num_val:,} validation rows")
    differences.append(accepted)
  others = _fitting_datasets(rows, dataset_name)
  if others:
    differences.append(f"the rows fit {' or '.join(others)}: pass "
                       + " or ".join(_CHOOSE[name] for name in others))
  raise UserError(f"{teacher.source} does not fit {named_as or dataset_name}: "
                  + "; ".join(differences))

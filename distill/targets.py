"""The teacher's soft targets on disk: one .npz with its arrays and metadata.

The metadata says exactly which data, split and teacher produced the targets,
and a checksum covers the arrays. `load_targets` checks all of it against the
data the student is about to train on, so a student can never silently learn
from another data set's targets.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.io import array_sha256, write_json, write_npz
from distill.rundir import PREDICTIONS_FILE, TARGETS_FILE, TARGETS_META_FILE

FORMAT_VERSION = 1
_ARRAYS = ("train_probs", "train_logits", "test_logits")
# Present only when exported with --views K: logits [N, K, C] of K augmented views per image.
_OPTIONAL_ARRAYS = ("view_logits",)


def save_targets(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
  """Writes targets.npz (arrays + metadata + checksum) and a readable targets.json.

  Args:
    directory: the teacher's run directory.
    arrays: train_probs [N, C], train_logits [N, C], test_logits [M, C], and
      optionally view_logits [N, K, C].
    meta: dataset name and fingerprints, split, teacher identity, temperature,
      class names.
  """
  names = [*_ARRAYS, *(name for name in _OPTIONAL_ARRAYS if name in arrays)]
  arrays = {name: np.asarray(arrays[name], np.float32) for name in names}
  meta = {
      **meta,
      "format_version": FORMAT_VERSION,
      "num_examples": int(arrays["train_probs"].shape[0]),
      "num_classes": int(arrays["train_probs"].shape[1]),
      "shapes": {name: list(a.shape) for name, a in arrays.items()},
      "checksum": array_sha256(*(arrays[name] for name in names)),
  }
  path = Path(directory) / TARGETS_FILE
  write_npz(path, {**arrays, "meta_json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
  write_json(Path(directory) / TARGETS_META_FILE, meta)
  return path


def load_targets(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and verifies the targets in a teacher directory (or a targets.npz path)."""
  directory = Path(directory)
  path = directory if directory.suffix == ".npz" else directory / TARGETS_FILE
  if not path.exists():
    raise UserError(f"no targets at {path}; train a teacher first, "
                    f"or run `distill export --teacher {directory}`")
  try:
    with np.load(path, allow_pickle=False) as npz:
      loaded = {name: npz[name] for name in npz.files}
  except Exception as e:  # zipfile/pickle/OSError/ValueError for damaged files.
    raise UserError(f"targets file {path} is damaged ({type(e).__name__}: {e})") from None
  missing = [name for name in (*_ARRAYS, "meta_json") if name not in loaded]
  if missing:
    raise UserError(f"targets file {path} is damaged: missing {', '.join(missing)}")
  try:
    meta = json.loads(loaded.pop("meta_json").tobytes().decode())
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise UserError(f"targets file {path} is damaged: unreadable metadata") from None
  if meta.get("format_version") != FORMAT_VERSION:
    raise UserError(f"targets file {path} has format {meta.get('format_version')}, "
                    f"expected {FORMAT_VERSION}")
  names = [*_ARRAYS, *(name for name in _OPTIONAL_ARRAYS if name in loaded)]
  checksum = array_sha256(*(loaded[name] for name in names))
  if checksum != meta.get("checksum"):
    raise UserError(f"targets file {path} is damaged: its arrays do not match their checksum")
  probs = loaded["train_probs"]
  if probs.ndim != 2 or probs.shape != (meta["num_examples"], meta["num_classes"]):
    raise UserError(f"targets file {path} is damaged: train_probs has shape {probs.shape}")
  views = loaded.get("view_logits")
  if views is not None and (views.ndim != 3 or views.shape[0] != probs.shape[0]
                            or views.shape[2] != probs.shape[1]):
    raise UserError(f"targets file {path} is damaged: view_logits has shape {views.shape}")
  return loaded, meta


def check_targets_match(meta: dict[str, Any], *, dataset_name: str, fingerprint: str,
                        train_fingerprint: str, num_examples: int, num_classes: int,
                        path: Path | str = "targets") -> None:
  """Raises UserError naming every way the targets differ from the loaded data."""
  differences = []
  if meta.get("dataset") != dataset_name:
    differences.append(f"dataset {meta.get('dataset')!r} vs {dataset_name!r}")
  if meta.get("dataset_fingerprint") != fingerprint:
    differences.append(
        f"dataset fingerprint {str(meta.get('dataset_fingerprint'))[:12]} vs {fingerprint[:12]}")
  if meta.get("train_fingerprint") != train_fingerprint:
    differences.append("training split (val_size, split_seed or train_limit differ)")
  if meta.get("num_examples") != num_examples:
    differences.append(f"{meta.get('num_examples')} examples vs {num_examples}")
  if meta.get("num_classes") != num_classes:
    differences.append(f"{meta.get('num_classes')} classes vs {num_classes}")
  if differences:
    raise UserError(f"targets {path} were made for other data: " + "; ".join(differences))


class _ShardRows:
  """A streamed split's teacher logits by position, read from target shards on demand."""

  ndim = 2

  def __init__(self, shards, global_indices: np.ndarray):
    self._shards = shards
    self._global = global_indices

  def __len__(self) -> int:
    return len(self._global)

  def __getitem__(self, key) -> np.ndarray:
    return self._shards.read_logits(self._global[key])


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherTargets:
  """A teacher's exported targets for the data a student loads, from either on-disk format.

  Attributes:
    train_logits: [N, C] by position in the training split: an array, or for
      a streamed data set rows read from the target shards when indexed.
    view_logits: [N, K, C] of K augmented views, when exported with views.
    test_logits: [M, C], in the test set's order.
    meta: the targets' metadata (data, split, teacher, temperature, views).
  """

  train_logits: Any
  view_logits: np.ndarray | None
  test_logits: np.ndarray
  meta: dict[str, Any]

  @property
  def identity(self) -> dict[str, Any]:
    """The teacher that made them: folder, model, checkpoint step, parameter hash."""
    return self.meta["teacher"]


def read_teacher_targets(teacher_dir: Path, dataset) -> TeacherTargets:
  """The targets in `teacher_dir`, checked against `dataset`.

  They are read from targets.npz, or from target shards if the data set is streamed.
  """
  teacher_dir = Path(teacher_dir)
  if getattr(dataset, "streaming", False):
    from distill.data.shards import open_target_shards  # noqa: PLC0415

    source = dataset.stream.train
    shards = open_target_shards(teacher_dir, num_examples=source.num_examples,
                                num_classes=dataset.num_classes)
    check_targets_match(shards.meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                        train_fingerprint=dataset.split_fingerprint("train"),
                        num_examples=source.num_examples, num_classes=dataset.num_classes,
                        path=shards.path)
    with np.load(teacher_dir / PREDICTIONS_FILE) as predictions:
      test_logits = predictions["test_logits"]
    return TeacherTargets(_ShardRows(shards, dataset.x_train.global_indices), None, test_logits,
                          shards.meta)
  arrays, meta = load_targets(teacher_dir)
  check_targets_match(meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                      train_fingerprint=dataset.split_fingerprint("train"),
                      num_examples=len(dataset.x_train), num_classes=dataset.num_classes,
                      path=teacher_dir / TARGETS_FILE)
  return TeacherTargets(arrays["train_logits"], arrays.get("view_logits"), arrays["test_logits"],
                        meta)

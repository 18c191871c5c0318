"""The teacher's soft targets on disk: one .npz with its arrays and metadata.

The metadata says exactly which data, split and teacher produced the targets,
and a checksum covers the arrays. `load_targets` checks all of it against the
data the student is about to train on, so a student can never silently learn
from another data set's targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distill.config import SPLIT_KEYS, data_differences
from distill.errors import UserError
from distill.io import array_sha256, write_json, write_npz
from distill.rundir import (
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    TARGET_SHARDS_DIR,
    TARGETS_FILE,
    TARGETS_META_FILE,
    saved_recipe,
    summary_field,
    trained_again,
)

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


def stored_view_count(directory: Path) -> int:
  """How many augmented views per image the targets in `directory` hold, as their targets.json
  records it (read without the arrays); 0 for none, no targets or an unreadable record."""
  try:
    views = json.loads((Path(directory) / TARGETS_META_FILE).read_text()).get("views")
    return int(views["count"]) if views else 0
  except (OSError, ValueError, AttributeError, KeyError, TypeError):
    return 0


def load_targets(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and verifies the targets in a teacher directory (or a targets.npz path)."""
  directory = Path(directory)
  path = directory if directory.suffix == ".npz" else directory / TARGETS_FILE
  if not path.exists():
    if summary_field(directory, "role") == "student":  # students export no targets
      raise UserError(f"no targets at {path}: {directory} is a student run; give its teacher "
                      f"({summary_field(directory, 'teacher_dir')})")
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
                        path: Path | str = "targets", name_is_folder: bool = False,
                        split: dict[str, Any] | None = None) -> None:
  """Raises UserError naming every way the targets differ from the loaded data.

  name_is_folder: `dataset_name` is only the data's folder (a stream's), so it
  is not compared: the fingerprints say whether the data is the same, as for
  an npz file, whose name is 'npz' wherever the file lies.
  split: the recipe's data settings (val_size, split_seed, train_limit,
  labelled) that chose the training split, compared with the targets' own to
  name those that differ; None: not known.
  """
  differences = []
  if meta.get("dataset") != dataset_name and not name_is_folder:
    differences.append(f"dataset {meta.get('dataset')!r} vs {dataset_name!r}")
  if meta.get("dataset_fingerprint") != fingerprint:
    names = (f" (folder {meta.get('dataset')!r} vs {dataset_name!r})" if name_is_folder
             and meta.get("dataset") != dataset_name else "")
    differences.append(f"dataset fingerprint {str(meta.get('dataset_fingerprint'))[:12]} vs "
                       f"{fingerprint[:12]}{names}")
  if meta.get("train_fingerprint") != train_fingerprint:
    differences.extend(_split_differences(meta.get("split"), split,
                                          same_data=meta.get("dataset_fingerprint") == fingerprint))
  if meta.get("num_examples") != num_examples:
    differences.append(f"{meta.get('num_examples')} examples vs {num_examples}")
  if meta.get("num_classes") != num_classes:
    differences.append(f"{meta.get('num_classes')} classes vs {num_classes}")
  if differences:
    raise UserError(f"targets {path} were made for other data: " + "; ".join(differences))


def _split_differences(theirs: dict[str, Any] | None, ours: dict[str, Any] | None, *,
                       same_data: bool) -> list[str]:
  """How two training splits of unequal rows differ: the settings that do, where known.

  Other data makes other rows by itself, so the split is named only when its
  settings differ, or when the data is the same (then only the split can differ).
  """
  if theirs is not None and ours is not None:
    settings = data_differences(theirs, ours, SPLIT_KEYS)
    if settings:
      return [f"training split ({', '.join(settings)})"]
  if same_data:
    return ["training split (val_size, split_seed, train_limit or labelled differ)"]
  return []


class TargetsStore:
  """A teacher's exported targets, in either on-disk format, read by global example index.

  A global index names a row of the data the targets were made for: for an
  in-memory data set the training split's rows (targets.npz holds them in
  that order), for a streamed one the train source's rows (target shards
  hold every row, validation included). `rows_for` turns the split a student
  trains on into those indices.

  Attributes:
    meta: the targets' metadata (data, split, teacher, temperature, views).
    test_logits: [M, C], in the test set's order.
    view_logits: [N, K, C] of K augmented views when exported with views, else None.
  """

  def __init__(self, meta: dict[str, Any], test_logits: np.ndarray,
               view_logits: np.ndarray | None = None):
    self.meta = meta
    self.test_logits = test_logits
    self.view_logits = view_logits

  @property
  def identity(self) -> dict[str, Any]:
    """The teacher that made them: folder, model, checkpoint step, parameter hash."""
    return self.meta["teacher"]

  def read_logits(self, global_indices: np.ndarray) -> np.ndarray:
    """The teacher's float32 logits [n, C] of the examples at `global_indices`."""
    raise NotImplementedError

  def rows_for(self, dataset) -> Any:
    """The logits [N, C] of `dataset`'s training split, by position: indexable like an array."""
    raise NotImplementedError


class _NpzStore(TargetsStore):
  """targets.npz: every array in memory, rows in the training split's order."""

  def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
    super().__init__(meta, arrays["test_logits"], arrays.get("view_logits"))
    self._train_logits = arrays["train_logits"]

  def read_logits(self, global_indices):
    return self._train_logits[global_indices]

  def rows_for(self, dataset):
    del dataset  # Checked against it on opening: its split is these rows, in order.
    return self._train_logits


class _ShardStore(TargetsStore):
  """Target shards: rows of the train source read from disk on demand."""

  def __init__(self, shards, test_logits: np.ndarray):
    super().__init__(shards.meta, test_logits)
    self._shards = shards

  def read_logits(self, global_indices):
    return self._shards.read_logits(np.asarray(global_indices))

  def rows_for(self, dataset):
    return _SplitRows(self, dataset.x_train.global_indices)


class _SplitRows:
  """A streamed split's teacher logits by position, read from the store when indexed."""

  ndim = 2

  def __init__(self, store: TargetsStore, global_indices: np.ndarray):
    self._store = store
    self._global = global_indices

  def __len__(self) -> int:
    return len(self._global)

  def __getitem__(self, key) -> np.ndarray:
    return self._store.read_logits(self._global[key])


def _check_same_kind_of_data(teacher_dir: Path, dataset) -> None:
  """Refuses a student whose data is streamed when its teacher's was in memory, or the reverse.

  Streamed data has target shards, in-memory data targets.npz; telling such a
  student to export its teacher's targets would go round in circles, since
  the export writes the teacher's kind again.
  """
  streaming = getattr(dataset, "streaming", False)
  has_npz = (teacher_dir / TARGETS_FILE).is_file()
  has_shards = (teacher_dir / TARGET_SHARDS_DIR).is_dir()
  if has_shards if streaming else has_npz:
    return
  data = (saved_recipe(teacher_dir) or {}).get("data") or {}
  teacher_streamed = has_shards or (not has_npz and data.get("dataset") == "stream")
  if teacher_streamed == streaming:
    return  # Targets of the same kind, or none: the loaders below say what to do.
  take = "or leave out --dataset and --data-dir to take the teacher's"
  if teacher_streamed:
    where = data.get("data_dir") or "the teacher's shard folder"
    raise UserError(f"the teacher in {teacher_dir} was trained on streamed data ({where}) and its "
                    f"targets are shards, but this student's data ({dataset.name}) is in memory; "
                    f"give the student the same data: --dataset stream --data-dir {where} "
                    f"({take})")
  name = data.get("dataset") or "the teacher's data set"
  flags = f"--dataset {name}" + (f" --data-dir {data['data_dir']}" if data.get("data_dir")
                                 else "")
  raise UserError(f"the teacher in {teacher_dir} was trained on {name} in memory and its targets "
                  f"are {TARGETS_FILE}, but this student streams {dataset.name}; "
                  f"give the student the same data: {flags} ({take})")


def _check_made_by_this_teacher(teacher_dir: Path, meta: dict[str, Any], path: Path) -> None:
  """Refuses targets a trained teacher's folder holds that another model exported (copied in, or
  left from an earlier run): a student would learn from one model and report another's numbers."""
  if trained_again(teacher_dir, (meta.get("teacher") or {}).get("params_sha256")):
    raise UserError(f"{path} was not exported by the teacher in {teacher_dir} (its parameters "
                    f"differ from those {SUMMARY_FILE} records); export them again: "
                    f"distill export --teacher {teacher_dir}")


def open_targets(teacher_dir: Path, dataset, split: dict[str, Any] | None = None) -> TargetsStore:
  """The targets in `teacher_dir`, checked against `dataset` (target shards if it is streamed).

  split: the recipe's data settings that split `dataset`, for naming those
  that differ from the targets' (see `check_targets_match`).
  """
  teacher_dir = Path(teacher_dir)
  _check_same_kind_of_data(teacher_dir, dataset)
  if getattr(dataset, "streaming", False):
    from distill.data.shards import open_target_shards  # noqa: PLC0415

    source = dataset.stream.train
    shards = open_target_shards(teacher_dir, num_examples=source.num_examples,
                                num_classes=dataset.num_classes)
    # A moved or renamed shard folder is the same data: its name is only where it lies.
    check_targets_match(shards.meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                        train_fingerprint=dataset.split_fingerprint("train"),
                        num_examples=source.num_examples, num_classes=dataset.num_classes,
                        path=shards.path, name_is_folder=True, split=split)
    _check_made_by_this_teacher(teacher_dir, shards.meta, shards.path)
    with np.load(teacher_dir / PREDICTIONS_FILE) as predictions:
      test_logits = predictions["test_logits"]
    return _ShardStore(shards, test_logits)
  arrays, meta = load_targets(teacher_dir)
  check_targets_match(meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                      train_fingerprint=dataset.split_fingerprint("train"),
                      num_examples=len(dataset.x_train), num_classes=dataset.num_classes,
                      path=teacher_dir / TARGETS_FILE, split=split)
  _check_made_by_this_teacher(teacher_dir, meta, teacher_dir / TARGETS_FILE)
  return _NpzStore(arrays, meta)


def write_targets(directory: Path, meta: dict[str, Any], *, arrays=None, chunks=None,
                  num_examples: int | None = None) -> Path:
  """Writes a teacher's targets: `arrays` to targets.npz, or `chunks` to target shards.

  Args:
    directory: the teacher's (or ensemble's) folder.
    meta: what the targets label (data, split, teacher, temperature, ...).
    arrays: in memory: train_probs, train_logits, test_logits, optionally
      view_logits (see `save_targets`).
    chunks: for a data set larger than memory: (probs, logits) chunks of the
      train source's rows in order, written as shards without holding them all.
    num_examples: with `chunks`, the rows they add up to.

  Returns:
    The path written (targets.npz or the shards folder).
  """
  if (arrays is None) == (chunks is None):
    raise ValueError("write_targets takes arrays or chunks, not both")
  if arrays is not None:
    return save_targets(directory, arrays, meta)
  from distill.data.shards import write_target_shards  # noqa: PLC0415

  return write_target_shards(directory, chunks, meta=meta, num_examples=num_examples,
                             overwrite=True)

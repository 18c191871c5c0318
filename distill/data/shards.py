"""Shard folders: row-aligned .npy files listed in a JSON manifest, written and read by row.

Two kinds, one layout:

* array shards (`write_array_shards`): `shards.json` and per shard
  `images-NNNNN.npy` (uint8 [n, H, W, C]) and `labels-NNNNN.npy` (int32 [n]);
  `distill.data.stream.ArrayShardSource` reads them;
* target shards (`write_target_shards` / `open_target_shards`): a teacher's
  outputs in `targets-shards/`, `manifest.json` and per shard
  `probs-NNNNN.npy` and `logits-NNNNN.npy` (float32 [n, C]).

Every manifest lists each file with the sha256 of its array data (the bytes
after the .npy header), checked when a process first reads the shard. A folder
is written in a hidden staging folder beside it and renamed into place when
complete; files are memory-mapped on first read.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.checks import checked_images, checked_labels
from distill.errors import UserError, one_line
from distill.io import (
    check_directory_target,
    current_umask,
    publish_directory,
    read_json,
    write_json,
)
from distill.rundir import TARGET_SHARDS_DIR

SHARDS_FILE = "shards.json"
SHARDS_FORMAT = "distill-array-shards"
TARGET_MANIFEST_FILE = "manifest.json"
TARGETS_FORMAT = "distill-target-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 8192
# Global indices travel as int32 (the batch's "index" field), like DataOrder's.
MAX_EXAMPLES = np.iinfo(np.int32).max

_TARGET_COLUMNS = ("probs", "logits")
_HASH_CHUNK_BYTES = 1 << 24

Chunks = Iterable[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------
# Writing.


def write_array_shards(directory: str | os.PathLike, chunks: Chunks, *,
                       class_names: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE,
                       meta: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
  """Writes images and labels as memory-mappable shards, one chunk at a time.

  Everything goes to a hidden folder beside `directory` that is renamed into
  place at the end, so a crash leaves the old folder or none, never half of one.
  Only one chunk is in memory at a time.

  Args:
    directory: the shard folder to create.
    chunks: an iterable of (images uint8 [n, H, W, C] or [n, H, W], labels
      int [n]) in example order, or one such pair of (possibly memory-mapped)
      arrays.
    class_names: the class names; labels must lie in [0, len(class_names)).
    shard_size: examples per shard (the last one may hold fewer).
    meta: anything JSON-serialisable to keep in shards.json under "meta",
      e.g. where the data came from.
    overwrite: replace an existing, non-empty `directory`.

  Returns:
    The directory.

  Raises:
    UserError: for chunks that are empty, mis-shaped, of the wrong type or
      disagree with each other, or an existing directory without overwrite.
  """
  directory = Path(directory)
  class_names = tuple(str(name) for name in class_names)
  if not class_names:
    raise UserError("write_array_shards needs the class names")
  _check_shard_size(shard_size)
  check_directory_target(directory, overwrite)

  def manifest(writer: _ShardWriter) -> dict[str, Any]:
    return {
        "format": SHARDS_FORMAT, "format_version": FORMAT_VERSION,
        "num_examples": writer.num_examples, "image_shape": list(writer.row_shapes["images"]),
        "num_classes": len(class_names), "class_names": list(class_names),
        "shard_size": shard_size, "shards": writer.records, "meta": dict(meta or {}),
    }

  return _write_shard_folder(directory, _as_chunks(chunks, shard_size),
                             functools.partial(_image_columns, num_classes=len(class_names)),
                             manifest, SHARDS_FILE, shard_size, overwrite)


def write_target_shards(directory: str | os.PathLike, chunks: Chunks, *, meta: Mapping[str, Any],
                        num_examples: int | None = None, shard_size: int = 65536,
                        overwrite: bool = False) -> Path:
  """Writes a teacher's outputs, chunk by chunk, to `directory`/targets-shards/.

  Each shard is probs-NNNNN.npy and logits-NNNNN.npy (float32 [n, C]); the
  manifest.json holds `meta`, the row and class counts and, per file, the
  sha256 of its array data (the bytes after the .npy header).
  Rows follow the order of the chunks, which should be the train source's
  global example order, so a batch's "index" reads its own targets.

  Args:
    directory: the teacher's run directory (or wherever targets go).
    chunks: an iterable of (probs [n, C], logits [n, C]) in row order, or one
      such pair of whole arrays.
    meta: metadata in `distill.targets`' conventions: at least "dataset",
      "dataset_fingerprint", "temperature" and "teacher" (a dict naming the
      teacher); "class_names", "train_fingerprint" and "split" when known.
    num_examples: the expected row count; an error if the chunks add up to
      another.
    shard_size: rows per shard.
    overwrite: replace existing target shards.

  Returns:
    The targets-shards folder.

  Raises:
    UserError: for missing metadata, chunks that are mis-shaped, non-finite or
      disagree, a wrong row count, or existing shards without overwrite.
  """
  meta = dict(meta)
  missing = [key for key in ("dataset", "dataset_fingerprint", "temperature", "teacher")
             if key not in meta]
  if missing:
    raise UserError(f"target shards need metadata {', '.join(missing)}")
  if not isinstance(meta["teacher"], Mapping):
    raise UserError(f"target shards metadata 'teacher' must be a dict, got {meta['teacher']!r}")
  num_classes = len(meta["class_names"]) if "class_names" in meta else None
  _check_shard_size(shard_size)
  target = Path(directory) / TARGET_SHARDS_DIR
  check_directory_target(target, overwrite)

  def manifest(writer: _ShardWriter) -> dict[str, Any]:
    if num_examples is not None and writer.num_examples != num_examples:
      raise UserError(f"target chunks hold {writer.num_examples:,} rows but the train source has "
                      f"{num_examples:,}; targets must be row-aligned with it")
    return {
        **meta, "format": TARGETS_FORMAT, "format_version": FORMAT_VERSION,
        "num_examples": writer.num_examples, "num_classes": writer.row_shapes["probs"][0],
        "shard_size": shard_size, "shards": writer.records,
    }

  return _write_shard_folder(target, _as_chunks(chunks, shard_size),
                             functools.partial(_target_columns, num_classes=num_classes),
                             manifest, TARGET_MANIFEST_FILE, shard_size, overwrite)


def _image_columns(chunk_number: int, chunk: Any, *, num_classes: int) -> dict[str, np.ndarray]:
  """One chunk of write_array_shards, checked: {"images": uint8 NHWC, "labels": int32}."""
  try:
    images, labels = chunk
  except (TypeError, ValueError):
    raise UserError(f"chunk {chunk_number} must be a pair (images, labels)") from None
  images_what = f"chunk {chunk_number} (images)"
  images = checked_images(images, images_what, allow_empty=True)
  labels = checked_labels(labels, f"chunk {chunk_number} (labels)", len(images), images_what,
                          num_classes)
  return {"images": images, "labels": labels.astype(np.int32)}


def _target_columns(chunk_number: int, chunk: Any, *,
                    num_classes: int | None) -> dict[str, np.ndarray]:
  """One chunk of write_target_shards, checked: {"probs", "logits"}, float32 [n, C]."""
  try:
    probs, logits = chunk
  except (TypeError, ValueError):
    raise UserError(f"target chunk {chunk_number} must be a pair (probs, logits)") from None
  probs, logits = np.asarray(probs, np.float32), np.asarray(logits, np.float32)
  what = f"target chunk {chunk_number}"
  if probs.ndim != 2 or probs.shape != logits.shape:
    raise UserError(f"{what}: probs and logits must both be [n, C], got {probs.shape} and "
                    f"{logits.shape}")
  if num_classes is not None and probs.shape[1] != num_classes:
    raise UserError(f"{what}: {probs.shape[1]} classes but the metadata names {num_classes}")
  if not (np.isfinite(probs).all() and np.isfinite(logits).all()):
    raise UserError(f"{what}: the teacher's outputs are not all finite (NaN or inf)")
  return {"probs": probs, "logits": logits}


class _NpyFile:
  """One .npy file of a shard, written front to back through a memory map.

  It is created for a full shard of `capacity` rows. How many rows a shard
  gets is known only when it is full or the chunks run out, so a last shard
  that ends short is copied into a file of its own length by `finish`.
  """

  def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...], capacity: int):
    self.path = path
    self.rows = 0
    self._sha = hashlib.sha256()
    self._array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                            shape=(capacity, *row_shape))

  def write(self, rows: np.ndarray) -> None:
    """Appends rows; they are hashed exactly as they land in the file."""
    rows = np.ascontiguousarray(rows, self._array.dtype)
    self._array[self.rows:self.rows + len(rows)] = rows
    self._sha.update(memoryview(rows).cast("B"))
    self.rows += len(rows)

  def finish(self) -> str:
    """Trims the file to the rows written, syncs and closes; returns the sha256 of the data."""
    array, self._array = self._array, None
    if self.rows < len(array):
      # The header states the row count, so a short shard gets a file of its
      # own made by numpy (the same header a file of that length always has)
      # and its rows copied in blocks, never more than one block in memory.
      full = self.path.with_name(self.path.name + ".full")
      os.replace(self.path, full)
      trimmed = np.lib.format.open_memmap(self.path, mode="w+", dtype=array.dtype,
                                          shape=(self.rows, *array.shape[1:]))
      step = max(1, _HASH_CHUNK_BYTES // max(1, array[0].nbytes))
      for start in range(0, self.rows, step):
        stop = min(start + step, self.rows)
        trimmed[start:stop] = array[start:stop]
      del array
      full.unlink()
      array = trimmed
    array.flush()
    del array  # Unmapped before the sync, so the file is complete and closed.
    fd = os.open(self.path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    return self._sha.hexdigest()

  def abort(self) -> None:
    """Drops the memory map; the staging folder is removed by the caller."""
    self._array = None


class _ShardWriter:
  """Splits a stream of row-aligned columns into shards of `shard_size` rows."""

  def __init__(self, directory: Path, shard_size: int):
    self.directory, self.shard_size = directory, shard_size
    self.records: list[dict[str, Any]] = []
    self.row_shapes: dict[str, tuple[int, ...]] = {}
    self.num_examples = 0
    self._open: dict[str, _NpyFile] = {}

  def append(self, columns: dict[str, np.ndarray], what: str) -> None:
    """Writes one chunk's rows, opening and closing shards as they fill."""
    if not self.row_shapes:
      self.row_shapes = {name: array.shape[1:] for name, array in columns.items()}
    for name, array in columns.items():
      if array.shape[1:] != self.row_shapes[name]:
        raise UserError(f"{what}: {name} rows are {array.shape[1:]}, but earlier chunks' were "
                        f"{self.row_shapes[name]}")
    rows = len(next(iter(columns.values())))
    if self.num_examples + rows > MAX_EXAMPLES:
      raise UserError(f"more than {MAX_EXAMPLES:,} examples are not supported")
    done = 0
    while done < rows:
      if not self._open:
        number = len(self.records)
        self._open = {name: _NpyFile(self.directory / f"{name}-{number:05d}.npy", array.dtype,
                                     self.row_shapes[name], self.shard_size)
                      for name, array in columns.items()}
      files = next(iter(self._open.values()))
      take = min(rows - done, self.shard_size - files.rows)
      for name, array in columns.items():
        self._open[name].write(array[done:done + take])
      done += take
      self.num_examples += take
      if files.rows == self.shard_size:
        self._close_shard()

  def finish(self) -> None:
    """Closes the last, possibly short, shard."""
    if self._open:
      self._close_shard()

  def abort(self) -> None:
    """Drops the open shard's files."""
    for file in self._open.values():
      file.abort()

  def _close_shard(self) -> None:
    files, self._open = self._open, {}
    record: dict[str, Any] = {name: file.path.name for name, file in files.items()}
    record["num_examples"] = next(iter(files.values())).rows
    record["sha256"] = {name: file.finish() for name, file in files.items()}
    self.records.append(record)


def _write_shard_folder(directory: Path, chunks: Iterable[Any],
                        columns: Callable[[int, Any], dict[str, np.ndarray]],
                        manifest: Callable[[_ShardWriter], dict[str, Any]], manifest_name: str,
                        shard_size: int, overwrite: bool) -> Path:
  """Writes the chunks' columns as shards in a staging folder, then publishes it as `directory`."""
  try:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp",
                                    dir=directory.parent))
    # mkdtemp makes the folder private (0700); the published one follows the umask.
    staging.chmod(0o777 & ~current_umask())
  except OSError as e:
    raise UserError(f"cannot write {directory}: {e.strerror}") from None
  writer = _ShardWriter(staging, shard_size)
  try:
    for number, chunk in enumerate(chunks):
      arrays = columns(number, chunk)
      if len(next(iter(arrays.values()))):
        writer.append(arrays, f"chunk {number}")
    writer.finish()
    if not writer.num_examples:
      raise UserError(f"nothing to write to {directory}: the chunks hold no examples")
    write_json(staging / manifest_name, manifest(writer))
    publish_directory(staging, directory, overwrite)
  except BaseException:
    writer.abort()
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def _check_shard_size(shard_size: int) -> None:
  if (isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer))
      or shard_size < 1):
    raise UserError(f"shard_size must be a positive integer, got {shard_size!r}")


def _as_chunks(chunks: Any, size: int) -> Iterable[Any]:
  """Chunks as given, or one pair of whole arrays cut into slices of `size` rows.

  Slicing keeps memory-mapped inputs from being read whole.
  """
  if not (isinstance(chunks, tuple) and len(chunks) == 2
          and all(isinstance(part, np.ndarray) for part in chunks)):
    return chunks
  first, second = chunks
  if len(first) != len(second):
    raise UserError(f"the two arrays have {len(first)} and {len(second)} rows; they must match")
  return ((first[start:start + size], second[start:start + size])
          for start in range(0, len(first), size))


# --------------------------------------------------------------------------
# Reading.


class TargetShards:
  """A teacher's targets in shards, read by global row index through memory maps.

  Opening checks the manifest against the files' headers: row counts, class
  count and dtype. Each shard's data is re-hashed when first read; `verify_checksums`
  re-hashes every shard at once.

  Attributes:
    path: the targets-shards folder.
    meta: the manifest (the writer's metadata plus counts and shards), in the
      shape `distill.targets.check_targets_match` takes.
    num_examples, num_classes: the manifest's counts.
  """

  def __init__(self, directory: str | os.PathLike):
    path = Path(directory)
    if (path / TARGET_SHARDS_DIR / TARGET_MANIFEST_FILE).is_file():
      path = path / TARGET_SHARDS_DIR
    manifest_path = path / TARGET_MANIFEST_FILE
    if not manifest_path.is_file():
      raise UserError(f"no target shards at {directory} (no {TARGET_SHARDS_DIR}/"
                      f"{TARGET_MANIFEST_FILE}); export the teacher's targets first")
    manifest = read_json(manifest_path, "target shards manifest")
    check_format(manifest, TARGETS_FORMAT, manifest_path)
    try:
      num_classes = int(manifest["num_classes"])
    except (KeyError, TypeError, ValueError):
      raise UserError(
          f"target shards manifest {manifest_path} is damaged: bad num_classes") from None
    if num_classes < 1 or len(manifest.get("class_names", [None] * num_classes)) != num_classes:
      raise UserError(f"target shards manifest {manifest_path} is damaged: {num_classes} classes "
                      f"but {len(manifest.get('class_names', []))} class names")
    self.path = path
    self.meta = manifest
    self.num_classes = num_classes
    self._shards = ShardSet(path, manifest, manifest_path, {
        column: (np.dtype(np.float32), (num_classes,)) for column in _TARGET_COLUMNS})
    self.num_examples = self._shards.num_examples

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> np.ndarray:
    """The teacher's probabilities float32 [n, C] for global rows `indices`, in their order."""
    return self._shards.read(checked_indices(indices, self.num_examples), ("probs",))["probs"]

  def read_logits(self, indices: np.ndarray) -> np.ndarray:
    """The teacher's logits float32 [n, C] for global rows `indices`, in their order."""
    return self._shards.read(checked_indices(indices, self.num_examples), ("logits",))["logits"]

  def verify_checksums(self) -> None:
    """Re-hashes every shard file against the manifest (reads everything once).

    Raises:
      UserError: naming the first damaged file.
    """
    self._shards.verify_checksums()


def open_target_shards(directory: str | os.PathLike, *, num_examples: int | None = None,
                       num_classes: int | None = None, verify_checksums: bool = False
                       ) -> TargetShards:
  """Opens target shards and checks them against the data they are for.

  Args:
    directory: a run directory holding targets-shards/, or that folder.
    num_examples: rows the train source has; an error if the targets differ.
    num_classes: classes the data has; an error if the targets differ.
    verify_checksums: also re-hash every file (reads all of them once).

  Raises:
    UserError: for missing or damaged shards, or shards made for other data.
  """
  targets = TargetShards(directory)
  if num_examples is not None and targets.num_examples != num_examples:
    raise UserError(f"target shards {targets.path} have {targets.num_examples:,} rows but the "
                    f"train source has {num_examples:,}; they were made for other data")
  if num_classes is not None and targets.num_classes != num_classes:
    raise UserError(f"target shards {targets.path} have {targets.num_classes} classes but the "
                    f"data has {num_classes}; they were made for other data")
  if verify_checksums:
    targets.verify_checksums()
  return targets


class ShardSet:
  """The shards listed in a manifest: checked on open, memory-mapped on first use.

  Args:
    directory: the shard folder.
    manifest: its parsed manifest, with a "shards" list of records.
    manifest_path: where the manifest is, for error messages.
    columns: column name -> (dtype, row shape) every shard file must hold.
  """

  def __init__(self, directory: Path, manifest: dict[str, Any], manifest_path: Path,
               columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
    self.directory = directory
    self.columns = columns
    self.records = manifest.get("shards")
    damaged = f"shards manifest {manifest_path} is damaged"
    if not isinstance(self.records, list) or not self.records:
      raise UserError(f"{damaged}: no shards listed")
    checked = [self._check_record(number, record, damaged)
               for number, record in enumerate(self.records)]
    counts = [count for count, _ in checked]
    self._data_offsets = [offsets for _, offsets in checked]
    self.num_examples = int(sum(counts))
    if manifest.get("num_examples") != self.num_examples:
      raise UserError(f"{damaged}: it says {manifest.get('num_examples')} examples but its "
                      f"shards hold {self.num_examples}")
    if self.num_examples > MAX_EXAMPLES:
      raise UserError(f"{damaged}: more than {MAX_EXAMPLES:,} examples are not supported")
    # starts[s] is shard s's first global index; the extra last entry is the total.
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._mapped: dict[int, dict[str, np.memmap]] = {}
    self._lock = threading.Lock()

  def _check_record(self, number: int, record: Any, damaged: str) -> tuple[int, dict[str, int]]:
    """Checks one shard's record and file headers; returns its rows and each file's data offset."""
    try:
      count = int(record["num_examples"])
      names = {column: str(record[column]) for column in self.columns}
      has_checksums = all(isinstance(record["sha256"][column], str) for column in self.columns)
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"{damaged}: shard {number} has a bad or missing {e}") from None
    if not has_checksums:
      raise UserError(f"{damaged}: shard {number} has a bad checksum")
    if count < 1:
      raise UserError(f"{damaged}: shard {number} has {count} rows")
    offsets = {}
    for column, name in names.items():
      # Names are bare file names: a manifest must not reach outside its folder.
      if os.path.basename(name) != name or name in ("", ".", ".."):
        raise UserError(f"{damaged}: shard file name {name!r} is not a plain file name")
      dtype, row_shape = self.columns[column]
      offsets[column] = _check_npy(self.directory / name, dtype, (count, *row_shape))
    return count, offsets

  def file_sizes(self) -> list[int]:
    """The size in bytes of every shard file, shard by shard, column by column."""
    return [(self.directory / record[column]).stat().st_size
            for record in self.records for column in self.columns]

  def arrays(self, shard: int) -> dict[str, np.memmap]:
    """One shard's columns, memory-mapped read-only on first use and kept."""
    mapped = self._mapped.get(shard)
    if mapped is None:
      with self._lock:
        mapped = self._mapped.get(shard)
        if mapped is None:
          record = self.records[shard]
          # Hashed once per process, when first read: a file changed since the manifest was
          # written (a label edited in place keeps every size) is refused, not trained on.
          self._verify_shard(shard)
          try:
            mapped = {column: np.load(self.directory / record[column], mmap_mode="r",
                                      allow_pickle=False) for column in self.columns}
          except (OSError, ValueError) as e:
            raise UserError(f"cannot open shard {shard} in {self.directory}: "
                            f"{one_line(e)}") from None
          self._mapped[shard] = mapped
    return mapped

  def read(self, indices: np.ndarray, columns: Sequence[str] | None = None
           ) -> dict[str, np.ndarray]:
    """The rows at global `indices` (checked by the caller) of `columns` (default all)."""
    columns = tuple(self.columns) if columns is None else tuple(columns)
    out = {column: np.empty((len(indices), *self.columns[column][1]), self.columns[column][0])
           for column in columns}
    shard_of = np.searchsorted(self._starts, indices, side="right") - 1
    # Grouped by shard so each shard is gathered with one fancy index.
    order = np.argsort(shard_of, kind="stable")
    sorted_shards = shard_of[order]
    bounds = np.flatnonzero(np.diff(sorted_shards)) + 1
    for rows in np.split(order, bounds):
      if not len(rows):
        continue
      shard = int(shard_of[rows[0]])
      local = indices[rows] - self._starts[shard]
      arrays = self.arrays(shard)
      for column in columns:
        out[column][rows] = arrays[column][local]
    return out

  def verify_checksums(self) -> None:
    """Re-hashes every file's data against its manifest checksum.

    Raises:
      UserError: naming the first file that cannot be read or does not match.
    """
    for number in range(len(self.records)):
      self._verify_shard(number)

  def _verify_shard(self, number: int) -> None:
    """Re-hashes one shard's files against their manifest checksums."""
    record = self.records[number]
    for column in self.columns:
      path = self.directory / record[column]
      digest = hashlib.sha256()
      try:
        with open(path, "rb") as f:
          f.seek(self._data_offsets[number][column])
          while block := f.read(_HASH_CHUNK_BYTES):
            digest.update(block)
      except OSError as e:
        raise UserError(f"cannot read shard file {path}: {e.strerror}") from None
      if digest.hexdigest() != record["sha256"][column]:
        raise UserError(f"shard file {path} changed since its manifest was written (its "
                        "contents do not match their checksum): write the shards again")


def _check_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> int:
  """Checks an .npy file's header and size against the manifest; returns the data offset."""
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      file_shape, fortran_order, file_dtype = read_header(f)
      offset = f.tell()
      size = os.fstat(f.fileno()).st_size
  except FileNotFoundError:
    raise UserError(f"shard file {path} is missing") from None
  except (OSError, ValueError) as e:
    raise UserError(f"shard file {path} is damaged (not an .npy file: {one_line(e)})") from None
  if file_dtype != dtype or tuple(file_shape) != shape or fortran_order:
    raise UserError(f"shard file {path} holds {file_dtype} {tuple(file_shape)} but the manifest "
                    f"says {dtype} {shape}")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if size != expected:
    raise UserError(f"shard file {path} is {'truncated' if size < expected else 'damaged'}: "
                    f"{size} bytes, expected {expected}")
  return offset


def check_format(manifest: Any, expected: str, path: Path) -> None:
  """Checks a manifest's "format" and "format_version".

  Raises:
    UserError: naming `path` if it is another kind of manifest or version.
  """
  if not isinstance(manifest, dict) or manifest.get("format") != expected:
    raise UserError(f"{path} is not a {expected} manifest")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise UserError(f"{path} has format version {manifest.get('format_version')}, expected "
                    f"{FORMAT_VERSION}")


def checked_indices(indices: np.ndarray, num_examples: int) -> np.ndarray:
  """`indices` as int64, checked to be a 1-D integer array in [0, num_examples).

  Raises:
    ValueError: for another shape or dtype; IndexError: for an index outside.
  """
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
  indices = indices.astype(np.int64, copy=False)
  if indices.size and (indices.min() < 0 or indices.max() >= num_examples):
    raise IndexError(f"index {int(indices.min() if indices.min() < 0 else indices.max())} is "
                     f"outside [0, {num_examples})")
  return indices

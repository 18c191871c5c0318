"""Data sets larger than host memory: read on demand, prefetched in background threads.

Two on-disk sources give random access by global example index without ever
loading the whole set:

* array shards: a folder with `shards.json` and per-shard `images-NNNNN.npy`
  (uint8 [n, H, W, C]) and `labels-NNNNN.npy` (int32 [n]), memory-mapped;
  `write_array_shards` makes them from any iterable of chunks;
* an image folder in the ImageNet layout, root/<class_name>/<image files>,
  decoded with Pillow and resized and center-cropped to a fixed size on read.

`open_stream_dataset` opens either (or a root with train/ and test/ holding
them) and carves a validation subset exactly as `distill.data` does.
`prefetch_batches` reads the batches of a range of steps in Grain's thread pool
with a bounded buffer, in step order. Teacher targets for such sets go to
`targets-shards/` (`write_target_shards` / `open_target_shards`), read by index
through memory maps too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import grain
import numpy as np
from PIL import Image, ImageOps

# The in-memory loader's validation-size rules, reused so a stream and an
# in-memory copy of the same data split identically.
from distill.data import _check_val_size_type, _validation_count
from distill.errors import UserError
from distill.io import read_json, write_json

SHARDS_FILE = "shards.json"
SHARDS_FORMAT = "distill-array-shards"
TARGET_SHARDS_DIR = "targets-shards"
TARGET_MANIFEST_FILE = "manifest.json"
TARGETS_FORMAT = "distill-target-shards"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 8192
# Lower-case suffixes Pillow decodes; ImageNet's own files end in ".JPEG".
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_IMAGE_COLUMNS = ("images", "labels")
_TARGET_COLUMNS = ("probs", "logits")
_HASH_CHUNK_BYTES = 1 << 24
# Global indices travel as int32 (the batch's "index" field), like DataOrder's.
_MAX_EXAMPLES = np.iinfo(np.int32).max


# --------------------------------------------------------------------------
# Sources.


class StreamSource:
  """Random access to a data set on disk by global example index.

  Attributes:
    kind: "array-shards" or "image-folder".
    path: the folder it reads.
    num_examples: how many examples it has (indices run 0..num_examples-1).
    image_shape: (height, width, channels) of every image `read` returns.
    class_names: class names; labels index into them.
    fingerprint: a cheap, stable sha256 identity of the files (not of the
      pixels): it changes when files are added, removed, renamed or resized.
  """

  kind: str
  path: Path
  num_examples: int
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  fingerprint: str

  @property
  def num_classes(self) -> int:
    """Number of classes (labels run from 0 to num_classes - 1)."""
    return len(self.class_names)

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [n, H, W, C], labels int32 [n]) for `indices`, in their order."""
    raise NotImplementedError

  def describe(self) -> str:
    """One line: kind, path, size, image shape and classes."""
    height, width, channels = self.image_shape
    return (f"{self.kind} {self.path}: {self.num_examples:,} images of "
            f"{height}x{width}x{channels}, {self.num_classes} classes")

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.describe()}; fingerprint {self.fingerprint[:12]})"


class ArrayShardSource(StreamSource):
  """Memory-mapped array shards written by `write_array_shards`.

  Opening reads shards.json and each file's .npy header only; a shard's arrays
  are memory-mapped on first use and kept, so reads touch only the rows asked
  for and the operating system's page cache decides what stays in memory.
  """

  kind = "array-shards"

  def __init__(self, directory: str | os.PathLike):
    self.path = Path(directory)
    manifest_path = self.path / SHARDS_FILE
    manifest = read_json(manifest_path, "array shards manifest")
    _check_format(manifest, SHARDS_FORMAT, manifest_path)
    try:
      image_shape = tuple(int(d) for d in manifest["image_shape"])
      class_names = tuple(str(name) for name in manifest["class_names"])
      num_classes = int(manifest["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"array shards manifest {manifest_path} is damaged: bad or missing {e}") from None
    if len(image_shape) != 3 or min(image_shape) < 1:
      raise UserError(f"array shards manifest {manifest_path} is damaged: image_shape {image_shape}")
    if num_classes != len(class_names) or not class_names:
      raise UserError(f"array shards manifest {manifest_path} is damaged: num_classes "
                      f"{num_classes} but {len(class_names)} class names")
    self.image_shape = image_shape
    self.class_names = class_names
    self._shards = _ShardSet(self.path, manifest, manifest_path, {
        "images": (np.dtype(np.uint8), image_shape), "labels": (np.dtype(np.int32), ())})
    self.num_examples = self._shards.num_examples
    # shards.json already holds every shard's checksum; the sizes catch a
    # shard swapped on disk without touching the manifest.
    digest = hashlib.sha256(manifest_path.read_bytes())
    for size in self._shards.file_sizes():
      digest.update(f"{size};".encode())
    self.fingerprint = digest.hexdigest()

  @property
  def num_shards(self) -> int:
    """Number of shards (each an images and a labels file)."""
    return len(self._shards.records)

  def shard_arrays(self, shard: int) -> tuple[np.memmap, np.memmap]:
    """The memory-mapped (images, labels) of one shard, read-only."""
    arrays = self._shards.arrays(shard)
    return arrays["images"], arrays["labels"]

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [n, H, W, C], labels int32 [n]) for `indices`, in their order.

    Raises:
      UserError: if a shard holds a label outside [0, num_classes).
    """
    indices = _checked_indices(indices, self.num_examples)
    columns = self._shards.read(indices)
    labels = columns["labels"]
    if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
      bad = int(labels[(labels < 0) | (labels >= self.num_classes)][0])
      raise UserError(f"array shards {self.path} hold label {bad}, outside [0, "
                      f"{self.num_classes}) for {self.num_classes} classes")
    return columns["images"], labels

  def verify_checksums(self) -> None:
    """Re-hashes every shard file against shards.json (reads everything once).

    Raises:
      UserError: naming the first file whose contents changed.
    """
    self._shards.verify_checksums()


class ImageFolderSource(StreamSource):
  """Images in root/<class_name>/<files>, decoded and resized on read.

  Classes are the sub-folders of root sorted by name; within a class, files
  (sub-folders included) are sorted by relative path, and global indices run
  class by class in that order. Each image is converted to RGB (or grayscale),
  scaled so it covers `image_size` and center-cropped to it, like
  `PIL.ImageOps.fit`. Hidden files and folders (".name") are skipped.
  """

  kind = "image-folder"

  def __init__(self, root: str | os.PathLike, image_size: int | Sequence[int], *,
               grayscale: bool = False):
    self.path = Path(root)
    height, width = _checked_image_size(image_size)
    self.image_shape = (height, width, 1 if grayscale else 3)
    self._mode = "L" if grayscale else "RGB"
    if not self.path.is_dir():
      raise UserError(f"image folder {self.path} does not exist or is not a folder")
    class_names = sorted(entry.name for entry in os.scandir(self.path)
                         if entry.is_dir() and not entry.name.startswith("."))
    if not class_names:
      raise UserError(f"image folder {self.path} has no class folders; expected "
                      f"{self.path}/<class_name>/<image files>")
    digest = hashlib.sha256(f"{height}x{width}:{self._mode};".encode())
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
      found = _image_files(self.path / class_name)
      if not found:
        raise UserError(f"class folder {self.path / class_name} has no images; remove it or "
                        "add images (every class needs at least one)")
      for relative, size in found:
        relative = f"{class_name}/{relative}"
        digest.update(f"{relative}\0{size}\n".encode())
        paths.append(relative)
        labels.append(label)
    if len(paths) > _MAX_EXAMPLES:
      raise UserError(f"image folder {self.path} has {len(paths):,} images, more than the "
                      f"{_MAX_EXAMPLES:,} supported")
    self.class_names = tuple(class_names)
    self.num_examples = len(paths)
    self.fingerprint = digest.hexdigest()
    self._paths = paths
    self._labels = np.asarray(labels, np.int32)

  def file(self, index: int) -> Path:
    """The image file of one example."""
    return self.path / self._paths[index]

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [n, H, W, C], labels int32 [n]) for `indices`, in their order.

    Raises:
      UserError: naming a file Pillow cannot decode.
    """
    indices = _checked_indices(indices, self.num_examples)
    images = np.empty((len(indices), *self.image_shape), np.uint8)
    for row, index in enumerate(indices.tolist()):
      images[row] = self._decode(self.path / self._paths[index])
    return images, self._labels[indices]

  def _decode(self, path: Path) -> np.ndarray:
    height, width, _ = self.image_shape
    try:
      with Image.open(path) as image:
        # Lets the JPEG decoder scale down by 1/2..1/8 while staying at least
        # as large as the target: most of the decoding time for large photos.
        image.draft(self._mode, (width, height))
        if image.mode == "P" and "transparency" in image.info:
          image = image.convert("RGBA")  # Pillow warns on palette -> RGB otherwise.
        image = image.convert(self._mode)
        image = ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise UserError(f"cannot read image {path}: {_one_line(e)}") from None
    return np.asarray(image, np.uint8).reshape(self.image_shape)


def open_source(path: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                grayscale: bool = False) -> StreamSource:
  """Opens a folder of array shards (it has shards.json) or an image folder.

  Args:
    path: the folder.
    image_size: the (height, width), or one int for square images, that an
      image folder's images are resized and cropped to. Required for image
      folders; for shards, an error if it differs from what they hold.
    grayscale: decode an image folder to one channel instead of RGB; for
      shards, an error if they hold more than one channel.

  Raises:
    UserError: if the folder is neither, or the options do not fit it.
  """
  path = Path(path)
  if not path.is_dir():
    raise UserError(f"data folder {path} does not exist or is not a folder")
  if (path / SHARDS_FILE).is_file():
    source = ArrayShardSource(path)
    if image_size is not None and _checked_image_size(image_size) != source.image_shape[:2]:
      height, width, _ = source.image_shape
      raise UserError(f"array shards {path} hold {height}x{width} images and are not resized; "
                      f"leave out the image size {image_size} or convert them again")
    if grayscale and source.image_shape[2] != 1:
      raise UserError(f"array shards {path} hold {source.image_shape[2]}-channel images and are "
                      "not converted; leave out grayscale or convert them again")
    return source
  if image_size is None:
    raise UserError(f"{path} is an image folder (no {SHARDS_FILE}); give the image size to "
                    "resize its images to, e.g. image_size=224")
  return ImageFolderSource(path, image_size, grayscale=grayscale)


# --------------------------------------------------------------------------
# Data sets with splits.


@dataclasses.dataclass(frozen=True, eq=False)
class StreamDataset:
  """A streamed data set: its sources and the train / validation index split.

  The loop indexes `train` with `train_indices` (training) and `val_indices`
  (validation); `test` is read whole. All indices are global indices of the
  train source, int32.
  """
  name: str
  train: StreamSource
  test: StreamSource | None
  train_indices: np.ndarray
  val_indices: np.ndarray
  fingerprint: str
  split: dict[str, Any]

  @property
  def class_names(self) -> tuple[str, ...]:
    """Class names shared by every split."""
    return self.train.class_names

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return self.train.num_classes

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) of every image."""
    return self.train.image_shape

  def split_fingerprint(self, split: str) -> str:
    """A sha256 identity of one split: its source's fingerprint and, for train/val, its indices.

    Args:
      split: 'train', 'val' or 'test'.
    """
    if split == "test":
      if self.test is None:
        raise UserError(f"data set {self.name} has no test split")
      return self.test.fingerprint
    if split not in ("train", "val"):
      raise UserError(f"unknown split {split!r}; choose one of: train, val, test")
    indices = self.train_indices if split == "train" else self.val_indices
    digest = hashlib.sha256(f"{self.train.fingerprint};{indices.dtype.str}{indices.shape};".encode())
    digest.update(indices.tobytes())
    return digest.hexdigest()

  def describe(self) -> str:
    """One line: name, split sizes, image shape and classes."""
    height, width, channels = self.image_shape
    test = len(self.test) if self.test is not None else 0
    return (f"{self.name}: {len(self.train_indices):,} train / {len(self.val_indices):,} val / "
            f"{test:,} test images of {height}x{width}x{channels} ({self.train.kind}), "
            f"{self.num_classes} classes")

  def __repr__(self) -> str:
    return f"StreamDataset({self.describe()}; fingerprint {self.fingerprint[:12]})"


def split_train_val(num_examples: int, *, val_size: int | float = 0.1, split_seed: int = 0,
                    train_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Carves a validation subset out of a training source by a seeded permutation.

  The same rules and permutation as `distill.data.load_dataset`, so the same
  data split the same way whether it is streamed or held in memory.

  Args:
    num_examples: size of the training source.
    val_size: validation examples, as a count (int) or a fraction (float in [0, 1)).
    split_seed: seed of the permutation.
    train_limit: keep only this many training examples; None or 0 keeps all.

  Returns:
    (train_indices, val_indices), int32 global indices in permutation order.
  """
  _check_val_size_type(val_size)
  if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
    raise UserError(f"split_seed must be an integer, got {split_seed!r}")
  if train_limit is not None and (isinstance(train_limit, bool) or not isinstance(
      train_limit, (int, np.integer)) or train_limit < 0):
    raise UserError(f"train_limit must be a non-negative integer or None, got {train_limit!r}")
  num_val = _validation_count(val_size, num_examples)
  order = np.random.default_rng(split_seed).permutation(num_examples).astype(np.int32)
  val_indices, train_indices = order[:num_val], order[num_val:]
  if train_limit:
    train_indices = train_indices[:train_limit]
  return _read_only(train_indices), _read_only(val_indices)


def open_stream_dataset(root: str | os.PathLike, *, image_size: int | Sequence[int] | None = None,
                        grayscale: bool = False, val_size: int | float = 0.1, split_seed: int = 0,
                        train_limit: int | None = None) -> StreamDataset:
  """Opens a streamed data set and splits off its validation examples.

  `root` is either one source (a shard folder or an image folder: training
  data only, no test split) or holds `train/` and optionally `test/`, each a
  source of either kind. Both splits must have the same classes and image shape.

  Args:
    root: the data folder.
    image_size: for image folders, the (height, width) or square size to
      resize to; see `open_source`.
    grayscale: decode image folders to one channel.
    val_size, split_seed, train_limit: see `split_train_val`.

  Raises:
    UserError: for a folder that holds no data set, or splits that disagree.
  """
  root = Path(root)
  if not root.is_dir():
    raise UserError(f"data folder {root} does not exist or is not a folder")
  options = {"image_size": image_size, "grayscale": grayscale}
  # An image folder whose class is literally "train" would read as a split
  # layout; a shards.json at the top says it is one source.
  if (root / "train").is_dir() and not (root / SHARDS_FILE).is_file():
    train = open_source(root / "train", **options)
    test = open_source(root / "test", **options) if (root / "test").exists() else None
  else:
    train, test = open_source(root, **options), None
  if test is not None:
    if test.class_names != train.class_names:
      raise UserError(f"{test.path} has classes ({', '.join(test.class_names[:5])}, ...) that "
                      f"differ from {train.path}'s ({', '.join(train.class_names[:5])}, ...)")
    if test.image_shape != train.image_shape:
      raise UserError(f"{test.path} has {test.image_shape} images but {train.path} has "
                      f"{train.image_shape}")
  train_indices, val_indices = split_train_val(
      train.num_examples, val_size=val_size, split_seed=split_seed, train_limit=train_limit)
  fingerprint = hashlib.sha256(
      f"train:{train.fingerprint};test:{test.fingerprint if test else '-'}".encode()).hexdigest()
  return StreamDataset(
      name=root.resolve().name, train=train, test=test, train_indices=train_indices,
      val_indices=val_indices, fingerprint=fingerprint,
      split={"val_size": val_size, "split_seed": split_seed, "train_limit": train_limit or None})


# --------------------------------------------------------------------------
# Prefetching and sharding across processes.


class BatchIterator:
  """Batches of consecutive steps, read ahead by Grain's thread pool.

  Yields {"images": uint8 [B, H, W, C], "labels": int32 [B], "index": int32 [B]}
  for steps start, start+1, ..., stop-1, in that order whatever order the
  threads finish in. Use it as a context manager, or call `close`, to stop the
  threads early.
  """

  def __init__(self, source: StreamSource, indices_for_step: Callable[[int], np.ndarray],
               start: int, stop: int, *, num_threads: int = 2, buffer_size: int = 4):
    for name, value, low in (("start", start, 0), ("stop", stop, start),
                             ("num_threads", num_threads, 1), ("buffer_size", buffer_size, 1)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"prefetch {name} must be an integer >= {low}, got {value!r}")
    self.start, self.stop = int(start), int(stop)
    self.next_step = self.start
    # Grain keeps the output in step order and bounds the steps in flight or
    # waiting at buffer_size; each step is one element, read as a whole batch
    # so memory-mapped rows are gathered with one fancy index per shard.
    dataset = grain.MapDataset.range(self.start, self.stop).map(_StepReader(source, indices_for_step))
    self._iterator = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=int(num_threads), prefetch_buffer_size=int(buffer_size))).__iter__()
    # Start reading now, so the first batches load while the caller compiles.
    if self.start < self.stop:
      self._iterator.start_prefetch()

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.next_step >= self.stop:
      raise StopIteration
    batch = next(self._iterator)
    self.next_step += 1
    return batch

  def close(self) -> None:
    """Stops the reading threads and drops what they prefetched."""
    self._iterator.close()

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def prefetch_batches(source: StreamSource, indices_for_step: Callable[[int], np.ndarray],
                     start: int, stop: int, *, num_threads: int = 2,
                     buffer_size: int = 4) -> BatchIterator:
  """Reads the batches of steps [start, stop) in background threads.

  Args:
    source: where the examples are.
    indices_for_step: step -> the global indices of that step's batch (on
      several processes, this process's share: `process_slice`). It is only
      ever called by one thread at a time, so a stateful `DataOrder` is safe.
    start, stop: the steps to read, stop excluded.
    num_threads: reading threads; image decoding and page faults release the
      GIL, so more threads than cores can still help on slow disks.
    buffer_size: at most this many batches are read ahead (plus the one the
      caller holds), which bounds the host memory used.

  Returns:
    A `BatchIterator` of {"images", "labels", "index"} dicts, in step order;
    the same arguments always give the same batches.
  """
  return BatchIterator(source, indices_for_step, start, stop, num_threads=num_threads,
                       buffer_size=buffer_size)


class _StepReader:
  """step -> batch dict; what Grain's threads run."""

  def __init__(self, source: StreamSource, indices_for_step: Callable[[int], np.ndarray]):
    self._source = source
    self._indices_for_step = indices_for_step
    self._lock = threading.Lock()

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    with self._lock:
      # Copied: DataOrder hands out views of its cached permutation.
      indices = np.array(self._indices_for_step(int(step)), copy=True)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
      raise ValueError(f"indices_for_step({step}) must return a 1-D integer array, got "
                       f"{indices.dtype} {indices.shape}")
    images, labels = self._source.read(indices)
    return {"images": images, "labels": labels, "index": indices.astype(np.int32)}


def process_slice(global_batch_indices: np.ndarray, process_index: int,
                  process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch.

  Process p of P gets rows [p * B/P, (p + 1) * B/P) of the last axis, so the
  shares of processes 0..P-1 concatenate back to the global batch.

  Args:
    global_batch_indices: [B] (or [..., B]) indices of the whole batch.
    process_index: this process, 0..process_count-1 (jax.process_index()).
    process_count: number of processes (jax.process_count()).

  Raises:
    UserError: if B does not divide by process_count.
  """
  indices = np.asarray(global_batch_indices)
  if isinstance(process_count, bool) or not isinstance(process_count, (int, np.integer)) or (
      process_count < 1):
    raise UserError(f"process count must be a positive integer, got {process_count!r}")
  if isinstance(process_index, bool) or not isinstance(process_index, (int, np.integer)) or not (
      0 <= process_index < process_count):
    raise UserError(f"process index must be in [0, {process_count}), got {process_index!r}")
  if indices.ndim < 1:
    raise UserError("the global batch must be an array of indices, got a scalar")
  batch = indices.shape[-1]
  if batch % process_count:
    raise UserError(f"global batch size {batch} does not divide among {process_count} processes; "
                    f"choose a batch size that is a multiple of {process_count}")
  share = batch // process_count
  return indices[..., process_index * share:(process_index + 1) * share]


# --------------------------------------------------------------------------
# Writing shards.


def write_array_shards(directory: str | os.PathLike,
                       chunks: Iterable[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray],
                       *, class_names: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE,
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
  _check_target(directory, overwrite)
  chunks = _as_chunks(chunks, shard_size)

  def columns(chunk_number: int, chunk: Any) -> dict[str, np.ndarray]:
    try:
      images, labels = chunk
    except (TypeError, ValueError):
      raise UserError(f"chunk {chunk_number} must be a pair (images, labels)") from None
    images, labels = np.asarray(images), np.asarray(labels)
    what = f"chunk {chunk_number}"
    if images.dtype != np.uint8:
      raise UserError(f"{what}: images must be uint8 (0..255), got {images.dtype}")
    if images.ndim == 3:
      images = images[..., np.newaxis]
    if images.ndim != 4 or 0 in images.shape[1:]:
      raise UserError(f"{what}: images must be shaped [n, H, W, C] or [n, H, W], got {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise UserError(f"{what}: labels must be integers shaped [n], got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
      raise UserError(f"{what}: {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
      bad = labels[(labels < 0) | (labels >= len(class_names))][0]
      raise UserError(f"{what}: label {bad} is outside [0, {len(class_names)}) for "
                      f"{len(class_names)} classes")
    return {"images": images, "labels": labels.astype(np.int32)}

  def manifest(writer: _ShardWriter) -> dict[str, Any]:
    return {
        "format": SHARDS_FORMAT, "format_version": FORMAT_VERSION,
        "num_examples": writer.num_examples, "image_shape": list(writer.row_shapes["images"]),
        "num_classes": len(class_names), "class_names": list(class_names),
        "shard_size": shard_size, "shards": writer.records, "meta": dict(meta or {}),
    }

  return _write_shard_folder(directory, chunks, columns, manifest, SHARDS_FILE, shard_size,
                             overwrite)


def write_target_shards(directory: str | os.PathLike,
                        chunks: Iterable[tuple[np.ndarray, np.ndarray]] | tuple[np.ndarray, np.ndarray],
                        *, meta: Mapping[str, Any], num_examples: int | None = None,
                        shard_size: int = 65536, overwrite: bool = False) -> Path:
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
  _check_target(target, overwrite)
  chunks = _as_chunks(chunks, shard_size)

  def columns(chunk_number: int, chunk: Any) -> dict[str, np.ndarray]:
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

  def manifest(writer: _ShardWriter) -> dict[str, Any]:
    if num_examples is not None and writer.num_examples != num_examples:
      raise UserError(f"target chunks hold {writer.num_examples:,} rows but the train source has "
                      f"{num_examples:,}; targets must be row-aligned with it")
    return {
        **meta, "format": TARGETS_FORMAT, "format_version": FORMAT_VERSION,
        "num_examples": writer.num_examples, "num_classes": writer.row_shapes["probs"][0],
        "shard_size": shard_size, "shards": writer.records,
    }

  return _write_shard_folder(target, chunks, columns, manifest, TARGET_MANIFEST_FILE, shard_size,
                             overwrite)


class TargetShards:
  """A teacher's targets in shards, read by global row index through memory maps.

  Opening checks the manifest against the files' headers: row counts, class
  count and dtype. `verify_checksums` re-hashes the data, on demand.

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
    _check_format(manifest, TARGETS_FORMAT, manifest_path)
    try:
      num_classes = int(manifest["num_classes"])
    except (KeyError, TypeError, ValueError):
      raise UserError(f"target shards manifest {manifest_path} is damaged: bad num_classes") from None
    if num_classes < 1 or len(manifest.get("class_names", [None] * num_classes)) != num_classes:
      raise UserError(f"target shards manifest {manifest_path} is damaged: {num_classes} classes "
                      f"but {len(manifest.get('class_names', []))} class names")
    self.path = path
    self.meta = manifest
    self.num_classes = num_classes
    self._shards = _ShardSet(path, manifest, manifest_path, {
        column: (np.dtype(np.float32), (num_classes,)) for column in _TARGET_COLUMNS})
    self.num_examples = self._shards.num_examples

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: np.ndarray) -> np.ndarray:
    """The teacher's probabilities float32 [n, C] for global rows `indices`, in their order."""
    return self._shards.read(_checked_indices(indices, self.num_examples), ("probs",))["probs"]

  def read_logits(self, indices: np.ndarray) -> np.ndarray:
    """The teacher's logits float32 [n, C] for global rows `indices`, in their order."""
    return self._shards.read(_checked_indices(indices, self.num_examples), ("logits",))["logits"]

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


# --------------------------------------------------------------------------
# Shard files: writing, checking, reading.


class _NpyWriter:
  """One .npy file written front to back; the row count goes in its header at the end.

  numpy pads every header with room for the first axis to grow to 21 digits,
  so the final header fits exactly where the placeholder was.
  """

  def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]):
    self.path, self.dtype, self.row_shape = path, dtype, row_shape
    self.rows = 0
    self._sha = hashlib.sha256()
    self._file = open(path, "wb")  # noqa: SIM115 -- closed in finish() / abort().
    self._write_header()
    self._data_offset = self._file.tell()

  def _write_header(self) -> None:
    np.lib.format.write_array_header_1_0(self._file, {
        "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
        "shape": (self.rows, *self.row_shape)})

  def write(self, rows: np.ndarray) -> None:
    rows = np.ascontiguousarray(rows, self.dtype)
    data = memoryview(rows).cast("B")
    self._file.write(data)
    self._sha.update(data)
    self.rows += len(rows)

  def finish(self) -> str:
    """Fixes the header, syncs and closes; returns the sha256 of the data bytes."""
    self._file.seek(0)
    self._write_header()
    if self._file.tell() != self._data_offset:
      raise RuntimeError(f"the .npy header of {self.path} changed size; numpy's format changed")
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    return self._sha.hexdigest()

  def abort(self) -> None:
    self._file.close()


class _ShardWriter:
  """Splits a stream of row-aligned columns into shards of `shard_size` rows."""

  def __init__(self, directory: Path, shard_size: int):
    self.directory, self.shard_size = directory, shard_size
    self.records: list[dict[str, Any]] = []
    self.row_shapes: dict[str, tuple[int, ...]] = {}
    self.num_examples = 0
    self._open: dict[str, _NpyWriter] = {}

  def append(self, columns: dict[str, np.ndarray], what: str) -> None:
    if not self.row_shapes:
      self.row_shapes = {name: array.shape[1:] for name, array in columns.items()}
    for name, array in columns.items():
      if array.shape[1:] != self.row_shapes[name]:
        raise UserError(f"{what}: {name} rows are {array.shape[1:]}, but earlier chunks' were "
                        f"{self.row_shapes[name]}")
    rows = len(next(iter(columns.values())))
    if self.num_examples + rows > _MAX_EXAMPLES:
      raise UserError(f"more than {_MAX_EXAMPLES:,} examples are not supported")
    done = 0
    while done < rows:
      if not self._open:
        number = len(self.records)
        self._open = {name: _NpyWriter(self.directory / f"{name}-{number:05d}.npy", array.dtype,
                                       self.row_shapes[name])
                      for name, array in columns.items()}
      writers = next(iter(self._open.values()))
      take = min(rows - done, self.shard_size - writers.rows)
      for name, array in columns.items():
        self._open[name].write(array[done:done + take])
      done += take
      self.num_examples += take
      if writers.rows == self.shard_size:
        self._close_shard()

  def finish(self) -> None:
    if self._open:
      self._close_shard()

  def abort(self) -> None:
    for writer in self._open.values():
      writer.abort()

  def _close_shard(self) -> None:
    writers, self._open = self._open, {}
    record: dict[str, Any] = {name: writer.path.name for name, writer in writers.items()}
    record["num_examples"] = next(iter(writers.values())).rows
    record["sha256"] = {name: writer.finish() for name, writer in writers.items()}
    self.records.append(record)


def _write_shard_folder(directory: Path, chunks: Iterable[Any],
                        columns: Callable[[int, Any], dict[str, np.ndarray]],
                        manifest: Callable[[_ShardWriter], dict[str, Any]], manifest_name: str,
                        shard_size: int, overwrite: bool) -> Path:
  try:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp",
                                    dir=directory.parent))
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
    _publish(staging, directory, overwrite)
  except BaseException:
    writer.abort()
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def _publish(staging: Path, directory: Path, overwrite: bool) -> None:
  """Renames the finished staging folder to `directory`, replacing it if allowed."""
  _check_target(directory, overwrite)
  if directory.is_dir() and any(directory.iterdir()):
    # Moved aside first: renaming onto a non-empty folder is not allowed.
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
    os.replace(directory, old / directory.name)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(staging, directory)


def _check_target(directory: Path, overwrite: bool) -> None:
  if directory.exists() and not directory.is_dir():
    raise UserError(f"{directory} exists and is not a folder")
  if directory.is_dir() and any(directory.iterdir()) and not overwrite:
    raise UserError(f"{directory} already exists and is not empty; pass overwrite=True to replace it")


def _check_shard_size(shard_size: int) -> None:
  if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
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


class _ShardSet:
  """The shards listed in a manifest: checked on open, memory-mapped on first use."""

  def __init__(self, directory: Path, manifest: dict[str, Any], manifest_path: Path,
               columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
    self.directory = directory
    self.columns = columns
    self.records = manifest.get("shards")
    damaged = f"shards manifest {manifest_path} is damaged"
    if not isinstance(self.records, list) or not self.records:
      raise UserError(f"{damaged}: no shards listed")
    counts = []
    self._data_offsets: list[dict[str, int]] = []
    for number, record in enumerate(self.records):
      try:
        count = int(record["num_examples"])
        names = {column: str(record[column]) for column in columns}
        has_checksums = all(isinstance(record["sha256"][column], str) for column in columns)
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
        dtype, row_shape = columns[column]
        offsets[column] = _check_npy(directory / name, dtype, (count, *row_shape))
      self._data_offsets.append(offsets)
      counts.append(count)
    self.num_examples = int(sum(counts))
    if manifest.get("num_examples") != self.num_examples:
      raise UserError(f"{damaged}: it says {manifest.get('num_examples')} examples but its "
                      f"shards hold {self.num_examples}")
    if self.num_examples > _MAX_EXAMPLES:
      raise UserError(f"{damaged}: more than {_MAX_EXAMPLES:,} examples are not supported")
    # starts[s] is shard s's first global index; the extra last entry is the total.
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._mapped: dict[int, dict[str, np.memmap]] = {}
    self._lock = threading.Lock()

  def file_sizes(self) -> list[int]:
    return [(self.directory / record[column]).stat().st_size
            for record in self.records for column in self.columns]

  def arrays(self, shard: int) -> dict[str, np.memmap]:
    mapped = self._mapped.get(shard)
    if mapped is None:
      with self._lock:
        mapped = self._mapped.get(shard)
        if mapped is None:
          record = self.records[shard]
          try:
            mapped = {column: np.load(self.directory / record[column], mmap_mode="r",
                                      allow_pickle=False) for column in self.columns}
          except (OSError, ValueError) as e:
            raise UserError(f"cannot open shard {shard} in {self.directory}: "
                            f"{_one_line(e)}") from None
          self._mapped[shard] = mapped
    return mapped

  def read(self, indices: np.ndarray, columns: Sequence[str] | None = None
           ) -> dict[str, np.ndarray]:
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
    for number, record in enumerate(self.records):
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
          raise UserError(f"shard file {path} is damaged: its contents do not match their checksum")


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
    raise UserError(f"shard file {path} is damaged (not an .npy file: {_one_line(e)})") from None
  if file_dtype != dtype or tuple(file_shape) != shape or fortran_order:
    raise UserError(f"shard file {path} holds {file_dtype} {tuple(file_shape)} but the manifest "
                    f"says {dtype} {shape}")
  expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if size != expected:
    raise UserError(f"shard file {path} is {'truncated' if size < expected else 'damaged'}: "
                    f"{size} bytes, expected {expected}")
  return offset


def _check_format(manifest: Any, expected: str, path: Path) -> None:
  if not isinstance(manifest, dict) or manifest.get("format") != expected:
    raise UserError(f"{path} is not a {expected} manifest")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise UserError(f"{path} has format version {manifest.get('format_version')}, expected "
                    f"{FORMAT_VERSION}")


# --------------------------------------------------------------------------
# Small helpers.


def _image_files(class_dir: Path) -> list[tuple[str, int]]:
  """(path relative to class_dir with '/', size in bytes) of every image, sorted by path."""
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    for name in files:
      if name.startswith("."):
        continue
      path = os.path.join(folder, name)
      if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        raise UserError(f"{path} is not an image file (expected {', '.join(IMAGE_EXTENSIONS)}); "
                        "move it out of the image folder")
      relative = os.path.relpath(path, class_dir).replace(os.sep, "/")
      found.append((relative, os.stat(path).st_size))
  found.sort()
  return found


def _checked_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
    size = (int(image_size), int(image_size))
  else:
    try:
      size = tuple(image_size)
    except TypeError:
      size = ()
    if len(size) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                 for d in size):
      raise UserError(f"image size must be an int or (height, width), got {image_size!r}")
    size = (int(size[0]), int(size[1]))
  if min(size) < 1:
    raise UserError(f"image size must be positive, got {image_size!r}")
  return size


def _checked_indices(indices: np.ndarray, num_examples: int) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
  indices = indices.astype(np.int64, copy=False)
  if indices.size and (indices.min() < 0 or indices.max() >= num_examples):
    raise IndexError(f"index {int(indices.min() if indices.min() < 0 else indices.max())} is "
                     f"outside [0, {num_examples})")
  return indices


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False
  return array


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text or type(error).__name__


# --------------------------------------------------------------------------
# Training from a stream: the in-memory Dataset's interface over sources.


class Rows:
  """Rows of a source, by position in a split, read from disk when indexed.

  Looks enough like a uint8 array [N, H, W, C] for the training loop and the
  evaluators: `len`, `shape`, `dtype`, and indexing by a slice or an integer
  array return numpy arrays; nothing else is held in memory.

  Attributes:
    source: where the rows live.
    global_indices: int32 [N], the source's row of each position.
  """

  dtype = np.dtype(np.uint8)

  def __init__(self, source: StreamSource, global_indices: np.ndarray):
    self.source = source
    self.global_indices = np.asarray(global_indices, np.int32)

  @property
  def shape(self) -> tuple[int, ...]:
    """(N, H, W, C)."""
    return (len(self.global_indices), *self.source.image_shape)

  @property
  def ndim(self) -> int:
    """4, as for an image array."""
    return 4

  def __len__(self) -> int:
    return len(self.global_indices)

  def __getitem__(self, key) -> np.ndarray:
    return self.source.read(self.global_indices[key])[0]


def _all_labels(source: ArrayShardSource) -> np.ndarray:
  """Every label of a shard source, in row order (labels are small even when images are not)."""
  return np.concatenate([np.asarray(source.shard_arrays(i)[1]) for i in range(source.num_shards)]
                        ).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedTrainingData:
  """A `StreamDataset` with the fields the workflow reads from `distill.data.Dataset`.

  Images are `Rows` (read on demand); labels are in memory.
  """

  stream: StreamDataset
  x_train: Rows
  y_train: np.ndarray
  x_val: Rows
  y_val: np.ndarray
  x_test: Rows
  y_test: np.ndarray

  name = property(lambda self: self.stream.name)
  fingerprint = property(lambda self: self.stream.fingerprint)
  class_names = property(lambda self: self.stream.class_names)
  num_classes = property(lambda self: self.stream.num_classes)
  image_shape = property(lambda self: self.stream.image_shape)
  streaming = True

  def split_fingerprint(self, split: str) -> str:
    """See `StreamDataset.split_fingerprint`."""
    return self.stream.split_fingerprint(split)

  def describe(self) -> str:
    """One line: name, split sizes, image shape and classes."""
    return self.stream.describe() + ", streamed from disk"


def open_training_stream(root: str | os.PathLike, *, val_size: int | float, split_seed: int,
                         train_limit: int | None) -> StreamedTrainingData:
  """Opens array shards (see `write_array_shards`) for `distill teacher/student --dataset stream`.

  `root` holds train/ and test/ shard folders. Image folders are converted
  to shards first (`write_array_shards` over `ImageFolderSource` reads), so
  decoding happens once, not every epoch.
  """
  if not root:
    raise UserError("--dataset stream needs --data-dir: a folder with train/ and test/ shards")
  stream = open_stream_dataset(root, val_size=val_size, split_seed=split_seed,
                               train_limit=train_limit)
  for split, source in (("train", stream.train), ("test", stream.test)):
    if source is None:
      raise UserError(f"{root} has no test/ split; streamed training evaluates on it")
    if not isinstance(source, ArrayShardSource):
      raise UserError(f"{source.path} is an image folder; convert it to array shards first "
                      "(distill.stream.write_array_shards) so it is decoded once, not every epoch")
  train_labels = _all_labels(stream.train)
  return StreamedTrainingData(
      stream=stream,
      x_train=Rows(stream.train, stream.train_indices), y_train=train_labels[stream.train_indices],
      x_val=Rows(stream.train, stream.val_indices), y_val=train_labels[stream.val_indices],
      x_test=Rows(stream.test, np.arange(len(stream.test), dtype=np.int32)),
      y_test=_all_labels(stream.test))

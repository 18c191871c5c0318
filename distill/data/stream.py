"""Data sets larger than host memory: read on demand, by global example index.

Two on-disk sources give random access by global example index without ever
loading the whole set:

* array shards: a folder with `shards.json` and per-shard `images-NNNNN.npy`
  (uint8 [n, H, W, C]) and `labels-NNNNN.npy` (int32 [n]), memory-mapped;
  `distill.data.shards.write_array_shards` makes them from any iterable of
  chunks;
* an image folder in the ImageNet layout, root/<class_name>/<image files>,
  decoded with Pillow and resized and center-cropped to a fixed size on read.

`open_stream_dataset` opens either (or a root with train/ and test/ holding
them) and carves a validation subset exactly as `distill.data.load_dataset`
does. `open_training_stream` gives training the in-memory `Dataset`'s fields
over array shards, with images as `Rows` read on demand; `distill.feeders`
reads each dispatch's rows in Grain's threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The in-memory loader's validation-size rules, reused so a stream and an
# in-memory copy of the same data split identically.
from distill.data.checks import check_two_classes
from distill.data.datasets import _check_val_size_type, _validation_count
from distill.data.shards import (
  MAX_EXAMPLES,
  SHARDS_FILE,
  SHARDS_FORMAT,
  ShardSet,
  check_format,
  checked_indices,
)
from distill.errors import UserError, first_few, one_line
from distill.io import read_json, read_only


def convert_hint(images: str | os.PathLike) -> str:
  """The command that converts the image folder(s) `images` to shards beside them, for
  messages (64: an example size; the user picks theirs)."""
  images = str(images).rstrip("/\\")
  return f"`distill make-shards {images} {images}-shards --image-size 64`"


def test_shards_hint(test_shards: str | os.PathLike, image_shape: Sequence[int]) -> str:
  """The command that writes held-out images as the test/ shards `test_shards` of a train/
  split of `image_shape` (H, W, C), for messages; TEST_IMAGES stands for the user's folder of
  class folders."""
  height, width, channels = image_shape
  size = f"{height}" if height == width else f"{height}x{width}"
  gray = " --grayscale" if channels == 1 else ""
  return f"`distill make-shards TEST_IMAGES {test_shards} --image-size {size}{gray}`"


# Lower-case suffixes Pillow decodes; ImageNet's own files end in ".JPEG".
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


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
    check_format(manifest, SHARDS_FORMAT, manifest_path)
    try:
      image_shape = tuple(int(d) for d in manifest["image_shape"])
      class_names = tuple(str(name) for name in manifest["class_names"])
      num_classes = int(manifest["num_classes"])
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(
          f"array shards manifest {manifest_path} is damaged: bad or missing {e}") from None
    if len(image_shape) != 3 or min(image_shape) < 1:
      raise UserError(
          f"array shards manifest {manifest_path} is damaged: image_shape {image_shape}")
    if num_classes != len(class_names) or not class_names:
      raise UserError(f"array shards manifest {manifest_path} is damaged: num_classes "
                      f"{num_classes} but {len(class_names)} class names")
    self.image_shape = image_shape
    self.class_names = class_names
    self._shards = ShardSet(self.path, manifest, manifest_path, {
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
    indices = checked_indices(indices, self.num_examples)
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

  Classes are the sub-folders of root sorted by name, each name in Unicode NFC
  (`class_name`: a folder spelt in NFD, as macOS writes names, is the same
  class); within a class, files (sub-folders included) are sorted by relative
  path, and global indices run class by class in that order. Each image is
  read by `decode_image`: turned upright, converted to RGB (or grayscale),
  scaled so it covers `image_size` and center-cropped to it. Hidden files and
  folders (".name") are skipped; an image file beside the class folders is
  refused, as it belongs to no class.
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
    folders = class_folders(self.path)
    if not folders:
      raise UserError(f"image folder {self.path} has no class folders; expected "
                      f"{self.path}/<class_name>/<image files>")
    check_no_loose_images(self.path)
    class_names = sorted(folders)
    digest = hashlib.sha256(f"{height}x{width}:{self._mode};".encode())
    paths, labels, others = [], [], []
    for label, name in enumerate(class_names):
      # Paths under the folders' own names (a class may have two: its NFC and NFD spellings).
      found = sorted((f"{folder}/{relative}", size) for folder in folders[name]
                     for relative, size in _image_files(self.path / folder, others))
      if not found:
        raise UserError(f"class folder {self.path / folders[name][0]} has no images; "
                        "remove it or add images (every class needs at least one)")
      for relative, size in found:
        digest.update(f"{relative}\0{size}\n".encode())
        paths.append(relative)
        labels.append(label)
    if others:  # all at once: one run of the command finds every file to move
      raise UserError(f"{len(others):,} file(s) in {self.path} are not images (expected "
                      f"{', '.join(IMAGE_EXTENSIONS)}): {first_few(others)}; move them out of "
                      "the image folder")
    if len(paths) > MAX_EXAMPLES:
      raise UserError(f"image folder {self.path} has {len(paths):,} images, more than the "
                      f"{MAX_EXAMPLES:,} supported")
    self.class_names = tuple(class_names)
    self.num_examples = len(paths)
    self.fingerprint = digest.hexdigest()
    self._paths = paths
    self._labels = np.asarray(labels, np.int32)

  @property
  def files(self) -> list[Path]:
    """Every image file, in example order."""
    return [self.path / relative for relative in self._paths]

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [n, H, W, C], labels int32 [n]) for `indices`, in their order.

    Raises:
      UserError: naming a file Pillow cannot decode.
    """
    indices = checked_indices(indices, self.num_examples)
    images = np.empty((len(indices), *self.image_shape), np.uint8)
    for row, index in enumerate(indices.tolist()):
      images[row] = self._decode(self.path / self._paths[index])
    return images, self._labels[indices]

  def _decode(self, path: Path) -> np.ndarray:
    return decode_image(path, self.image_shape)


def decode_image(path: str | os.PathLike, image_shape: Sequence[int]) -> np.ndarray:
  """One image file (anything Pillow reads) as uint8 [H, W, C], as distill trains on it.

  Turned upright by its EXIF orientation, 16-bit grayscale scaled to 8 bits,
  converted to grayscale (C = 1) or RGB (C = 3), scaled so it covers H x W and
  center-cropped to it (`PIL.ImageOps.fit`, bilinear). An image folder's training images and the
  pictures `distill predict` classifies both go through here, so a model is
  served what it was trained on.

  Raises:
    UserError: naming a file Pillow cannot decode.
  """
  height, width, channels = image_shape
  mode = "L" if channels == 1 else "RGB"
  try:
    with Image.open(path) as image:
      # Lets the JPEG decoder scale down by 1/2..1/8 while staying at least as large
      # as the target whichever way it is turned: most of the decoding time for photos.
      image.draft(mode, (max(width, height),) * 2)
      image = ImageOps.exif_transpose(image)
      if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns on palette -> RGB otherwise.
      if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grayscale (mode I too: older Pillows open 16-bit PNGs so), which Pillow's
        # convert clips at 255: keep each pixel's top byte instead.
        pixels = np.asarray(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
          raise UserError(f"cannot read image {path}: its pixels range over {pixels.min()}.."
                          f"{pixels.max()}, beyond 16 bits; save it with 8- or 16-bit pixels")
        image = Image.fromarray((pixels.astype(np.uint32) >> 8).astype(np.uint8))
      image = image.convert(mode)
      image = ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
  except UnidentifiedImageError:
    raise UserError(f"cannot read image {path}: not an image file Pillow can read "
                    "(PNG, JPEG, ...)") from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"cannot read image {path}: {one_line(e)}; the file looks damaged: replace "
                    "it, or leave it out") from None
  return np.asarray(image, np.uint8).reshape(height, width, channels)


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
    raise UserError(f"{path} is an image folder (no {SHARDS_FILE}): give open_source the size "
                    "to resize its images to, e.g. image_size=64 (to train from it, convert it to "
                    f"array shards once: {convert_hint(path)})")
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
    digest = hashlib.sha256(
        f"{self.train.fingerprint};{indices.dtype.str}{indices.shape};".encode())
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
  return read_only(train_indices), read_only(val_indices)


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
    if not (root / "train" / SHARDS_FILE).is_file():  # images beside shards are no data
      check_no_loose_images(root, beside=split_folders(root))
    train = open_source(root / "train", **options)
    test = open_source(root / "test", **options) if (root / "test").exists() else None
  else:
    train, test = open_source(root, **options), None
  if train.num_classes < 2:
    raise UserError(f"{train.path} has one class, {train.class_names[0]!r}; a classifier needs "
                    "at least two classes: add images of another class")
  if test is not None:
    if test.class_names != train.class_names:
      raise UserError(class_mismatch(train, test))
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
  # Every streamed image keeps its label: the workflow refuses data.labelled for a stream.
  partly_labelled = False
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
  root = Path(root)
  # Before opening: an image folder cannot open without an image size, which
  # training takes from nowhere; what the user can do is convert it.
  split_layout = (root / "train").is_dir() and not (root / SHARDS_FILE).is_file()
  for split in (root / "train", root / "test") if split_layout else (root,):
    if split.is_dir() and not (split / SHARDS_FILE).is_file():
      raise UserError(f"{split} has no {SHARDS_FILE}: --dataset stream trains from array shards, "
                      "decoded once rather than every epoch; convert the image folders "
                      f"(<class>/<image files>) once, {convert_hint(root)}, and pass the shards "
                      f"as --data-dir ({root}-shards)")
  if not (split_layout and (root / "test").exists()):
    # Before the split's sizes are checked: a missing test split is the first thing to fix.
    train = open_source(root / "train" if split_layout else root)
    raise UserError(_no_test_split(root, train, split_layout=split_layout))
  stream = open_stream_dataset(root, val_size=val_size, split_seed=split_seed,
                               train_limit=train_limit)
  train_labels = _all_labels(stream.train)
  check_two_classes(train_labels, stream.class_names, f"every image of {stream.train.path}")
  return StreamedTrainingData(
      stream=stream,
      x_train=Rows(stream.train, stream.train_indices), y_train=train_labels[stream.train_indices],
      x_val=Rows(stream.train, stream.val_indices), y_val=train_labels[stream.val_indices],
      x_test=Rows(stream.test, np.arange(len(stream.test), dtype=np.int32)),
      y_test=_all_labels(stream.test))


def _no_test_split(root: Path, train: StreamSource, *, split_layout: bool) -> str:
  """The refusal of shards `root` without a test/ split: where the held-out images' shards go
  and the command that writes them (a folder named back to the user failed already)."""
  missing = f"{root} has no test/ split, which streamed training evaluates on"
  make = test_shards_hint  # of the train split's size, so both splits hold alike images
  if split_layout:
    return (f"{missing}: write the held-out images as shards in {root / 'test'}: "
            f"{make(root / 'test', train.image_shape)} (TEST_IMAGES: a folder of the class "
            "folders train/ has)")
  parent = root.parent
  if root.name in ("train", "test") and (parent / "train").is_dir():
    if (parent / "test").is_dir():
      return f"{missing}: pass the folder holding train/ and test/ as --data-dir: {parent}"
    return (f"{missing}, and {parent}, whose train/ it is, has none either: write the held-out "
            f"images as shards in {parent / 'test'}: {make(parent / 'test', train.image_shape)}, "
            f"then pass --data-dir {parent}")
  return (f"{missing}: it is one shard folder; move it to DATA/train, write the held-out "
          f"images as shards in DATA/test ({make('DATA/test', train.image_shape)}), then pass "
          "--data-dir DATA")


# --------------------------------------------------------------------------
# Small helpers.


def class_mismatch(train: StreamSource, test: StreamSource) -> str:
  """The error for a test split whose classes are not the training split's: which differ."""
  train_names, test_names = set(train.class_names), set(test.class_names)
  missing = [name for name in train.class_names if name not in test_names]
  extra = [name for name in test.class_names if name not in train_names]
  parts = []
  if missing:
    parts.append(f"test lacks {first_few(missing, quoted=True)}")
  if extra:
    parts.append(f"test has {first_few(extra, quoted=True)}, which train lacks")
  if not parts:  # Shards can name the same classes in another order.
    train_names, test_names = (first_few(names, quoted=True)
                               for names in (train.class_names, test.class_names))
    parts.append(f"the same classes in another order (train: {train_names}; test: {test_names}), "
                 "which would swap their labels")
  return (f"{test.path} and {train.path} have different classes: {'; '.join(parts)}; "
          "both splits need the same classes")





def class_name(folder_name: str) -> str:
  """The class a folder of that name holds: the name in Unicode NFC.

  macOS writes file names decomposed (NFD: 'e' and a combining accent), most
  other systems and keyboards composed (NFC), so one class copied between
  them would otherwise read as two names that print alike.
  """
  return unicodedata.normalize("NFC", folder_name)


def class_folders(root: str | os.PathLike) -> dict[str, list[str]]:
  """{class name (see `class_name`): the names of its folders in `root`, sorted}.

  Hidden folders (".name") are passed over. A class has two folders only
  where both spellings of its name exist (possible on Linux).
  """
  folders: dict[str, list[str]] = {}
  with os.scandir(root) as entries:
    for entry in entries:
      if entry.is_dir() and not entry.name.startswith("."):
        folders.setdefault(class_name(entry.name), []).append(entry.name)
  return {name: sorted(names) for name, names in folders.items()}


def check_no_loose_images(root: str | os.PathLike, beside: str | None = None) -> None:
  """Refuses image files directly in a folder of class folders: they belong to no class.

  beside: the split folders `root` holds ("train/ and test/") when it holds
  splits rather than classes; images there belong to no split either.
  Other files there (a README, a license) are left alone, as before.
  """
  with os.scandir(root) as entries:
    loose = sorted(entry.name for entry in entries
                   if not entry.name.startswith(".") and not entry.is_dir()
                   and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
  if loose and beside:
    raise UserError(f"{root} holds image files beside {beside} ({first_few(loose)}): move each "
                    f"into a class folder of {beside.replace(' and ', ' or ')}, or out of {root}")
  if loose:
    raise UserError(f"{root} holds image files beside its class folders ({first_few(loose)}): "
                    f"move each into its class folder, or out of {root}")


def split_folders(root: str | os.PathLike) -> str:
  """'train/ and test/' or 'train/': the split folders `root` holds, for messages."""
  return " and ".join(f"{split}/" for split in ("train", "test") if (Path(root) / split).is_dir())


def _image_files(class_dir: Path, others: list[str]) -> list[tuple[str, int]]:
  """(path relative to class_dir with '/', size in bytes) of every image, sorted by path; the
  paths of files that are not images (hidden ones aside) are added to `others`."""
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    for name in files:
      if name.startswith("."):
        continue
      path = os.path.join(folder, name)
      if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        others.append(path)
        continue
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

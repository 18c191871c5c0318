"""Image-classification datasets: load them, check them, split them.

Every dataset is loaded from local files when they can be found (an explicit
data_dir, $DISTILL_DATA, a system package, the keras cache; the search is
`distill.data.locate`'s) and downloaded through keras only as a last resort,
so runs work offline and reproducibly.
Whatever the source, the result is a `Dataset` of uint8 NHWC images with int32
labels, a held-out validation split, and fingerprints that let a run record
exactly which data it saw.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from distill.data.checks import (
  check_gray_levels,
  check_same_numbering,
  check_two_classes,
  checked_images,
  checked_labels,
  classes_from_labels,
  label_range_fix,
)
from distill.data.formats import (
  class_names_from_array,
  looks_like_cifar_folder,
  npz_keys,
  read_cifar10_folder,
  read_idx_set,
  read_keras_npz,
  read_npz,
)
from distill.data.locate import (
  OFFLINE_ENV,
  Search,
  checked_data_dir,
  download_with_keras,
  env_data_folders,
  find_idx_files,
  keras_datasets_dir,
  offline_from_env,
  other_kind_of_data,
)
from distill.errors import UserError, first_few
from distill.io import array_sha256, read_only

# Module-level so tests can point it elsewhere; the Debian dataset-* packages
# install under here.
DEBIAN_DATASETS_DIR = "/usr/share/datasets"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))

SPLITS = ("train", "val", "test")

# Datasets that ship without a test split get one carved out with a fixed seed,
# independent of split_seed, so the test set never moves between experiments.
_TEST_HOLDOUT_SEED = 0
_TEST_HOLDOUT_FRACTION = 0.2

_CIFAR10_FOLDER = "cifar-10-batches-py"


class RawData(NamedTuple):
  """What a registered loader returns, before validation and splitting.

  `notes` are the loader's remarks on data it accepts but the user should
  hear about (classes without images); `load_dataset` passes each to `warn`.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  notes: tuple[str, ...] = ()


# eq=False: comparing or hashing datasets field by field would touch every
# pixel (and numpy arrays are not hashable); identity is what callers want.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A loaded dataset with train / validation / test splits.

  Images are uint8 [N, H, W, C]; labels are int32 [N]. The arrays are
  read-only so the cached fingerprints can never go stale.

  When only some training images keep their labels (`load_dataset(...,
  labelled=L)`), they are the first `num_labelled` rows of the training split;
  the other rows are unlabelled images whose label reads -1, so that nothing
  can learn from a label the run was not given.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  fingerprint: str
  # Where each training / validation row sits in the source's own training set
  # (logits computed elsewhere arrive in that order). None: the rows are it, in order.
  train_source_indices: np.ndarray | None = None
  val_source_indices: np.ndarray | None = None
  source_train_size: int | None = None
  num_labelled: int | None = None
  _split_fingerprints: dict[str, str] = dataclasses.field(
      default_factory=dict, init=False, repr=False)

  @property
  def num_classes(self) -> int:
    """Number of classes (labels run from 0 to num_classes - 1)."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) of every image."""
    height, width, channels = self.x_train.shape[1:]
    return (height, width, channels)

  @property
  def labelled_count(self) -> int:
    """How many training images have a label (all of them unless `labelled` was given)."""
    return len(self.x_train) if self.num_labelled is None else self.num_labelled

  @property
  def partly_labelled(self) -> bool:
    """Whether some training images have no label (only a teacher can label them)."""
    return self.labelled_count < len(self.x_train)

  def labelled_split(self) -> tuple[np.ndarray, np.ndarray]:
    """The training images that have labels, and their labels (the first rows of the split)."""
    count = self.labelled_count
    return self.x_train[:count], self.y_train[:count]

  def split_fingerprint(self, split: str) -> str:
    """Returns the sha256 hex digest of one split's images and labels.

    Args:
      split: 'train', 'val' or 'test'.

    Returns:
      A hex digest that changes if any pixel, label or shape in the split does.
    """
    if split not in SPLITS:
      raise UserError(f'unknown split {split!r}; choose one of: '
                      f'{", ".join(SPLITS)}')
    cached = self._split_fingerprints.get(split)
    if cached is None:
      x, y = {"train": (self.x_train, self.y_train),
              "val": (self.x_val, self.y_val),
              "test": (self.x_test, self.y_test)}[split]
      cached = _hash_arrays(x, y)
      self._split_fingerprints[split] = cached
    return cached

  def describe(self) -> str:
    """One line: name, split sizes, image shape and classes."""
    height, width, channels = self.image_shape
    shown = self.class_names
    if len(shown) > 10:
      shown = (*shown[:5], "...")
    train = (f"{len(self.x_train)} train ({self.labelled_count} labelled)"
             if self.partly_labelled else f"{len(self.x_train)} train")
    return (f'{self.name}: {train} / {len(self.x_val)} val / '
            f'{len(self.x_test)} test images of {height}x{width}x{channels}, '
            f'{self.num_classes} classes ({", ".join(shown)})')

  def __repr__(self) -> str:
    return f"Dataset({self.describe()}; fingerprint {self.fingerprint[:12]})"


Loader = Callable[..., RawData]
DATASETS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
  """Decorator adding a loader to DATASETS under `name`.

  A loader is called as `loader(data_dir=..., allow_download=...)`, where
  data_dir is None or an existing, expanded path, and returns RawData.
  """
  def decorate(loader: Loader) -> Loader:
    if name in DATASETS:
      raise ValueError(f"dataset {name!r} is already registered")
    DATASETS[name] = loader
    return loader
  return decorate


def dataset_names() -> list[str]:
  """Names accepted by load_dataset, sorted."""
  return sorted(DATASETS)


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 val_size: int | float = 0.1, split_seed: int = 0,
                 train_limit: int | None = None, labelled: int | None = None,
                 allow_download: bool | None = None,
                 warn: Callable[[str], None] | None = None) -> Dataset:
  """Loads, validates, fingerprints and splits a registered dataset.

  Args:
    name: a name from dataset_names().
    data_dir: where the data is (a folder, or the file itself for 'npz').
      When given, only this place is searched; None or '' searches the
      usual places.
    val_size: validation examples held out of the training set, as a count
      (int) or a fraction of it (float in [0, 1)).
    split_seed: seed of the permutation that picks the validation examples.
    train_limit: keep only this many training examples, for quick runs.
      None (or 0, the recipe's spelling of "no limit") keeps all.
    labelled: keep the labels of only this many training images (the first
      rows of the shuffled split, so a random subset); the others become
      unlabelled images (label -1), which a teacher can still label for its
      students. None (or 0) keeps every label.
    allow_download: whether keras may download the data when it is not found
      locally. None means allowed unless the environment sets
      DISTILL_OFFLINE=1.
    warn: called with each warning about data that loads but looks wrong
      (e.g. classes with no images, from labels that are not 0..K-1); None
      prints it as `distill.console.Console.warn` does.

  Returns:
    The Dataset.

  Raises:
    UserError: for an unknown name, a bad argument, data that cannot be found
      or data that fails validation.
  """
  loader = DATASETS.get(name)
  if loader is None:
    raise UserError(f'unknown dataset {name!r}; choose one of: '
                    f'{", ".join(dataset_names())}')
  # Argument mistakes should surface before a slow load, not after.
  _check_val_size_type(val_size)
  if isinstance(split_seed, bool) or not isinstance(split_seed,
                                                    (int, np.integer)):
    raise UserError(f"split_seed must be an integer, got {split_seed!r}")
  if train_limit is not None and (
      isinstance(train_limit, bool) or
      not isinstance(train_limit, (int, np.integer)) or train_limit < 0):
    raise UserError("train_limit must be a non-negative integer or None, got "
                    f"{train_limit!r}")
  if train_limit == 0:
    train_limit = None
  if labelled is not None and (
      isinstance(labelled, bool) or not isinstance(labelled, (int, np.integer)) or labelled < 0):
    raise UserError(f"labelled must be a non-negative integer or None, got {labelled!r}")
  if labelled == 0:
    labelled = None
  if data_dir is not None and not os.fspath(data_dir):
    data_dir = None
  if allow_download is None:
    allow_download = not offline_from_env()
  if data_dir is not None:
    data_dir = checked_data_dir(data_dir)

  raw = loader(data_dir=data_dir, allow_download=allow_download)
  x_train, y_train, x_test, y_test, class_names, notes = _validated(name, raw)

  def say(note: str) -> None:
    nonlocal warn
    if warn is None:
      from distill.console import Console  # noqa: PLC0415 (only when there is something to say)

      warn = Console().warn
    warn(note)

  for note in notes:
    say(note)
  fingerprint = _hash_arrays(x_train, y_train, x_test, y_test)

  num_val = _validation_count(val_size, len(x_train))
  order = np.random.default_rng(split_seed).permutation(len(x_train))
  val_indices, train_indices = order[:num_val], order[num_val:]
  if train_limit is not None:
    train_indices = train_indices[:train_limit]
  train_labels = y_train[train_indices]
  cut = f"data.val_size {val_size!r} held out {num_val:,}" + (
      f" and data.train_limit {train_limit} kept {len(train_indices):,}"
      if train_limit is not None else "") + f" of its {len(x_train):,} training images"
  # Only what would help: a split of one image cannot hold out fewer.
  fixes = [*(["hold out fewer"] if num_val > 1 else []),
           *(["keep more"] if train_limit is not None else []), "pass another data.split_seed"]
  advice = ", ".join(fixes[:-1]) + (", or " if len(fixes) > 2 else " or " if len(fixes) > 1
                                    else "") + fixes[-1]
  if len(np.unique(train_labels)) < 2:  # two classes before the split (`_validated`)
    raise UserError(
        f"{name}: {cut}, and those left all have label {int(train_labels[0])}; a classifier "
        f"needs two classes: {advice}")
  if labelled is not None and labelled < len(train_indices):
    if not np.issubdtype(train_labels.dtype, np.signedinteger):
      train_labels = train_labels.astype(np.int32)  # room for -1
    train_labels[labelled:] = -1  # a fancy-indexed copy: the source keeps its labels
    cut += f", and data.labelled kept the labels of {labelled:,} of the {len(train_indices):,}"
    advice = "raise data.labelled, or pass another data.split_seed"
  else:
    labelled = None
  # A class the data has but the training split lost: no model learns it from labels, though
  # its test and validation images still count against it.
  emptied = np.setdiff1d(np.unique(y_train), train_labels)
  if len(emptied):
    which = first_few([class_names[label] for label in emptied], quoted=True)
    say(f"{name}: {cut}, which left no labelled training image of class {which}: training "
        f"never sees {'it' if len(emptied) == 1 else 'them'} labelled; {advice}")
  return Dataset(
      name=name,
      x_train=read_only(x_train[train_indices]),
      y_train=read_only(train_labels),
      x_val=read_only(x_train[val_indices]),
      y_val=read_only(y_train[val_indices]),
      x_test=read_only(x_test),
      y_test=read_only(y_test),
      class_names=class_names,
      fingerprint=fingerprint,
      train_source_indices=read_only(train_indices),
      val_source_indices=read_only(val_indices),
      source_train_size=len(x_train),
      num_labelled=labelled)


# --- Loaders -----------------------------------------------------------------


@register("fashion_mnist")
def _load_fashion_mnist(*, data_dir: str | None,
                        allow_download: bool) -> RawData:
  """Fashion-MNIST from IDX files, else keras' download."""
  search = Search("fashion_mnist", how_to_get=(
      "install it with `apt-get install dataset-fashion-mnist`, or pass "
      "--data-dir / set DISTILL_DATA to a folder holding "
      "train-images-idx3-ubyte.gz and the other three IDX files"))
  if data_dir is not None:
    folders = [data_dir, os.path.join(data_dir, "fashion-mnist")]
  else:
    folders = [
        *env_data_folders("fashion-mnist", ""),
        os.path.join(DEBIAN_DATASETS_DIR, "fashion-mnist"),
        os.path.join(keras_datasets_dir(), "fashion-mnist"),
    ]
  for folder in folders:
    paths = find_idx_files(folder, search)
    if paths is not None:
      return RawData(*read_idx_set(paths), FASHION_MNIST_CLASSES)
  if data_dir is None and allow_download:
    return RawData(*download_with_keras("fashion_mnist", search),
                   FASHION_MNIST_CLASSES)
  raise search.not_found(allow_download, data_dir)


@register("mnist")
def _load_mnist(*, data_dir: str | None, allow_download: bool) -> RawData:
  """MNIST from IDX files or keras' cached mnist.npz, else keras' download."""
  search = Search("mnist", how_to_get=(
      "pass --data-dir / set DISTILL_DATA to a folder with mnist/ IDX files "
      "(train-images-idx3-ubyte.gz etc.) or mnist.npz, or let keras "
      f"download it (needs network and no {OFFLINE_ENV}=1)"))
  if data_dir is not None and os.path.isfile(data_dir):
    return RawData(*read_keras_npz(data_dir), DIGIT_CLASSES)
  if data_dir is not None:
    idx_folders = [data_dir, os.path.join(data_dir, "mnist")]
    npz_files = [os.path.join(data_dir, "mnist.npz")]
  else:
    # Only the mnist/ subfolder of $DISTILL_DATA: its top level is where
    # fashion-mnist's identically named IDX files are allowed to live.
    idx_folders = env_data_folders("mnist")
    npz_files = [os.path.join(folder, "mnist.npz")
                 for folder in env_data_folders("")]
    npz_files.append(os.path.join(keras_datasets_dir(), "mnist.npz"))
  for folder in idx_folders:
    paths = find_idx_files(folder, search)
    if paths is not None:
      return RawData(*read_idx_set(paths), DIGIT_CLASSES)
  for npz_path in npz_files:
    if os.path.isfile(npz_path):
      return RawData(*read_keras_npz(npz_path), DIGIT_CLASSES)
    search.looked_in(npz_path)
  if data_dir is None and allow_download:
    return RawData(*download_with_keras("mnist", search), DIGIT_CLASSES)
  raise search.not_found(allow_download, data_dir)


@register("cifar10")
def _load_cifar10(*, data_dir: str | None, allow_download: bool) -> RawData:
  """CIFAR-10 from the python pickle batches, else keras' download."""
  search = Search("cifar10", how_to_get=(
      "pass --data-dir / set DISTILL_DATA to the cifar-10-batches-py folder "
      "(extracted from cifar-10-python.tar.gz) or its parent, or let keras "
      f"download it (needs network and no {OFFLINE_ENV}=1)"))
  if data_dir is not None:
    folders = [data_dir, os.path.join(data_dir, _CIFAR10_FOLDER)]
  else:
    keras_dir = keras_datasets_dir()
    folders = [
        *env_data_folders(_CIFAR10_FOLDER, ""),
        # keras 3 extracts the archive into a folder named after the fname it
        # passes to get_file ('cifar-10-batches-py-target'); older versions
        # extracted straight into datasets/.
        os.path.join(keras_dir, "cifar-10-batches-py-target", _CIFAR10_FOLDER),
        os.path.join(keras_dir, _CIFAR10_FOLDER),
    ]
  for folder in folders:
    if looks_like_cifar_folder(folder):
      return RawData(*read_cifar10_folder(folder, CIFAR10_CLASSES))
    search.looked_in(folder)
  if data_dir is None and allow_download:
    return RawData(*download_with_keras("cifar10", search), CIFAR10_CLASSES)
  raise search.not_found(allow_download, data_dir)


@register("digits")
def _load_digits(*, data_dir: str | None, allow_download: bool) -> RawData:
  """scikit-learn's 8x8 digits (ships offline), scaled to 0..255."""
  del allow_download  # Nothing to download.
  if data_dir is not None:
    raise UserError("dataset digits ships with scikit-learn and takes no "
                    f"data dir (got {data_dir})")
  counts, labels = _digits_arrays()
  # Pixels are counts 0..16; round half up so 8 -> 128 rather than 127.
  images = np.floor(counts * (255.0 / 16.0) + 0.5).astype(np.uint8)
  train_indices, test_indices = _fixed_test_holdout(len(images))
  return RawData(images[train_indices], labels[train_indices],
                 images[test_indices], labels[test_indices], DIGIT_CLASSES)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """The digits' pixel counts [1797, 8, 8] (float64) and labels, as sklearn's load_digits gives.

  Read straight from the CSV that scikit-learn ships, the file load_digits
  itself parses: importing sklearn.datasets costs two seconds, every run.
  """
  spec = importlib.util.find_spec("sklearn")  # Finds the package without importing it.
  folders = list(spec.submodule_search_locations or []) if spec else []
  for folder in folders:
    path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
      table = np.loadtxt(path, delimiter=",")
      return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits  # noqa: PLC0415 (lazy: slow import)

  bunch = load_digits()
  return bunch.images, bunch.target.astype(np.int64)


_NPZ_OPTIONAL_KEYS = ("x_test", "y_test", "class_names")


@register("npz")
def _load_npz(*, data_dir: str | None, allow_download: bool) -> RawData:
  """A user's own .npz: x, y, optional x_test, y_test and class_names.

  keras' names x_train and y_train are read as x and y.
  """
  del allow_download  # A user's own file has nowhere to come from.
  usage = ("arrays x (uint8 [N,H,W] or [N,H,W,C]) and y (int [N]), optional "
           "x_test, y_test, class_names")
  if data_dir is None:
    raise UserError("dataset npz needs the path of your .npz file: pass "
                    f"--data-dir FILE.npz ({usage})")
  if not os.path.isfile(data_dir):
    other = other_kind_of_data(data_dir)
    if other is not None:  # image folders or shards: what to do with them instead
      raise UserError(f"dataset npz needs a .npz file, but {data_dir} is {other[0]}: {other[1]}")
    raise UserError(f"dataset npz needs a .npz file, but {data_dir} is a "
                    f"folder ({usage})")
  path = data_dir
  arrays = read_npz(path, optional=_NPZ_OPTIONAL_KEYS, required=("x", "y"),
                    aliases={"x": "x_train", "y": "y_train"})
  # Messages name the key the file uses.
  x_key = "x" if "x" in arrays else "x_train"
  y_key = "y" if "y" in arrays else "y_train"
  x = checked_images(arrays[x_key], f"{path}: key {x_key!r}", name=x_key)
  y = checked_labels(arrays[y_key], f"{path}: key {y_key!r}", len(x), f"key {x_key!r}")
  has_x_test, has_y_test = "x_test" in arrays, "y_test" in arrays
  if has_x_test != has_y_test:
    missing = "y_test" if has_x_test else "x_test"
    raise UserError(f"{path}: key {missing!r} is missing; give both x_test "
                    "and y_test or neither")
  if has_x_test:
    x_test = checked_images(arrays["x_test"], f"{path}: key 'x_test'", name="x_test")
    y_test = checked_labels(arrays["y_test"], f"{path}: key 'y_test'",
                             len(x_test), "key 'x_test'")
    check_same_numbering(y, y_key, y_test, "y_test", path)
  notes = _unread_npz_keys(path, x_key)
  if x.shape[-1] == 4:  # a model of 4 channels takes no picture `distill predict` reads
    notes = (*notes, f"{path}: key {x_key!r} has 4 channels; if the fourth is alpha (RGBA "
                     f"pictures), save `{x_key}[..., :3]`: the model takes the channels it "
                     "trained on, and pictures given to `distill predict` read as RGB or gray")
  if "class_names" in arrays:
    class_names = class_names_from_array(arrays["class_names"], path)
    # Both keys' labels decide the fix, so that a file fixed for y does not fail on y_test.
    keys, every = ((y_key, "y_test"), np.concatenate([y, y_test])) if has_x_test else ((y_key,), y)
    for key, labels in ((y_key, y), ("y_test", y_test if has_x_test else None)):
      if labels is not None and len(labels) and labels.max() >= len(
          class_names):
        raise UserError(
            f"{path}: key {key!r} has label {int(labels.max())} but "
            f"class_names lists only {len(class_names)} "
            f"class{'es' if len(class_names) != 1 else ''}; "
            f"{label_range_fix(every, len(class_names), keys)}")
    # Named classes are the user's word for what the classes are: one with
    # no images is theirs to have (a class list shared with other data), but
    # one only the test set has is a test no model trained on these passes.
    if has_x_test and len(untrained := np.setdiff1d(y_test, y)):
      which = ("class" if len(untrained) == 1 else "classes") + " " + first_few(
          [class_names[label] for label in untrained], quoted=True)
      notes = (*notes, f"{path}: key {y_key!r} has no training images of {which}, but key "
                       f"'y_test' has {int(np.isin(y_test, untrained).sum()):,} test images of "
                       "them, which no model trained on these gets right")
  else:
    class_names, gaps = classes_from_labels(
        y, y_test if has_x_test else None, f"{path}: key {y_key!r}")
    notes = (*notes, *gaps)
  check_two_classes(y, class_names, f"{path}: every image in key {y_key!r}")
  check_gray_levels(x, f"{path}: key {x_key!r}")
  if has_x_test:
    check_gray_levels(x_test, f"{path}: key 'x_test'")
  else:
    if len(x) < 2:
      raise UserError(f"{path}: key 'x' has {len(x)} example(s); need at "
                      "least 2 to hold out a test split (or give x_test, "
                      "y_test)")
    train_indices, test_indices = _fixed_test_holdout(len(x))
    x, y, x_test, y_test = (x[train_indices], y[train_indices],
                            x[test_indices], y[test_indices])
    taken = np.setdiff1d(y_test, y)  # classes the holdout took whole
    if len(taken):
      it = "it" if len(taken) == 1 else "them"
      took = (f"{path}: without x_test and y_test, a fixed {_TEST_HOLDOUT_FRACTION:.0%} of key "
              f"{x_key!r} is held out as the test split, and it took every image of class "
              f"{first_few([class_names[label] for label in taken], quoted=True)}")
      if len(np.unique(y)) < 2:  # the file has two classes (checked above): the split took one
        raise UserError(f"{took}, leaving one class to train on: add more images of {it}, or "
                        "save your own x_test and y_test")
      notes = (*notes, f"{took}: the model never learns {it}; add more images of {it}, or save "
                       "your own x_test and y_test")
  return RawData(x, y, x_test, y_test, class_names, notes)


def _unread_npz_keys(path: str, x_key: str) -> tuple[str, ...]:
  """A note naming the arrays of an npz data set that are not read ((), where none).

  x_val and y_val were ignored without a word: the validation split is always held out
  of x by data.val_size (the split every data set gets, that a teacher's exported targets
  and imported logits are matched against), so they are named here, as is a misspelt key.
  """
  read = {"x", "y", "x_train", "y_train", *_NPZ_OPTIONAL_KEYS}
  unread = [key for key in npz_keys(path) if key not in read]
  if not unread:
    return ()
  which = (f"key {unread[0]!r} is" if len(unread) == 1 else
           f"keys {first_few(unread, quoted=True)} are")
  validation = any("val" in key.lower() for key in unread)
  return (f"{path}: {which} not read (an npz data set reads x, y, x_test, y_test and "
          f"class_names)" + (f"; validation images are held out of key {x_key!r} by "
                             "data.val_size: to train on yours, add them to x and y"
                             if validation else ""),)


# --- Validation, fingerprints, splits ----------------------------------------


def _validated(name: str, raw: RawData) -> RawData:
  class_names = tuple(str(class_name) for class_name in raw.class_names)
  if not class_names:
    raise UserError(f"{name} has no class names")
  x_train = checked_images(raw.x_train, f"{name} x_train")
  x_test = checked_images(raw.x_test, f"{name} x_test")
  if x_train.shape[1:] != x_test.shape[1:]:
    raise UserError(f"{name}: train images are {x_train.shape[1:]} but test "
                    f"images are {x_test.shape[1:]}")
  y_train = checked_labels(raw.y_train, f"{name} y_train", len(x_train),
                            "x_train", len(class_names))
  y_test = checked_labels(raw.y_test, f"{name} y_test", len(x_test), "x_test",
                           len(class_names))
  # After any held-out test split: what the model will train on.
  check_two_classes(y_train, class_names, f"{name}: every training image")
  return RawData(x_train, y_train.astype(np.int32), x_test,
                 y_test.astype(np.int32), class_names, tuple(raw.notes))


def _hash_arrays(*arrays: np.ndarray) -> str:
  """A data set's fingerprint (see `io.array_sha256`)."""
  return array_sha256(*arrays, header_end=";")


def _check_val_size_type(val_size: int | float) -> None:
  if isinstance(val_size, bool) or not isinstance(
      val_size, (int, float, np.integer, np.floating)):
    raise UserError("val_size must be a count (int) or a fraction (float), "
                    f"got {val_size!r}")
  if isinstance(val_size, (float, np.floating)) and not 0.0 <= val_size < 1.0:
    raise UserError(f"val_size as a fraction must be in [0, 1), got {val_size}")
  if isinstance(val_size, (int, np.integer)) and val_size < 0:
    raise UserError(f"val_size must not be negative, got {val_size}")


class SplitLeavesNoTraining(UserError):
  """val_size holds out every training example; `num_train` says how many there are.

  Training commands catch it to name every setting that does not fit the data
  in one message (see `distill.workflow.load_fitting_data`).
  """

  def __init__(self, message: str, *, count: int, num_train: int):
    super().__init__(message)
    self.count = count
    self.num_train = num_train


def _validation_count(val_size: int | float, num_train: int) -> int:
  if isinstance(val_size, (float, np.floating)):
    count = int(round(val_size * num_train))
  else:
    count = int(val_size)
  if count >= num_train:
    raise SplitLeavesNoTraining(f"val_size={val_size} holds out {count} of the {num_train} "
                                "training examples, leaving none to train on",
                                count=count, num_train=num_train)
  return count


def _fixed_test_holdout(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Train and test indices for a dataset without a test split.

  Both are sorted so each split keeps the source order.
  """
  order = np.random.default_rng(_TEST_HOLDOUT_SEED).permutation(num_examples)
  num_test = max(1, int(round(_TEST_HOLDOUT_FRACTION * num_examples)))
  return np.sort(order[num_test:]), np.sort(order[:num_test])

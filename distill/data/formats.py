"""The file formats the built-in loaders read: IDX, .npz and CIFAR-10's python pickles.

Nothing here unpickles more than numpy arrays: .npz files are read without
pickle and CIFAR batches through an unpickler that refuses every other global.
A file that cannot be read, or holds something unexpected, is a UserError
naming it.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import unicodedata
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from distill.errors import UserError, one_line

_IDX_UBYTE_IMAGES_MAGIC = 0x00000803
_IDX_UBYTE_LABELS_MAGIC = 0x00000801
_IDX_MAGIC_BY_ROLE = {
    "x_train": _IDX_UBYTE_IMAGES_MAGIC,
    "y_train": _IDX_UBYTE_LABELS_MAGIC,
    "x_test": _IDX_UBYTE_IMAGES_MAGIC,
    "y_test": _IDX_UBYTE_LABELS_MAGIC,
}

_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCH = "test_batch"
_CIFAR10_META = "batches.meta"


# --- IDX ---------------------------------------------------------------------


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
  """Reads a uint8 IDX file (plain or .gz) into an array of its dimensions.

  Args:
    path: the file.
    expected_magic: e.g. 0x00000803 for images, 0x00000801 for labels; None
      accepts any uint8 IDX file.

  Returns:
    A read-only uint8 array shaped as the header says. A file read before in
    this process, and unchanged since, is not read again: the array shares
    the earlier one's memory.

  Raises:
    UserError: naming the file if it cannot be read, is not uint8 IDX, has
      the wrong magic or its length does not match its header.
  """
  try:
    stat = os.stat(path)
  except OSError as error:
    raise UserError(f"cannot read IDX file {path}: {one_line(error)}") from None
  data = _file_bytes(path, stat.st_size, stat.st_mtime_ns)
  if len(data) < 4:
    raise UserError(f"IDX file {path} is truncated: {len(data)} bytes, too "
                    "short for a header")
  magic = int.from_bytes(data[:4], "big")
  # 0x08 in the third byte is IDX's code for unsigned bytes; the fourth is
  # the number of dimensions.
  if expected_magic is not None and magic != expected_magic:
    raise UserError(f"{path} is not the expected IDX file: magic 0x{magic:08x},"
                    f" expected 0x{expected_magic:08x}")
  if magic >> 8 != 0x000008 or magic & 0xFF == 0:
    raise UserError(f"{path} is not a uint8 IDX file: magic 0x{magic:08x}")
  num_dims = magic & 0xFF
  header_size = 4 + 4 * num_dims
  if len(data) < header_size:
    raise UserError(f"IDX file {path} is truncated: {len(data)} bytes, header "
                    f"alone needs {header_size}")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
               for i in range(num_dims))
  expected_size = header_size + int(np.prod(dims, dtype=np.int64))
  if len(data) != expected_size:
    state = "truncated" if len(data) < expected_size else "damaged"
    raise UserError(f"IDX file {path} is {state}: its header promises shape "
                    f"{dims} ({expected_size} bytes) but it has {len(data)} "
                    "bytes")
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(dims)


@functools.lru_cache(maxsize=8)
def _file_bytes(path: str, size: int, mtime_ns: int) -> bytes:
  """The bytes of `path`, gunzipped when it ends in .gz; kept for this process.

  Keyed by the file's size and modification time, so a changed file is read
  again. A sweep trains every student in one process: Fashion-MNIST's four
  files took 0.5 s to gunzip for each of them.
  """
  del size, mtime_ns  # Only the cache's key.
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as stream:
        return stream.read()
    with open(path, "rb") as stream:
      return stream.read()
  except (OSError, EOFError, zlib.error) as error:
    raise UserError(f"cannot read IDX file {path} (damaged or truncated?): "
                    f"{one_line(error)}") from None


def read_idx_set(paths: dict[str, str]) -> tuple[np.ndarray, ...]:
  """(x_train, y_train, x_test, y_test) from the four IDX files named by role."""
  arrays = {role: read_idx(path, _IDX_MAGIC_BY_ROLE[role])
            for role, path in paths.items()}
  for role in ("x_train", "x_test"):
    if arrays[role].ndim != 3:
      raise UserError(f"IDX file {paths[role]} should hold [N, H, W] images, "
                      f"got shape {arrays[role].shape}")
  for role in ("y_train", "y_test"):
    if arrays[role].ndim != 1:
      raise UserError(f"IDX file {paths[role]} should hold [N] labels, got "
                      f"shape {arrays[role].shape}")
  return (arrays["x_train"], arrays["y_train"], arrays["x_test"],
          arrays["y_test"])


# --- npz ---------------------------------------------------------------------


# Keys that hold images: one saved as an object array is (almost always) images of
# different sizes, which no plain array can hold, so the fix is resizing, not a dtype.
_IMAGE_KEYS = ("x", "x_train", "x_test")


def read_npz(path: str, required: tuple[str, ...], optional: tuple[str, ...] = (),
             aliases: dict[str, str] | None = None) -> dict[str, np.ndarray]:
  """Reads the named arrays from an .npz without ever unpickling.

  Args:
    path: the file.
    required: keys that must be there (an error names the keys it has).
    optional: keys read when they are there.
    aliases: required key -> another name that may stand in for it (keras'
      'x_train' for 'x'). The array comes back under the name the file uses;
      a file with both names is refused, as either could be meant.

  Returns:
    The arrays by key.

  Raises:
    UserError: naming the file if it is not an .npz, is damaged or truncated,
      lacks a required key or holds an array that needs pickle.
  """
  aliases = aliases or {}
  try:
    stream = open(path, "rb")  # closed below, after the archive's reads
  except OSError as error:
    raise UserError(f"cannot read {path} as .npz: {one_line(error)}") from None
  with stream:
    _check_npz_start(path, stream.read(len(np.lib.format.MAGIC_PREFIX)))
    stream.seek(0)
    try:
      archive = np.load(stream, allow_pickle=False)
    except zipfile.BadZipFile as error:
      # The zip's directory sits at the end of the file: a truncated copy loses it first.
      raise UserError(f"{path} is damaged (not a complete .npz: {one_line(error)}): save it "
                      "again") from None
    except (OSError, ValueError, EOFError) as error:
      raise UserError(f"cannot read {path} as .npz: {one_line(error)}") from None
    with archive:
      return _read_npz_keys(path, archive, required, optional, aliases)


# How the files np.load tells apart begin: an .npz is a zip archive (an empty one starts
# with its end record), a .npy has its own magic; np.load takes anything else for a pickle.
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")


def _check_npz_start(path: str, start: bytes) -> None:
  """Refuses a file whose first bytes are not an .npz's, before np.load reads it as a pickle.

  Without this, a text file named .npz is refused with numpy's advice to load it with
  allow_pickle, which would run whatever a pickle holds.
  """
  if start.startswith(_ZIP_STARTS):
    return
  if not start:
    raise UserError(f"{path} is empty (0 bytes), not an .npz: save your arrays again with "
                    "`np.savez`")
  if start == np.lib.format.MAGIC_PREFIX:
    raise UserError(f"{path} is a single .npy array, not an .npz archive of named arrays: save "
                    "them with `np.savez(path, x=images, y=labels)`")
  raise UserError(f"{path} is not an .npz file (a zip archive of arrays, as `np.savez` writes): "
                  f"it begins with {start!r}; save your arrays with `np.savez`")


def _read_npz_keys(path: str, archive, required: tuple[str, ...], optional: tuple[str, ...],
                   aliases: dict[str, str]) -> dict[str, np.ndarray]:
  """`read_npz`'s arrays from its open archive."""
  present = []
  for key in required:
    alias = aliases.get(key)
    if key in archive.files and alias in archive.files:
      raise UserError(f"{path} has both {key!r} and {alias!r}; keep one of them "
                      "(they mean the same array here)")
    if key in archive.files:
      present.append(key)
    elif alias in archive.files:
      present.append(alias)
    else:
      spelled = f"{key!r}" + (f" (or {alias!r})" if alias else "")
      raise UserError(f'{path} has no key {spelled} (it has: '
                      f'{", ".join(archive.files) or "nothing"})')
  arrays = {}
  for key in (*present, *optional):
    if key not in archive.files:
      continue
    try:
      arrays[key] = archive[key]
    except ValueError as error:
      if "pickle" not in str(error):  # a member whose .npy header is garbled
        raise UserError(f"{path} is damaged (key {key!r}: {one_line(error)}): save it "
                        "again") from None
      # Object arrays (e.g. a list of Python str) need pickle, which we
      # refuse to run on data files.
      if key in _IMAGE_KEYS:
        raise UserError(f"{path}: key {key!r} is an object array (images of different "
                        "sizes?), which cannot be read without pickle; images must share one "
                        "height and width: resize them first, e.g. with PIL "
                        "`Image.fromarray(image).resize((width, height))`, and save "
                        "`np.stack(images)`") from None
      raise UserError(f"{path}: key {key!r} cannot be read without pickle; "
                      "save it as a plain array (strings as dtype=str): "
                      f"{one_line(error)}") from None
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as error:
      # zipfile checks each member's CRC as it reads it: a damaged block shows up here.
      raise UserError(f"{path} is damaged (key {key!r}: {one_line(error)}): save it "
                      "again") from None
  return arrays


def npz_keys(path: str) -> list[str]:
  """The names of the arrays in an .npz that `read_npz` has read (reads no array)."""
  with np.load(path, allow_pickle=False) as archive:
    return list(archive.files)


def read_keras_npz(path: str) -> tuple[np.ndarray, ...]:
  """(x_train, y_train, x_test, y_test) from an .npz in keras' layout (mnist.npz)."""
  arrays = read_npz(path, required=("x_train", "y_train", "x_test", "y_test"))
  return (arrays["x_train"], arrays["y_train"], arrays["x_test"],
          arrays["y_test"])


def class_names_from_array(names: np.ndarray, path: str) -> tuple[str, ...]:
  """An .npz's 'class_names' array (str or bytes) as a tuple of str; each a name, none twice."""
  if names.ndim != 1 or names.dtype.kind not in "US" or not len(names):
    raise UserError(f"{path}: key 'class_names' must be a non-empty 1-D array "
                    f"of strings, got {names.dtype} with shape {names.shape}")
  if names.dtype.kind == "S":
    decoded = tuple(name.decode("utf-8", "replace") for name in names.tolist())
  else:
    decoded = tuple(str(name) for name in names.tolist())
  # Reports, predictions and exports name classes by these: a blank or repeated name
  # would make two classes read as one.
  blank = [index for index, name in enumerate(decoded) if not name.strip()]
  if blank:
    more = f" (and {len(blank) - 1} more)" if len(blank) > 1 else ""
    raise UserError(f"{path}: key 'class_names' has an empty name for class {blank[0]}{more}; "
                    "give every class a name")
  first = {}
  for index, name in enumerate(decoded):
    if name in first:
      raise UserError(f"{path}: key 'class_names' names class {first[name]} and class {index} "
                      f"both {name!r}; give every class its own name")
    first[name] = index
  return decoded


# --- CIFAR-10 ----------------------------------------------------------------


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickles containers and numpy arrays, refusing every other global.

  Loading a pickle can run arbitrary code; a data file never needs more than
  numpy's array reconstruction, so nothing else is allowed to load.
  """

  _ALLOWED = frozenset({
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "scalar"),
      ("numpy._core.numeric", "_frombuffer"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      # Protocol-2 pickles written by Python 3 encode bytes through this.
      ("_codecs", "encode"),
  })

  def find_class(self, module: str, name: str):
    # Pickles from numpy 1 (like the original CIFAR files) name numpy.core,
    # which numpy 2 only keeps as a deprecated alias of numpy._core.
    if module.startswith("numpy.core"):
      module = "numpy._core" + module[len("numpy.core"):]
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def class_key(name: str) -> str:
  """A class name as a person means it, to match names other tools or file systems wrote:
  Unicode NFC, case-folded, letters and digits only ('T-shirt/top', 't-shirt_top' and
  'T-shirt top' are one class; a folder cannot be named with a '/')."""
  return "".join(char for char in unicodedata.normalize("NFC", name).casefold()
                 if char.isalnum())


def class_order(names: Sequence[str], reference: Sequence[str]) -> list[int] | None:
  """For each of `reference`'s classes, the index of the same class (by `class_key`) in
  `names`; None when `names` are not `reference`'s classes in some order (other, missing or
  repeated names). [0, 1, ...] when they are the same classes in the same order."""
  keys = [class_key(name) for name in names]
  wanted = [class_key(name) for name in reference]
  if len(set(keys)) != len(keys) or sorted(keys) != sorted(wanted):
    return None
  return [keys.index(key) for key in wanted]


def looks_like_cifar_folder(folder: str) -> bool:
  """Whether `folder` exists and holds any of CIFAR-10's batch files."""
  if not os.path.isdir(folder):
    return False
  expected = {*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH, _CIFAR10_META}
  return any(entry in expected for entry in os.listdir(folder))


def _read_pickle(path: str) -> object:
  try:
    with open(path, "rb") as stream:
      # encoding='bytes' because the originals are Python 2 pickles whose str
      # keys must stay bytes (b'data', b'labels').
      return _ArraysOnlyUnpickler(stream, encoding="bytes").load()
  except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError,
          AttributeError, IndexError, KeyError) as error:
    raise UserError(f"cannot read CIFAR file {path} (damaged or not a CIFAR "
                    f"python batch?): {one_line(error)}") from None


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  if not os.path.isfile(path):
    raise UserError(f"CIFAR batch file {path} is missing")
  batch = _read_pickle(path)
  if not isinstance(batch, dict) or b"data" not in batch or (
      b"labels" not in batch):
    raise UserError(f"CIFAR batch {path} is not a dict with b'data' and "
                    "b'labels'")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise UserError(f"CIFAR batch {path}: b'data' should be uint8 [N, 3072], "
                    f"got {data.dtype} {data.shape}")
  if labels.shape != (len(data),):
    raise UserError(f"CIFAR batch {path}: b'labels' has {labels.size} entries "
                    f"for {len(data)} images")
  # Rows are channel-major (1024 red, 1024 green, 1024 blue, each row-major).
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_cifar10_folder(folder: str, class_names: tuple[str, ...]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                   tuple[str, ...]]:
  """(x_train, y_train, x_test, y_test, class_names) from a cifar-10-batches-py folder.

  `class_names` are used unless the folder's batches.meta names the classes.
  """
  train_parts = [_read_cifar_batch(os.path.join(folder, batch))
                 for batch in _CIFAR10_TRAIN_BATCHES]
  x_test, y_test = _read_cifar_batch(os.path.join(folder, _CIFAR10_TEST_BATCH))
  meta_path = os.path.join(folder, _CIFAR10_META)
  # The names are fixed and known; the meta file is only a nicety.
  if os.path.isfile(meta_path):
    meta = _read_pickle(meta_path)
    if not isinstance(meta, dict) or b"label_names" not in meta:
      raise UserError(f"CIFAR meta file {meta_path} has no b'label_names'")
    class_names = tuple(
        name.decode("utf-8", "replace") if isinstance(name, bytes)
        else str(name) for name in meta[b"label_names"])
  return (np.concatenate([images for images, _ in train_parts]),
          np.concatenate([labels for _, labels in train_parts]),
          x_test, y_test, class_names)

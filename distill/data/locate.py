"""Where a dataset's files are: the places searched, keras' cache and download, and the
one-line error that names every place looked in (or the other kind of data found there).

`distill.data.datasets` loads and splits what these functions find.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from distill.data.shards import SHARDS_FILE
from distill.errors import UserError, one_line

DATA_ENV = "DISTILL_DATA"
OFFLINE_ENV = "DISTILL_OFFLINE"

# Role -> accepted base names (each also tried with .gz). The dotted spelling is
# how some MNIST mirrors name the same files.
_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


class Search:
  """Remembers every place a loader looked, to report a miss in one line."""

  def __init__(self, dataset: str, how_to_get: str):
    self.dataset = dataset
    self.how_to_get = how_to_get
    self.places: list[str] = []

  def looked_in(self, place: str, note: str | None = None) -> None:
    """Records a place that did not have the data (with why, if useful)."""
    self.places.append(place if note is None else f"{place} ({note})")

  def not_found(self, allow_download: bool, data_dir: str | None = None,
                download_error: BaseException | None = None) -> UserError:
    """Builds the one-line error for data that could not be found (in `data_dir`, if given)."""
    looked = ", ".join(self.places) or "nowhere"
    if data_dir is not None:
      other = other_kind_of_data(data_dir)
      if other is not None:
        what, fix = other
        return UserError(f"--data-dir {data_dir} is {what}, and the recipe's dataset is "
                         f"{self.dataset}: {fix}")
      return UserError(f"{self.dataset} not found in the given data dir; "
                       f"looked in: {looked}. To get it: {self.how_to_get}")
    if download_error is not None:
      download = ("; downloading with keras failed: "
                  f"{one_line(download_error)}")
    elif not allow_download:
      download = (f"; downloads are off ({OFFLINE_ENV}=1 or "
                  "allow_download=False)")
    else:
      download = ""
    return UserError(f"{self.dataset} not found; looked in: {looked}"
                     f"{download}. To get it: {self.how_to_get}")


def other_kind_of_data(path: str) -> tuple[str, str] | None:
  """(what it is, what to do) when `path` holds data another --dataset reads, else None.

  Cheap: a file's name, and a look at a few entries of a folder, never a read.
  """
  from distill.data.stream import convert_hint  # noqa: PLC0415 (stream imports datasets, which imports this)

  if os.path.isfile(path):
    return ("an .npz file", "add --dataset npz") if path.lower().endswith(".npz") else None
  roots = [path, os.path.join(path, "train")]
  if any(os.path.isfile(os.path.join(root, SHARDS_FILE)) for root in roots):
    return "a folder of array shards", "add --dataset stream"
  if any(_holds_class_folders(root) for root in roots):
    return ("a folder of images in class sub-folders",
            f"convert it to array shards once ({convert_hint(path)}) and pass those with "
            "--dataset stream")
  return None


def _holds_class_folders(path: str, look_at: int = 20) -> bool:
  """Whether one of the first sub-folders of `path` holds an image among its first files."""
  from distill.data.stream import IMAGE_EXTENSIONS  # noqa: PLC0415 (stream imports datasets, which imports this)

  try:
    with os.scandir(path) as entries:
      folders = [entry.path for entry in itertools.islice(entries, look_at) if entry.is_dir()]
    for folder in folders:
      with os.scandir(folder) as entries:
        if any(entry.name.lower().endswith(IMAGE_EXTENSIONS)
               for entry in itertools.islice(entries, look_at)):
          return True
  except OSError:  # unreadable: say nothing rather than guess
    return False
  return False


def offline_from_env() -> bool:
  """Whether the environment turns downloads off (DISTILL_OFFLINE=1)."""
  return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def checked_data_dir(data_dir: str | os.PathLike) -> str:
  """An explicit data_dir, expanded; refused when it does not exist or is an empty folder."""
  path = os.path.expanduser(os.fspath(data_dir))
  if not os.path.exists(path):
    raise UserError(f"data dir {path} does not exist")
  if os.path.isdir(path) and not os.listdir(path):
    raise UserError(f"data dir {path} is empty")
  return path


def env_data_folders(*subfolders: str) -> list[str]:
  """$DISTILL_DATA joined with each subfolder ('' for itself), if it is set."""
  root = os.environ.get(DATA_ENV)
  if not root:
    return []
  root = os.path.expanduser(root)
  return [os.path.join(root, sub) if sub else root for sub in subfolders]


def keras_datasets_dir() -> str:
  """Where keras caches downloads, resolved the way keras itself does."""
  keras_home = os.environ.get("KERAS_HOME")
  if not keras_home:
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
      base = "/tmp"
    keras_home = os.path.join(base, ".keras")
  return os.path.join(os.path.expanduser(keras_home), "datasets")


def download_with_keras(module_name: str,
                         search: Search) -> tuple[np.ndarray, ...]:
  """Calls keras.datasets.<module_name>.load_data(), which may download."""
  # keras picks its backend at import; jax is what the rest of distill uses,
  # and a missing TensorFlow must not break a data download.
  os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    import keras  # noqa: PLC0415 (lazy: slow import, only needed for downloads)
    (x_train, y_train), (x_test, y_test) = getattr(
        keras.datasets, module_name).load_data()
  # Network, disk and archive failures surface as many exception types; any
  # of them means "not available", which the user should read in one line.
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise search.not_found(True, download_error=error) from error
  return x_train, y_train, x_test, y_test


# --- IDX ---------------------------------------------------------------------


def find_idx_files(folder: str, search: Search) -> dict[str, str] | None:
  """Paths of the four IDX files in folder, or None (recorded in search)."""
  if not os.path.isdir(folder):
    search.looked_in(folder)
    return None
  found, missing = {}, []
  for role, base_names in _IDX_FILES.items():
    candidates = [os.path.join(folder, base + suffix)
                  for base in base_names for suffix in (".gz", "")]
    existing = [path for path in candidates if os.path.isfile(path)]
    if existing:
      found[role] = existing[0]
    else:
      missing.append(base_names[0] + "(.gz)")
  if missing:
    search.looked_in(folder, "missing " + ", ".join(missing) if found else None)
    return None
  return found

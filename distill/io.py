"""Files and folders written atomically: a crash leaves the old one or none, never half of one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UserError


def is_primary_process() -> bool:
  """False on every process but the first of a multi-process run.

  All processes compute the same results; only process 0 writes and prints
  them. Checked without importing JAX, so commands that never load it stay fast.
  """
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def current_umask() -> int:
  """The process's file-creation mask (os.umask can only be read by setting it)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _write_atomic(path: Path, write: Callable[[Any], None], mode: str) -> None:
  if not is_primary_process():
    return
  path = Path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror}") from None
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
      # mkstemp makes the file private (0600); the result is made like any
      # tool's file: readable by whom the user's umask allows.
      os.fchmod(f.fileno(), 0o666 & ~current_umask())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_text(path: Path, text: str) -> None:
  """Writes `text` to `path` atomically."""
  _write_atomic(path, lambda f: f.write(text), "w")


def write_bytes(path: Path, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  _write_atomic(path, lambda f: f.write(data), "wb")


def write_json(path: Path, data: Any) -> None:
  """Writes `data` as indented JSON atomically."""
  write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str = "file") -> Any:
  """Reads JSON, turning a missing or damaged file into a UserError."""
  try:
    return json.loads(Path(path).read_text())
  except FileNotFoundError:
    raise UserError(f"{what} not found: {path}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{what} {path} is damaged (not valid JSON: {e})") from None


def check_directory_target(directory: Path, overwrite: bool,
                           how_to_replace: str = "pass overwrite=True to replace it") -> None:
  """Refuses a `directory` that is a file, or a non-empty folder without `overwrite`.

  `how_to_replace` ends the refusal: a Python caller's keyword by default, a
  command's flag where a command calls.

  Raises:
    UserError: naming the directory.
  """
  if directory.exists() and not directory.is_dir():
    raise UserError(f"{directory} exists and is not a folder")
  if directory.is_dir() and any(directory.iterdir()) and not overwrite:
    raise UserError(f"{directory} already exists and is not empty; {how_to_replace}")


def publish_directory(staging: Path, directory: Path, overwrite: bool) -> None:
  """Renames a finished `staging` folder to `directory`, replacing it if `overwrite`.

  `staging` must be on the same file system (a hidden folder beside
  `directory`), so the rename is atomic: readers see the old folder or the new
  one, never a mix.

  Raises:
    UserError: if `directory` is a file, or is not empty and `overwrite` is off.
  """
  check_directory_target(directory, overwrite)
  if directory.is_dir() and any(directory.iterdir()):
    # Moved aside first: renaming onto a non-empty folder is not allowed.
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
    os.replace(directory, old / directory.name)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(staging, directory)


def read_only(array: np.ndarray) -> np.ndarray:
  """A read-only view of `array`; the array itself (perhaps the caller's) stays writeable."""
  view = array.view()
  view.flags.writeable = False
  return view


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
  """Saves arrays to an uncompressed .npz atomically."""
  _write_atomic(path, lambda f: np.savez(f, **arrays), "wb")


def array_sha256(*arrays: np.ndarray, header_end: str = "") -> str:
  """Hex sha256 over arrays' dtypes, shapes and bytes, in order.

  Dtype and shape go in too, so a reshape or a relabel-as-int64 that keeps
  the bytes still changes the digest. `header_end` follows each array's
  dtype and shape: data set fingerprints use ";" and parameter hashes and
  checksums "", as the files and summaries written so far record them.
  """
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}{header_end}".encode())
    digest.update(array.reshape(-1).view(np.uint8))  # no copy; empty arrays too
  return digest.hexdigest()

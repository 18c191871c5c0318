"""Files the tool writes: whole or absent, and created like any other tool's (the user's umask)."""

import os
import stat

import numpy as np
import pytest

from distill.data.shards import write_array_shards
from distill.io import write_json, write_npz


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
  previous = os.umask(request.param)
  yield request.param
  os.umask(previous)


def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
  write_json(tmp_path / "summary.json", {"a": 1})
  write_npz(tmp_path / "predictions.npz", {"x": np.zeros(3)})
  images, labels = np.zeros((4, 2, 2, 1), np.uint8), np.arange(4, dtype=np.int32) % 2
  shards = write_array_shards(tmp_path / "shards", (images, labels), class_names=("a", "b"))
  for name in ("summary.json", "predictions.npz"):
    assert _mode(tmp_path / name) == 0o666 & ~umask, name
  assert _mode(shards) == 0o777 & ~umask
  for path in shards.iterdir():
    assert _mode(path) == 0o666 & ~umask, path.name

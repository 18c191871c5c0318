"""Training from array shards on disk: the same run as from memory, on 1 and 2 devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY
from distill import data as data_lib
from distill.stream import open_target_shards, write_array_shards

SET = [arg for override in [*TINY, "teacher.log_every=5", "student.log_every=5"]
       for arg in ("--set", override)]


def _distill(*args, devices=1):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu",
         "DISTILL_OFFLINE": "1"}
  result = subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _losses(workdir):
  return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory):
  """Digits written as small shards (several per split), in the loader's row order."""
  root = tmp_path_factory.mktemp("digits-shards")
  raw = data_lib.DATASETS["digits"](data_dir=None, allow_download=False)
  for split, images, labels in (("train", raw.x_train, raw.y_train),
                                ("test", raw.x_test, raw.y_test)):
    write_array_shards(root / split, (images, labels), class_names=raw.class_names,
                       shard_size=300)
  return root


def test_streamed_teacher_and_student_match_the_in_memory_runs(digits_shards, tmp_path):
  stream = ["--dataset", "stream", "--data-dir", digits_shards]
  _distill("teacher", "-r", "digits", "-w", tmp_path / "memory", "-q", *SET)
  _distill("teacher", "-r", "digits", "-w", tmp_path / "stream", "-q", *SET, *stream)
  # Same split, same order, same pixels: the same losses, read from disk instead of memory.
  np.testing.assert_allclose(_losses(tmp_path / "stream"), _losses(tmp_path / "memory"),
                             rtol=1e-5)
  shards = open_target_shards(tmp_path / "stream", verify_checksums=True)
  with np.load(tmp_path / "memory" / "targets.npz") as memory:
    assert shards.num_examples > len(memory["train_probs"])  # validation rows too
  summary = json.loads((tmp_path / "stream" / "summary.json").read_text())
  memory_summary = json.loads((tmp_path / "memory" / "summary.json").read_text())
  assert summary["test_accuracy"] == pytest.approx(memory_summary["test_accuracy"], abs=2e-3)

  for teaching in ("targets", "online"):
    _distill("student", "--teacher", tmp_path / "memory", "-m", "mlp", "--teaching", teaching,
             "-w", tmp_path / f"student-memory-{teaching}", "-q", *SET)
    _distill("student", "--teacher", tmp_path / "stream", "-m", "mlp", "--teaching", teaching,
             "-w", tmp_path / f"student-stream-{teaching}", "-q", *SET, *stream, devices=2)
    np.testing.assert_allclose(_losses(tmp_path / f"student-stream-{teaching}"),
                               _losses(tmp_path / f"student-memory-{teaching}"), rtol=1e-4)

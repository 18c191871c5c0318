"""Data parallel on a mesh: 4 simulated CPU devices and 2 processes match 1 device, step by step.

Each run is a subprocess, since JAX fixes its device count (and joins a
distributed run) once per process.
"""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import LOGGED_EVERY_5, logged, process_env, run_distill_process

SET = LOGGED_EVERY_5


def _assert_same_run(a, b):
  """Same steps, and every logged number equal to float tolerance."""
  ma, mb = logged(a), logged(b)
  assert [r["step"] for r in ma] == [r["step"] for r in mb]
  for ra, rb in zip(ma, mb, strict=True):
    for key in ("loss", "accuracy", "grad_norm", "val_loss", "val_accuracy", "teacher_agreement"):
      if key in ra:
        np.testing.assert_allclose(ra[key], rb[key], rtol=2e-5, atol=2e-6, err_msg=key)
  sa = json.loads((a / "summary.json").read_text())
  sb = json.loads((b / "summary.json").read_text())
  assert sa["test_accuracy"] == pytest.approx(sb["test_accuracy"], abs=2e-3)
  return sa, sb


@pytest.fixture(scope="module")
def one_device_teacher(teacher_logged_every_5):
  return teacher_logged_every_5


def test_four_devices_train_like_one(one_device_teacher, tmp_path):
  # The teacher augments on the device; online teaching runs the teacher inside the step.
  result = run_distill_process("teacher", "-r", "digits", "-w", tmp_path / "teacher-4", *SET,
                               devices=4)
  batch = json.loads((tmp_path / "teacher-4" / "recipe.json").read_text())["teacher"]["batch_size"]
  assert (f"data-parallel on 4 cpu devices: each batch of {batch} is {batch // 4} per device"
          in result.stderr)
  one, four = _assert_same_run(one_device_teacher, tmp_path / "teacher-4")
  assert (one["devices"], four["devices"]) == (1, 4)
  assert four["processes"] == 1
  for devices in (1, 4):
    run_distill_process("student", "--teacher", one_device_teacher, "-m", "mlp",
                        "--teaching", "online", "-w", tmp_path / f"online-{devices}", "-q", *SET,
                        devices=devices)
  _assert_same_run(tmp_path / "online-1", tmp_path / "online-4")


def test_a_batch_that_does_not_split_across_devices_is_refused(tmp_path):
  result = run_distill_process("teacher", "-r", "digits", "-w", tmp_path / "t", "-q",
                               "--set", "teacher.batch_size=30", devices=4, check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ("error: teacher.batch_size 30 does not divide across 4 "
                                   "devices; choose a multiple of 4")
  assert not (tmp_path / "t").exists()  # refused before anything is written or loaded


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together_like_one(tmp_path):
  workdir = tmp_path / "two-processes"
  port = _free_port()
  processes = [
      subprocess.Popen(
          [sys.executable, "-m", "distill.cli", "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id", str(i), "teacher", "-r", "digits",
           "-w", str(workdir), *SET],
          env=process_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (_, err) in zip(processes, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  # One process with the same two devices in total.
  run_distill_process("teacher", "-r", "digits", "-w", tmp_path / "one-process", "-q", *SET,
                      devices=2)
  _, two = _assert_same_run(tmp_path / "one-process", workdir)
  assert (two["devices"], two["processes"]) == (2, 2)
  # Written once and whole; only process 0 talks.
  with np.load(workdir / "targets.npz") as targets:
    assert np.isfinite(targets["train_probs"]).all()
  assert "init loss" in outputs[0][1] and "init loss" not in outputs[1][1]
  assert "teacher test accuracy" in outputs[0][0]
  assert "teacher test accuracy" not in outputs[1][0]
  assert not list(workdir.glob(".*.tmp"))

"""Data parallel on a mesh: 4 simulated CPU devices and 2 processes match 1 device, step by step.

Each run is a subprocess, since JAX fixes its device count (and joins a
distributed run) once per process.
"""

import json
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import LOGGED_EVERY_5, logged, process_env, run_cli, run_distill_process

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
  online = ["student", "--teacher", one_device_teacher, "-m", "mlp", "--teaching", "online",
            "-q", *SET]
  run_distill_process(*online, "-w", tmp_path / "online-4", devices=4)
  # This process has one device: its run is the reference, without importing JAX again.
  assert run_cli(*online, "-w", tmp_path / "online-1").exit_code == 0
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


def test_two_processes_train_together_like_one(one_device_teacher, tmp_path):
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
  # The same run on one device (as the four-device test compares, to float tolerance).
  _, two = _assert_same_run(one_device_teacher, workdir)
  assert (two["devices"], two["processes"]) == (2, 2)
  # Written once and whole; only process 0 talks.
  with np.load(workdir / "targets.npz") as targets:
    assert np.isfinite(targets["train_probs"]).all()
  assert "init loss" in outputs[0][1] and "init loss" not in outputs[1][1]
  assert "teacher test accuracy" in outputs[0][0]
  assert "teacher test accuracy" not in outputs[1][0]
  # stdout holds the result line alone, as on one process (Gloo's own lines go to stderr).
  assert len(outputs[0][0].strip().splitlines()) == 1, outputs[0][0]
  assert outputs[1][0].strip() == ""
  assert not list(workdir.glob(".*.tmp"))


def _start_two(port, per_process, common):
  """Starts processes 0 and 1 of a run at 127.0.0.1:`port`: `common` arguments, each after its
  own of `per_process`."""
  return [subprocess.Popen(
      [sys.executable, "-m", "distill.cli", "--coordinator", f"127.0.0.1:{port}",
       "--num-processes", "2", "--process-id", str(i), *common, *own],
      env=process_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i, own in enumerate(per_process)]


def test_processes_started_differently_are_refused_in_one_line_each(tmp_path):
  """Another learning rate on one host trained a silently wrong model; another run folder
  hung at the last checkpoint. Both are refused before anything is written."""
  processes = _start_two(_free_port(), [[], ["--set", "teacher.learning_rate=0.01"]],
                         ["teacher", "-r", "digits", "-w", str(tmp_path / "t"), "-q", *SET])
  for p, (_, err) in zip(processes, [p.communicate(timeout=300) for p in processes],
                         strict=True):
    assert p.returncode == 2, err[-3000:]
    assert ("error: the processes were started differently: process 1 differs from process 0 "
            "in the recipe; start every process with the same command and settings") in err
  assert not (tmp_path / "t").exists()
  processes = _start_two(_free_port(), [["-w", str(tmp_path / "a")], ["-w", str(tmp_path / "b")]],
                         ["teacher", "-r", "digits", "-q", *SET])
  for p in processes:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "process 1 differs from process 0 in --workdir" in err, (
        err[-3000:])


def test_a_stop_that_reaches_one_host_stops_every_process_at_one_step(tmp_path):
  """Ctrl-C on one host: every process stops at the same step with its checkpoint (process 0
  alone stopping left the other waiting in the next step's all-reduce, and both hung)."""
  workdir = tmp_path / "t"
  processes = _start_two(_free_port(), [[], []],
                         ["teacher", "-r", "digits", "-w", str(workdir), "-q", *SET,
                          "--set", "teacher.steps=100000", "--set", "teacher.log_every=5",
                          "--set", "teacher.checkpoint_every=100000"])
  deadline = time.time() + 240
  while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
    time.sleep(0.05)
  processes[0].send_signal(signal.SIGINT)
  outputs = [p.communicate(timeout=240) for p in processes]
  stopped = set()
  for p, (_, err) in zip(processes, outputs, strict=True):
    assert p.returncode == 130, err[-3000:]
    stopped.add(int(err.split("stopped by SIGINT at step ")[1].split(";")[0]))
  assert len(stopped) == 1  # one step, the checkpoint's
  assert sorted(int(c.name) for c in (workdir / "checkpoints").iterdir()
                if c.name.isdigit()) == list(stopped)


def test_a_port_in_use_and_a_sweep_on_several_hosts_are_one_line_errors(tmp_path):
  with socket.socket() as held:
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", "0", "teacher", "-r", "digits"],
        env=process_env(1), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"could not join the distributed run: port {port} is in use on this host" in (
      result.stderr)
  processes = _start_two(_free_port(), [[], []], ["sweep", "--teacher", str(tmp_path / "none"),
                                                  "--out", str(tmp_path / "sweep")])
  for p in processes:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "a sweep runs on one host" in err, err[-3000:]


@pytest.fixture
def no_distributed_settings(monkeypatch):
  """No DISTILL_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID from the environment."""
  for name in ("DISTILL_COORDINATOR", "DISTILL_NUM_PROCESSES", "DISTILL_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)


def test_no_processes_is_refused_for_the_count_not_the_id(no_distributed_settings):
  result = run_cli("--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0",
                   "teacher", "-r", "digits")
  assert result.exit_code == 2
  assert result.stderr.strip() == "error: --num-processes must be 1 or more, got 0"


def test_distributed_without_a_cluster_says_which_options_to_give(no_distributed_settings,
                                                                  monkeypatch):
  def no_cluster(**kwargs):
    # What jax.distributed.initialize raises when no cluster variables are set.
    raise ValueError("coordinator_address should be defined.")

  monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
  result = run_cli("--distributed", "teacher", "-r", "digits")
  assert result.exit_code == 2
  assert result.stderr.strip() == (
      "error: could not join the distributed run: coordinator_address should be defined; no "
      "cluster variables (SLURM, Open MPI, TPU) were found, so give --coordinator HOST:PORT "
      "--num-processes N --process-id I")

"""Killed runs resume to bit-identical parameters."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY, run_cli, set_flags

from distill import interrupts, loop
from distill.checkpoint import Checkpointer

# Enough steps and checkpoints that kills land before, between and after checkpoints.
RESUME = [*TINY, "teacher.steps=40", "teacher.checkpoint_every=10", "teacher.log_every=5",
          "teacher.eval_every=20", "student.steps=40", "student.checkpoint_every=10",
          "student.log_every=5", "student.eval_every=20"]


def _cli_args(role, workdir, teacher_dir=None):
  """The `distill` arguments of a tiny run, for `run_cli` or a subprocess."""
  args = [role, "--workdir", str(workdir), "--quiet"]
  if role == "teacher":
    args += ["--recipe", "digits"]
  else:
    args += ["--teacher", str(teacher_dir), "--model", "cnn"]
  return args + set_flags(RESUME)


def _command(role, workdir, teacher_dir=None):
  """The same run as a `distill` subprocess: the runs a test kills or signals from outside."""
  return [sys.executable, "-m", "distill.cli", *_cli_args(role, workdir, teacher_dir)]


def _logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1])["step"] if lines else 0


def _kill_after(args, workdir, logged_step):
  """Starts a run and SIGKILLs it once its log reaches `logged_step`."""
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if _logged_steps(workdir) >= logged_step:
      break
    time.sleep(0.01)
  assert process.poll() is None, "the run ended before the kill"
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL


def _assert_no_damaged_files(workdir):
  """After a kill, every file the toolkit writes is whole: old, new or absent."""
  for path in workdir.rglob("*"):
    if path.name.startswith("."):
      continue  # A kill mid-write leaves at most a hidden temporary beside the whole file.
    if path.suffix == ".json" and "checkpoints" not in path.parts:
      json.loads(path.read_text())
    elif path.suffix == ".jsonl":
      [json.loads(line) for line in path.read_text().splitlines()]
    elif path.suffix == ".npz":
      with np.load(path) as arrays:
        [arrays[name] for name in arrays.files]


def _resumes_from_the_latest_checkpoint(args, workdir):
  """Finishes a killed run; asserts it resumed from its newest checkpoint (from scratch: none)."""
  saved = _checkpoint_steps(workdir) if (workdir / "checkpoints").is_dir() else []
  _finish(args)
  assert _summary(workdir)["resumed_from_step"] == (max(saved) if saved else None)


def _finish(args):
  """Runs `distill ARGS` (`_cli_args`) to its end in this process.

  Only the killed run needs a process of its own; resuming it here reads the same files a
  fresh process would, without importing JAX again (seconds a run).
  """
  result = run_cli(*args)
  assert result.exit_code == 0, result.output
  return result


def _summary(workdir):
  return json.loads((workdir / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = tmp_path_factory.mktemp("reference")
  _finish(_cli_args("teacher", root / "teacher"))
  _finish(_cli_args("student", root / "student", root / "teacher"))
  return root


# Before the first checkpoint (a log to start again), between two, and after the validation of
# step 20. (A kill before the first log line resumes from scratch as the kill at 5 does.)
@pytest.mark.parametrize("kill_at", [5, 15, 30])
def test_killed_teacher_resumes_bit_identically(reference, tmp_path, kill_at):
  workdir = tmp_path / "teacher"
  _kill_after(_command("teacher", workdir), workdir, kill_at)
  _assert_no_damaged_files(workdir)
  _resumes_from_the_latest_checkpoint(_cli_args("teacher", workdir), workdir)
  resumed, expected = _summary(workdir), _summary(reference / "teacher")
  assert resumed["params_sha256"] == expected["params_sha256"]
  assert resumed["test_accuracy"] == expected["test_accuracy"]
  # The metrics log of the resumed run is the uninterrupted one, line for line (less timings).
  assert _metrics_less_timings(workdir) == _metrics_less_timings(reference / "teacher")


@pytest.mark.parametrize("kill_at", [10, 25])
def test_killed_student_resumes_bit_identically(reference, tmp_path, kill_at):
  workdir = tmp_path / "student"
  _kill_after(_command("student", workdir, reference / "teacher"), workdir, kill_at)
  _assert_no_damaged_files(workdir)
  _resumes_from_the_latest_checkpoint(_cli_args("student", workdir, reference / "teacher"),
                                      workdir)
  assert _summary(workdir)["params_sha256"] == _summary(reference / "student")["params_sha256"]


def test_resume_with_another_recipe_is_refused(tmp_path, monkeypatch):
  # An unfinished run: stopped at step 15 with its checkpoint saved (in this process, so
  # the stop lands before the run ends, every time).
  args = _cli_args("teacher", tmp_path)
  with monkeypatch.context() as patch:
    _sigterm_while_logging(patch, at_step=15)
    assert run_cli(*args).exit_code == 143
  changed = [*args, "--set", "teacher.learning_rate=0.5"]
  refused = run_cli(*changed)
  assert refused.exit_code == 2, refused.output
  assert "different recipe" in refused.stderr and "--restart" in refused.stderr
  assert "Traceback" not in refused.output
  restarted = run_cli(*changed, "--restart")
  assert restarted.exit_code == 0, restarted.output
  assert _summary(tmp_path)["resumed_from_step"] is None


def test_a_student_refused_for_its_retrained_teachers_recipe_says_so(reference, tmp_path,
                                                                     monkeypatch):
  """A student's recipe starts from its teacher's: retrained with another seed, the teacher
  changes the recipe of its unfinished student, which the user never touched."""
  teacher = tmp_path / "teacher"
  shutil.copytree(reference / "teacher", teacher)
  student = tmp_path / "student"
  with monkeypatch.context() as patch:
    _sigterm_while_logging(patch, at_step=15)
    assert run_cli(*_cli_args("student", student, teacher)).exit_code == 143
  assert run_cli(*_cli_args("teacher", teacher), "--seed", "5", "--overwrite").exit_code == 0
  refused = run_cli(*_cli_args("student", student, teacher))
  assert refused.exit_code == 2, refused.output
  assert (f"holds an unfinished run with a different recipe (seed: 0 -> 5, as the teacher's "
          f"recipe in {teacher} now has it: was the teacher trained again since?)"
          ) in " ".join(refused.stderr.split())
  # A change the user made is not put on the teacher.
  refused = run_cli(*_cli_args("student", student, reference / "teacher"),
                    "--set", "student.learning_rate=0.5")
  assert refused.exit_code == 2 and "the teacher's recipe" not in refused.stderr


def test_a_ctrl_c_dropped_before_the_loop_still_stops_it(tmp_path):
  """Python drops a KeyboardInterrupt raised in a garbage-collector callback (as JAX's are);
  the signal is remembered, so the loop that starts next stops at its first dispatch."""
  interrupts.listen()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)  # the handler runs here, and raises
  except KeyboardInterrupt:
    pass  # dropped, as a gc callback's would be
  else:
    raise AssertionError("outside a callback Ctrl-C raises at once")
  stopped = run_cli(*_cli_args("teacher", tmp_path))
  assert stopped.exit_code == 130, stopped.output
  step = int(re.search(r"stopped by SIGINT at step (\d+); checkpoint saved",
                       stopped.stderr).group(1))
  assert _checkpoint_steps(tmp_path) == [step] and step < 40  # RESUME's teacher.steps
  assert interrupts.take() is None  # taken once: the resumed run trains to its end
  assert run_cli(*_cli_args("teacher", tmp_path)).exit_code == 0
  assert _summary(tmp_path)["resumed_from_step"] == step


def test_a_ctrl_c_inside_jaxs_gc_callback_is_remembered_not_raised():
  """Python would print the KeyboardInterrupt's traceback there and drop it: none is raised."""
  interrupts.listen()

  def _xla_gc_callback():  # the name of JAX's callback, which the handler looks for
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)  # the handler runs here

  _xla_gc_callback()  # no KeyboardInterrupt
  assert interrupts.take() == "SIGINT" and interrupts.take() is None


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _stopped_step(message):
  match = re.search(r"stopped by SIGTERM at step (\d+); checkpoint saved", message)
  assert match, message
  return int(match.group(1))


# Periodic checkpoints far apart, so only the forced save can hold the stopped step.
BETWEEN_CHECKPOINTS = ["teacher.steps=4000", "teacher.checkpoint_every=1000"]


def test_sigterm_saves_the_stopped_step_and_exits_143(tmp_path):
  """A batch system's cancel: the run stops at a checkpoint and exits 128 + SIGTERM's 15, as a
  process SIGTERM ended, so the scheduler tells it from a Ctrl-C (130) or an error (2)."""
  workdir = tmp_path / "teacher"
  args = _command("teacher", workdir) + set_flags(BETWEEN_CHECKPOINTS)
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while _logged_steps(workdir) < 5 and time.time() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr
  assert _checkpoint_steps(workdir) == [_stopped_step(stderr)]


def _sigterm_while_logging(patch, at_step):
  """Makes the loop receive SIGTERM inside its log step at `at_step`, in this process."""
  summarise = loop._summarise

  def summarise_then_signal(window, step):
    if step == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return summarise(window, step)

  patch.setattr(loop, "_summarise", summarise_then_signal)


def test_a_signal_handled_while_logging_still_saves_before_stopping(tmp_path, monkeypatch):
  """The loop blocks in its log step, where Python runs signal handlers: the race the
  subprocess test above can only hit by chance, made certain here."""
  _sigterm_while_logging(monkeypatch, at_step=15)
  result = run_cli(*_cli_args("teacher", tmp_path), *set_flags(BETWEEN_CHECKPOINTS))
  assert result.exit_code == 143, result.output
  assert _checkpoint_steps(tmp_path) == [_stopped_step(result.stderr)]


def test_a_resumed_run_reports_the_training_time_of_every_stretch(tmp_path, monkeypatch):
  """Stopped near the end of 40 steps, the resumed run's own stretch is a few steps; its
  summary must still count the stretch before the stop."""
  args = _cli_args("teacher", tmp_path)
  with monkeypatch.context() as patch:
    _sigterm_while_logging(patch, at_step=30)
    stopped = run_cli(*args)
  assert stopped.exit_code == 143, stopped.output
  stopped_step = _stopped_step(stopped.stderr)
  checkpointer = Checkpointer(tmp_path)
  seconds_before_stop = checkpointer.restore_meta(stopped_step)["train_seconds"]
  checkpointer.close()
  assert seconds_before_stop > 0
  # The stretch before the stop is made to have taken an hour more, so the sum is told from
  # the resumed stretch alone whatever the two took on this machine.
  restore_meta = Checkpointer.restore_meta

  def restore_an_hour_later(self, step):
    meta = restore_meta(self, step)
    return {**meta, "train_seconds": meta["train_seconds"] + 3600.0}

  monkeypatch.setattr(Checkpointer, "restore_meta", restore_an_hour_later)
  started = time.perf_counter()
  result = run_cli(*args)
  resumed_wall_seconds = time.perf_counter() - started
  assert result.exit_code == 0, result.output
  summary = _summary(tmp_path)
  assert summary["resumed_from_step"] == stopped_step < 40
  earlier = 3600.0 + seconds_before_stop
  assert earlier < summary["train_seconds"] < earlier + resumed_wall_seconds
  # Its result line says so, since that time can exceed the command's wall time.
  assert f"(resumed from step {stopped_step})," in result.output.splitlines()[-1]


def test_a_run_resumed_after_its_final_checkpoint_keeps_its_final_loss(reference, tmp_path):
  """Stopped while evaluating, after its last checkpoint: the resumed run trains no step, and
  its summary said its final loss was the step-0 loss, log(10), at 0 images a second."""
  workdir = shutil.copytree(reference / "teacher", tmp_path / "teacher")
  finished = _summary(workdir)
  (workdir / "summary.json").unlink()
  _finish(_cli_args("teacher", workdir))
  resumed = _summary(workdir)
  assert resumed["resumed_from_step"] == 40
  assert resumed["final_train_loss"] == finished["final_train_loss"]
  assert resumed["images_per_second"] > 0
  assert resumed["params_sha256"] == finished["params_sha256"]


@pytest.mark.parametrize(("min_seconds", "saved"), [(0, [10, 20, 30, 40]), (3600, [40])])
def test_periodic_checkpoints_wait_checkpoint_min_seconds_after_the_last(
    tmp_path, monkeypatch, min_seconds, saved):
  """A run that passes its checkpoint cadence faster than the floor saves only at its end."""
  steps = []
  save = Checkpointer.save

  def recording_save(self, step, state, meta):
    steps.append(step)
    return save(self, step, state, meta)

  monkeypatch.setattr(Checkpointer, "save", recording_save)
  result = run_cli(*_cli_args("teacher", tmp_path),
                   *set_flags([f"teacher.checkpoint_min_seconds={min_seconds}"]))
  assert result.exit_code == 0, result.output
  assert steps == saved
  assert [line["step"] for line in map(json.loads, (tmp_path / "metrics.jsonl").open())] == [
      5, 10, 15, 20, 25, 30, 35, 40]


def test_a_stop_signal_saves_whatever_the_checkpoint_floor(tmp_path, monkeypatch):
  _sigterm_while_logging(monkeypatch, at_step=15)
  result = run_cli(*_cli_args("teacher", tmp_path),
                   *set_flags(["teacher.checkpoint_min_seconds=3600"]))
  assert result.exit_code == 143, result.output
  stopped_step = _stopped_step(result.stderr)
  assert stopped_step < 40 and _checkpoint_steps(tmp_path) == [stopped_step]


def _metrics_less_timings(workdir):
  return [{key: value for key, value in json.loads(line).items() if key != "elapsed_seconds"}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_stopped_between_log_lines_resumes_to_the_same_log(tmp_path, monkeypatch):
  """Stopped at step 17 of lines every 10, the resumed run's line of step 20 still averages
  steps 11 to 20 (those before the stop come back from the checkpoint), so its log and its
  final train loss are the uninterrupted run's."""
  flags = set_flags(["teacher.steps_per_dispatch=1", "teacher.log_every=10",
                     "teacher.checkpoint_every=1000"])
  reference = tmp_path / "reference"
  assert run_cli(*_cli_args("teacher", reference), *flags).exit_code == 0
  workdir = tmp_path / "stopped"
  train = loop._Run.train

  def train_then_signal(self, first, count, rows):
    step = train(self, first, count, rows)
    if step == 17:
      os.kill(os.getpid(), signal.SIGTERM)
    return step

  with monkeypatch.context() as patch:
    patch.setattr(loop._Run, "train", train_then_signal)
    stopped = run_cli(*_cli_args("teacher", workdir), *flags)
  assert stopped.exit_code == 143, stopped.output
  assert _stopped_step(stopped.stderr) == 17
  assert run_cli(*_cli_args("teacher", workdir), *flags).exit_code == 0
  assert _summary(workdir)["resumed_from_step"] == 17
  assert _metrics_less_timings(workdir) == _metrics_less_timings(reference)
  assert _summary(workdir)["final_train_loss"] == _summary(reference)["final_train_loss"]

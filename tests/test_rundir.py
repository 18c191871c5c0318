"""How run folders are described: what `compare` and a refused --teacher say a folder is."""

import json

import numpy as np
import pytest
from conftest import copy_runs, run_cli

from distill import rundir


def _targets_folder(path, teachers, temperature):
  """A folder `distill export --out` would write: its recipe and its targets' metadata."""
  path.mkdir()
  (path / rundir.RECIPE_FILE).write_text("{}")
  (path / rundir.TARGETS_META_FILE).write_text(json.dumps(
      {"teacher": teachers[0], "teachers": teachers, "temperature": temperature}))
  return path


def test_exported_targets_say_whose_they_are(tmp_path):
  one = _targets_folder(tmp_path / "one", [{"dir": "/runs/teacher"}], 3.0)
  two = _targets_folder(tmp_path / "two", [{"dir": "/runs/t1"}, {"dir": "/runs/t2"}], 1.0)
  assert rundir.folder_kind(one) == rundir.TARGETS_ONLY
  assert rundir.describe_folder(one) == ("a folder of exported targets of one teacher "
                                         "(/runs/teacher) at T=3, with no run of its own")
  assert rundir.describe_folder(two) == ("a folder of exported targets of an ensemble of 2 "
                                         "teachers at T=1, with no run of its own")
  (one / rundir.TARGETS_META_FILE).write_text("{damaged")
  assert rundir.describe_folder(one) == ("a folder of exported targets of a teacher or an "
                                         "ensemble, with no run of its own")


def test_compare_describes_one_teacher_exported_elsewhere(tmp_path, tiny_digits_runs):
  teacher = tiny_digits_runs / "teacher"
  result = run_cli("export", "--teacher", teacher, "-T", 3, "--out", tmp_path / "teacher-T3",
                   "-q")
  assert result.exit_code == 0, result.output
  result = run_cli("compare", teacher, tmp_path / "teacher-T3")
  assert result.exit_code == 0, result.output
  assert (f"teacher-T3 is a folder of exported targets of one teacher ({teacher.resolve()}) "
          "at T=3, with no run of its own") in result.output
  assert "ensemble" not in result.output


def _unfinished_run(path, recipe, steps=(15,)):
  """A folder a stopped run leaves: its recipe.json and checkpoints named by their steps."""
  (path / rundir.CHECKPOINTS_DIR).mkdir(parents=True)
  for step in steps:
    (path / rundir.CHECKPOINTS_DIR / str(step)).mkdir()
  (path / rundir.RECIPE_FILE).write_text(json.dumps(recipe))
  return path


def test_an_unfinished_run_of_another_recipe_is_refused_naming_what_differs(tmp_path):
  """Checked before the data loads, from the run's recipe.json, which the refusal leaves alone."""
  from distill import config, workflow  # noqa: PLC0415
  from distill.errors import UserError  # noqa: PLC0415

  started = config.load_recipe("digits")
  run = _unfinished_run(tmp_path / "run", started)
  saved = (run / rundir.RECIPE_FILE).read_text()
  changed = config.load_recipe("digits", ["teacher.learning_rate=0.5", "seed=3",
                                          "student.steps=7"])
  with pytest.raises(UserError) as error:
    workflow.check_existing_run(run, changed, "teacher", restart=False, overwrite=False)
  assert str(error.value) == (
      f"{run} holds an unfinished run with a different recipe (seed: 0 -> 3; "
      "teacher.learning_rate: 0.002 -> 0.5); re-run with --restart to start over, or use "
      "another --workdir")  # student.steps is no teacher's business
  assert (run / rundir.RECIPE_FILE).read_text() == saved
  many = config.load_recipe("digits", [f"teacher.{key}={value}" for key, value in (
      ("steps", 9), ("batch_size", 8), ("warmup_steps", 1), ("log_every", 3))])
  with pytest.raises(UserError) as error:  # four changes: all named, none counted
    workflow.check_existing_run(run, many, "teacher", restart=False, overwrite=False)
  assert "teacher.steps: 1500 -> 9; teacher.warmup_steps" in str(error.value)
  assert "more)" not in str(error.value)
  more = config.load_recipe("digits", [f"teacher.{key}={value}" for key, value in (
      ("steps", 9), ("batch_size", 8), ("warmup_steps", 1), ("log_every", 3), ("grad_clip", 2.0))])
  with pytest.raises(UserError, match=r"teacher.log_every: 25 -> 3 and 2 more\)"):
    workflow.check_existing_run(run, more, "teacher", restart=False, overwrite=False)
  # Resumed with its own recipe, restarted, or with no checkpoint to resume: no refusal.
  workflow.check_existing_run(run, started, "teacher", restart=False, overwrite=False)
  workflow.check_existing_run(run, changed, "teacher", restart=True, overwrite=False)
  # Without recipe.json (or with one edited by hand), the newest checkpoint's recipe hash decides,
  # still before the data loads and without writing recipe.json.
  from distill.checkpoint import Checkpointer  # noqa: PLC0415

  saved_run = tmp_path / "checkpointed"
  checkpointer = Checkpointer(saved_run)
  checkpointer.save(15, {"step": np.zeros((), np.int32)},
                    {"recipe_hash": config.recipe_hash(started, "teacher")})
  checkpointer.close()
  with pytest.raises(UserError, match=r"different recipe \(which keys, its recipe.json cannot "
                                      r"say\); re-run with --restart"):
    workflow.check_existing_run(saved_run, changed, "teacher", restart=False, overwrite=False)
  assert not (saved_run / rundir.RECIPE_FILE).exists()
  workflow.check_existing_run(saved_run, started, "teacher", restart=False, overwrite=False)
  (saved_run / rundir.RECIPE_FILE).write_text(json.dumps(changed))  # edited by hand
  with pytest.raises(UserError, match="cannot say"):
    workflow.check_existing_run(saved_run, changed, "teacher", restart=False, overwrite=False)
  unsaved = _unfinished_run(tmp_path / "unsaved", started, steps=())
  workflow.check_existing_run(unsaved, changed, "teacher", restart=False, overwrite=False)
  (run / rundir.SUMMARY_FILE).write_text("{}")
  with pytest.raises(UserError, match="already holds a finished run; pass --overwrite"):
    workflow.check_existing_run(run, started, "teacher", restart=False, overwrite=False)


def test_a_run_needs_a_folder_of_its_own(tmp_path):
  # `--workdir .` wrote a run among a person's files, and `--workdir runs` among other runs.
  (tmp_path / "notes.txt").write_text("mine")
  (tmp_path / "data.npz").write_bytes(b"")
  with pytest.raises(rundir.UserError) as refused:
    rundir.check_run_workdir(tmp_path, example="teacher")
  assert str(refused.value) == (f"--workdir {tmp_path} is a folder of other files (data.npz, "
                                "notes.txt); a run needs a new or empty folder of its own, e.g. "
                                f"--workdir {tmp_path / 'teacher'}")
  runs = tmp_path / "runs"
  (runs / "student-cnn").mkdir(parents=True)
  (runs / "student-cnn" / rundir.RECIPE_FILE).write_text("{}")
  with pytest.raises(rundir.UserError, match=r"is a folder of runs \(student-cnn\), not a run"):
    rundir.check_run_workdir(runs, example="teacher")
  # The folder suggested is not taken: following the advice must not lead to --overwrite.
  (runs / "student-cnn-2").mkdir()
  with pytest.raises(rundir.UserError, match=f"e.g. --workdir {runs / 'student-cnn-3'}$"):
    rundir.check_run_workdir(runs, example="student-cnn")
  sweep = tmp_path / "sweep"
  sweep.mkdir()
  (sweep / rundir.SWEEP_FILE).write_text("{}")
  with pytest.raises(rundir.UserError, match=r"is a sweep folder \(`distill sweep`\); a run"):
    rundir.check_run_workdir(sweep, example="student-cnn")
  # A new, an empty or a run's own folder (finished or not, or what is left of one) is fine.
  leftover = tmp_path / "leftover"
  (leftover / rundir.TENSORBOARD_DIR).mkdir(parents=True)
  (leftover / rundir.LOCK_FILE).write_text("")
  for fine in (tmp_path / "new", leftover, runs / "student-cnn"):
    rundir.check_run_workdir(fine, example="teacher")


def test_an_empty_path_is_refused_before_it_means_the_current_folder(tmp_path):
  result = run_cli("teacher", "--workdir", "", "--steps", "1")
  assert result.exit_code == 2
  assert ("Invalid value for '--workdir' / '-w': an empty path (an unset shell variable?)"
          in result.output)


def test_one_command_at_a_time_writes_a_run_folder(tmp_path):
  import fcntl  # noqa: PLC0415

  workdir = tmp_path / "run"
  workdir.mkdir()
  # Another command's lock: flock locks of two open files conflict, even in one process.
  with open(workdir / rundir.LOCK_FILE, "a") as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(rundir.UserError, match=(
        f"^another distill command is writing into {workdir} now; wait for it to end, or give "
        "this one another --workdir$")):
      rundir.prepare_workdir(workdir, restart=True, overwrite=False)
    (workdir / "metrics.jsonl").write_text("theirs")
    assert (workdir / "metrics.jsonl").read_text() == "theirs"  # --restart cleared nothing

  @rundir.releases_workdirs
  def a_run_that_fails():
    rundir.prepare_workdir(workdir, restart=True, overwrite=False)  # theirs ended
    assert not (workdir / "metrics.jsonl").exists()
    with open(workdir / rundir.LOCK_FILE, "a") as other, pytest.raises(BlockingIOError):
      fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by this process now
    rundir.prepare_workdir(workdir, restart=False, overwrite=False)  # this process may again
    raise RuntimeError("diverged")

  with pytest.raises(RuntimeError):
    a_run_that_fails()
  with open(workdir / rundir.LOCK_FILE, "a") as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the run ends, however


def test_an_export_into_a_run_folder_waits_its_turn_too(tmp_path, tiny_digits_runs):
  # An export of the old teacher that ended after the teacher was retrained in its folder
  # left the old model's targets there.
  import fcntl  # noqa: PLC0415

  teacher = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher") / "teacher"
  before = (teacher / rundir.TARGETS_FILE).read_bytes()
  with open(teacher / rundir.LOCK_FILE, "a") as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a teacher retraining there
    result = run_cli("export", "--teacher", teacher, "--temperature", "3")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: another distill command is writing into {teacher} "
                                     "now; wait for it to end, or give this one another --out")
  assert (teacher / rundir.TARGETS_FILE).read_bytes() == before
  assert run_cli("export", "--teacher", teacher, "--temperature", "3").exit_code == 0
  with open(teacher / rundir.LOCK_FILE, "a") as other:
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # let go when the export ended

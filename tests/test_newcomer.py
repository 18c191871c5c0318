"""The walls a newcomer hits: relative paths, small data sets of one's own, piped output, runs
that differ only in how they were taught, the README's run-directory table."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
from conftest import TINY, copy_runs, run_cli, set_flags

from distill import compare, plots, rundir
from distill.compare import compare_runs, objective_label

# TINY without its batch sizes (the digits recipe's 64 are too large for the data below), and
# one dispatch of 5 steps.
TINY_BUT_BATCHES = set_flags([*(o for o in TINY if ".batch_size=" not in o), "teacher.steps=5",
                              "student.steps=5"])
# An MLP teacher and student: data of its own size is a step of its own to compile, which takes
# an MLP a second or two, the ViT teacher and the CNN student several each. What is checked here
# (paths, batch sizes, output) is the same for every model.
MLPS = ["--set", "teacher.model=mlp", "--set", "student.model=mlp"]


def _result_lines(output):
  return [line for line in output.splitlines() if "test accuracy" in line]


def test_compare_tells_apart_runs_that_differ_only_in_their_teaching(tmp_path,
                                                                     tiny_digits_runs):
  runs = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher", kd="student", dkd="student")
  path = runs / "dkd" / rundir.SUMMARY_FILE
  summary = json.loads(path.read_text())
  path.write_text(json.dumps({**summary, "method": "dkd", "teaching": "online",
                              "temperature": 4.0, "alpha": 0.5}))
  # Soft cross-entropy everywhere: no soft loss column to read past.
  assert "soft loss" not in compare_runs([runs / "teacher", runs / "kd", runs / "dkd"])
  path.write_text(json.dumps({**json.loads(path.read_text()), "soft_loss": "kl"}))
  table = compare_runs([runs / "teacher", runs / "kd", runs / "dkd"])
  header = table.splitlines()[0].replace("soft loss", "soft_loss").split()
  assert {"teaching", "method", "soft_loss", "T", "alpha"} <= set(header)
  rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:] if line.strip()}
  kd, dkd = rows[str(runs / "kd")], rows[str(runs / "dkd")]
  column = {name: header.index(name) - 1
            for name in ("teaching", "method", "soft_loss", "T", "alpha")}
  assert [kd[i] for i in column.values()] == ["targets", "kd", "soft_ce", "1", "1"]
  assert [dkd[i] for i in column.values()] == ["online", "dkd", "kl", "4", "0.5"]
  as_json = json.loads(compare_runs([runs / "dkd"], as_json=True))[0]
  assert (as_json["method"], as_json["teaching"], as_json["soft_loss"],
          as_json["temperature"]) == ("dkd", "online", "kl", 4)
  assert compare.run_label(as_json) == "student cnn (dkd, KL, online, T=4, alpha=0.5)"


def test_small_own_data_with_relative_paths_fails_once_then_works_from_anywhere(
    tmp_path, monkeypatch):
  typed_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
  (typed_in / "data").mkdir(parents=True)
  elsewhere.mkdir()
  rng = np.random.default_rng(0)
  np.savez(typed_in / "data" / "mine.npz", x=rng.integers(0, 256, (60, 8, 8), np.uint8),
           y=np.arange(60) % 10)
  monkeypatch.chdir(typed_in)
  teacher = ["teacher", "--recipe", "digits", "--dataset", "npz", "--data-dir", "data/mine.npz",
             "--workdir", "runs/teacher", *TINY_BUT_BATCHES, *MLPS]

  # One error names every size that does not fit, and the options that fix them all.
  refused = run_cli(*teacher)
  assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
  fixes = shlex.split(refused.stderr.split(": pass ", 1)[1])
  assert fixes == ["--set", "data.val_size=4", "--batch-size", "32", "--set",
                   "student.batch_size=32"]
  assert not Path("runs/teacher").exists()

  trained = run_cli(*teacher, *fixes)
  assert trained.exit_code == 0, trained.output
  # One result line (accuracy, training and wall time); piped output is never redrawn.
  assert len(_result_lines(trained.output)) == 1
  assert re.search(r"teacher test accuracy \S+ .*training [\d.]+s, wall [\d.]+s -> runs/teacher",
                   trained.output)
  assert "\r" not in trained.output and "train teacher: 100%" in trained.output

  # Everything the run recorded is absolute, so it works from another directory.
  recipe = json.loads(Path("runs/teacher/recipe.json").read_text())
  assert recipe["data"]["data_dir"] == str(typed_in / "data" / "mine.npz")
  targets = json.loads(Path("runs/teacher/targets.json").read_text())
  assert targets["teacher"]["dir"] == str(typed_in / "runs" / "teacher")

  monkeypatch.chdir(elsewhere)
  teacher_dir = "../project/runs/teacher"
  # The student inherits the fitted batch size: no second error.
  student = run_cli("student", "--teacher", teacher_dir, "--workdir", "student",
                    *TINY_BUT_BATCHES)
  assert student.exit_code == 0, student.output
  assert len(_result_lines(student.output)) == 1 and "\r" not in student.output
  summary = json.loads(Path("student/summary.json").read_text())
  assert summary["teacher_dir"] == str(typed_in / "runs" / "teacher")
  assert json.loads(Path("student/recipe.json").read_text())["teacher_dir"] == summary[
      "teacher_dir"]

  monkeypatch.chdir(tmp_path)
  compared = run_cli("compare", "project/runs/teacher", "elsewhere/student")
  assert compared.exit_code == 0 and "skipped" not in compared.output, compared.output
  # The student's report reads its data (data_dir) and its teacher (teacher_dir) as recorded.
  report = run_cli("report", "elsewhere/student", "--out", "report", "-q")
  assert report.exit_code == 0, report.output
  page = (tmp_path / "report" / "report.html").read_text()
  assert "No test predictions" not in page and "Top-1 agreement with the teacher" in page


def test_loss_figure_labels_the_objective_and_gives_validation_its_own_axis():
  records = [{"step": s, "loss": 4.0 - s / 10, "accuracy": 0.5, "val_loss": 2.0,
              "val_accuracy": 0.5} for s in (10, 20)]
  row = {"role": "student", "loss": "soft", "method": "kd", "teaching": "targets",
         "temperature": 2.0, "alpha": 1.0}
  figure = plots.training_curves_figure(records, title="s", init_loss=9.2, num_classes=10,
                                        objective=objective_label(row), init_loss_expected=9.21)
  train_axis, val_axis, accuracy_axis = figure.axes
  assert "kd, T²-scaled at T=2" in train_axis.get_ylabel()
  assert "cross-entropy" not in train_axis.get_ylabel()
  assert val_axis.get_ylabel().startswith("validation cross-entropy")
  assert accuracy_axis.get_ylabel() == "accuracy"
  assert objective_label({"role": "teacher"}) == "train loss (cross-entropy, hard labels)"


def test_a_run_of_one_log_line_draws_its_point_on_whole_steps():
  """A 20-step run logs once: its curves are single points, which a bare line does not draw."""
  records = [{"step": 20, "loss": 2.22, "accuracy": 0.575, "val_loss": 2.1, "val_accuracy": 0.6}]
  figure = plots.training_curves_figure(records, title="s", init_loss=2.3, num_classes=10)
  figure.canvas.draw()
  train_axis, _, accuracy_axis = figure.axes
  for axis, label in ((train_axis, "batch mean"), (accuracy_axis, "train (batches seen)")):
    line = next(line for line in axis.get_lines() if line.get_label() == label)
    assert line.get_marker() not in (None, "None", "", " "), label
    assert all(float(tick).is_integer() for tick in axis.get_xticks()), axis.get_xticks()


def test_readme_lists_every_file_a_run_writes():
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
  table = readme.split("## The run directory", 1)[1].split("\n## ", 1)[0]
  for name in rundir.RUN_OUTPUTS:
    assert f"`{name}" in table, name
  assert ".venv/bin/distill" not in readme.split("source .venv/bin/activate", 1)[1]

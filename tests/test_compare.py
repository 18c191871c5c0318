"""`distill compare`: which columns tell the listed runs apart."""

import json

from conftest import TINY_FLAGS, copy_runs, run_cli

from distill import compare, rundir


def _edit_summary(run_dir, **changes):
  path = run_dir / rundir.SUMMARY_FILE
  path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _markdown(run_dirs):
  """compare's Markdown table: its header, and each run's cells by column title."""
  header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")]
                      for line in compare.compare_runs(run_dirs, markdown=True).splitlines())
  return header, {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def test_compare_shows_steps_batch_and_seed_only_where_runs_of_a_role_differ(tmp_path,
                                                                             tiny_digits_runs):
  runs = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher", **{"teacher-300": "teacher"},
                   student="student", **{"student-seed1": "student"})
  _edit_summary(runs / "teacher-300", steps=300)
  _edit_summary(runs / "student-seed1", seed=1)
  teacher, teacher_300 = runs / "teacher", runs / "teacher-300"
  student, student_seed1 = runs / "student", runs / "student-seed1"

  # A teacher and its student differ by recipe (digits: 1,500 against 1,000 steps): the
  # table stays as it was.
  _edit_summary(student, steps=40, batch_size=16)
  header, _ = _markdown([teacher, student])
  assert header == ["run", "role", "model", "loss", "teaching", "method", "T", "alpha", "params",
                    "test acc", "agree", "test NLL", "ECE", "train s"]
  # Two teachers of 20 and 300 steps no longer look alike, and say which is which.
  header, rows = _markdown([teacher, teacher_300, student])
  assert "steps" in header and "seed" not in header and "batch" not in header, header
  assert [rows[str(run)]["steps"] for run in (teacher, teacher_300, student)] == ["20", "300",
                                                                                   "40"]
  # Students differing only by seed: the seed tells them apart.
  _edit_summary(student, steps=20, batch_size=32)
  header, rows = _markdown([teacher, student, student_seed1])
  assert "seed" in header and "steps" not in header, header
  assert [rows[str(run)]["seed"] for run in (student, student_seed1)] == ["0", "1"]
  _edit_summary(student_seed1, batch_size=1024)
  header, rows = _markdown([student, student_seed1])
  assert rows[str(student_seed1)]["batch"] == "1,024", header
  # --json gives all three for every run, shown or not.
  for row in json.loads(compare.compare_runs([teacher, student], as_json=True)):
    assert (row["steps"], row["batch_size"], row["seed"]) == (20, 32, 0), row
  # A teacher imported from elsewhere was not trained here: its summary's 0 steps are no
  # difference from a trained teacher's.
  imported = {"role": "teacher", "imported_from": "/models/vit", "steps": 0, "seed": 0}
  assert compare.row_value(imported, "steps") is None
  assert not compare.option_used([imported, {"role": "teacher", "steps": 20}], "steps")


def test_compare_names_the_teacher_a_hard_label_students_agreement_is_against(
    tmp_path, tiny_digits_runs):
  runs = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher", **{"teacher-b": "teacher"},
                   soft="student", **{"soft-b": "student"})
  _edit_summary(runs / "soft", teacher_dir=str(runs / "teacher"))
  _edit_summary(runs / "soft-b", teacher_dir=str(runs / "teacher-b"))
  hard = runs / "hard-b"
  # An MLP, as test_report's and test_labelled's hard-label students (the model is not what is
  # checked): its step compiles in a fraction of a CNN's time, and not again in a session that
  # trained one of theirs.
  result = run_cli("student", "--teacher", runs / "teacher-b", "--loss", "hard", "--model",
                   "mlp", "--workdir", hard, "-q", *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  every = [runs / "teacher", runs / "teacher-b", runs / "soft", runs / "soft-b", hard]
  header, rows = _markdown(every)
  assert "teacher" in header, header
  assert {run: row["teacher"] for run, row in rows.items()} == {
      str(runs / "teacher"): "-", str(runs / "teacher-b"): "-", str(runs / "soft"): "teacher",
      str(runs / "soft-b"): "teacher-b", str(hard): "teacher-b"}
  # It learned from the labels, and its row still says so.
  assert (rows[str(hard)]["loss"], rows[str(hard)]["teaching"], rows[str(hard)]["method"]) == (
      "hard", "-", "-")
  as_json = {row["run"]: row for row in json.loads(compare.compare_runs(every, as_json=True))}
  assert as_json[str(hard)]["teacher"] == "teacher-b"
  # Beside another teacher's student alone, the hard student's agreement is against another
  # teacher: the column says so.
  header, rows = _markdown([runs / "teacher", runs / "soft", hard])
  assert rows[str(hard)]["teacher"] == "teacher-b" and rows[str(runs / "soft")]["teacher"] == (
      "teacher"), header


def test_a_folder_of_runs_is_told_to_give_the_runs_in_it(tmp_path, tiny_digits_runs):
  """`distill compare runs/digits` meant the runs inside; a --teacher of that folder is told
  what it is, without compare's advice."""
  folder = copy_runs(tiny_digits_runs, tmp_path / "digits", teacher="teacher", cnn="student")
  result = run_cli("compare", folder)
  assert result.exit_code == 2
  assert (f"{folder} is a folder of runs (cnn, teacher), not a run: give them, e.g. "
          f"{folder / '*'}") in " ".join(result.stderr.split())
  result = run_cli("student", "--teacher", folder, "-w", tmp_path / "s", "-q", *TINY_FLAGS)
  assert result.exit_code == 2
  assert (f"is a folder of runs (cnn, teacher), not a run; give the teacher in it: --teacher "
          f"{folder / 'teacher'}") in " ".join(result.stderr.split())


def test_json_and_markdown_together_are_refused(tiny_digits_runs):
  result = run_cli("compare", tiny_digits_runs / "teacher", "--json", "--markdown")
  assert result.exit_code == 2
  assert result.stderr.strip() == ("error: --json and --markdown are two formats of the output: "
                                   "give one")


def _edit_recipe(run_dir, role, **changes):
  path = run_dir / rundir.RECIPE_FILE
  recipe = json.loads(path.read_text())
  recipe[role].update(changes)
  path.write_text(json.dumps(recipe))


def test_settings_the_table_does_not_show_are_named_where_runs_of_a_role_differ(
    tmp_path, tiny_digits_runs):
  # A hard-label twin trained with another warm-up sat beside its soft student as a fair pair.
  runs = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher", student="student",
                   twin="student", other="student")
  teacher, student, twin, other = (runs / name for name in ("teacher", "student", "twin",
                                                            "other"))
  _edit_recipe(twin, "student", warmup_steps=300, learning_rate=0.01)
  _edit_recipe(other, "student", model="mlp", eval_every=7, temperature=4.0)
  text = compare.compare_runs([teacher, student, twin, other])
  assert text.splitlines()[-1] == ("the runs differ in settings the table does not show: "
                                   "student.learning_rate: 0.002 (student, other), 0.01 "
                                   "(twin); student.warmup_steps: 2 (student, other), 300 (twin)")
  # The model, cadences and what the table shows are no such difference.
  assert "differ in settings" not in compare.compare_runs([teacher, student, other])
  # Two runs of one model that differ in its own table (rows alike but for the accuracy) are
  # told apart by it; a run of another model, which reads no such table, is not named in it.
  narrow = copy_runs(tiny_digits_runs, tmp_path, narrow="student") / "narrow"
  recipe = json.loads((narrow / rundir.RECIPE_FILE).read_text())
  recipe["student"]["cnn"]["head_init_scale"] = 0.5
  (narrow / rundir.RECIPE_FILE).write_text(json.dumps(recipe))
  assert compare.compare_runs([teacher, student, narrow, other]).splitlines()[-1] == (
      "the runs differ in settings the table does not show: student.cnn.head_init_scale: 0 "
      "(student), 0.5 (narrow)")
  # A shared section's key is named once, over both roles' runs; the data set's keys are the
  # dataset column's.
  shared = copy_runs(runs, tmp_path / "shared", teacher="teacher", student="student")
  for run in (shared / "teacher", shared / "student"):
    _edit_recipe(run, "data", val_size=10, data_dir="elsewhere")
  assert compare.compare_runs([teacher, student, shared / "teacher", shared / "student"]
                              ).splitlines()[-1] == (
      "the runs differ in settings the table does not show: data.val_size: 150 "
      f"({tmp_path.name}/teacher, {tmp_path.name}/student), 10 (shared/teacher, shared/student)")
  # The report says it under its table too (of the two students alone: each run in a report
  # costs seconds of figures).
  report = run_cli("report", student, twin, "--out", tmp_path / "report", "-q")
  assert report.exit_code == 0, report.output
  assert ("student.warmup_steps: 2 (student), 300 (twin)" in
          (tmp_path / "report" / "report.html").read_text())
  # A damaged recipe.json costs the note that run, not the comparison.
  (twin / rundir.RECIPE_FILE).write_text("{damaged")
  assert "differ in settings" not in compare.compare_runs([teacher, student, twin])

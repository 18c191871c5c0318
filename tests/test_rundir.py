"""How run folders are described: what `compare` and a refused --teacher say a folder is."""

import json

from conftest import run_cli

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

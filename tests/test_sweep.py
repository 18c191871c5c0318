"""`distill sweep`: several students against one teacher, over seeds, on tiny digits."""

import json

import numpy as np
import pytest
from conftest import copy_runs, run_cli

from distill.sweep import aggregate, format_table, plan_runs

# 2 models x (hard, targets) x 2 seeds = 8 runs of 10 steps each.
SWEEP = ["--model", "mlp", "--model", "linear", "--mode", "hard", "--mode", "targets",
         "--seed", "0", "--seed", "1", "--steps", "10", "-q"]
RUN_NAMES = [f"{model}-{mode}-s{seed}" for model in ("mlp", "linear")
             for mode in ("hard", "targets") for seed in (0, 1)]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_digits_runs):
  root = copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("sweep"), teacher="teacher")
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", root / "sweep", *SWEEP)
  assert result.exit_code == 0, result.output
  return root, result


def _summaries(out, names):
  return [json.loads((out / name / "summary.json").read_text()) for name in names]


def test_sweep_trains_every_run_and_writes_the_table(swept):
  root, result = swept
  out = root / "sweep"
  assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(RUN_NAMES)
  for name, summary in zip(RUN_NAMES, _summaries(out, RUN_NAMES), strict=True):
    assert summary["steps"] == 10, name
    assert summary["loss"] == ("hard" if "-hard-" in name else "soft")
    assert summary["seed"] == int(name[-1])
  table = (out / "sweep.md").read_text()
  assert table.startswith("| student | mode |")
  rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
  assert [r.split(" | ")[0:2] for r in rows] == [
      ["| teacher (vit)", "-"], ["| mlp", "hard"], ["| mlp", "targets"],
      ["| linear", "hard"], ["| linear", "targets"]]
  assert " ± " in rows[1] and "baseline" in rows[1]
  assert table.splitlines()[0] in result.stdout


def test_means_and_stds_are_numpys_over_the_runs(swept):
  root, _ = swept
  out = root / "sweep"
  saved = json.loads((out / "sweep.json").read_text())
  assert saved["settings"]["seeds"] == [0, 1] and len(saved["runs"]) == 8
  teacher = json.loads((root / "teacher" / "summary.json").read_text())
  assert saved["rows"][0]["role"] == "teacher"
  assert saved["rows"][0]["test_accuracy_mean"] == teacher["test_accuracy"]
  for row in saved["rows"][1:]:
    summaries = _summaries(out, [f"{row['model']}-{row['mode']}-s{s}" for s in (0, 1)])
    accuracies = [s["test_accuracy"] for s in summaries]
    assert row["n"] == 2 and row["params"] == summaries[0]["params"]
    assert row["test_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert row["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1), abs=1e-12)
    assert row["agreement_mean"] == pytest.approx(
        np.mean([s["agreement_with_teacher"] for s in summaries]), abs=1e-12)
    assert row["soft_loss"] == (None if row["mode"] == "hard" else "soft_ce")


def test_rerun_keeps_finished_runs(swept):
  root, _ = swept
  out = root / "sweep"
  before = {name: (out / name / "summary.json").stat().st_mtime_ns for name in RUN_NAMES}
  rows = json.loads((out / "sweep.json").read_text())["rows"]
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", out,
                *[a for a in SWEEP if a != "-q"])
  assert result.exit_code == 0, result.output
  assert result.stderr.count("same recipe, kept") == 8 and "[8/8]" in result.stderr
  assert {name: (out / name / "summary.json").stat().st_mtime_ns for name in RUN_NAMES} == before
  assert json.loads((out / "sweep.json").read_text())["rows"] == rows


def test_a_run_made_with_another_recipe_needs_overwrite(swept, tmp_path):
  root, _ = swept
  one = ["--teacher", root / "teacher", "--out", tmp_path, "--model", "linear", "--mode", "hard",
         "--seed", "0", "-q"]
  assert run_cli("sweep", *one, "--steps", "10").exit_code == 0
  refused = run_cli("sweep", *one, "--steps", "5")
  assert refused.exit_code == 2 and "another recipe" in refused.stderr
  assert "--overwrite" in refused.stderr
  assert json.loads((tmp_path / "linear-hard-s0" / "summary.json").read_text())["steps"] == 10
  assert run_cli("sweep", *one, "--steps", "5", "--overwrite").exit_code == 0
  assert json.loads((tmp_path / "linear-hard-s0" / "summary.json").read_text())["steps"] == 5


@pytest.mark.parametrize("args, message", [
    (["--mode", "soft"], "unknown mode 'soft'; valid: hard, targets, online, views"),
    (["--model", "resnet"], "unknown model 'resnet'; valid: cnn, linear, mlp, vit"),
    (["--soft-loss", "mse"], "unknown soft loss 'mse'; valid: soft_ce, kl"),
    (["--set", "student.model=mlp"], "use --model instead"),
    (["--set", "student.lr=1"], "unknown recipe key 'student.lr'"),
])
def test_bad_axis_values_are_one_line_errors(swept, tmp_path, args, message):
  root, _ = swept
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", tmp_path / "out", *args)
  assert result.exit_code == 2, result.output
  assert message in result.stderr
  assert "Traceback" not in result.output
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_plan_names_the_soft_loss_only_when_several_are_swept():
  one = [run["name"] for run in plan_runs(["cnn"], ["hard", "targets"], ["kl"], [0])]
  assert one == ["cnn-hard-s0", "cnn-targets-s0"]
  two = [run["name"] for run in plan_runs(["cnn"], ["hard", "targets", "online"],
                                          ["soft_ce", "kl"], [3])]
  assert two == ["cnn-hard-s3", "cnn-targets-soft_ce-s3", "cnn-targets-kl-s3",
                 "cnn-online-soft_ce-s3", "cnn-online-kl-s3"]


def _fake(model, mode, accuracies, soft_loss="soft_ce", params=100):
  return [{"model": model, "mode": mode, "soft_loss": None if mode == "hard" else soft_loss,
           "seed": seed, "summary": {"params": params, "test_accuracy": acc,
                                     "agreement_with_teacher": 0.5, "train_seconds": 2.0}}
          for seed, acc in enumerate(accuracies)]


def test_gap_closed_arithmetic():
  teacher = {"model": "vit", "params": 1000, "test_accuracy": 0.90, "train_seconds": 60.0}
  runs = (_fake("cnn", "hard", [0.80, 0.82]) + _fake("cnn", "targets", [0.85, 0.87])
          + _fake("cnn", "targets", [0.79], soft_loss="kl")
          + _fake("mlp", "targets", [0.88, 0.86])  # no hard baseline for mlp
          + _fake("linear", "hard", [0.91]) + _fake("linear", "targets", [0.92]))  # beats teacher
  rows = {(r["model"], r["mode"], r["soft_loss"]): r for r in aggregate(runs, teacher)}
  assert rows[("vit", None, None)]["role"] == "teacher"
  assert rows[("cnn", "targets", "soft_ce")]["gap_closed"] == pytest.approx(
      (0.86 - 0.81) / (0.90 - 0.81))
  assert rows[("cnn", "targets", "kl")]["gap_closed"] == pytest.approx((0.79 - 0.81) / 0.09)
  assert rows[("cnn", "targets", "kl")]["test_accuracy_std"] == 0.0
  assert rows[("cnn", "hard", None)]["gap_closed"] is None
  assert rows[("cnn", "hard", None)]["test_accuracy_std"] == pytest.approx(
      np.std([0.80, 0.82], ddof=1))
  assert rows[("mlp", "targets", "soft_ce")]["gap_closed"] is None
  assert rows[("linear", "targets", "soft_ce")]["gap_closed"] is None
  table = format_table(list(rows.values()))
  assert "| cnn | targets | soft_ce | 2 | 100 | 86.00 ± 1.41 | 50.00 | 56% | 2.0 |" in table
  assert "| teacher (vit) | - | - | - | 1,000 | 90.00 | - | - | 60.0 |" in table

"""`distill sweep`: several students against one teacher, over seeds, on tiny digits."""

import concurrent.futures
import contextlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_runs, logged, process_env, run_cli, set_flags
from scipy import stats as scipy_stats
from test_workers import children, running, wait_until

from distill import compare, loop, report, sweep_results, workers, workflow
from distill.errors import UserError
from distill.student_teaching import check_sweep_teaching
from distill.sweep import plan_runs
from distill.sweep_results import (
  aggregate,
  format_paired,
  format_table,
  gap_note,
  headline,
  verdict_sentence,
)

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
  markdown = (out / "sweep.md").read_text()
  title, header, table, *gap, _, paired_title, _, paired = markdown.strip().split("\n\n")
  # Under the table, a line on why gap closed reads '-' where it does (a tiny teacher may
  # trail its students' hard-label baselines).
  assert gap == [note for note in [gap_note(json.loads((out / "sweep.json").read_text())["rows"])]
                 if note]
  assert title == (f"# Sweep against teacher `{root / 'teacher'}`, seeds 0, 1 "
                   "(--set student.steps=10)")
  assert "after its last training step (never a best epoch or checkpoint)" in header
  assert table.startswith("| student | mode | method |")
  rows = table.splitlines()[2:]
  assert [r.split(" | ")[0:3] for r in rows] == [
      ["| teacher (vit)", "-", "-"], ["| mlp", "hard", "-"], ["| mlp", "targets", "kd"],
      ["| linear", "hard", "-"], ["| linear", "targets", "kd"]]
  assert " ± " in rows[1] and "baseline" in rows[1]
  assert table.splitlines()[0] in result.stdout
  assert paired_title == "## Paired differences"
  assert [r.split(" | ")[0:6] for r in paired.splitlines()[2:]] == [
      ["| mlp", "targets", "kd", "soft_ce", "hard", "2"],
      ["| linear", "targets", "kd", "soft_ce", "hard", "2"]]
  assert all(" pts over hard (2 seeds" in r for r in paired.splitlines()[2:])
  assert paired.splitlines()[0] in result.stdout


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
    assert row["method"] == (None if row["mode"] == "hard" else "kd")
  assert [run["method"] for run in saved["runs"]] == [None, None, "kd", "kd"] * 2


def test_paired_rows_are_the_per_seed_differences_with_the_hard_run(swept):
  root, _ = swept
  out = root / "sweep"
  saved = json.loads((out / "sweep.json").read_text())
  for row in saved["rows"]:
    if row["mode"] != "targets":
      assert row["paired"] == []
      continue
    [paired] = row["paired"]
    variant, hard = (np.array([s["test_accuracy"] for s in _summaries(
        out, [f"{row['model']}-{mode}-s{seed}" for seed in (0, 1)])])
        for mode in ("targets", "hard"))
    diffs = variant - hard
    assert paired["baseline"] == "hard" and paired["n"] == 2 and paired["seeds"] == [0, 1]
    assert paired["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert paired["std_diff"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-12)
    if abs(diffs[0] - diffs[1]) > 1e-12:
      assert paired["t_p"] == pytest.approx(scipy_stats.ttest_rel(variant, hard).pvalue)
    else:
      assert paired["t_p"] is None
    assert paired["verdict"].startswith(f"{100 * diffs.mean():+.2f} ± ")


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
  assert "left out" not in result.stderr


def test_a_rerun_with_fewer_runs_says_what_its_table_leaves_out(swept, tmp_path):
  root, _ = swept
  out = shutil.copytree(root / "sweep", tmp_path / "sweep")
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", out, "--model", "mlp",
                   "--mode", "hard", "--seed", "0", "--steps", "10")
  assert result.exit_code == 0, result.output
  assert ("note: sweep.md and sweep.json cover this command's 1 run; 7 other finished runs "
          f"in {out} (linear-hard-s0, linear-hard-s1, linear-targets-s0, linear-targets-s1, "
          "mlp-hard-s1 and 2 more) are left out: give their --model, --mode, --method, "
          "--soft-loss and --seed values too") in " ".join(result.stderr.split())


def test_teacher_overrides_are_noted_as_changing_no_run(swept, tmp_path):
  root, _ = swept
  out = shutil.copytree(root / "sweep", tmp_path / "sweep")
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", out, "--model", "mlp",
                   "--mode", "hard", "--seed", "0", "--steps", "10", "--set", "teacher.steps=3")
  assert result.exit_code == 0, result.output
  assert (f"note: teacher.steps changes nothing for a student: its teacher is the run in "
          f"{root / 'teacher'}") in result.stderr
  assert "same recipe, kept" in result.stderr


def test_a_run_made_with_another_recipe_needs_overwrite(swept, tmp_path):
  root, _ = swept
  one = ["--teacher", root / "teacher", "--out", tmp_path, "--model", "linear", "--mode", "hard",
         "--seed", "0", "-q"]
  assert run_cli("sweep", *one, "--steps", "10").exit_code == 0
  refused = run_cli("sweep", *one, "--steps", "5")
  assert refused.exit_code == 2 and "another recipe" in refused.stderr
  assert "(linear-hard-s0: student.steps: 10 -> 5)" in refused.stderr  # what changed
  assert "--overwrite" in refused.stderr
  assert json.loads((tmp_path / "linear-hard-s0" / "summary.json").read_text())["steps"] == 10
  assert run_cli("sweep", *one, "--steps", "5", "--overwrite").exit_code == 0
  assert json.loads((tmp_path / "linear-hard-s0" / "summary.json").read_text())["steps"] == 5


def test_a_run_taught_by_another_teacher_needs_overwrite(swept, tmp_path):
  # Same recipe, but the teacher folder was retrained since: the run is not reused.
  root, _ = swept
  one = ["--teacher", root / "teacher", "--out", tmp_path, "--model", "linear", "--mode",
         "targets", "--seed", "0", "--steps", "10", "-q"]
  assert run_cli("sweep", *one).exit_code == 0
  summary_path = tmp_path / "linear-targets-s0" / "summary.json"
  summary = json.loads(summary_path.read_text())
  summary_path.write_text(json.dumps({**summary, "teacher_params_sha256": "0" * 64}))
  refused = run_cli("sweep", *one)
  assert refused.exit_code == 2 and "another recipe or teacher" in refused.stderr
  assert "(linear-targets-s0: the same recipe, taught by another teacher)" in refused.stderr
  assert run_cli("sweep", *one, "--overwrite").exit_code == 0
  assert json.loads(summary_path.read_text())["teacher_params_sha256"] == summary[
      "teacher_params_sha256"]


@pytest.mark.parametrize("args, message", [
    (["--mode", "soft"], "unknown mode 'soft'; valid: hard, targets, online, views"),
    (["--model", "resnet"], "unknown model 'resnet'; valid: cnn, linear, mlp, vit"),
    (["--soft-loss", "mse"], "unknown soft loss 'mse'; valid: soft_ce, kl"),
    (["--set", "student.model=mlp"], "use --model instead"),
    (["--method", "fitnet"], "unknown method 'fitnet'; valid: kd, dkd, dist, token, hint"),
    (["--set", "student.method=dkd"], "use --method instead"),
    (["--method", "token", "--mode", "targets", "--model", "mlp"],
     "mlp-targets-token-s0: student.method=token needs a ViT student"),
    (["--set", "student.lr=1"], "unknown recipe key 'student.lr'"),
    (["--mode", "hard", "--soft-loss", "kl"], "--soft-loss kl changes no run: none of the sweep "
     "reads a soft loss"),
    (["--mode", "hard", "--method", "dkd"], "--method dkd changes no run: every run of the sweep "
     "learns from hard labels"),
    # Found before the hard run trains, not when the views run starts.
    (["--mode", "hard", "--mode", "views"], "targets.npz holds no augmented views; export them "
     "with `distill export --teacher"),
])
def test_bad_axis_values_are_one_line_errors(swept, tmp_path, args, message):
  root, _ = swept
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", tmp_path / "out", *args)
  assert result.exit_code == 2, result.output
  assert message in result.stderr
  assert "Traceback" not in result.output
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_a_mode_the_teacher_cannot_teach_is_refused_before_any_run_trains(swept, tmp_path):
  root, _ = swept
  streamed = copy_runs(root, tmp_path, teacher="teacher") / "teacher"
  recipe = json.loads((streamed / "recipe.json").read_text())
  recipe["data"]["dataset"] = "stream"
  (streamed / "recipe.json").write_text(json.dumps(recipe))
  result = run_cli("sweep", "--teacher", streamed, "--out", tmp_path / "out", "--mode", "hard",
                   "--mode", "views", "--steps", "10")
  assert result.exit_code == 2 and not (tmp_path / "out").exists()
  assert result.stderr.strip() == (f"error: --mode views: {streamed} learned from streamed data, "
                                   "and views need the data set in memory; sweep --mode targets "
                                   "or online instead")
  # An imported teacher that cannot run inside the student's step (logits from elsewhere).
  (streamed / "imported.json").write_text(json.dumps({"kind": "logits",
                                                      "can_teach_online": False}))
  with pytest.raises(UserError, match=r"^--mode online: .* is an imported logits teacher, which "
                                      r"teaches by targets only .*; sweep --mode targets instead$"):
    check_sweep_teaching(streamed, {"hard", "online"})


def test_a_sweep_may_not_write_into_its_teachers_folder(swept):
  root, _ = swept
  before = sorted(path.name for path in (root / "teacher").iterdir())
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", root / "teacher")
  assert result.exit_code == 2, result.output
  assert (f"error: --out {root / 'teacher'} is the teacher's own folder; give the sweep a folder "
          f"of its own, e.g. --out {root / 'sweep'}") in result.stderr
  assert sorted(path.name for path in (root / "teacher").iterdir()) == before


def test_plan_names_the_soft_loss_unless_it_is_soft_ce():
  # So a sweep that adds --soft-loss kl later reuses its soft_ce runs, and a kl run never takes
  # the name a soft_ce run has.
  one = [run["name"] for run in plan_runs(["cnn"], ["hard", "targets"], ["kl"], [0])]
  assert one == ["cnn-hard-s0", "cnn-targets-kl-s0"]
  two = [run["name"] for run in plan_runs(["cnn"], ["hard", "targets", "online"],
                                          ["soft_ce", "kl"], [3])]
  assert two == ["cnn-hard-s3", "cnn-targets-s3", "cnn-targets-kl-s3", "cnn-online-s3",
                 "cnn-online-kl-s3"]


def test_methods_multiply_every_mode_but_hard():
  runs = plan_runs(["cnn"], ["hard", "targets", "online"], ["kl"], [0, 1], ["kd", "dkd", "dist"])
  assert [run["name"] for run in runs] == [
      "cnn-hard-s0", "cnn-hard-s1",
      "cnn-targets-kl-s0", "cnn-targets-kl-s1", "cnn-targets-dkd-s0", "cnn-targets-dkd-s1",
      "cnn-targets-dist-s0", "cnn-targets-dist-s1",
      "cnn-online-kl-s0", "cnn-online-kl-s1", "cnn-online-dkd-s0", "cnn-online-dkd-s1",
      "cnn-online-dist-s0", "cnn-online-dist-s1"]
  assert [run["method"] for run in runs[:4]] == [None, None, "kd", "kd"]
  # The soft loss multiplies only the methods that read one (kd, hint): a dkd or dist run
  # takes none, so it is not trained twice under two names.
  assert [run["soft_loss"] for run in runs] == [None] * 2 + (["kl"] * 2 + [None] * 4) * 2
  runs = plan_runs(["mlp"], ["hard", "targets"], ["kl", "soft_ce"], [0], ["kd", "dkd"])
  assert [run["name"] for run in runs] == [
      "mlp-hard-s0", "mlp-targets-kl-s0", "mlp-targets-s0", "mlp-targets-dkd-s0"]


def test_hint_runs_online_whatever_the_modes_say():
  # Hints match the teacher's inner layer, which exported targets do not hold: the
  # sweep runs them online, once, beside kd on the modes asked for.
  runs = plan_runs(["cnn"], ["hard", "targets", "views"], ["soft_ce"], [0], ["kd", "hint"])
  assert [(run["name"], run["mode"]) for run in runs] == [
      ("cnn-hard-s0", "hard"), ("cnn-targets-s0", "targets"), ("cnn-online-hint-s0", "online"),
      ("cnn-views-s0", "views")]


def _fake(model, mode, accuracies, soft_loss="soft_ce", params=100, method="kd"):
  return [{"model": model, "mode": mode, "soft_loss": None if mode == "hard" else soft_loss,
           "method": None if mode == "hard" else method,
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
  assert "| cnn | targets | kd | soft_ce | 2 | 100 | 86.00 ± 1.41 | 50.00 | 56% | 2.00 |" in table
  assert "| teacher (vit) | - | - | - | - | 1,000 | 90.00 | - | - | 60.0 |" in table
  # A share a hair below nothing reads 0%, never '-0%'.
  level = aggregate(_fake("cnn", "hard", [0.80, 0.82]) + _fake("cnn", "targets", [0.8099, 0.81]),
                    teacher)
  assert "| 0% |" in format_table(level)


def test_an_empty_gap_closed_says_why_under_the_table():
  """Where the hard-label baseline beats the teacher every taught row's gap closed is '-': a
  line under the table (printed, in sweep.md and in the report) says why, and so it does for
  a model without a hard run; a teacher ahead of every baseline needs no such line."""
  teacher = {"model": "vit", "params": 1000, "test_accuracy": 0.64}
  rows = aggregate(_fake("cnn", "hard", [0.73, 0.71]) + _fake("cnn", "targets", [0.46, 0.47]),
                   teacher)
  table = format_table(rows).split("\n\n")
  assert table[0].splitlines()[-1].endswith("| 50.00 | - | 2.00 |")
  assert table[1:] == ["gap closed is '-': cnn (72.00%) on hard labels already reaches the "
                       "teacher (64.00%), so there is no gap to close."]
  assert ("cnn (72.00%) on hard labels already reaches the teacher (64.00%)"
          in report._sweep_section(Path("runs/sweep"), {"rows": rows}))
  # A teacher within the baseline's seed spread: a share of that gap would read 200% or -50%.
  close = aggregate(_fake("cnn", "hard", [0.9833, 0.9805]) + _fake("cnn", "targets",
                                                                   [0.9861, 0.9861]),
                    {"model": "vit", "params": 1000, "test_accuracy": 0.9833})
  assert close[-1]["gap_closed"] is None
  assert gap_note(close) == ("gap closed is '-': the teacher (98.33%) is within the seed spread "
                             "of cnn (98.19 ± 0.20%) on hard labels, too small a gap to measure "
                             "a share of.")
  no_hard = aggregate(_fake("cnn", "hard", [0.73]) + _fake("cnn", "targets", [0.46])
                      + _fake("mlp", "targets", [0.5]), teacher)
  assert gap_note(no_hard).endswith(
      "gap to close; mlp has no hard-label run to measure it from (add --mode hard).")
  behind = aggregate(_fake("cnn", "hard", [0.5]) + _fake("cnn", "targets", [0.55]), teacher)
  assert gap_note(behind) is None and "\n\n" not in format_table(behind)


def test_paired_baselines_per_variant():
  teacher = {"model": "vit", "params": 1000, "test_accuracy": 0.90}
  runs = (_fake("cnn", "hard", [0.80, 0.81, 0.82]) + _fake("cnn", "targets", [0.83, 0.85, 0.84])
          + _fake("cnn", "targets", [0.84, 0.86, 0.85], method="dkd")
          + _fake("cnn", "online", [0.86, 0.85, 0.84], method="hint")  # no kd run online
          + _fake("mlp", "targets", [0.7, 0.7], method="dist"))  # no baseline at all
  rows = {(r["model"], r["mode"], r["method"]): r for r in aggregate(runs, teacher)}
  assert rows[("cnn", "hard", None)]["paired"] == []
  assert [p["baseline"] for p in rows[("cnn", "targets", "kd")]["paired"]] == ["hard"]
  hard, kd = rows[("cnn", "targets", "dkd")]["paired"]
  assert (hard["baseline"], kd["baseline"]) == ("hard", "kd")
  assert hard["mean_diff"] == pytest.approx(0.04) and kd["mean_diff"] == pytest.approx(0.01)
  assert kd["t_p"] is None and kd["sign_p"] == pytest.approx(0.25)  # +1 point on every seed
  assert hard["t_p"] == pytest.approx(scipy_stats.ttest_rel([0.84, 0.86, 0.85],
                                                            [0.80, 0.81, 0.82]).pvalue)
  assert hard["verdict"] == (f"+4.00 ± 1.00 pts over hard (3 seeds, t-test p = "
                             f"{hard['t_p']:.3g}): a gain beyond seed noise")
  assert [p["baseline"] for p in rows[("cnn", "online", "hint")]["paired"]] == ["hard",
                                                                                 "kd targets"]
  # With kd online there too, a hint still meets kd on targets: both un-augmented.
  online = aggregate(runs + _fake("cnn", "online", [0.70, 0.71, 0.72]), teacher)
  (hint,) = [row for row in online if row["method"] == "hint"]
  assert [p["baseline"] for p in hint["paired"]] == ["hard", "kd targets"]
  assert rows[("mlp", "targets", "dist")]["paired"] == []
  lines = format_paired(list(rows.values())).splitlines()
  assert lines[0] == ("| student | mode | method | soft loss | vs | seeds | diff pts | t-test p "
                      "| sign p | verdict |")
  assert lines[4] == ("| cnn | targets | dkd | soft_ce | kd | 3 | +1.00 ± 0.00 | - | 0.25 | "
                      "+1.00 ± 0.00 pts over kd (3 seeds, the same difference on every seed, "
                      "sign test p = 0.25): too few seeds to tell |")
  assert len(lines) == 2 + 5
  assert format_paired(aggregate(_fake("cnn", "targets", [0.8]), teacher)) == ""


def test_the_verdict_sentence_and_headline_report_every_taught_row():
  teacher = {"model": "vit", "params": 1000, "test_accuracy": 0.90}
  runs = (_fake("mlp", "hard", [0.80, 0.81, 0.82]) + _fake("mlp", "targets", [0.83, 0.85, 0.84])
          + _fake("vit", "hard", [0.70, 0.72, 0.71]) + _fake("vit", "targets", [0.69, 0.73, 0.70])
          + _fake("linear", "hard", [0.80, 0.80, 0.80])
          + _fake("linear", "targets", [0.78, 0.77, 0.785]))
  rows = aggregate(runs, teacher)
  p_mlp = scipy_stats.ttest_rel([0.83, 0.85, 0.84], [0.80, 0.81, 0.82]).pvalue
  p_linear = scipy_stats.ttest_rel([0.78, 0.77, 0.785], [0.80, 0.80, 0.80]).pvalue
  p_vit = scipy_stats.ttest_rel([0.69, 0.73, 0.70], [0.70, 0.72, 0.71]).pvalue
  assert p_mlp < 0.05 and p_linear < 0.05
  assert verdict_sentence(rows) == (
      "Against the same students on hard labels (same seeds, 3 each), the teacher gained mlp "
      f"+3.00 points, beyond seed noise (paired p <= {p_mlp:.3g}); and lost linear -2.17 points, "
      f"beyond seed noise (paired p <= {p_linear:.3g}); and changed vit -0.33 points, within "
      f"seed noise (paired t-test p = {p_vit:.3g}).")
  # Why a change is not called: no seed differs, or one seed (or one difference) is too few.
  level = aggregate(_fake("mlp", "hard", [0.80, 0.81]) + _fake("mlp", "targets", [0.80, 0.81])
                    + _fake("cnn", "hard", [0.80, 0.81]) + _fake("cnn", "targets", [0.81, 0.82]),
                    teacher)
  assert verdict_sentence(level) == (
      "Against the same students on hard labels (same seeds, 2 each), the teacher changed mlp "
      "+0.00 points: no difference on any seed; and changed cnn +1.00 points: too few seeds to "
      "tell.")
  assert [line.split(":")[0] for line in headline(rows)] == [
      "mlp, kd on targets", "vit, kd on targets", "linear, kd on targets"]
  assert verdict_sentence(aggregate(_fake("mlp", "targets", [0.8]), teacher)) is None
  # Two soft losses of one mode are told apart by name.
  losses = aggregate(_fake("mlp", "hard", [0.80, 0.81]) + _fake("mlp", "targets", [0.82, 0.84])
                     + _fake("mlp", "targets", [0.83, 0.83], soft_loss="kl"), teacher)
  assert "mlp (kd on targets) +2.50" in verdict_sentence(losses)
  assert "mlp (kd on targets, kl) +2.50" in verdict_sentence(losses)
  hinted = aggregate(runs + _fake("mlp", "online", [0.84, 0.85, 0.86], method="hint"), teacher)
  assert "mlp, hint online: " in "\n".join(headline(hinted))
  assert "mlp (hint online) +4.00" in verdict_sentence(hinted)


def test_two_sweeps_are_paired_by_seed_row_by_row():
  """Two teachers or two settings (-T 2 against -T 4), each a sweep: compare pairs their taught
  rows seed by seed, as a sweep pairs its own; hard-label rows, which no teacher changes, not."""
  teacher = {"model": "vit", "params": 1000, "test_accuracy": 0.90}
  low = {"settings": {"overrides": ["student.temperature=2"]},
         "rows": aggregate(_fake("mlp", "hard", [0.80, 0.81])
                           + _fake("mlp", "targets", [0.82, 0.83]), teacher)}
  high = {"settings": {"overrides": ["student.temperature=4"]},
          "rows": aggregate(_fake("mlp", "hard", [0.80, 0.81])
                            + _fake("mlp", "targets", [0.84, 0.86])
                            + _fake("cnn", "targets", [0.7, 0.7]), teacher)}
  p = scipy_stats.ttest_rel([0.84, 0.86], [0.82, 0.83]).pvalue
  assert sweep_results.across_sweeps([("runs/t2", low), ("runs/t4", high)]) == [
      "runs/t4 (--set student.temperature=4) against runs/t2 (--set student.temperature=2), "
      "paired by seed:",
      f"  mlp, kd on targets: +2.50 ± 0.71 pts over runs/t2 (2 seeds, t-test p = {p:.3g}): "
      "within seed noise"]
  assert sweep_results.across_sweeps([("runs/t2", low)]) == []


def test_compare_ends_with_the_sweeps_verdict(swept):
  root, result = swept
  saved = json.loads((root / "sweep" / "sweep.json").read_text())
  sentence = verdict_sentence(saved["rows"])
  assert sentence.startswith("Against the same students on hard labels (same seeds, 2 each)")
  assert result.stdout.rstrip().endswith(sentence)
  table = run_cli("compare", root / "sweep").output
  # Headed by the settings every run shared (as sweep.md is): two sweeps of one teacher must
  # not read alike.
  assert table.rstrip().endswith(f"{root / 'sweep'} (--set student.steps=10): {sentence}")



def test_compare_and_report_leave_out_a_verdict_its_runs_no_longer_match(swept, tmp_path):
  """A sweep's verdict is about the runs it aggregated: once one is gone or trained again, or
  its teacher was, compare and the report say so instead of showing the old numbers; and they
  name the finished runs in the folder that its sweep.json leaves out."""
  root, _ = swept
  out = shutil.copytree(root / "sweep", tmp_path / "sweep")
  # A rerun over fewer runs: its sweep.json covers one, the folder holds eight.
  assert run_cli("sweep", "--teacher", root / "teacher", "--out", out, "--model", "mlp",
                 "--mode", "hard", "--seed", "0", "--steps", "10", "-q").exit_code == 0
  text = compare.compare_runs([out])
  assert text.endswith(f"{out} holds 7 finished runs its sweep.json leaves out (linear-hard-s0, "
                       "linear-hard-s1, linear-targets-s0 and 4 more), from another sweep "
                       f"command: give them as folders to show them, e.g. {out / 'linear-hard-s0'}")
  shutil.rmtree(out)
  # The sweep narrowed to its mlp runs (kept, none trained), so that the report below draws
  # the figures of 4 runs, not of 8: a few seconds each.
  out = shutil.copytree(root / "sweep", tmp_path / "sweep")
  for linear in out.glob("linear-*"):
    shutil.rmtree(linear)
  assert run_cli("sweep", "--teacher", root / "teacher", "--out", out, "--model", "mlp",
                 "--mode", "hard", "--mode", "targets", "--seed", "0", "--seed", "1", "--steps",
                 "10", "-q").exit_code == 0
  text = compare.compare_runs([out])
  assert "no longer matches" not in text and "Against the same students" in text
  shutil.rmtree(out / "mlp-hard-s0")
  summary = json.loads((out / "mlp-targets-s1" / "summary.json").read_text())
  (out / "mlp-targets-s1" / "summary.json").write_text(json.dumps(
      {**summary, "params_sha256": "trained again"}))
  stale = (f"{out}: its sweep.json no longer matches its runs (mlp-hard-s0 is gone; "
           "mlp-targets-s1 was trained again), so its verdict and tables are left out: run the "
           "same `distill sweep` again with --overwrite (it trains the changed runs again) to "
           "remake them")
  text = compare.compare_runs([out])
  assert text.endswith(stale) and "Against the same students" not in text
  gone = sweep_results.out_of_date_note(out, ["mlp-hard-s0 is gone"])
  assert gone.endswith("run the same `distill sweep` again to remake them")
  page = run_cli("report", out, "--out", tmp_path / "report", "-q")
  assert page.exit_code == 0, page.output
  assert html.escape(stale) in (tmp_path / "report" / "report.html").read_text()


def test_compare_names_students_whose_teacher_was_trained_again(swept, tmp_path):
  root, _ = swept
  runs = copy_runs(root, tmp_path, teacher="teacher", student="sweep/mlp-targets-s0")
  student = json.loads((runs / "student" / "summary.json").read_text())
  student["teacher_dir"] = str((runs / "teacher").resolve())
  (runs / "student" / "summary.json").write_text(json.dumps(student))
  assert "trained again since" not in compare.compare_runs([runs / "teacher", runs / "student"])
  teacher = json.loads((runs / "teacher" / "summary.json").read_text())
  (runs / "teacher" / "summary.json").write_text(json.dumps(
      {**teacher, "params_sha256": "another teacher"}))
  text = compare.compare_runs([runs / "teacher", runs / "student"])
  assert text.splitlines()[-1] == (
      f"{runs / 'student'}: the teacher in {runs / 'teacher'} was trained again after they "
      "trained, so their agreement is with the earlier one, not the one shown (train them again "
      "to pair them with it)")


# Test accuracy of a fake run: hard labels 80% + 1 point per seed; kd 2 points more, dkd 3.
_FAKE_ACCURACY = {("hard", "kd"): 0.80, ("soft", "kd"): 0.82, ("soft", "dkd"): 0.83}


@pytest.fixture
def fake_trainer(monkeypatch):
  """workflow.train_student replaced by one that writes a summary at once; records the recipes."""
  recipes = {}

  def train_student(recipe, teacher_dir, workdir, **_):
    student = recipe["student"]
    recipes[workdir.name] = recipe
    summary = {"params": 10, "seed": recipe["seed"], "steps": student["steps"],
               "test_accuracy": _FAKE_ACCURACY[student["loss"], student["method"]]
               + 0.01 * recipe["seed"] + (0.001 if recipe["seed"] == 1 else 0.0),
               "agreement_with_teacher": 0.9, "train_seconds": 1.0, "wall_seconds": 1.0,
               "recipe_hash": workflow.config_lib.recipe_hash(recipe, "student")}
    workdir.mkdir(parents=True)
    (workdir / "summary.json").write_text(json.dumps(summary))
    return summary

  monkeypatch.setattr(workflow, "train_student", train_student)
  return recipes


def test_method_axis_end_to_end_with_a_fake_trainer(swept, tmp_path, fake_trainer):
  root, _ = swept
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", tmp_path, "--model", "mlp",
                   "--mode", "hard", "--mode", "targets", "--method", "kd", "--method", "dkd",
                   "--seed", "0", "--seed", "1", "--seed", "2", "-q")
  assert result.exit_code == 0, result.output
  names = [f"mlp-{variant}-s{seed}" for variant in ("hard", "targets", "targets-dkd")
           for seed in (0, 1, 2)]
  assert list(fake_trainer) == names
  assert [fake_trainer[name]["student"]["method"] for name in names] == ["kd"] * 6 + ["dkd"] * 3
  assert [fake_trainer[name]["student"]["loss"] for name in names] == ["hard"] * 3 + ["soft"] * 6
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert saved["settings"]["methods"] == ["kd", "dkd"]
  assert [run["method"] for run in saved["runs"]] == [None] * 3 + ["kd"] * 3 + ["dkd"] * 3
  rows = {(row["mode"], row["method"]): row for row in saved["rows"][1:]}
  assert set(rows) == {("hard", None), ("targets", "kd"), ("targets", "dkd")}
  hard, kd = rows[("targets", "dkd")]["paired"]
  assert hard["baseline"] == "hard" and hard["mean_diff"] == pytest.approx(0.03)
  assert kd["baseline"] == "kd" and kd["n"] == 3 and kd["mean_diff"] == pytest.approx(0.01)
  assert set(hard) == {"baseline", "n", "seeds", "left_out", "mean_diff", "std_diff", "t_p",
                       "sign_p", "verdict"}
  markdown = (tmp_path / "sweep.md").read_text()
  assert "| mlp | targets | dkd | - | kd | 3 | +1.00 ± 0.00 | - | 0.25 |" in markdown
  assert "| mlp | targets | dkd | - | hard | 3 | +3.00 ± 0.00 |" in markdown

  # A report given the sweep folder covers its runs and shows its paired table.
  run_dirs, sweeps = compare.expand_sweeps([tmp_path, root / "teacher"])
  assert run_dirs == [root / "teacher", *(tmp_path / name for name in names)]
  section = report._sweep_section(*sweeps[0])
  assert "<h3>Paired differences</h3>" in section
  assert "<td>+3.00 ± 0.00 pts over hard (3 seeds, the same difference" in section
  # The sweep's own table is a table too, and its verdict sentence heads the section.
  assert "<td>mlp</td><td>targets</td><td>dkd</td>" in section and "<pre>" not in section
  assert f"<strong>{html.escape(verdict_sentence(saved['rows']))}</strong>" in section


def test_adding_a_soft_loss_reuses_the_soft_ce_runs_under_either_name(swept, tmp_path,
                                                                     fake_trainer):
  root, _ = swept
  sweep = ["sweep", "--teacher", root / "teacher", "--out", tmp_path, "--model", "mlp",
           "--mode", "targets", "--seed", "0", "-q"]
  assert run_cli(*sweep).exit_code == 0
  assert list(fake_trainer) == ["mlp-targets-s0"]
  fake_trainer.clear()
  assert run_cli(*sweep, "--soft-loss", "soft_ce", "--soft-loss", "kl").exit_code == 0
  assert list(fake_trainer) == ["mlp-targets-kl-s0"]  # the soft_ce run kept
  # A folder an earlier sweep of both losses named mlp-targets-soft_ce-s0 is reused too.
  (tmp_path / "mlp-targets-s0").rename(tmp_path / "mlp-targets-soft_ce-s0")
  fake_trainer.clear()
  assert run_cli(*sweep, "--soft-loss", "soft_ce", "--soft-loss", "kl").exit_code == 0
  assert list(fake_trainer) == []
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert [run["name"] for run in saved["runs"]] == ["mlp-targets-soft_ce-s0", "mlp-targets-kl-s0"]


def test_an_override_no_run_reads_is_refused_one_some_run_reads_is_kept(
    swept, tmp_path, fake_trainer):
  root, _ = swept
  args = ["sweep", "--teacher", root / "teacher", "--model", "mlp", "--mode", "hard", "--mode",
          "targets", "--seed", "0", "-q"]
  result = run_cli(*args, "--method", "dkd", "--set", "student.dist.beta=2", "--out",
                   tmp_path / "a")
  assert result.exit_code == 2
  assert result.stderr.strip() == (
      "error: no run of the sweep reads --set student.dist.beta=2: student.dist.beta=2 changes "
      "nothing for method dkd: it is a setting of method dist; drop it, or train with --method "
      "dist")
  assert not fake_trainer
  # kd reads alpha, dkd and the hard runs do not: the sweep runs, each run as it reads it.
  result = run_cli(*args, "--method", "kd", "--method", "dkd", "--set", "student.alpha=0.5",
                   "--out", tmp_path / "b")
  assert result.exit_code == 0, result.output
  assert {name: recipe["student"]["alpha"] for name, recipe in fake_trainer.items()} == {
      "mlp-hard-s0": 0.5, "mlp-targets-s0": 0.5, "mlp-targets-dkd-s0": 0.5}


@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="two jobs need two cores")
def test_a_stop_signal_after_every_run_finished_still_writes_the_tables(
    swept, tmp_path, fake_trainer, monkeypatch):
  class SignalledPool:  # runs each call at once, and a Ctrl-C came while they ran
    signal_name = "SIGINT"

    def submit(self, function, *args):
      future = concurrent.futures.Future()
      future.set_result(function(*args))
      return future

  @contextlib.contextmanager
  def core_pool(jobs):
    yield SignalledPool(), "in this process"

  monkeypatch.setattr(workers, "core_pool", core_pool)
  root, _ = swept
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", tmp_path, "--model", "mlp",
                   "--mode", "hard", "--seed", "0", "--seed", "1", "--jobs", "2")
  assert result.exit_code == 0, result.output
  assert "SIGINT came after every run had finished; writing the tables" in result.stderr
  assert "resume" not in result.stderr
  assert (tmp_path / "sweep.md").is_file()


@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="two jobs need two cores")
def test_jobs_train_the_runs_in_worker_processes_one_core_each(swept, tmp_path):
  root, _ = swept
  args = ["--teacher", root / "teacher", "--model", "linear", "--mode", "hard", "--mode",
          "targets", "--seed", "0", "--steps", "10"]
  result = run_cli("sweep", *args, "--out", tmp_path / "two", "--jobs", "2")
  assert result.exit_code == 0, result.output
  assert "training 2 runs, 2 at a time, 1 core each" in result.stderr
  names = ["linear-hard-s0", "linear-targets-s0"]
  # Result lines count the runs finished, whichever finished first.
  finished = re.findall(r"^\[(\d)/2\] (\S+): test accuracy", result.stderr, re.MULTILINE)
  assert [count for count, _ in finished] == ["1", "2"]
  assert sorted(name for _, name in finished) == names
  summaries = _summaries(tmp_path / "two", names)
  # Each run trained pinned to one core, in a worker process of its own.
  assert all(summary["cpu"].endswith(", 1 core") for summary in summaries)
  alone = {run["name"]: run["summary"] for run in json.loads(
      (root / "sweep" / "sweep.json").read_text())["runs"]}
  for name, summary in zip(names, summaries, strict=True):
    # The same runs as the module's sweep trained one after the other; only the threads differ.
    assert summary["recipe_hash"] == alone[name]["recipe_hash"]
    pinned, unpinned = logged(tmp_path / "two" / name), logged(root / "sweep" / name)
    assert [r["step"] for r in pinned] == [r["step"] for r in unpinned]
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose([r[key] for r in pinned], [r[key] for r in unpinned],
                                 rtol=1e-5, err_msg=f"{name} {key}")
    # Other thread counts may sum in another order: at most one of the 359 test images moves.
    assert summary["test_accuracy"] == pytest.approx(alone[name]["test_accuracy"], abs=0.003)
  # Run again, the finished runs are kept, and no worker starts for them.
  again = run_cli("sweep", *args, "--out", tmp_path / "two", "--jobs", "2")
  assert again.exit_code == 0 and again.stderr.count("same recipe, kept") == 2
  assert "at a time" not in again.stderr


def test_sigterm_stops_a_sweep_of_one_run_at_a_time_with_sigterms_status(
    tiny_digits_runs, tmp_path, monkeypatch):
  """The loop's stop, named by the sweep, keeps the loop's exit status (143: SIGTERM's)."""
  root = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher")
  summarise = loop._summarise

  def summarise_then_signal(window, step):  # the loop gets SIGTERM in its first log step
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)
    return summarise(window, step)

  monkeypatch.setattr(loop, "_summarise", summarise_then_signal)
  result = run_cli("sweep", "--teacher", root / "teacher", "--out", root / "sweep", "--model",
                   "linear", "--mode", "hard", "--seed", "0", "--steps", "40", "-q",
                   *set_flags(["student.log_every=5", "student.steps_per_dispatch=5"]))
  assert result.exit_code == 143, result.output
  assert re.search(r"linear-hard-s0: stopped by SIGTERM at step \d+; checkpoint saved",
                   result.stderr), result.stderr


# 2 runs at a time, each training for about 3 s (as the tests compile it): 3,000 steps of 256
# images, one a dispatch, logged every 50 steps, checkpointed only at the end or at a stop. Four
# seeds of one mode: the first two runs are the same program, so they start together (two modes
# compile for different times, and the quicker run could finish before the other logged a step).
STOPPED = ["--model", "mlp", "--mode", "hard", "--seed", "0", "--seed", "1", "--seed", "2",
           "--seed", "3", "--steps", "3000", "--jobs", "2",
           *set_flags(["student.batch_size=256", "student.steps_per_dispatch=1",
                       "student.log_every=50", "student.eval_every=3000",
                       "student.checkpoint_every=3000"])]
FIRST = ["mlp-hard-s0", "mlp-hard-s1"]  # seed by seed: the first two seeds train first


# How long after the signal a run taken up as the signal was sent may write its first file.
_TAKEN_UP_AT_THE_SIGNAL_NS = 500_000_000


def _stop_a_sweep(root, send):
  """Starts a sweep of 4 runs, 2 at a time, and once the first 2 have logged a step, `send`s
  it a stop signal; checks that no run starts after it and no worker outlives the sweep.
  Returns the sweep's exit status, its stderr, its folder and the runs started before the
  signal (on a loaded machine a first run may have finished, and a third begun, by then)."""
  out, log = root / "sweep", root / "stderr.txt"
  # To a file, not a pipe: a worker left behind would hold a pipe open, and reading it hang.
  with log.open("w") as stderr:
    sweep = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "sweep", "--teacher", str(root / "teacher"),
         "--out", str(out), *STOPPED], env=process_env(1), stderr=stderr, start_new_session=True)
  workers_seen = []
  try:
    wait_until(lambda: all((out / name / "metrics.jsonl").exists()
                           and (out / name / "metrics.jsonl").read_text() for name in FIRST),
               120, "the first runs did not log a step")
    workers_seen = children(sweep.pid)
    signalled_ns = time.time_ns()
    send(sweep.pid)
    sweep.wait(timeout=60)
    # Every process the sweep started is gone: its workers (and multiprocessing's helper).
    wait_until(lambda: not any(running(pid) for pid in workers_seen), 10,
               "a worker outlived the sweep")
  finally:
    sweep.kill()
    for pid in workers_seen:
      if running(pid):
        os.kill(pid, signal.SIGKILL)
  stderr = log.read_text()
  # No run started after the signal: each run folder's first file (its first write) is older.
  # Read from the files, not from a listing taken just before the signal, which a run starting
  # in between (a first run finished on a loaded machine) would miss.
  started = sorted(path.name for path in out.iterdir())
  for name in started:
    first_write = min(entry.stat().st_mtime_ns for entry in [out / name, *(out / name).iterdir()])
    # A worker freed by a first run finishing as the signal is sent may take up the next run
    # just before the sweep receives it; that run's first file then lands milliseconds after
    # the clock read above (20 ms in one CI run). A run started later is what this test is for.
    assert first_write <= signalled_ns + _TAKEN_UP_AT_THE_SIGNAL_NS, (
        f"{name} started after the signal\n{stderr}")
  assert set(FIRST) <= set(started), stderr
  return sweep.returncode, stderr, out, started


def _stopped_steps(stderr, out, name, started):
  """The runs in training at the stop, each with its step as the sweep says it and its
  checkpoint there; every other run started before the stop has finished. The sweep's last
  line counts them, and the runs that did not start (4 runs: never every one finished)."""
  steps = {}
  for run in started:
    match = re.search(rf"^{run}: stopped by {name} at step (\d+); checkpoint saved\.\n", stderr,
                      re.MULTILINE)
    if match is None:
      assert (out / run / "summary.json").exists(), stderr  # it finished before the stop
      continue
    steps[run] = int(match.group(1))
    assert 0 < steps[run] < 3000  # a run begun just before the stop stops at its first steps
    assert sorted(p.name for p in (out / run / "checkpoints").iterdir()
                  if p.name.isdigit()) == [str(steps[run])]
  # Each run trains for about a second after compiling, and the loop writes its log lines a
  # few dispatches behind: on a loaded machine both first runs may have finished (their workers
  # waiting for work) by the time the test sees a line, and then none was stopped.
  stopped, not_started = len(steps), 4 - len(started)
  said = [f"{stopped} run{'s' if stopped > 1 else ''} in training saved a checkpoint"] * bool(
      stopped)
  if not_started:
    said.append(f"{not_started}{'' if stopped else ' run' + 's' * (not_started > 1)} did not "
                "start")
  said = ", ".join(said) or "every run had finished"
  assert stderr.endswith(f"error: stopped by {name}: {said}. Run the same command again to "
                         "resume.\n"), stderr
  return steps


needs_two_cores_and_proc = pytest.mark.skipif(
    len(workers.available_cores()) < 2 or not Path("/proc/self/stat").exists(),
    reason="two jobs need two cores; reads /proc")


@needs_two_cores_and_proc
def test_sigterm_stops_a_parallel_sweep_at_checkpoints_and_the_same_command_resumes(
    tiny_digits_runs, tmp_path):
  """As `kill` or a job scheduler stops it: the runs in training save a checkpoint, none
  starts after, no worker is left, and the exit status is a single run's (143: 128 + SIGTERM's
  15, as a process SIGTERM ended)."""
  root = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher")
  status, stderr, out, started = _stop_a_sweep(root, lambda pid: os.kill(pid, signal.SIGTERM))
  assert status == 143, stderr
  steps = _stopped_steps(stderr, out, "SIGTERM", started)
  resumed = run_cli("sweep", "--teacher", root / "teacher", "--out", out, "-q", *STOPPED)
  assert resumed.exit_code == 0, resumed.output
  names = [f"mlp-hard-s{seed}" for seed in range(4)]
  summaries = dict(zip(names, _summaries(out, names), strict=True))
  assert all(summary["steps"] == 3000 for summary in summaries.values())
  assert {name: summaries[name]["resumed_from_step"] for name in steps} == steps


@needs_two_cores_and_proc
def test_ctrl_c_to_a_parallel_sweeps_group_starts_no_run_after_it(tiny_digits_runs, tmp_path):
  """Ctrl-C in a terminal signals every process of the sweep's group at once."""
  root = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher")
  status, stderr, out, started = _stop_a_sweep(root, lambda pid: os.killpg(pid, signal.SIGINT))
  assert status == 130, stderr
  _stopped_steps(stderr, out, "SIGINT", started)

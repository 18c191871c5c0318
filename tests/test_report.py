"""The report: figures on disk and embedded, metrics equal to direct numpy, and a real browser."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLAGS, copy_runs, run_cli

from distill import compare as compare_lib
from distill import report as report_lib
from distill.data import load_dataset
from distill.metrics import summary_metrics


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_digits_runs):
  root = copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("report-runs"), teacher="teacher",
                   cnn="student")
  assert run_cli("student", "--teacher", root / "teacher", "--model", "mlp", "--loss", "hard",
              "--workdir", root / "mlp-hard", "-q", *TINY_FLAGS).exit_code == 0
  result = run_cli("report", root / "teacher", root / "cnn", root / "mlp-hard",
                   "--out", root / "out", "-q")
  assert result.exit_code == 0, result.output
  return root


def test_every_figure_is_written_and_embedded(report):
  out = report / "out"
  pngs = sorted(p.name for p in out.glob("*.png"))
  # Teacher: curves, mistakes, confusion, reliability; each student adds disagreements.
  assert len(pngs) == 4 + 5 + 5 + 1, pngs
  # Each run's figures are named after its folder.
  assert {name.split("-", 1)[1].rsplit("-", 1)[0] for name in pngs
          if name != "accuracy-vs-params.png"} == {"teacher", "cnn", "mlp-hard"}
  page = (out / "report.html").read_text()
  assert page.count('src="data:image/png;base64,') == len(pngs)
  assert "http://" not in page and "https://" not in page  # self-contained
  assert "agreement with the teacher" in page


def test_a_report_written_again_in_its_folder_keeps_no_earlier_figure(report, tmp_path):
  """Fewer runs into the same --out: the figures of the runs left out are gone, and a file of
  the user's beside them stays."""
  out = tmp_path / "out"
  shutil.copytree(report / "out", out)
  (out / "notes.png").write_bytes(b"not a figure of the report")
  result = run_cli("report", report / "teacher", "--out", out, "-q")
  assert result.exit_code == 0, result.output
  pngs = sorted(p.name for p in out.glob("*.png"))
  assert len(pngs) == 4 + 1 + 1 and "notes.png" in pngs, pngs
  assert all(name.startswith("00-teacher-") for name in pngs
             if name not in ("notes.png", "accuracy-vs-params.png")), pngs


def test_a_report_says_which_folders_it_skipped(report, tmp_path):
  (tmp_path / "empty").mkdir()
  result = run_cli("report", report / "teacher", tmp_path / "empty", "--out", tmp_path / "out")
  assert result.exit_code == 0, result.output
  assert f"skipped: {tmp_path / 'empty'}" in result.stderr  # as compare says it
  assert "skipped" in (tmp_path / "out" / "report.html").read_text()


def test_a_run_whose_data_is_gone_is_named_with_why_the_report_needs_it(report, tmp_path):
  run = copy_runs(report, tmp_path, moved="cnn") / "moved"
  recipe = json.loads((run / "recipe.json").read_text())
  recipe["data"].update(dataset="npz", data_dir=str(tmp_path / "gone.npz"))
  (run / "recipe.json").write_text(json.dumps(recipe))
  result = run_cli("report", run, "--out", tmp_path / "out", "-q")
  assert result.exit_code == 2
  assert result.stderr.endswith(
      f"{run} needs the data set it trained on for the report (its test labels and pictures of "
      "its mistakes): put the data back where its recipe.json says, or leave the run out\n")
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("out, message", [
    ("a-file.npz", "--out {out} exists and is not a directory"),
    ("a-file.npz/report", "cannot create --out {out}: {parent} is not a directory"),
])
def test_an_out_folder_that_cannot_be_written_is_a_one_line_error(report, tmp_path, out,
                                                                  message):
  (tmp_path / "a-file.npz").write_bytes(b"")
  out = tmp_path / out
  result = run_cli("report", report / "teacher", "--out", out, "-q")
  assert result.exit_code == 2
  parent = tmp_path / "a-file.npz"
  assert result.stderr.strip() == "error: " + message.format(out=out, parent=parent)


def _numpy_ece(logits, labels, bins=15):
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  confidence, predicted = probs.max(-1), probs.argmax(-1)
  ece = 0.0
  for lo, hi in zip(np.linspace(0, 1, bins + 1)[:-1], np.linspace(0, 1, bins + 1)[1:],
                    strict=True):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs((predicted[in_bin] == labels[in_bin]).mean()
                                 - confidence[in_bin].mean())
  return ece


def test_metrics_match_direct_numpy(report):
  labels = load_dataset("digits", val_size=150).y_test
  with np.load(report / "cnn" / "predictions.npz") as p:
    student = p["test_logits"].astype(np.float64)
  with np.load(report / "teacher" / "targets.npz") as t:
    teacher = t["test_logits"].astype(np.float64)
  metrics = summary_metrics(student.astype(np.float32), labels, teacher.astype(np.float32))
  log_probs = student - student.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  assert metrics["nll"] == pytest.approx(-log_probs[np.arange(len(labels)), labels].mean(),
                                         rel=1e-5)
  assert metrics["accuracy"] == pytest.approx((student.argmax(-1) == labels).mean())
  assert metrics["agreement"] == pytest.approx((student.argmax(-1) == teacher.argmax(-1)).mean())
  assert metrics["ece"] == pytest.approx(_numpy_ece(student, labels), abs=1e-5)
  summary = json.loads((report / "cnn" / "summary.json").read_text())
  assert summary["agreement_with_teacher"] == pytest.approx(metrics["agreement"])
  assert summary["test_ece"] == pytest.approx(metrics["ece"], abs=1e-6)


def _chromium():
  return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="Debian's chromium is not installed (make test installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
  page = report / "out" / "report.html"
  result = subprocess.run(
      [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
       "--no-first-run", "--disable-background-networking", "--disable-component-update",
       "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
       "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=120)
  match = re.search(r'data-figures="(\d+)/(\d+)"', result.stdout)
  assert match, result.stderr[-2000:]
  loaded, total = map(int, match.groups())
  assert total == 15 and loaded == total


def test_a_teacher_of_unknown_size_shows_no_parameter_count(tmp_path):
  """A teacher imported as logits records 0 parameters: the table shows '-', and the
  accuracy-vs-parameters figure leaves it out rather than at 0 on a log axis."""
  rows = [{"run": "logits-teacher", "role": "teacher", "model": "logits", "params": 0,
           "test_accuracy": 0.97},
          {"run": "student", "role": "student", "model": "cnn", "loss": "soft",
           "params": 1922, "test_accuracy": 0.95}]
  header, _, teacher, student = (
      [cell.strip() for cell in line.strip("|").split("|")]
      for line in compare_lib.format_table(rows, markdown=True).splitlines())
  column = header.index("params")
  assert (teacher[column], student[column]) == ("-", "1,922"), (header, teacher, student)
  from distill import plots  # noqa: PLC0415

  assert [p["model"] for p in plots.accuracy_points(rows)] == ["cnn"]
  assert plots.accuracy_vs_params(rows, path=tmp_path / "a.png").stat().st_size > 0


def test_mixup_is_shown_where_a_run_used_it():
  """Two online students that differ only in --mixup must not look alike: the table gains a
  mixup column, and the result line and the report's labels say it; without mixup none does."""
  from distill.workflow import result_line  # noqa: PLC0415

  student = {"role": "student", "model": "cnn", "loss": "soft", "teaching": "online",
             "method": "kd", "temperature": 2.0, "alpha": 1.0, "params": 1922,
             "test_accuracy": 0.95, "teacher_test_accuracy": 0.97,
             "agreement_with_teacher": 0.96, "train_seconds": 1.0}
  plain, mixed = {**student, "run": "online", "mixup": 0.0}, {**student, "run": "mixup",
                                                              "mixup": 0.2}
  header, _, *body = compare_lib.format_table([plain, mixed], markdown=True).splitlines()
  column = [cell.strip() for cell in header.strip("|").split("|")].index("mixup")
  assert [[cell.strip() for cell in row.strip("|").split("|")][column] for row in body] == [
      "-", "0.2"]
  assert "mixup" not in compare_lib.format_table([plain])
  assert "alpha=1, mixup=0.2)" in result_line(mixed, Path("runs/mixup"))
  assert "mixup" not in result_line(plain, Path("runs/online"))
  # The report's labels and the figure's legend come from the same words.
  assert compare_lib.run_label(mixed) == "student cnn (kd, online, T=2, alpha=1, mixup=0.2)"
  assert compare_lib.how_taught(plain) == "kd, online, T=2, alpha=1"


def test_compare_warns_when_times_come_from_different_machines():
  """Seconds from two CPUs (or a CPU and a GPU) are flagged; one machine, or old runs, are not."""
  zen4 = {"backend": "cpu", "cpu": "AMD EPYC (family 25, model 17), 2 cores"}
  zen5 = {"backend": "cpu", "cpu": "AMD EPYC (family 26, model 17), 2 cores"}
  h200 = {"backend": "gpu", "device_kind": "NVIDIA H200", "devices": 1, "cpu": "Intel Xeon"}
  assert compare_lib.machine_of(h200) == "NVIDIA H200 x 1"
  assert compare_lib.machines_note([zen4, zen4, {"backend": "cpu"}]) is None
  note = compare_lib.machines_note([zen4, zen5, zen4, h200])
  assert note.startswith(
      "train s comes from 3 machines or core counts, so compare times only within one")
  assert "AMD EPYC (family 25, model 17), 2 cores (2 runs)" in note
  assert "NVIDIA H200 x 1 (1 run)" in note


def _sweep_rows():
  """A sweep's rows as compare reads them: a teacher, three seeds each of one CNN on hard labels
  and with kd (one size, accuracies within a point: the twins that used to hide each other's
  labels), and one MLP."""
  rows = [{"run": "teacher", "role": "teacher", "model": "resnet", "params": 272_474,
           "test_accuracy": 0.91}]
  for seed, (hard, soft) in enumerate([(0.842, 0.853), (0.851, 0.858), (0.846, 0.849)]):
    rows += [{"run": f"cnn-hard-{seed}", "role": "student", "model": "cnn", "loss": "hard",
              "params": 20_586, "test_accuracy": hard},
             {"run": f"cnn-kd-{seed}", "role": "student", "model": "cnn", "loss": "soft",
              "teaching": "targets", "method": "kd", "temperature": 4.0, "alpha": 0.9,
              "params": 20_586, "test_accuracy": soft}]
  rows.append({"run": "mlp-kd", "role": "student", "model": "mlp", "loss": "soft",
               "teaching": "targets", "method": "kd", "temperature": 4.0, "alpha": 0.9,
               "params": 101_770, "test_accuracy": 0.82})
  for row in rows:  # as write_report labels them
    row["label"], row["series"] = compare_lib.run_label(row), compare_lib.how_taught(row)
  return rows


def test_accuracy_figure_draws_a_labels_seeds_as_one_point(tmp_path):
  """The seeds of one label are one point (mean, bar from min to max); runs of one size stand
  apart in their column, and the figure writes no text among the points."""
  from distill import plots  # noqa: PLC0415

  rows = _sweep_rows()
  points = {p["label"]: p for p in plots.accuracy_points(rows)}
  assert len(points) == 4, list(points)
  kd = points["student cnn (kd, targets, T=4, alpha=0.9)"]
  assert (kd["runs"], kd["params"]) == (3, 20_586)
  assert (kd["mean"], kd["low"], kd["high"]) == pytest.approx((0.8533333, 0.849, 0.858))
  hard = points["student cnn (hard labels)"]
  assert (hard["runs"], hard["low"], hard["high"]) == (3, 0.842, 0.851)
  # One column, two places in it: the baseline first, both near their true size.
  assert hard["column"] == kd["column"] and hard["x"] < kd["x"]
  assert all(abs(np.log10(p["x"] / 20_586)) < 0.1 for p in (hard, kd))
  assert len({p["x"] for p in points.values()}) == len(points)
  # The columns' models and sizes are the axis's labels, under each column.
  assert [text for _, text in plots.column_ticks(list(points.values()))] == [
      "cnn\n20,586", "mlp\n101,770", "resnet\n272,474"]
  figure = plots.accuracy_vs_params_figure(rows)
  ax = figure.axes[0]
  assert len(ax.texts) == 0
  assert ax.get_title() == "accuracy vs size (bars: min to max over a label's runs)"
  assert [text.get_text() for text in ax.get_legend().get_texts()] == [
      "teacher", "hard labels (mean of 3 runs)", "kd, targets, T=4, alpha=0.9 (mean of 1-3 runs)"]
  import matplotlib.pyplot as plt  # noqa: PLC0415

  plt.close(figure)
  assert plots.accuracy_vs_params(rows, path=tmp_path / "a.png").stat().st_size > 0


def test_accuracy_figure_draws_a_teacher_of_unknown_size_as_a_line_across():
  """A teacher imported as logits has no parameter count: no point, but its students' mark."""
  from distill import plots  # noqa: PLC0415

  imported = {"run": "runs/logits-teacher", "role": "teacher", "model": "logits", "params": None,
              "test_accuracy": 0.91}
  student = {"run": "runs/cnn", "role": "student", "model": "cnn", "loss": "hard",
             "params": 1922, "test_accuracy": 0.85}
  for rows in ([imported, student], [imported]):
    figure = plots.accuracy_vs_params_figure(rows)
    ax = figure.axes[0]
    assert ax.get_title() == "accuracy vs size"  # single runs: no bars to explain
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [
        0.91]
    assert "teacher logits (size unknown)" in [t.get_text() for t in ax.get_legend().get_texts()]
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close(figure)


def test_accuracy_figure_spreads_sizes_too_close_to_tell_apart():
  """Two models a few parameters apart share a column, named after both, rather than drawing
  their points over each other."""
  from distill import plots  # noqa: PLC0415

  rows = [{"role": "student", "model": model, "loss": "soft", "params": params,
           "test_accuracy": 0.9} for model, params in (("cnn", 1922), ("mlp", 1930),
                                                        ("wide", 200_000))]
  points = plots.accuracy_points(rows)
  assert [p["column"] for p in points] == [0, 0, 1]
  assert points[0]["x"] < points[1]["x"]
  assert [text for _, text in plots.column_ticks(points)] == [
      "cnn / mlp\n1,922 / 1,930", "wide\n200,000"]


def test_neighbouring_column_labels_are_staggered_not_run_together():
  """The demo's MLP student (203,530) and ViT teacher (302,602) sit near each other on the log
  axis: the second label goes below the first instead of running into it."""
  from distill import plots  # noqa: PLC0415

  rows = [{"role": role, "model": model, "loss": "soft", "params": params, "test_accuracy": 0.8}
          for role, model, params in (("student", "linear", 7_850), ("student", "vit", 19_658),
                                      ("student", "mlp", 203_530), ("teacher", "vit", 302_602))]
  figure = plots.accuracy_vs_params_figure(rows)
  labels = [label.get_text() for label in figure.axes[0].get_xticklabels()]
  assert labels == ["linear\n7,850", "vit\n19,658", "mlp\n203,530", "\n\nvit\n302,602"]
  import matplotlib.pyplot as plt  # noqa: PLC0415

  plt.close(figure)
  # Of three labels in a row that touch, the middle one goes down, the others stay up.
  ticks = plots.staggered([(100.0, "a"), (120.0, "b"), (144.0, "c")], (10.0, 10_000.0))
  assert [text for _, text in ticks] == ["a", "\n\nb", "c"]


def _write_summary(run_dir, **summary):
  run_dir.mkdir(parents=True)
  (run_dir / "summary.json").write_text(json.dumps(summary))
  return run_dir


def test_compare_names_each_students_teacher_when_they_have_several(tmp_path):
  """Students of two teachers side by side: a teacher column names each one's teacher folder,
  empty for teachers (a hard-label baseline's: the teacher its agreement is measured against);
  students of one teacher need no such column."""
  runs = tmp_path / "runs"
  kd = {"role": "student", "model": "cnn", "loss": "soft", "teaching": "targets", "method": "kd",
        "temperature": 2.0, "alpha": 1.0, "params": 1922}
  teacher = _write_summary(runs / "teacher", role="teacher", model="vit", params=90_000,
                           test_accuracy=0.97)
  hybrid = _write_summary(runs / "teacher-hybrid", role="teacher", model="hybrid",
                          params=120_000, test_accuracy=0.98)
  students = [
      _write_summary(runs / "cnn", **kd, teacher_dir=str(teacher), test_accuracy=0.95),
      _write_summary(runs / "cnn-hybrid", **kd, teacher_dir=str(hybrid), test_accuracy=0.96),
      _write_summary(runs / "cnn-hard", role="student", model="cnn", loss="hard",
                     teaching="hard", method="hard", params=1922, teacher_dir=str(teacher),
                     test_accuracy=0.94)]
  table = compare_lib.compare_runs([teacher, hybrid, *students], markdown=True)
  header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")]
                      for line in table.splitlines())
  assert header[:5] == ["run", "role", "model", "loss", "teacher"], header
  assert {row[0]: row[4] for row in body} == {
      str(teacher): "-", str(hybrid): "-", str(runs / "cnn"): "teacher",
      str(runs / "cnn-hybrid"): "teacher-hybrid", str(runs / "cnn-hard"): "teacher"}
  assert "teacher-hybrid" in compare_lib.compare_runs([teacher, hybrid, *students])
  as_json = {row["run"]: row for row in json.loads(
      compare_lib.compare_runs([teacher, hybrid, *students], as_json=True))}
  assert as_json[str(runs / "cnn-hybrid")]["teacher"] == "teacher-hybrid"
  assert as_json[str(runs / "cnn-hybrid")]["teacher_dir"] == str(hybrid)
  assert as_json[str(runs / "cnn-hard")]["teacher"] == "teacher"
  assert as_json[str(runs / "cnn-hard")]["teacher_dir"] == str(teacher)
  assert as_json[str(teacher)]["teacher"] is None
  # One teacher (the hard baseline's agreement is measured against it too): no column.
  one = compare_lib.compare_runs([teacher, students[0], students[2]], markdown=True)
  assert "teacher" not in one.splitlines()[0].split("|")[2:]
  assert json.loads(compare_lib.compare_runs([students[0]], as_json=True))[0]["teacher"] == (
      "teacher")
  # The report's titles and figure tell the two teachers' runs apart the same way.
  rows = compare_lib.with_teacher_names(compare_lib.collect_runs([teacher, hybrid, *students])[0])
  assert {compare_lib.run_label(row, name_teacher=True) for row in rows} == {
      "teacher vit (teacher)", "teacher hybrid (teacher-hybrid)",
      "student cnn (kd, targets, T=2, alpha=1, from teacher)",
      "student cnn (kd, targets, T=2, alpha=1, from teacher-hybrid)", "student cnn (hard labels)"}


def _setting_runs(runs):
  """A new user's runs/*: two DIST students of one seed but different beta and gamma, a kd
  student at 200 steps (two seeds, logged at different rates) and one at 20,000, and a hard
  baseline reached twice (its own folder, and the same recipe and seed in a sweep's)."""
  kd = {"loss": "soft", "teaching": "targets", "method": "kd", "temperature": 1.0, "alpha": 1.0}
  dist = {**kd, "method": "dist", "alpha": None}
  hard = {"loss": "hard", "teaching": "hard", "method": "hard"}

  def run(name, recipe, seed, accuracy, sha, **summary):
    run_dir = _write_summary(runs / name, role="student", model="cnn", params=1922, seed=seed,
                             test_accuracy=accuracy, params_sha256=sha * 64, **summary)
    (run_dir / "recipe.json").write_text(json.dumps({"seed": seed, **recipe}))
    return run_dir

  return [
      _write_summary(runs / "teacher", role="teacher", model="vit", params=44_266,
                     test_accuracy=0.64),
      run("dist-a", {"student": {"method": "dist"}}, 0, 0.59, "a", **dist,
          method_options={"beta": 1.0, "gamma": 1.0}),
      run("dist-b", {"student": {"method": "dist", "dist": {"beta": 2.0, "gamma": 2.0}}}, 0,
          0.57, "b", **dist, method_options={"beta": 2.0, "gamma": 2.0}),
      run("kd-s0", {"student": {"steps": 200}}, 0, 0.46, "c", **kd),
      run("kd-s1", {"student": {"steps": 200, "eval_every": 50}}, 1, 0.48, "d", **kd),
      run("kd-long", {"student": {"steps": 20_000}}, 0, 0.90, "e", **kd),
      run("student-cnn-hard", {"student": {"loss": "hard"}}, 0, 0.73, "f", **hard),
      run("sweep/cnn-hard-s0", {"student": {"loss": "hard"}}, 0, 0.73, "f", **hard),
      run("sweep/cnn-hard-s1", {"student": {"loss": "hard"}}, 1, 0.52, "g", **hard)]


def test_accuracy_figure_draws_one_point_per_setting_and_a_run_reached_twice_once(tmp_path):
  """Runs are one point only when their recipes differ in nothing but the seed (and when they
  logged): settings that share a label are told apart in it and in the legend, and a run
  reached twice (its recipe, seed and parameters the same) counts once."""
  from distill import plots  # noqa: PLC0415

  rows, _ = compare_lib.collect_runs(_setting_runs(tmp_path / "runs"))
  rows = report_lib._labelled(compare_lib.with_teacher_names(rows), name_teachers=False,
                              name_datasets=False)
  assert {p["label"]: p["runs"] for p in plots.accuracy_points(rows)} == {
      "teacher vit": 1, "student cnn (hard labels)": 2,
      "student cnn (dist, targets, T=1)": 1, "student cnn (dist beta=2 gamma=2, targets, T=1)": 1,
      "student cnn (kd, targets, T=1, alpha=1), 200 steps": 2,
      "student cnn (kd, targets, T=1, alpha=1), 20,000 steps": 1}
  hard = next(p for p in plots.accuracy_points(rows) if p["series"] == "hard labels")
  assert (hard["mean"], hard["low"]) == pytest.approx((0.625, 0.52))
  assert [Path(row["run"]).name for row in rows if row["repeat"]] == ["cnn-hard-s0"]
  assert {row["series"] for row in rows if row.get("method") == "kd"} == {
      "kd, targets, T=1, alpha=1, 200 steps", "kd, targets, T=1, alpha=1, 20,000 steps"}


def test_method_settings_show_in_the_table_json_and_labels(tmp_path):
  """Two DIST students that differ only in beta and gamma do not read alike: the method cell,
  the report's labels and legend, and the result line name the settings that are not the
  defaults; --json carries every row's method_options."""
  _, dist, dist_wide, *_ = _setting_runs(tmp_path / "runs")
  header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")] for line in
                      compare_lib.compare_runs([dist, dist_wide], markdown=True).splitlines())
  assert [row[header.index("method")] for row in body] == ["dist", "dist beta=2 gamma=2"]
  as_json = {Path(row["run"]).name: row for row in json.loads(
      compare_lib.compare_runs([dist, dist_wide], as_json=True))}
  assert (as_json["dist-b"]["method"], as_json["dist-b"]["method_options"]) == (
      "dist", {"beta": 2.0, "gamma": 2.0})
  assert compare_lib.run_label(as_json["dist-b"]) == (
      "student cnn (dist beta=2 gamma=2, targets, T=1)")
  assert compare_lib.objective_label(as_json["dist-b"]) == "train loss (dist beta=2 gamma=2)"
  student = {"role": "student", "loss": "soft"}
  assert [compare_lib.method_text({**student, "method": method, "method_options": options})
          for method, options in (
              ("dkd", {"alpha": 1.0, "beta": 8.0, "warmup_steps": 100}),
              ("token", {"variant": "soft"}), ("token", {"variant": "hard"}),
              ("hint", {"kind": "cosine", "weight": 1.0, "student_layer": -1,
                        "teacher_layer": 2}))] == [
      "dkd warmup_steps=100", "token variant=soft", "token", "hint kind=cosine teacher_layer=2"]


def test_a_sweeps_teacher_is_named_as_the_user_gave_it(tmp_path, monkeypatch):
  """runs/* meets the sweep folder before runs/teacher: the teacher reads runs/teacher there as
  it does when given first, and as it does when only the sweep is given (sweep.json records
  its absolute path); a sweep given by its absolute path names it so."""
  monkeypatch.chdir(tmp_path)
  teacher = _write_summary(tmp_path / "runs" / "teacher", role="teacher", model="vit",
                           params=44_266, test_accuracy=0.64)
  _write_summary(tmp_path / "runs" / "sweep" / "cnn-hard-s0", role="student", model="cnn",
                 loss="hard", params=1922, test_accuracy=0.73)
  (tmp_path / "runs" / "sweep" / "sweep.json").write_text(json.dumps(
      {"settings": {"teacher_dir": str(teacher)}, "runs": [{"name": "cnn-hard-s0"}], "rows": []}))
  sweep, given = Path("runs/sweep"), Path("runs/teacher")
  for folders in ([sweep, given], [given, sweep], [sweep]):
    assert compare_lib.expand_sweeps(folders)[0] == [given, sweep / "cnn-hard-s0"], folders
    assert compare_lib.compare_runs(folders).splitlines()[2].startswith("runs/teacher "), folders
  assert compare_lib.expand_sweeps([tmp_path / sweep])[0][0] == teacher


def test_teachers_are_named_by_as_much_of_their_path_as_tells_them_apart():
  assert compare_lib.short_names(["/w/runs/teacher", "/w/runs/teacher-hybrid"]) == {
      "/w/runs/teacher": "teacher", "/w/runs/teacher-hybrid": "teacher-hybrid"}
  assert compare_lib.short_names(["/w/digits/teacher", "/w/fashion/teacher", "/w/x"]) == {
      "/w/digits/teacher": "digits/teacher", "/w/fashion/teacher": "fashion/teacher",
      "/w/x": "x"}
  assert compare_lib.short_names(["/teacher", "/a/teacher"]) == {
      "/teacher": "/teacher", "/a/teacher": "a/teacher"}


def test_train_seconds_read_alike_and_keep_their_precision_for_short_runs():
  """Every time reads in three significant figures (sub-second runs of tiny models too, not
  0), never fewer: 0.170, 1.50 and 20.0 in one column, not 0.17, 1.5 and 20; from 100 s up,
  whole seconds."""
  rows = [{"run": f"run-{seconds}", "role": "teacher", "model": "cnn", "params": 1922,
           "test_accuracy": 0.9 - index / 100, "train_seconds": seconds}
          for index, seconds in enumerate((0.3456, 0.034, 4.56, 123.4, 0.0))]
  header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")]
                      for line in compare_lib.format_table(rows, markdown=True).splitlines())
  column = header.index("train s")
  assert [row[column] for row in body] == ["0.346", "0.0340", "4.56", "123", "0"]
  assert [compare_lib.seconds_cell(seconds) for seconds in (0.17, 1.5, 20, 9.996, 99.96, 3618.4)
          ] == ["0.170", "1.50", "20.0", "10.0", "100", "3618"]
  # A teacher imported from elsewhere trained for no time distill knows of: no 0 in the column.
  imported = {"run": "logits", "role": "teacher", "model": "logits", "params": None,
              "test_accuracy": 0.9, "train_seconds": 0.0, "imported_from": "/data/logits.npz"}
  assert compare_lib.format_table([imported], markdown=True).splitlines()[2].endswith("| - |")
  assert compare_lib.seconds_cell(float("nan")) == compare_lib.seconds_cell(None) == "-"
  # A sweep's table writes its runs' mean seconds the same way.
  from distill.sweep_results import table_cells  # noqa: PLC0415

  student = {"role": "student", "model": "cnn", "params": 1922, "mode": "hard", "method": None,
             "soft_loss": None, "n": 1, "test_accuracy_mean": 0.8, "test_accuracy_std": 0.0,
             "agreement_mean": 0.9, "gap_closed": None, "train_seconds_mean": 0.034}
  assert table_cells([student])[1][0][-1] == "0.0340"


def test_a_many_class_confusion_matrix_stays_small_and_numberless(tmp_path):
  """100 classes: a figure of fixed size (it grew to ~4900 px and 1.3 MB, embedded in
  report.html as base64) without the counts its cells are too small for, ticked by class index;
  10 classes keep their counts and names."""
  import matplotlib.image  # noqa: PLC0415
  import matplotlib.pyplot as plt  # noqa: PLC0415

  from distill import plots  # noqa: PLC0415

  rng = np.random.default_rng(0)
  labels = rng.integers(0, 100, 5000)
  predictions = np.where(rng.random(5000) < 0.5, labels, rng.integers(0, 100, 5000))
  names = [f"class_{i}" for i in range(100)]
  for count in (31, 50, 100):  # 50: where a tick step of round(n / 10, -1) came out 0
    figure = plots.confusion_matrix_figure(labels % count, predictions % count, names[:count],
                                           title="wide")
    ax = figure.axes[0]
    figure.canvas.draw()
    ticks = [tick for tick in ax.get_xticks() if 0 <= tick < count]
    assert len(ax.texts) == 0 and 4 <= len(ticks) <= 12, (count, ticks)
    assert "class_7" not in {t.get_text() for t in ax.get_xticklabels()}
    plt.close(figure)
  path = plots.confusion_matrix(labels, predictions, names, title="wide", path=tmp_path / "c.png")
  height, width = matplotlib.image.imread(path).shape[:2]
  assert max(height, width) <= 1200 and path.stat().st_size < 200_000, (height, width)
  assert len(report_lib._figure_html(path, "confusion")) < 300_000
  few = plots.confusion_matrix_figure(labels % 10, predictions % 10, names[:10], title="ten")
  assert len(few.axes[0].texts) == 100
  assert [t.get_text() for t in few.axes[0].get_xticklabels()] == names[:10]
  plt.close(few)


def _dataset_runs(root):
  """Runs of five data sets, as a new user's runs/* met them: a 3-class set's teacher at 100%,
  digits at ~50%, and three npz files (each summary says only 'npz'), two of them shapes.npz in
  different folders; one more digits student from before summaries held fingerprints."""
  def run(name, dataset, fingerprint, accuracy, data_dir="", role="teacher"):
    run_dir = _write_summary(root / name, role=role, model="cnn", loss="soft", params=1922,
                             dataset=dataset, test_accuracy=accuracy, train_seconds=1.0,
                             **({"dataset_fingerprint": fingerprint} if fingerprint else {}))
    (run_dir / "recipe.json").write_text(json.dumps({"data": {"dataset": dataset,
                                                              "data_dir": data_dir}}))
    return run_dir

  return [run("iris", "iris", "a" * 64, 1.0), run("digits", "digits", "b" * 64, 0.52),
          run("shapes", "npz", "c" * 64, 0.008, "/data/shapes.npz"),
          run("digits-old", "digits", None, 0.50, role="student"),
          run("letters", "npz", "d" * 64, 0.3, "/data/letters.npz"),
          run("shapes-2", "npz", "e" * 64, 0.4, "/other/shapes.npz")]


def test_compare_names_each_runs_data_set_when_they_used_several(tmp_path):
  """Runs of several data sets: a dataset column (an npz file by its stem; files of one name
  by their folders), the runs of each data set together, and a note that their accuracies do
  not compare; --json carries the name, fingerprint and path. One data set: neither."""
  runs = _dataset_runs(tmp_path / "runs")
  table = compare_lib.compare_runs(runs, markdown=True)
  header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")]
                      for line in table.split("\n\n")[0].splitlines())
  assert header[:2] == ["run", "dataset"], header
  assert [(Path(row[0]).name, row[1]) for row in body] == [
      ("iris", "iris"), ("digits", "digits"), ("digits-old", "digits"),
      ("shapes", "shapes (data/shapes.npz)"), ("letters", "letters"),
      ("shapes-2", "shapes (other/shapes.npz)")]
  assert ("these runs used 5 data sets (iris, digits, shapes (data/shapes.npz), letters, "
          "shapes (other/shapes.npz)): their accuracies do not compare across data sets") in table
  as_json = {Path(row["run"]).name: row for row in json.loads(
      compare_lib.compare_runs(runs, as_json=True))}
  assert (as_json["shapes"]["dataset"], as_json["shapes"]["dataset_name"],
          as_json["shapes"]["dataset_fingerprint"], as_json["shapes"]["data_dir"]) == (
              "npz", "shapes (data/shapes.npz)", "c" * 64, "/data/shapes.npz")
  assert as_json["digits-old"]["dataset"] == as_json["digits-old"]["dataset_name"] == "digits"
  # Two npz files both recorded as 'npz' are two data sets even where their stems differ.
  two_npz = compare_lib.compare_runs([runs[2], runs[4]])
  assert "2 data sets (shapes, letters)" in two_npz and "shapes" in two_npz.splitlines()[2]
  # One data set (an older summary without a fingerprint counts as the same): no column.
  one = compare_lib.compare_runs([runs[1], runs[3]], markdown=True)
  assert "dataset" not in one.splitlines()[0] and "data sets" not in one
  assert compare_lib.datasets_note(compare_lib.collect_runs(runs[:2])[0]) is not None
  # A summary too old to name its data set takes the name from its recipe: with the digits,
  # not a data set of its own.
  oldest = _write_summary(tmp_path / "runs" / "digits-oldest", role="student", model="cnn",
                          loss="hard", params=1922, test_accuracy=0.4, train_seconds=1.0)
  (oldest / "recipe.json").write_text(json.dumps({"data": {"dataset": "digits"}}))
  rows = json.loads(compare_lib.compare_runs([runs[1], oldest], as_json=True))
  assert [row.get("dataset_name") for row in rows] == ["digits", "digits"]
  # One path read twice, its file changed between: told apart by their fingerprints.
  changed = [{"dataset": "npz", "data_dir": place, "dataset_fingerprint": mark * 64}
             for mark, place in (("f", "x.npz"), ("a", "./x.npz"))]
  assert [row["dataset_name"] for row in compare_lib.with_dataset_names(changed)] == [
      "x (ffffffff)", "x (aaaaaaaa)"]


def test_the_report_draws_one_accuracy_figure_per_data_set(tmp_path):
  """The accuracy-vs-parameters figure never puts two data sets on one axis: the report draws
  one per data set, named after it in its file, title and caption, and says the accuracies do
  not compare; the figure function refuses rows of several."""
  from distill import plots  # noqa: PLC0415

  rows = compare_lib.with_dataset_names(compare_lib.collect_runs(
      _dataset_runs(tmp_path / "runs"))[0])
  with pytest.raises(ValueError, match="one figure per data set"):
    plots.accuracy_points(rows)
  out = tmp_path / "out"
  out.mkdir()
  overview = report_lib._overview_figures(rows, out)
  assert sorted(p.name for p in out.glob("*.png")) == sorted(
      f"accuracy-vs-params-{name}.png" for name in (
          "iris", "digits", "shapes_data_shapes.npz", "letters", "shapes_other_shapes.npz"))
  assert overview.count("<figure>") == 5 and "on digits, one figure per data set" in overview
  assert all(report_lib._FIGURE_NAME.fullmatch(p.name) for p in out.glob("*.png"))
  digits = [row for row in rows if row["dataset"] == "digits"]
  figure = plots.accuracy_vs_params_figure(digits, dataset="digits")
  assert "on digits" in figure.axes[0].get_title()
  import matplotlib.pyplot as plt  # noqa: PLC0415

  plt.close(figure)
  page = report_lib._page(rows, [], compare_lib.format_table(rows), overview, [])
  assert "their accuracies do not compare across data sets" in page


def test_image_captions_wrap_to_their_cell_so_long_class_names_do_not_run_together(tmp_path):
  from distill import plots  # noqa: PLC0415

  caption = "S:green-circle T:green-square\n(yellow-triangle)"
  assert plots._wrapped(caption) == "S:green-circle\nT:green-square\n(yellow-triangle)"
  assert plots._wrapped("3 / 5") == "3 / 5"
  images = np.zeros((3, 8, 8, 1), np.uint8)
  path = plots.image_grid(images, [caption] * 3, title="t", path=tmp_path / "grid.png")
  assert path.stat().st_size > 0

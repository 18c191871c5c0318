"""The whole workflow through the CLI, on digits, at a few seconds per run."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_FLAGS, copy_runs, run_cli

import distill
from distill.config import TrainSettings, load_recipe
from distill.workflow import warmup_note


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_digits_runs):
  return copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("runs"), teacher="teacher") / "teacher"


def test_teacher_writes_a_complete_run(teacher_dir):
  summary = json.loads((teacher_dir / "summary.json").read_text())
  for key in ("role", "model", "dataset", "params", "steps", "init_loss", "init_loss_expected",
              "final_train_loss", "val_accuracy", "test_accuracy", "train_seconds",
              "images_per_second", "params_sha256", "cpu", "inputs"):
    assert key in summary, key
  assert summary["inputs"]["image_shape"] == [8, 8, 1]
  assert summary["inputs"]["class_names"] == [str(digit) for digit in range(10)]
  assert summary["role"] == "teacher" and summary["steps"] == 20
  assert summary["init_loss"] == pytest.approx(np.log(10), abs=1e-4)
  assert json.loads((teacher_dir / "recipe.json").read_text())["data"]["dataset"] == "digits"
  assert len((teacher_dir / "metrics.jsonl").read_text().splitlines()) == 2
  with np.load(teacher_dir / "targets.npz") as targets:
    probs = targets["train_probs"]
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert probs.shape[1] == 10


def test_student_soft_and_hard_then_compare(teacher_dir, tmp_path):
  soft = run_cli("student", "--teacher", teacher_dir, "--model", "cnn",
              "--workdir", tmp_path / "cnn", "-q", *TINY_FLAGS)
  assert soft.exit_code == 0, soft.output
  hard = run_cli("student", "--teacher", teacher_dir, "--model", "linear", "--loss", "hard",
              "--workdir", tmp_path / "linear-hard", "-q", *TINY_FLAGS)
  assert hard.exit_code == 0, hard.output
  summary = json.loads((tmp_path / "cnn" / "summary.json").read_text())
  assert summary["loss"] == "soft" and summary["model"] == "cnn"
  assert 0.0 <= summary["agreement_with_teacher"] <= 1.0
  teacher = json.loads((teacher_dir / "summary.json").read_text())
  assert summary["teacher_test_accuracy"] == teacher["test_accuracy"]

  table = run_cli("compare", teacher_dir, tmp_path / "cnn", tmp_path / "linear-hard", tmp_path)
  assert table.exit_code == 0, table.output
  lines = table.stdout.splitlines()
  assert "teacher" in lines[2] and "skipped" not in table.stdout
  assert table.stderr.startswith(f"skipped: {tmp_path} is a folder of runs")  # a note, apart
  as_json = run_cli("compare", "--json", teacher_dir, tmp_path)
  json.loads(as_json.stdout)  # the JSON alone on stdout
  assert as_json.stderr.startswith(f"skipped: {tmp_path} is a folder of runs")
  assert "machines" not in table.output  # every run here trained on this machine
  # A run copied in from another machine: its seconds are not comparable, and compare says so.
  moved = tmp_path / "linear-hard" / "summary.json"
  moved.write_text(json.dumps({**json.loads(moved.read_text()), "cpu": "Other CPU, 64 cores"}))
  table = run_cli("compare", teacher_dir, tmp_path / "cnn", tmp_path / "linear-hard")
  assert "train s comes from 2 machines" in table.output
  assert "Other CPU, 64 cores (1 run)" in table.output
  as_json = run_cli("compare", "--json", teacher_dir, tmp_path / "cnn")
  rows = json.loads(as_json.stdout)
  assert [r["role"] for r in rows] == ["teacher", "student"]


def test_a_hard_label_student_needs_no_exported_targets(teacher_dir, tmp_path):
  """A teacher trained with --no-export: a student on labels compares with the teacher's own
  test predictions; one taught by targets is still sent to `distill export`."""
  bare = tmp_path / "bare-teacher"
  shutil.copytree(teacher_dir, bare)
  for name in ("targets.npz", "targets.json"):
    (bare / name).unlink()
  hard = run_cli("student", "--teacher", bare, "--model", "linear", "--loss", "hard",
                 "--workdir", tmp_path / "hard", "-q", *TINY_FLAGS)
  assert hard.exit_code == 0, hard.output
  summary = json.loads((tmp_path / "hard" / "summary.json").read_text())
  teacher = json.loads((teacher_dir / "summary.json").read_text())
  assert summary["teacher_params_sha256"] == teacher["params_sha256"]
  with np.load(tmp_path / "hard" / "predictions.npz") as student, np.load(
      teacher_dir / "predictions.npz") as taught_by:
    agreement = np.mean(student["test_logits"].argmax(-1) == taught_by["test_logits"].argmax(-1))
  assert summary["agreement_with_teacher"] == pytest.approx(agreement)
  soft = run_cli("student", "--teacher", bare, "--workdir", tmp_path / "soft", *TINY_FLAGS)
  assert soft.exit_code == 2 and "distill export --teacher" in soft.stderr
  # Predictions of other data do not compare: refused, not compared.
  moved = json.loads((bare / "summary.json").read_text())
  (bare / "summary.json").write_text(json.dumps({**moved, "dataset_fingerprint": "0" * 64}))
  other = run_cli("student", "--teacher", bare, "--loss", "hard", "--workdir", tmp_path / "o",
                  *TINY_FLAGS)
  assert other.exit_code == 2 and "was trained on other data" in other.stderr


def test_export_again_at_another_temperature(teacher_dir):
  result = run_cli("export", "--teacher", teacher_dir, "--temperature", "4", "-q")
  assert result.exit_code == 0, result.output
  meta = json.loads((teacher_dir / "targets.json").read_text())
  assert meta["temperature"] == 4.0
  with np.load(teacher_dir / "targets.npz") as targets:
    hot = targets["train_probs"]
  # Softer targets: lower max probability than at T=1.
  assert run_cli("export", "--teacher", teacher_dir, "-q").exit_code == 0
  with np.load(teacher_dir / "targets.npz") as targets:
    cold = targets["train_probs"]
  assert hot.max(-1).mean() < cold.max(-1).mean()


def test_student_refuses_targets_from_other_data(teacher_dir, tmp_path):
  result = run_cli("student", "--teacher", teacher_dir, "--workdir", tmp_path / "s",
                "--set", "data.val_size=100", *TINY_FLAGS)
  assert result.exit_code == 2
  assert "targets" in result.stderr and "other data" in result.stderr
  assert "Traceback" not in result.output
  assert not (tmp_path / "s").exists()


def test_teacher_settings_given_to_a_student_are_noted_as_unused(teacher_dir, capsys):
  """One set of flags may serve both commands; the student says which of them it cannot use."""
  from distill import run_recipe  # noqa: PLC0415
  from distill.console import Console  # noqa: PLC0415

  recipe = run_recipe.student_recipe(teacher_dir, None, ["teacher.steps=7", "student.steps=3"],
                                   console=Console())
  assert recipe["student"]["steps"] == 3
  note = capsys.readouterr().err
  assert "note: teacher.steps changes nothing for a student" in note and str(teacher_dir) in note
  run_recipe.student_recipe(teacher_dir, None, ["student.steps=3"], console=Console())
  run_recipe.student_recipe(teacher_dir, None, ["teacher.steps=7"], console=Console(quiet=True))
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args, message", [
    (["--loss", "hard", "-T", "4"], "student.temperature=4.0 changes nothing for a student on "
                                    "hard labels"),
    (["--loss", "hard", "--alpha", "0.5"], "student.alpha=0.5 changes nothing"),
    (["--loss", "hard", "--set", "student.dkd.beta=2"], "student.dkd.beta=2 changes nothing"),
    (["--steps", "5", "--set", "student.steps=8"], "--steps 5 and --set student.steps=8 "
                                                   "disagree"),
])
def test_a_student_refuses_settings_it_would_ignore(teacher_dir, tmp_path, args, message):
  result = run_cli("student", "--teacher", teacher_dir, "--workdir", tmp_path / "s", *args)
  assert result.exit_code == 2, result.output
  assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "s").exists()


def test_a_sweeps_hard_runs_take_the_distillation_settings_of_its_soft_runs(teacher_dir,
                                                                            tmp_path):
  """A sweep's overrides serve its soft and hard runs alike: there they are not refused."""
  result = run_cli("sweep", "--teacher", teacher_dir, "--out", tmp_path, "--model", "linear",
                   "--mode", "hard", "--mode", "targets", "--seed", "0", "--steps", "5",
                   "--set", "student.temperature=3", "-q")
  assert result.exit_code == 0, result.output
  taught = json.loads((tmp_path / "linear-targets-s0" / "summary.json").read_text())
  assert taught["temperature"] == 3.0
  assert (tmp_path / "linear-hard-s0" / "summary.json").is_file()


def test_a_bad_model_name_is_named_before_a_missing_teacher(tmp_path):
  result = run_cli("student", "--teacher", tmp_path / "none", "--model", "nope")
  assert result.exit_code == 2
  assert result.stderr.strip() == ("error: unknown model 'nope' for student; "
                                   "valid: cnn, linear, mlp, vit")


def test_finished_run_is_not_overwritten(teacher_dir):
  before = (teacher_dir / "summary.json").read_text()
  result = run_cli("teacher", "--recipe", "digits", "--workdir", teacher_dir, *TINY_FLAGS)
  assert result.exit_code == 2 and "--overwrite" in result.stderr
  assert (teacher_dir / "summary.json").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["teacher", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["teacher", "--set", "teacher.model=resnet"], "unknown model 'resnet'"),
    (["teacher", "--set", "teacher.lr=1"], "unknown recipe key 'teacher.lr'"),
    (["teacher", "--steps", "0"], "teacher.steps must be positive"),
    (["teacher", "--set", "teacher.steps=ten"], "must be int"),
    (["teacher", "--recipe", "nope"], "recipe 'nope' not found"),
    (["teacher", "--dataset", "npz", "--data-dir", "/nonexistent/x.npz"], "/nonexistent/x.npz"),
    (["teacher", "--recipe", "digits", "--batch-size", "5000"], "larger than the"),
    (["teacher", "--recipe", "digits", "--set", "teacher.vit.patch=3"],
     "the teacher (teacher.vit.*): vit patch 3 must divide the image size 8x8; 1, 2, 4, 8 do"),
    (["student", "--teacher", "/nonexistent/teacher"], "is not found"),
    (["export", "--teacher", "/nonexistent/teacher"], "is not found"),
    (["compare", "/nonexistent/run"], "no finished runs"),
])
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
  result = run_cli(*args, "--workdir", tmp_path / "w") if args[0] == "teacher" else run_cli(*args)
  assert result.exit_code == 2, result.output
  assert message in result.stderr
  assert "Traceback" not in result.output
  assert len(result.stderr.strip().splitlines()) <= 2


def test_help_does_not_import_jax():
  code = ("import sys; from click.testing import CliRunner; from distill.cli import main; "
          "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
          "print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_a_student_may_not_train_in_its_teachers_folder(tiny_digits_runs, tmp_path):
  # Its teacher's finished run once met the advice to pass --overwrite, which replaced it.
  teacher = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher") / "teacher"
  before = sorted(path.name for path in teacher.iterdir())
  for extra in ([], ["--overwrite"]):
    result = run_cli("student", "--teacher", teacher, "--workdir", teacher / "." , "-q",
                     *TINY_FLAGS, *extra)
    assert result.exit_code == 2, result.output
    assert (f"error: --workdir {teacher} is the teacher's own folder: the student would "
            f"replace its teacher; give it a folder of its own, e.g. --workdir "
            f"{tmp_path / 'student-cnn'}") in result.stderr
    assert "--overwrite" not in result.stderr
  assert sorted(path.name for path in teacher.iterdir()) == before


def test_help_lists_every_command_whole_in_the_order_of_the_workflow():
  from distill.cli import main  # noqa: PLC0415

  result = CliRunner().invoke(main, ["--help"], terminal_width=80)
  assert result.exit_code == 0, result.output
  listed = re.findall(r"^  ([a-z-]+) +(\S.*)$", result.output.split("Train and compare:")[1],
                      re.MULTILINE)
  assert [name for name, _ in listed] == ["teacher", "student", "sweep", "compare", "report",
                                          "import-teacher", "export", "export-model", "predict",
                                          "bench", "make-shards", "recipes"]
  assert sorted(name for name, _ in listed) == sorted(main.commands)  # none left out
  assert not [line for _, line in listed if line.endswith("...")]  # none cut short
  for command in ["", *main.commands]:  # examples too, which click does not wrap
    shown = CliRunner().invoke(main, [*command.split(), "--help"], terminal_width=80).output
    assert [line for line in shown.splitlines() if len(line) > 80] == [], command


def test_training_help_shows_each_recipes_defaults():
  from distill import config  # noqa: PLC0415
  from distill.cli import main  # noqa: PLC0415

  for role in ("teacher", "student"):
    shown = " ".join(CliRunner().invoke(main, [role, "--help"]).output.split())
    for key in ("steps", "batch_size"):
      values = {name: config.load_recipe(name)[role][key] for name in ("fashion_mnist", "digits")}
      assert f"[default: the recipe's {role}.{key}: {values['fashion_mnist']:,} in fashion_mnist" \
          in shown, (role, key)
      assert f"{values['digits']:,} in digits" in shown, (role, key)
  teacher_help, student_help = (" ".join(CliRunner().invoke(main, [role, "--help"]).output.split())
                                 for role in ("teacher", "student"))
  assert "[default: fashion_mnist]" in teacher_help
  assert ("[default: the recipe's data.dataset: fashion_mnist in fashion_mnist and demo, digits "
          "in digits]") in teacher_help
  # A student's data is its teacher's unless given: no recipe's dataset is its default.
  assert "see --data-dir). [default: the teacher's data]" in student_help
  # --set's examples are keys the command reads: a student reads none of teacher.*.
  for command, role in (("teacher", "teacher"), ("student", "student"), ("sweep", "student")):
    shown = " ".join(CliRunner().invoke(main, [command, "--help"]).output.split())
    examples = re.findall(r"--set (\w+)\.", shown)
    assert examples and set(examples) == {role}, (command, examples)


def test_compare_help_explains_every_column():
  from distill.cli import main  # noqa: PLC0415
  from distill.compare import COLUMNS  # noqa: PLC0415

  shown = " ".join(CliRunner().invoke(main, ["compare", "--help"]).output.split())
  explained = shown.partition("The columns:")[2]
  plain = {"run", "role", "model", "loss", "teaching", "method", "params", "test acc"}
  for _, header in COLUMNS:
    assert header in plain or re.search(rf"\b{re.escape(header)}\b", explained), header


def test_losses_importable_from_the_package():
  logits = np.array([[2.0, 0.0, -1.0]])
  assert float(distill.soft_cross_entropy(logits, np.array([[1.0, 0.0, 0.0]]))) == pytest.approx(
      float(distill.hard_cross_entropy(logits, np.array([0]))), rel=1e-6)


@pytest.mark.parametrize("overrides, name", [
    ([], "student-cnn"),
    (["student.loss=hard"], "student-cnn-hard"),
    (["student.model=mlp", "student.teaching=online"], "student-mlp-online"),
    (["student.method=dkd"], "student-cnn-dkd"),
    (["student.method=hint", "student.teaching=online"], "student-cnn-hint-online"),
    # A method's named variant, so the README's hard and soft tokens do not share a folder.
    (["student.model=vit", "student.method=token", "student.token.variant=soft"],
     "student-vit-token-soft"),
    (["student.method=hint", "student.teaching=online", "student.hint.kind=cosine"],
     "student-cnn-hint-cosine-online"),
    # So `--soft-loss kl` after a soft_ce student does not meet its folder.
    (["student.soft_loss=kl"], "student-cnn-kl"),
    (["student.method=dkd", "student.soft_loss=kl"], "student-cnn-dkd"),  # dkd reads none
    (["student.teaching=online", "student.mixup=0.2", "student.alpha=1.0"],
     "student-cnn-online-mixup"),
])
def test_a_students_default_workdir_says_how_it_was_taught(overrides, name):
  from distill import config, run_recipe  # noqa: PLC0415

  recipe = config.load_recipe("digits", overrides)
  assert run_recipe.default_student_workdir(recipe) == Path("runs") / name


@pytest.mark.parametrize("overrides, earlier", [
    (["student.soft_loss=kl"], "student-cnn"),  # named so before ee2d5e4
    (["student.model=vit", "student.method=token", "student.token.variant=soft",
      "student.teaching=online", "student.mixup=0.2", "student.alpha=1.0"],
     "student-vit-token-online"),  # before 860e891 too
])
def test_an_earlier_distills_folder_of_the_same_student_is_where_it_goes_on(
    overrides, earlier, tmp_path, monkeypatch):
  """After an upgrade the same command resumes its run: a kl student was runs/student-cnn."""
  from distill import config, run_recipe  # noqa: PLC0415
  from distill.console import Console  # noqa: PLC0415
  from distill.io import write_json  # noqa: PLC0415

  monkeypatch.chdir(tmp_path)
  recipe = config.load_recipe("digits", overrides)
  default = run_recipe.default_student_workdir(recipe)
  teacher = tmp_path / "runs" / "teacher"
  assert run_recipe.student_workdir(recipe, teacher) == default  # nothing there yet
  write_json(Path("runs") / earlier / "recipe.json", {**recipe, "teacher_dir": str(teacher)})
  notes = []
  monkeypatch.setattr(Console, "info", lambda self, text: notes.append(text))
  assert run_recipe.student_workdir(recipe, teacher, Console()) == Path("runs") / earlier
  assert notes == [f"note: runs/{earlier} (an earlier distill's name for it) holds this run, "
                   f"unfinished: it resumes there, not in {default}"]
  # Another teacher's or another recipe's run there is not this one; today's folder comes first.
  assert run_recipe.student_workdir(recipe, tmp_path / "other") == default
  other = config.load_recipe("digits", [*overrides, "seed=3"])
  assert run_recipe.student_workdir(other, teacher) == run_recipe.default_student_workdir(other)
  default.mkdir(parents=True)
  assert run_recipe.student_workdir(recipe, teacher) == default


def test_a_command_stopped_at_once_says_what_was_kept(monkeypatch):
  """A second Ctrl-C stops a run without its checkpoint: the line says what a resume finds."""
  from distill import workflow  # noqa: PLC0415

  def stopped(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(workflow, "train_teacher", stopped)
  result = run_cli("teacher", "-r", "digits", "-w", "runs/never-written")
  assert result.exit_code == 130
  assert result.stderr.strip() == ("interrupted: nothing saved since the last checkpoint, if "
                                   "there was one; run the same command again to resume from it")


def test_targets_another_model_exported_into_a_teacher_folder_are_refused(tiny_digits_runs,
                                                                           tmp_path):
  # Another teacher's targets.npz copied in taught the student, while its summary and result
  # line named this teacher's accuracy.
  teacher = copy_runs(tiny_digits_runs, tmp_path, teacher="teacher") / "teacher"
  summary_path = teacher / "summary.json"  # as if the targets were another model's
  summary = json.loads(summary_path.read_text())
  summary["params_sha256"] = "0" * 64
  summary_path.write_text(json.dumps(summary))
  result = run_cli("student", "--teacher", teacher, "--workdir", tmp_path / "student", "-q",
                   *TINY_FLAGS)
  assert result.exit_code == 2, result.output
  assert result.stderr.strip() == (
      f"error: {teacher / 'targets.npz'} was not exported by the teacher in {teacher} (its "
      "parameters differ from those summary.json records); export them again: distill export "
      f"--teacher {teacher}")
  assert not (tmp_path / "student").exists()


def test_a_message_names_a_few_values_and_counts_only_two_or_more():
  import numpy as np  # noqa: PLC0415

  from distill.errors import first_few  # noqa: PLC0415

  assert first_few(["a", "b", "c", "d"], 3) == "a, b, c, d"  # 'and 1 more' would hide 'd'
  assert first_few(["a", "b", "c", "d", "e"], 3) == "a, b, c and 2 more"
  assert first_few(np.array(["cat", "dog"]), quoted=True) == "'cat', 'dog'"  # not np.str_
  assert first_few(range(1, 1200), 2, sep="; ") == "1; 2 and 1,197 more"


def test_out_of_memory_and_a_full_disk_are_one_line_each(monkeypatch, tmp_path):
  import errno  # noqa: PLC0415

  from distill import workflow  # noqa: PLC0415
  from distill.errors import resource_failure  # noqa: PLC0415

  def full_disk():
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:  # Orbax wraps it in its own error
      raise ValueError("RESOURCE_EXHAUSTED: could not write the checkpoint") from e

  with pytest.raises(ValueError) as wrapped:
    full_disk()
  assert str(resource_failure(wrapped.value)) == (
      "the disk is full (no space left on device); free some space and run the same command "
      "again: it resumes from the last checkpoint")
  oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 13195087478336 bytes.")
  assert str(resource_failure(oom)).startswith("out of memory (13.2 TB asked for); lower the "
                                               "batch size (--batch-size")
  assert resource_failure(RuntimeError("INVALID_ARGUMENT: shapes differ")) is None
  assert str(resource_failure(OSError(errno.EROFS, "Read-only file system", "/mnt/runs/t"))) == (
      "cannot use /mnt/runs/t: read-only file system; give a folder you can write to, or fix "
      "its permissions")
  assert resource_failure(OSError(errno.ENOENT, "No such file or directory")) is None

  def out_of_memory(*args, **kwargs):
    raise oom

  monkeypatch.setattr(workflow, "train_teacher", out_of_memory)
  result = run_cli("teacher", "--recipe", "digits", "--workdir", tmp_path / "t")
  assert result.exit_code == 1
  assert result.stderr.startswith("error: out of memory (13.2 TB asked for)")
  assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
  def a_bug(*args, **kwargs):
    raise KeyError("a bug")

  monkeypatch.setattr(workflow, "train_teacher", a_bug)
  with pytest.raises(KeyError):  # anything else is a bug: its traceback is kept
    run_cli("teacher", "--recipe", "digits", "--workdir", tmp_path / "t")


def test_a_warm_up_as_long_as_the_run_is_noted(tmp_path):
  # --steps 300 under a recipe's 1,000 warm-up steps trained without decay, and said nothing.
  short = run_cli("teacher", "--recipe", "digits", "--steps", "20", "--no-export",
                  "--workdir", tmp_path / "short")
  assert short.exit_code == 0, short.output
  assert ("note: teacher.warmup_steps 30 is not below its 20 steps: the learning rate rises over "
          "the whole run and never decays; for a short run pass e.g. --set "
          "teacher.warmup_steps=2") in short.stderr
  # A warm-up shorter than the run, or a one-step run, is not noted (asked of the check the
  # run above printed from, rather than by training the same teacher twice).
  for steps, warmup in ((20, 2), (1, 30)):
    recipe = load_recipe("digits", [f"teacher.steps={steps}", f"teacher.warmup_steps={warmup}"])
    assert warmup_note("teacher", TrainSettings.of(recipe, "teacher")) is None

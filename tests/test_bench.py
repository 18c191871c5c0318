"""`distill bench`: what it measures and reports, on tiny settings (speed is not asserted)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_FLAGS, benchmark_script, run_cli

from distill import backend, bench, config

KEYS = ("bare_step_images_per_second", "loop_images_per_second", "export_images_per_second",
        "compile_seconds", "peak_rss_mb")


def _bench(*args):
  result = run_cli("bench", "--recipe", "digits", *TINY_FLAGS, "--bare-steps", 10, "--json",
                   "-q", *args)
  assert result.exit_code == 0, result.output
  assert "note:" not in result.stderr  # 10 steps are two whole dispatches of 5
  return json.loads(result.stdout)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_bench_reports_every_measure_and_its_settings(role):
  report = _bench("--role", role)
  for key in KEYS:
    assert report[key] > 0, key
  assert report["loop_to_bare_ratio"] == pytest.approx(
      report["loop_images_per_second"] / report["bare_step_images_per_second"], abs=1e-3)
  assert report["export_to_train_ratio"] == pytest.approx(
      report["export_images_per_second"] / report["bare_step_images_per_second"], abs=0.01)
  # Settings measured, so a row can be reproduced.
  assert report["role"] == role and report["recipe"] == "digits"
  assert report["batch_size"] == 32 and report["steps_per_dispatch"] == 5
  assert report["bare_steps"] == 10 and report["backend"] == "cpu"
  assert report["cpu"] == backend.cpu_description() and report["device_kind"] == "cpu"
  assert report["model"] == ("vit" if role == "teacher" else "cnn")
  # By default the loop runs one eval/checkpoint period (TINY: both every 10 steps).
  assert report["loop_steps"] == 10
  # Each rate is its steps' images over its seconds (compilation excluded); the seconds are
  # rounded to the millisecond, which on a tiny run's ~10 ms moves the rate by several percent.
  for prefix, rate in (("bare", "bare_step"), ("loop", "loop")):
    images = report[f"{prefix}_steps"] * report["batch_size"]
    seconds = report[f"{prefix}_seconds"]
    assert seconds > 0
    assert (images / (seconds + 0.0005) - 0.1 <= report[f"{rate}_images_per_second"]
            <= images / max(seconds - 0.0005, 1e-9) + 0.1), (prefix, seconds)
  assert report["loop_compile_seconds"] > 0


def test_a_student_that_trains_otherwise_than_timed_is_told_so():
  """bench times kd on exported targets; a recipe's online hint student was timed so in
  silence, without its teacher's forward pass in the step."""
  result = run_cli("bench", "--recipe", "digits", *TINY_FLAGS, "--bare-steps", 10, "-q",
                   "--role", "student", "--set", "student.method=hint", "--set",
                   "student.teaching=online", "--set", "student.augment=true")
  assert result.exit_code == 0, result.output
  assert ("note: bench times a student's step with kd on exported targets, un-augmented; this "
          "recipe's method hint, teaching=online, augmentation is not what is timed"
          ) in result.stderr


def test_bench_text_notes_rounded_bare_steps_and_prints_choices_readably():
  """--bare-steps 7 is timed as one dispatch of 5, and stderr says so; the text output has
  one line a backend choice, not a dict's repr."""
  result = run_cli("bench", "--recipe", "digits", *TINY_FLAGS, "--bare-steps", 7, "-q")
  assert result.exit_code == 0, result.output
  assert ("note: --bare-steps 7 is timed as 5 steps: the bare step runs whole dispatches of 5 "
          "steps") in result.stderr
  lines = result.stdout.splitlines()
  assert any(line.split(":")[0].strip() == "bare_steps" and line.endswith(": 5")
             for line in lines)
  choices = [line.strip() for line in lines if line.strip().startswith("backend_choices.")]
  assert f"backend_choices.conv_stem: {backend.choices().conv_stem}" in choices
  assert "{" not in result.stdout and "'" not in result.stdout


def test_format_report_lines_up_keys_and_spells_out_dicts():
  text = bench.format_report({"role": "teacher", "bare_steps": 10,
                              "backend_choices": {"unroll_conv_scan": True,
                                                  "compiler_options": {"a": "1", "b": "2"},
                                                  "more": {}}})
  assert text.splitlines() == [
      "                            role: teacher",
      "                      bare_steps: 10",
      "backend_choices.unroll_conv_scan: True",
      "backend_choices.compiler_options: a=1, b=2",
      "            backend_choices.more: none"]


def test_bench_steps_and_synthetic_data():
  report = _bench("--steps", 20, "--synthetic", "8x8x3:200:4")
  assert report["loop_steps"] == 20
  assert report["image_shape"] == [8, 8, 3] and report["dataset"] == "synthetic 8x8x3:200:4"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--bare-steps", "-1"], "--bare-steps must be positive, got -1"),
    (["--synthetic", "32x32:10"], "--synthetic expects HxWxC:N:CLASSES"),
    (["--synthetic", "8x8x1:100:1"], "CLASSES at least 2"),
    (["--synthetic", "8x0x1:100:4"], "the sizes and N must be at least 1"),
])
def test_bench_rejects_bad_arguments(args, message):
  result = run_cli("bench", "--recipe", "digits", *TINY_FLAGS, "--json", "-q", *args)
  assert result.exit_code == 2 and message in result.output


def test_a_batch_larger_than_the_data_is_refused_with_the_size_that_fits():
  """As `distill teacher` and `student` say it: the --batch-size to pass."""
  result = run_cli("bench", "--recipe", "digits", "--batch-size", "5000", "-q")
  assert result.exit_code == 2
  assert result.stderr.strip() == ("error: batch size 5000 is larger than the 1,288 training "
                                   "examples: pass --batch-size 1024")
  # Refused before any note on how the steps are timed.
  result = run_cli("bench", "--recipe", "digits", "--batch-size", "4096", "--steps", "2")
  assert result.exit_code == 2 and "note:" not in result.stderr
  result = run_cli("bench", "--recipe", "digits", "--synthetic", "8x8x1:100:4",
                   "--batch-size", "128", "-q")
  assert result.exit_code == 2
  assert result.stderr.strip() == ("error: batch size 128 is larger than the 100 training "
                                   "examples: pass --batch-size 64 (or a larger N in --synthetic)")


def test_bare_step_and_real_loop_time_the_steps_asked_for():
  """The two timings `benchmarks/keras_fit.py` sets beside Keras, each on its own."""
  recipe = config.load_recipe("digits", [*TINY, "student.model=mlp"])
  bare = bench.bare_step(recipe, role="student", steps=10)
  loop = bench.real_loop(recipe, role="student", steps=20)
  assert bare.steps == 10 and bare.images_per_second > 0
  assert loop.steps == 20 and loop.images_per_second > 0 and loop.init_loss > 0


def test_hand_written_step_of_keras_fit_learns():
  """keras_fit.py's hand-written JAX student (its floor for distill's step) trains: it fits a
  rule of the pixels that a linear model can learn."""
  keras_fit = benchmark_script("keras_fit")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 28, 28, 1)).astype(np.float32)
  brighter_left = images[:, :, :14].mean((1, 2, 3)) > images[:, :, 14:].mean((1, 2, 3))
  targets = np.eye(10, dtype=np.float32)[brighter_left.astype(int)]
  for name in ("linear", "mlp"):
    recipe = config.load_recipe("demo", [f"student.model={name}", "student.batch_size=32",
                                         "student.steps=300", "student.warmup_steps=10"])
    settings = config.TrainSettings.of(recipe, "student")
    by_hand = keras_fit.HandWrittenStep(name, [16], images, targets, settings)
    first = by_hand.last_loss  # after the first 10 steps
    assert by_hand.images_per_second(290) > 0
    assert by_hand.last_loss < 0.25 * first, (name, first, by_hand.last_loss)


def test_bench_sh_installs_torch_only_for_a_torch_row(tmp_path):
  """BENCH_ONLY=cli/help picks no PyTorch row, so bench.sh neither imports nor installs torch:
  with torch hidden and pip offline, an install would fail the run."""
  shim = tmp_path / "shim"
  shim.mkdir()
  (shim / "sitecustomize.py").write_text(
      "import sys\n"
      "class _NoTorch:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] == 'torch':\n"
      "      raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
      "sys.meta_path.insert(0, _NoTorch())\n")
  env = {**os.environ, "BENCH_ONLY": "cli/help", "BENCH_OUT": str(tmp_path / "out"),
         "PYTHONPATH": str(shim), "PIP_NO_INDEX": "1", "JAX_PLATFORMS": "cpu"}
  root = Path(__file__).resolve().parent.parent
  result = subprocess.run([str(root / "benchmarks" / "bench.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").open()]
  assert [row["name"] for row in rows] == ["cli/help"] and rows[0]["help_seconds"] > 0
  assert "`distill --help`:" in result.stdout

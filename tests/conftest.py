"""Test settings: never download, JAX on CPU, compiled programs shared across the session."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["DISTILL_OFFLINE"] = "1"
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Most tests train the same tiny models in fresh processes: JAX's persistent
# compilation cache lets every run after the first load what an earlier one
# compiled (a tiny teacher run: 14 s cold, 5 s warm). It holds XLA's own
# executables, so what they compute does not change. One folder per session,
# removed at the end, so no test depends on an earlier session. The pytest-xdist
# workers import this file again, with the environment of the process that made the
# folder: they take its folder, so a program one worker compiled serves the other.
_SESSION_CACHE_ENV = "DISTILL_TESTS_JAX_CACHE"
if _SESSION_CACHE_ENV not in os.environ:
  os.environ[_SESSION_CACHE_ENV] = tempfile.mkdtemp(prefix="distill-tests-jax-cache-")
  # Removed by the process that made it, which outlives its workers.
  atexit.register(shutil.rmtree, os.environ[_SESSION_CACHE_ENV], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_SESSION_CACHE_ENV]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# Tests check what is computed, not how fast: XLA's least LLVM optimisation compiles the tiny
# models about twice as fast (the suite takes a third less time) and runs them about as fast.
# The programs (their HLO) are the same; the machine code is less optimised, so a bit-for-bit
# comparison here compares two programs compiled alike, as it does at the default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from distill.cli import main  # noqa: E402

# The tiny digits setting every workflow test shares: seconds, not minutes.
TINY = [
    "teacher.steps=20", "teacher.batch_size=32", "teacher.vit.width=16", "teacher.vit.depth=1",
    "teacher.vit.heads=2", "teacher.log_every=10", "teacher.eval_every=10",
    "teacher.checkpoint_every=10", "teacher.warmup_steps=2", "teacher.steps_per_dispatch=5",
    "student.steps=20", "student.batch_size=32", "student.log_every=10", "student.eval_every=10",
    "student.checkpoint_every=10", "student.warmup_steps=2", "student.steps_per_dispatch=5",
    # A tiny run takes well under a second: checkpoints at every 10 steps all the same, so
    # resuming is tested from checkpoints made along the way.
    "teacher.checkpoint_min_seconds=0", "student.checkpoint_min_seconds=0",
]


def set_flags(overrides):
  """`key=value` overrides as the command line takes them: --set k=v --set ..."""
  return [arg for override in overrides for arg in ("--set", override)]


# TINY, as command-line flags.
TINY_FLAGS = set_flags(TINY)


def run_cli(*args):
  """Runs `distill ARGS` in this process (click's runner); returns its result."""
  return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def process_env(devices):
  """The environment of a test's `distill` subprocess: CPU only, `devices` of them, offline."""
  return {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu",
          "DISTILL_OFFLINE": "1"}


def run_distill_process(*args, devices=1, check=True, timeout=300):
  """Runs `distill ARGS` in a fresh process with `devices` CPU devices.

  JAX fixes its device count, and joins a distributed run, once per process.
  """
  result = subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)],
                          env=process_env(devices),
                          capture_output=True, text=True, timeout=timeout)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def compiled_forward(model, images):
  """`model(images)` as one compiled program: jax.jit over the split model, as training and
  export run it. Called eagerly, each of the model's operations compiles on first use
  (seconds for a ViT). Not nnx.jit: the lowest Flax allowed passes JAX 0.10's jit an
  argument it does not take."""
  import jax  # noqa: PLC0415 (conftest imports no JAX before the settings above apply)
  from flax import nnx  # noqa: PLC0415

  graphdef, state = nnx.split(model)
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, images)


def benchmark_script(name):
  """benchmarks/NAME.py imported as a module (the benchmarks are scripts beside each other,
  not a package: their folder is on the path while one is imported)."""
  import importlib  # noqa: PLC0415

  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.pop(0)


def logged(workdir):
  """A run's metrics.jsonl records."""
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_digits_runs(tmp_path_factory):
  """A TINY digits teacher and its default student (CNN, exported targets), trained once.

  Several test modules start from these same two runs; each takes a copy
  (`copy_runs`), so a test that writes into its runs cannot disturb another's.
  """
  root = tmp_path_factory.mktemp("tiny-digits")
  result = run_cli("teacher", "--recipe", "digits", "--workdir", root / "teacher", "-q",
                   *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  result = run_cli("student", "--teacher", root / "teacher", "--workdir", root / "student", "-q",
                   *TINY_FLAGS)
  assert result.exit_code == 0, result.output
  return root


# TINY, logged every 5 steps, so runs are compared at every logged step.
LOGGED_EVERY_5 = [*TINY_FLAGS, "--set", "teacher.log_every=5", "--set", "student.log_every=5"]


@pytest.fixture(scope="session")
def teacher_logged_every_5(tmp_path_factory):
  """A TINY digits teacher logged every 5 steps, on one device: the reference of the
  multi-device and streamed runs, trained once."""
  workdir = tmp_path_factory.mktemp("logged-every-5") / "teacher"
  result = run_cli("teacher", "-r", "digits", "-w", workdir, "-q", *LOGGED_EVERY_5)
  assert result.exit_code == 0, result.output
  return workdir


def copy_runs(shared, destination, **names):
  """Copies the shared runs into `destination`: copy_runs(src, dst, teacher="teacher", ...)."""
  for new_name, shared_name in names.items():
    shutil.copytree(shared / shared_name, destination / new_name)
  return destination


# The runs the export and predict tests share (test_model_export, test_predict), per module.


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_digits_runs):
  """Copies of the shared TINY digits teacher and student (CNN) runs."""
  return copy_runs(tiny_digits_runs, tmp_path_factory.mktemp("exported-runs"), teacher="teacher",
                   student="student")


@pytest.fixture(scope="module")
def dataset(runs):
  """The digits data set the runs were trained on."""
  from distill.run_recipe import read_run_recipe  # noqa: PLC0415
  from distill.workflow import load_data  # noqa: PLC0415

  return load_data(read_run_recipe(runs / "student"))


@pytest.fixture(scope="module")
def exported(runs):
  """The student exported to both formats through the CLI: {format: model path}."""
  paths = {}
  for fmt, name in (("stablehlo", "student.stablehlo"), ("onnx", "student.onnx")):
    if fmt == "onnx":
      pytest.importorskip("jax2onnx")
      pytest.importorskip("onnxruntime")
    out = runs / "exports" / name
    # No --format: the extension names it.
    result = run_cli("export-model", runs / "student", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"({fmt}, cnn student)" in result.stdout
    paths[fmt] = out
  return paths


@pytest.fixture
def tiny_overrides():
  """Overrides shrinking the digits recipe to a few seconds per run."""
  return list(TINY)

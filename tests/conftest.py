"""Test settings: never download, JAX on CPU."""

import json
import os
import subprocess
import sys

os.environ["DISTILL_OFFLINE"] = "1"
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


def logged(workdir):
  """A run's metrics.jsonl records."""
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny_overrides():
  """Overrides shrinking the digits recipe to a few seconds per run."""
  return list(TINY)

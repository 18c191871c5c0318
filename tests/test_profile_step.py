"""benchmarks/profile_step.py, gemm_shapes.py and ab_step.py: where a step's time goes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_lists_the_steps_ops_with_their_jax_origin(tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--recipe", "digits",
       "--steps", "4", "--top", "5", "--set", "teacher.steps_per_dispatch=2",
       "--set", "teacher.batch_size=16", "--out", str(tmp_path)],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert re.match(r"digits teacher: [\d,]+ images/s while traced, ops sum to [\d.]+ ms", lines[0])
  op_lines = [line for line in lines[1:] if re.match(r"\s*[\d.]+ ms  \S", line)]
  assert len(op_lines) == 5
  # At least one op is traced back to the JAX operation it came from.
  assert any(re.search(r"(dot_general|reduce_sum|add|mul)", line) for line in op_lines)
  assert (tmp_path / "step.hlo.txt").read_text().startswith("HloModule")
  assert list((tmp_path / "trace").glob("**/perfetto_trace.json.gz"))


def test_gemm_shapes_times_every_matmul_kind_of_each_shape():
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "gemm_shapes.py"), "--shapes", "16x8x4",
       "32x8x2", "--repeats", "3"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines()
          if re.match(r"\| \d+x\d+x\d+ \|", line)}
  assert list(rows) == ["16x8x4", "32x8x2"]
  for line in rows.values():
    # Every cell is "µs (GFLOP/s)" with positive figures; torch's columns only where it is.
    timings = re.findall(r"([\d,.]+) \(([\d,.]+)\)", line)
    assert len(timings) in (3, 5)
    assert all(float(t.replace(",", "")) > 0 for t, _ in timings)


def test_ab_step_times_each_variant_in_alternated_windows():
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "ab_step.py"), "--recipe", "digits",
       "--variant", "recipe: teacher.batch_size=16; teacher.steps_per_dispatch=4",
       "--variant", "changed: teacher.batch_size=16; teacher.steps_per_dispatch=2; "
                    "backend.transpose_narrow_weight_gradients=false",
       "--window", "4", "--rounds", "2"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert [line.split(":")[0] for line in lines if "compiled in" in line] == ["recipe", "changed"]
  assert sum(line.startswith("round ") for line in lines) == 2
  assert re.search(r"^recipe: median [\d,]+ img/s, 1\.00x of recipe", result.stdout, re.M)
  assert re.search(r"^changed: median [\d,]+ img/s, [\d.]+x of recipe", result.stdout, re.M)


def test_ab_step_names_the_valid_backend_choices():
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "ab_step.py"), "--recipe", "digits",
       "--variant", "a:", "--variant", "b: backend.fast=true"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode != 0
  assert "unknown backend choice 'fast'; valid: conv_stem, unroll_conv_scan" in result.stderr

"""benchmarks/profile_step.py, gemm_shapes.py and ab_step.py: where a step's time goes."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, benchmark_script

ROOT = Path(__file__).resolve().parents[1]
# The TINY teacher's ViT: a profile of its step reads the same as of the recipe's larger one,
# and compiles in a fraction of the time.
TINY_VIT = [item for item in TINY if item.startswith("teacher.vit.")]


def _run_script(monkeypatch, capsys, name, *args):
  """`python benchmarks/NAME.py ARGS`, run in this process through its main() (saving the
  seconds a fresh process spends importing JAX); returns its (stdout, stderr)."""
  monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
  benchmark_script(name).main()
  return capsys.readouterr()


def test_profile_lists_the_steps_ops_with_their_jax_origin(tmp_path):
  # A process of its own: the script turns on XLA:CPU's per-op events before JAX starts.
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--recipe", "digits",
       "--steps", "4", "--top", "5", "--set", "teacher.steps_per_dispatch=2",
       "--set", "teacher.batch_size=16", *(f"--set={item}" for item in TINY_VIT),
       "--out", str(tmp_path)],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert re.match(r"digits teacher: [\d,]+ images/s while traced \([\d.]+ ms a step\), ops sum to "
                  r"[\d.]+ ms a step .*, convolutions [\d.]+ ms more", lines[0])
  op_lines = [line for line in lines[1:] if re.match(r"\s*[\d.]+ ms  \S", line)]
  assert len(op_lines) == 5
  # Ops are traced back to the JAX operation they came from: the last column, e.g.
  # "transpose(jvp())/dot_general" (an op without one ends in its shape instead).
  origins = [line.split()[-1] for line in op_lines]
  assert sum(bool(re.fullmatch(r"\S*jvp\(\S*\)/[a-z_]+", origin)) for origin in origins) >= 3
  assert (tmp_path / "step.hlo.txt").read_text().startswith("HloModule")
  assert list((tmp_path / "trace").glob("**/perfetto_trace.json.gz"))


def test_gaps_with_no_op_are_charged_to_the_convolution_in_flight(tmp_path):
  # XLA:CPU's convolution events end when the work is handed to the thread pool; the
  # stretch with no op after them is the convolution's, and nothing else's.
  profile_step = benchmark_script("profile_step")

  def event(name, ts, dur, tid=2):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}

  def thread(tid, name):
    return {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}}

  events = [
      thread(1, "tf_XLAPjRtCpuClient/7"), thread(2, "tf_XLAEigen/3"), thread(3, "python"),
      event("ThunkExecutor::Execute (wait for completion)", 0, 200, tid=1),
      event("fusion.1", 5, 5),         # a gap of 10 before any convolution: nobody's
      event("convolution.2", 20, 1),   # handed over at 21...
      event("fusion.3", 21, 4),
      event("PythonRef", 30, 50, tid=3),  # not an XLA thread: does not fill the gap
      event("fusion.4", 60, 10),       # ...35 with no op (25 to 60): the convolution's
      event("convolution.5", 70, 2),
      event("fusion.6", 75, 5),        # 3 after the second convolution
      event("fusion.7", 300, 5),       # outside the execution: not charged
  ]
  trace = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(trace, "wt") as file:
    json.dump({"traceEvents": events}, file)
  hlo = ("%convolution.2 = f32[8,3,3,4]{3,2,1,0} convolution(%a, %b), window={size=3x3}\n"
         "%convolution.5 = f32[8,4]{1,0} convolution(%c, %d)\n"
         "%fusion.1 = f32[8]{0} fusion(%e)\n")
  charged = profile_step.async_convolution_times(profile_step.read_trace(trace), hlo)
  assert charged == {"convolution.2": 35, "convolution.5": 3}


def test_gemm_shapes_times_every_matmul_kind_of_each_shape(monkeypatch, capsys):
  try:  # the script sets torch's threads, where torch is installed: given back after it
    import torch  # noqa: PLC0415
  except ImportError:
    torch = None
  threads = torch.get_num_threads() if torch else None
  try:
    stdout, _ = _run_script(monkeypatch, capsys, "gemm_shapes", "--shapes", "16x8x4", "32x8x2",
                            "--repeats", "3")
  finally:
    if torch:
      torch.set_num_threads(threads)
  rows = {line.split("|")[1].strip(): line for line in stdout.splitlines()
          if re.match(r"\| \d+x\d+x\d+ \|", line)}
  assert list(rows) == ["16x8x4", "32x8x2"]
  for line in rows.values():
    # Every cell is "µs (GFLOP/s)" with positive figures; torch's columns only where it is.
    timings = re.findall(r"([\d,.]+) \(([\d,.]+)\)", line)
    assert len(timings) in (3, 5)
    assert all(float(t.replace(",", "")) > 0 for t, _ in timings)


def test_ab_step_times_each_variant_in_alternated_windows(monkeypatch, capsys):
  # An MLP teacher: two steps to compile, each a fraction of the ViT's time; its dense layers
  # still read the backend choice the second variant changes.
  tiny = "teacher.model=mlp"
  stdout, _ = _run_script(
      monkeypatch, capsys, "ab_step", "--recipe", "digits",
      "--variant", f"recipe: teacher.batch_size=16; teacher.steps_per_dispatch=4; {tiny}",
      "--variant", f"changed: teacher.batch_size=16; teacher.steps_per_dispatch=2; {tiny}; "
                   "backend.transpose_narrow_weight_gradients=false",
      "--window", "4", "--rounds", "2")
  lines = stdout.splitlines()
  assert [line.split(":")[0] for line in lines if "compiled in" in line] == ["recipe", "changed"]
  assert sum(line.startswith("round ") for line in lines) == 2
  assert re.search(r"^recipe: median [\d,]+ img/s, 1\.00x of recipe", stdout, re.M)
  assert re.search(r"^changed: median [\d,]+ img/s, [\d.]+x of recipe", stdout, re.M)


def test_ab_step_names_the_valid_backend_choices(monkeypatch, capsys):
  # A SystemExit with a message: Python prints it to stderr and exits with status 1.
  with pytest.raises(SystemExit, match="unknown backend choice 'fast'; valid: conv_stem, "
                                       "unroll_conv_scan"):
    _run_script(monkeypatch, capsys, "ab_step", "--recipe", "digits", "--variant", "a:",
                "--variant", "b: backend.fast=true")


def test_loop_share_times_a_recipes_loop_against_its_bare_step(monkeypatch, capsys):
  """One round of a tiny digits student: a table row with the loop's share of the bare step."""
  stdout, _ = _run_script(
      monkeypatch, capsys, "loop_share", "--rounds", "1", "--max-steps", "20", "--json",
      "--case", "digits:student:" + ";".join(item for item in TINY if item.startswith("student.")))
  row = json.loads(stdout.splitlines()[-1])
  assert row["case"].startswith("digits:student") and row["model"] == "cnn"
  assert row["steps"] == 20 and row["bare"] > 0 and row["loop"] > 0
  assert row["range"] == [row["loop_to_bare"]] * 2  # one round: its ratio is the median
  assert abs(row["loop_to_bare"] - row["loop"] / row["bare"]) < 0.01
  assert re.search(r"^\| digits:student\S* \| cnn \| 20 \| [\d,]+ \| [\d,]+ \| [\d.]+ \(",
                   stdout, re.M)


def test_loop_share_names_the_roles():
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "loop_share.py"), "--case", "digits:teach"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert result.returncode != 0 and "the role is 'teacher' or 'student'" in result.stderr

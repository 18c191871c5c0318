"""benchmarks/gpu.sh --smoke runs every stage on CPU without keras, grain or tensorboardX.

The device it is written for has none of those three, so the smoke run must
not either. They stay installed here; the run instead gets a `sitecustomize`
module, on a PYTHONPATH directory of its own, that Python imports at start-up
(`site` imports the first `sitecustomize` on sys.path). It puts a meta-path
finder first on `sys.meta_path` that answers `import keras` (and grain,
tensorboardX, and their submodules) with ModuleNotFoundError, exactly what a
missing package raises, before the installed ones are looked up. gpu.sh
prepends '.' to PYTHONPATH rather than replacing it, so the shim stays in force.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import benchmark_script

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("keras", "grain", "tensorboardX")

_SITECUSTOMIZE = textwrap.dedent("""
    import sys

    class _Missing:
      \"\"\"Makes the packages in BLOCKED look uninstalled.\"\"\"

      BLOCKED = set({blocked!r})

      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
          raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)",
                                    name=name)
        return None

    sys.meta_path.insert(0, _Missing())
""")


def _shim(tmp_path: Path, blocked: tuple[str, ...]) -> Path:
  folder = tmp_path / "shim"
  folder.mkdir()
  (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(blocked=blocked))
  return folder


def _env(tmp_path: Path, out: Path, blocked: tuple[str, ...] = BLOCKED) -> dict[str, str]:
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", OUT=str(out), PYTHON=sys.executable,
             PYTHONPATH=str(_shim(tmp_path, blocked)))
  return env


def test_gpu_script_without_jax_says_so_in_one_line(tmp_path):
  """A python without jax (python3 in a shell without the venv): one line saying what to set,
  not a traceback a stage."""
  out = tmp_path / "out"
  result = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--smoke"], cwd=ROOT,
                          env=_env(tmp_path, out, blocked=("jax",)), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert f"{sys.executable} has no jax: set PYTHON=.venv/bin/python or activate .venv" in (
      result.stderr)
  assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
  assert not out.exists()


def test_failed_environment_stage_stops_the_run(tmp_path, monkeypatch, capsys):
  """gpu_bench.py run without gpu.sh's check: the environment stage fails once and nothing
  else runs, so its one traceback is the only one."""
  gpu_bench = benchmark_script("gpu_bench")

  def no_jax():
    raise ModuleNotFoundError("No module named 'jax'")

  ran = []
  monkeypatch.setattr(gpu_bench, "_environment", no_jax)
  for stage in ("bench_stage", "demo_stage", "profile_stage"):
    monkeypatch.setattr(gpu_bench, stage, lambda *a, stage=stage, **k: ran.append(stage))
  assert gpu_bench.main(["--out", str(tmp_path)]) == 1
  assert ran == []
  report = json.loads((tmp_path / "gpu.json").read_text())
  assert list(report["stages"]) == ["environment"]
  assert report["stages"]["environment"]["error"] == "ModuleNotFoundError: No module named 'jax'"
  stderr = capsys.readouterr().err
  assert stderr.count("Traceback") == 1 and "no other stage runs" in stderr


@pytest.mark.parametrize("device_kind, given, peak, source", [
    ("NVIDIA H200", None, 989.0, "the H200's dense bf16 peak"),
    ("NVIDIA H200", 756.0, 756.0, "given by --peak-tflops"),
    ("NVIDIA H100 80GB HBM3", None, 989.0, "the H100 SXM's dense bf16 peak"),
    ("NVIDIA H100 PCIe", None, 756.0, "the H100 PCIe's dense bf16 peak"),
    ("cpu", 1.5, 1.5, "given by --peak-tflops"),
])
def test_mfu_peak_comes_from_the_flag_or_the_device(device_kind, given, peak, source):
  assert benchmark_script("gpu_bench").peak_tflops(device_kind, given) == (peak, source)


def test_mfu_peak_of_an_unknown_device_is_not_called_its_own():
  gpu_bench = benchmark_script("gpu_bench")
  peak, source = gpu_bench.peak_tflops("NVIDIA A100-SXM4-80GB", None)
  assert peak == gpu_bench.H200_BF16_DENSE_PEAK_TFLOPS
  assert "(NVIDIA A100-SXM4-80GB) is not known; pass --peak-tflops" in source
  report = {"smoke": False, "peak_tflops": 756.0, "peak_source": "given by --peak-tflops",
            "environment": {"device_kind": "NVIDIA H200"}, "stages": {}}
  assert "MFU against 756.0 TFLOP/s (given by --peak-tflops);" in gpu_bench._markdown(report)


def test_shim_blocks_the_optional_packages(tmp_path):
  """The blocker works, and `distill` with its training path imports without them."""
  code = ("import importlib\n"
          f"for name in {BLOCKED!r}:\n"
          "  try:\n"
          "    importlib.import_module(name)\n"
          "  except ModuleNotFoundError:\n"
          "    pass\n"
          "  else:\n"
          "    raise SystemExit(name + ' was importable')\n"
          "import distill.cli, distill.workflow, distill.loop, distill.bench\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path, tmp_path),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not any(Path(p).is_dir() for p in (
    ROOT / "data" / "fashion-mnist", "/usr/share/datasets/fashion-mnist")),
    reason="the demo stage needs Fashion-MNIST (benchmarks/carry_data.sh)")
def test_gpu_script_smoke_runs_every_stage(tmp_path):
  """Every stage of the smoke run succeeds and reports positive images/s (a minute or two)."""
  out = tmp_path / "out"
  start = time.perf_counter()
  result = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--smoke"], cwd=ROOT,
                          env=_env(tmp_path, out), capture_output=True, text=True, timeout=600)
  seconds = time.perf_counter() - start
  report = json.loads((out / "gpu.json").read_text())
  assert (out / "gpu.md").read_text().startswith("# distill GPU check (smoke)")
  failed = {name: stage.get("error") for name, stage in report["stages"].items()
            if not stage["ok"]}
  assert not failed, (failed, result.stderr[-3000:])
  assert result.returncode == 0, result.stderr[-3000:]
  stages = report["stages"]
  assert len(stages) == 7, list(stages)
  env = stages["environment"]["result"]
  assert env["backend"] == "cpu" and env["backend_choices"]["unroll_conv_scan"] is True
  assert env["cpu"].endswith((" cores", " 1 core"))
  # A CPU's peak is not known: MFU is against the H200's, and gpu.md says so.
  assert report["peak_tflops"] == 989.0 and "is not known" in report["peak_source"]
  assert f"({report['peak_source']})" in (out / "gpu.md").read_text()
  for name, stage in stages.items():
    if name.startswith("bench "):
      bench = stage["result"]
      assert bench["bare_step_images_per_second"] > 0 and bench["loop_images_per_second"] > 0
      assert bench["flops_per_step"] > 0 and bench["mfu"] > 0
      assert bench["compute_dtype"] == name.split()[-1]
  demo = stages["demo end to end"]["result"]
  for role in ("teacher", "student"):
    assert demo[role]["images_per_second"] > 0
    assert 0.0 <= demo[role]["test_accuracy"] <= 1.0
  assert demo["student"]["model"] == "cnn"
  # The profile: the step's heaviest ops, traced back to JAX, and the trace to take home.
  profile = stages["profile"]["result"]
  assert profile["recipe"] == "cifar10" and profile["ms_per_step"] > 0
  assert len(profile["top_ops"]) == 15 and all(op["ms_per_step"] > 0 for op in profile["top_ops"])
  assert any("dot_general" in op["origin"] for op in profile["top_ops"])
  assert json.loads(gzip.open(out / "profile_trace.json.gz").read())["traceEvents"]
  assert (out / "profile_step.hlo.txt").read_text().startswith("HloModule")
  assert "## Profile: cifar10 teacher" in (out / "gpu.md").read_text()
  # What comes back from the device: at most 8 plain files, none in a hidden name.
  assert sorted(path.name for path in out.iterdir()) == [
      "gpu.json", "gpu.md", "profile_step.hlo.txt", "profile_trace.json.gz"]
  # Brought back, the trace ranks its ops here again, without the device: the same top op.
  read = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--read",
                         str(out), "--top", "3"], capture_output=True, text=True, timeout=120)
  assert read.returncode == 0, read.stderr[-2000:]
  lines = read.stdout.splitlines()
  assert lines[0].startswith("cifar10 teacher on the device: ") and len(lines) == 4
  assert profile["top_ops"][0]["origin"][-70:] in lines[1]
  print(f"gpu.sh --smoke took {seconds:.0f} s")


def test_tensorboard_log_without_tensorboardx_is_a_note(tmp_path, monkeypatch):
  """No tensorboardX: training goes on, no event files, one note saying so."""
  from distill import rundir  # noqa: PLC0415 (after the test's own imports, like the others)

  # `import tensorboardX` (and any of its modules, even one an earlier test loaded) now fails.
  for name in [name for name in sys.modules if name.split(".")[0] == "tensorboardX"]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  notes = []
  log = rundir.TensorBoardLog(tmp_path / "tensorboard")
  log.start(after_step=None, note=notes.append)
  log.init_loss(2.3, 2.3)
  log.append({"step": 1, "loss": 2.0})
  log.flush()
  log.close()
  assert len(notes) == 1 and "tensorboardX" in notes[0]
  assert not (tmp_path / "tensorboard").exists()

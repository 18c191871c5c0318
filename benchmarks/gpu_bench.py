"""The device check `benchmarks/gpu.sh` runs: throughput, MFU and an end-to-end demo.

Stages, each recorded on its own (a failed stage keeps its error and the
others their numbers), with gpu.json rewritten after every stage so a run cut
short still leaves what it measured (the goals' stages run first: the CIFAR-10
ViT in float32, the demo, the profile):

- `distill bench` of the CIFAR-10 ViT (recipes/cifar10.toml, synthetic
  32x32x3 data) and the default Fashion-MNIST teacher (synthetic 28x28x1 of
  the real split's size), each in float32 and bfloat16 compute: bare-step
  and loop images/s, compile seconds, XLA's FLOPs per step and MFU;
- the demo teacher and its CNN student (recipes/demo.toml) trained end to end
  on Fashion-MNIST read from --data-dir: wall time and test accuracy;
- a `jax.profiler` trace of the CIFAR-10 ViT's bare step (benchmarks/profile_step.py):
  its heaviest ops in gpu.json and gpu.md, the trace and the step's HLO in OUT,
  so a run that misses a goal already holds the profile that says why.

`--smoke` runs the same stages with tiny models, data and step counts, to
check the path on CPU in a minute or two. Needs no install: run it from the
repository root with PYTHONPATH=. (gpu.sh does). If the first stage (the
environment: jax and its device) fails, nothing else runs.

MFU is measured against --peak-tflops, else the device's dense bfloat16 peak
where it is known (H200, H100), else the H200's for reference; gpu.md says which.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

# The H200's dense bfloat16 peak (NVIDIA's datasheet, without sparsity). MFU is measured
# against a device's bfloat16 peak for float32 runs too: it is the ceiling the hardware offers
# this model.
H200_BF16_DENSE_PEAK_TFLOPS = 989.0
# Dense bfloat16 peaks (NVIDIA's datasheets, half the sparse figure) by a part of the device
# kind jax reports ('NVIDIA H200', 'NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe'); the first
# that matches wins.
_KNOWN_PEAKS_TFLOPS = (
    ("H100 PCIe", 756.0, "the H100 PCIe's"),
    ("H100 NVL", 835.0, "the H100 NVL's"),
    ("H100", 989.0, "the H100 SXM's"),
    ("H200", H200_BF16_DENSE_PEAK_TFLOPS, "the H200's"),
)


def peak_tflops(device_kind: str | None, given: float | None) -> tuple[float, str]:
  """The peak MFU is measured against, and where it came from (gpu.md's label)."""
  if given is not None:
    return given, "given by --peak-tflops"
  for part, peak, whose in _KNOWN_PEAKS_TFLOPS:
    if part.lower() in (device_kind or "").lower():
      return peak, f"{whose} dense bf16 peak"
  return H200_BF16_DENSE_PEAK_TFLOPS, (
      f"the H200's dense bf16 peak, for scale: the peak of this device ({device_kind}) is not "
      "known; pass --peak-tflops")

# Synthetic data of the real splits' training sizes: throughput does not depend on the pixels,
# and the bench stages then need no data carried to the device.
_BENCH_RECIPES = (
    ("cifar10", "32x32x3:50000:10"),
    ("fashion_mnist", "28x28x1:55000:10"),
)
_DTYPES = ("float32", "bfloat16")

# --smoke: models small enough to compile in seconds on CPU, the same code paths otherwise.
_SMOKE_BENCH = {"steps": 4, "synthetic_examples": 256}
# Narrow conv stages for the hybrid (`stem = "cnn"`); the same three stages, so the same shapes.
_SMOKE_VIT = ["vit.width=32", "vit.depth=1", "vit.heads=2", "vit.mlp_ratio=2",
              "vit.stem_channels=[8, 8, 8]"]
# One step a dispatch: on CPU a conv model's dispatch is unrolled (backend.unroll_conv_scan), so
# each step more is one more copy of the step to compile (the smoke's time is mostly compiling).
_SMOKE_CADENCE = ["steps_per_dispatch=1", "log_every=2", "eval_every=4", "checkpoint_every=4",
                  "warmup_steps=1"]


def _settings_overrides(role: str, keys: list[str]) -> list[str]:
  return [f"{role}.{key}" for key in keys]


def _smoke_teacher(synthetic: str) -> tuple[str, int, list[str]]:
  """--smoke's (synthetic data spec, steps, teacher overrides) for a bench-like stage."""
  shape, _, classes = synthetic.split(":")
  return (f"{shape}:{_SMOKE_BENCH['synthetic_examples']}:{classes}", _SMOKE_BENCH["steps"],
          [*_settings_overrides("teacher", _SMOKE_VIT + _SMOKE_CADENCE), "teacher.batch_size=32"])


def bench_stage(recipe_name: str, synthetic: str, dtype: str, *, smoke: bool,
                export_batch: int, peak_tflops: float) -> dict[str, Any]:
  """One `distill bench` of the recipe's teacher in `dtype`, with XLA's FLOPs and MFU."""
  from distill import bench, config  # noqa: PLC0415

  overrides = [f"teacher.compute_dtype={dtype}", f"export.batch_size={export_batch}"]
  steps = None  # `distill bench`'s default: one period of the recipe's eval/checkpoint cadence
  if smoke:
    synthetic, steps, tiny = _smoke_teacher(synthetic)
    overrides += tiny
  recipe = config.load_recipe(recipe_name, overrides)
  result = bench.run_benchmark(recipe, role="teacher", steps=steps, bare_steps=steps,
                               synthetic=synthetic, quiet=True, count_flops=True)
  result["recipe"] = recipe_name
  result["export_batch_size"] = export_batch
  # MFU from XLA's own FLOP count of one lowered step (forward, backward and optimizer update,
  # before XLA's optimisations; see bench._step_flops), over the bare step's time per step.
  achieved = result.get("bare_step_flops_per_second")
  if achieved:
    # Four significant figures: a CPU smoke run's MFU is ~1e-6 and must not round to 0.
    result["bare_step_tflops"] = float(f"{achieved / 1e12:.4g}")
    result["mfu"] = float(f"{achieved / (peak_tflops * 1e12):.4g}")
  return result


def demo_stage(data_dir: str | None, workdir: Path, *, smoke: bool) -> dict[str, Any]:
  """recipes/demo.toml's teacher, then its CNN student, on Fashion-MNIST: wall time, accuracy."""
  from distill import config, run_recipe, workflow  # noqa: PLC0415

  overrides = [f"data.data_dir={data_dir}"] if data_dir else []
  student_overrides = ["student.model=cnn"]
  if smoke:
    overrides += ["data.train_limit=1000", "data.val_size=200", "teacher.steps=4",
                  "teacher.batch_size=32",
                  *_settings_overrides("teacher", _SMOKE_VIT + _SMOKE_CADENCE)]
    student_overrides += ["student.steps=4", "student.batch_size=32", "student.cnn.channels=[8,8]",
                          "student.cnn.blocks_per_stage=1",
                          *_settings_overrides("student", _SMOKE_CADENCE)]
  teacher_dir, student_dir = workdir / "teacher", workdir / "student-cnn"
  start = time.perf_counter()
  teacher = workflow.train_teacher(config.load_recipe("demo", overrides), teacher_dir,
                                   overwrite=True, restart=True, quiet=True)
  teacher_wall = time.perf_counter() - start
  start = time.perf_counter()
  recipe = run_recipe.student_recipe(teacher_dir, None, [*overrides, *student_overrides])
  student = workflow.train_student(recipe, teacher_dir, student_dir, overwrite=True,
                                   restart=True, quiet=True)
  student_wall = time.perf_counter() - start
  keep = ("model", "params", "steps", "batch_size", "dataset", "test_accuracy", "train_seconds",
          "compile_seconds", "images_per_second")
  return {
      "teacher": {**{k: teacher.get(k) for k in keep}, "wall_seconds": round(teacher_wall, 2)},
      "student": {**{k: student.get(k) for k in keep}, "wall_seconds": round(student_wall, 2),
                  "teacher_agreement": student.get("agreement_with_teacher")},
      "wall_seconds": round(teacher_wall + student_wall, 2),
  }


# The profile: steps traced, op groups kept, and the largest file brought back (the device
# tool returns files of up to 16 MiB).
_PROFILE_STEPS = 100
_PROFILE_TOP = 15
_PROFILE_MAX_FILE_BYTES = 15 << 20


def profile_stage(recipe_name: str, synthetic: str, *, smoke: bool, out: Path) -> dict[str, Any]:
  """`jax.profiler` over the recipe's teacher bare step: its top ops; trace and HLO to `out`."""
  import profile_step  # noqa: PLC0415 (benchmarks/, this script's own folder)

  from distill import config  # noqa: PLC0415

  overrides, steps = [], _PROFILE_STEPS
  if smoke:
    synthetic, steps, overrides = _smoke_teacher(synthetic)
  recipe = config.load_recipe(recipe_name, overrides)
  with tempfile.TemporaryDirectory(prefix="distill-profile-") as folder:
    found = profile_step.profile(recipe, role="teacher", steps=steps, synthetic=synthetic,
                                 out=Path(folder), top=_PROFILE_TOP)
    kept = {}
    for key, name in (("trace", "profile_trace.json.gz"), ("hlo", "profile_step.hlo.txt")):
      source = Path(found.pop(key))
      size = source.stat().st_size
      if size <= _PROFILE_MAX_FILE_BYTES:
        shutil.copyfile(source, out / name)
        kept[name] = size
      else:
        kept[name] = f"not kept: {size} bytes"
  return {"recipe": recipe_name, "steps": steps, **found, "files": kept}


def _environment() -> dict[str, Any]:
  import jax  # noqa: PLC0415

  from distill import backend  # noqa: PLC0415

  device = jax.devices()[0]
  return {
      "device_kind": device.device_kind,
      "platform": device.platform,
      "device_count": jax.device_count(),
      "jax_version": jax.__version__,
      "python": sys.version.split()[0],
      "cpu": backend.cpu_description(),
      "backend": jax.default_backend(),
      "backend_choices": backend.choices().as_dict(),
  }


def _fraction(value: float | None) -> str:
  return "" if value is None else f"{value:.4f}"


def _markdown(report: dict[str, Any]) -> str:
  env = report.get("environment", {})
  lines = [
      f"# distill GPU check{' (smoke)' if report['smoke'] else ''}",
      "",
      f"device: {env.get('device_kind')} ({env.get('backend')}), jax {env.get('jax_version')}, "
      f"{report.get('total_seconds')} s in all",
      f"backend choices: {json.dumps(env.get('backend_choices'))}",
      f"MFU against {report.get('peak_tflops')} TFLOP/s ({report.get('peak_source')}); FLOPs "
      "are XLA's count of one lowered step, backward pass and update included.",
      "",
      "| stage | ok | bare img/s | loop img/s | compile s | TFLOP/s | MFU | wall s | test acc |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, stage in report["stages"].items():
    result = stage.get("result") or {}
    if "top_ops" in result:  # the profile: its own table below
      continue
    cells = [name, "yes" if stage["ok"] else f"no: {stage.get('error', '')[:60]}"]
    if "teacher" in result:  # the end-to-end demo: one row per model
      for role in ("teacher", "student"):
        run = result[role]
        lines.append("| " + " | ".join([
            f"{name} {role} ({run.get('model')})", cells[1], "",
            str(run.get("images_per_second")), str(run.get("compile_seconds")), "", "",
            str(run.get("wall_seconds")), _fraction(run.get("test_accuracy"))]) + " |")
      continue
    cells += [str(result.get("bare_step_images_per_second", "")),
              str(result.get("loop_images_per_second", "")),
              str(result.get("compile_seconds", "")), str(result.get("bare_step_tflops", "")),
              str(result.get("mfu", "")), str(stage.get("seconds", "")), ""]
    lines.append("| " + " | ".join(cells) + " |")
  profile = (report["stages"].get("profile") or {}).get("result")
  if profile:
    lines += ["", f"## Profile: {profile['recipe']} teacher, {profile['steps']} steps traced",
              "", f"{profile['images_per_second']} img/s while traced, {profile['ms_per_step']} "
              f"ms a step; ops sum to {profile['ops_ms_per_step']} ms a step. Files: "
              f"{json.dumps(profile['files'])}", "",
              "| ms a step | op | shape | from |", "|---|---|---|---|"]
    lines += [f"| {op['ms_per_step']} | {op['kind']} | {op['shape'][:40]} | "
              f"{op['origin'][-60:]} |" for op in profile["top_ops"]]
  return "\n".join(lines) + "\n"


def _write(out: Path, report: dict[str, Any]) -> None:
  # Written after every stage, through a temporary file, so a run killed at its time limit
  # still leaves a whole gpu.json with the stages it finished.
  for name, text in (("gpu.json", json.dumps(report, indent=2) + "\n"),
                     ("gpu.md", _markdown(report))):
    partial = out / f".{name}.partial"
    partial.write_text(text)
    os.replace(partial, out / name)


def main(argv: list[str] | None = None) -> int:
  """Runs every stage, writing OUT/gpu.json and OUT/gpu.md; exits 1 if any stage failed."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=Path)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny models, data and step counts: checks the path on CPU")
  parser.add_argument("--data-dir", default=None,
                      help="the Fashion-MNIST IDX files [default: data/fashion-mnist if present, "
                           "else wherever distill finds them]")
  # A stage takes up to ~2 minutes on the device; starting none after 420 s ends the run
  # inside the device tool's 600 s limit per command.
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="skip stages that would start after this many seconds")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's peak TFLOP/s for MFU [default: the device's dense "
                           "bf16 peak where known (H200, H100), else the H200's]")
  args = parser.parse_args(argv)
  if args.smoke:
    # The smoke run checks the path, not the speed: XLA's least LLVM optimisation compiles
    # the tiny models about twice as fast on CPU. Set before anything initialises JAX.
    # XLA:CPU records its ops in a profile only with traceme on (a GPU's kernels always are).
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
         "--xla_cpu_enable_xprof_traceme=true"]).strip()
  started = time.perf_counter()
  args.out.mkdir(parents=True, exist_ok=True)
  data_dir = args.data_dir
  if data_dir is None and Path("data/fashion-mnist").is_dir():
    data_dir = str(Path("data/fashion-mnist").resolve())
  # The peak is known once the environment stage has named the device.
  report: dict[str, Any] = {"smoke": args.smoke, "peak_tflops": args.peak_tflops,
                            "peak_source": None, "data_dir": data_dir, "stages": {}}

  def run(name: str, stage) -> None:
    elapsed = time.perf_counter() - started
    if elapsed > args.budget_s:
      report["stages"][name] = {"ok": False, "error": f"skipped: {elapsed:.0f} s of the "
                                                      f"{args.budget_s:.0f} s budget spent"}
    else:
      print(f">> {name}", file=sys.stderr, flush=True)
      stage_start = time.perf_counter()
      try:
        report["stages"][name] = {"ok": True, "result": stage()}
      except Exception as error:  # every stage's failure is recorded, not fatal
        traceback.print_exc()
        report["stages"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                                  "traceback": traceback.format_exc()[-4000:]}
      report["stages"][name]["seconds"] = round(time.perf_counter() - stage_start, 2)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out, report)

  def environment():
    report["environment"] = _environment()
    report["peak_tflops"], report["peak_source"] = peak_tflops(
        report["environment"]["device_kind"], args.peak_tflops)
    return report["environment"]

  run("environment", environment)
  if not report["stages"]["environment"]["ok"]:
    # Without jax or a device every other stage fails the same way: one traceback is enough.
    print(f"gpu_bench: the environment stage failed ({report['stages']['environment']['error']})"
          f"; no other stage runs. {args.out / 'gpu.json'} holds its traceback.",
          file=sys.stderr)
    return 1
  from distill import backend  # noqa: PLC0415

  export_batch = backend.choices().export_batch_size

  def bench(recipe_name: str, synthetic: str, dtype: str) -> None:
    run(f"bench {recipe_name} {dtype}", lambda: bench_stage(
        recipe_name, synthetic, dtype, smoke=args.smoke, export_batch=export_batch,
        peak_tflops=report["peak_tflops"]))

  # The stages behind the goals first (the CIFAR-10 recipe's rate, the demo teacher's time),
  # then the profile that explains a missed one: a run cut short by --budget-s or the device's
  # time limit loses the comparisons, not those.
  (cifar10, cifar10_data), (fashion_mnist, fashion_mnist_data) = _BENCH_RECIPES
  bench(cifar10, cifar10_data, "float32")
  with tempfile.TemporaryDirectory(prefix="distill-gpu-") as workdir:
    run("demo end to end", lambda: demo_stage(data_dir, Path(workdir), smoke=args.smoke))
  run("profile", lambda: profile_stage(cifar10, cifar10_data, smoke=args.smoke, out=args.out))
  bench(cifar10, cifar10_data, "bfloat16")
  for dtype in _DTYPES:
    bench(fashion_mnist, fashion_mnist_data, dtype)
  print(_markdown(report))
  return 0 if all(stage["ok"] for stage in report["stages"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())

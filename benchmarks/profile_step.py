"""Where a recipe's training step spends its time, op by op (XLA:CPU or GPU).

Traces the bare jitted step (as `distill bench` times it) with `jax.profiler`,
the Python tracer off so the trace holds XLA's ops, and prints the heaviest ops
in milliseconds per optimizer step, grouped by kind, output shape and the JAX
operation they came from (unrolled steps' copies of an op add up):

    python benchmarks/profile_step.py --recipe cifar10 --synthetic 32x32x3:50000:10
    python benchmarks/profile_step.py --recipe fashion_mnist --role student --top 20
    python benchmarks/profile_step.py --read runs/gpu --top 40   # what gpu.sh brought back

XLA:CPU's convolution events end when the work is handed to its thread pool; the
stretch with no op running that follows is charged to the convolution launched
last before it, listed as `convolution (async)` (the CNN student's convolutions
are more than half its step, and their events alone show a few percent).

The trace (`*.xplane.pb`, `perfetto_trace.json.gz`) and the compiled HLO stay in
--out for TensorBoard, Perfetto or a closer look. On XLA:CPU the per-op events
need `--xla_cpu_enable_xprof_traceme`, which this script adds to XLA_FLAGS
before JAX starts.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
from pathlib import Path

# Runtime bookkeeping and compiler passes in the trace, not the step's own ops.
_NOT_OPS = re.compile(
    r"^(ThunkExecutor|TaskDispatcher|Slinky|H2D|Execute|Handle|Parse|Allocate|PythonRef|Device|"
    r"shard|Common|while|end: )|Compile|Pass|pass|Codegen|simplif|HLO|Emit|mlir|Lower|Checker|"
    r"insertion|sharding|Canonical")


def _arguments() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipe", default="fashion_mnist")
  parser.add_argument("--role", choices=("teacher", "student"), default="teacher")
  parser.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="a recipe override, as `distill --set`")
  parser.add_argument("--synthetic", help="HxWxC:N:CLASSES random data, as `distill bench`")
  parser.add_argument("--steps", type=int, default=100, help="optimizer steps traced")
  parser.add_argument("--top", type=int, default=30, help="op groups printed")
  parser.add_argument("--out", type=Path, default=Path("runs/profile"))
  parser.add_argument("--read", type=Path, metavar="FOLDER",
                      help="trace nothing: rank the ops of a trace brought back by gpu.sh "
                           "(FOLDER/profile_trace.json.gz with profile_step.hlo.txt and gpu.json)")
  return parser.parse_args()


def read_trace(trace_path: Path) -> list[dict]:
  """The events of a `perfetto_trace.json.gz`."""
  with gzip.open(trace_path) as file:
    return json.load(file)["traceEvents"]


def op_events(events: list[dict]) -> list[dict]:
  """The step's op events, start-ordered: XLA's execution threads only, bookkeeping left out."""
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}

  def on_an_execution_thread(event):
    thread = threads.get((event["pid"], event.get("tid")), "")
    # XLA:CPU runs ops on its client and Eigen threads; a GPU trace names its streams.
    return thread.startswith(("tf_XLAPjRt", "tf_XLAEigen")) or "Stream" in thread

  return sorted((e for e in events
                 if e.get("ph") == "X" and not _NOT_OPS.search(e["name"])
                 and not e["name"].startswith("ThreadpoolListener")  # zero-length markers
                 and on_an_execution_thread(e)), key=lambda e: e["ts"])


def op_times(events: list[dict]) -> collections.Counter:
  """Total microseconds per HLO op name over the trace's events."""
  totals: collections.Counter = collections.Counter()
  for event in op_events(events):
    totals[event["name"]] += event["dur"]
  return totals


def async_convolution_times(events: list[dict], hlo_text: str) -> collections.Counter:
  """Microseconds in which no op ran while a convolution worked, per convolution (XLA:CPU).

  XLA:CPU hands a convolution to its Eigen thread pool and the op's event ends
  at the hand-over: the work shows in the trace only as a stretch with no op on
  any thread, until the next op that needs its result starts. Each such gap
  inside an execution of the program is charged to the convolution launched
  last before it (op times alone put the CNN student's step at half its wall
  time). GPU traces time kernels themselves and have no such gaps to charge.
  """
  convolutions = set(re.findall(r"%([\w.-]+) = \S+ convolution\(", hlo_text))
  ops = op_events(events)
  executions = [(e["ts"], e["ts"] + e["dur"]) for e in events
                if e.get("ph") == "X" and e["name"].startswith("ThunkExecutor::Execute (wait")]
  charged: collections.Counter = collections.Counter()
  for start, end in executions:
    busy_until, last_convolution = None, None
    for event in (e for e in ops if start <= e["ts"] < end):
      if busy_until is not None and event["ts"] > busy_until and last_convolution:
        charged[last_convolution] += event["ts"] - busy_until
      if event["name"] in convolutions:
        last_convolution = event["name"]
      busy_until = max(busy_until or 0, event["ts"] + event["dur"])
  return charged


def group_by_origin(totals: collections.Counter, hlo_text: str) -> collections.Counter:
  """Sums ops of one kind, output shape and JAX origin (an unrolled scan copies each op)."""
  groups: collections.Counter = collections.Counter()
  for name, micros in totals.items():
    # The instruction's line: its output shape, and the JAX operation in its metadata, if any
    # (XLA's own ops, such as layout copies and some convolutions' gradients, have none).
    line = re.search(r"%" + re.escape(name) + r" = (\S+) [^\n]*", hlo_text)
    origin = re.search(r"op_name=\"([^\"]*)\"", line.group(0)) if line else None
    kind = re.sub(r"\.\d+$", "", name)
    shape, origin = (line.group(1) if line else ""), (origin.group(1) if origin else "")
    origin = re.sub(r"^jit\(\w+\)/(while/body/)?(closed_call/)?", "", origin)
    groups[(kind, shape, origin)] += micros
  return groups


def profile(recipe, *, role: str, steps: int, synthetic: str | None, out: Path,
            top: int = 30) -> dict:
  """Traces `role`'s bare step for `steps` steps and ranks its ops (JAX must start after
  `--xla_cpu_enable_xprof_traceme` is in XLA_FLAGS for XLA:CPU's per-op events).

  Returns images/s while traced, ms a step, the ops' and the convolutions' thread-pool
  ms a step, the `top` op groups (ms a step, kind, output shape, JAX origin) and the
  paths of the trace and the step's HLO, both left in `out`.
  """
  import jax  # noqa: PLC0415

  from distill import bench  # noqa: PLC0415

  # Compiled and warmed up before the trace starts: on a GPU the compile runs the autotuner's
  # candidate kernels on the device, which would otherwise rank among the step's ops.
  step = bench.compiled_step(recipe, role=role, steps=steps, synthetic=synthetic)
  hlo_text = step.compiled.as_text()
  out.mkdir(parents=True, exist_ok=True)
  (out / "step.hlo.txt").write_text(hlo_text)
  trace_dir = out / "trace"
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True, profiler_options=options):
    images_per_second = step.time_rows()
  # This run's trace: earlier runs into the same folder left theirs beside it.
  trace_path = max(trace_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  return {
      "images_per_second": round(images_per_second, 1),
      "ms_per_step": round(1e3 * step.batch_size / images_per_second, 3),
      **rank_ops(read_trace(trace_path), hlo_text, traced_steps=step.steps, top=top),
      "trace": str(trace_path),
      "hlo": str(out / "step.hlo.txt"),
  }


def rank_ops(events: list[dict], hlo_text: str, *, traced_steps: int, top: int) -> dict:
  """The trace's op time per step: all ops, convolutions' thread-pool time, the `top` groups."""
  totals = op_times(events)
  waiting = async_convolution_times(events, hlo_text)
  groups = group_by_origin(totals, hlo_text)
  for (kind, shape, origin), micros in group_by_origin(waiting, hlo_text).items():
    groups[(f"{kind} (async)", shape, origin)] += micros
  return {
      "traced_steps": traced_steps,
      "ops_ms_per_step": round(sum(totals.values()) / 1e3 / traced_steps, 3),
      "async_convolution_ms_per_step": round(sum(waiting.values()) / 1e3 / traced_steps, 3),
      "top_ops": [{"ms_per_step": round(micros / 1e3 / traced_steps, 4), "kind": kind,
                   "shape": shape, "origin": origin}
                  for (kind, shape, origin), micros in groups.most_common(top)],
  }


def _print_ops(top_ops: list[dict]) -> None:
  for op in top_ops:
    print(f"{op['ms_per_step']:7.2f} ms  {op['kind']:26s} {op['shape'][:36]:36s} "
          f"{op['origin'][-70:]}")


def read_brought_back(folder: Path, top: int) -> None:
  """Prints the op ranking of the trace, HLO and gpu.json that `benchmarks/gpu.sh` wrote."""
  profile = json.loads((folder / "gpu.json").read_text())["stages"]["profile"]["result"]
  ranked = rank_ops(read_trace(folder / "profile_trace.json.gz"),
                    (folder / "profile_step.hlo.txt").read_text(),
                    traced_steps=profile["traced_steps"], top=top)
  print(f"{profile['recipe']} teacher on the device: {profile['images_per_second']:,.0f} "
        f"images/s while traced ({profile['ms_per_step']:.2f} ms a step), ops sum to "
        f"{ranked['ops_ms_per_step']:.2f} ms a step")
  _print_ops(ranked["top_ops"])


def main() -> None:
  args = _arguments()
  if args.read:
    read_brought_back(args.read, args.top)
    return
  os.environ["XLA_FLAGS"] = " ".join(
      filter(None, [os.environ.get("XLA_FLAGS"), "--xla_cpu_enable_xprof_traceme=true"]))
  from distill import config as config_lib  # noqa: PLC0415

  recipe = config_lib.load_recipe(args.recipe, overrides=args.overrides)
  found = profile(recipe, role=args.role, steps=args.steps, synthetic=args.synthetic,
                  out=args.out, top=args.top)
  print(f"{args.recipe} {args.role}: {found['images_per_second']:,.0f} images/s while traced "
        f"({found['ms_per_step']:.1f} ms a step), "
        f"ops sum to {found['ops_ms_per_step']:.1f} ms a step "
        f"(both cores' time added up), convolutions "
        f"{found['async_convolution_ms_per_step']:.1f} ms more on the thread pool, after "
        f"their ops' events ('(async)')")
  _print_ops(found["top_ops"])
  print(f"trace and HLO: {args.out}")


if __name__ == "__main__":
  main()

"""How much of the bare step each recipe's real loop keeps, for every model the recipes train.

The goal is a real loop (`loop.fit` at the recipe's cadence: log lines,
validations, checkpoints) at 0.9 of the bare step or better for every model.
`distill bench` times one pair, minutes apart on a VM whose speed drifts; this
alternates `bench.bare_step` and `bench.real_loop` over the same number of
steps, round after round (the order reversed every other round), for each
(recipe, role) the recipes define, and the demo sweep's other students, and
prints each case's median loop/bare with its range.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/loop_share.py --rounds 3
    python benchmarks/loop_share.py --case digits:teacher --case demo:student:student.model=linear

A window is the recipe's whole run, at most `--max-steps`, at its cadence:
validations and checkpoints as often as in the run. A window shorter than the
run charges the run's fixed costs (the last validation, the last log line) to
fewer steps, so it reads low, not high. CIFAR-10 runs on random data of its
shape (`--synthetic`), which cannot be downloaded here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

# (recipe, role, overrides): every recipe's teacher and student, and the demo sweep's other
# students (`make demo` trains linear, MLP and ViT students from one teacher).
DEFAULT_CASES = (
    "digits:teacher", "digits:student",
    "demo:teacher", "demo:student", "demo:student:student.model=linear",
    "demo:student:student.model=vit",
    "fashion_mnist:teacher", "fashion_mnist:student",
    "fashion_mnist_vit_student:student", "fashion_mnist_cnn_student:student",
    "cifar10:teacher", "cifar10:student",
)
SYNTHETIC = {"cifar10": "32x32x3:50000:10"}


def parse_case(text: str) -> tuple[str, str, list[str]]:
  """'recipe:role[:override;override]' -> (recipe, role, overrides)."""
  recipe, _, rest = text.partition(":")
  role, _, overrides = rest.partition(":")
  if role not in ("teacher", "student"):
    raise SystemExit(f"case {text!r}: the role is 'teacher' or 'student', got {role!r}")
  return recipe, role, [item.strip() for item in overrides.split(";") if item.strip()]


def window_steps(settings, max_steps: int) -> int:
  """The role's whole run (`config.TrainSettings`), at most `max_steps`, in whole dispatches."""
  steps = min(settings.steps, max_steps)
  return max(settings.steps_per_dispatch, steps - steps % settings.steps_per_dispatch)


def measure(case: str, rounds: int, max_steps: int, echo=print) -> dict:
  """`rounds` alternated rounds of the bare step and the real loop for one case."""
  from distill import bench, config  # noqa: PLC0415

  recipe_name, role, overrides = parse_case(case)
  recipe = config.load_recipe(recipe_name, overrides)
  settings = config.TrainSettings.of(recipe, role)
  steps = window_steps(settings, max_steps)
  synthetic = SYNTHETIC.get(recipe_name)
  timers = {"bare": bench.bare_step, "loop": bench.real_loop}
  speeds = {"bare": [], "loop": []}
  for round_index in range(rounds):
    for kind in ("bare", "loop") if round_index % 2 == 0 else ("loop", "bare"):
      timed = timers[kind](recipe, role=role, steps=steps, synthetic=synthetic)
      speeds[kind].append(timed.images_per_second)
    echo(f"  {case} round {round_index + 1}: bare {speeds['bare'][-1]:,.0f} img/s, "
         f"loop {speeds['loop'][-1]:,.0f} img/s")
  ratios = [loop / bare for loop, bare in zip(speeds["loop"], speeds["bare"], strict=True)]
  return {"case": case, "model": settings.model, "steps": steps,
          "bare": round(statistics.median(speeds["bare"])),
          "loop": round(statistics.median(speeds["loop"])),
          "loop_to_bare": round(statistics.median(ratios), 3),
          "range": [round(min(ratios), 3), round(max(ratios), 3)]}


def main() -> None:
  """Measures each case, then prints a Markdown table (and the rows as JSON with --json)."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--case", action="append",
                      help="'recipe:role[:override;...]' [default: every recipe's models]")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--max-steps", type=int, default=1000,
                      help="cap on a window's steps (default 1,000)")
  parser.add_argument("--json", action="store_true", help="the rows as JSON lines as well")
  args = parser.parse_args()
  rows = []
  for case in args.case or DEFAULT_CASES:
    rows.append(measure(case, args.rounds, args.max_steps,
                        echo=lambda line: print(line, file=sys.stderr, flush=True)))
  print("| case | model | steps | bare step img/s | loop img/s | loop/bare (range) |")
  print("|---|---|---|---|---|---|")
  for row in rows:
    low, high = row["range"]
    print(f"| {row['case']} | {row['model']} | {row['steps']:,} | {row['bare']:,} "
          f"| {row['loop']:,} | {row['loop_to_bare']:.2f} ({low:.2f}-{high:.2f}) |")
  if args.json:
    for row in rows:
      print(json.dumps(row))


if __name__ == "__main__":
  main()

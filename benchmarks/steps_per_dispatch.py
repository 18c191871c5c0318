"""Steps per dispatch, A against B in one process: alternated windows of each compiled step.

Separate `distill bench` processes run minutes apart, and these VMs' speed drifts
by up to 2x over minutes, so two settings timed that way mostly measure the drift.
This compiles the role's bare step once per setting, in one process, then times
equal windows of each in turn (the order swapped every round) and prints each
setting's median speed and its median ratio to the last one, round by round:

    python benchmarks/steps_per_dispatch.py --recipe fashion_mnist --k 2,10 --window 40 --rounds 6

Run it as `make bench` does, with huge pages for XLA's scratch buffers
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, see `distill/launcher.py`): without
them every dispatch page-faults its scratch buffer and fewer steps a dispatch
lose for that reason alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import closing


def _compiled_step(recipe_name: str, role: str, per_dispatch: int, window: int):
  """[setup, compiled step, warmed-up state, the window's rows] for one steps-per-dispatch."""
  import jax  # noqa: PLC0415

  from distill import bench  # noqa: PLC0415
  from distill import config as config_lib  # noqa: PLC0415
  from distill.step import prepare_training  # noqa: PLC0415

  recipe = config_lib.load_recipe(recipe_name, [f"{role}.steps_per_dispatch={per_dispatch}"])
  settings = config_lib.TrainSettings.of(recipe, role)
  data = bench._resolve_data(recipe, None)
  training = bench._training(recipe, role, data, settings, window)
  setup = prepare_training(
      model=bench._fresh_model(recipe, settings, data), images=data.images, labels=data.labels,
      objective=training["objective"], teaching=training["teaching"],
      settings=training["settings"], augment_settings=training["augment_settings"],
      seed=training["seed"])
  plan = [(i * per_dispatch, per_dispatch) for i in range(window // per_dispatch)]
  with closing(setup.feeder.dispatches(plan)) as feed:
    rows = list(feed)
  start = time.perf_counter()
  compiled = setup.compile(setup.state, rows[0])
  print(f"{per_dispatch} steps a dispatch: compiled in {time.perf_counter() - start:.1f} s",
        flush=True)
  state, metrics = setup.run_chunk(compiled, setup.state, rows[0])
  jax.block_until_ready(metrics)
  return [setup, compiled, state, rows], settings.batch_size


def main() -> None:
  """Parses the settings to compare, then times them in alternated windows."""
  import jax  # noqa: PLC0415

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipe", default="fashion_mnist")
  parser.add_argument("--role", choices=("teacher", "student"), default="teacher")
  parser.add_argument("--k", default="2,10", help="steps per dispatch to compare, comma-separated")
  parser.add_argument("--window", type=int, default=40, help="steps per timed window")
  parser.add_argument("--rounds", type=int, default=6)
  args = parser.parse_args()
  settings = [int(k) for k in args.k.split(",")]
  if any(args.window % k for k in settings):
    parser.error(f"--window {args.window} is not a multiple of every --k ({args.k})")
  programs, batch_size = {}, 0
  for k in settings:
    programs[k], batch_size = _compiled_step(args.recipe, args.role, k, args.window)
  speeds = {k: [] for k in settings}
  for round_index in range(args.rounds):
    for k in settings if round_index % 2 == 0 else settings[::-1]:
      setup, compiled, state, rows = programs[k]
      start = time.perf_counter()
      for chunk in rows:
        state, metrics = setup.run_chunk(compiled, state, chunk)
      jax.block_until_ready((state, metrics))
      speeds[k].append(args.window * batch_size / (time.perf_counter() - start))
      programs[k][2] = state
    print(f"round {round_index}: " + ", ".join(f"{k}: {speeds[k][-1]:,.0f} img/s"
                                               for k in settings), flush=True)
  base = settings[-1]
  for k in settings:
    ratios = [a / b for a, b in zip(speeds[k], speeds[base], strict=True)]
    print(f"{k} steps a dispatch: median {statistics.median(speeds[k]):,.0f} img/s, "
          f"{statistics.median(ratios):.2f}x of {base} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
  main()

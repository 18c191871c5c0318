"""Settings A against B in one process: alternated windows of each compiled training step.

Separate `distill bench` processes run minutes apart, and these VMs' speed drifts
by up to 2x over minutes, so two settings timed that way mostly measure the drift.
This compiles the role's bare step once per variant, in one process, then times
equal windows of each in turn (the order reversed every other round) and prints
each variant's median speed and its median ratio to the first, round by round.

A variant is `NAME: OVERRIDE; OVERRIDE ...`. An override is a recipe `--set`
(`teacher.steps_per_dispatch=2`) or, with the prefix `backend.`, a field of the
running backend's `distill.backend.BackendChoices` (`backend.unroll_conv_scan=false`,
`backend.conv_stem=conv`, `backend.transpose_narrow_weight_gradients=false`,
`backend.compiler_options=jaxlib` for jaxlib's own XLA defaults, or one option as
`NAME:VALUE`): the check
DEVELOPERS.md asks for on a CPU type BENCHMARKS.md has no rows for, and the one
`benchmarks/gpu_choices.sh` runs on a GPU.

    python benchmarks/ab_step.py --recipe fashion_mnist --window 40 --rounds 6 \\
        --variant "10: teacher.steps_per_dispatch=10" --variant "2: teacher.steps_per_dispatch=2"
    python benchmarks/ab_step.py --recipe fashion_mnist --role student \\
        --variant "distill:" --variant "ynn conv: backend.compiler_options=jaxlib"
    python benchmarks/ab_step.py --recipe cifar10 --synthetic 32x32x3:50000:10 --role student \\
        --variant "gathered: student.model=cnn" \\
        --variant "conv: student.model=cnn; backend.conv_stem=conv"

Run it as `make bench` does, with huge pages for XLA's scratch buffers
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, see `distill/launcher.py`): without
them every dispatch page-faults its scratch buffer, and settings with fewer
steps a dispatch lose for that reason alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics


def parse_variant(text: str) -> tuple[str, list[str], dict[str, object]]:
  """`NAME: a=1; backend.b=x` -> (name, recipe overrides, backend fields)."""
  from distill import backend  # noqa: PLC0415

  name, _, body = text.partition(":")
  overrides, backend_fields = [], {}
  current = backend.choices()
  settable = [field.name for field in dataclasses.fields(current)
              if field.name not in ("backend", "measured")]
  for item in filter(None, (part.strip() for part in body.split(";"))):
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"override {item!r} of variant {name!r} is not KEY=VALUE")
    if not key.startswith("backend."):
      overrides.append(item)
      continue
    field = key.removeprefix("backend.")
    if field not in settable:
      raise SystemExit(f"unknown backend choice {field!r}; valid: {', '.join(settable)}")
    kind = type(getattr(current, field))
    if field == "compiler_options":
      if value == "jaxlib":
        backend_fields[field] = ()
      elif value == "distill":
        backend_fields[field] = current.compiler_options
      elif ":" in value:
        backend_fields[field] = (tuple(value.split(":", 1)),)
      else:
        raise SystemExit("backend.compiler_options is 'jaxlib' (XLA's defaults), 'distill' or "
                         "one XLA option as NAME:VALUE")
    elif kind is bool:
      backend_fields[field] = value.lower() in ("1", "true", "yes")
    else:
      backend_fields[field] = kind(value)  # int or str, as the field holds
  return name.strip(), overrides, backend_fields


@contextlib.contextmanager
def backend_choices(fields: dict[str, object]):
  """The running backend's `distill.backend` choices replaced by `fields` while models are
  built and compiled (the entry `choices()` reads for it)."""
  from distill import backend  # noqa: PLC0415

  current = backend.choices()
  measured = backend._MEASURED
  original = measured.get(current.backend)
  measured[current.backend] = dataclasses.replace(current, **fields)
  backend.compiler_options.cache_clear()
  try:
    yield
  finally:
    if original is None:
      del measured[current.backend]
    else:
      measured[current.backend] = original
    backend.compiler_options.cache_clear()


def _compiled_step(recipe_name: str, role: str, overrides: list[str],
                   backend_fields: dict[str, object], window: int, synthetic: str | None):
  """The role's step under one variant, compiled and warmed up (`bench.compiled_step`)."""
  from distill import backend, bench  # noqa: PLC0415
  from distill import config as config_lib  # noqa: PLC0415

  recipe = config_lib.load_recipe(recipe_name, overrides)
  with backend_choices(backend_fields):  # the model is built and its step compiled under them
    per_dispatch = backend.steps_per_dispatch(
        config_lib.TrainSettings.of(recipe, role).steps_per_dispatch)
    if window % per_dispatch:
      raise SystemExit(f"--window {window} is not a multiple of {per_dispatch} steps a dispatch")
    return bench.compiled_step(recipe, role=role, steps=window, synthetic=synthetic)


def main() -> None:
  """Parses the variants to compare, then times them in alternated windows."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipe", default="fashion_mnist")
  parser.add_argument("--role", choices=("teacher", "student"), default="teacher")
  parser.add_argument("--variant", action="append", required=True,
                      help="'NAME: OVERRIDE; ...' (twice or more); an empty body is the recipe")
  parser.add_argument("--window", type=int, default=40, help="steps per timed window")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--synthetic", metavar="HxWxC:N:CLASSES",
                      help="random data of this shape instead of the recipe's, as `distill bench`")
  args = parser.parse_args()
  variants = [parse_variant(text) for text in args.variant]
  names = [name for name, _, _ in variants]
  if len(set(names)) != len(names) or len(names) < 2:
    parser.error("give two or more --variant, each with its own name")
  steps = {}
  for name, overrides, backend_fields in variants:
    steps[name] = _compiled_step(args.recipe, args.role, overrides, backend_fields, args.window,
                                 args.synthetic)
    print(f"{name}: compiled in {steps[name].compile_seconds:.1f} s", flush=True)
  speeds = {name: [] for name in names}
  for round_index in range(args.rounds):
    for name in names if round_index % 2 == 0 else names[::-1]:
      speeds[name].append(steps[name].time_rows())
    print(f"round {round_index}: " + ", ".join(f"{name}: {speeds[name][-1]:,.0f} img/s"
                                               for name in names), flush=True)
  base = names[0]
  for name in names:
    ratios = [a / b for a, b in zip(speeds[name], speeds[base], strict=True)]
    print(f"{name}: median {statistics.median(speeds[name]):,.0f} img/s, "
          f"{statistics.median(ratios):.2f}x of {base} ({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
  main()

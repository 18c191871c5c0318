"""Throughput measurements: bare jitted step, the real loop, export, compile time, memory.

`run_benchmark` times the same model three ways so the gaps are visible:

- the bare step: the compiled multi-step function called back to back on
  indices prepared in advance — the ceiling for this model and batch;
- the real loop: `loop.fit`, with sampling, logging, validation and
  checkpoints at the recipe's cadence, over one period of that cadence;
- export: the forward pass over the training images at the recipe's export
  batch size.
"""

from __future__ import annotations

import dataclasses
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from distill import backend
from distill import config as config_lib
from distill.errors import UserError
from distill.launcher import huge_pages_in_use


def synthetic_images(num_examples: int, image_shape: tuple[int, int, int], num_classes: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 images and labels of a real data set's shape (for data we cannot ship)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8)
  return images, rng.integers(0, num_classes, num_examples).astype(np.int32)


def _peak_rss_mb() -> float:
  # ru_maxrss is in kilobytes on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass(frozen=True)
class _BenchData:
  """The images a benchmark trains, validates and exports on, and what they are."""

  images: np.ndarray
  labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  image_shape: tuple[int, ...]
  num_classes: int
  name: str


@dataclasses.dataclass(frozen=True)
class _BareStep:
  """What timing the bare step measured, and its trained parameters for timing export."""

  num_params: int
  steps: int
  compile_seconds: float
  images_per_second: float
  seconds: float  # of the timed steps, compilation and the warm-up dispatch excluded
  params: Any
  predict: Any
  flops_per_step: float | None = None
  hlo_text: str | None = None


def run_benchmark(recipe: dict[str, Any], *, role: str = "teacher", steps: int | None = None,
                  bare_steps: int | None = None, synthetic: str | None = None,
                  quiet: bool = True, count_flops: bool = False,
                  note: Callable[[str], None] | None = None) -> dict[str, Any]:
  """Measures training and export throughput for `role`'s model in `recipe`.

  Args:
    recipe: a resolved recipe; `role`'s section gives model, batch and cadences.
    role: 'teacher' (hard labels, augmentation) or 'student' (soft targets).
    steps: optimizer steps for the timed real loop. Default: one period of the
      recipe's cadence (the larger of eval_every and checkpoint_every, at most
      the recipe's steps), so validation and checkpoints cost what they cost
      in a real run rather than being paid once over a few hundred steps.
    bare_steps: steps for the bare-step timing. Default: `steps`, so both
      timings span about as long and a machine whose speed drifts over
      minutes (a shared VM) biases neither. The bare step runs whole
      dispatches, so this is rounded down to a multiple of the steps per
      dispatch (at least one dispatch); `note` is told when it is.
    synthetic: 'HxWxC:N:CLASSES' to time on random data of that shape instead of
      loading the recipe's data set (e.g. '32x32x3:50000:10' for CIFAR-10).
    quiet: hide progress bars.
    count_flops: also lower one optimizer step on its own and report XLA's
      FLOP count of it (`flops_per_step`, forward + backward + update, before
      XLA's optimisations) and the FLOP/s the bare step reached
      (`bare_step_flops_per_second`). Off by default: it costs one more trace.
    note: called with a line for the user (the bare steps rounded); None: no notes.

  Returns:
    A flat dict: bare_step_images_per_second, bare_seconds,
    loop_images_per_second, loop_seconds, loop_to_bare_ratio,
    export_images_per_second, export_to_train_ratio, compile_seconds,
    loop_compile_seconds, peak_rss_mb, the settings measured and the
    backend's choices (`distill.backend`); `distill bench --help` says what
    each means.
  """
  import jax  # noqa: PLC0415

  settings = config_lib.TrainSettings.of(recipe, role)
  if steps is None:
    steps = min(settings.steps, max(settings.eval_every, settings.checkpoint_every))
  bare_steps_given = bare_steps is not None
  if bare_steps is None:
    bare_steps = steps
  for flag, value in (("--steps", steps), ("--bare-steps", bare_steps)):
    if value <= 0:
      raise UserError(f"{flag} must be positive, got {value}")
  data = _resolve_data(recipe, synthetic)
  training = _training(recipe, role, data, settings, steps)  # refuses a batch that cannot fit
  if note is not None and role == "student" and (untimed := _untimed_teaching(recipe)):
    note(f"note: bench times a student's step with kd on exported targets, un-augmented; this "
         f"recipe's {untimed} is not what is timed")
  per_dispatch = backend.steps_per_dispatch(settings.steps_per_dispatch)
  timed = _whole_dispatches(bare_steps, per_dispatch)
  if note is not None and timed != bare_steps:
    asked = (f"--bare-steps {bare_steps}" if bare_steps_given
             else f"the bare step (as many steps as the loop's {bare_steps})")
    note(f"note: {asked} is timed as {timed} steps: the bare step runs whole dispatches of "
         f"{per_dispatch} steps")

  # 1. The bare step: one compiled K-step function called back to back.
  bare = _time_bare_step(_fresh_model(recipe, settings, data), data, bare_steps=bare_steps,
                         count_flops=count_flops, **training)
  # 2. The real loop, at the recipe's cadence (eval/checkpoint no rarer than the run).
  stats = _time_loop(_fresh_model(recipe, settings, data), data, quiet=quiet, **training)
  # 3. Export: the forward pass over every training image.
  export_ips = _time_export(bare.predict, bare.params, data.images,
                            recipe["export"]["batch_size"])

  flops = {}
  if bare.flops_per_step is not None:
    steps_per_second = bare.images_per_second / settings.batch_size
    flops = {"flops_per_step": bare.flops_per_step,
             "bare_step_flops_per_second": round(bare.flops_per_step * steps_per_second)}
  return {
      "role": role,
      "model": settings.model,
      "compute_dtype": settings.compute_dtype,
      "params": bare.num_params,
      "dataset": data.name,
      "image_shape": list(data.image_shape),
      "batch_size": settings.batch_size,
      "steps_per_dispatch": per_dispatch,
      "bare_steps": bare.steps,
      "loop_steps": steps,
      "bare_seconds": round(bare.seconds, 3),
      "loop_seconds": round(stats.train_seconds, 3),
      "bare_step_images_per_second": round(bare.images_per_second, 1),
      "loop_images_per_second": round(stats.images_per_second, 1),
      "loop_to_bare_ratio": round(stats.images_per_second / bare.images_per_second, 3),
      "export_images_per_second": round(export_ips, 1),
      "export_to_train_ratio": round(export_ips / bare.images_per_second, 2),
      "compile_seconds": round(bare.compile_seconds, 2),
      "loop_compile_seconds": round(stats.compile_seconds, 2),
      "peak_rss_mb": round(_peak_rss_mb(), 1),
      **flops,
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "devices": jax.device_count(),
      "cpu": backend.cpu_description(),
      "jax_version": jax.__version__,
      "backend_choices": backend.choices().as_dict(),
      "huge_pages": huge_pages_in_use(),
  }


def format_report(result: dict[str, Any]) -> str:
  """`run_benchmark`'s dict as `distill bench` prints it: one `key: value` a line.

  A dict value (backend_choices) gives a line per entry, its key after the
  parent's and a dot; one nested deeper reads `key=value, ...`.
  """
  def text(value: Any) -> str:
    if isinstance(value, dict):
      return ", ".join(f"{key}={item}" for key, item in value.items()) or "none"
    return str(value)

  rows = []
  for key, value in result.items():
    if isinstance(value, dict):
      rows += [(f"{key}.{inner}", text(item)) for inner, item in value.items()]
    else:
      rows.append((key, text(value)))
  width = max(len(key) for key, _ in rows)
  return "\n".join(f"{key:>{width}}: {value}" for key, value in rows)


def _whole_dispatches(steps: int, per_dispatch: int) -> int:
  """The steps the bare step times for `steps` asked: whole dispatches, at least one."""
  return max(1, steps // per_dispatch) * per_dispatch


def _resolve_data(recipe: dict[str, Any], synthetic: str | None) -> _BenchData:
  """Random data of the `synthetic` spec ('HxWxC:N:CLASSES'), or else the recipe's data set."""
  if synthetic:
    try:
      shape_text, count_text, classes_text = synthetic.split(":")
      image_shape = tuple(int(v) for v in shape_text.lower().split("x"))
      num_examples, num_classes = int(count_text), int(classes_text)
      assert len(image_shape) == 3
    except (ValueError, AssertionError):
      raise UserError("--synthetic expects HxWxC:N:CLASSES like 32x32x3:50000:10, "
                      f"got '{synthetic}'") from None
    if min(image_shape) < 1 or num_examples < 1 or num_classes < 2:
      # A classifier's step-0 check (log of the classes) needs two classes at least.
      raise UserError(f"--synthetic {synthetic}: the sizes and N must be at least 1 and "
                      "CLASSES at least 2, like 32x32x3:50000:10")
    images, labels = synthetic_images(num_examples, image_shape, num_classes)
    val_images, val_labels = synthetic_images(1000, image_shape, num_classes, seed=1)
    return _BenchData(images, labels, val_images, val_labels, image_shape, num_classes,
                      f"synthetic {synthetic}")
  from distill.workflow import load_data  # noqa: PLC0415

  # Every label kept (data.labelled=0): a step's speed does not depend on which rows
  # carry one, and the stand-in teacher below is made from them.
  dataset = load_data({**recipe, "data": {**recipe["data"], "labelled": 0}})
  return _BenchData(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val,
                    dataset.image_shape, dataset.num_classes, dataset.name)


def _untimed_teaching(recipe: dict[str, Any]) -> str | None:
  """What a recipe's student does that the timed student step does not (another method, a
  teacher run in the step, augmentation), in words; None when it trains as timed."""
  from distill.run_recipe import student_augmented  # noqa: PLC0415

  student = recipe["student"]
  taught = student["loss"] != "hard"
  parts = [f"method {student['method']}" if taught and student["method"] != "kd" else "",
           f"teaching={student['teaching']}" if taught and student["teaching"] != "targets"
           else "",
           "augmentation" if student_augmented(student) else ""]
  return ", ".join(part for part in parts if part) or None


def _objective_and_teaching(role: str, data: _BenchData):
  """The role's objective, and for a student stand-in teacher logits to learn from."""
  from distill import teaching as teaching_lib  # noqa: PLC0415

  if role == "teacher":
    return teaching_lib.make_objective("hard"), None
  objective = teaching_lib.make_objective("soft")
  # Any logits time the same; use those of smoothed one-hot labels.
  teacher_logits = np.zeros((len(data.images), data.num_classes), np.float32)
  teacher_logits[np.arange(len(data.images)), data.labels] = 3.0
  return objective, teaching_lib.ExportedTargets(teacher_logits=teacher_logits)


def _fresh_model(recipe: dict[str, Any], settings: config_lib.TrainSettings, data: _BenchData):
  """A newly initialised model of the role's settings, so each timing starts alike."""
  from distill.models import create_model  # noqa: PLC0415

  return create_model(settings.model, num_classes=data.num_classes, image_shape=data.image_shape,
                      seed=recipe["seed"], compute_dtype=settings.compute_dtype,
                      **dict(settings.model_options))


def bare_step(recipe: dict[str, Any], *, role: str, steps: int, synthetic: str | None = None,
              keep_hlo: bool = False) -> _BareStep:
  """Compiles and times `role`'s bare step alone, as `run_benchmark` does first.

  For tools that look inside the step (`benchmarks/profile_step.py` traces
  this call); `keep_hlo` keeps the compiled program's HLO text.
  """
  settings = config_lib.TrainSettings.of(recipe, role)
  data = _resolve_data(recipe, synthetic)
  return _time_bare_step(_fresh_model(recipe, settings, data), data, bare_steps=steps,
                         keep_hlo=keep_hlo, **_training(recipe, role, data, settings, steps))


def real_loop(recipe: dict[str, Any], *, role: str, steps: int, synthetic: str | None = None,
              quiet: bool = True):
  """Times `role`'s real loop alone, as `run_benchmark` does second; returns its `loop.RunStats`.

  The loop is `loop.fit` at the recipe's cadence (logs, validations and
  checkpoints), over `steps` steps. For tools that set it beside another
  trainer (`benchmarks/keras_fit.py`).
  """
  settings = config_lib.TrainSettings.of(recipe, role)
  data = _resolve_data(recipe, synthetic)
  return _time_loop(_fresh_model(recipe, settings, data), data, quiet=quiet,
                    **_training(recipe, role, data, settings, steps))


def _training(recipe: dict[str, Any], role: str, data: _BenchData,
              settings: config_lib.TrainSettings, steps: int) -> dict[str, Any]:
  """What the timed step trains on: `role`'s objective, teaching, settings and augmentation."""
  _check_batch_fits(settings.batch_size, data)
  objective, teaching = _objective_and_teaching(role, data)
  return {"objective": objective, "teaching": teaching,
          "settings": dataclasses.replace(settings, steps=steps),
          "augment_settings": recipe["augment"] if role == "teacher" else None,
          "seed": recipe["seed"]}


def _check_batch_fits(batch_size: int, data: _BenchData) -> None:
  """Refuses a batch larger than the training images, with the --batch-size that fits (the
  largest power of two, as `distill teacher` and `student` suggest it)."""
  rows = len(data.labels)
  if batch_size > rows:
    fitting = 1 << (rows.bit_length() - 1)
    more = " (or a larger N in --synthetic)" if data.name.startswith("synthetic ") else ""
    raise UserError(f"batch size {batch_size} is larger than the {rows:,} training examples: "
                    f"pass --batch-size {fitting}{more}")


@dataclasses.dataclass
class CompiledStep:
  """A role's K-step function, compiled and run once, with every dispatch's rows made in advance.

  `rows[0]` was the compile-and-warm-up dispatch; `time_rows` runs the others
  back to back from `state`, which moves on with them.
  """

  setup: Any
  compiled: Any
  state: Any
  rows: list
  compile_seconds: float
  flops_per_step: float | None
  steps_per_dispatch: int
  batch_size: int

  seconds: float = 0.0  # the last `time_rows` call's

  @property
  def steps(self) -> int:
    """How many steps one `time_rows` call runs."""
    return (len(self.rows) - 1) * self.steps_per_dispatch

  def time_rows(self) -> float:
    """Runs `rows[1:]` and waits for them; returns images per second (`seconds`: how long)."""
    import jax  # noqa: PLC0415

    state, metrics = self.state, None
    start = time.perf_counter()
    for chunk in self.rows[1:]:
      state, metrics = self.setup.run_chunk(self.compiled, state, chunk)
    jax.block_until_ready((state, metrics))
    self.seconds = time.perf_counter() - start
    self.state = state
    return self.steps * self.batch_size / self.seconds


def compiled_step(recipe: dict[str, Any], *, role: str, steps: int,
                  synthetic: str | None = None) -> CompiledStep:
  """`role`'s step compiled and warmed up as `bare_step` times it, `steps` steps a window.

  For tools that time several compiled steps against each other
  (`benchmarks/ab_step.py`).
  """
  settings = config_lib.TrainSettings.of(recipe, role)
  data = _resolve_data(recipe, synthetic)
  return _compile_step(_fresh_model(recipe, settings, data), data, bare_steps=steps,
                       **_training(recipe, role, data, settings, steps))


def _compile_step(model, data: _BenchData, *, bare_steps: int, objective, teaching,
                  settings: config_lib.TrainSettings, augment_settings, seed: int,
                  count_flops: bool = False) -> CompiledStep:
  """Prepares the K-step function, makes every dispatch's rows, compiles and warms it up."""
  import jax  # noqa: PLC0415

  from distill.step import prepare_training  # noqa: PLC0415

  per_dispatch = backend.steps_per_dispatch(settings.steps_per_dispatch)
  dispatches = _whole_dispatches(bare_steps, per_dispatch) // per_dispatch
  setup = prepare_training(
      model=model, images=data.images, labels=data.labels, objective=objective,
      teaching=teaching, settings=settings, augment_settings=augment_settings, seed=seed)
  # Every dispatch's rows are made (or read) before the clock starts.
  plan = [(i * per_dispatch, per_dispatch) for i in range(dispatches + 1)]
  with closing(setup.feeder.dispatches(plan)) as feed:
    rows = list(feed)
  flops_per_step = _step_flops(setup, setup.state, rows[0]) if count_flops else None
  start = time.perf_counter()
  compiled = setup.compile(setup.state, rows[0])
  compile_seconds = time.perf_counter() - start
  state, metrics = setup.run_chunk(compiled, setup.state, rows[0])  # warm-up
  jax.block_until_ready(metrics)
  return CompiledStep(setup=setup, compiled=compiled, state=state, rows=rows,
                      compile_seconds=compile_seconds, flops_per_step=flops_per_step,
                      steps_per_dispatch=per_dispatch, batch_size=settings.batch_size)


def _time_bare_step(model, data: _BenchData, *, bare_steps: int, objective, teaching,
                    settings: config_lib.TrainSettings, augment_settings, seed: int,
                    count_flops: bool = False, keep_hlo: bool = False) -> _BareStep:
  """Compiles the K-step function, then times it called back to back on rows made in advance.

  `keep_hlo` keeps the compiled program's HLO text (`benchmarks/profile_step.py` names
  the traced ops from it).
  """
  from distill.models import count_params  # noqa: PLC0415

  num_params = count_params(model)
  step = _compile_step(model, data, bare_steps=bare_steps, objective=objective,
                       teaching=teaching, settings=settings, augment_settings=augment_settings,
                       seed=seed, count_flops=count_flops)
  images_per_second = step.time_rows()
  # The rows, state and setup go with this frame: only the parameters outlive it.
  return _BareStep(num_params=num_params, steps=step.steps,
                   compile_seconds=step.compile_seconds, images_per_second=images_per_second,
                   seconds=step.seconds, params=step.state["params"], predict=step.setup.predict,
                   flops_per_step=step.flops_per_step,
                   hlo_text=step.compiled.as_text() if keep_hlo else None)


def _step_flops(setup, state, rows_K) -> float | None:
  """XLA's FLOP count of one optimizer step (forward, backward, update), or None if it has none.

  One step is lowered on its own: XLA counts a `lax.scan` body once whatever
  its length, and an unrolled scan K times, so the K-step dispatch's count
  does not say how many steps it covers. The count comes from the lowered
  program, as XLA's cost analysis reads it before optimisation (the same
  FLOPs, without compiling the step once more); a backend that cannot count
  there is asked after compiling.
  """
  import jax  # noqa: PLC0415

  from distill.step import train_step  # noqa: PLC0415

  one_step = jax.tree.map(lambda rows: rows[0], rows_K)
  lowered = backend.jit(partial(train_step, setup.spec)).lower(
      *setup.step_inputs(), state, one_step)
  for stage in (lowered, None):
    try:
      cost = (stage or lowered.compile()).cost_analysis()
    except Exception:  # noqa: BLE001 (backends without a pre-compile analysis raise their own)
      continue
    # Older jax returned one dict per computation, newer ones the dict itself.
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = (cost or {}).get("flops")
    if flops and flops > 0:
      return float(flops)
  return None


def _time_loop(model, data: _BenchData, *, objective, teaching,
               settings: config_lib.TrainSettings, augment_settings, seed: int, quiet: bool):
  """Runs `loop.fit` in a throwaway folder and returns its stats (throughput, compile time)."""
  from distill import loop  # noqa: PLC0415

  # The final checkpoint is written after the clock stops, as the workflow writes it while
  # it evaluates; the folder goes only once the write is done.
  with (tempfile.TemporaryDirectory(prefix="distill-bench-") as workdir,
        ExitStack() as final_write):
    _, stats = loop.fit(
        model=model, images=data.images, labels=data.labels, teaching=teaching,
        val_images=data.val_images, val_labels=data.val_labels, objective=objective,
        settings=settings, augment_settings=augment_settings, workdir=Path(workdir),
        seed=seed, checkpoint_meta={"recipe_hash": "bench"}, quiet=quiet,
        echo=lambda _: None, warn=lambda _: None, final_write=final_write)
  return stats


def _time_export(predict, params, images: np.ndarray, export_batch: int) -> float:
  """Images per second of the forward pass over `images`, compiled before the clock starts."""
  from distill.inference import predict_in_batches  # noqa: PLC0415

  predict_in_batches(predict, params, images[:export_batch], export_batch)  # compile
  start = time.perf_counter()
  predict_in_batches(predict, params, images, export_batch)
  return len(images) / (time.perf_counter() - start)

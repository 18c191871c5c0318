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
from pathlib import Path
from typing import Any

import numpy as np

from distill import config as config_lib
from distill.errors import UserError


def synthetic_images(num_examples: int, image_shape: tuple[int, int, int], num_classes: int,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 images and labels of a real data set's shape (for data we cannot ship)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8)
  return images, rng.integers(0, num_classes, num_examples).astype(np.int32)


def _peak_rss_mb() -> float:
  # ru_maxrss is in kilobytes on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(recipe: dict[str, Any], *, role: str = "teacher", steps: int | None = None,
                  bare_steps: int | None = None, synthetic: str | None = None,
                  quiet: bool = True) -> dict[str, Any]:
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
      minutes (a shared VM) biases neither.
    synthetic: 'HxWxC:N:CLASSES' to time on random data of that shape instead of
      loading the recipe's data set (e.g. '32x32x3:50000:10' for CIFAR-10).
    quiet: hide progress bars.

  Returns:
    A flat dict: bare_step_images_per_second, loop_images_per_second,
    loop_to_bare_ratio, export_images_per_second, export_to_train_ratio,
    compile_seconds, peak_rss_mb, and the settings measured.
  """
  from contextlib import closing  # noqa: PLC0415

  import jax  # noqa: PLC0415

  from distill import loop  # noqa: PLC0415
  from distill import teaching as teaching_lib  # noqa: PLC0415
  from distill.inference import predict_in_batches  # noqa: PLC0415
  from distill.models import count_params, create_model  # noqa: PLC0415
  from distill.step import prepare_training  # noqa: PLC0415

  settings = config_lib.TrainSettings.of(recipe, role)
  if steps is None:
    steps = min(settings.steps, max(settings.eval_every, settings.checkpoint_every))
  if bare_steps is None:
    bare_steps = steps
  for flag, value in (("--steps", steps), ("--bare-steps", bare_steps)):
    if value <= 0:
      raise UserError(f"{flag} must be positive, got {value}")
  if synthetic:
    try:
      shape_text, count_text, classes_text = synthetic.split(":")
      image_shape = tuple(int(v) for v in shape_text.lower().split("x"))
      num_examples, num_classes = int(count_text), int(classes_text)
      assert len(image_shape) == 3
    except (ValueError, AssertionError):
      raise UserError("--synthetic expects HxWxC:N:CLASSES like 32x32x3:50000:10, "
                      f"got '{synthetic}'") from None
    images, labels = synthetic_images(num_examples, image_shape, num_classes)
    val_images, val_labels = synthetic_images(1000, image_shape, num_classes, seed=1)
    dataset_name = f"synthetic {synthetic}"
  else:
    from distill.workflow import load_data  # noqa: PLC0415

    dataset = load_data(recipe)
    images, labels = dataset.x_train, dataset.y_train
    val_images, val_labels = dataset.x_val, dataset.y_val
    image_shape, num_classes, dataset_name = dataset.image_shape, dataset.num_classes, dataset.name
  if settings.batch_size > len(images):
    raise UserError(f"batch size {settings.batch_size} is larger than the {len(images)} images")

  name, model_kwargs = settings.model, dict(settings.model_options)
  teaching = None
  if role == "teacher":
    objective = teaching_lib.make_objective("hard")
  else:
    objective = teaching_lib.make_objective("soft")
    # Any logits time the same; use those of smoothed one-hot labels.
    teacher_logits = np.zeros((len(images), num_classes), np.float32)
    teacher_logits[np.arange(len(images)), labels] = 3.0
    teaching = teaching_lib.ExportedTargets(teacher_logits=teacher_logits)
  augment_settings = recipe["augment"] if role == "teacher" else None

  def fresh_model():
    return create_model(name, num_classes=num_classes, image_shape=image_shape,
                        seed=recipe["seed"], compute_dtype=settings.compute_dtype,
                        **model_kwargs)

  # 1. The bare step: one compiled K-step function called back to back.
  loop_settings = dataclasses.replace(settings, steps=steps)
  per_dispatch = settings.steps_per_dispatch
  dispatches = max(1, bare_steps // per_dispatch)
  model = fresh_model()
  num_params = count_params(model)
  setup = prepare_training(
      model=model, images=images, labels=labels, objective=objective, teaching=teaching,
      settings=loop_settings, augment_settings=augment_settings,
      seed=recipe["seed"])
  # Every dispatch's rows are made (or read) before the clock starts.
  plan = [(i * per_dispatch, per_dispatch) for i in range(dispatches + 1)]
  with closing(setup.feeder.dispatches(plan)) as feed:
    rows = list(feed)
  state = setup.state
  start = time.perf_counter()
  compiled = setup.compile(state, rows[0])
  compile_seconds = time.perf_counter() - start
  state, metrics = setup.run_chunk(compiled, state, rows[0])  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for chunk in rows[1:]:
    state, metrics = setup.run_chunk(compiled, state, chunk)
  jax.block_until_ready((state, metrics))
  bare_seconds = time.perf_counter() - start
  bare_ips = dispatches * per_dispatch * settings.batch_size / bare_seconds
  trained_params, predict = state["params"], setup.predict
  del state, rows, setup

  # 2. The real loop, at the recipe's cadence (eval/checkpoint no rarer than the run).
  with tempfile.TemporaryDirectory(prefix="distill-bench-") as workdir:
    _, stats = loop.fit(
        model=fresh_model(), images=images, labels=labels, teaching=teaching,
        val_images=val_images, val_labels=val_labels, objective=objective,
        settings=loop_settings, augment_settings=augment_settings, workdir=Path(workdir),
        seed=recipe["seed"], checkpoint_meta={"recipe_hash": "bench"}, quiet=quiet,
        echo=lambda _: None, warn=lambda _: None)
  # 3. Export: the forward pass over every training image.
  export_batch = recipe["export"]["batch_size"]
  predict_in_batches(predict, trained_params, images[:export_batch], export_batch)  # compile
  start = time.perf_counter()
  predict_in_batches(predict, trained_params, images, export_batch)
  export_ips = len(images) / (time.perf_counter() - start)

  return {
      "role": role,
      "model": name,
      "compute_dtype": settings.compute_dtype,
      "params": num_params,
      "dataset": dataset_name,
      "image_shape": list(image_shape),
      "batch_size": settings.batch_size,
      "steps_per_dispatch": per_dispatch,
      "bare_steps": dispatches * per_dispatch,
      "loop_steps": steps,
      "bare_step_images_per_second": round(bare_ips, 1),
      "loop_images_per_second": round(stats.images_per_second, 1),
      "loop_to_bare_ratio": round(stats.images_per_second / bare_ips, 3),
      "export_images_per_second": round(export_ips, 1),
      "export_to_train_ratio": round(export_ips / bare_ips, 2),
      "compile_seconds": round(compile_seconds, 2),
      "loop_compile_seconds": round(stats.compile_seconds, 2),
      "peak_rss_mb": round(_peak_rss_mb(), 1),
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "jax_version": jax.__version__,
  }

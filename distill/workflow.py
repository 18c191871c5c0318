"""The distillation workflow: train a teacher, export its targets, train students.

Each public function here is what one CLI command calls, and each works the
same from Python. A run directory holds:

  recipe.json      the resolved recipe the run used
  metrics.jsonl    one line per logged step (train loss/accuracy, validation)
  summary.json     the final numbers (see `_base_summary`)
  checkpoints/     Orbax checkpoints of the training state
  predictions.npz  test and validation logits of the final model (for reports)
  targets.npz      (teachers) soft targets for the training split + test logits
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill import config as config_lib
from distill.console import Console
from distill.errors import UserError
from distill.io import read_json, write_json, write_npz

SUMMARY_FILE = "summary.json"
RECIPE_FILE = "recipe.json"
PREDICTIONS_FILE = "predictions.npz"
_RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", SUMMARY_FILE, RECIPE_FILE, "targets.npz",
                "targets.json", PREDICTIONS_FILE)


def load_data(recipe: dict[str, Any]):
  """Loads the recipe's dataset with its validation split."""
  from distill.data import load_dataset  # noqa: PLC0415

  data = recipe["data"]
  return load_dataset(data["dataset"], data_dir=data["data_dir"] or None,
                      val_size=data["val_size"], split_seed=data["split_seed"],
                      train_limit=data["train_limit"] or None)


def check_batch_fits(dataset, settings: dict[str, Any], role: str) -> None:
  """Refuses a batch larger than the training split before anything is written."""
  if settings["batch_size"] > len(dataset.x_train):
    raise UserError(f"{role}.batch_size {settings['batch_size']} is larger than the "
                    f"{len(dataset.x_train)} training examples of {dataset.name}")


def check_workdir(workdir: Path) -> None:
  """Fails early, before any work, when `workdir` cannot be created or written."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"workdir {workdir} exists and is not a directory")
  ancestor = workdir
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise UserError(f"cannot create workdir {workdir}: {ancestor} is not a directory")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise UserError(f"cannot write to workdir {workdir}: {ancestor} is read-only")


def prepare_workdir(workdir: Path, *, restart: bool, overwrite: bool) -> None:
  """Decides what happens to an existing run directory, before anything is written.

  A finished run is never overwritten without `overwrite`; an unfinished one is
  resumed (the training loop checks the recipe hash) unless `restart`.
  Callers run `check_workdir` first, before loading any data.
  """
  workdir = Path(workdir)
  finished = (workdir / SUMMARY_FILE).exists()
  if finished and not overwrite:
    raise UserError(f"{workdir} already holds a finished run; pass --overwrite to replace it, "
                    "or choose another --workdir")
  if (finished and overwrite) or restart:
    for name in _RUN_OUTPUTS:
      path = workdir / name
      shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write-test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None


def _build_model(recipe: dict[str, Any], role: str, dataset):
  from distill.models import count_params, create_model  # noqa: PLC0415

  name, settings = config_lib.model_settings(recipe, role)
  model = create_model(name, num_classes=dataset.num_classes, image_shape=dataset.image_shape,
                       seed=recipe["seed"], compute_dtype=recipe[role]["compute_dtype"],
                       **settings)
  return name, model, count_params(model)


def _evaluate(result, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
  from distill import losses  # noqa: PLC0415
  from distill.train import predict_in_batches  # noqa: PLC0415

  logits = predict_in_batches(result.predict, result.params, images, batch_size)
  return {
      "logits": logits,
      "accuracy": float(losses.accuracy(logits, labels)),
      "nll": float(losses.negative_log_likelihood(logits, labels)),
      "ece": float(losses.expected_calibration_error(logits, labels)),
  }


def _base_summary(role: str, model_name: str, num_params: int, dataset, recipe, result,
                  val: dict[str, Any], test: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
  import jax  # noqa: PLC0415

  from distill.train import params_sha256  # noqa: PLC0415

  section = recipe[role]
  return {
      "role": role,
      "model": model_name,
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      "params": num_params,
      "steps": result.steps,
      "batch_size": section["batch_size"],
      "seed": recipe["seed"],
      "init_loss": result.init_loss,
      "init_loss_expected": result.init_loss_expected,
      "final_train_loss": result.final_train_loss,
      "val_accuracy": val["accuracy"],
      "val_nll": val["nll"],
      "test_accuracy": test["accuracy"],
      "test_nll": test["nll"],
      "test_ece": test["ece"],
      "train_seconds": round(result.train_seconds, 3),
      "compile_seconds": round(result.compile_seconds, 3),
      "wall_seconds": round(wall_seconds, 3),
      "images_per_second": round(result.images_per_second, 1),
      "params_sha256": params_sha256(result.params),
      "recipe_hash": config_lib.recipe_hash(recipe),
      "resumed_from_step": result.resumed_from,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "backend": jax.default_backend(),
      "jax_version": jax.__version__,
      "host": platform.node(),
  }


def _fit_and_evaluate(role: str, recipe: dict[str, Any], dataset, model_name: str, model,
                      num_params: int, workdir: Path, start: float, *, targets, objective,
                      augment_settings, strict_init_check: bool, console: Console):
  """Trains through `train.fit`, evaluates on validation and test, keeps the predictions.

  Returns:
    (the TrainResult, the test evaluation, the summary without role extras).
  """
  from distill.train import fit  # noqa: PLC0415

  settings = recipe[role]
  result = fit(
      model=model, images=dataset.x_train, labels=dataset.y_train, targets=targets,
      val_images=dataset.x_val, val_labels=dataset.y_val, objective=objective,
      settings=settings, augment_settings=augment_settings, workdir=workdir, seed=recipe["seed"],
      checkpoint_meta={"role": role, "recipe_hash": config_lib.recipe_hash(recipe)},
      strict_init_check=strict_init_check, quiet=console.quiet, echo=console.info,
      warn=console.warn)
  batch = settings["eval_batch_size"]
  val = _evaluate(result, dataset.x_val, dataset.y_val, batch)
  test = _evaluate(result, dataset.x_test, dataset.y_test, batch)
  summary = _base_summary(role, model_name, num_params, dataset, recipe, result, val, test,
                          time.perf_counter() - start)
  write_npz(workdir / PREDICTIONS_FILE, {"test_logits": test["logits"], "val_logits": val["logits"]})
  return result, test, summary


def train_teacher(recipe: dict[str, Any], workdir: Path, *, restart: bool = False,
                  overwrite: bool = False, strict_init_check: bool = False,
                  quiet: bool = False, export: bool = True) -> dict[str, Any]:
  """Trains the teacher with hard labels and augmentation, then exports its targets.

  Args:
    recipe: a resolved recipe (see `config.load_recipe`).
    workdir: the run directory.
    restart: discard an unfinished run in `workdir` instead of resuming it.
    overwrite: replace a finished run in `workdir`.
    strict_init_check: fail when the step-0 loss is not log(n_classes).
    quiet: no progress bars or notes.
    export: write targets.npz at the end (at `export.temperature`).

  Returns:
    The run's summary (also written to `workdir/summary.json`).
  """
  from distill.train import make_objective  # noqa: PLC0415

  console = Console(quiet)
  workdir = Path(workdir)
  start = time.perf_counter()
  check_workdir(workdir)
  dataset = load_data(recipe)
  check_batch_fits(dataset, recipe["teacher"], "teacher")
  console.info(dataset.describe())
  model_name, model, num_params = _build_model(recipe, "teacher", dataset)
  console.info(f"teacher: {model_name}, {num_params:,} parameters")
  settings = recipe["teacher"]
  prepare_workdir(workdir, restart=restart, overwrite=overwrite)
  write_json(workdir / RECIPE_FILE, recipe)
  result, test, summary = _fit_and_evaluate(
      "teacher", recipe, dataset, model_name, model, num_params, workdir, start,
      targets=None, objective=make_objective("hard", label_smoothing=settings["label_smoothing"]),
      augment_settings=recipe["augment"], strict_init_check=strict_init_check, console=console)
  if export:
    export_targets(workdir, result=result, dataset=dataset, test_logits=test["logits"],
                   quiet=quiet, console=console)
  write_json(workdir / SUMMARY_FILE, summary)
  console.info(f"teacher test accuracy {summary['test_accuracy']:.4f} "
               f"(val {summary['val_accuracy']:.4f}) in {summary['train_seconds']:.0f}s -> {workdir}")
  return summary


def _restore_trained(run_dir: Path, recipe: dict[str, Any], role: str, dataset):
  """Rebuilds a finished run's model and loads its final parameters."""
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from distill.checkpoint import Checkpointer  # noqa: PLC0415
  from distill.train import TrainResult, make_optimizer, make_predict, pixel_stats  # noqa: PLC0415

  _, model, _ = _build_model(recipe, role, dataset)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = make_optimizer(recipe[role], recipe[role]["steps"])
  like = {"params": params, "opt_state": optimizer.init(params), "step": jnp.asarray(0, jnp.int32)}
  checkpointer = Checkpointer(run_dir)
  step = checkpointer.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {run_dir}/checkpoints; was the run trained there?")
  if step != recipe[role]["steps"]:
    raise UserError(f"the run in {run_dir} stopped at step {step} of {recipe[role]['steps']}; "
                    "finish it first by re-running its command")
  state, _ = checkpointer.restore(step, like)
  checkpointer.close()
  stats = pixel_stats(dataset.x_train)
  predict = make_predict(graphdef, rest, tuple(jnp.asarray(s, jnp.float32) for s in stats))
  return TrainResult(graphdef=graphdef, rest=rest, params=state["params"], stats=stats,
                     predict=predict, init_loss=float("nan"),
                     init_loss_expected=float("nan"), final_train_loss=float("nan"), steps=step,
                     train_seconds=0.0, compile_seconds=0.0, images_per_second=0.0,
                     resumed_from=None), step


def export_targets(teacher_dir: Path, *, temperature: float | None = None, result=None,
                   dataset=None, test_logits: np.ndarray | None = None, quiet: bool = False,
                   console: Console | None = None) -> Path:
  """Writes the teacher's logits and softmax probabilities for every training image.

  The images are un-augmented, in the order of the training split, so row i
  is the target for `dataset.x_train[i]`. The test logits ride along so that
  students can measure agreement with the teacher.

  Args:
    teacher_dir: a trained teacher's run directory.
    temperature: softmax temperature for the probabilities (default: the
      recipe's `export.temperature`).
    result, dataset, test_logits: the in-memory teacher, when called right
      after training; otherwise restored from `teacher_dir`.
    quiet: no notes.
    console: where to print.

  Returns:
    The path of the written targets.npz.
  """
  from distill import losses  # noqa: PLC0415
  from distill.targets import save_targets  # noqa: PLC0415
  from distill.train import params_sha256, predict_in_batches  # noqa: PLC0415

  console = console or Console(quiet)
  teacher_dir = Path(teacher_dir)
  recipe = read_run_recipe(teacher_dir)
  if temperature is None:
    temperature = recipe["export"]["temperature"]
  if not temperature > 0:
    raise UserError(f"--temperature must be positive, got {temperature}")
  if dataset is None:
    dataset = load_data(recipe)
  if result is None:
    result, step = _restore_trained(teacher_dir, recipe, "teacher", dataset)
  else:
    step = result.steps
  predict = result.predict
  batch = recipe["export"]["batch_size"]
  start = time.perf_counter()
  train_logits = predict_in_batches(predict, result.params, dataset.x_train, batch,
                                    progress=None if console.quiet else "export")
  seconds = time.perf_counter() - start
  if test_logits is None:
    test_logits = predict_in_batches(predict, result.params, dataset.x_test, batch)
  probs = np.asarray(losses.softmax(train_logits, temperature=temperature))
  meta = {
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      "train_fingerprint": dataset.split_fingerprint("train"),
      "split": {"name": "train", "val_size": recipe["data"]["val_size"],
                "split_seed": recipe["data"]["split_seed"],
                "train_limit": recipe["data"]["train_limit"]},
      "class_names": list(dataset.class_names),
      "temperature": temperature,
      "teacher": {"dir": str(teacher_dir.resolve()), "model": recipe["teacher"]["model"],
                  "checkpoint_step": step, "params_sha256": params_sha256(result.params)},
      "export_seconds": round(seconds, 3),
      "export_images_per_second": round(len(train_logits) / max(seconds, 1e-9), 1),
  }
  path = save_targets(teacher_dir, {"train_probs": probs, "train_logits": train_logits,
                                    "test_logits": test_logits}, meta)
  console.info(f"exported targets for {len(probs):,} images at T={temperature} -> {path}")
  return path


def train_student(recipe: dict[str, Any], teacher_dir: Path, workdir: Path, *,
                  restart: bool = False, overwrite: bool = False,
                  strict_init_check: bool = False, quiet: bool = False) -> dict[str, Any]:
  """Trains a student against a teacher's exported targets (or hard labels).

  `recipe['student']['loss']` picks soft-label cross-entropy ('soft', the
  distillation) or one-hot cross-entropy ('hard', the baseline to beat). The
  student refuses targets whose data fingerprint differs from the data it
  loads.

  Returns:
    The run's summary (also written to `workdir/summary.json`).
  """
  from distill import losses  # noqa: PLC0415
  from distill.targets import check_targets_match, load_targets  # noqa: PLC0415
  from distill.train import make_objective  # noqa: PLC0415

  console = Console(quiet)
  teacher_dir, workdir = Path(teacher_dir), Path(workdir)
  start = time.perf_counter()
  check_workdir(workdir)
  arrays, meta = load_targets(teacher_dir)
  dataset = load_data(recipe)
  check_targets_match(meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                      train_fingerprint=dataset.split_fingerprint("train"),
                      num_examples=len(dataset.x_train), num_classes=dataset.num_classes,
                      path=teacher_dir / "targets.npz")
  settings = recipe["student"]
  check_batch_fits(dataset, settings, "student")
  if settings["augment"] and settings["loss"] == "soft":
    console.warn("student.augment with exported targets pairs each augmented view with the "
                 "target of the un-augmented image; the student learns from mismatched pairs.")
  model_name, model, num_params = _build_model(recipe, "student", dataset)
  console.info(f"student: {model_name}, {num_params:,} parameters, loss={settings['loss']}")
  prepare_workdir(workdir, restart=restart, overwrite=overwrite)
  write_json(workdir / RECIPE_FILE, {**recipe, "teacher_dir": str(teacher_dir.resolve())})
  result, test, summary = _fit_and_evaluate(
      "student", recipe, dataset, model_name, model, num_params, workdir, start,
      targets=arrays["train_probs"],
      objective=make_objective(settings["loss"], label_smoothing=settings["label_smoothing"]),
      augment_settings=recipe["augment"] if settings["augment"] else None,
      strict_init_check=strict_init_check, console=console)
  teacher_summary_path = teacher_dir / SUMMARY_FILE
  teacher_summary = read_json(teacher_summary_path) if teacher_summary_path.exists() else {}
  summary.update({
      "loss": settings["loss"],
      "teacher_dir": str(teacher_dir.resolve()),
      "teacher_params_sha256": meta["teacher"]["params_sha256"],
      "teacher_test_accuracy": teacher_summary.get(
          "test_accuracy", float(losses.accuracy(arrays["test_logits"], dataset.y_test))),
      "agreement_with_teacher": float(losses.top1_agreement(test["logits"], arrays["test_logits"])),
      "temperature": meta["temperature"],
  })
  write_json(workdir / SUMMARY_FILE, summary)
  console.info(f"student {model_name} ({settings['loss']}) test accuracy "
               f"{summary['test_accuracy']:.4f}, teacher {summary['teacher_test_accuracy']:.4f}, "
               f"agreement {summary['agreement_with_teacher']:.4f} -> {workdir}")
  return summary


def read_run_recipe(run_dir: Path) -> dict[str, Any]:
  """A run's recipe.json, laid over today's defaults and validated.

  Recipes written before a key existed still load, with that key's default.
  """
  path = Path(run_dir) / RECIPE_FILE
  saved = read_json(path, "teacher recipe")
  saved.pop("teacher_dir", None)
  recipe = config_lib.load_recipe(None, [])
  config_lib.merge_resolved(recipe, saved, where=str(path))
  config_lib.validate(recipe)
  return recipe


def student_recipe(teacher_dir: Path, recipe_path: str | None, overrides: list[str]) -> dict[str, Any]:
  """The recipe a student starts from: the teacher's own, unless another is given.

  Starting from the teacher's resolved recipe keeps the data settings (and so
  the split the targets were made on) identical by default.
  """
  if recipe_path:
    return config_lib.load_recipe(recipe_path, overrides)
  recipe = read_run_recipe(teacher_dir)
  for text in overrides:
    key, value = config_lib.parse_override(text)
    config_lib.set_key(recipe, key, value)
  config_lib.validate(recipe)
  return recipe

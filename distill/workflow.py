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
  if data["dataset"] == "stream":
    from distill.stream import open_training_stream  # noqa: PLC0415

    return open_training_stream(data["data_dir"], val_size=data["val_size"],
                                split_seed=data["split_seed"],
                                train_limit=data["train_limit"] or None)
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
  from distill import parallel  # noqa: PLC0415
  from distill.io import is_primary_process  # noqa: PLC0415

  workdir = Path(workdir)
  finished = (workdir / SUMMARY_FILE).exists()
  if finished and not overwrite:
    raise UserError(f"{workdir} already holds a finished run; pass --overwrite to replace it, "
                    "or choose another --workdir")
  # Every process decides the same; one clears and probes, the others wait for it.
  parallel.sync("workdir checked")
  if is_primary_process():
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
  parallel.sync("workdir ready")


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
                      num_params: int, workdir: Path, start: float, *, teaching, objective,
                      augment_settings, strict_init_check: bool, console: Console):
  """Trains through `train.fit`, evaluates on validation and test, keeps the predictions.

  Returns:
    (the TrainResult, the test evaluation, the summary without role extras).
  """
  from distill.train import fit  # noqa: PLC0415

  settings = recipe[role]
  result = fit(
      model=model, images=dataset.x_train, labels=dataset.y_train, teaching=teaching,
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
      teaching=None, objective=make_objective("hard", label_smoothing=settings["label_smoothing"]),
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

  from distill import parallel  # noqa: PLC0415
  from distill.checkpoint import Checkpointer  # noqa: PLC0415
  from distill.train import TrainResult, make_optimizer, make_predict, pixel_stats  # noqa: PLC0415

  _, model, _ = _build_model(recipe, role, dataset)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = make_optimizer(recipe[role], recipe[role]["steps"])
  like = parallel.put_replicated(
      {"params": params, "opt_state": optimizer.init(params), "step": jnp.asarray(0, jnp.int32)},
      parallel.make_mesh())
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
  predict = make_predict(graphdef, rest, stats)
  return TrainResult(graphdef=graphdef, rest=rest, params=state["params"], stats=stats,
                     predict=predict, init_loss=float("nan"),
                     init_loss_expected=float("nan"), final_train_loss=float("nan"), steps=step,
                     train_seconds=0.0, compile_seconds=0.0, images_per_second=0.0,
                     resumed_from=None), step


def _check_same_data(recipe: dict[str, Any], other: dict[str, Any], what: str) -> None:
  """Refuses a teacher whose recipe trained on another data set or split."""
  keys = ("dataset", "data_dir", "val_size", "split_seed", "train_limit")
  differences = [f"data.{k} {other['data'][k]!r} vs {recipe['data'][k]!r}" for k in keys
                 if other["data"][k] != recipe["data"][k]]
  if differences:
    raise UserError(f"{what} was trained on other data: " + "; ".join(differences))


def _teacher_identity(teacher_dir: Path, recipe: dict[str, Any], step: int, params) -> dict:
  """Which teacher made a targets file: its folder, model, checkpoint step and parameter hash."""
  from distill.train import params_sha256  # noqa: PLC0415

  return {"dir": str(teacher_dir.resolve()), "model": recipe["teacher"]["model"],
          "checkpoint_step": step, "params_sha256": params_sha256(params)}


def _targets_data_meta(recipe: dict[str, Any], dataset, temperature: float,
                       **split_extra) -> dict[str, Any]:
  """The data a targets file labels (checked by students before they train) and its T."""
  return {
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      "train_fingerprint": dataset.split_fingerprint("train"),
      "split": {"name": "train", "val_size": recipe["data"]["val_size"],
                "split_seed": recipe["data"]["split_seed"],
                "train_limit": recipe["data"]["train_limit"], **split_extra},
      "class_names": list(dataset.class_names),
      "temperature": temperature,
  }


def _teacher_outputs(teacher_dir: Path, recipe: dict[str, Any], dataset, *, result,
                     test_logits: np.ndarray | None, views: int, view_seed: int,
                     view_augment: dict[str, Any], batch: int, console: Console) -> dict[str, Any]:
  """One teacher's logits on the training split (plain and, if asked, K views) and test set.

  `test_logits` are reused when the caller has them (right after training).
  Every member of an ensemble labels the same views: (view_seed, view_augment).
  """
  from distill.train import make_view_predict, predict_in_batches  # noqa: PLC0415

  if result is None:
    result, step = _restore_trained(teacher_dir, recipe, "teacher", dataset)
  else:
    step = result.steps
  bar = None if console.quiet else f"export {teacher_dir.name}"
  start = time.perf_counter()
  outputs = {"train_logits": predict_in_batches(result.predict, result.params, dataset.x_train,
                                                batch, progress=bar)}
  seconds = time.perf_counter() - start
  outputs["test_logits"] = (predict_in_batches(result.predict, result.params, dataset.x_test, batch)
                            if test_logits is None else test_logits)
  if views:
    view_predict = make_view_predict(
        result.graphdef, result.rest, result.stats,
        num_views=views, seed=view_seed, augment_settings=view_augment)
    outputs["view_logits"] = predict_in_batches(
        view_predict, result.params, dataset.x_train, batch, pass_indices=True,
        progress=None if console.quiet else f"export {views} views")
  outputs["identity"] = _teacher_identity(teacher_dir, recipe, step, result.params)
  outputs["seconds"] = seconds
  return outputs


def _mean_probabilities_as_logits(logits_list: list[np.ndarray]) -> np.ndarray:
  """log of the teachers' mean probability: softmax of it is the ensemble's prediction."""
  from distill import losses  # noqa: PLC0415

  probs = np.mean([np.asarray(losses.softmax(logits)) for logits in logits_list], axis=0)
  return np.log(np.maximum(probs, np.finfo(np.float32).tiny)).astype(np.float32)


def export_targets(teacher_dirs: Path | list[Path], *, out_dir: Path | None = None,
                   temperature: float | None = None, views: int | None = None, result=None,
                   dataset=None, test_logits: np.ndarray | None = None, quiet: bool = False,
                   console: Console | None = None) -> Path:
  """Writes a teacher's (or an ensemble's) logits and probabilities for every training image.

  The images are un-augmented, in the order of the training split, so row i
  is the target for `dataset.x_train[i]`. With `views=K`, the logits of K
  augmented views per image are stored too; view v of image i is a pure
  function of (the teacher's seed, i, v), so a student taught with
  `teaching=views` replays exactly those views. Several teachers make an
  ensemble: their probabilities are averaged (and their identities kept).
  The test logits ride along so students can measure agreement.

  Args:
    teacher_dirs: one trained teacher's run directory, or several.
    out_dir: where targets.npz goes (default: the teacher's own directory;
      required for an ensemble).
    temperature: softmax temperature of the stored `train_probs` (default:
      the recipe's `export.temperature`). Students re-temper the stored
      logits with their own `student.temperature`.
    views: augmented views per image (default: the recipe's `export.views`).
    result, dataset, test_logits: the in-memory teacher, when called right
      after training; otherwise restored from the directory.
    quiet: no notes.
    console: where to print.

  Returns:
    The path of the written targets.npz.
  """
  from distill import losses  # noqa: PLC0415
  from distill.targets import save_targets  # noqa: PLC0415

  console = console or Console(quiet)
  teacher_dirs = [Path(d) for d in ([teacher_dirs] if isinstance(teacher_dirs, (str, Path))
                                    else teacher_dirs)]
  if not teacher_dirs:
    raise UserError("export needs at least one --teacher")
  if len(set(d.resolve() for d in teacher_dirs)) != len(teacher_dirs):
    raise UserError("the same --teacher is named twice")
  if len(teacher_dirs) > 1 and out_dir is None:
    raise UserError("an ensemble of teachers needs --out DIR for its targets")
  recipes = [read_run_recipe(d) for d in teacher_dirs]
  recipe = recipes[0]
  for other, directory in zip(recipes[1:], teacher_dirs[1:]):
    _check_same_data(recipe, other, f"teacher {directory}")
  temperature = recipe["export"]["temperature"] if temperature is None else temperature
  if not (temperature > 0 and np.isfinite(temperature)):
    raise UserError(f"--temperature must be a positive number, got {temperature}")
  views = recipe["export"]["views"] if views is None else views
  if views < 0:
    raise UserError(f"--views must be 0 (no augmented views) or more, got {views}")
  out_dir = Path(out_dir) if out_dir is not None else teacher_dirs[0]
  if out_dir != teacher_dirs[0]:
    check_workdir(out_dir)
  if dataset is None:
    dataset = load_data(recipe)
  if getattr(dataset, "streaming", False):
    if len(teacher_dirs) > 1 or views:
      raise UserError("a streamed data set exports one teacher's targets, without --views")
    return _export_streamed(teacher_dirs[0], out_dir, recipe, dataset, result=result,
                            temperature=temperature, console=console)
  batch = recipe["export"]["batch_size"]
  members = []
  for number, (directory, member_recipe) in enumerate(zip(teacher_dirs, recipes)):
    # Only the first teacher can be the one just trained in memory.
    members.append(_teacher_outputs(directory, member_recipe, dataset,
                                    result=result if number == 0 else None,
                                    test_logits=test_logits if number == 0 else None,
                                    views=views, view_seed=recipe["seed"],
                                    view_augment=recipe["augment"], batch=batch,
                                    console=console))
  if len(members) == 1:
    arrays = {k: members[0][k] for k in ("train_logits", "test_logits", "view_logits")
              if k in members[0]}
  else:
    arrays = {k: _mean_probabilities_as_logits([m[k] for m in members])
              for k in ("train_logits", "test_logits", "view_logits") if k in members[0]}
  arrays["train_probs"] = np.asarray(losses.softmax(arrays["train_logits"],
                                                    temperature=temperature))
  seconds = sum(m["seconds"] for m in members)
  meta = {
      **_targets_data_meta(recipe, dataset, temperature),
      "teacher": members[0]["identity"],
      "teachers": [m["identity"] for m in members],
      "views": ({"count": views, "seed": recipe["seed"], "augment": recipe["augment"]}
                if views else None),
      "export_seconds": round(seconds, 3),
      "export_images_per_second": round(len(dataset.x_train) * len(members) / max(seconds, 1e-9), 1),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  path = save_targets(out_dir, arrays, meta)
  if not (out_dir / RECIPE_FILE).exists():
    # Students read the data settings of their --teacher directory from here.
    write_json(out_dir / RECIPE_FILE, recipe)
  what = f"an ensemble of {len(members)} teachers" if len(members) > 1 else "the teacher"
  extra = f" and {views} augmented views each" if views else ""
  console.info(f"exported the targets of {what} for {len(dataset.x_train):,} images{extra} "
               f"at T={temperature} -> {path}")
  return path


def _export_streamed(teacher_dir: Path, out_dir: Path, recipe: dict[str, Any], dataset, *,
                     result, temperature: float, console: Console) -> Path:
  """Writes a streamed data set's targets as shards, chunk by chunk, never all in memory.

  Rows follow the train source's global order (validation rows included), so
  a student reads any example's targets by its index. The teacher's test
  logits are in its predictions.npz.
  """
  from distill import losses  # noqa: PLC0415
  from distill.io import is_primary_process  # noqa: PLC0415
  from distill.stream import Rows, write_target_shards  # noqa: PLC0415
  from distill.train import predict_in_batches  # noqa: PLC0415

  if result is None:
    result, step = _restore_trained(teacher_dir, recipe, "teacher", dataset)
  else:
    step = result.steps
  source = dataset.stream.train
  every_row = Rows(source, np.arange(source.num_examples, dtype=np.int32))
  batch = recipe["export"]["batch_size"]
  chunk_rows = max(batch, 16384 // batch * batch)

  def chunks():
    for start in range(0, len(every_row), chunk_rows):
      logits = predict_in_batches(result.predict, result.params,
                                  every_row[start:start + chunk_rows], batch)
      yield np.asarray(losses.softmax(logits, temperature=temperature)), logits

  meta = {**_targets_data_meta(recipe, dataset, temperature, rows="train source, global"),
          "teacher": _teacher_identity(teacher_dir, recipe, step, result.params)}
  start = time.perf_counter()
  if is_primary_process():
    path = write_target_shards(out_dir, chunks(), meta=meta, num_examples=source.num_examples,
                               overwrite=True)
  else:  # The forward passes are collective: every process runs them; one writes.
    for _ in chunks():
      pass
    path = out_dir / "targets-shards"
  console.info(f"exported targets for {source.num_examples:,} streamed images at "
               f"T={temperature} in {time.perf_counter() - start:.0f}s -> {path}")
  return path


class _TargetRows:
  """A streamed split's teacher logits by position, read from target shards on demand."""

  ndim = 2

  def __init__(self, shards, global_indices: np.ndarray):
    self._shards = shards
    self._global = global_indices

  def __len__(self) -> int:
    return len(self._global)

  def __getitem__(self, key) -> np.ndarray:
    return self._shards.read_logits(self._global[key])


def _streamed_targets(recipe: dict[str, Any], teacher_dir: Path, dataset):
  """A streamed data set's exported targets: (teacher logits by position, test logits, identity)."""
  from distill.stream import open_target_shards  # noqa: PLC0415
  from distill.targets import check_targets_match  # noqa: PLC0415

  source = dataset.stream.train
  shards = open_target_shards(teacher_dir, num_examples=source.num_examples,
                              num_classes=dataset.num_classes)
  check_targets_match(shards.meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                      train_fingerprint=dataset.split_fingerprint("train"),
                      num_examples=source.num_examples, num_classes=dataset.num_classes,
                      path=shards.path)
  with np.load(teacher_dir / PREDICTIONS_FILE) as predictions:
    test_logits = predictions["test_logits"]
  return _TargetRows(shards, dataset.x_train.global_indices), test_logits, shards.meta["teacher"]


def _teaching_for_student(recipe: dict[str, Any], teacher_dir: Path, dataset,
                          console: Console):
  """What the student learns from, and the teacher's test logits and identity.

  Returns:
    (train.Teaching or None for hard labels, teacher test logits [M, C],
     the teacher's identity dict).
  """
  from distill.targets import check_targets_match, load_targets  # noqa: PLC0415
  from distill.train import Teaching, params_sha256, predict_in_batches  # noqa: PLC0415

  settings = recipe["student"]
  mode = settings["teaching"]
  if mode == "online":
    if not (teacher_dir / "checkpoints").is_dir() and (teacher_dir / "targets.json").exists():
      raise UserError(f"{teacher_dir} holds exported targets but no trained teacher (an "
                      "ensemble?); online teaching runs one trained teacher. Use "
                      "--teaching targets or views with it, or name a teacher's run directory.")
    teacher_recipe = read_run_recipe(teacher_dir)
    _check_same_data(recipe, teacher_recipe, f"teacher {teacher_dir}")
    result, step = _restore_trained(teacher_dir, teacher_recipe, "teacher", dataset)
    test_logits = predict_in_batches(result.predict, result.params, dataset.x_test,
                                     recipe["export"]["batch_size"])
    identity = {"dir": str(teacher_dir.resolve()), "model": teacher_recipe["teacher"]["model"],
                "checkpoint_step": step, "params_sha256": params_sha256(result.params)}
    teaching = Teaching(mode="online", temperature=settings["temperature"],
                        teacher=(result.graphdef, result.rest, result.params),
                        mixup=settings["mixup"])
    return teaching, test_logits, identity
  if getattr(dataset, "streaming", False):
    if mode == "views":
      raise UserError("teaching=views needs the data set in memory; stream with targets or online")
    teacher_logits, test_logits, identity = _streamed_targets(recipe, teacher_dir, dataset)
    teaching = (None if settings["loss"] == "hard" else
                Teaching(mode="targets", temperature=settings["temperature"],
                         teacher_logits=teacher_logits))
    return teaching, test_logits, identity
  arrays, meta = load_targets(teacher_dir)
  check_targets_match(meta, dataset_name=dataset.name, fingerprint=dataset.fingerprint,
                      train_fingerprint=dataset.split_fingerprint("train"),
                      num_examples=len(dataset.x_train), num_classes=dataset.num_classes,
                      path=teacher_dir / "targets.npz")
  identity = meta["teacher"]
  if settings["loss"] == "hard":
    return None, arrays["test_logits"], identity
  if mode == "views":
    if "view_logits" not in arrays:
      raise UserError(f"{teacher_dir}/targets.npz holds no augmented views; export them with "
                      f"`distill export --teacher {teacher_dir} --views 8`")
    views = meta["views"]
    return Teaching(mode="views", temperature=settings["temperature"],
                    teacher_logits=arrays["view_logits"], view_seed=views["seed"],
                    view_augment=views["augment"]), arrays["test_logits"], identity
  if settings["augment"]:
    console.warn("student.augment with teaching=targets pairs each augmented view with the "
                 "target of the un-augmented image; the student learns from mismatched pairs. "
                 "Use teaching=online or teaching=views for augmented students.")
  return Teaching(mode="targets", temperature=settings["temperature"],
                  teacher_logits=arrays["train_logits"]), arrays["test_logits"], identity


def train_student(recipe: dict[str, Any], teacher_dir: Path, workdir: Path, *,
                  restart: bool = False, overwrite: bool = False,
                  strict_init_check: bool = False, quiet: bool = False) -> dict[str, Any]:
  """Trains a student against a teacher (or on hard labels, the baseline).

  `recipe['student']` picks the loss ('soft': the distillation loss with
  temperature, alpha and soft_ce|kl; 'hard': one-hot cross-entropy) and the
  teaching ('targets': exported probabilities of un-augmented images;
  'online': the frozen teacher labels the student's own augmented batch;
  'views': exported targets of K augmented views, replayed exactly). The
  student refuses a teacher whose data differs from the data it loads.

  Returns:
    The run's summary (also written to `workdir/summary.json`).
  """
  from distill import losses  # noqa: PLC0415
  from distill.train import make_objective  # noqa: PLC0415

  console = Console(quiet)
  teacher_dir, workdir = Path(teacher_dir), Path(workdir)
  start = time.perf_counter()
  check_workdir(workdir)
  settings = recipe["student"]
  dataset = load_data(recipe)
  teaching, teacher_test_logits, identity = _teaching_for_student(recipe, teacher_dir, dataset,
                                                                   console)
  check_batch_fits(dataset, settings, "student")
  model_name, model, num_params = _build_model(recipe, "student", dataset)
  how = "hard labels" if teaching is None else f"teaching={teaching.mode}"
  console.info(f"student: {model_name}, {num_params:,} parameters, loss={settings['loss']}, {how}")
  prepare_workdir(workdir, restart=restart, overwrite=overwrite)
  write_json(workdir / RECIPE_FILE, {**recipe, "teacher_dir": str(teacher_dir.resolve())})
  # Online and views teaching are augmented by construction; targets and hard
  # labels only when the recipe asks.
  augmented = settings["augment"] or (teaching is not None and teaching.mode == "online")
  objective = make_objective(settings["loss"], temperature=settings["temperature"],
                             alpha=settings["alpha"], soft_loss=settings["soft_loss"],
                             label_smoothing=settings["label_smoothing"])
  result, test, summary = _fit_and_evaluate(
      "student", recipe, dataset, model_name, model, num_params, workdir, start,
      teaching=teaching, objective=objective,
      augment_settings=recipe["augment"] if augmented else None,
      strict_init_check=strict_init_check, console=console)
  teacher_summary_path = teacher_dir / SUMMARY_FILE
  teacher_summary = read_json(teacher_summary_path) if teacher_summary_path.exists() else {}
  summary.update({
      "loss": settings["loss"],
      "teaching": "hard" if teaching is None else teaching.mode,
      "soft_loss": settings["soft_loss"],
      "temperature": settings["temperature"],
      "alpha": settings["alpha"],
      "mixup": settings["mixup"],
      "teacher_dir": str(teacher_dir.resolve()),
      "teacher_params_sha256": identity["params_sha256"],
      "teacher_test_accuracy": teacher_summary.get(
          "test_accuracy", float(losses.accuracy(teacher_test_logits, dataset.y_test))),
      "agreement_with_teacher": float(losses.top1_agreement(test["logits"], teacher_test_logits)),
  })
  write_json(workdir / SUMMARY_FILE, summary)
  console.info(f"student {model_name} ({settings['loss']}, {how}) test accuracy "
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

"""Exporting a teacher's targets: its logits on every training image, for students.

In memory, one teacher's (or an ensemble's) logits, probabilities and
optionally K augmented views go to one targets.npz; a streamed data set's go
to target shards on disk, chunk by chunk. Either way the metadata names the
data, the split and the teacher, and students check it before they train.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir
from distill.console import Console
from distill.errors import UserError
from distill.io import is_primary_process, write_json
from distill.targets import stored_view_count, write_targets


def teacher_identity(teacher_dir: Path, recipe: dict[str, Any], step: int, params) -> dict:
  """Which teacher made a set of targets: its folder, model, checkpoint step and parameter hash."""
  from distill.inference import params_sha256  # noqa: PLC0415

  return {"dir": str(Path(teacher_dir).resolve()), "model": recipe["teacher"]["model"],
          "checkpoint_step": step, "params_sha256": params_sha256(params)}


def summary_identity(teacher_dir: Path, summary: dict[str, Any]) -> dict:
  """`teacher_identity` as a finished teacher run's summary records it (no checkpoint read)."""
  return {"dir": str(Path(teacher_dir).resolve()), "model": summary.get("model"),
          "checkpoint_step": summary.get("steps"), "params_sha256": summary.get("params_sha256")}


def _targets_data_meta(recipe: dict[str, Any], dataset, temperature: float,
                       **split_extra) -> dict[str, Any]:
  """The data a targets file labels (checked by students before they train) and its T."""
  return {
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      "train_fingerprint": dataset.split_fingerprint("train"),
      "split": {"name": "train", "val_size": recipe["data"]["val_size"],
                "split_seed": recipe["data"]["split_seed"],
                "train_limit": recipe["data"]["train_limit"],
                "labelled": recipe["data"]["labelled"], **split_extra},
      "class_names": list(dataset.class_names),
      "temperature": temperature,
  }


def _teacher_outputs(teacher_dir: Path, recipe: dict[str, Any], dataset, *, trained,
                     test_logits: np.ndarray | None, views: int, view_seed: int,
                     view_augment: dict[str, Any], batch: int, console: Console) -> dict[str, Any]:
  """One teacher's logits on the training split (plain and, if asked, K views) and test set.

  A trained teacher is restored from its checkpoint (or is `trained`, in
  memory); an imported one is reopened from its source (`imported.RunnableTeacher`).
  `test_logits` are reused when the caller has them (right after training).
  Every member of an ensemble labels the same views: (view_seed, view_augment).
  """
  from distill import imported  # noqa: PLC0415
  from distill.workflow import restore_trained  # noqa: PLC0415

  from_import = imported.is_imported(teacher_dir)
  if from_import:
    # Reopened from its source: it runs where a trained teacher's model would.
    model = imported.exporting_teacher(teacher_dir, dataset)
  else:
    model, step = trained or restore_trained(teacher_dir, recipe, "teacher", dataset)
  bar = None if console.quiet else f"export {teacher_dir.name}"
  start = time.perf_counter()
  outputs = {"train_logits": model.logits(dataset.x_train, batch, progress=bar)}
  seconds = time.perf_counter() - start
  outputs["test_logits"] = (model.logits(dataset.x_test, batch)
                            if test_logits is None else test_logits)
  if views:
    outputs["view_logits"] = model.view_logits(
        dataset.x_train, batch, num_views=views, seed=view_seed, augment_settings=view_augment,
        progress=None if console.quiet else f"export {views} views")
  outputs["identity"] = (model.identity(outputs["train_logits"]) if from_import
                         else teacher_identity(teacher_dir, recipe, step, model.params))
  outputs["seconds"] = seconds
  return outputs


def _mean_probabilities_as_logits(logits_list: list[np.ndarray]) -> np.ndarray:
  """log of the teachers' mean probability: softmax of it is the ensemble's prediction."""
  from distill import losses  # noqa: PLC0415

  probs = np.mean([np.asarray(losses.softmax(logits)) for logits in logits_list], axis=0)
  return np.log(np.maximum(probs, np.finfo(np.float32).tiny)).astype(np.float32)


@rundir.releases_workdirs
def export_targets(teacher_dirs: Path | list[Path], *, out_dir: Path | None = None,
                   temperature: float | None = None, views: int | None = None, trained=None,
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
    teacher_dirs: one teacher's run directory, or several: trained by distill,
      or imported with a model that runs (a ViT, a Keras model, a function;
      views need it to run in JAX).
    out_dir: where targets.npz goes (default: the teacher's own directory;
      required for an ensemble).
    temperature: softmax temperature of the stored `train_probs` (default:
      the recipe's `export.temperature`). Students re-temper the stored
      logits with their own `student.temperature`.
    views: augmented views per image (default: the recipe's `export.views`).
    trained, dataset, test_logits: the in-memory teacher (its TrainedModel
      and step), when called right after training; otherwise restored from
      the directory.
    quiet: no notes.
    console: where to print.

  Returns:
    The path of the written targets.npz.
  """
  from distill import imported  # noqa: PLC0415
  from distill.workflow import load_data  # noqa: PLC0415

  console = console or Console(quiet)
  teacher_dirs, recipes = _checked_teachers(teacher_dirs, out_dir, restored=trained is None)
  recipe = recipes[0]
  temperature, views = _checked_export_settings(recipe, temperature, views)
  for teacher_dir in teacher_dirs:
    if imported.is_imported(teacher_dir):
      imported.check_exportable(teacher_dir, views)
  out_dir = Path(out_dir) if out_dir is not None else teacher_dirs[0]
  if out_dir != teacher_dirs[0]:
    rundir.check_workdir(out_dir)
  if is_primary_process():  # held already where the teacher's training exports
    out_dir.mkdir(parents=True, exist_ok=True)
    # A teacher retrained there meanwhile would be left with these targets.
    rundir.claim_workdir(out_dir, flag="--out")
  if dataset is None:
    dataset = load_data(recipe)
  if getattr(dataset, "streaming", False):
    if len(teacher_dirs) > 1 or views:
      raise UserError("a streamed data set exports one teacher's targets, without --views")
    return _export_streamed(teacher_dirs[0], out_dir, recipe, dataset, trained=trained,
                            temperature=temperature, console=console)
  members = _member_outputs(teacher_dirs, recipes, dataset, trained=trained,
                            test_logits=test_logits, views=views, console=console)
  arrays, meta = _targets_arrays_and_meta(members, recipe, dataset, temperature=temperature,
                                          views=views)
  out_dir.mkdir(parents=True, exist_ok=True)
  # Read before they are replaced: students taught with views lose them without a word.
  views_replaced = 0 if views else stored_view_count(out_dir)
  path = write_targets(out_dir, meta, arrays=arrays)
  if not (out_dir / rundir.RECIPE_FILE).exists():
    # Students read the data settings of their --teacher directory from here.
    write_json(out_dir / rundir.RECIPE_FILE, recipe)
  what = f"an ensemble of {len(members)} teachers" if len(members) > 1 else "the teacher"
  if len(members) > 1:  # no run of its own shows an ensemble's accuracy: say it here
    what += f" ({_ensemble_accuracies(arrays, members, dataset)})"
  extra = f" and {views} augmented view{'s' if views > 1 else ''} each" if views else ""
  console.info(f"exported the targets of {what} for {len(dataset.x_train):,} images{extra} "
               f"at T={temperature} -> {path}")
  if views_replaced:
    again = (f"export again with --views {views_replaced} to have them back" if trained is None
             else f"export them again with `distill export --teacher {out_dir} --views "
             f"{views_replaced}`")
    console.info(f"note: the targets replaced in {out_dir} held {views_replaced} augmented views "
                 f"per image and these hold none, which students taught with --teaching views "
                 f"need; {again}")
  return path


def _ensemble_accuracies(arrays: dict[str, np.ndarray], members: list[dict[str, Any]],
                         dataset) -> str:
  """'test accuracy 0.8312; its teachers 0.8050, 0.8120': the ensemble's against its members',
  written as the result lines of runs write theirs."""
  from distill.metrics import accuracy  # noqa: PLC0415

  def written(logits: np.ndarray) -> str:
    return f"{float(accuracy(logits, dataset.y_test)):.4f}"

  return (f"test accuracy {written(arrays['test_logits'])}; its teachers "
          + ", ".join(written(member["test_logits"]) for member in members))


def write_teacher_targets(out_dir: Path, recipe: dict[str, Any], dataset, *,
                          train_logits: np.ndarray, test_logits: np.ndarray,
                          identity: dict[str, Any], seconds: float,
                          view_logits: np.ndarray | None = None) -> Path:
  """Writes targets.npz for logits already computed (an imported teacher's) at export.temperature.

  The same arrays and metadata `export_targets` writes for a trained teacher;
  `view_logits` [N, K, C] are K views labelled with the recipe's seed and
  augment settings (see `TrainedModel.view_logits`).
  """
  member = {"train_logits": np.asarray(train_logits, np.float32),
            "test_logits": np.asarray(test_logits, np.float32), "identity": identity,
            "seconds": seconds}
  if view_logits is not None:
    member["view_logits"] = np.asarray(view_logits, np.float32)
  arrays, meta = _targets_arrays_and_meta(
      [member], recipe, dataset, temperature=recipe["export"]["temperature"],
      views=0 if view_logits is None else view_logits.shape[1])
  return write_targets(Path(out_dir), meta, arrays=arrays)


def _checked_teachers(teacher_dirs: Path | list[Path], out_dir: Path | None, *,
                      restored: bool = True) -> tuple[list[Path], list[dict[str, Any]]]:
  """The teacher folders as a list and their recipes, once they name one data set.

  Raises UserError for no teacher, a folder that holds no teacher to run
  (when `restored`: the teachers are read back from their folders), one named
  twice, an ensemble without `out_dir`, or teachers trained on different data.
  """
  from distill.run_recipe import read_run_recipe  # noqa: PLC0415
  from distill.student_teaching import check_same_data  # noqa: PLC0415

  teacher_dirs = [Path(d) for d in ([teacher_dirs] if isinstance(teacher_dirs, (str, Path))
                                    else teacher_dirs)]
  if not teacher_dirs:
    raise UserError("export needs at least one --teacher")
  if restored:
    for teacher_dir in teacher_dirs:
      rundir.check_teacher_folder(teacher_dir, needs="model")
  if len(set(d.resolve() for d in teacher_dirs)) != len(teacher_dirs):
    raise UserError("the same --teacher is named twice")
  if len(teacher_dirs) > 1 and out_dir is None:
    raise UserError("an ensemble of teachers needs --out DIR for its targets")
  recipes = [read_run_recipe(d) for d in teacher_dirs]
  for other, directory in zip(recipes[1:], teacher_dirs[1:], strict=True):
    check_same_data(recipes[0], other, f"teacher {directory}")
  return teacher_dirs, recipes


def _checked_export_settings(recipe: dict[str, Any], temperature: float | None,
                             views: int | None) -> tuple[float, int]:
  """The temperature and view count asked for (default: the recipe's), checked."""
  temperature = recipe["export"]["temperature"] if temperature is None else temperature
  if not (temperature > 0 and np.isfinite(temperature)):
    raise UserError(f"--temperature must be a positive number, got {temperature}")
  views = recipe["export"]["views"] if views is None else views
  if views < 0:
    raise UserError(f"--views must be 0 (no augmented views) or more, got {views}")
  return temperature, views


def _member_outputs(teacher_dirs: list[Path], recipes: list[dict[str, Any]], dataset, *,
                    trained, test_logits: np.ndarray | None, views: int,
                    console: Console) -> list[dict[str, Any]]:
  """Every teacher's outputs (see `_teacher_outputs`), all labelling the first one's views."""
  recipe = recipes[0]
  batch = recipe["export"]["batch_size"]
  members = []
  for number, (directory, member_recipe) in enumerate(zip(teacher_dirs, recipes, strict=True)):
    # Only the first teacher can be the one just trained in memory.
    members.append(_teacher_outputs(directory, member_recipe, dataset,
                                    trained=trained if number == 0 else None,
                                    test_logits=test_logits if number == 0 else None,
                                    views=views, view_seed=recipe["seed"],
                                    view_augment=recipe["augment"], batch=batch,
                                    console=console))
  return members


def _targets_arrays_and_meta(members: list[dict[str, Any]], recipe: dict[str, Any], dataset, *,
                             temperature: float,
                             views: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """The arrays of targets.npz (an ensemble's as mean probabilities) and its metadata."""
  from distill import losses  # noqa: PLC0415

  if len(members) == 1:
    arrays = {k: members[0][k] for k in ("train_logits", "test_logits", "view_logits")
              if k in members[0]}
  else:
    arrays = {k: _mean_probabilities_as_logits([m[k] for m in members])
              for k in ("train_logits", "test_logits", "view_logits") if k in members[0]}
  arrays["train_probs"] = np.asarray(losses.softmax(arrays["train_logits"],
                                                    temperature=temperature))
  from distill.metrics import accuracy  # noqa: PLC0415

  seconds = sum(m["seconds"] for m in members)
  meta = {
      **_targets_data_meta(recipe, dataset, temperature),
      "teacher": members[0]["identity"],
      "teachers": [m["identity"] for m in members],
      # What compare shows for a folder of targets alone (an ensemble's has no run of its own).
      "test_accuracy": (float(accuracy(arrays["test_logits"], dataset.y_test))
                        if len(dataset.y_test) else None),
      "views": ({"count": views, "seed": recipe["seed"], "augment": recipe["augment"]}
                if views else None),
      "export_seconds": round(seconds, 3),
      "export_images_per_second": round(
          len(dataset.x_train) * len(members) / max(seconds, 1e-9), 1),
  }
  return arrays, meta


def _export_streamed(teacher_dir: Path, out_dir: Path, recipe: dict[str, Any], dataset, *,
                     trained, temperature: float, console: Console) -> Path:
  """Writes a streamed data set's targets as shards, chunk by chunk, never all in memory.

  Rows follow the train source's global order (validation rows included), so
  a student reads any example's targets by its index. The teacher's test
  logits are in its predictions.npz.
  """
  from distill import losses  # noqa: PLC0415
  from distill.data.stream import Rows  # noqa: PLC0415
  from distill.io import is_primary_process  # noqa: PLC0415
  from distill.workflow import restore_trained  # noqa: PLC0415

  model, step = trained or restore_trained(teacher_dir, recipe, "teacher", dataset)
  source = dataset.stream.train
  every_row = Rows(source, np.arange(source.num_examples, dtype=np.int32))
  batch = recipe["export"]["batch_size"]
  chunk_rows = max(batch, 16384 // batch * batch)

  def chunks():
    for start in range(0, len(every_row), chunk_rows):
      logits = model.logits(every_row[start:start + chunk_rows], batch)
      yield np.asarray(losses.softmax(logits, temperature=temperature)), logits

  meta = {**_targets_data_meta(recipe, dataset, temperature, rows="train source, global"),
          "teacher": teacher_identity(teacher_dir, recipe, step, model.params)}
  start = time.perf_counter()
  if is_primary_process():
    path = write_targets(out_dir, meta, chunks=chunks(), num_examples=source.num_examples)
  else:  # The forward passes are collective: every process runs them; one writes.
    for _ in chunks():
      pass
    path = out_dir / rundir.TARGET_SHARDS_DIR
  console.info(f"exported targets for {source.num_examples:,} streamed images at "
               f"T={temperature} in {time.perf_counter() - start:.0f}s -> {path}")
  return path



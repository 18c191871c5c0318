"""How a student is taught: the teaching strategy and the objective, each fitted to the other.

A student learns from its teacher online (the frozen teacher runs inside the
student's step), from replayed augmented views, from exported targets, or
from hard labels alone (the baseline, compared with the teacher beside it).
`student_objective` assembles that for `workflow.train_student`: the
objective, the strategy that hands the teacher over in the form the objective
reads, the teacher's test logits and identity, and a hint's geometry. The
jitted strategies and objectives themselves live in `distill.teaching`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from distill import config as config_lib
from distill import rundir
from distill.console import Console
from distill.errors import UserError
from distill.export import summary_identity, teacher_identity
from distill.io import read_json
from distill.run_recipe import read_run_recipe
from distill.rundir import PREDICTIONS_FILE, SUMMARY_FILE, TARGETS_META_FILE


def check_same_data(recipe: dict[str, Any], other: dict[str, Any], what: str, *,
                    same_contents: bool = False) -> None:
  """Refuses a teacher whose recipe trained on another data set or split.

  `same_contents`: the data's fingerprints match, so a data_dir that differs
  is the same data moved or copied (an npz file, a shard folder), not other data.
  """
  keys = ("dataset", *(() if same_contents else ("data_dir",)), *config_lib.SPLIT_KEYS)
  differences = config_lib.data_differences(other["data"], recipe["data"], keys)
  if differences:
    raise UserError(f"{what} was trained on other data: " + "; ".join(differences))


def _online_teacher(recipe: dict[str, Any], teacher_dir: Path, dataset, *, form: str,
                    feature_layer: int | None):
  """The teacher that runs inside the student's step, and its test logits and identity."""
  from distill import imported  # noqa: PLC0415
  from distill import teaching as teaching_lib  # noqa: PLC0415
  from distill.targets import open_targets  # noqa: PLC0415
  from distill.workflow import restore_trained  # noqa: PLC0415

  settings = config_lib.DistillSettings.of(recipe)
  if imported.is_imported(teacher_dir):
    strategy = imported.online_teacher(teacher_dir, dataset, temperature=settings.temperature,
                                       mixup=settings.mixup, form=form,
                                       feature_layer=feature_layer)
    targets = open_targets(teacher_dir, dataset, recipe["data"])
    return strategy, targets.test_logits, targets.identity
  rundir.check_teacher_folder(teacher_dir, needs="model")
  teacher_recipe = read_run_recipe(teacher_dir)
  teacher_summary = read_json(teacher_dir / SUMMARY_FILE, "teacher summary")
  check_same_data(recipe, teacher_recipe, f"teacher {teacher_dir}",
                  same_contents=teacher_summary.get("dataset_fingerprint") == dataset.fingerprint)
  model, step = restore_trained(teacher_dir, teacher_recipe, "teacher", dataset)
  test_logits = model.logits(dataset.x_test, recipe["export"]["batch_size"])
  identity = teacher_identity(teacher_dir, teacher_recipe, step, model.params)
  strategy = teaching_lib.OnlineTeacher(
      apply=teaching_lib.nnx_apply(model.graphdef, model.rest,
                                   with_features=feature_layer is not None),
      params=model.params, temperature=settings.temperature, mixup=settings.mixup, form=form,
      feature_layer=feature_layer)
  return strategy, test_logits, identity


def _teaching_for_student(recipe: dict[str, Any], teacher_dir: Path, dataset, console: Console,
                          objective):
  """The strategy the student learns by, and the teacher's test logits and identity.

  The strategy hands the teacher over in the form `objective` reads
  (probabilities or logits, and an inner layer for hints).

  Returns:
    (a `teaching` strategy; None for hard labels, the teacher's test logits
     [M, C], the teacher's identity dict).
  """
  from distill import teaching as teaching_lib  # noqa: PLC0415
  from distill.targets import open_targets  # noqa: PLC0415

  settings = config_lib.DistillSettings.of(recipe)
  mode, temperature, form = settings.teaching, settings.temperature, objective.teacher_form
  if mode == "online":
    strategy, test_logits, identity = _online_teacher(recipe, teacher_dir, dataset, form=form,
                                                      feature_layer=objective.teacher_layer)
    # Hints run the teacher for its inner layer, not for consistent teaching:
    # they augment only when student.augment asks, like exported targets, so a
    # hint run and KD on targets see the same images and differ by the hint.
    hints = objective.teacher_layer is not None
    return (dataclasses.replace(strategy, always_augments=not hints), test_logits, identity)
  if mode == "views" and getattr(dataset, "streaming", False):
    raise UserError("teaching=views needs the data set in memory; stream with targets or online")
  if settings.loss == "hard":
    return None, *_teacher_beside_hard_labels(teacher_dir, dataset, recipe)
  targets = open_targets(teacher_dir, dataset, recipe["data"])
  if mode == "views":
    if targets.view_logits is None:
      raise no_views(teacher_dir)
    views = targets.meta["views"]
    strategy = teaching_lib.ReplayedViews(view_logits=targets.view_logits,
                                          view_seed=views["seed"], view_augment=views["augment"],
                                          temperature=temperature, form=form)
    return strategy, targets.test_logits, targets.identity
  if settings.augment:
    console.warn("student.augment with teaching=targets pairs each augmented view with the "
                 "target of the un-augmented image; the student learns from mismatched pairs. "
                 "Use teaching=online or teaching=views for augmented students.")
  strategy = teaching_lib.ExportedTargets(teacher_logits=targets.rows_for(dataset),
                                          temperature=temperature, form=form)
  return strategy, targets.test_logits, targets.identity


def no_views(teacher_dir: Path) -> UserError:
  """The refusal of views teaching by a teacher whose targets hold no augmented views."""
  return UserError(f"{teacher_dir}/targets.npz holds no augmented views; export them with "
                   f"`distill export --teacher {teacher_dir} --views 8`")


def check_has_views(teacher_dir: Path) -> None:
  """Refuses views teaching by `teacher_dir` before anything trains: its targets.json (read
  without the targets themselves) must record augmented views."""
  meta = Path(teacher_dir) / TARGETS_META_FILE
  try:
    views = json.loads(meta.read_text()).get("views")
  except (OSError, ValueError, AttributeError):
    return  # the student that loads the targets names what is wrong with them
  if not views:
    raise no_views(teacher_dir)


def check_sweep_teaching(teacher_dir: Path, modes: set[str]) -> None:
  """Refuses, before a sweep trains its first run, a --mode its teacher cannot teach: online by
  an imported teacher that does not run inside the student's step, views by a teacher of
  streamed data (views need the data set in memory) or without exported views."""
  teacher_dir = Path(teacher_dir)
  record = teacher_dir / rundir.IMPORTED_FILE
  if "online" in modes and record.is_file():
    try:
      imported = json.loads(record.read_text())
    except (OSError, ValueError):
      imported = {}  # the run that opens it names what is wrong with it
    if isinstance(imported, dict) and imported.get("can_teach_online") is False:
      raise UserError(f"--mode online: {teacher_dir} is an imported {imported.get('kind')} "
                      "teacher, which teaches by targets only (it does not run inside the "
                      "student's step); sweep --mode targets instead")
  if "views" in modes:
    recipe = rundir.saved_recipe(teacher_dir) or {}
    if (recipe.get("data") or {}).get("dataset") == "stream":
      raise UserError(f"--mode views: {teacher_dir} learned from streamed data, and views need "
                      "the data set in memory; sweep --mode targets or online instead")
    check_has_views(teacher_dir)


def _teacher_beside_hard_labels(teacher_dir: Path, dataset,
                                recipe: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
  """(test logits, identity) of the teacher a hard-label student is compared with.

  From the teacher's targets; a teacher run that exported none (`distill
  teacher --no-export`) gives them from its own predictions and summary: a
  student on labels learns nothing from targets, so it does not need them.
  """
  from distill.targets import open_targets  # noqa: PLC0415

  exported = any((teacher_dir / name).exists()
                 for name in (rundir.TARGETS_FILE, rundir.TARGET_SHARDS_DIR))
  if (exported or rundir.folder_kind(teacher_dir) != rundir.FINISHED_TEACHER
      or not (teacher_dir / PREDICTIONS_FILE).is_file()):
    targets = open_targets(teacher_dir, dataset, recipe["data"])
    return targets.test_logits, targets.identity
  summary = read_json(teacher_dir / SUMMARY_FILE, "teacher summary")
  if summary.get("dataset_fingerprint") != dataset.fingerprint:
    raise UserError(f"the teacher in {teacher_dir} was trained on other data "
                    f"({summary.get('dataset')}) than this student's ({dataset.name}): its "
                    "test predictions do not compare")
  with np.load(teacher_dir / PREDICTIONS_FILE) as predictions:
    test_logits = predictions["test_logits"]
  return test_logits, summary_identity(teacher_dir, summary)


def _hint_geometry(model, teaching, objective, image_shape) -> dict[str, Any]:
  """Where a hint joins student and teacher: how they meet and the projection's widths."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from distill.teaching import hint_match  # noqa: PLC0415

  images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  student = jax.eval_shape(lambda x: objective.forward(model, x)["features"], images)
  _, teacher_features = jax.eval_shape(teaching.apply, teaching.params, images)
  teacher = teacher_features[teaching.feature_layer]
  match = hint_match(student.shape, teacher.shape)
  return {"hint_match": match, "hint_widths": (int(student.shape[-1]), int(teacher.shape[-1]))}


def student_objective(recipe: dict[str, Any], teacher_dir: Path, dataset, model,
                      console: Console):
  """The student's objective and teaching strategy, each fitted to the other.

  Returns:
    (objective, strategy or None, the teacher's test logits, its identity).
  """
  from distill.teaching import make_objective  # noqa: PLC0415

  settings = config_lib.DistillSettings.of(recipe)
  objective = make_objective(settings.objective_name, **settings.objective_settings())
  teaching, test_logits, identity = _teaching_for_student(recipe, teacher_dir, dataset, console,
                                                          objective)
  if objective.init_aux is not None:
    geometry = _hint_geometry(model, teaching, objective, dataset.image_shape)
    objective = make_objective(settings.objective_name, **settings.objective_settings(),
                               **geometry)
  return objective, teaching, test_logits, identity

"""The distillation workflow: train a teacher, export its targets, train students.

Each public function here is what one CLI command calls, and each works the
same from Python. What a run directory holds is described in `distill.rundir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill import backend, rundir
from distill import config as config_lib
from distill.console import Console
from distill.errors import UserError
from distill.export import export_targets
from distill.io import read_json, write_json, write_npz
from distill.launcher import huge_pages_in_use
from distill.run_recipe import default_student_workdir
from distill.rundir import PREDICTIONS_FILE, RECIPE_FILE, SUMMARY_FILE
from distill.student_teaching import student_objective


def load_data(recipe: dict[str, Any]):
  """Loads the recipe's dataset with its validation split."""
  from distill.data import load_dataset  # noqa: PLC0415

  data = recipe["data"]
  if data["dataset"] == "stream":
    from distill.data.stream import open_training_stream  # noqa: PLC0415

    if data["labelled"]:
      raise UserError("data.labelled needs a data set in memory; a streamed one keeps every "
                      "label (set data.labelled=0)")
    return open_training_stream(data["data_dir"], val_size=data["val_size"],
                                split_seed=data["split_seed"],
                                train_limit=data["train_limit"] or None)
  return load_dataset(data["dataset"], data_dir=data["data_dir"] or None,
                      val_size=data["val_size"], split_seed=data["split_seed"],
                      train_limit=data["train_limit"] or None,
                      labelled=data["labelled"] or None)


def _largest_power_of_two(limit: int) -> int:
  """The largest power of two not above `limit` (at least 1)."""
  return 1 << max(limit, 1).bit_length() - 1


def load_fitting_data(recipe: dict[str, Any], role: str, console: Console | None = None):
  """Loads the recipe's data once every size in the recipe fits it, before anything is written.

  A small data set of one's own meets defaults made for 60,000 images: a
  validation split that holds out everything, batches larger than the
  training split. Every such problem is named in ONE error, with the exact
  options that fix all of them (a teacher's also names the student's batch
  size, which its students inherit), instead of one error per attempt.
  Evaluation and export batches need no check: they shrink to the split.
  """
  from distill.data.datasets import SplitLeavesNoTraining  # noqa: PLC0415

  data = recipe["data"]
  where = data["dataset"] + (f" ({data['data_dir']})" if data["data_dir"] else "")
  problems, fixes = [], []
  try:
    dataset = load_data(recipe)
    train, val = len(dataset.x_train), len(dataset.x_val)
  except SplitLeavesNoTraining as e:
    dataset, total = None, e.num_train
    val = max(1, total // 10)
    problems.append(f"data.val_size {data['val_size']} holds out {e.count:,} of the {total:,} "
                    f"training images of {where}, leaving none to train on")
    fixes.append(f"--set data.val_size={val}")
    train = total - val
    if data["train_limit"]:
      train = min(train, data["train_limit"])
  if dataset is not None and val == 0:
    val = max(1, train // 10)
    problems.append(f"data.val_size {data['val_size']} leaves no validation images of {where}")
    fixes.append(f"--set data.val_size={val}")
    train -= val
  if train < 1:
    raise UserError(f"{where} has too few training images to hold out a validation split; "
                    "give it at least 2")
  roles = [role, "student"] if role == "teacher" else [role]
  notes = []
  for each in roles:
    batch_size = recipe[each]["batch_size"]
    rows = train
    learns_from_labels = each == "teacher" or recipe["student"]["loss"] == "hard"
    if dataset is not None and dataset.partly_labelled and learns_from_labels:
      rows = dataset.labelled_count  # it trains on the labelled images alone
    if batch_size > rows:
      fitting = _largest_power_of_two(rows)
      text = (f"{each}.batch_size {batch_size} is larger than the {rows:,} "
              + ("labelled " if rows < train else "") + "training images"
              + (" left" if fixes and fixes[0].startswith("--set data.") else ""))
      fix = (f"--batch-size {fitting}" if each == role
             else f"--set {each}.batch_size={fitting}")
      # The student's batch size only matters once a student trains (it inherits the
      # teacher's recipe): it joins a teacher's error but alone is only a note.
      (problems if each == role else notes).append(text)
      fixes.append(fix)
  if problems:
    raise UserError("; ".join(problems + notes) + ": pass " + " ".join(fixes))
  if notes and console is not None:
    console.warn(f"{notes[0]}: students of this teacher will need {fixes[-1]} (or pass it "
                 "now, and they inherit it)")
  return dataset


@dataclasses.dataclass(frozen=True)
class RecordedInputs:
  """What a finished run's model takes in, as its summary records it: enough to rebuild it.

  Stands in for the data set where a run's model is restored to classify
  images (`distill predict RUN`), so a run folder copied elsewhere predicts
  without the data it trained on.
  """

  name: str
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  stats: tuple[list[float], list[float]]  # per-channel pixel mean and std (0..1 scale)

  @property
  def num_classes(self) -> int:
    """How many classes the model tells apart."""
    return len(self.class_names)

  @classmethod
  def of(cls, summary: dict[str, Any]) -> RecordedInputs | None:
    """The inputs a run's summary records; None for runs from before summaries held them."""
    inputs = summary.get("inputs")
    if not isinstance(inputs, dict):
      return None
    return cls(name=summary.get("dataset", ""), image_shape=tuple(inputs["image_shape"]),
               class_names=tuple(inputs["class_names"]),
               stats=(list(inputs["pixel_mean"]), list(inputs["pixel_std"])))

  @classmethod
  def record(cls, dataset, stats) -> dict[str, Any]:
    """A summary's `inputs` entry for a model trained on `dataset` with pixel `stats`."""
    mean, std = stats
    return {"image_shape": [int(x) for x in dataset.image_shape],
            "class_names": [str(name) for name in dataset.class_names],
            "pixel_mean": [float(x) for x in mean], "pixel_std": [float(x) for x in std]}


def _input_stats(dataset) -> tuple[list[float], list[float]]:
  """The pixel statistics a model of `dataset` normalises by: recorded, or of its train split."""
  from distill.feeders import pixel_stats  # noqa: PLC0415

  return dataset.stats if isinstance(dataset, RecordedInputs) else pixel_stats(dataset.x_train)


def _say_augmentation(settings: dict[str, Any], dataset: Any, console: Console) -> None:
  """Prints what augmentation the run trains with, and a note where it fits the images badly."""
  from distill.augment import describe  # noqa: PLC0415

  line, *notes = describe(settings, dataset.image_shape)
  console.info(line)
  for note in notes:
    console.info(note)


def _check_student_fits(recipe: dict[str, Any], dataset, console: Console) -> None:
  """Warns, as a teacher starts, when the student its recipe names cannot take the images (too
  small for its pools): students start from the teacher's recipe, and would be refused only
  when `distill student` runs, after the teacher. Built abstractly (`nnx.eval_shape`: shapes,
  no parameters), so the check costs milliseconds."""
  from flax import nnx  # noqa: PLC0415

  from distill.models import create_model  # noqa: PLC0415

  settings = config_lib.TrainSettings.of(recipe, "student")
  try:
    nnx.eval_shape(lambda: create_model(
        settings.model, num_classes=dataset.num_classes, image_shape=dataset.image_shape,
        seed=recipe["seed"], compute_dtype=settings.compute_dtype,
        **dict(settings.model_options)))
  except UserError as e:
    console.warn(f"students of this teacher will not train with the recipe's student: the "
                 f"student (student.{settings.model}.*): {e}; or give them --model mlp")


def _build_model(recipe: dict[str, Any], role: str, dataset, *,
                 restoring: Path | None = None):
  """(model name, the model for `dataset` (or its `RecordedInputs`), its parameter count).

  `restoring`: the finished run whose model this is, rebuilt to restore its checkpoint.
  """
  from distill.models import count_params, create_model  # noqa: PLC0415

  settings = config_lib.TrainSettings.of(recipe, role)
  if role == "teacher" and recipe["teacher"]["init_from"]:
    return _imported_vit(recipe, dataset, restoring=restoring)
  options = dict(settings.model_options)
  if role == "student" and config_lib.DistillSettings.of(recipe).objective_name == "token":
    options["distill_token"] = True  # DeiT's second token and head
  try:
    model = create_model(settings.model, num_classes=dataset.num_classes,
                         image_shape=dataset.image_shape, seed=recipe["seed"],
                         compute_dtype=settings.compute_dtype, **options)
  except UserError as e:  # say which of the recipe's models, and where its settings are
    raise UserError(f"the {role} ({role}.{settings.model}.*): {e}") from None
  return settings.model, model, count_params(model)


def _imported_vit(recipe: dict[str, Any], dataset, *, restoring: Path | None = None):
  """The timm / Hugging Face ViT named by teacher.init_from, ready to fine-tune on `dataset`.

  It is fed images standardised by the data set's pixel statistics, like any
  model here, and maps them back to pixels before its own preprocessing.
  `restoring`: the finished teacher whose model is rebuilt (a run's
  `RecordedInputs` say one is), so a missing folder is named as that run's.
  """
  from distill.importers.hf_vit import build_vit, check_init_from  # noqa: PLC0415
  from distill.models import count_params  # noqa: PLC0415

  source = recipe["teacher"]["init_from"]
  if not Path(source).exists():
    # A fine-tuned teacher's model is rebuilt from that folder before its checkpoint loads.
    # Only a finished run is restored from its recorded inputs: then the user named the run.
    if restoring or isinstance(dataset, RecordedInputs):
      run = restoring or "this teacher"
      raise UserError(f"{run} was fine-tuned from {source} (teacher.init_from in its "
                      "recipe.json), which is gone: put that ViT folder back there to restore "
                      "the teacher")
    raise UserError(f"teacher.init_from {source} not found: --init-from takes a timm or "
                    "transformers ViT folder, and a teacher fine-tuned from one (its "
                    "recipe.json names it) needs that folder back where it was")
  check_init_from(source)
  mean, std = (np.asarray(s, np.float32) for s in _input_stats(dataset))
  model, info = build_vit(source, num_classes=dataset.num_classes,
                          input_scale=255.0 * std, input_shift=255.0 * mean, seed=recipe["seed"])
  # A head kept from the checkpoint does not predict uniformly at step 0: the
  # init check cannot expect log(C) of it.
  model.pretrained_head = not info["new_head"]
  return "vit", model, count_params(model)


def _evaluate(model, images, labels: np.ndarray, batch_size: int) -> dict[str, Any]:
  from distill.metrics import summary_metrics  # noqa: PLC0415

  logits = model.logits(images, batch_size)
  return {"logits": logits, **summary_metrics(logits, labels)}


def _base_summary(role: str, model_name: str, num_params: int, dataset, recipe, model, stats,
                  val: dict[str, Any], test: dict[str, Any]) -> dict[str, Any]:
  import jax  # noqa: PLC0415

  return {
      "role": role,
      "model": model_name,
      "dataset": dataset.name,
      "dataset_fingerprint": dataset.fingerprint,
      # What the model takes in, so `distill predict RUN` needs no data set.
      "inputs": RecordedInputs.record(dataset, model.stats),
      "params": num_params,
      # How many training images had labels, when not all did (data.labelled).
      "labelled_images": getattr(dataset, "num_labelled", None),
      "steps": stats.steps,
      "batch_size": config_lib.TrainSettings.of(recipe, role).batch_size,
      "seed": recipe["seed"],
      "init_loss": stats.init_loss,
      "init_loss_expected": stats.init_loss_expected,
      "final_train_loss": stats.final_train_loss,
      "val_accuracy": val["accuracy"],
      "val_nll": val["nll"],
      "test_accuracy": test["accuracy"],
      "test_nll": test["nll"],
      "test_ece": test["ece"],
      "train_seconds": round(stats.train_seconds, 3),
      "compile_seconds": round(stats.compile_seconds, 3),
      # Stamped by `_write_summary` once the run's last step (a teacher's export) is done.
      "wall_seconds": None,
      "images_per_second": round(stats.images_per_second, 1),
      "params_sha256": model.params_sha256(),
      "recipe_hash": config_lib.recipe_hash(recipe, role),
      "resumed_from_step": stats.resumed_from,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "backend": jax.default_backend(),
      "jax_version": jax.__version__,
      "huge_pages": huge_pages_in_use(),
      "host": platform.node(),
      "cpu": backend.cpu_description(),
      "device_kind": jax.devices()[0].device_kind,
  }


def training_rows(dataset, objective, console: Console | None = None):
  """The images a run trains on, and their labels.

  Every training image, unless some have no label (`data.labelled`): then an
  objective that learns from labels alone (a teacher, a hard-label student)
  trains on the labelled images, one that learns from the teacher alone on
  all of them (their labels, -1, are read by nothing but the training
  accuracy, which skips them). A method that needs both is refused, in one
  line naming the ones that work.
  """
  if not dataset.partly_labelled or not objective.reads_labels:
    return dataset.x_train, dataset.y_train
  labelled, total = dataset.labelled_count, len(dataset.x_train)
  if objective.uses_targets:
    raise UserError(f"method {objective.name} (with these settings) reads the label of every "
                    f"image it trains on, but only {labelled:,} of the {total:,} training images "
                    "have one (data.labelled): use method kd or hint with alpha=1, which learn "
                    "from the teacher alone")
  if console is not None:
    console.info(f"training on the {labelled:,} labelled images of {total:,} (data.labelled)")
  return dataset.labelled_split()


def warmup_note(role: str, settings: config_lib.TrainSettings) -> str | None:
  """The note for a warm-up as long as the run (which then never decays), or None."""
  if settings.warmup_steps >= settings.steps > 1:  # `step.make_schedule` caps the warm-up
    return (f"note: {role}.warmup_steps {settings.warmup_steps:,} is not below its "
            f"{settings.steps:,} steps: the learning rate rises over the whole run and never "
            f"decays; for a short run pass e.g. --set {role}.warmup_steps="
            f"{max(settings.steps // 10, 1)}")
  return None


def _fit_and_evaluate(role: str, recipe: dict[str, Any], dataset, model_name: str, model,
                      num_params: int, workdir: Path, *, teaching, objective,
                      augment_settings, strict_init_check: bool, console: Console,
                      check_init: bool = True):
  """Trains through `loop.fit`, evaluates on validation and test, keeps the predictions.

  Returns:
    (the TrainedModel, the test evaluation, the summary without role extras).
  """
  from distill.loop import fit  # noqa: PLC0415

  settings = config_lib.TrainSettings.of(recipe, role)
  meta = {"role": role, "recipe_hash": config_lib.recipe_hash(recipe, role)}
  if objective.init_aux is not None:
    # The objective's own parameters (a hint's projection) are checkpointed with the
    # model's; their shapes let `restore_trained` read such a checkpoint back.
    meta["aux_shapes"] = {name: list(value.shape)
                          for name, value in objective.init_aux().items()}
  images, labels = training_rows(dataset, objective, console)
  note = warmup_note(role, settings)
  if note:
    console.info(note)
  # The final checkpoint is written while the model is evaluated.
  with contextlib.ExitStack() as final_write:
    trained, stats = fit(
        model=model, images=images, labels=labels, teaching=teaching,
        val_images=dataset.x_val, val_labels=dataset.y_val, objective=objective,
        settings=settings, augment_settings=augment_settings, workdir=workdir,
        seed=recipe["seed"], checkpoint_meta=meta, strict_init_check=strict_init_check,
        check_init=check_init, quiet=console.quiet, echo=console.info, warn=console.warn,
        # Unlabelled images count too: a restored model normalises by the whole split.
        stats_images=dataset.x_train, final_write=final_write)
    batch = settings.eval_batch_size
    val = _evaluate(trained, dataset.x_val, dataset.y_val, batch)
    test = _evaluate(trained, dataset.x_test, dataset.y_test, batch)
    write_npz(workdir / PREDICTIONS_FILE,
              {"test_logits": test["logits"], "val_logits": val["logits"]})
  summary = _base_summary(role, model_name, num_params, dataset, recipe, trained, stats, val,
                          test)
  if dataset.partly_labelled:
    # How many labels this run learned from: the rows it trained on, when its objective
    # reads their labels; none when it learned from the teacher alone.
    summary["labels_used"] = len(labels) if objective.reads_labels else 0
  return trained, test, summary


@rundir.releases_workdirs
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
  from distill.teaching import make_objective  # noqa: PLC0415

  recipe = config_lib.checked_recipe(recipe)  # a dict edited in Python is checked too
  console = Console(quiet)
  workdir = Path(workdir)
  start = time.perf_counter()
  _check_processes_agree(recipe, "teacher", workdir, restart=restart, overwrite=overwrite)
  rundir.check_run_workdir(workdir, example="teacher")
  check_existing_run(workdir, recipe, "teacher", restart=restart, overwrite=overwrite)
  check_batch_splits(recipe, "teacher", console)
  dataset = load_fitting_data(recipe, "teacher", console)
  settings = config_lib.TrainSettings.of(recipe, "teacher")
  console.info(dataset.describe())
  from distill.data.checks import majority_note  # noqa: PLC0415

  if note := majority_note(dataset.y_test, dataset.class_names):
    console.info(note)
  model_name, model, num_params = _build_model(recipe, "teacher", dataset)
  _check_student_fits(recipe, dataset, console)
  fine_tuned = ""
  if recipe["teacher"]["init_from"]:
    head = ("its own head" if model.pretrained_head
            else f"a new head for {dataset.num_classes} classes")
    fine_tuned = f", fine-tuned from {recipe['teacher']['init_from']} with {head}"
  console.info(f"teacher: {model_name}, {num_params:,} parameters{fine_tuned}")
  _say_augmentation(recipe["augment"], dataset, console)
  rundir.prepare_workdir(workdir, restart=restart, overwrite=overwrite)
  write_json(workdir / RECIPE_FILE, recipe)
  trained, test, summary = _fit_and_evaluate(
      "teacher", recipe, dataset, model_name, model, num_params, workdir,
      teaching=None, objective=make_objective("hard", label_smoothing=settings.label_smoothing),
      augment_settings=recipe["augment"], strict_init_check=strict_init_check, console=console,
      check_init=not getattr(model, "pretrained_head", False))
  if export:
    export_targets(workdir, trained=(trained, settings.steps), dataset=dataset,
                   test_logits=test["logits"], quiet=quiet, console=console)
  return _write_summary(workdir, summary, start)


def _write_summary(workdir: Path, summary: dict[str, Any], start: float) -> dict[str, Any]:
  """Stamps the run's wall time since `start` (the command's, as its result line shows it) on
  `summary` and writes it to the run directory: the run's last file. Returns the summary."""
  summary["wall_seconds"] = round(time.perf_counter() - start, 3)
  write_json(workdir / SUMMARY_FILE, summary)
  return summary


def _check_processes_agree(recipe: dict[str, Any], role: str, workdir: Path,
                           **options: Any) -> None:
  """Several processes (hosts) must run one command: the same recipe, run folder and options,
  checked before anything else, as any of them may refuse or write; nothing for one."""
  from distill import parallel  # noqa: PLC0415

  parallel.check_same_on_every_process({
      "the command": role, "the recipe": config_lib.recipe_hash(recipe, role),
      "--workdir": str(workdir.resolve()), **{f"--{key}": value for key, value in options.items()}})


def check_batch_splits(recipe: dict[str, Any], role: str, console: Console) -> None:
  """Refuses a `role` batch that does not split evenly across the devices, before any data
  loads or any file is written; on several devices, says how each batch is split."""
  import jax  # noqa: PLC0415

  from distill import parallel  # noqa: PLC0415

  batch_size, mesh = recipe[role]["batch_size"], parallel.make_mesh()
  parallel.check_divides(batch_size, mesh, f"{role}.batch_size")
  if mesh.size > 1:
    console.info(f"data-parallel on {mesh.size} {jax.devices()[0].platform} devices: each batch "
                 f"of {batch_size:,} is {batch_size // mesh.size:,} per device")


def check_existing_run(workdir: Path, recipe: dict[str, Any], role: str, *, restart: bool,
                       overwrite: bool, teacher_dir: Path | None = None) -> None:
  """Refuses a workdir's earlier run that this command may not take up, before data is loaded.

  A finished run needs `overwrite`. An unfinished one resumes only with the
  recipe it started with, whose hash its newest checkpoint holds: otherwise
  the error names the keys that differ from its recipe.json, unless `restart`
  discards the run. Refused here, the run's recipe.json is left as it was.
  A student's recipe starts from its teacher's (`teacher_dir`): changes that
  came from there are said to, since the user changed nothing of the student.
  """
  from distill.checkpoint import latest_meta  # noqa: PLC0415

  if (workdir / SUMMARY_FILE).exists() and not overwrite:
    changes = config_lib.run_recipe_changes(workdir, recipe, role)
    if changes:  # --overwrite would replace a run that is not this one: name what differs
      raise UserError(f"{workdir} holds a finished run of another recipe ({changes}); give this "
                      "one a --workdir of its own, or pass --overwrite to replace that run")
  rundir.check_not_finished(workdir, overwrite=overwrite)
  checkpoints = workdir / rundir.CHECKPOINTS_DIR
  # Orbax names a finished checkpoint by its step alone; without one there is nothing to resume.
  resumable = checkpoints.is_dir() and any(path.name.isdigit() for path in checkpoints.iterdir())
  if restart or (workdir / SUMMARY_FILE).exists() or not resumable:
    return
  shown = config_lib.run_recipe_changes(workdir, recipe, role)
  if shown is None:
    meta = latest_meta(workdir)
    if meta is None or meta.get("recipe_hash") == config_lib.recipe_hash(recipe, role):
      return
    # recipe.json is missing, or was edited since the run started: the checkpoint decides.
    shown = "which keys, its recipe.json cannot say"
  elif teacher_dir is not None and _changed_by_teacher(workdir, recipe, teacher_dir):
    shown += (f", as the teacher's recipe in {teacher_dir} now has it: was the teacher trained "
              "again since?")
  raise UserError(f"{workdir} holds an unfinished run with a different recipe ({shown}); "
                  "re-run with --restart to start over, or use another --workdir")


def _changed_by_teacher(workdir: Path, recipe: dict[str, Any], teacher_dir: Path) -> bool:
  """Whether every key a student's `recipe` changes of its unfinished run's recipe.json holds
  the value its teacher's recipe.json gives it now (the student's recipe starts from it)."""
  saved, teacher = rundir.saved_recipe(workdir), rundir.saved_recipe(teacher_dir)
  try:
    changed = config_lib.differing_keys(saved, recipe, "student")
    teachers = config_lib.differing_keys(saved, teacher, "student")
  except (KeyError, TypeError):  # a recipe.json of another layout
    return False
  return bool(changed) and all(key in teachers and teachers[key][1] == new
                               for key, (_, new) in changed.items())


def _duration(seconds: float) -> str:
  """Seconds as a person reads them: 4.2s, 3m05s, 1h02m."""
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, rest = divmod(round(seconds), 60)
  return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def result_line(summary: dict[str, Any], workdir: Path, wall_seconds: float | None = None) -> str:
  """The one line a training (or import) command ends with.

  Test accuracy (with the validation accuracy, or the teacher's and the
  agreement with it), what the run was, the training time (compilation
  excluded; a resumed run's counts the stretches before it, so it can exceed
  the wall time) and the wall time (`wall_seconds`: the whole command, when
  the caller timed it; else the summary's), and where the run is.
  """
  from distill.compare import how_taught  # noqa: PLC0415

  accuracy = f"test accuracy {summary['test_accuracy']:.4f}"
  if summary.get("role") == "student":
    head = (f"student {accuracy} (teacher {summary['teacher_test_accuracy']:.4f}, agreement "
            f"{summary['agreement_with_teacher']:.4f}; {summary.get('model')}, "
            f"{how_taught(summary)})")
  else:
    imported = "imported " if summary.get("imported_from") else ""
    head = (f"{imported}teacher {accuracy} (val {summary['val_accuracy']:.4f}; "
            f"{summary.get('model')})")
  wall = summary.get("wall_seconds") if wall_seconds is None else wall_seconds
  times = [f"{label} {_duration(value)}"
           for label, value in (("training", summary.get("train_seconds")), ("wall", wall))
           if value is not None]
  if summary.get("resumed_from_step") and summary.get("train_seconds") is not None:
    times[0] += f" (resumed from step {summary['resumed_from_step']:,})"
  return ", ".join([head, *times]) + f" -> {workdir}"


def restore_trained(run_dir: Path, recipe: dict[str, Any], role: str, dataset):
  """A finished run's model with its final parameters: (TrainedModel, its step).

  `dataset`: the data set the run trained on, or the `RecordedInputs` its summary holds.
  """
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from distill import parallel  # noqa: PLC0415
  from distill.checkpoint import Checkpointer  # noqa: PLC0415
  from distill.imported import is_imported  # noqa: PLC0415
  from distill.inference import TrainedModel  # noqa: PLC0415
  from distill.step import initial_state, make_optimizer  # noqa: PLC0415

  if is_imported(run_dir):
    raise UserError(f"{run_dir} is an imported teacher: it has no checkpoint to restore; its "
                    "targets and predictions are already in the folder")
  trained_as = _role_of(Path(run_dir))
  if trained_as not in (None, role):  # the other role's model and steps: a misleading refusal
    raise UserError(f"{run_dir} is a {trained_as} run; restore it with role={trained_as!r}")
  _, model, _ = _build_model(recipe, role, dataset, restoring=Path(run_dir))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  settings = config_lib.TrainSettings.of(recipe, role)
  optimizer = make_optimizer(settings, settings.steps)
  checkpointer = Checkpointer(run_dir)
  step = checkpointer.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {run_dir}/checkpoints; was the run trained there?")
  if step != settings.steps:
    raise UserError(f"the run in {run_dir} stopped at step {step} of {settings.steps}; "
                    "finish it first by re-running its command")
  aux_shapes = checkpointer.restore_meta(step).get("aux_shapes")
  aux = (None if aux_shapes is None
         else {name: jnp.zeros(shape, jnp.float32) for name, shape in aux_shapes.items()})
  like = initial_state(params, optimizer, parallel.make_mesh(), aux)
  state, _ = checkpointer.restore(step, like)
  checkpointer.close()
  return TrainedModel(graphdef, rest, state["params"], _input_stats(dataset)), step


def _role_of(run_dir: Path) -> str | None:
  """'teacher' or 'student': what trained in `run_dir`, finished or not (a student's
  recipe.json names its teacher); None where it cannot tell."""
  role = rundir.summary_field(run_dir, "role")
  if role is not None:
    return role
  try:
    recipe = read_json(run_dir / RECIPE_FILE, "run recipe")
  except UserError:
    return None
  return ("student" if "teacher_dir" in recipe else "teacher") if isinstance(recipe, dict) else None


@rundir.releases_workdirs
def train_student(recipe: dict[str, Any], teacher_dir: Path, workdir: Path, *,
                  restart: bool = False, overwrite: bool = False,
                  strict_init_check: bool = False, quiet: bool = False) -> dict[str, Any]:
  """Trains a student against a teacher (or on hard labels, the baseline).

  `recipe['student']` picks the loss ('soft': learn from the teacher by
  `method` — kd, dkd, dist, token or hint, see `teaching.make_objective`;
  'hard': one-hot cross-entropy) and the teaching ('targets': exported
  outputs on un-augmented images; 'online': the frozen teacher labels the
  student's own augmented batch (un-augmented for hints unless
  student.augment); 'views': exported targets of K augmented
  views, replayed exactly). The student refuses a teacher whose data differs
  from the data it loads.

  Returns:
    The run's summary (also written to `workdir/summary.json`).
  """
  from distill.metrics import accuracy, top1_agreement  # noqa: PLC0415

  recipe = config_lib.checked_recipe(recipe)  # a dict edited in Python is checked too
  console = Console(quiet)
  teacher_dir, workdir = Path(teacher_dir), Path(workdir)
  start = time.perf_counter()
  _check_processes_agree(recipe, "student", workdir, restart=restart, overwrite=overwrite,
                         teacher=str(teacher_dir.resolve()))
  rundir.check_apart_from_teacher(
      workdir, teacher_dir, flag="--workdir", why=": the student would replace its teacher",
      whose="it", instead=teacher_dir.parent / default_student_workdir(recipe).name)
  rundir.check_run_workdir(workdir, example=default_student_workdir(recipe).name)
  check_existing_run(workdir, recipe, "student", restart=restart, overwrite=overwrite,
                     teacher_dir=teacher_dir)
  check_batch_splits(recipe, "student", console)
  settings = config_lib.DistillSettings.of(recipe)
  rundir.check_teacher_folder(teacher_dir,
                              needs="model" if settings.teaching == "online" else "targets")
  dataset = load_fitting_data(recipe, "student", console)
  model_name, model, num_params = _build_model(recipe, "student", dataset)
  objective, teaching, teacher_test_logits, identity = student_objective(
      recipe, teacher_dir, dataset, model, console)
  training_rows(dataset, objective)  # a refused combination fails before anything is written
  how = "hard labels" if teaching is None else f"teaching={teaching.name}"
  console.info(f"student: {model_name}, {num_params:,} parameters, loss={settings.loss}, "
               f"method={objective.name}, {how}")
  rundir.prepare_workdir(workdir, restart=restart, overwrite=overwrite)
  write_json(workdir / RECIPE_FILE, {**recipe, "teacher_dir": str(teacher_dir.resolve())})
  # Online teaching (hints excepted) and views are augmented by construction;
  # targets, hard labels and hints only when the recipe asks.
  augmented = settings.augment or (teaching is not None and teaching.always_augments)
  if augmented:
    _say_augmentation(recipe["augment"], dataset, console)
  _, test, summary = _fit_and_evaluate(
      "student", recipe, dataset, model_name, model, num_params, workdir,
      teaching=teaching, objective=objective,
      augment_settings=recipe["augment"] if augmented else None,
      strict_init_check=strict_init_check, console=console)
  teacher_summary_path = teacher_dir / SUMMARY_FILE
  teacher_summary = read_json(teacher_summary_path) if teacher_summary_path.exists() else {}
  summary.update({
      "loss": settings.loss,
      "method": "hard" if settings.loss == "hard" else settings.method,
      "method_options": dict(settings.method_options) if settings.loss != "hard" else {},
      "teaching": "hard" if teaching is None else teaching.name,
      # None where the objective does not read the setting (hard labels read none), so
      # tables and the result line show none.
      **{key: getattr(settings, key) if key in objective.reads else None
         for key in ("soft_loss", "temperature", "alpha")},
      "mixup": settings.mixup,
      "augmented": augmented,
      "teacher_dir": str(teacher_dir.resolve()),
      "teacher_params_sha256": identity["params_sha256"],
      "teacher_test_accuracy": teacher_summary.get(
          "test_accuracy", float(accuracy(teacher_test_logits, dataset.y_test))),
      "agreement_with_teacher": float(top1_agreement(test["logits"], teacher_test_logits)),
  })
  return _write_summary(workdir, summary, start)

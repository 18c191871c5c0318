"""The recipe a run reads: a finished run's own (its recipe.json), and a student's.

A student starts from its teacher run's recipe, with the user's overrides on
top; everything that can be refused from the recipes alone (a name no recipe
takes, settings a hard-label student would ignore, hint layers that do not
exist) is refused here, before any data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill import config as config_lib
from distill import rundir
from distill.console import Console
from distill.errors import UserError
from distill.rundir import RECIPE_FILE


def read_run_recipe(run_dir: Path) -> dict[str, Any]:
  """A run's recipe.json, laid over today's defaults and validated.

  Recipes written before a key existed still load, with that key's default.
  """
  path = Path(run_dir) / RECIPE_FILE
  saved = rundir.saved_recipe(run_dir)
  if saved is None:
    raise UserError(f"run recipe not found: {path}")
  recipe = config_lib.load_recipe(None, [])
  config_lib.merge_resolved(recipe, saved, where=str(path))
  config_lib.validate(recipe)
  return recipe


def student_recipe(teacher_dir: Path, recipe_path: str | None, overrides: list[str],
                   console: Console | None = None, *,
                   shared_overrides: bool = False) -> dict[str, Any]:
  """The recipe a student starts from: the teacher's own, unless another is given.

  Starting from the teacher's resolved recipe keeps the data settings (and so
  the split the targets were made on) identical by default. `teacher.*`
  overrides are accepted (one set of flags can serve both commands) but change
  nothing: the teacher is the run in `teacher_dir`; `console` says so.
  Settings the run would not read are refused (`--loss hard -T 4`: a student
  on hard labels learns from labels alone; `--method dkd --alpha 0.5`: DKD
  weighs its terms with `student.dkd.*`), unless `shared_overrides`: a sweep
  gives one set of overrides to its runs of every method and to its hard
  runs alike.
  """
  config_lib.check_overrides(overrides)  # `--model nope` is named before a missing teacher
  rundir.check_teacher_folder(teacher_dir)
  if console is not None:
    note_teacher_overrides(overrides, teacher_dir, console)
  if recipe_path:
    recipe = config_lib.load_recipe(recipe_path, overrides)
  else:
    recipe = config_lib.resolve_overrides(read_run_recipe(teacher_dir), overrides)
  if not shared_overrides:
    _refuse_unread_settings(overrides, recipe["student"])
  _check_hint_layers(recipe, teacher_dir)
  return recipe


def note_teacher_overrides(overrides: list[str], teacher_dir: Path, console: Console) -> None:
  """Says that `teacher.*` overrides change nothing for students of the run in `teacher_dir`."""
  ignored = [text.partition("=")[0] for text in overrides if text.startswith("teacher.")]
  if ignored:
    console.info(f"note: {', '.join(ignored)} change{'s' if len(ignored) == 1 else ''} nothing "
                 f"for a student: its teacher is the run in {teacher_dir}")


# The student keys that only a student taught by its teacher reads.
_DISTILLATION_KEYS = ("teaching", "temperature", "alpha", "soft_loss", "mixup", "method",
                      *config_lib.METHODS)


# Why a method does not read a student setting, for the refusal.
_UNREAD_BECAUSE = {
    ("dkd", "alpha"): "DKD weighs its terms with student.dkd.alpha and student.dkd.beta",
    ("dist", "alpha"): "DIST weighs its terms with student.dist.beta and student.dist.gamma",
    ("token", "alpha"): "a distillation token's two heads are weighed equally",
    ("token", "temperature"): "a token of variant hard learns the teacher's top class; "
                              "student.token.variant=soft reads it",
}


def _refuse_unread_settings(overrides: list[str], student: dict[str, Any]) -> None:
  """Refuses an override of a student setting that the run would not read (`unread_setting`):
  it would change nothing, and the run would not be the one asked for."""
  for text in overrides:
    reason = unread_setting(text, student)
    if reason is not None:
      raise UserError(reason)


def student_augmented(student: dict[str, Any]) -> bool:
  """Whether a student of the resolved section `student` trains on augmented images: when it
  asks (student.augment), and by construction when taught online (hints excepted) or by
  views, which label the student's own augmented images (the recipe's view of the teaching
  strategies' `always_augments`, known before they are built)."""
  taught = student["loss"] != "hard"
  return bool(student["augment"]) or (taught and (
      student["teaching"] == "views"
      or (student["teaching"] == "online" and student["method"] != "hint")))


def unread_setting(override: str, student: dict[str, Any]) -> str | None:
  """Why a student of the resolved section `student` would not read `override` ('key=value'),
  as a refusal words it; None when it reads it (or it is no distillation setting).

  A student on hard labels reads no distillation setting; a method reads only
  its own table (`student.dkd.*`) and those of -T, --alpha and --soft-loss its
  loss takes (`teaching.reads_setting`). A student that is not augmented reads
  no `augment.*`, and no student reads the targets' `export.temperature` or
  `export.views`.
  """
  from distill.teaching import reads_setting  # noqa: PLC0415

  key, value = config_lib.parse_override(override)
  role, _, rest = key.partition(".")
  name, method = rest.split(".")[0], student["method"]
  if (key == "student.augment" and student["teaching"] in ("online", "views")
      and method != "hint" and student["loss"] != "hard"):
    return (f"{key}={value} changes nothing for teaching={student['teaching']}: it augments by "
            "construction (the teacher labels the student's own augmented images); drop it, or "
            "train with --teaching targets")
  replays_views = student["loss"] != "hard" and student["teaching"] == "views"
  if role == "augment" and replays_views:
    return (f"{key}={value} changes nothing for teaching=views: the student replays the views "
            "its teacher exported, augmented as they were then (distill export --teacher DIR "
            "--views K with other augment settings exports others); drop it")
  if role == "augment" and not student_augmented(student):
    why = ("on hard labels" if student["loss"] == "hard" else
           "taught hints online" if student["teaching"] == "online" else
           "taught by exported targets, which belong to the images as they are")
    return (f"{key}={value} changes nothing for this student: it is not augmented ({why}, "
            "with student.augment=false); drop it, or add --set student.augment=true")
  if key == "export.temperature":
    return (f"{key}={value} changes nothing for a student: it sets the temperature of the "
            "targets `distill export` writes; the student's own is -T")
  if key == "export.views":
    return (f"{key}={value} changes nothing for a student: it sets how many views `distill "
            "export` writes; export them with distill export --teacher DIR --views K")
  if role != "student" or name not in _DISTILLATION_KEYS:
    return None
  if student["loss"] == "hard":
    return (f"{key}={value} changes nothing for a student on hard labels (student.loss=hard "
            "learns from one-hot labels, not from its teacher): drop it, or train with the soft "
            "loss")
  if name in config_lib.METHODS and name != method:
    return (f"{key}={value} changes nothing for method {method}: it is a setting of method "
            f"{name}; drop it, or train with --method {name}")
  if (name in ("temperature", "alpha", "soft_loss")
      and not reads_setting(method, name, student.get(method))):
    readers = [other for other in config_lib.METHODS if reads_setting(other, name)]
    why = _UNREAD_BECAUSE.get((method, name), f"only {' and '.join(readers)} read it")
    return f"{key}={value} changes nothing for method {method} ({why}): drop it"
  return None


def student_workdir(recipe: dict[str, Any], teacher_dir: Path,
                    console: Console | None = None) -> Path:
  """Where `distill student` writes without --workdir: `default_student_workdir`, unless a
  folder an earlier distill named this run by holds it, finished or not, with this recipe and
  teacher. There the same command resumes (or keeps) it after an upgrade, as it said it would,
  instead of training it again beside it; `console` hears which folder."""
  default = default_student_workdir(recipe)
  if default.exists():
    return default
  from distill.io import read_json  # noqa: PLC0415

  teacher = str(Path(teacher_dir).resolve())
  wanted = config_lib.recipe_hash(recipe, "student")
  for earlier in _earlier_student_workdirs(recipe):
    try:  # as written, with the teacher it learns from
      saved = read_json(earlier / RECIPE_FILE, "run recipe")
      same = (saved.pop("teacher_dir", None) == teacher
              and config_lib.recipe_hash(saved, "student") == wanted)
    except (UserError, AttributeError, KeyError, TypeError):  # none, or of another layout
      continue
    if same:
      if console is not None:
        how = ("finished" if (earlier / rundir.SUMMARY_FILE).exists()
               else f"unfinished: it resumes there, not in {default}")
        console.info(f"note: {earlier} (an earlier distill's name for it) holds this run, {how}")
      return earlier
  return default


def default_student_workdir(recipe: dict[str, Any]) -> Path:
  """Where `distill student` writes without --workdir: runs/student-MODEL, then what sets it apart.

  '-hard' for hard labels; else the method unless it is kd, the method's
  named variants that are not the default (a token's 'soft', a hint's
  'cosine'), the teaching unless it is targets, the soft loss unless it is
  soft_ce, and mixup when on: runs/student-cnn, runs/student-cnn-hard,
  runs/student-vit-token-soft, runs/student-cnn-hint-online,
  runs/student-cnn-kl.
  """
  return _student_folder(recipe)


def _earlier_student_workdirs(recipe: dict[str, Any]) -> list[Path]:
  """The names earlier distills gave the run `default_student_workdir` names, newest first:
  without its soft loss and mixup (until 2026-12-05, ee2d5e4), and without its method's
  variants too (until 860e891). Only those that differ from today's."""
  names = [_student_folder(recipe, soft_loss_and_mixup=False),
           _student_folder(recipe, variants=False, soft_loss_and_mixup=False)]
  default = _student_folder(recipe)
  return [name for index, name in enumerate(names)
          if name != default and name not in names[:index]]


def _student_folder(recipe: dict[str, Any], *, variants: bool = True,
                    soft_loss_and_mixup: bool = True) -> Path:
  """`default_student_workdir`'s name, with or without the parts earlier names lacked."""
  student = recipe["student"]
  if student["loss"] == "hard":
    parts = ["hard"]
  else:
    method = student["method"]
    parts = [method] if method != "kd" else []
    if variants:
      parts += [value for value in config_lib.changed_method_options(
          method, student.get(method, {})).values() if isinstance(value, str)]
    parts += [student["teaching"]] if student["teaching"] != "targets" else []
    from distill.teaching import reads_setting  # noqa: PLC0415

    if soft_loss_and_mixup:
      if student["soft_loss"] != "soft_ce" and reads_setting(method, "soft_loss",
                                                             student.get(method)):
        parts.append(student["soft_loss"])
      parts += ["mixup"] if student["mixup"] > 0 else []
  return Path("runs") / "-".join(["student", student["model"], *parts])


def _check_hint_layers(recipe: dict[str, Any], teacher_dir: Path) -> None:
  """A hint's layers must exist in the student and in the teacher the run in `teacher_dir` trained.

  Checked from the recipes alone, so a sweep refuses before its first run.
  Other teacher folders (imported, exported targets) refuse hints themselves.
  """
  from distill.models import inner_layer_count  # noqa: PLC0415

  student = recipe["student"]
  if (student["loss"] == "hard" or student["method"] != "hint"
      or rundir.folder_kind(teacher_dir) != rundir.FINISHED_TEACHER):
    return
  teacher = read_run_recipe(teacher_dir)["teacher"]
  for role, section, key in (("student", student, "student_layer"),
                             ("teacher", teacher, "teacher_layer")):
    layer, model = student["hint"][key], section["model"]
    count = inner_layer_count(model, section.get(model, {}))
    if count is not None and not -count <= layer < count:
      layers = ("no inner layer" if count == 0 else "1 inner layer (0, or -1)" if count == 1
                else f"{count} inner layers (0 to {count - 1}, or {-count} to -1 from the last)")
      raise UserError(f"student.hint.{key}={layer} is out of range: the {model} {role} has "
                      f"{layers}")

"""Side-by-side comparison of finished runs: the table `distill compare` prints.

Its rows and columns serve the HTML report (`distill.report`) and the sweep table too."""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill import rundir
from distill.config import changed_method_options, setting_text
from distill.console import Console
from distill.errors import UserError, first_few
from distill.io import read_json

COLUMNS = (
    ("run", "run"),
    # Only when the runs used more than one data set: which (see `with_dataset_names`).
    ("dataset", "dataset"),
    ("role", "role"),
    ("model", "model"),
    ("loss", "loss"),
    # Only when the students learned from more than one teacher: whose student each is (the
    # teacher's folder, as short as tells it from the others); a hard-label baseline's is the
    # teacher its agreement was measured against.
    ("teacher", "teacher"),
    # How a student was taught: runs that differ only here must not look alike.
    ("teaching", "teaching"),
    # The method with its own settings where they are not the defaults: 'dist beta=2 gamma=2'.
    ("method", "method"),
    # Only when some student learned by KL: soft cross-entropy and KL runs must not look alike.
    ("soft_loss", "soft loss"),
    ("temperature", "T"),
    ("alpha", "alpha"),
    # Only when some student mixed its images (--mixup): runs must not look alike without it.
    ("mixup", "mixup"),
    ("params", "params"),
    # Only when some run had few labels (data.labelled): how many it learned from.
    ("labels_used", "labels"),
    # Only when two runs of one role differ in them: runs alike but for their training steps,
    # batch size or seed must not look alike (teachers and students differ in them by recipe).
    ("steps", "steps"),
    ("batch_size", "batch"),
    ("seed", "seed"),
    ("test_accuracy", "test acc"),
    ("agreement_with_teacher", "agree"),
    ("test_nll", "test NLL"),
    ("test_ece", "ECE"),
    ("train_seconds", "train s"),
)


def expand_sweeps(run_dirs: list[Path]) -> tuple[list[Path], list[tuple[Path, dict[str, Any]]]]:
  """Replaces each sweep folder by its teacher and run folders; returns them and the sweeps.

  The runs are found by name inside the sweep folder (not by the paths
  sweep.json recorded, which may be relative to another working directory);
  a folder listed twice is reported once, named as it was given (runs/teacher
  given beside a sweep of it), and a sweep's teacher given only through a
  relative sweep folder relative to the working directory when it is under it.
  """
  from distill.sweep import SWEEP_JSON  # noqa: PLC0415

  expanded: list[Path] = []
  given: dict[str, Path] = {}
  sweeps = []
  for run_dir in map(Path, run_dirs):
    if not (run_dir / SWEEP_JSON).is_file():
      expanded.append(run_dir)
      given.setdefault(str(run_dir.resolve()), run_dir)
      continue
    saved = read_json(run_dir / SWEEP_JSON, "sweep summary")
    sweeps.append((run_dir, saved))
    teacher = Path(saved.get("settings", {}).get("teacher_dir", ""))
    # An ensemble's folder of targets has no summary, but a record of its test accuracy.
    if (teacher / rundir.SUMMARY_FILE).is_file() or (
        rundir.folder_kind(teacher) == rundir.TARGETS_ONLY
        and _targets_row(teacher, _ensemble_record(teacher))):
      expanded.append(teacher if run_dir.is_absolute() else _under_cwd(teacher))
    expanded += [run_dir / run["name"] for run in saved.get("runs", [])]
  unique: dict[str, Path] = {}
  for run_dir in expanded:
    key = str(run_dir.resolve())
    unique.setdefault(key, given.get(key, run_dir))
  return list(unique.values()), sweeps


def _under_cwd(path: Path) -> Path:
  """`path` relative to the working directory when it lies under it (sweep.json records its
  teacher's absolute path, which a user who typed runs/sweep never did), else as it is."""
  try:
    return path.resolve().relative_to(Path.cwd().resolve())
  except ValueError:
    return path


def collect_runs(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
  """Reads summary.json from each finished run; returns (rows, notes on the folders skipped).

  A folder that holds no finished run is skipped with a note saying what it is
  (a glob like runs/* also meets reports and exported models); when nothing
  is left the notes become one error.
  """
  rows, skipped = [], []
  for run_dir in map(Path, run_dirs):
    kind = rundir.folder_kind(run_dir)
    ensemble = _ensemble_record(run_dir) if kind == rundir.TARGETS_ONLY else None
    if (row := _targets_row(run_dir, ensemble)) is not None:
      rows.append(row)
      continue
    if kind not in rundir.FINISHED_RUNS:
      inside = kind == rundir.NOT_A_RUN and rundir.runs_in(run_dir)
      skipped.append(f"{run_dir} is {rundir.describe_folder(run_dir, kind)}"
                     + (f": give them, e.g. {run_dir / '*'}" if inside else "")
                     + _export_again(run_dir, ensemble))
      continue
    summary = read_json(run_dir / rundir.SUMMARY_FILE, "run summary")
    recipe = _recipe_of(run_dir)
    rows.append({"run": str(run_dir), **summary, **_data_of(recipe, summary), "recipe": recipe})
  if not rows:
    raise UserError("no finished runs: " + "; ".join(skipped) + ". Give the folders "
                    "`distill teacher` and `distill student` wrote (e.g. runs/teacher "
                    "runs/student-cnn)")
  # The runs of one data set together (in the order the folders came), and within them
  # teachers first, then students from best to worst: no ranking across data sets.
  keys = dataset_keys(rows)
  first = {key: index for index, key in reversed(list(enumerate(keys)))}
  ranked = sorted(zip(rows, keys, strict=True),
                  key=lambda pair: (first[pair[1]], pair[0].get("role") != "teacher",
                                    -pair[0].get("test_accuracy", 0.0)))
  return [row for row, _ in ranked], skipped


def _ensemble_record(folder: Path) -> dict[str, Any] | None:
  """The targets.json of an ensemble's folder of targets (`distill export --teacher A --teacher B
  --out`), read once for `_targets_row` and `_export_again`; None for one teacher's targets
  (its run is its row) and for a missing or damaged record."""
  try:
    meta = read_json(folder / rundir.TARGETS_META_FILE, "targets record")
  except UserError:
    return None
  if not isinstance(meta, dict) or not isinstance(meta.get("teachers"), list) or len(
      meta["teachers"]) < 2:
    return None
  return meta


def _targets_row(folder: Path, ensemble: dict[str, Any] | None) -> dict[str, Any] | None:
  """A teacher row for an ensemble's folder of targets, which has no run of its own: the test
  accuracy its targets.json (`ensemble`, see `_ensemble_record`) records, that its students'
  agreement is measured against. None where there is no such record, or one from before the
  accuracy was recorded."""
  if ensemble is None or ensemble.get("test_accuracy") is None:
    return None
  return {"run": str(folder), "role": "teacher",
          "model": f"ensemble of {len(ensemble['teachers'])}", "params": None,
          "test_accuracy": ensemble["test_accuracy"], "dataset": ensemble.get("dataset"),
          "dataset_fingerprint": ensemble.get("dataset_fingerprint"), "recipe": {}}


def _export_again(folder: Path, ensemble: dict[str, Any] | None) -> str:
  """For an ensemble's targets exported before targets.json recorded their test accuracy: how
  to have its teacher row (the same export again, which records it); else ''."""
  if ensemble is None or ensemble.get("test_accuracy") is not None:
    return ""
  try:
    teachers = [teacher["dir"] for teacher in ensemble["teachers"]]
  except (KeyError, TypeError):
    return ""
  flags = " ".join(f"--teacher {_under_cwd(Path(teacher))}" for teacher in teachers)
  return (f"; it was exported before an ensemble's test accuracy was recorded: export it again "
          f"to show it as its students' teacher (distill export {flags} --out {folder} "
          f"-T {ensemble.get('temperature', 1):g})")


def _recipe_of(run_dir: Path) -> dict[str, Any]:
  """The run's recipe.json as written, without a student's teacher_dir; {} where it is missing
  or damaged (which costs the columns their values, not the comparison)."""
  path = run_dir / rundir.RECIPE_FILE
  try:
    recipe = read_json(path, "run recipe") if path.is_file() else {}
  except UserError:
    recipe = {}
  if not isinstance(recipe, dict):
    return {}
  return {key: value for key, value in recipe.items() if key != "teacher_dir"}


def _data_of(recipe: dict[str, Any], summary: dict[str, Any]) -> dict[str, str]:
  """What the run's recipe adds to its summary about its data: {"data_dir": ...} when it read
  its data from a path (an npz file, a stream's folder; summary.json names such data only 'npz'
  or by the folder's name), and {"dataset": ...} for a summary too old to name its data set."""
  data = recipe.get("data")
  data = data if isinstance(data, dict) else {}
  found = {"data_dir": str(data["data_dir"])} if data.get("data_dir") else {}
  if not summary.get("dataset") and data.get("dataset"):
    found["dataset"] = str(data["dataset"])
  return found


def dataset_keys(rows: list[dict[str, Any]]) -> list[Any]:
  """What tells each row's data set from another's: its `dataset_fingerprint` (a hash of the
  data's arrays, so two different files both loaded as 'npz' differ, and one file read from
  two paths does not), else its name and data_dir; None for a row naming no data set.

  A row without a fingerprint (an older summary) takes the fingerprint of a row that names the
  same data set at the same place, so that it does not count as one more.
  """
  known = {(row.get("dataset"), row.get("data_dir")): row["dataset_fingerprint"]
           for row in rows if row.get("dataset") and row.get("dataset_fingerprint")}
  keys = []
  for row in rows:
    place = (row.get("dataset"), row.get("data_dir"))
    if row.get("dataset_fingerprint"):
      keys.append(row["dataset_fingerprint"])
    else:
      keys.append(known.get(place, place) if row.get("dataset") else None)
  return keys


def with_dataset_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`rows`, each with `dataset_name`: its data set as a person reads it, one name per data set
  (`dataset_keys`) among the rows. A registered data set keeps its name (digits), an npz file
  takes its file's stem (shapes for shapes.npz); data sets that would share a name add their
  paths' distinguishing parts, or else their fingerprints' first digits.

  Rows naming no data set are left as they are; calling it again changes nothing.
  """
  keys = dataset_keys(rows)
  first: dict[Any, dict[str, Any]] = {}
  for row, key in zip(rows, keys, strict=True):
    if key is not None:
      first.setdefault(key, row)
  by_base: dict[str, list[Any]] = {}
  for key, row in first.items():
    by_base.setdefault(_dataset_base_name(row), []).append(key)
  names = {}
  for base, same in by_base.items():
    if len(same) == 1:
      names[same[0]] = base
      continue
    places = [first[key].get("data_dir") for key in same]
    resolved = [str(Path(place).resolve()) for place in places] if all(places) else []
    if resolved and len(set(resolved)) == len(resolved):
      short = short_names(resolved)
      for key, place in zip(same, resolved, strict=True):
        names[key] = f"{base} ({short[place]})"
    else:  # one path read twice with different contents, or no path recorded
      for index, key in enumerate(same):
        mark = key[:8] if isinstance(key, str) else f"#{index + 1}"
        names[key] = f"{base} ({mark})"
  return [row if key is None else {**row, "dataset_name": names[key]}
          for row, key in zip(rows, keys, strict=True)]


def _dataset_base_name(row: dict[str, Any]) -> str:
  """A data set's own name: the summary's, or for an npz file the file's stem."""
  name = str(row.get("dataset"))
  if name == "npz" and row.get("data_dir"):
    return Path(row["data_dir"]).stem
  return name


def datasets_note(rows: list[dict[str, Any]]) -> str | None:
  """A warning when the runs used more than one data set, else None: their accuracies (a
  3-class set's 100% beside a 100-class set's 1%) measure different things."""
  names = list(dict.fromkeys(row["dataset_name"] for row in with_dataset_names(rows)
                             if row.get("dataset_name")))
  if len(names) < 2:
    return None
  return (f"these runs used {len(names)} data sets ({', '.join(names)}): their accuracies "
          "do not compare across data sets")


# Left-aligned in the text table; the others are numbers.
_TEXT_COLUMNS = ("run", "dataset", "role", "model", "loss", "teacher", "teaching", "method",
                 "soft_loss")
# A student's distillation settings: meaningless for teachers and hard-label baselines.
_TEACHING_KEYS = ("teacher", "teaching", "method", "method_options", "soft_loss", "temperature",
                  "alpha", "mixup")
# The teacher column's value without the option: the one teacher that every student shares,
# whichever it is.
_SHARED = object()
# A column's value without the option: the one every run of a role shares (its teachers' one,
# its students' another).
_SHARED_BY_ROLE = object()
# Columns shown only when some run has a value in them other than the one every run would
# have without the option (none; for the soft loss, soft cross-entropy; for the teacher, the
# teacher of the first student; for the data set, the first run's; for the steps, batch size
# and seed, the first run's of the same role).
_OPTIONAL_COLUMNS = {"labels_used": None, "mixup": None, "soft_loss": "soft_ce",
                     "teacher": _SHARED, "dataset": _SHARED, "steps": _SHARED_BY_ROLE,
                     "batch_size": _SHARED_BY_ROLE, "seed": _SHARED_BY_ROLE}


def row_value(row: dict[str, Any], key: str) -> Any:
  """What the table shows of `row` under `key` (None: nothing to show)."""
  if key == "teacher" and row.get("role") == "student":
    # A hard-label baseline's too: its agreement is measured against that teacher.
    return row.get(key)
  if key in _TEACHING_KEYS and (row.get("role") != "student" or row.get("loss") == "hard"):
    return None
  if key == "method" and row.get("method") is None and row.get("role") == "student":
    return "kd"  # summaries from before methods had names: all were kd
  if key == "mixup":
    return row.get(key) or None  # 0: off
  if key == "soft_loss":
    # Summaries from before KL was offered have no key: soft_ce. None is a method's that
    # reads no soft loss (dkd, dist, token).
    return row[key] if key in row else "soft_ce"
  if key == "dataset":  # as `with_dataset_names` names it, where it has
    return row.get("dataset_name") or row.get(key)
  if key in ("train_seconds", "steps", "batch_size", "seed") and row.get("imported_from"):
    return None  # trained elsewhere: its summary's 0 s and 0 steps are none of its training
  return row.get(key)


def _cell(key: str, value: Any) -> str:
  if value is None:
    return "-"
  if key in ("temperature", "alpha", "mixup"):
    return f"{value:g}"
  if key == "params":  # 0: a teacher imported as logits or a function before its size was None
    return f"{value:,}" if value else "-"
  if key == "labels_used":
    return f"{value:,}" if value else "none"
  if key in ("steps", "batch_size"):
    return f"{value:,}"
  if key in ("test_accuracy", "agreement_with_teacher"):
    return f"{100 * value:.2f}%"
  if key in ("test_nll", "test_ece"):
    return f"{value:.4f}"
  if key == "train_seconds":
    return seconds_cell(value)
  return str(value)


def seconds_cell(seconds: float | None) -> str:
  """A training time as the tables show it: three significant figures at every size (0.170,
  1.50, 20.0, 123), so that a column reads alike and tiny runs do not all read 0; whole seconds
  from 100 s up, where three figures would round seconds away (3618, not 3.62e+03)."""
  if seconds is None or not math.isfinite(seconds):
    return "-"
  if seconds <= 0:
    return "0"
  if seconds >= 99.95:  # what rounds to 100 at three figures reads as 100
    return f"{seconds:.0f}"
  return f"{seconds:#.3g}"  # '#' keeps the trailing zeros: 20.0, not 20


def markdown_table(header: list[str], body: list[list[str]]) -> str:
  """A Markdown table: the header row, the separator, one row per list of cells."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join(lines)


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
  """COLUMNS, less the labels column when every run had every label, the mixup column when
  no run mixed, the soft loss when every student used soft cross-entropy, the teacher when
  every student learned from (or was measured against) one, the data set when every run used
  one, and the steps, batch size and seed when the runs of each role share theirs (`rows` as
  `with_teacher_names` and `with_dataset_names` give them)."""
  return [(key, title) for key, title in COLUMNS
          if key not in _OPTIONAL_COLUMNS or option_used(rows, key)]


def option_used(rows: list[dict[str, Any]], key: str) -> bool:
  """Whether some run's value under the optional column `key` differs from the one every run
  would have without the option."""
  default = _OPTIONAL_COLUMNS[key]
  if default is _SHARED_BY_ROLE:
    roles: dict[Any, set[Any]] = {}
    for row in rows:
      if row_value(row, key) is not None:
        roles.setdefault(row.get("role"), set()).add(row_value(row, key))
    return any(len(values) > 1 for values in roles.values())
  values = [value for value in (row_value(row, key) for row in rows) if value is not None]
  if default is _SHARED:
    default = values[0] if values else None
  return any(value != default for value in values)


def with_teacher_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`rows`, each with `teacher`: the folder a student learned from (its teacher_dir; a
  hard-label baseline's, the teacher its agreement was measured against), or a teacher's own,
  named by the fewest trailing parts of its path that tell it from the others among the rows
  (runs/teacher and runs/teacher-hybrid: teacher, teacher-hybrid), so that a student's teacher
  reads as that teacher's folder does.

  Rows without either (a summary from before teacher_dir was recorded) are left as they are.
  """
  folders = [_teacher_folder(row) for row in rows]
  names = short_names(folder for folder in folders if folder)
  return [{**row, "teacher": names[folder]} if folder else row
          for row, folder in zip(rows, folders, strict=True)]


def _teacher_folder(row: dict[str, Any]) -> str | None:
  """The absolute path of the teacher a row is, or that it learned from; None if unknown."""
  if row.get("role") == "teacher":
    folder = row.get("run")
  else:
    folder = row.get("teacher_dir")
  return str(Path(folder).resolve()) if folder else None


def short_names(paths: Iterable[str]) -> dict[str, str]:
  """Each of `paths` (strings) to its fewest trailing parts that no other of them ends with:
  a/teacher and b/teacher-hybrid become teacher and teacher-hybrid, a/teacher and b/teacher
  keep their parent folders."""
  parts = {path: Path(path).parts for path in set(paths)}
  names = {}
  for path, own in parts.items():
    others = [other for key, other in parts.items() if key != path]
    count = next((count for count in range(1, len(own))
                  if all(other[-count:] != own[-count:] for other in others)), len(own))
    names[path] = str(Path(*own[-count:]))
  return names


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
  """A fixed-width (or Markdown) table of the runs."""
  rows = with_dataset_names(with_teacher_names(rows))
  columns = shown_columns(rows)
  header = [title for _, title in columns]
  body = [[_cell(key, method_text(row) if key == "method" else row_value(row, key))
           for key, _ in columns] for row in rows]
  if markdown:
    return markdown_table(header, body)
  widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:{'<' if key in _TEXT_COLUMNS else '>'}{w}}}"
                  for (key, _), w in zip(columns, widths, strict=True))
  return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                   + [fmt.format(*cells) for cells in body])


def machine_of(row: dict[str, Any]) -> str | None:
  """What a run's speed was measured on: its accelerator (kind and count), or its CPU.

  None for runs written before summaries recorded it.
  """
  if row.get("backend", "cpu") != "cpu":
    return f"{row.get('device_kind') or row['backend']} x {row.get('devices', 1)}"
  return row.get("cpu")


def machines_note(rows: list[dict[str, Any]]) -> str | None:
  """A warning when the runs' training times come from different machines, else None.

  Times of one recipe move 2x between CPU generations, so a column of
  seconds from several machines is not a comparison of the runs; nor from
  one machine's different core counts (a sweep's `--jobs` workers).
  """
  counts = collections.Counter(filter(None, map(machine_of, rows)))
  if len(counts) < 2:
    return None
  machines = "; ".join(f"{name} ({count} run{'s' if count > 1 else ''})"
                       for name, count in counts.items())
  return (f"train s comes from {len(counts)} machines or core counts, so compare times only "
          f"within one: {machines}")


# Keys the table shows (its columns, the method's label), or that change no number a run
# computes; any other recipe key two runs of one role differ in is named under the table.
_SHOWN_KEYS = ("model", "steps", "batch_size", "loss", "method", "teaching", "temperature",
               "alpha", "soft_loss", "mixup", "log_every", "eval_every", "checkpoint_every",
               "steps_per_dispatch", "eval_batch_size", "init_check_tolerance")


# Data settings the table's dataset column and the data-sets note already tell apart.
_SHOWN_DATA_KEYS = ("data.dataset", "data.data_dir")


def unshown_differences_note(rows: list[dict[str, Any]]) -> str | None:
  """A note naming the recipe settings the table does not show in which runs of one role
  differ, and which runs have which value (a hard-label twin trained with another warm-up
  reads as a fair pair otherwise)."""
  from distill.config import METHODS, differing_keys  # noqa: PLC0415

  runs_of: dict[str, list[tuple[str, dict[str, Any]]]] = {}
  keys: dict[str, str | None] = {}  # differing key: the role whose runs it is about (None: all)
  for role in ("teacher", "student"):
    # A recipe.json without the role's settings (written by hand, or by an older distill)
    # has nothing to compare.
    runs = runs_of[role] = [(row.get("run", "?"), recipe) for row in rows
                            if row.get("role") == role for recipe in [row.get("recipe") or {}]
                            if isinstance(recipe.get(role), dict) and "model" in recipe[role]]
    for _, recipe in runs[1:]:
      try:
        differing = differing_keys(runs[0][1], recipe, role)
      except (KeyError, TypeError):  # an older recipe's shape
        continue
      models = {runs[0][1][role]["model"], recipe[role]["model"]}
      for key in differing:
        setting = key.split(".")
        if setting[0] == role and (setting[1] in _SHOWN_KEYS or setting[1] in METHODS
                                   or (setting[1] in models and len(models) > 1)):
          # A column, the method's label, or the model table of one of two models (the model
          # and params columns tell them apart); one model's table that differs is named.
          continue
        if setting[0] != "seed" and key not in _SHOWN_DATA_KEYS:
          # A shared section's key (data.val_size) is named once, over the runs of both roles.
          keys.setdefault(key, role if setting[0] == role else None)
  names = short_names(str(Path(run).resolve()) for runs in runs_of.values() for run, _ in runs)
  parts = []
  for key, role in keys.items():
    by_value: dict[str, list[str]] = {}
    for run, recipe in runs_of[role] if role else [*runs_of["teacher"], *runs_of["student"]]:
      table = key.split(".")[1] if role else None  # a role's key has its section's name
      if table and isinstance(recipe[role].get(table), dict) and table not in METHODS and (
          recipe[role]["model"] != table):
        continue  # another model's table, which this run does not read
      by_value.setdefault(setting_text(_recipe_value(recipe, key)), []).append(
          names[str(Path(run).resolve())])
    parts.append(f"{key}: " + ", ".join(f"{value} ({first_few(runs, 3)})"
                                        for value, runs in by_value.items()))
  if not parts:
    return None
  return "the runs differ in settings the table does not show: " + "; ".join(parts)


def _recipe_value(recipe: dict[str, Any], key: str) -> Any:
  """The value of a dotted recipe key ('student.learning_rate'); None where it has none."""
  value: Any = recipe
  for part in key.split("."):
    value = value.get(part) if isinstance(value, dict) else None
  return value


def retrained_teachers_note(rows: list[dict[str, Any]]) -> str | None:
  """A warning naming the students whose teacher folder holds another model now (trained again
  with --overwrite after they learned): their agreement is with the teacher they learned from,
  not with the one the table shows. None where every teacher is the one its students recorded."""
  earlier: dict[str, list[str]] = {}
  for row in rows:
    folder = row.get("teacher_dir")
    if row.get("role") == "student" and folder and rundir.trained_again(
        Path(folder), row.get("teacher_params_sha256")):
      earlier.setdefault(folder, []).append(row.get("run", "?"))
  if not earlier:
    return None
  return "; ".join(f"{first_few(runs, 3)}: the teacher in {_under_cwd(Path(folder))} was "
                   "trained again after they trained, so their agreement is with the earlier "
                   "one, not the one shown (train them again to pair them with it)"
                   for folder, runs in earlier.items())


def table_notes(rows: list[dict[str, Any]]) -> list[str]:
  """The notes under the comparison table, in compare's output and the report alike."""
  return [note for note in (datasets_note(rows), machines_note(rows),
                            unshown_differences_note(rows), retrained_teachers_note(rows))
          if note]


def compare_runs(run_dirs: list[Path], *, as_json: bool = False, markdown: bool = False) -> str:
  """The comparison of `run_dirs` as text (a table, Markdown, or JSON lines)."""
  if as_json and markdown:
    raise UserError("--json and --markdown are two formats of the output: give one")
  run_dirs, sweeps = expand_sweeps(run_dirs)
  rows, skipped = collect_runs(run_dirs)
  if skipped:  # a note on stderr, as report's: stdout stays the table (or JSON) alone
    Console().info("skipped: " + "; ".join(skipped))
  if as_json:
    # `teacher` as the table names it, `teacher_dir` as the student's summary recorded it
    # (a hard-label baseline's too: the teacher its agreement was measured against).
    # `steps`, `batch_size` and `seed` whether or not the table shows them.
    # `dataset` as the run recorded it, `dataset_name` as the table names it; its fingerprint
    # and path tell data sets apart exactly.
    rows = with_dataset_names(with_teacher_names(rows))
    # `method_options` as the summary recorded them, the defaults too.
    keys = [key for key, _ in COLUMNS] + ["method_options", "dataset_name",
                                          "dataset_fingerprint", "data_dir",
                                          "teacher_dir", "teacher_test_accuracy",
                                          "val_accuracy", "images_per_second", "cpu",
                                          "device_kind"]
    return json.dumps([{**{k: row_value(row, k) for k in keys}, "dataset": row.get("dataset")}
                       for row in rows], indent=2)
  text = format_table(rows, markdown=markdown)
  for note in table_notes(rows):
    text += f"\n\n{note}"
  # A sweep's verdict closes the comparison: what teaching bought, and how surely.
  from distill.sweep_results import (  # noqa: PLC0415
    across_sweeps,
    left_out_note,
    out_of_date,
    out_of_date_note,
    sweep_name,
    verdict_sentence,
  )

  current = []
  for sweep_dir, saved in sweeps:
    if reasons := out_of_date(sweep_dir, saved):
      # A verdict on runs since gone or changed would read as today's.
      text += f"\n\n{out_of_date_note(sweep_dir, reasons)}"
    else:
      current.append((sweep_dir, saved))
      if sentence := verdict_sentence(saved.get("rows", [])):
        text += f"\n\n{sweep_name(sweep_dir, saved)}: {sentence}"
    if note := left_out_note(sweep_dir, saved):
      text += f"\n\n{note}"
  # Sweeps of two teachers or settings, side by side: paired by seed as within a sweep.
  if lines := across_sweeps(current):
    text += "\n\n" + "\n".join(lines)
  return text

def run_label(row: dict[str, Any], *, name_teacher: bool = False) -> str:
  """A run as a person tells it apart: 'student cnn (kd, targets, T=2, alpha=0.5)'.

  With `name_teacher` (several teachers among the runs), a teacher's label
  and a distilled student's name the teacher's folder as `with_teacher_names`
  does: 'teacher cnn (teacher-hybrid)', 'student cnn (kd, ..., from teacher-hybrid)'.
  """
  name = f"{row.get('role')} {row.get('model')}"
  if row.get("role") == "student":
    return f"{name} ({how_taught(row, name_teacher=name_teacher)})"
  if name_teacher and row.get("teacher"):
    return f"{name} ({row['teacher']})"
  return name


def how_taught(row: dict[str, Any], *, name_teacher: bool = False) -> str:
  """How a run learned, whatever its model: 'kd, targets, T=2, alpha=0.5', 'hard labels', or
  'teacher'; the accuracy-vs-size figure's legend names its series so, and a training command's
  result line its student. `name_teacher` as in `run_label`."""
  teacher = row.get("teacher") if name_teacher else None
  if row.get("role") != "student":
    return str(row.get("role")) + (f" ({teacher})" if teacher else "")
  if row.get("loss") == "hard":
    return "hard labels"
  # A setting the run's method does not read is None in its summary, and not shown.
  temperature = ("" if row.get("temperature") is None
                 else f", T={_cell('temperature', row['temperature'])}")
  alpha = "" if row.get("alpha") is None else f", alpha={_cell('alpha', row['alpha'])}"
  kl = ", KL" if row.get("soft_loss") == "kl" else ""
  mixup = row_value(row, "mixup")
  return (f"{method_text(row)}{kl}, {row.get('teaching')}{temperature}{alpha}"
          + (f", mixup={_cell('mixup', mixup)}" if mixup else "")
          + (f", from {teacher}" if teacher else ""))


def method_text(row: dict[str, Any]) -> str | None:
  """A student's method as the table, the report and the result line name it: with those of
  its own settings (`method_options`) that are not their defaults, 'dist beta=2 gamma=2',
  'hint kind=cosine', else 'kd', 'dist'; None where `row_value` shows no method."""
  method = row_value(row, "method")
  if method is None:
    return None
  changed = changed_method_options(method, row.get("method_options") or {})
  return " ".join([method, *(f"{key}={setting_text(value)}" for key, value in changed.items())])


def objective_label(row: dict[str, Any]) -> str:
  """What a run's logged training loss is, e.g. 'train loss (kd, T²-scaled at T=2)'."""
  if row.get("role") != "student" or row.get("loss") == "hard":
    return "train loss (cross-entropy, hard labels)"
  method = method_text(row)
  temperature, alpha = row.get("temperature") or 1.0, row.get("alpha", 1.0)
  what = method + (": KL" if row.get("soft_loss") == "kl" else "")
  if temperature != 1:
    what += f", T²-scaled at T={temperature:g}"
  if alpha is not None and alpha < 1:
    what += f", {alpha:g} teacher + {1 - alpha:g} labels"
  return f"train loss ({what})"


# Recipe keys that say when a run logs, evaluates or checkpoints, or how it hands steps to
# the device, not what it learns: runs that differ only in them are one setting.
_BOOKKEEPING = ("log_every", "eval_every", "checkpoint_every", "steps_per_dispatch",
                "eval_batch_size", "init_check_tolerance")


def with_settings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`rows` (each with `label`, as the report names its runs), each with `setting`,
  `setting_note` and `repeat`, so that a figure draws the seeds of one setting as one point.

  Runs of one label and size are one setting when their recipes (recipe.json) differ in nothing
  but the seed and what only logs, evaluates or checkpoints (`config.recipe_differences`):
  `setting` numbers a label's settings, and where a label has several, `setting_note` names
  what tells each from the others ('20,000 steps', 'dist beta=2 gamma=2'), else ''. `repeat`
  marks a run an earlier row already is: the same folder, or the same setting and seed with
  identical parameters (a run reached again through a sweep folder). A row whose recipe
  cannot be read joins its label's first setting.
  """
  rows = [dict(row) for row in rows]
  recipes = [_run_recipe(row) for row in rows]
  groups: dict[tuple[Any, Any], list[int]] = {}
  for index, row in enumerate(rows):
    groups.setdefault((row.get("label"), row.get("params")), []).append(index)
  for members in groups.values():
    firsts: list[int] = []  # each setting's first row
    for index in [i for i in members if recipes[i] is not None]:
      number = next((number for number, first in enumerate(firsts)
                     if not _setting_differences(rows[first], recipes[first], recipes[index])),
                    None)
      if number is None:
        number = len(firsts)
        firsts.append(index)
      rows[index]["setting"] = number
    keys = sorted({key for first in firsts[1:]
                   for key in _setting_differences(rows[first], recipes[firsts[0]],
                                                   recipes[first])})
    for index in members:
      setting = rows[index].setdefault("setting", 0)
      rows[index]["setting_note"] = (_setting_note(keys, recipes[firsts[setting]])
                                     if len(firsts) > 1 else "")
  seen: set[Any] = set()
  for row, recipe in zip(rows, recipes, strict=True):
    identities = {("folder", str(Path(row["run"]).resolve()) if row.get("run") else id(row))}
    seed = row.get("seed", (recipe or {}).get("seed"))
    if recipe is not None and row.get("params_sha256"):
      identities.add((row.get("label"), row.get("params"), row["setting"], seed,
                      row["params_sha256"]))
    row["repeat"] = bool(identities & seen)
    seen |= identities
  return rows


def _run_recipe(row: dict[str, Any]) -> dict[str, Any] | None:
  """A row's run recipe (recipe.json laid over today's defaults); None where the run has none
  that reads (a teacher imported as logits, a damaged file)."""
  from distill.run_recipe import read_run_recipe  # noqa: PLC0415

  try:
    return read_run_recipe(Path(row["run"])) if row.get("run") else None
  except (UserError, KeyError, TypeError, ValueError):
    return None


def _setting_differences(row: dict[str, Any], old: dict[str, Any],
                         new: dict[str, Any]) -> list[str]:
  """The recipe keys a run of `row`'s role reads that differ between two recipes, less the seed
  and `_BOOKKEEPING`."""
  from distill.config import differing_keys  # noqa: PLC0415

  role = "teacher" if row.get("role") == "teacher" else "student"
  try:
    keys = differing_keys(old, new, role)
  except (KeyError, TypeError):  # a recipe of another layout names no keys
    return []
  return [key for key in keys if key != "seed" and key.split(".")[-1] not in _BOOKKEEPING]


def _setting_note(keys: list[str], recipe: dict[str, Any]) -> str:
  """A setting's values of the recipe keys that tell it from its label's others, in few words:
  'dist beta=2 gamma=2' (one table's keys together), '20,000 steps', 'data labelled=100'."""
  parts: dict[tuple[str, str], list[str]] = {}  # (table, '') or ('', own key): its words
  for key in keys:
    *path, name = key.split(".")
    value = _recipe_value(recipe, key)
    if path[:1] in (["teacher"], ["student"]):
      path = path[1:]  # the run's own section goes without saying
    if path:  # a table's keys read together: 'dist beta=2 gamma=2'
      parts.setdefault((" ".join(path), ""), []).append(f"{name}={setting_text(value)}")
    elif name == "steps" and isinstance(value, int):
      parts[("", key)] = [f"{value:,} steps"]
    else:
      parts[("", key)] = [f"{name}={setting_text(value)}"]
  return ", ".join(" ".join([table, *words]) if table else words[0]
                   for (table, _), words in parts.items())



"""Side-by-side comparison of finished runs."""

from __future__ import annotations

import base64
import collections
import html
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir
from distill.errors import UserError
from distill.io import read_json

COLUMNS = (
    ("run", "run"),
    # Only when the runs used more than one data set: which (see `with_dataset_names`).
    ("dataset", "dataset"),
    ("role", "role"),
    ("model", "model"),
    ("loss", "loss"),
    # Only when the students learned from more than one teacher: whose student each is (the
    # teacher's folder, as short as tells it from the others).
    ("teacher", "teacher"),
    # How a student was taught: runs that differ only here must not look alike.
    ("teaching", "teaching"),
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
    ("test_accuracy", "test acc"),
    ("agreement_with_teacher", "agree"),
    ("test_nll", "test NLL"),
    ("test_ece", "ECE"),
    ("train_seconds", "train s"),
)


def collect_runs(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
  """Reads summary.json from each finished run; returns (rows, notes on the folders skipped).

  A folder that holds no finished run is skipped with a note saying what it is
  (a glob like runs/* also meets reports and exported models); when nothing
  is left the notes become one error.
  """
  rows, skipped = [], []
  for run_dir in map(Path, run_dirs):
    kind = rundir.folder_kind(run_dir)
    if kind not in rundir.FINISHED_RUNS:
      skipped.append(f"{run_dir} is {rundir.describe_folder(run_dir, kind)}")
      continue
    summary = read_json(run_dir / rundir.SUMMARY_FILE, "run summary")
    rows.append({"run": str(run_dir), **summary, **_data_dir_of(run_dir)})
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


def _data_dir_of(run_dir: Path) -> dict[str, str]:
  """{"data_dir": ...} from the run's recipe when it read its data from a path (an npz file, a
  stream's folder), else {}: summary.json names such data only 'npz' or by the folder's name."""
  path = run_dir / rundir.RECIPE_FILE
  try:
    recipe = read_json(path, "run recipe") if path.is_file() else {}
  except UserError:  # a damaged recipe costs the column its path, not the comparison
    recipe = {}
  data = recipe.get("data") if isinstance(recipe, dict) else None
  data_dir = data.get("data_dir") if isinstance(data, dict) else None
  return {"data_dir": str(data_dir)} if data_dir else {}


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
_TEACHING_KEYS = ("teacher", "teaching", "method", "soft_loss", "temperature", "alpha", "mixup")
# The teacher column's value without the option: the one teacher that every student shares,
# whichever it is.
_SHARED = object()
# Columns shown only when some run has a value in them other than the one every run would
# have without the option (none; for the soft loss, soft cross-entropy; for the teacher, the
# teacher of the first student; for the data set, the first run's).
_OPTIONAL_COLUMNS = {"labels_used": None, "mixup": None, "soft_loss": "soft_ce",
                     "teacher": _SHARED, "dataset": _SHARED}


def _row_value(row: dict[str, Any], key: str) -> Any:
  """What the table shows of `row` under `key` (None: nothing to show)."""
  if key in _TEACHING_KEYS and (row.get("role") != "student" or row.get("loss") == "hard"):
    return None
  if key == "method" and row.get("method") is None and row.get("role") == "student":
    return "kd"  # summaries from before methods had names: all were kd
  if key == "mixup":
    return row.get(key) or None  # 0: off
  if key == "soft_loss":
    return row.get(key) or "soft_ce"  # summaries from before KL was offered: soft_ce
  if key == "dataset":  # as `with_dataset_names` names it, where it has
    return row.get("dataset_name") or row.get(key)
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
  if key in ("test_accuracy", "agreement_with_teacher"):
    return f"{100 * value:.2f}%"
  if key in ("test_nll", "test_ece"):
    return f"{value:.4f}"
  if key == "train_seconds":
    return seconds_cell(value)
  return str(value)


def seconds_cell(seconds: float | None) -> str:
  """A training time as the table shows it: whole seconds from 10 s up, tenths below, and two
  significant digits below a second, so that tiny runs do not all read 0."""
  if seconds is None or not math.isfinite(seconds):
    return "-"
  if seconds >= 9.95:  # what rounds to 10.0 reads as 10
    return f"{seconds:.0f}"
  if seconds >= 0.995:
    return f"{seconds:.1f}"
  return f"{seconds:.2g}" if seconds > 0 else "0"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
  """A Markdown table: the header row, the separator, one row per list of cells."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return "\n".join(lines)


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
  """COLUMNS, less the labels column when every run had every label, the mixup column when
  no run mixed, the soft loss when every student used soft cross-entropy, the teacher when
  every student learned from one, and the data set when every run used one (`rows` as
  `with_teacher_names` and `with_dataset_names` give them)."""
  return [(key, title) for key, title in COLUMNS
          if key not in _OPTIONAL_COLUMNS or _option_used(rows, key)]


def _option_used(rows: list[dict[str, Any]], key: str) -> bool:
  """Whether some run's value under the optional column `key` differs from the one every run
  would have without the option."""
  values = [value for value in (_row_value(row, key) for row in rows) if value is not None]
  default = _OPTIONAL_COLUMNS[key]
  if default is _SHARED:
    default = values[0] if values else None
  return any(value != default for value in values)


def with_teacher_names(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """`rows`, each with `teacher`: the folder a student learned from (its teacher_dir), or a
  teacher's own, named by the fewest trailing parts of its path that tell it from the others
  among the rows (runs/teacher and runs/teacher-hybrid: teacher, teacher-hybrid), so that a
  student's teacher reads as that teacher's folder does.

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
  body = [[_cell(key, _row_value(row, key)) for key, _ in columns] for row in rows]
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


def compare_runs(run_dirs: list[Path], *, as_json: bool = False, markdown: bool = False) -> str:
  """The comparison of `run_dirs` as text (a table, Markdown, or JSON lines)."""
  run_dirs, sweeps = _expand_sweeps(run_dirs)
  rows, skipped = collect_runs(run_dirs)
  if as_json:
    # `teacher` as the table names it, `teacher_dir` as the student's summary recorded it
    # (a hard-label baseline's too: the teacher its agreement was measured against).
    # `dataset` as the run recorded it, `dataset_name` as the table names it; its fingerprint
    # and path tell data sets apart exactly.
    rows = with_dataset_names(with_teacher_names(rows))
    keys = [key for key, _ in COLUMNS] + ["dataset_name", "dataset_fingerprint", "data_dir",
                                          "steps",
                                          "teacher_dir", "teacher_test_accuracy",
                                          "val_accuracy", "images_per_second", "cpu",
                                          "device_kind"]
    return json.dumps([{**{k: _row_value(row, k) for k in keys}, "dataset": row.get("dataset")}
                       for row in rows], indent=2)
  text = format_table(rows, markdown=markdown)
  for note in (datasets_note(rows), machines_note(rows)):
    if note:
      text += f"\n\n{note}"
  if skipped:
    text += "\n\nskipped: " + "; ".join(skipped)
  # A sweep's verdict closes the comparison: what teaching bought, and how surely.
  from distill.sweep import verdict_sentence  # noqa: PLC0415

  for sweep_dir, saved in sweeps:
    sentence = verdict_sentence(saved.get("rows", []))
    if sentence:
      text += f"\n\n{sweep_dir}: {sentence}"
  return text


# --------------------------------------------------------------------------
# The HTML report.


def _run_predictions(run_dir: Path) -> np.ndarray | None:
  """A run's final test logits: predictions.npz, or a teacher's targets.npz."""
  for name in (rundir.PREDICTIONS_FILE, rundir.TARGETS_FILE):
    path = run_dir / name
    if path.exists():
      try:
        with np.load(path) as arrays:
          if "test_logits" in arrays:
            return np.asarray(arrays["test_logits"], np.float32)
      except Exception:  # A damaged file: the report says so instead of failing.
        return None
  return None


def write_report(run_dirs: list[Path], out_dir: Path, *, quiet: bool = False) -> Path:
  """Writes out_dir/report.html (figures embedded) and the figures as PNG files beside it.

  Args:
    run_dirs: finished run directories (teacher and students). A `distill
      sweep` folder (one holding sweep.json) stands for its teacher and runs,
      and adds a section with the sweep's table and paired differences.
    out_dir: where report.html and the PNGs go.
    quiet: no progress bar, and no note of the folders skipped (the page lists them too).

  Returns:
    The path of report.html.
  """
  from distill.console import Console  # noqa: PLC0415
  from distill.console import progress as progress_bar  # noqa: PLC0415
  from distill.io import write_text  # noqa: PLC0415

  run_dirs, sweeps = _expand_sweeps(run_dirs)
  rows, skipped = collect_runs(run_dirs)
  if skipped:  # said where the command runs, as `compare` says it, not only on the page
    Console(quiet).info("skipped: " + "; ".join(skipped))
  rows = with_dataset_names(with_teacher_names(rows))
  # Students of two teachers, or two teachers, must not look alike in titles and the figure.
  name_teachers = (_option_used(rows, "teacher")
                   or sum(row.get("role") == "teacher" for row in rows) > 1)
  # Nor must runs of two data sets: each title says its run's.
  name_datasets = _option_used(rows, "dataset")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  _remove_earlier_figures(out_dir)
  datasets: dict[str, Any] = {}
  teacher_logits: dict[str, np.ndarray] = {}
  for row in rows:
    # The overview figure draws a label's runs (seeds) as one point, coloured by its series.
    row["label"] = run_label(row, name_teacher=name_teachers)
    if name_datasets and _row_value(row, "dataset"):
      row["label"] += f" on {_row_value(row, 'dataset')}"
    row["series"] = how_taught(row, name_teacher=name_teachers)
  progress = progress_bar(rows, desc="report", quiet=quiet, unit="run")
  # Each section fills its row's test metrics in, so the table below shows them.
  sections = [_run_section(index, row, out_dir, datasets, teacher_logits)
              for index, row in enumerate(progress)]
  progress.close()

  overview = _overview_figures(rows, out_dir)
  page = _page(rows, skipped, format_table(rows, markdown=False), overview, sections,
               "".join(_sweep_section(sweep_dir, saved) for sweep_dir, saved in sweeps))
  path = out_dir / "report.html"
  write_text(path, page)
  return path


# The figures a report writes beside report.html: each run's (`_figure_path`, its slug starts
# with the run's two-digit index) and the overview, one per data set (`_overview_figures`:
# accuracy-vs-params.png, or accuracy-vs-params-DATASET.png for each of several).
_RUN_FIGURES = ("curves", "mistakes", "confusion", "reliability", "disagreements")
_OVERVIEW_FIGURE = "accuracy-vs-params"
_FIGURE_NAME = re.compile(
    rf"\d{{2,}}-.+-({'|'.join(_RUN_FIGURES)})\.png|{_OVERVIEW_FIGURE}(-[A-Za-z0-9._-]+)?\.png")


def _figure_path(out_dir: Path, slug: str, kind: str) -> Path:
  """Where a run's figure of `kind` (one of `_RUN_FIGURES`) goes."""
  assert kind in _RUN_FIGURES, kind  # else a later report would not remove it
  return out_dir / f"{slug}-{kind}.png"


def _remove_earlier_figures(out_dir: Path) -> None:
  """An earlier report's figures, gone before a new report is written in its folder.

  Otherwise the figures of runs the new report leaves out would stay beside
  it, looking like part of it. Only a folder holding report.html is touched,
  and only files named as a report names its figures.
  """
  if not (out_dir / "report.html").is_file():
    return
  for path in out_dir.iterdir():
    if path.is_file() and _FIGURE_NAME.fullmatch(path.name):
      path.unlink()


def _expand_sweeps(run_dirs: list[Path]) -> tuple[list[Path], list[tuple[Path, dict[str, Any]]]]:
  """Replaces each sweep folder by its teacher and run folders; returns them and the sweeps.

  The runs are found by name inside the sweep folder (not by the paths
  sweep.json recorded, which may be relative to another working directory);
  a folder listed twice is reported once.
  """
  from distill.sweep import SWEEP_JSON  # noqa: PLC0415

  expanded: list[Path] = []
  sweeps = []
  for run_dir in map(Path, run_dirs):
    if not (run_dir / SWEEP_JSON).is_file():
      expanded.append(run_dir)
      continue
    saved = read_json(run_dir / SWEEP_JSON, "sweep summary")
    sweeps.append((run_dir, saved))
    teacher = Path(saved.get("settings", {}).get("teacher_dir", ""))
    # An ensemble's folder of targets has no summary: nothing to show for it.
    if (teacher / rundir.SUMMARY_FILE).is_file():
      expanded.append(teacher)
    expanded += [run_dir / run["name"] for run in saved.get("runs", [])]
  unique: dict[str, Path] = {}
  for run_dir in expanded:
    unique.setdefault(str(run_dir.resolve()), run_dir)
  return list(unique.values()), sweeps


def _sweep_section(sweep_dir: Path, saved: dict[str, Any]) -> str:
  """A sweep's table (mean ± std over seeds) and its paired differences, from its sweep.json."""
  from distill.sweep import paired_cells, table_cells, verdict_sentence  # noqa: PLC0415

  def table(css_class: str, header: list[str], body: list[list[str]]) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    return (f"<table class='{css_class}'><tr>" + cells("th", header) + "</tr>"
            + "".join(f"<tr>{cells('td', row)}</tr>" for row in body) + "</table>")

  rows = saved.get("rows", [])
  sentence = verdict_sentence(rows)
  parts = [f"<h2>Sweep <small>{html.escape(str(sweep_dir))}</small></h2>",
           *([f"<p><strong>{html.escape(sentence)}</strong></p>"] if sentence else []),
           "<p>Test accuracy after each run's last training step, mean ± sample std over "
           "seeds.</p>", table("paired", *table_cells(rows)),
           "<h3>Paired differences</h3>"]
  header, body = paired_cells(rows)
  if not body:
    parts.append("<p class='missing'>No paired differences in this sweep.json (no baseline "
                 "to pair with, or made before they existed: run the sweep again).</p>")
    return "<section>" + "\n".join(parts) + "</section>"
  parts.append("<p>Per seed, the variant's test accuracy minus its baseline's with the same "
               "seed (hard: the same model on hard labels; kd: the same model, mode and soft "
               "loss with the kd loss; kd targets: with kd on exported targets); p &lt; 0.05 "
               "counts as beyond seed noise.</p>")
  parts.append(table("paired", header, body))
  return "<section>" + "\n".join(parts) + "</section>"


def _figure_html(path: Path, caption: str) -> str:
  """A PNG figure embedded in the page, with its caption."""
  data = base64.b64encode(path.read_bytes()).decode()
  return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _dataset_for(row: dict[str, Any], datasets: dict[str, Any]):
  """The data set a run was trained on, loaded once per distinct data section."""
  from distill.workflow import load_data  # noqa: PLC0415

  recipe = read_json(Path(row["run"]) / rundir.RECIPE_FILE, "run recipe")
  key = json.dumps(recipe["data"], sort_keys=True)
  if key not in datasets:
    datasets[key] = load_data(recipe)
  return datasets[key]


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
  alpha = "" if row.get("alpha") is None else f", alpha={_cell('alpha', row['alpha'])}"
  kl = ", KL" if row.get("soft_loss") == "kl" else ""
  mixup = _row_value(row, "mixup")
  return (f"{_row_value(row, 'method')}{kl}, {row.get('teaching')}, "
          f"T={_cell('temperature', row.get('temperature'))}{alpha}"
          + (f", mixup={_cell('mixup', mixup)}" if mixup else "")
          + (f", from {teacher}" if teacher else ""))


def objective_label(row: dict[str, Any]) -> str:
  """What a run's logged training loss is, e.g. 'train loss (kd, T²-scaled at T=2)'."""
  if row.get("role") != "student" or row.get("loss") == "hard":
    return "train loss (cross-entropy, hard labels)"
  method = _row_value(row, "method")
  temperature, alpha = row.get("temperature") or 1.0, row.get("alpha", 1.0)
  what = method + (": KL" if row.get("soft_loss") == "kl" else "")
  if temperature != 1:
    what += f", T²-scaled at T={temperature:g}"
  if alpha is not None and alpha < 1:
    what += f", {alpha:g} teacher + {1 - alpha:g} labels"
  return f"train loss ({what})"


def _run_section(index: int, row: dict[str, Any], out_dir: Path, datasets: dict[str, Any],
                 teacher_logits: dict[str, np.ndarray]) -> str:
  """One run's section: its curves and, from its test logits, metrics and figures.

  Updates `row` with the metrics measured from the logits, and records a
  teacher's logits in `teacher_logits` for the students that follow it.
  """
  from distill import plots  # noqa: PLC0415

  run_dir = Path(row["run"])
  # Named after the run's folder, which tells runs apart (seeds, say) where their settings
  # do not; the index keeps two folders of one name apart.
  slug = f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', run_dir.resolve().name)}"
  title = row["label"]
  parts = [f"<h2>{html.escape(title)} <small>{html.escape(str(run_dir))}</small></h2>"]
  dataset = _dataset_for(row, datasets)
  records = rundir.read_metrics(run_dir)
  if records:
    parts.append(_figure_html(plots.training_curves(
        records, title=title, init_loss=row.get("init_loss"),
        num_classes=dataset.num_classes, path=_figure_path(out_dir, slug, "curves"),
        objective=objective_label(row), init_loss_expected=row.get("init_loss_expected")),
        f"Left: the training objective, {objective_label(row)}, batch means; the star is the "
        "measured step-0 loss, the dashed line what it should be. Middle: validation "
        "cross-entropy on hard labels (the same measure for every run; dashed: log(n_classes), "
        "a uniform guess). Right: accuracy."))
  logits = _run_predictions(run_dir)
  if logits is None or len(logits) != len(dataset.y_test):
    parts.append("<p class='missing'>No test predictions found for this run.</p>")
    return "\n".join(parts)
  if row.get("role") == "teacher":
    teacher_logits[str(run_dir.resolve())] = logits
  teacher = teacher_logits.get(row.get("teacher_dir", ""))
  if teacher is None and row.get("teacher_dir"):
    teacher = _run_predictions(Path(row["teacher_dir"]))
  from distill.metrics import summary_metrics  # noqa: PLC0415

  metrics = summary_metrics(logits, dataset.y_test, teacher)
  row.update({"test_accuracy": metrics["accuracy"], "test_nll": metrics["nll"],
              "test_ece": metrics["ece"]})
  if "agreement" in metrics:
    row["agreement_with_teacher"] = metrics["agreement"]
  predictions = logits.argmax(-1)
  parts += _prediction_figures(logits, predictions, dataset, metrics, title, out_dir, slug)
  if teacher is not None:
    parts += _teacher_comparison(predictions, teacher, dataset, metrics, title, out_dir, slug)
  return "\n".join(parts)


def _prediction_figures(logits: np.ndarray, predictions: np.ndarray, dataset,
                        metrics: dict[str, float], title: str, out_dir: Path,
                        slug: str) -> list[str]:
  """A run's test mistakes, confusion matrix and reliability diagram, as figures."""
  from distill import losses, plots  # noqa: PLC0415

  names = dataset.class_names
  wrong = np.flatnonzero(predictions != dataset.y_test)[:32]
  parts = [_figure_html(plots.image_grid(
      dataset.x_test[wrong],
      [f"{names[predictions[i]]} / {names[dataset.y_test[i]]}" for i in wrong],
      title=f"{title}: misclassified test images (predicted / true)",
      path=_figure_path(out_dir, slug, "mistakes")),
      "Misclassified test images: predicted / true.")]
  parts.append(_figure_html(plots.confusion_matrix(
      dataset.y_test, predictions, names, title=f"{title}: confusion (test)",
      path=_figure_path(out_dir, slug, "confusion")), "Confusion matrix on the test set."))
  probs = np.asarray(losses.softmax(logits))
  parts.append(_figure_html(plots.reliability_diagram(
      probs.max(-1), predictions == dataset.y_test, ece=metrics["ece"], title=title,
      path=_figure_path(out_dir, slug, "reliability")),
      "Reliability diagram with expected calibration error."))
  return parts


def _teacher_comparison(predictions: np.ndarray, teacher: np.ndarray, dataset,
                        metrics: dict[str, float], title: str, out_dir: Path,
                        slug: str) -> list[str]:
  """A student's top-1 agreement with its teacher, and a figure of where they disagree."""
  from distill import plots  # noqa: PLC0415

  names = dataset.class_names
  teacher_predictions = teacher.argmax(-1)
  disagree = np.flatnonzero(predictions != teacher_predictions)[:32]
  return [
      f"<p>Top-1 agreement with the teacher on the test set: "
      f"<b>{100 * metrics['agreement']:.2f}%</b> "
      f"({len(np.flatnonzero(predictions != teacher_predictions))} "
      "disagreements).</p>",
      _figure_html(plots.image_grid(
          dataset.x_test[disagree],
          [f"S:{names[predictions[i]]} T:{names[teacher_predictions[i]]}\n"
           f"({names[dataset.y_test[i]]})"
           for i in disagree],
          title=f"{title}: where the student disagrees with the teacher (S / T, true)",
          path=_figure_path(out_dir, slug, "disagreements")),
          "Test images where student (S) and teacher (T) disagree; the true class in brackets."),
  ]


def _overview_figures(rows: list[dict[str, Any]], out_dir: Path) -> str:
  """The cross-run figures: every run's test accuracy against its parameters, one figure per
  data set (a 3-class set's accuracies on one axis with a 100-class set's would read as a
  ranking), each named after its data set when there are several."""
  from distill import plots  # noqa: PLC0415

  groups: dict[Any, list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(_row_value(row, "dataset"), []).append(row)
  caption = ("Test accuracy against parameters{on}: a point is the mean over the runs of one "
             "label (seeds), its bar their lowest and highest; the colour says how a student "
             "was taught, the star is the teacher, and runs of one size stand side by side "
             "above their model's name.")
  if len(groups) == 1:
    (dataset, members), = groups.items()
    path = plots.accuracy_vs_params(members, path=out_dir / f"{_OVERVIEW_FIGURE}.png",
                                    dataset=dataset)
    return _figure_html(path, caption.format(on=f" on {dataset}" if dataset else ""))
  figures, slugs = [], set()
  for dataset, members in groups.items():
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(dataset or "unknown")).strip("_") or "data"
    slug = next(candidate for candidate in (slug, *(f"{slug}-{i}" for i in range(2, 1000)))
                if candidate not in slugs)
    slugs.add(slug)
    name = dataset or "an unrecorded data set"
    path = plots.accuracy_vs_params(members, path=out_dir / f"{_OVERVIEW_FIGURE}-{slug}.png",
                                    dataset=name)
    figures.append(_figure_html(path, caption.format(on=f" on {name}, one figure per data "
                                                        "set")))
  return "\n".join(figures)


def _page(rows: list[dict[str, Any]], skipped: list[str], table: str, overview: str,
          sections: list[str], sweeps: str = "") -> str:
  """The report page: the comparison table, any sweeps' tables, the overview figure and
  every run's section."""
  notes = [note for note in (datasets_note(rows), machines_note(rows)) if note]
  return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distill report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }} h2 small {{ color: #777; font-weight: normal; }}
.missing {{ color: #a00; }}
table.paired {{ border-collapse: collapse; font-size: 0.9em; }}
table.paired td, table.paired th {{ border: 1px solid #ddd; padding: 0.2em 0.5em; }}
</style></head><body>
<h1>distill report</h1>
<p>{len(rows)} runs{f"; skipped: {html.escape('; '.join(skipped))}" if skipped else ""}.</p>
<h2>Comparison</h2>
<pre>{html.escape(table)}</pre>
{"".join(f"<p>{html.escape(note)}</p>" for note in notes)}
{sweeps}
{overview}
{''.join(f'<section>{s}</section>' for s in sections)}
<p id="figure-check"></p>
<script>
// Marks the page with how many figures decoded, so a headless browser can check it.
window.addEventListener("load", () => {{
  const images = [...document.images];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = `${{loaded}}/${{images.length}}`;
  document.getElementById("figure-check").textContent = \
`${{loaded}} of ${{images.length}} figures loaded`;
}});
</script>
</body></html>
"""

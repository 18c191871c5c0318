"""The HTML report of finished runs: their table, curves and figures (`distill report`)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir
from distill.compare import (
  collect_runs,
  expand_sweeps,
  format_table,
  how_taught,
  objective_label,
  option_used,
  row_value,
  run_label,
  table_notes,
  with_dataset_names,
  with_settings,
  with_teacher_names,
)
from distill.errors import UserError
from distill.io import read_json


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

  rundir.check_workdir(Path(out_dir), "--out")  # before the runs are read
  run_dirs, sweeps = expand_sweeps(run_dirs)
  rows, skipped = collect_runs(run_dirs)
  if skipped:  # said where the command runs, as `compare` says it, not only on the page
    Console(quiet).info("skipped: " + "; ".join(skipped))
  rows = with_dataset_names(with_teacher_names(rows))
  # Students of two teachers, or two teachers, must not look alike in titles and the figure.
  name_teachers = (option_used(rows, "teacher")
                   or sum(row.get("role") == "teacher" for row in rows) > 1)
  # Nor must runs of two data sets: each title says its run's.
  name_datasets = option_used(rows, "dataset")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  _remove_earlier_figures(out_dir)
  datasets: dict[str, Any] = {}
  teacher_logits: dict[str, np.ndarray] = {}
  rows = _labelled(rows, name_teachers=name_teachers, name_datasets=name_datasets)
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


def _labelled(rows: list[dict[str, Any]], *, name_teachers: bool,
              name_datasets: bool) -> list[dict[str, Any]]:
  """`rows`, each with `label` (how its title names it) and `series` (its legend entry), and
  `with_settings`' marks: the overview figure draws the runs of one setting (seeds) as one
  point, coloured by its series, so runs of one label but different settings take what tells
  them apart ('20,000 steps') into both."""
  for row in rows:
    row["label"] = run_label(row, name_teacher=name_teachers)
    if name_datasets and row_value(row, "dataset"):
      row["label"] += f" on {row_value(row, 'dataset')}"
    row["series"] = how_taught(row, name_teacher=name_teachers)
  rows = with_settings(rows)
  for row in rows:
    if row["setting_note"]:
      row["label"] += f", {row['setting_note']}"
      row["series"] += f", {row['setting_note']}"
  return rows


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




def _sweep_section(sweep_dir: Path, saved: dict[str, Any]) -> str:
  """A sweep's table (mean ± std over seeds) and its paired differences, from its sweep.json."""
  from distill.sweep_results import (  # noqa: PLC0415
    gap_note,
    left_out_note,
    out_of_date,
    out_of_date_note,
    paired_cells,
    sweep_name,
    table_cells,
    verdict_sentence,
  )

  def table(css_class: str, header: list[str], body: list[list[str]]) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
    return (f"<table class='{css_class}'><tr>" + cells("th", header) + "</tr>"
            + "".join(f"<tr>{cells('td', row)}</tr>" for row in body) + "</table>")

  rows = saved.get("rows", [])
  sentence = verdict_sentence(rows)
  heading = f"<h2>Sweep <small>{html.escape(sweep_name(sweep_dir, saved))}</small></h2>"
  left_out = [f"<p>{html.escape(note)}</p>"] if (note := left_out_note(sweep_dir, saved)) else []
  if reasons := out_of_date(sweep_dir, saved):
    return ("<section>" + "\n".join([heading, "<p class='missing'>"
                                       + html.escape(out_of_date_note(sweep_dir, reasons))
                                       + "</p>", *left_out]) + "</section>")
  parts = [heading,
           *([f"<p><strong>{html.escape(sentence)}</strong></p>"] if sentence else []),
           "<p>Test accuracy after each run's last training step, mean ± sample std over "
           "seeds.</p>", table("paired", *table_cells(rows)),
           *([f"<p>{html.escape(note)}</p>"] if (note := gap_note(rows)) else []), *left_out,
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
    try:
      datasets[key] = load_data(recipe)
    except UserError as e:
      raise UserError(f"{e}: {row['run']} needs the data set it trained on for the report "
                      "(its test labels and pictures of its mistakes): put the data back where "
                      "its recipe.json says, or leave the run out") from None
  return datasets[key]



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
    groups.setdefault(row_value(row, "dataset"), []).append(row)
  caption = ("Test accuracy against parameters{on}: a point is the mean over the runs of one "
             "setting (seeds; a run reached twice counts once), its bar their lowest and "
             "highest; the colour says how a student was taught, the star is the teacher, and "
             "runs of one size stand side by side above their model's name.")
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
  notes = table_notes(rows)
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

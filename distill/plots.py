"""Figures for reports. Each function draws one figure and saves it as a PNG."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")  # Files only: works without a display.
  import matplotlib.pyplot as plt  # noqa: PLC0415

  return plt


def _matplotlib_ticker():
  """matplotlib.ticker, imported when a figure is drawn (keeps `import distill` fast)."""
  import matplotlib.ticker  # noqa: PLC0415

  return matplotlib.ticker


def _save(fig, path: Path) -> Path:
  from distill.io import _write_atomic  # noqa: PLC0415

  _write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"),
                "wb")
  _pyplot().close(fig)
  return Path(path)


def _image_for_display(image_HxWxC: np.ndarray) -> tuple[np.ndarray, str | None]:
  if image_HxWxC.shape[-1] == 1:
    return image_HxWxC[..., 0], "gray"
  return image_HxWxC, None


def training_curves_figure(records: list[dict[str, Any]], *, title: str,
                           init_loss: float | None, num_classes: int,
                           objective: str = "train loss",
                           init_loss_expected: float | None = None):
  """The figure of `training_curves`, unsaved (a matplotlib Figure).

  The training loss is the run's own objective (a T²-scaled distillation loss
  is not a cross-entropy), so it gets its own panel, labelled `objective`,
  with the step-0 loss and what it should be; the validation cross-entropy,
  the same measure for every run, gets another beside it.
  """
  plt = _pyplot()
  fig, (loss_ax, val_ax, acc_ax) = plt.subplots(1, 3, figsize=(14, 3.6))
  steps = [r["step"] for r in records]
  # A line through one point draws nothing: a short run's one log line gets a marker.
  marker = "o" if len(steps) == 1 else None
  loss_ax.plot(steps, [r["loss"] for r in records], marker=marker, label="batch mean")
  if init_loss_expected is not None:  # None: not checked (a pretrained head)
    loss_ax.axhline(init_loss_expected, color="gray", ls="--", lw=1,
                    label=f"expected at step 0: {init_loss_expected:.3f}")
  if init_loss is not None and math.isfinite(init_loss):
    loss_ax.plot([0], [init_loss], "r*", ms=12, label=f"step-0 loss {init_loss:.3f}")
  loss_ax.set(xlabel="step", ylabel=objective.replace(" (", "\n(", 1),
              title="training objective")
  loss_ax.legend(fontsize=8)
  val = [r for r in records if "val_loss" in r]
  if val:
    val_ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="C1",
                label="validation")
  chance = math.log(num_classes)
  val_ax.axhline(chance, color="gray", ls="--", lw=1,
                 label=f"log({num_classes}) = {chance:.3f} (uniform)")
  val_ax.set(xlabel="step", ylabel="validation cross-entropy (hard labels)",
             title="validation loss")
  val_ax.legend(fontsize=8)
  acc_ax.plot(steps, [r["accuracy"] for r in records], marker=marker,
              label="train (batches seen)")
  if val:
    acc_ax.plot([r["step"] for r in val], [r["val_accuracy"] for r in val], "o-",
                label="validation")
  acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
  acc_ax.legend(fontsize=8)
  for ax in (loss_ax, val_ax, acc_ax):  # steps are whole: no 19.25 on a short run's axis
    ax.xaxis.set_major_locator(_matplotlib_ticker().MaxNLocator(integer=True))
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def training_curves(records: list[dict[str, Any]], *, title: str, init_loss: float | None,
                    num_classes: int, path: Path, objective: str = "train loss",
                    init_loss_expected: float | None = None) -> Path:
  """Saves `training_curves_figure` as a PNG at `path`; returns the path."""
  return _save(training_curves_figure(records, title=title, init_loss=init_loss,
                                      num_classes=num_classes, objective=objective,
                                      init_loss_expected=init_loss_expected), path)


def image_grid(images: np.ndarray, captions: Sequence[str], *, title: str, path: Path,
               columns: int = 8) -> Path:
  """A grid of images with a caption under each."""
  plt = _pyplot()
  count = max(len(images), 1)
  rows = math.ceil(count / columns)
  captions = [_wrapped(caption) for caption in captions]
  # Room for the captions' lines above each row (two fit the 1.75 in a row has always had).
  lines = max((caption.count("\n") + 1 for caption in captions), default=1)
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(columns * 1.5, rows * (1.75 + 0.13 * max(0, lines - 2))))
  for ax in axes.ravel():
    ax.axis("off")
  # The grid has a cell for every position in its last row, so it can outnumber the images.
  for ax, image, caption in zip(axes.ravel(), images, captions, strict=False):
    shown, cmap = _image_for_display(image)
    ax.imshow(shown, cmap=cmap)
    ax.set_title(caption, fontsize=7)
  if len(images) == 0:
    axes[0, 0].text(0.5, 0.5, "none", ha="center")
  fig.suptitle(title)
  return _save(fig, path)


# About the characters a grid cell's width (1.5 in) holds at the captions' 7 pt.
_CAPTION_WIDTH = 20


def _wrapped(caption: str) -> str:
  """A caption broken into lines a grid cell holds: long class names ran into the next cell."""
  import textwrap  # noqa: PLC0415

  return "\n".join(textwrap.fill(line, _CAPTION_WIDTH) or line for line in caption.split("\n"))


# Above this many classes a confusion matrix's cells are too small to hold their counts, or its
# ticks their class names: it is drawn as a picture at a fixed size (a 100-class one grew
# to ~4900 px and 1.3 MB, embedded as base64 in report.html), its axes ticked by class index.
CONFUSION_NUMBERED_CLASSES = 30
# The side of a many-class matrix's figure, in inches.
_CONFUSION_PICTURE_INCHES = 9.0


def confusion_matrix_figure(labels: np.ndarray, predictions: np.ndarray,
                            class_names: Sequence[str], *, title: str):
  """The figure of `confusion_matrix`, unsaved (a matplotlib Figure).

  Up to `CONFUSION_NUMBERED_CLASSES` classes each cell holds its count and
  each tick its class name; above, the figure keeps a fixed size, the cells
  only their colour and the axes a few class indices.
  """
  plt = _pyplot()
  n = len(class_names)
  counts = np.zeros((n, n), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  numbered = n <= CONFUSION_NUMBERED_CLASSES
  if numbered:
    fig, ax = plt.subplots(figsize=(0.55 * n + 2.5, 0.55 * n + 2))
  else:
    side = _CONFUSION_PICTURE_INCHES
    fig, ax = plt.subplots(figsize=(side + 1, side))
  image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
  if numbered:
    for i in range(n):
      for j in range(n):
        ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return fig
  # About ten ticks a side, at round class indices.
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_locator(_matplotlib_ticker().MaxNLocator(nbins=10, integer=True))
    axis.set_tick_params(labelsize=8)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="share of the true class's test images")
  ax.set(xlabel=f"predicted class (index of {n})", ylabel=f"true class (index of {n})",
         title=f"{title}\n{n} classes: colour only, no counts")
  return fig


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str], *,
                     title: str, path: Path) -> Path:
  """Counts of (true, predicted) pairs, rows normalised in the colour, counts written in while
  the cells can hold them (see `confusion_matrix_figure`); saved as a PNG at `path`."""
  return _save(confusion_matrix_figure(labels, predictions, class_names, title=title), path)


def reliability_diagram(confidences: np.ndarray, correct: np.ndarray, *, ece: float, title: str,
                        path: Path, n_bins: int = 15) -> Path:
  """Accuracy against confidence per equal-width bin; the gap to the diagonal is miscalibration."""
  plt = _pyplot()
  edges = np.linspace(0, 1, n_bins + 1)
  bins = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, n_bins - 1)
  centers, accuracies, counts = [], [], []
  for b in range(n_bins):
    mask = bins == b
    if mask.any():
      centers.append(confidences[mask].mean())
      accuracies.append(correct[mask].mean())
      counts.append(mask.sum())
  fig, ax = plt.subplots(figsize=(4.2, 4))
  ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
  ax.bar(edges[:-1], [0] * n_bins, width=1 / n_bins)  # keeps the axis in bins
  ax.plot(centers, accuracies, "o-", label="model")
  ax.set(xlabel="confidence (max probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
         title=f"{title}\nECE = {ece:.4f}")
  ax.legend(fontsize=8, loc="upper left")
  return _save(fig, path)


# How far apart (in decades of parameters, as a share of the axis's span) the points of one
# column stand: twins of one size (hard and soft, KD and KL) would otherwise hide each other's
# markers and bars.
_DODGE = 0.03


def accuracy_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The points of `accuracy_vs_params`: one per label and size, in drawing order.

  A row's `label` names the run as a person tells it apart (without its seed),
  its `series` how it was taught (the legend's entry, shared by every model);
  rows without them get ones made of role, model and loss. Runs that share a
  label, a parameter count and a `setting` (`compare.with_settings`: one
  sweep row's seeds) become one point: `mean`, `low` and `high` are their test
  accuracies' mean, min and max, `runs` how many; a row marked `repeat` (a run
  another row already is) is left out. Points of about one size form a column (`column`: its
  index) and are spread across it, teachers first, then in order of series:
  `x` is where a point is drawn, `params` its true size. Runs of unknown size
  (a teacher imported as logits or a function: no parameter count in its
  summary, or 0 in older ones) have no place on the axis and are left out
  (the figure draws them as lines across).

  Raises:
    ValueError: when the rows span more than one data set (their accuracies
      share no scale: draw one figure per data set).
  """
  datasets = sorted({str(row.get("dataset_name") or row.get("dataset")) for row in rows
                     if row.get("dataset_name") or row.get("dataset")})
  fingerprints = {row["dataset_fingerprint"] for row in rows if row.get("dataset_fingerprint")}
  if len(datasets) > 1 or len(fingerprints) > 1:
    raise ValueError(f"runs of {max(len(datasets), len(fingerprints))} data sets "
                     f"({', '.join(datasets)}) on one accuracy axis: draw one figure per data set")
  groups: dict[tuple[str, int, Any], list[dict[str, Any]]] = {}
  for row in rows:
    if row.get("params") and not row.get("repeat"):
      groups.setdefault((_point_label(row), row["params"], row.get("setting")), []).append(row)
  points = []
  for (label, params, _), members in groups.items():
    accuracies = np.array([m["test_accuracy"] for m in members], np.float64)
    first = members[0]
    points.append({"label": label, "series": _point_series(first), "role": first.get("role"),
                   "loss": first.get("loss"), "model": first.get("model"), "params": params,
                   "runs": len(members), "mean": float(accuracies.mean()),
                   "low": float(accuracies.min()), "high": float(accuracies.max())})
  points.sort(key=lambda p: (p["params"], *_series_rank(p), p["label"]))
  if not points:
    return points
  logs = [math.log10(p["params"]) for p in points]
  step = _DODGE * max(logs[-1] - logs[0], 1.0)
  # A size joins the column before it when their spreads across the axis would meet.
  columns: list[list[dict[str, Any]]] = []
  for _, same in itertools.groupby(points, key=lambda p: p["params"]):
    same = list(same)
    if columns and (math.log10(same[0]["params"]) - _column_center(columns[-1])
                    < step * ((len(columns[-1]) + len(same)) / 2 + 1)):
      columns[-1] += same
    else:
      columns.append(same)
  for index, column in enumerate(columns):
    center = _column_center(column)
    for slot, point in enumerate(column):
      point["column"] = index
      point["x"] = 10 ** (center + step * (slot - (len(column) - 1) / 2))
  return points


def _column_center(column: list[dict[str, Any]]) -> float:
  """Where a column of points stands: the mean log10 of their sizes."""
  return float(np.mean([math.log10(p["params"]) for p in column]))


def _point_label(row: dict[str, Any]) -> str:
  if row.get("label"):
    return row["label"]
  if row.get("role") == "teacher":
    return f"teacher {row.get('model')}"
  return f"student {row.get('model')} ({row.get('loss', '?')})"


def _point_series(row: dict[str, Any]) -> str:
  if row.get("series"):
    return row["series"]
  return "teacher" if row.get("role") == "teacher" else f"{row.get('loss', '?')} targets"


def _series_rank(point: dict[str, Any]) -> tuple:
  """Teachers, then hard labels (the baseline), then the ways of teaching by name: the same
  order in every column and in the legend, whatever the runs' accuracies."""
  return (point["role"] != "teacher", point["loss"] != "hard", point["series"])


def _point_marker(point: dict[str, Any]) -> str:
  if point["role"] == "teacher":
    return "*"
  return "s" if point["loss"] == "hard" else "o"


def column_ticks(points: list[dict[str, Any]]) -> list[tuple[float, str]]:
  """Where each column of `accuracy_points` sits on the axis and what it says: its models
  above their sizes, e.g. cnn above 1,922. They are the axis's only labels, so a point moved
  aside in its column is read by its column, not by its exact x."""
  ticks = []
  for index in sorted({p["column"] for p in points}):
    column = [p for p in points if p["column"] == index]
    models = " / ".join(dict.fromkeys(str(p["model"]) for p in column))
    sizes = " / ".join(f"{size:,}" for size in sorted({p["params"] for p in column}))
    ticks.append((10 ** _column_center(column), f"{models}\n{sizes}"))
  return ticks


# Column labels nearer than this share of the axis would touch ("203,530302,602"): the
# second of two such labels goes two lines lower.
_TICK_CLEARANCE = 0.12


def staggered(ticks: list[tuple[float, str]],
              limits: tuple[float, float]) -> list[tuple[float, str]]:
  """`column_ticks` on a log axis over `limits`, each label that would touch the one before it
  moved below it (one row down of two), so neighbouring sizes stay readable."""
  span = math.log10(limits[1] / limits[0])
  placed, lowered = [], False
  for index, (x, text) in enumerate(ticks):
    close = index > 0 and math.log10(x / ticks[index - 1][0]) / span < _TICK_CLEARANCE
    lowered = close and not lowered
    placed.append((x, "\n\n" + text if lowered else text))
  return placed


def accuracy_vs_params_figure(rows: list[dict[str, Any]], *, dataset: str | None = None):
  """The figure of `accuracy_vs_params`, unsaved (a matplotlib Figure).

  No text sits among the points: one legend entry per series (how a student
  was taught, or the teacher) gives its marker and colour, and each column's
  model and size label the axis beneath it. The rows are one data set's
  (see `accuracy_points`); `dataset` names it in the title.
  """
  from matplotlib.ticker import NullLocator  # noqa: PLC0415

  plt = _pyplot()
  points = accuracy_points(rows)
  fig, ax = plt.subplots(figsize=(7, 4))
  series = list(dict.fromkeys(p["series"] for p in sorted(points, key=_series_rank)))
  teachers = [s for s in series if any(p["series"] == s and p["role"] == "teacher"
                                       for p in points)]
  # The teacher keeps the report's crimson; the students take tab10 less its red, so no
  # student's colour passes for the teacher's.
  palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]
  students = iter(palette * (len(series) // len(palette) + 1))
  colours = {name: "crimson" if teachers and name == teachers[0] else next(students)
             for name in series}
  for name in series:
    members = [p for p in points if p["series"] == name]
    runs = sorted({p["runs"] for p in members})
    count = f"{runs[0]} runs" if len(runs) == 1 else f"{runs[0]}-{runs[-1]} runs"
    marker = _point_marker(members[0])
    ax.errorbar([p["x"] for p in members], [p["mean"] for p in members],
                yerr=[[p["mean"] - p["low"] for p in members],
                      [p["high"] - p["mean"] for p in members]],
                fmt=marker, ms=13 if marker == "*" else 7, color=colours[name], capsize=3,
                lw=1, zorder=3, label=name + ("" if runs == [1] else f" (mean of {count})"))
  # A run of unknown size (a teacher imported as logits or a function) has no place on the
  # size axis, but its accuracy is what its students are measured against: a line across.
  unsized = {}
  for row in rows:
    if not row.get("params") and row.get("test_accuracy") is not None and not row.get("repeat"):
      unsized.setdefault(_point_label(row), []).append(row)
  for label, members in unsized.items():
    ax.axhline(float(np.mean([row["test_accuracy"] for row in members])), ls="--", lw=1,
               color="crimson" if members[0].get("role") == "teacher" else "grey", zorder=2,
               label=f"{label} (size unknown)")
  ax.set_xscale("log")
  ax.xaxis.set_minor_locator(NullLocator())
  on = f" on {dataset}" if dataset else ""
  # Bars only where a point is the mean of several runs: a figure of single runs has none.
  bars = " (bars: min to max over a label's runs)" if any(p["runs"] > 1 for p in points) else ""
  ax.set(xlabel="parameters (points of one size side by side)", ylabel="test accuracy",
         title=f"accuracy vs size{on}{bars}")
  ax.grid(alpha=0.3)
  if not points:  # only teachers of unknown size
    ax.text(0.5, 0.5, "no run of known size", ha="center", transform=ax.transAxes)
    if unsized:
      ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig
  low, high = min(p["x"] for p in points), max(p["x"] for p in points)
  margin = 10 ** (0.1 * max(math.log10(high / low), 1.0))
  ax.set_xlim(low / margin, high * margin)
  ticks = staggered(column_ticks(points), (low / margin, high * margin))
  ax.set_xticks([x for x, _ in ticks], [text for _, text in ticks], fontsize=8)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
  return fig


def accuracy_vs_params(rows: list[dict[str, Any]], *, path: Path,
                       dataset: str | None = None) -> Path:
  """Saves `accuracy_vs_params_figure` (one data set's runs) as a PNG at `path`; returns it."""
  return _save(accuracy_vs_params_figure(rows, dataset=dataset), path)

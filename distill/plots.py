"""Figures for reports. Each function draws one figure and saves it as a PNG."""

from __future__ import annotations

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
  loss_ax.plot(steps, [r["loss"] for r in records], label="batch mean")
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
  acc_ax.plot(steps, [r["accuracy"] for r in records], label="train (batches seen)")
  if val:
    acc_ax.plot([r["step"] for r in val], [r["val_accuracy"] for r in val], "o-",
                label="validation")
  acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
  acc_ax.legend(fontsize=8)
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
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.75), squeeze=False)
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


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str], *,
                     title: str, path: Path) -> Path:
  """Counts of (true, predicted) pairs, rows normalised in the colour, counts written in."""
  plt = _pyplot()
  n = len(class_names)
  counts = np.zeros((n, n), np.int64)
  np.add.at(counts, (labels, predictions), 1)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(0.55 * n + 2.5, 0.55 * n + 2))
  ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
              color="white" if fractions[i, j] > 0.5 else "black")
  ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(n), class_names, fontsize=8)
  ax.set(xlabel="predicted", ylabel="true", title=title)
  return _save(fig, path)


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


def accuracy_vs_params(rows: list[dict[str, Any]], *, path: Path) -> Path:
  """Test accuracy against parameter count for every run, teacher marked.

  Runs that share a label (the seeds of one sweep row) share a colour and one
  annotation, "label ×n", beside the best of them, so a sweep stays readable.
  Runs of unknown size (a teacher imported as logits or a function: no
  parameter count in its summary, or 0 in older ones) have no place on the
  axis and are left out.
  """
  rows = [row for row in rows if row.get("params")]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    is_teacher = row.get("role") == "teacher"
    label = row.get("label") or (("teacher " if is_teacher else "") + f"{row.get('model')}"
                                 + ("" if is_teacher else f" ({row.get('loss', '?')})"))
    groups.setdefault(label, []).append(row)
  for label, members in groups.items():
    is_teacher = members[0].get("role") == "teacher"
    ax.scatter([m["params"] for m in members], [m["test_accuracy"] for m in members],
               s=120 if is_teacher else 50,
               marker="*" if is_teacher else ("o" if members[0].get("loss") == "soft" else "s"),
               color="crimson" if is_teacher else None, zorder=3)
    best = max(members, key=lambda m: m["test_accuracy"])
    ax.annotate(label + (f" ×{len(members)}" if len(members) > 1 else ""),
                (best["params"], best["test_accuracy"]),
                fontsize=7, xytext=(4, 4), textcoords="offset points")
  ax.set_xscale("log")
  ax.set(xlabel="parameters", ylabel="test accuracy",
         title="accuracy vs size (o: soft targets, s: hard labels)")
  ax.grid(alpha=0.3)
  return _save(fig, path)

"""Side-by-side comparison of finished runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.io import read_json

COLUMNS = (
    ("run", "run"),
    ("role", "role"),
    ("model", "model"),
    ("loss", "loss"),
    ("params", "params"),
    ("test_accuracy", "test acc"),
    ("agreement_with_teacher", "agree"),
    ("test_nll", "test NLL"),
    ("test_ece", "ECE"),
    ("train_seconds", "train s"),
)


def collect_runs(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
  """Reads summary.json from each directory; returns (rows, skipped-directory notes)."""
  rows, skipped = [], []
  for run_dir in run_dirs:
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.exists():
      skipped.append(f"{run_dir} (no summary.json: not a finished run)")
      continue
    summary = read_json(path, "run summary")
    rows.append({"run": str(run_dir), **summary})
  if not rows:
    raise UserError("no finished runs among: " + ", ".join(str(d) for d in run_dirs))
  # Teachers first, then students from best to worst.
  rows.sort(key=lambda r: (r.get("role") != "teacher", -r.get("test_accuracy", 0.0)))
  return rows, skipped


def _cell(key: str, value: Any) -> str:
  if value is None:
    return "-"
  if key == "params":
    return f"{value:,}"
  if key in ("test_accuracy", "agreement_with_teacher"):
    return f"{100 * value:.2f}%"
  if key in ("test_nll", "test_ece"):
    return f"{value:.4f}"
  if key == "train_seconds":
    return f"{value:.0f}"
  return str(value)


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
  """A fixed-width (or Markdown) table of the runs."""
  header = [title for _, title in COLUMNS]
  body = [[_cell(key, row.get(key)) for key, _ in COLUMNS] for row in rows]
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
  widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
  fmt = "  ".join(f"{{:{'<' if i < 4 else '>'}{w}}}" for i, w in enumerate(widths))
  return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                   + [fmt.format(*cells) for cells in body])


def compare_runs(run_dirs: list[Path], *, as_json: bool = False, markdown: bool = False) -> str:
  """The comparison of `run_dirs` as text (a table, Markdown, or JSON lines)."""
  rows, skipped = collect_runs(run_dirs)
  if as_json:
    keys = [key for key, _ in COLUMNS] + ["dataset", "steps", "teacher_test_accuracy",
                                          "val_accuracy", "images_per_second"]
    return json.dumps([{k: row.get(k) for k in keys} for row in rows], indent=2)
  text = format_table(rows, markdown=markdown)
  if skipped:
    text += "\n\nskipped: " + "; ".join(skipped)
  return text

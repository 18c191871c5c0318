"""Joins the two sweeps of `benchmarks/methods.sh` into the methods table kept in BENCHMARKS.md.

    python benchmarks/methods_table.py [OUT_DIR]   # reads OUT/{vit,cnn}/sweep.json (runs/methods)

One row per student and method: test accuracy (mean ± sample std over seeds,
after the last step) and per seed, the paired per-seed difference against the same student
on hard labels and against plain KD with their paired t-test p-values,
agreement with the teacher, parameters and mean train seconds. The figures are the sweeps' own
(`distill.sweep` pairs the seeds and `distill.stats` tests them); this only
lays them side by side.
"""

import json
import sys
from pathlib import Path

from distill import stats
from distill.compare import seconds_cell

_METHOD_ORDER = ("hard", "kd", "dkd", "dist", "token", "hint")


def _paired(row, baseline):
  """The row's paired comparison against `baseline` ('hard', 'kd' or 'kd targets'), if any."""
  for result in row.get("paired", []):
    if result["baseline"] == baseline or (baseline == "kd" and result["baseline"] == "kd targets"):
      return result
  return None


def _diff_cell(result):
  if result is None:
    return "-"
  return f"{stats.format_diff(result)} ({stats.p_clause('t-test', result['t_p'])})"


def main(out_dir):
  print("| student | method | teaching | seeds | params | test acc % | per seed "
        "| vs hard: diff pts (p) | vs KD: diff pts (p) | agree % | train s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  teacher = None
  for student in ("vit", "cnn"):
    path = Path(out_dir) / student / "sweep.json"
    if not path.exists():
      continue
    sweep = json.loads(path.read_text())
    teacher = sweep["teacher"]
    rows = [r for r in sweep["rows"] if r["role"] == "student"]
    rows.sort(key=lambda r: _METHOD_ORDER.index(r["method"] or "hard"))
    for row in rows:
      method = row["method"] or "hard"
      teaching = "labels" if row["mode"] == "hard" else row["mode"]
      accs = f"{100 * row['test_accuracy_mean']:.2f} ± {100 * row['test_accuracy_std']:.2f}"
      per_seed = ", ".join(f"{100 * a:.2f}" for a in row["test_accuracies"])
      print(f"| {student} | {method} | {teaching} | {row['n']} | {row['params']:,} | {accs} "
            f"| {per_seed} | {_diff_cell(_paired(row, 'hard'))} "
            f"| {_diff_cell(_paired(row, 'kd')) if method not in ('hard', 'kd') else '-'} "
            f"| {100 * row['agreement_mean']:.2f} | {seconds_cell(row['train_seconds_mean'])} |")
  if teacher is not None:
    print(f"\nTeacher: {teacher['model']}, {teacher['params']:,} parameters, "
          f"{100 * teacher['test_accuracy']:.2f}% test.")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/methods")

"""benchmarks/methods_table.py: the two methods sweeps as one table."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _row(mode, method, accuracies, paired=()):
  return {"role": "student", "model": "cnn", "mode": mode, "method": method, "n": 3,
          "params": 83050, "test_accuracies": accuracies,
          "test_accuracy_mean": sum(accuracies) / 3, "test_accuracy_std": 0.001,
          "agreement_mean": 0.94, "train_seconds_mean": 700.0, "paired": list(paired)}


def _paired(baseline, mean_diff, t_p):
  return {"baseline": baseline, "n": 3, "mean_diff": mean_diff, "std_diff": 0.001, "t_p": t_p}


def test_rows_in_method_order_with_paired_cells(tmp_path):
  sweep = {"teacher": {"model": "vit", "params": 207274, "test_accuracy": 0.9357}, "rows": [
      _row("targets", "dkd", [0.92, 0.921, 0.922],
           [_paired("hard", -0.003, 0.04), _paired("kd targets", -0.011, 0.002)]),
      _row("hard", None, [0.925, 0.926, 0.924]),
      _row("targets", "kd", [0.932, 0.933, 0.932], [_paired("hard", 0.007, 0.001)]),
  ]}
  (tmp_path / "cnn").mkdir()
  (tmp_path / "cnn" / "sweep.json").write_text(json.dumps(sweep))
  out = subprocess.run([sys.executable, "benchmarks/methods_table.py", str(tmp_path)], cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True)
  rows = [line for line in out.stdout.splitlines() if line.startswith("| cnn")]
  assert [row.split(" | ")[1] for row in rows] == ["hard", "kd", "dkd"]
  hard, kd, dkd = (row.split(" | ") for row in rows)
  assert hard[6] == "92.50, 92.60, 92.40" and hard[7] == "-" and hard[8] == "-"
  assert kd[7].startswith("+0.70") and kd[8] == "-"
  assert dkd[7].startswith("-0.30") and dkd[8].startswith("-1.10") and "p = 0.002" in dkd[8]
  assert "Teacher: vit, 207,274 parameters, 93.57% test." in out.stdout

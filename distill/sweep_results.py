"""What a sweep's runs show: their rows over seeds, the paired differences, the verdict.

`distill.sweep` trains the runs; this module turns their summaries into the
tables `sweep.md` holds (test accuracy mean ± std, agreement, the share of the
teacher's lead each mode closes; each variant against its baselines seed by
seed, see `distill.stats`) and the one sentence that says what the teacher
bought. The HTML report and `distill compare` show the same tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill import rundir, stats
from distill.compare import markdown_table, row_value, seconds_cell
from distill.errors import first_few
from distill.stats import compare, format_diff, format_p

# The method every sweep has always trained: the classic distillation loss. Its
# runs keep the names they had before methods became an axis.
DEFAULT_METHOD = "kd"


def _sample_std(values: list[float]) -> float:
  # ddof=1: the seeds are a sample of what the recipe could give; one seed has no spread.
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(runs: list[dict[str, Any]], teacher: dict[str, Any]) -> list[dict[str, Any]]:
  """Groups finished runs over seeds into table rows, the teacher's first.

  Args:
    runs: one dict per run with `model`, `mode`, `method` (None for hard;
      kd when missing), `soft_loss` (None for hard), `seed` and `summary` (the
      run's summary.json: `params`, `test_accuracy` (after the last step),
      `agreement_with_teacher`, `train_seconds`).
    teacher: the teacher's summary.json (`test_accuracy`; `model`, `params`,
      `train_seconds` and `seed` when known).

  Returns:
    Rows with `role`, `model`, `mode`, `method`, `soft_loss`, `n` (seeds),
    `seeds`, `params`, `test_accuracies`, `test_accuracy_mean`,
    `test_accuracy_std` (sample std, 0 for one seed), `agreement_mean`,
    `train_seconds_mean`, `gap_closed`: (mean accuracy - the same model's hard
    mean) / (teacher accuracy - that hard mean), None for the hard rows
    themselves, without a hard baseline for the model, or when the baseline
    comes within its seed spread of the teacher (no gap to measure); and `paired` (see
    `paired_rows`, empty for the teacher and the hard rows).
  """
  teacher_acc = float(teacher["test_accuracy"])
  groups: dict[tuple[str, str, str | None, str | None], list[dict[str, Any]]] = {}
  for run in runs:
    method = run.get("method", None if run["mode"] == "hard" else DEFAULT_METHOD)
    groups.setdefault((run["model"], run["mode"], method, run["soft_loss"]), []).append(run)

  rows = [{
      "role": "teacher", "model": teacher.get("model"), "mode": None, "method": None,
      "soft_loss": None,
      "n": 1, "seeds": [teacher.get("seed")], "params": teacher.get("params"),
      "test_accuracies": [teacher_acc], "test_accuracy_mean": teacher_acc,
      "test_accuracy_std": None, "agreement_mean": None,
      # None for a teacher trained elsewhere (`row_value`): its time is not known here.
      "train_seconds_mean": row_value(teacher, "train_seconds"), "gap_closed": None,
      "paired": [],
  }]
  for (model, mode, method, soft_loss), members in groups.items():
    summaries = [m["summary"] for m in members]
    accuracies = [float(s["test_accuracy"]) for s in summaries]
    agreements = [s.get("agreement_with_teacher") for s in summaries]
    rows.append({
        "role": "student", "model": model, "mode": mode, "method": method,
        "soft_loss": soft_loss,
        "n": len(members), "seeds": [m["seed"] for m in members],
        "params": summaries[0].get("params"),
        "test_accuracies": accuracies,
        "test_accuracy_mean": float(np.mean(accuracies)),
        "test_accuracy_std": _sample_std(accuracies),
        "agreement_mean": (float(np.mean(agreements))
                           if all(a is not None for a in agreements) else None),
        "train_seconds_mean": float(np.mean([s.get("train_seconds", np.nan) for s in summaries])),
        "gap_closed": None,
    })
  hard = _hard_rows(rows)
  for row in rows[1:]:
    twin = hard.get(row["model"])
    if row["mode"] != "hard" and twin is not None and _measurable_gap(teacher_acc, twin):
      baseline = twin["test_accuracy_mean"]
      row["gap_closed"] = (row["test_accuracy_mean"] - baseline) / (teacher_acc - baseline)
  for row in rows[1:]:
    row["paired"] = paired_rows(row, rows[1:])
  return rows


def _hard_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """{model: its row on hard labels}: the baseline each gap is measured from."""
  return {row["model"]: row for row in rows[1:] if row["mode"] == "hard"}


def _measurable_gap(teacher: float, hard_row: dict[str, Any]) -> bool:
  """Whether the teacher is further above a hard-label row's mean than that row's own seed
  spread (its sample std; 0 for one seed): a gap within it (a fraction of a test image, on
  digits) makes any share of it closed a large number that means nothing (200%, -50%)."""
  return teacher - hard_row["test_accuracy_mean"] > (hard_row["test_accuracy_std"] or 0.0)


def paired_rows(row: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """A student row's paired per-seed comparisons (`stats.compare`) with its baselines.

  The baselines: `hard`, the same model on hard labels (for every row but the
  hard ones); and, for rows of another method, `kd`: the same model, mode and
  soft loss with the classic kd loss, so that only the method differs, or,
  when the sweep has no such run (hint, say, needs online teaching, plain KD
  is usually swept on targets), `kd targets`: the same model and soft loss
  with kd on exported targets. Hints always meet `kd targets` where the sweep
  has it: they run online but un-augmented, and see the images kd on targets
  sees. A baseline the sweep did not train is left out.
  """
  def find(mode: str, method: str | None, soft_loss: str | None) -> dict[str, Any] | None:
    return next((other for other in rows if other["model"] == row["model"]
                 and other["mode"] == mode and other["method"] == method
                 and other["soft_loss"] == soft_loss), None)

  if row["mode"] == "hard":
    return []
  baselines = [("hard", find("hard", None, None))]
  if row["method"] != DEFAULT_METHOD:
    # A method that reads no soft loss (dkd, dist, token) meets kd's classic soft CE.
    soft_loss = row["soft_loss"] or "soft_ce"
    same_mode = find(row["mode"], DEFAULT_METHOD, soft_loss)
    on_targets = find("targets", DEFAULT_METHOD, soft_loss)
    if row["method"] == "hint" and on_targets is not None:
      # Hints run online but un-augmented, as exported targets are: kd on targets sees the
      # same images, online kd (augmented by construction) does not.
      baselines.append((f"{DEFAULT_METHOD} targets", on_targets))
    elif same_mode is not None or row["mode"] == "targets":
      baselines.append((DEFAULT_METHOD, same_mode))
    else:
      baselines.append((f"{DEFAULT_METHOD} targets", on_targets))
  return [compare(_by_seed(row), _by_seed(baseline), name)
          for name, baseline in baselines if baseline is not None]


def headline(rows: list[dict[str, Any]]) -> list[str]:
  """Plain sentences on what teaching bought each student over its hard labels, and how surely.

  One per taught row that has a hard-label twin in the sweep, in table order:
  every row is reported, none picked as the best (that would choose on the
  test set). e.g. "mlp, kd on targets: +3.12 ± 0.20 pts over hard (3 seeds,
  t-test p = 0.002): a gain beyond seed noise".
  """
  return [f"{row['model']}, {_how_taught(row)}: {pair['verdict']}"
          for row, pair in _against_hard(rows)]


def _how_taught(row: dict[str, Any]) -> str:
  """'kd on targets', 'dkd on views', 'hint online', 'kd on targets, kl': a taught row's method,
  mode and soft loss (unless soft_ce) in words."""
  loss = f", {row['soft_loss']}" if row["soft_loss"] not in (None, "soft_ce") else ""
  return f"{row['method']} {'online' if row['mode'] == 'online' else 'on ' + row['mode']}{loss}"


def _against_hard(rows: list[dict[str, Any]]):
  """(row, its paired comparison with the same student on hard labels), in table order."""
  for row in rows[1:]:
    for pair in row.get("paired", []):
      if pair["baseline"] == "hard":
        yield row, pair


def verdict_sentence(rows: list[dict[str, Any]]) -> str | None:
  """One plain sentence on what teaching bought over hard labels across the sweep, and how surely.

  Every taught row with a hard-label twin counts (none is picked as the best),
  grouped by verdict: e.g. "Against the same students on hard labels (same
  seeds, 3 each), the teacher gained linear +2.61, mlp +2.64 points, beyond
  seed noise (paired t-test p <= 0.004)." None when no row has a hard twin.
  """
  gains, losses, seeds = [], [], set()
  # Those within the noise, by why: the t-test says so, no seed differs, or too few seeds.
  noise, same, few = [], [], []
  several = len({(row["mode"], row["method"], row["soft_loss"]) for row in rows[1:]
                 if row["mode"] != "hard"}) > 1
  for row, pair in _against_hard(rows):
    if not pair["n"]:
      continue
    seeds.add(pair["n"])
    name = row["model"] + (f" ({_how_taught(row)})" if several else "")
    p = pair["t_p"] if pair["t_p"] is not None else pair["sign_p"]
    entry = (f"{name} {stats.signed_points(pair['mean_diff'])}", p)
    if pair["n"] > 1 and p is not None and p < stats.ALPHA:
      (gains if pair["mean_diff"] > 0 else losses).append(entry)
    elif pair["n"] > 1 and pair["t_p"] is not None:
      noise.append(entry)
    elif pair["n"] > 1 and pair["sign_p"] is None:
      same.append(entry)
    else:  # one seed, or one difference on every seed that the sign test cannot call yet
      few.append(entry)
  if not seeds:
    return None
  count = "/".join(str(n) for n in sorted(seeds))
  clauses = []
  for entries, how in ((gains, "gained"), (losses, "lost")):
    if entries:
      worst = max(p for _, p in entries)
      clauses.append(f"{how} {', '.join(text for text, _ in entries)} points, beyond seed noise "
                     f"(paired p {'<' if worst < 0.001 else '<='} {max(worst, 0.001):.3g})")
  if noise:
    least = min(p for _, p in noise)
    clauses.append(f"changed {', '.join(text for text, _ in noise)} points, within seed noise "
                   f"(paired t-test p {'=' if len(noise) == 1 or least > 0.9995 else '>='} "
                   f"{least:.3g})")  # every p is 1 when the least is: not 'p >= 1'
  if same:
    clauses.append(f"changed {', '.join(text for text, _ in same)} points: no difference on "
                   "any seed")
  if few:
    clauses.append(f"changed {', '.join(text for text, _ in few)} points: too few seeds to tell")
  return (f"Against the same students on hard labels (same seeds, {count} each), the teacher "
          + "; and ".join(clauses) + ".")


def out_of_date(sweep_dir: Path | str, saved: dict[str, Any]) -> list[str]:
  """What changed in a sweep's folder since its sweep.json (`saved`) was written, in words: runs
  gone, runs trained again (another parameter hash), a teacher trained again. Empty when its
  tables still describe the runs on disk."""
  gone, retrained = [], []
  learned_from = None
  for run in saved.get("runs", []):
    recorded = run.get("summary") or {}
    learned_from = learned_from or recorded.get("teacher_params_sha256")
    folder = Path(sweep_dir) / run["name"]
    if not (folder / rundir.SUMMARY_FILE).is_file():
      gone.append(run["name"])
    elif rundir.trained_again(folder, recorded.get("params_sha256")):
      retrained.append(run["name"])
  reasons = []
  if gone:
    reasons.append(f"{first_few(gone, 3)} {'is' if len(gone) == 1 else 'are'} gone")
  if retrained:
    reasons.append(f"{first_few(retrained, 3)} {'was' if len(retrained) == 1 else 'were'} "
                   "trained again")
  teacher_dir = saved.get("settings", {}).get("teacher_dir")
  if teacher_dir and rundir.trained_again(Path(teacher_dir), learned_from):
    reasons.append("its teacher was trained again")
  return reasons


def out_of_date_note(sweep_dir: Path | str, reasons: list[str]) -> str:
  """The line that stands for a sweep's verdict and tables once `out_of_date` found `reasons`;
  runs trained again need --overwrite to be made the sweep's again, gone ones do not."""
  changed = any(not reason.endswith("gone") for reason in reasons)
  how = " with --overwrite (it trains the changed runs again)" if changed else ""
  return (f"{sweep_dir}: its sweep.json no longer matches its runs ({'; '.join(reasons)}), so "
          f"its verdict and tables are left out: run the same `distill sweep` again{how} to "
          "remake them")


def left_out_note(sweep_dir: Path | str, saved: dict[str, Any]) -> str | None:
  """A note naming the finished runs in a sweep's folder that its sweep.json leaves out (an
  earlier sweep command's, with other models, modes or seeds); None when there are none."""
  if not Path(sweep_dir).is_dir():
    return None
  names = {run["name"] for run in saved.get("runs", [])}
  others = [name for name in rundir.runs_in(Path(sweep_dir)) if name not in names
            and rundir.folder_kind(Path(sweep_dir) / name) in rundir.FINISHED_RUNS]
  if not others:
    return None
  return (f"{sweep_dir} holds {len(others)} finished run{'s' if len(others) > 1 else ''} its "
          f"sweep.json leaves out ({first_few(others, 3)}), from another sweep command: give "
          f"them as folders to show them, e.g. {Path(sweep_dir) / others[0]}")


def across_sweeps(sweeps: list[tuple[Path | str, dict[str, Any]]]) -> list[str]:
  """Each later sweep's taught rows paired seed by seed with the first sweep's of the same
  model, mode, method and soft loss: two teachers, or two settings (-T 2 against -T 4), told
  apart beyond seed noise or not, as within one sweep. The lines `distill compare` prints; empty
  with fewer than two sweeps or no row in common. Hard-label rows are left out: the teacher
  changes nothing of them."""
  if len(sweeps) < 2:
    return []
  base_dir, base = sweeps[0]

  def key(row: dict[str, Any]) -> tuple:
    return row["model"], row["mode"], row["method"], row["soft_loss"]

  base_rows = {key(row): row for row in base.get("rows", [])[1:] if row["mode"] != "hard"}
  lines = []
  for other_dir, other in sweeps[1:]:
    pairs = [(row, base_rows[key(row)]) for row in other.get("rows", [])[1:]
             if key(row) in base_rows]
    if pairs:
      lines.append(f"{sweep_name(other_dir, other)} against {sweep_name(base_dir, base)}, "
                   "paired by seed:")
      lines += [f"  {row['model']}, {_how_taught(row)}: "
                f"{compare(_by_seed(row), _by_seed(twin), str(base_dir))['verdict']}"
                for row, twin in pairs]
  return lines


def _by_seed(row: dict[str, Any]) -> dict[int, float]:
  return dict(zip(row["seeds"], row["test_accuracies"], strict=True))


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
  """The aggregated rows as a Markdown table (percentages, mean ± sample std over seeds), and
  under it `gap_note`'s line where it has one."""
  note = gap_note(rows)
  return markdown_table(*table_cells(rows)) + (f"\n\n{note}" if note else "")


def gap_note(rows: list[dict[str, Any]]) -> str | None:
  """One line on why taught rows' gap closed reads '-': their model's hard-label baseline
  already reaches the teacher (no gap to close) or comes within its seed spread of it (no gap
  to measure), or the sweep has none; None where no taught row's is empty."""
  if not rows:
    return None
  teacher = rows[0]["test_accuracy_mean"]
  hard_rows = _hard_rows(rows)
  hard = {model: row["test_accuracy_mean"] for model, row in hard_rows.items()}
  empty = list(dict.fromkeys(row["model"] for row in rows[1:]
                             if row["mode"] != "hard" and row["gap_closed"] is None))
  reached = [model for model in empty if model in hard and hard[model] >= teacher]
  close = [model for model in empty if model in hard and hard[model] < teacher]
  missing = [model for model in empty if model not in hard]
  reasons = []
  if reached:
    models = " and ".join(f"{model} ({_pct(hard[model])}%)" for model in reached)
    reasons.append(f"{models} on hard labels already reach{'es' if len(reached) == 1 else ''} "
                   f"the teacher ({_pct(teacher)}%), so there is no gap to close")
  if close:
    models = " and ".join(
        f"{model} ({_pct(hard[model])} ± {_pct(hard_rows[model]['test_accuracy_std'] or 0.0)}%)"
        for model in close)
    reasons.append(f"the teacher ({_pct(teacher)}%) is within the seed spread of {models} on "
                   "hard labels, too small a gap to measure a share of")
  if missing:
    reasons.append(f"{' and '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no hard-label "
                   "run to measure it from (add --mode hard)")
  return f"gap closed is '-': {'; '.join(reasons)}." if reasons else None


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
  """The sweep table's header and rows of text cells (Markdown here, HTML in the report)."""
  header = ["student", "mode", "method", "soft loss", "seeds", "params", "test acc %",
            "agree %", "gap closed", "train s"]
  body = []
  for row in rows:
    teacher = row["role"] == "teacher"
    accuracy = _pct(row["test_accuracy_mean"])
    if not teacher and row["n"] > 1:
      accuracy += f" ± {100 * row['test_accuracy_std']:.2f}"
    if row["mode"] == "hard":
      gap = "baseline"
    elif row["gap_closed"] is None:
      gap = "-"
    else:
      gap = f"{round(100 * row['gap_closed'])}%"  # an int: never '-0%'
    seconds = row["train_seconds_mean"]
    cells = [
        (f"teacher ({row['model']})" if row["model"] else "teacher") if teacher
        else str(row["model"]),
        "-" if teacher else row["mode"],
        row.get("method") or "-",
        row["soft_loss"] or "-",
        "-" if teacher else str(row["n"]),
        "-" if row["params"] is None else f"{row['params']:,}",
        accuracy,
        _pct(row["agreement_mean"]),
        gap,
        seconds_cell(seconds),
    ]
    body.append(cells)
  return header, body


def format_paired(rows: list[dict[str, Any]]) -> str:
  """Every row's paired comparisons as a Markdown table, one line per (variant, baseline).

  Empty text when no row has a baseline to pair with (say, a sweep without
  hard runs and with kd alone).
  """
  header, body = paired_cells(rows)
  return markdown_table(header, body) if body else ""


def paired_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
  """The paired table's header and rows of text cells (for Markdown here, HTML in the report)."""
  header = ["student", "mode", "method", "soft loss", "vs", "seeds", "diff pts",
            "t-test p", "sign p", "verdict"]
  body = [[str(row["model"]), row["mode"], row.get("method") or "-", row["soft_loss"] or "-",
           pair["baseline"], str(pair["n"]), format_diff(pair), format_p(pair["t_p"]),
           format_p(pair["sign_p"]), pair["verdict"]]
          for row in rows for pair in row.get("paired", [])]
  return header, body




def sweep_name(sweep_dir: Path | str, saved: dict[str, Any]) -> str:
  """A sweep's folder with the recipe and settings every run of it shared, as its verdict is
  headed: 'runs/sw2 (--set student.temperature=4 student.steps=200)'; two sweeps of one
  teacher read alike otherwise."""
  return f"{sweep_dir}{_shared_settings(saved.get('settings', {}))}"


def _shared_settings(settings: dict[str, Any]) -> str:
  parts = []
  if settings.get("recipe"):
    parts.append(f"--recipe {Path(settings['recipe']).name}")
  if settings.get("overrides"):
    parts.append("--set " + " ".join(settings["overrides"]))
  return f" ({', '.join(parts)})" if parts else ""


def sweep_markdown(table: str, paired: str, teacher_dir: Path | str,
                   settings: dict[str, Any]) -> str:
  """sweep.md: a header line on what the numbers are (the teacher, the seeds, and the recipe
  and settings every run shared), the table, and the paired differences."""
  seeds_text = ", ".join(map(str, settings["seeds"]))
  header = (f"# Sweep against teacher `{teacher_dir}`, "
            f"seed{'s' if len(settings['seeds']) > 1 else ''} {seeds_text}"
            f"{_shared_settings(settings)}\n\n"
            "Every run's test accuracy is the accuracy on the test split after its last "
            "training step (never a best epoch or checkpoint).")
  note = ("Test accuracy is the mean ± sample std over seeds, agreement is top-1 agreement with "
          "the teacher on the test set, gap closed = (mean acc - the same model's hard mean) / "
          "(teacher acc - that hard mean), '-' where the model has no hard run here or its hard "
          "mean comes within its seed spread (sample std) of the teacher.")
  parts = [header, table, note]
  if paired:
    parts += ["## Paired differences",
              "Per seed, the variant's test accuracy minus its baseline's with the same seed "
              "(same initialisation and data order): hard = the same model on hard labels, "
              "kd = the same model, mode and soft loss with the kd loss (kd targets: with kd on "
              "exported targets, for hints and where the sweep has no kd run in that mode). "
              "diff pts: mean ± sample std of those differences in percentage points over the "
              "seeds both ran "
              "(seeds only one ran are left out); t-test p: two-sided paired t-test; sign p: "
              "exact two-sided sign test, ties dropped. p < 0.05 counts as beyond seed noise.",
              paired]
  return "\n\n".join(parts) + "\n"

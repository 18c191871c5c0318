"""Several students against one teacher, over seeds, in one call: `distill sweep`.

Every combination of model x mode (x method x soft loss) x seed trains in its
own run directory under the sweep's folder, named
`<model>-<mode>[-<method>][-<soft_loss>]-s<seed>` (the method unless it is kd,
the soft loss only when more than one is swept). At the end the runs are
grouped over seeds and written as `sweep.json` (rows, per-run summaries and the
sweep's settings) and `sweep.md` (a Markdown table: test accuracy mean ± std,
agreement with the teacher, and the share of the teacher-vs-hard-label gap each
mode closes; then the paired per-seed differences of every variant against
its baselines, see `distill.stats`).

A run's test accuracy is that of the weights its last training step leaves
(`loop.fit` returns the final state and the workflow evaluates it), never a
best epoch or checkpoint, so picking the best of many evaluations cannot flatter
a variant.

A mode says how the student learns:

  hard     one-hot labels (loss=hard, teaching=targets): the baseline to beat
  targets  the teacher's exported probabilities (loss=soft, teaching=targets)
  online   the teacher run on the student's own batches (loss=soft, teaching=online)
  views    exported probabilities of augmented views (loss=soft, teaching=views)

A method (`student.method`) says which distillation loss the modes other than
hard use: kd (the classic loss, the default), dkd, dist, token, hint. Hard
labels involve no teacher, so hard runs are not repeated per method. A method
that can learn only one way runs that way whatever the modes say: hint needs
the teacher's inner layer, so `--mode targets --method kd --method hint` trains
kd on exported targets and hint online (paired with kd on targets: the hint
run is un-augmented like them, so the pair differs by the hint term alone).

Re-running a sweep keeps every finished run whose recipe is unchanged and
trains only what is missing, so an interrupted sweep picks up where it stopped.
With `jobs` > 1 the runs train side by side, each in a process of its own on
its share of the CPU cores (`distill.workers`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distill import config as config_lib
from distill import interrupts, rundir, stats
from distill.compare import markdown_table, seconds_cell
from distill.console import Console
from distill.errors import UserError
from distill.io import read_json, write_json, write_text
from distill.stats import compare, format_diff, format_p

MODES = ("hard", "targets", "online", "views")
# The method every sweep has always trained: the classic distillation loss. Its
# runs keep the names they had before methods became an axis.
DEFAULT_METHOD = "kd"
SWEEP_JSON = rundir.SWEEP_FILE
SWEEP_MD = "sweep.md"
# The sweep owns these keys through its axes; a --set for one of them would be
# silently overridden by (or would silently override) the axis.
_AXIS_KEYS = {"student.model": "--model", "student.loss": "--mode", "student.teaching": "--mode",
              "student.soft_loss": "--soft-loss", "student.method": "--method",
              "seed": "--seed"}


def _axis(values: Iterable[Any], name: str, valid: Iterable[Any] | None = None) -> list[Any]:
  """The axis' values in the order given, without repeats, each checked against `valid`."""
  values = list(dict.fromkeys(values))
  if not values:
    raise UserError(f"the sweep needs at least one {name}")
  if valid is not None:
    valid = list(valid)
    for value in values:
      if value not in valid:
        raise UserError(f"unknown {name} '{value}'; valid: {', '.join(map(str, valid))}")
  return values


def run_name(model: str, mode: str, soft_loss: str | None, seed: int, *,
             name_soft_loss: bool, method: str | None = None) -> str:
  """A run's folder name inside the sweep: `<model>-<mode>[-<method>][-<soft_loss>]-s<seed>`.

  The method is named unless it is kd (or None, for hard runs): kd runs keep
  their names whichever methods a sweep adds, so adding one reuses them.
  """
  parts = [model, mode]
  if method not in (None, DEFAULT_METHOD):
    parts.append(method)
  if name_soft_loss and soft_loss is not None:
    parts.append(soft_loss)
  return "-".join(parts) + f"-s{seed}"


def mode_overrides(mode: str, soft_loss: str | None) -> list[str]:
  """The recipe overrides that make a student learn in `mode`."""
  if mode == "hard":
    return ["student.loss=hard", "student.teaching=targets"]
  return ["student.loss=soft", f"student.teaching={mode}", f"student.soft_loss={soft_loss}"]


def plan_runs(models: list[str], modes: list[str], soft_losses: list[str],
              seeds: list[int], methods: Iterable[str] = (DEFAULT_METHOD,)) -> list[dict[str, Any]]:
  """Every (model, mode, method, soft loss, seed) of the sweep, in training order.

  The method and soft loss multiply only the modes that learn from the
  teacher; the hard baseline runs once per model and seed, with `method` and
  `soft_loss` None. A method with one way to learn (`config.METHOD_TEACHING`:
  hint, online) takes that mode in place of every teaching mode, once.
  """
  name_soft_loss = len(soft_losses) > 1
  runs, planned = [], set()
  for model in models:
    for mode in modes:
      for method in [None] if mode == "hard" else methods:
        run_mode = mode if method is None else config_lib.METHOD_TEACHING.get(method, mode)
        for soft_loss in [None] if mode == "hard" else soft_losses:
          for seed in seeds:
            name = run_name(model, run_mode, soft_loss, seed, method=method,
                            name_soft_loss=name_soft_loss)
            if name in planned:
              continue
            planned.add(name)
            runs.append({"name": name, "model": model, "mode": run_mode, "method": method,
                         "soft_loss": soft_loss, "seed": seed})
  return runs


def method_overrides(mode: str, method: str | None) -> list[str]:
  """The recipe override that picks the run's distillation method.

  Hard runs get kd, the default, so a recipe that sets another method cannot
  turn the hard-label baseline into something else.
  """
  return [f"student.method={DEFAULT_METHOD if mode == 'hard' else method}"]


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
    already matches the teacher (no gap to close); and `paired` (see
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
      "train_seconds_mean": teacher.get("train_seconds"), "gap_closed": None, "paired": [],
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
  hard = {row["model"]: row["test_accuracy_mean"] for row in rows[1:] if row["mode"] == "hard"}
  for row in rows[1:]:
    baseline = hard.get(row["model"])
    if row["mode"] != "hard" and baseline is not None and teacher_acc > baseline:
      row["gap_closed"] = (row["test_accuracy_mean"] - baseline) / (teacher_acc - baseline)
  for row in rows[1:]:
    row["paired"] = paired_rows(row, rows[1:])
  return rows


def paired_rows(row: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """A student row's paired per-seed comparisons (`stats.compare`) with its baselines.

  The baselines: `hard`, the same model on hard labels (for every row but the
  hard ones); and, for rows of another method, `kd`: the same model, mode and
  soft loss with the classic kd loss, so that only the method differs, or,
  when the sweep has no such run (hint, say, needs online teaching, plain KD
  is usually swept on targets), `kd targets`: the same model and soft loss
  with kd on exported targets. A baseline the sweep did not train is left out.
  """
  def find(mode: str, method: str | None, soft_loss: str | None) -> dict[str, Any] | None:
    return next((other for other in rows if other["model"] == row["model"]
                 and other["mode"] == mode and other["method"] == method
                 and other["soft_loss"] == soft_loss), None)

  if row["mode"] == "hard":
    return []
  baselines = [("hard", find("hard", None, None))]
  if row["method"] != DEFAULT_METHOD:
    same_mode = find(row["mode"], DEFAULT_METHOD, row["soft_loss"])
    if same_mode is not None or row["mode"] == "targets":
      baselines.append((DEFAULT_METHOD, same_mode))
    else:
      baselines.append((f"{DEFAULT_METHOD} targets",
                        find("targets", DEFAULT_METHOD, row["soft_loss"])))
  return [compare(_by_seed(row), _by_seed(baseline), name)
          for name, baseline in baselines if baseline is not None]


def headline(rows: list[dict[str, Any]]) -> list[str]:
  """Plain sentences on what teaching bought each student over its hard labels, and how surely.

  One per taught row that has a hard-label twin in the sweep, in table order:
  every row is reported, none picked as the best (that would choose on the
  test set). e.g. "mlp, kd on targets: +3.12 ± 0.20 pts over hard (3 seeds,
  t-test p = 0.002): a gain beyond seed noise".
  """
  lines = []
  for row, pair in _against_hard(rows):
    loss = f", {row['soft_loss']}" if row["soft_loss"] not in (None, "soft_ce") else ""
    lines.append(f"{row['model']}, {_how_taught(row)}{loss}: {pair['verdict']}")
  return lines


def _how_taught(row: dict[str, Any]) -> str:
  """'kd on targets', 'dkd on views', 'hint online': a taught row's method and mode in words."""
  return f"{row['method']} {'online' if row['mode'] == 'online' else 'on ' + row['mode']}"


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
  gains, losses, unsure, seeds = [], [], [], set()
  several = len({(row["mode"], row["method"], row["soft_loss"]) for row in rows[1:]
                 if row["mode"] != "hard"}) > 1
  for row, pair in _against_hard(rows):
    if not pair["n"]:
      continue
    seeds.add(pair["n"])
    name = row["model"] + (f" ({_how_taught(row)})" if several else "")
    p = pair["t_p"] if pair["t_p"] is not None else pair["sign_p"]
    entry = (f"{name} {100 * pair['mean_diff']:+.2f}", p)
    beyond = pair["n"] > 1 and p is not None and p < stats.ALPHA
    (gains if beyond and pair["mean_diff"] > 0 else losses if beyond else unsure).append(entry)
  if not seeds:
    return None
  count = "/".join(str(n) for n in sorted(seeds))
  clauses = []
  for entries, how in ((gains, "gained"), (losses, "lost")):
    if entries:
      worst = max(p for _, p in entries)
      clauses.append(f"{how} {', '.join(text for text, _ in entries)} points, beyond seed noise "
                     f"(paired p {'<' if worst < 0.001 else '<='} {max(worst, 0.001):.3g})")
  if unsure:
    clauses.append(f"changed {', '.join(text for text, _ in unsure)} points, within seed noise "
                   "(or too few seeds to tell)")
  return (f"Against the same students on hard labels (same seeds, {count} each), the teacher "
          + "; and ".join(clauses) + ".")


def _by_seed(row: dict[str, Any]) -> dict[int, float]:
  return dict(zip(row["seeds"], row["test_accuracies"], strict=True))


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
  """The aggregated rows as a Markdown table (percentages, mean ± sample std over seeds)."""
  return markdown_table(*table_cells(rows))


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
      gap = f"{100 * row['gap_closed']:.0f}%"
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


def _check_overrides(overrides: Iterable[str]) -> None:
  for text in overrides:
    key, _ = config_lib.parse_override(text)
    if key in _AXIS_KEYS:
      raise UserError(f"--set {key} is what the sweep's {_AXIS_KEYS[key]} sets; "
                      f"use {_AXIS_KEYS[key]} instead")


def _finished_state(workdir: Path, expected_hash: str, teacher_sha: str | None = None) -> str:
  """'new', 'same' (finished with this recipe and teacher), 'resume', or 'other-finished' /
  'other-unfinished'.

  `teacher_sha`: the teacher's parameter hash, when known. A run taught by
  other parameters (the teacher folder was retrained since) is not the same
  run, even with the same recipe.
  """
  summary_path = workdir / rundir.SUMMARY_FILE
  if summary_path.exists():
    summary = read_json(summary_path, "run summary")
    taught_by = summary.get("teacher_params_sha256")
    same_teacher = teacher_sha is None or taught_by is None or taught_by == teacher_sha
    return ("same" if summary.get("recipe_hash") == expected_hash and same_teacher
            else "other-finished")
  saved = rundir.saved_recipe(workdir)
  if saved is not None:
    return ("resume" if config_lib.recipe_hash(saved, "student") == expected_hash
            else "other-unfinished")
  return "new"


def run_sweep(teacher_dir: Path, out_dir: Path, *, models: Iterable[str] = ("cnn",),
              modes: Iterable[str] = ("hard", "targets"), soft_losses: Iterable[str] = ("soft_ce",),
              seeds: Iterable[int] = (0, 1, 2), methods: Iterable[str] = (DEFAULT_METHOD,),
              recipe: str | None = None, overrides: Iterable[str] = (), overwrite: bool = False,
              quiet: bool = False, jobs: int = 1,
              console: Console | None = None) -> dict[str, Any]:
  """Trains every student of the sweep against one teacher, then tabulates them over seeds.

  Everything is checked before anything trains: the axis values, every run's
  recipe, and what each run folder already holds. A finished run with the
  same recipe is kept and reused; one made with another recipe stops the
  sweep unless `overwrite` (which then retrains it, as does an unfinished run
  with another recipe).

  Args:
    teacher_dir: a finished teacher run with exported targets (or a folder of
      exported targets, such as an ensemble's, whose teacher row then has
      only the test accuracy).
    out_dir: the sweep's folder; each run gets a sub-folder, plus sweep.json
      and sweep.md.
    models: student models (vit, cnn, mlp, linear).
    modes: hard, targets, online, views (see the module docstring).
    soft_losses: soft_ce, kl; each multiplies the modes other than hard.
    seeds: one run per seed for every other combination.
    methods: distillation methods (`student.method`: kd, dkd, dist, token,
      hint); each multiplies the modes other than hard, but hint always
      runs online (it needs the teacher's inner layer). A combination the
      recipe refuses (a token for a CNN) stops the sweep before anything
      trains.
    recipe: a recipe name or file for the students (default: the teacher's).
    overrides: `key=value` applied to every run (not the swept keys).
    overwrite: retrain runs that were made with another recipe.
    quiet: no progress notes or bars.
    jobs: how many runs train at once, each in a process of its own on its
      share of the CPU cores (see `distill.workers`); 1 trains them one
      after the other in this process.
    console: where to print (default: stderr).

  Returns:
    A dict with `rows` (see `aggregate`), `runs` (each run's axis values,
    folder, whether it was reused, and summary), `settings`, `table` (the
    Markdown text) and the paths `json` and `markdown`.
  """
  from distill.models import model_names  # noqa: PLC0415

  console = console or Console(quiet)
  teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
  models = _axis(models, "model", model_names())
  modes = _axis(modes, "mode", MODES)
  soft_losses = _axis(soft_losses, "soft loss", config_lib.SOFT_LOSSES)
  seeds = _axis((int(s) for s in seeds), "seed")
  methods = _axis(methods, "method", config_lib.METHODS)
  overrides = list(overrides)
  _check_overrides(overrides)
  planned = plan_runs(models, modes, soft_losses, seeds, methods)
  online = any(run["mode"] == "online" for run in planned)
  rundir.check_teacher_folder(teacher_dir, needs="model" if online else "targets")
  teacher_summary = teacher_dir / rundir.SUMMARY_FILE
  # A folder of exported targets (an ensemble's) has no summary; its runs still
  # know the teacher's test accuracy.
  teacher = read_json(teacher_summary, "teacher summary") if teacher_summary.exists() else None
  rundir.check_workdir(out_dir)
  runs = _checked_runs(planned, teacher_dir,
                       out_dir, recipe, overrides, overwrite=overwrite,
                       teacher_sha=(teacher or {}).get("params_sha256"))

  if jobs != 1:
    from distill import workers  # noqa: PLC0415

    jobs = workers.jobs_on_this_backend(jobs, console.info)
    workers.core_shares(workers.available_cores(), jobs)  # enough cores, before anything trains
  start = time.perf_counter()
  _train_missing(runs, teacher_dir, console, jobs)

  if teacher is None:
    teacher = {"test_accuracy": runs[0]["summary"]["teacher_test_accuracy"]}
  # Absolute, so sweep.json still names the folders when read from another directory.
  recipe_file = recipe and Path(recipe).expanduser()
  settings = {"teacher_dir": str(teacher_dir.resolve()), "out_dir": str(out_dir.resolve()),
              "models": models, "modes": modes, "methods": methods, "soft_losses": soft_losses,
              "seeds": seeds,
              "recipe": str(recipe_file.resolve()) if recipe_file and recipe_file.is_file()
              else recipe,
              "overrides": overrides, "overwrite": overwrite}
  return _write_sweep(runs, teacher, settings, teacher_dir, out_dir, start=start)


def _checked_runs(runs: list[dict[str, Any]], teacher_dir: Path, out_dir: Path,
                  recipe: str | None, overrides: list[str], *,
                  overwrite: bool, teacher_sha: str | None = None) -> list[dict[str, Any]]:
  """Gives each planned run its folder, recipe and state; stops on folders of other recipes.

  Every run's recipe is resolved and its folder read before anything trains,
  so a bad value or a clash fails the sweep at once rather than hours in.
  """
  from distill import run_recipe  # noqa: PLC0415

  for run in runs:
    run["dir"] = out_dir / run["name"]
    axis_overrides = [f"student.model={run['model']}", f"seed={run['seed']}",
                      *mode_overrides(run["mode"], run["soft_loss"]),
                      *method_overrides(run["mode"], run["method"])]
    try:
      run["recipe"] = run_recipe.student_recipe(
          teacher_dir, recipe, [*overrides, *axis_overrides], for_hard_labels_too=True)
    except UserError as e:
      raise _named(run, e) from None
    run["state"] = _finished_state(run["dir"], config_lib.recipe_hash(run["recipe"], "student"),
                                   teacher_sha)
  clashes = [run for run in runs if run["state"].startswith("other")]
  if clashes and not overwrite:
    names = ", ".join(str(run["dir"]) for run in clashes[:3])
    names += ", ..." if len(clashes) > 3 else ""
    raise UserError(f"{len(clashes)} run folder(s) hold runs made with another recipe or "
                    f"teacher: {names}; "
                    "pass --overwrite to retrain them, or choose another --out")
  return runs


def _train_missing(runs: list[dict[str, Any]], teacher_dir: Path, console: Console,
                   jobs: int = 1) -> None:
  """Trains (or resumes) every run not finished with its recipe; reads the others' summaries.

  `jobs` > 1 trains that many runs at once, each in a process of its own on
  its share of the CPU cores (`distill.workers`).
  """
  missing = []
  for i, run in enumerate(runs, 1):
    run["label"] = f"[{i}/{len(runs)}] {run['name']}"
    if run["state"] != "same":
      missing.append(run)
      continue
    run["summary"] = read_json(run["dir"] / rundir.SUMMARY_FILE, "run summary")
    run["reused"] = True
    console.info(f"{run['label']}: finished earlier with the same recipe, kept "
                 f"(test accuracy {run['summary']['test_accuracy']:.4f})")
  if jobs > 1 and len(missing) > 1:
    _train_side_by_side(missing, teacher_dir, console, min(jobs, len(missing)))
    return
  for run in missing:
    console.info(f"{run['label']}: training" + (" (resuming)" if run["state"] == "resume" else ""))
    with _naming(run):
      run["summary"] = train_run(run["recipe"], teacher_dir, run["dir"], run["state"])
    _trained(run, console)


def train_run(recipe: dict[str, Any], teacher_dir: Path, workdir: Path,
              state: str) -> dict[str, Any]:
  """Trains one run of the sweep in this process (a worker's task); returns its summary.

  `state` is `_finished_state`'s: an unfinished run of another recipe starts
  over, a finished one is replaced.
  """
  from distill import workflow  # noqa: PLC0415

  return workflow.train_student(recipe, teacher_dir, workdir,
                                restart=state == "other-unfinished",
                                overwrite=state == "other-finished", quiet=True)


# How the loop's stop message ends, and how the sweep's does.
_RESUME = "Run the same command again to resume."


def _train_side_by_side(missing: list[dict[str, Any]], teacher_dir: Path, console: Console,
                        jobs: int) -> None:
  """`missing`'s runs, `jobs` at a time in worker processes; stops at the first that fails.

  No run starts once one has failed or a stop signal (Ctrl-C, SIGTERM) has
  come. Those in training when one fails finish; a stop signal stops them at a
  checkpoint. Either way the sweep waits for its workers to exit, and running
  the same command again resumes the runs.
  """
  from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

  from distill import workers  # noqa: PLC0415

  stopped = not_started = 0
  with workers.core_pool(jobs) as (pool, how):
    console.info(f"training {len(missing)} runs, {how}")
    # Seed by seed: runs that differ only in their seed run the same programs, so the first
    # seed's runs go first, each compiling its own, and the later seeds find them in the
    # compilation cache rather than two workers compiling one program at once.
    seeds = list(dict.fromkeys(run["seed"] for run in missing))
    order = sorted(missing, key=lambda run: seeds.index(run["seed"]))
    futures = {pool.submit(train_run, run["recipe"], teacher_dir, run["dir"], run["state"]): run
               for run in order}
    for future in concurrent.futures.as_completed(futures):
      run = futures[future]
      try:
        run["summary"] = future.result()
      except workers.NotStarted:
        not_started += 1  # the sweep was stopped before a worker took the run up
        continue
      except BrokenProcessPool:
        raise _named(run, UserError("a worker process died (out of memory?) while training; "
                                    "run the sweep again to resume, with fewer --jobs")) from None
      except UserError as e:
        if pool.signal_name is None:
          raise _named(run, e) from None
        # Stopped by the signal, as the loop says ("stopped by SIGTERM at step N; checkpoint
        # saved"); how to resume is said once, for the whole sweep.
        console.info(f"{run['label']}: {str(e).removesuffix(' ' + _RESUME)}")
        stopped += 1
        continue
      _trained(run, console)
  if pool.signal_name is not None:
    parts = []
    if stopped:
      parts.append(f"{_runs(stopped)} in training saved a checkpoint")
    if not_started:
      parts.append(f"{not_started if stopped else _runs(not_started)} did not start")
    what = ", ".join(parts) or "every run had finished"
    raise UserError(f"stopped by {pool.signal_name}: {what}. {_RESUME}",
                    exit_code=interrupts.exit_status(pool.signal_name))


def _runs(count: int) -> str:
  """'1 run', '2 runs'."""
  return f"{count} run{'s' if count != 1 else ''}"


@contextlib.contextmanager
def _naming(run: dict[str, Any]):
  """A UserError while `run` trains, with the run's name in front."""
  try:
    yield
  except UserError as e:
    raise _named(run, e) from None


def _named(run: dict[str, Any], error: UserError) -> UserError:
  """`error` with the name of the run it is about in front."""
  return UserError(f"{run['name']}: {error}", exit_code=error.exit_code)


def _trained(run: dict[str, Any], console: Console) -> None:
  """Marks `run` as trained here and prints its result line."""
  run["reused"] = False
  summary = run["summary"]
  console.info(f"{run['label']}: test accuracy {summary['test_accuracy']:.4f}, agreement "
               f"{summary['agreement_with_teacher']:.4f} in {summary['wall_seconds']:.0f}s")


def _write_sweep(runs: list[dict[str, Any]], teacher: dict[str, Any], settings: dict[str, Any],
                 teacher_dir: Path, out_dir: Path, *, start: float) -> dict[str, Any]:
  """Aggregates the finished runs over seeds and writes sweep.json and sweep.md."""
  rows = aggregate(runs, teacher)
  table, paired = format_table(rows), format_paired(rows)
  result = {
      "settings": settings,
      "teacher": {key: teacher.get(key) for key in ("model", "params", "test_accuracy",
                                                    "train_seconds", "dataset", "steps")},
      "rows": rows,
      "runs": [{"name": run["name"], "dir": str(Path(run["dir"]).resolve()), "model": run["model"],
                "mode": run["mode"], "method": run["method"], "soft_loss": run["soft_loss"],
                "seed": run["seed"], "reused": run["reused"], "summary": run["summary"]}
               for run in runs],
      "sweep_seconds": round(time.perf_counter() - start, 3),
  }
  json_path, md_path = out_dir / SWEEP_JSON, out_dir / SWEEP_MD
  write_json(json_path, result)
  write_text(md_path, sweep_markdown(table, paired, teacher_dir, settings["seeds"]))
  return {**result, "table": table, "paired_table": paired, "headline": headline(rows),
          "verdict": verdict_sentence(rows),
          "json": json_path, "markdown": md_path}


def sweep_markdown(table: str, paired: str, teacher_dir: Path | str, seeds: list[int]) -> str:
  """sweep.md: a header line on what the numbers are, the table, and the paired differences."""
  seeds_text = ", ".join(map(str, seeds))
  header = (f"# Sweep against teacher `{teacher_dir}`, seeds {seeds_text}\n\n"
            "Every run's test accuracy is the accuracy on the test split after its last "
            "training step (never a best epoch or checkpoint).")
  note = ("Test accuracy is the mean ± sample std over seeds, agreement is top-1 agreement with "
          "the teacher on the test set, gap closed = (mean acc - the same model's hard mean) / "
          "(teacher acc - that hard mean), '-' where the model has no hard run here or its hard "
          "mean already reaches the teacher.")
  parts = [header, table, note]
  if paired:
    parts += ["## Paired differences",
              "Per seed, the variant's test accuracy minus its baseline's with the same seed "
              "(same initialisation and data order): hard = the same model on hard labels, "
              "kd = the same model, mode and soft loss with the kd loss (kd targets: with kd on "
              "exported targets, where the sweep has no kd run in that mode). diff pts: mean ± "
              "sample std of those differences in percentage points over the seeds both ran "
              "(seeds only one ran are left out); t-test p: two-sided paired t-test; sign p: "
              "exact two-sided sign test, ties dropped. p < 0.05 counts as beyond seed noise.",
              paired]
  return "\n\n".join(parts) + "\n"

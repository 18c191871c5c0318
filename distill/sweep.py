"""Several students against one teacher, over seeds, in one call: `distill sweep`.

Every combination of model x mode (x method x soft loss) x seed trains in its
own run directory under the sweep's folder, named
`<model>-<mode>[-<method>][-<soft_loss>]-s<seed>` (the method unless it is kd,
the soft loss only when more than one is swept). At the end the runs are
grouped over seeds and written as `sweep.json` (rows, per-run summaries and the
sweep's settings) and `sweep.md` (a Markdown table: test accuracy mean ± std,
agreement with the teacher, and the share of the teacher-vs-hard-label gap each
mode closes; then the paired per-seed differences of every variant against
its baselines; `distill.sweep_results` makes them).

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

from distill import config as config_lib
from distill import interrupts, run_recipe, rundir
from distill.console import Console
from distill.errors import UserError, first_few
from distill.io import read_json, write_json, write_text
from distill.sweep_results import (
  DEFAULT_METHOD,
  aggregate,
  format_paired,
  format_table,
  headline,
  sweep_markdown,
  verdict_sentence,
)

MODES = ("hard", "targets", "online", "views")
# The soft loss every sweep has always trained by default; its runs go unnamed by it.
DEFAULT_SOFT_LOSS = "soft_ce"
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
             method: str | None = None) -> str:
  """A run's folder name inside the sweep: `<model>-<mode>[-<method>][-<soft_loss>]-s<seed>`.

  The method is named unless it is kd (or None, for hard runs), the soft loss
  unless it is soft_ce (or None): kd runs on soft_ce keep their names whichever
  methods and soft losses a sweep adds, so adding one reuses them.
  """
  parts = [model, mode]
  if method not in (None, DEFAULT_METHOD):
    parts.append(method)
  if soft_loss not in (None, DEFAULT_SOFT_LOSS):
    parts.append(soft_loss)
  return "-".join(parts) + f"-s{seed}"


def _earlier_run_name(run: dict[str, Any], name_soft_loss: bool) -> str:
  """The name sweeps before 2026-12 gave `run`: the soft loss named only when several were
  swept (soft_ce too), never when one was (kl too). A folder of that name is reused."""
  parts = [run["model"], run["mode"]]
  if run["method"] not in (None, DEFAULT_METHOD):
    parts.append(run["method"])
  if name_soft_loss and run["soft_loss"] is not None:
    parts.append(run["soft_loss"])
  return "-".join(parts) + f"-s{run['seed']}"


def mode_overrides(mode: str, soft_loss: str | None) -> list[str]:
  """The recipe overrides that make a student learn in `mode`."""
  if mode == "hard":
    return ["student.loss=hard", "student.teaching=targets"]
  # None: the run's method reads no soft loss (see `plan_runs`).
  return ["student.loss=soft", f"student.teaching={mode}",
          *([f"student.soft_loss={soft_loss}"] if soft_loss is not None else [])]


def plan_runs(models: list[str], modes: list[str], soft_losses: list[str],
              seeds: list[int], methods: Iterable[str] = (DEFAULT_METHOD,)) -> list[dict[str, Any]]:
  """Every (model, mode, method, soft loss, seed) of the sweep, in training order.

  The method and soft loss multiply only the modes that learn from the
  teacher; the hard baseline runs once per model and seed, with `method` and
  `soft_loss` None. The soft loss multiplies only the methods that read one
  (kd, hint): a dkd, dist or token run has `soft_loss` None, once. A method
  with one way to learn (`config.METHOD_TEACHING`: hint, online) takes that
  mode in place of every teaching mode, once.
  """
  from distill.teaching import reads_setting  # noqa: PLC0415

  runs, planned = [], set()
  for model in models:
    for mode in modes:
      for method in [None] if mode == "hard" else methods:
        run_mode = mode if method is None else config_lib.METHOD_TEACHING.get(method, mode)
        reads_soft_loss = method is not None and reads_setting(method, "soft_loss")
        for soft_loss in soft_losses if reads_soft_loss else [None]:
          for seed in seeds:
            name = run_name(model, run_mode, soft_loss, seed, method=method)
            if name in planned:
              continue
            planned.add(name)
            runs.append({"name": name, "model": model, "mode": run_mode, "method": method,
                         "soft_loss": soft_loss, "seed": seed})
  for run in runs:
    run["earlier_name"] = _earlier_run_name(run, name_soft_loss=len(soft_losses) > 1)
  return runs


def method_overrides(mode: str, method: str | None) -> list[str]:
  """The recipe override that picks the run's distillation method.

  Hard runs get kd, the default, so a recipe that sets another method cannot
  turn the hard-label baseline into something else.
  """
  return [f"student.method={DEFAULT_METHOD if mode == 'hard' else method}"]


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
  import jax  # noqa: PLC0415

  from distill.models import model_names  # noqa: PLC0415

  if jax.process_count() > 1:
    # Every process would train every run, into the same folders.
    raise UserError("a sweep runs on one host: start it without --coordinator (or "
                    "--distributed); each of its runs trains on every device of that host")

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
  if methods != [DEFAULT_METHOD] and all(run["method"] is None for run in planned):
    raise UserError(f"--method {' --method '.join(methods)} changes no run: every run of the "
                    "sweep learns from hard labels, which read no method; drop it, or add a "
                    "--mode that learns from the teacher")
  if soft_losses != [DEFAULT_SOFT_LOSS] and not any(run["soft_loss"] for run in planned):
    raise UserError(f"--soft-loss {' --soft-loss '.join(soft_losses)} changes no run: none of the "
                    "sweep reads a soft loss (hard labels read none, nor do methods dkd, dist "
                    "and token); drop it")
  online = any(run["mode"] == "online" for run in planned)
  rundir.check_teacher_folder(teacher_dir, needs="model" if online else "targets")
  from distill.student_teaching import check_sweep_teaching  # noqa: PLC0415

  check_sweep_teaching(teacher_dir, {run["mode"] for run in planned})
  run_recipe.note_teacher_overrides(overrides, teacher_dir, console)
  teacher_summary = teacher_dir / rundir.SUMMARY_FILE
  # A folder of exported targets (an ensemble's) has no summary; its runs still
  # know the teacher's test accuracy.
  teacher = read_json(teacher_summary, "teacher summary") if teacher_summary.exists() else None
  # Its sweep.json there would make the teacher's folder read as a sweep's.
  rundir.check_apart_from_teacher(out_dir, teacher_dir, flag="--out", why="", whose="the sweep",
                                  instead=teacher_dir.parent / "sweep")
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
  names = {run["name"] for run in runs}
  others = sorted(child.name for child in out_dir.iterdir()
                  if child.name not in names and (child / rundir.SUMMARY_FILE).is_file())
  if others:  # the earlier table covered them; this one will not
    console.info(f"note: {SWEEP_MD} and {SWEEP_JSON} cover this command's {_runs(len(runs))}; "
                 f"{_runs(len(others)).replace(' run', ' other finished run')} in {out_dir} "
                 f"({first_few(others)}) {'is' if len(others) == 1 else 'are'} left out: give "
                 "their --model, --mode, --method, --soft-loss and --seed values too to "
                 "tabulate them")
  return _write_sweep(runs, teacher, settings, teacher_dir, out_dir, start=start)


def _checked_runs(runs: list[dict[str, Any]], teacher_dir: Path, out_dir: Path,
                  recipe: str | None, overrides: list[str], *,
                  overwrite: bool, teacher_sha: str | None = None) -> list[dict[str, Any]]:
  """Gives each planned run its folder, recipe and state; stops on folders of other recipes.

  Every run's recipe is resolved and its folder read before anything trains,
  so a bad value or a clash fails the sweep at once rather than hours in.
  """
  for run in runs:
    earlier = run.pop("earlier_name", run["name"])
    if not (out_dir / run["name"]).exists() and (out_dir / earlier).is_dir():
      run["name"] = earlier  # an earlier sweep's folder of this run: reused, not retrained
    run["dir"] = out_dir / run["name"]
    axis_overrides = [f"student.model={run['model']}", f"seed={run['seed']}",
                      *mode_overrides(run["mode"], run["soft_loss"]),
                      *method_overrides(run["mode"], run["method"])]
    try:
      run["recipe"] = run_recipe.student_recipe(
          teacher_dir, recipe, [*overrides, *axis_overrides], shared_overrides=True)
    except UserError as e:
      raise _named(run, e) from None
    run["state"] = _finished_state(run["dir"], config_lib.recipe_hash(run["recipe"], "student"),
                                   teacher_sha)
  # One set of overrides serves every run, so a run may ignore one; no run reading it is a
  # mistake, refused as `distill student` refuses it.
  for text in overrides:
    reasons = [run_recipe.unread_setting(text, run["recipe"]["student"]) for run in runs]
    if all(reasons):
      taught = [reason for run, reason in zip(runs, reasons, strict=True) if run["method"]]
      raise UserError(f"no run of the sweep reads --set {text}: {(taught or reasons)[0]}")
  clashes = [run for run in runs if run["state"].startswith("other")]
  if clashes and not overwrite:
    names = ", ".join(str(run["dir"]) for run in clashes[:3])
    names += ", ..." if len(clashes) > 3 else ""
    raise UserError(f"{len(clashes)} run folder(s) hold runs made with another recipe or "
                    f"teacher: {names} ({clashes[0]['name']}: {_what_changed(clashes[0])}); "
                    "pass --overwrite to retrain them, or choose another --out")
  return runs


def _what_changed(run: dict[str, Any]) -> str:
  """What differs between a run folder's recipe and the one the sweep would give it now."""
  changes = config_lib.run_recipe_changes(run["dir"], run["recipe"], "student")
  if changes is None:
    known = rundir.saved_recipe(run["dir"]) is not None
    return "the same recipe, taught by another teacher" if known else "its recipe is unknown"
  return changes


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
    _train_side_by_side(missing, teacher_dir, console, min(jobs, len(missing)), total=len(runs))
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
                        jobs: int, total: int) -> None:
  """`missing`'s runs, `jobs` at a time in worker processes; stops at the first that fails.

  Runs finish in no set order, so each result line counts the sweep's `total` runs finished
  so far ('[5/18] mlp-hard-s1'), not the run's place in the plan.

  No run starts once one has failed or a stop signal (Ctrl-C, SIGTERM) has
  come. Those in training when one fails finish; a stop signal stops them at a
  checkpoint. Either way the sweep waits for its workers to exit, and running
  the same command again resumes the runs.
  """
  from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

  from distill import workers  # noqa: PLC0415

  stopped = not_started = 0
  finished = total - len(missing)  # those kept from earlier
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
        console.info(f"{run['name']}: {str(e).removesuffix(' ' + _RESUME)}")
        stopped += 1
        continue
      finished += 1
      _trained(run, console, label=f"[{finished}/{total}] {run['name']}")
  if pool.signal_name is not None and not (stopped or not_started):
    # Nothing was left to stop: the tables take a moment, and are what the runs were for.
    console.info(f"{pool.signal_name} came after every run had finished; writing the tables")
  elif pool.signal_name is not None:
    parts = []
    if stopped:
      parts.append(f"{_runs(stopped)} in training saved a checkpoint")
    if not_started:
      parts.append(f"{not_started if stopped else _runs(not_started)} did not start")
    raise UserError(f"stopped by {pool.signal_name}: {', '.join(parts)}. {_RESUME}",
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


def _trained(run: dict[str, Any], console: Console, label: str | None = None) -> None:
  """Marks `run` as trained here and prints its result line (headed `label`, else its own)."""
  run["reused"] = False
  summary = run["summary"]
  console.info(f"{label or run['label']}: test accuracy {summary['test_accuracy']:.4f}, agreement "
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
  write_text(md_path, sweep_markdown(table, paired, teacher_dir, settings))
  return {**result, "table": table, "paired_table": paired, "headline": headline(rows),
          "verdict": verdict_sentence(rows),
          "json": json_path, "markdown": md_path}

"""A run directory: the files a run writes, and the checks before it writes any.

  recipe.json      the resolved recipe the run used
  metrics.jsonl    one line per logged step (train loss/accuracy, validation)
  summary.json     the final numbers; its presence marks a finished run
  checkpoints/     Orbax checkpoints of the training state
  predictions.npz  test and validation logits of the final model (for reports)
  targets.npz      (teachers) soft targets for the training split + test logits,
  targets.json     with their metadata; a streamed teacher writes targets-shards/
  imported.json    (imported teachers) the source it was read from, instead of checkpoints/
  tensorboard/     the metrics.jsonl scalars as TensorBoard event files (tensorboardX)
  .lock            held by the command writing the run (see `claim_workdir`)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_few

SUMMARY_FILE = "summary.json"
RECIPE_FILE = "recipe.json"
METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.npz"
CHECKPOINTS_DIR = "checkpoints"
TARGETS_FILE = "targets.npz"
TARGETS_META_FILE = "targets.json"
TARGET_SHARDS_DIR = "targets-shards"
# An imported teacher's run: what it was imported from (see `distill.imported`).
IMPORTED_FILE = "imported.json"
TENSORBOARD_DIR = "tensorboard"
# A `distill sweep` folder's record of its runs (see `distill.sweep`).
SWEEP_FILE = "sweep.json"
# Held (flock) by the process writing the run, so that a second command cannot write there too.
LOCK_FILE = ".lock"
# Everything a run writes: what --overwrite and --restart clear.
RUN_OUTPUTS = (CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, RECIPE_FILE, TARGETS_FILE,
               TARGETS_META_FILE, TARGET_SHARDS_DIR, PREDICTIONS_FILE, IMPORTED_FILE,
               TENSORBOARD_DIR)


class MetricsLog:
  """metrics.jsonl: one JSON record per logged step, appended as training goes.

  A resumed run keeps the records up to its checkpoint's step (a stopped run
  may have logged past it) and appends from there.
  """

  def __init__(self, path: Path):
    self.path = Path(path)

  def start(self, after_step: int | None) -> None:
    """Starts the log: empty for a new run, or cut back to `after_step` for a resumed one."""
    from distill.io import is_primary_process, write_text  # noqa: PLC0415

    if after_step is None:
      if is_primary_process():
        self.path.unlink(missing_ok=True)
      return
    kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= after_step]
    write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def append(self, record: dict[str, Any]) -> None:
    """Adds one record (process 0 only); a crash can cost at most this line."""
    from distill.io import is_primary_process  # noqa: PLC0415

    if is_primary_process():
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _tensorboardx():
  """tensorboardX's event writer and protos, imported without importing torch.

  tensorboardX's package imports torch whenever it is installed, only to
  accept torch tensors; distill logs Python floats, and importing torch costs
  ~2 s of every run's start on 2 cores. While tensorboardX loads, `import
  torch` is made to fail as if torch were absent (a None entry in sys.modules
  does that), then the entry is removed so a later `import torch` works.

  Returns:
    A namespace with tensorboardX's `EventsWriter` and its `Event`, `SessionLog`
    and `Summary` protos.
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None
  try:
    from tensorboardX.event_file_writer import EventsWriter  # noqa: PLC0415
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: PLC0415
    from tensorboardX.proto.summary_pb2 import Summary  # noqa: PLC0415
  finally:
    if hide_torch and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return types.SimpleNamespace(EventsWriter=EventsWriter, Event=Event, SessionLog=SessionLog,
                               Summary=Summary)


# How often at most the event file is flushed (fsync) between checkpoints, so that a
# TensorBoard watching the run sees its lines within this many seconds.
_TENSORBOARD_FLUSH_SECONDS = 20.0


class TensorBoardLog:
  """tensorboard/: what MetricsLog records, as TensorBoard scalars (tensorboardX, no TensorFlow).

  Tags: train/loss, train/accuracy, train/learning_rate, train/grad_norm,
  train/teacher_agreement (when taught), val/loss, val/accuracy (at the eval
  cadence), any other logged number under train/ (val_X under val/), and at
  step 0 init/loss with init/loss_expected (log(n_classes) for cross-entropy).

  Only process 0 writes, from the floats the log line already holds: nothing
  is fetched from the devices for it. A record is one event holding all its
  scalars, written to the file in this thread (~65 us); tensorboardX's
  `SummaryWriter` would send one event per scalar through a multiprocessing
  queue to a writer thread (~630 us of this thread per record, and more of
  the writer's), host time that a small model's steps wait for on CPU. The
  file is flushed at every checkpoint, at the end, and at least every
  `_TENSORBOARD_FLUSH_SECONDS` while records come.
  """

  def __init__(self, directory: Path):
    self.directory = Path(directory)
    self._writer = None
    self._tensorboardx = None  # `_tensorboardx()`, once started
    self._last_flush = 0.0

  def start(self, after_step: int | None, note=None) -> None:
    """Opens a new event file: the only one of a new run, or one more for a resumed run.

    A resumed run's file starts with a purge at `after_step + 1`, so TensorBoard
    hides what an earlier stretch logged past the checkpoint resumed from
    (as `MetricsLog.start` cuts those lines). Without tensorboardX installed
    nothing is written, and `note` (if given) is told so.
    """
    from distill.io import is_primary_process  # noqa: PLC0415

    if not is_primary_process():
      return
    try:
      self._tensorboardx = tbx = _tensorboardx()
    except ImportError:
      # Event files are a convenience: a bare accelerator image (jax, flax, optax, no
      # tensorboardX) must still train, and metrics.jsonl holds every number anyway.
      if note is not None:
        note("tensorboardX is not installed: no TensorBoard event files "
             "(metrics.jsonl has every number)")
      return

    if after_step is None:
      shutil.rmtree(self.directory, ignore_errors=True)
    self.directory.mkdir(parents=True, exist_ok=True)
    # Files are named by the second and host; two stretches within one second (a quick
    # resume) must not share a file.
    self._writer = tbx.EventsWriter(str(self.directory / "events"),
                                    f".{os.getpid()}.{time.time_ns()}")
    if after_step is not None:
      self._writer.write_event(tbx.Event(
          step=after_step + 1, wall_time=time.time(),
          session_log=tbx.SessionLog(status=tbx.SessionLog.START)))
    self._last_flush = time.monotonic()

  def _write(self, step: int, scalars: dict[str, float]) -> None:
    """One event at `step` holding every scalar of `scalars` ({tag: value})."""
    tbx = self._tensorboardx
    summary = tbx.Summary(value=[tbx.Summary.Value(tag=tag, simple_value=value)
                                 for tag, value in scalars.items()])
    self._writer.write_event(tbx.Event(step=int(step), wall_time=time.time(), summary=summary))
    if time.monotonic() - self._last_flush >= _TENSORBOARD_FLUSH_SECONDS:
      self.flush()

  def init_loss(self, loss: float, expected: float | None) -> None:
    """The step-0 loss and what it must be (None: not checked, a fine-tuned model), at step 0."""
    if self._writer is not None:
      scalars = {"init/loss": loss}
      if expected is not None:
        scalars["init/loss_expected"] = expected
      self._write(0, scalars)

  def append(self, record: dict[str, Any]) -> None:
    """Adds one metrics record's numbers at its step."""
    if self._writer is None:
      return
    scalars = {}
    for key, value in record.items():
      if key == "step" or not isinstance(value, int | float):
        continue
      tag = (f"val/{key[4:]}" if key.startswith("val_") else
             f"time/{key}" if key == "elapsed_seconds" else f"train/{key}")
      scalars[tag] = float(value)
    self._write(record["step"], scalars)

  def flush(self) -> None:
    """Writes what is buffered to the event file, and syncs it to disk."""
    if self._writer is not None:
      self._writer.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl (a run directory or the file); [] when there is none.

  A line cut short by a crash is skipped.
  """
  path = Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def saved_recipe(run_dir: Path) -> dict[str, Any] | None:
  """The recipe a run recorded (its recipe.json, without the student's teacher_dir), or None.

  As written, not laid over today's defaults (`run_recipe.read_run_recipe` does that).
  """
  from distill.io import read_json  # noqa: PLC0415

  path = Path(run_dir) / RECIPE_FILE
  if not path.is_file():
    return None
  saved = read_json(path, "run recipe")
  saved.pop("teacher_dir", None)
  return saved


def check_workdir(workdir: Path, what: str = "workdir") -> None:
  """Fails early, before any work, when `workdir` cannot be created or written.

  `what` names the folder in the message ('workdir', or a report's '--out').
  """
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{what} {workdir} exists and is not a directory")
  ancestor = workdir
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise UserError(f"cannot create {what} {workdir}: {ancestor} is not a directory")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise UserError(f"cannot write to {what} {workdir}: {ancestor} is read-only")


def check_run_workdir(workdir: Path, *, example: str) -> None:
  """`check_workdir`, then refuses a folder that holds something other than a run.

  A run writes a dozen files and folders into its workdir, and --overwrite or
  --restart clear them: among a person's own files (`--workdir .`, or
  `--workdir runs`, a folder of runs) that mixes the two. `example` names a
  subfolder the message suggests instead.
  """
  check_workdir(workdir)
  kind = folder_kind(workdir)
  if kind == NOT_A_RUN:
    others = sorted(child.name for child in Path(workdir).iterdir()
                    if child.name not in (*RUN_OUTPUTS, LOCK_FILE))
    if not others:  # what is left of a run, e.g. its TensorBoard folder
      return

    what = (describe_folder(workdir, kind) if runs_in(workdir) else
            f"a folder of other files ({first_few(others, 3)})")
  elif kind == SWEEP:
    what = describe_folder(workdir, kind)
  else:
    return
  # A name not taken: following the advice must not lead to --overwrite of a run there.
  suggested = next(Path(workdir) / name for name in
                   (example, *(f"{example}-{number}" for number in range(2, 1000)))
                   if not (Path(workdir) / name).exists())
  raise UserError(f"--workdir {workdir} is {what}; a run needs a new or empty folder of its "
                  f"own, e.g. --workdir {suggested}")


# The run folders this process writes, each with its open lock file (see `claim_workdir`).
_claimed: dict[Path, Any] = {}


def claim_workdir(workdir: Path, flag: str = "--workdir") -> None:
  """Holds `workdir` for this process until the call `releases_workdirs` marks returns (or
  raises), or the process ends.

  Two commands writing one run folder at once interleave their checkpoints and
  metrics and leave the outputs of whichever ends last: the second is refused.
  The lock is an flock on LOCK_FILE, which the system drops with the process,
  however it ends; a file system without locks runs unguarded. `flag` names
  the option that gives another folder.
  """
  folder = Path(workdir).resolve()
  if folder in _claimed:  # this process again (Python, after a run stopped by an error)
    return
  try:
    import fcntl  # noqa: PLC0415
  except ImportError:  # not a POSIX system
    return
  handle = open(folder / LOCK_FILE, "a")  # noqa: SIM115 (held open while the run writes)
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise UserError(f"another distill command is writing into {workdir} now; wait for it to "
                    f"end, or give this one another {flag}") from None
  except OSError:  # e.g. a network file system without locks
    handle.close()
    return
  _claimed[folder] = handle


def releases_workdirs(function):
  """Marks a function that writes a run: the folders it claims are let go when it returns or
  raises, so that a Python session whose run failed does not keep others out of its folder."""

  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    before = set(_claimed)
    try:
      return function(*args, **kwargs)
    finally:
      for folder in set(_claimed) - before:
        _claimed.pop(folder).close()

  return wrapper


def check_apart_from_teacher(path: Path, teacher: Path | str, *, flag: str, why: str,
                            whose: str, instead: Path | str, inside: bool = False) -> None:
  """Refuses a run's `flag` folder that is its teacher's own folder (with `inside`, or within it).

  A student, a sweep or an import there would replace the teacher or mix its
  files with the teacher's; checked before the finished-run check, whose
  advice (--overwrite) would do just that. `why` ends the first clause
  (': the student would replace its teacher'), `whose` names who needs a
  folder of its own, `instead` suggests one.
  """
  here, folder = Path(path).expanduser().resolve(), Path(teacher).expanduser().resolve()
  if here == folder:
    where = "the teacher's own folder"
  elif inside and folder in here.parents:
    where = f"inside {teacher}, the teacher"
  else:
    return
  raise UserError(f"{flag} {path} is {where}{why}; give {whose} a folder of its own, e.g. "
                  f"{flag} {instead}")


def check_not_finished(workdir: Path, *, overwrite: bool) -> None:
  """Refuses a workdir that holds a finished run, unless `overwrite` replaces it."""
  if (Path(workdir) / SUMMARY_FILE).exists() and not overwrite:
    raise UserError(f"{workdir} already holds a finished run; pass --overwrite to replace it, "
                    "or choose another --workdir")


def prepare_workdir(workdir: Path, *, restart: bool, overwrite: bool) -> None:
  """Decides what happens to an existing run directory, before anything is written.

  A finished run is never overwritten without `overwrite`; an unfinished one is
  resumed (the training loop checks the recipe hash) unless `restart`.
  Callers run `check_workdir` first, before loading any data.
  """
  from distill import parallel  # noqa: PLC0415
  from distill.io import is_primary_process  # noqa: PLC0415

  workdir = Path(workdir)
  finished = (workdir / SUMMARY_FILE).exists()
  check_not_finished(workdir, overwrite=overwrite)
  # Every process decides the same; one clears and probes, the others wait for it.
  parallel.sync("workdir checked")
  if is_primary_process():
    try:
      workdir.mkdir(parents=True, exist_ok=True)
      claim_workdir(workdir)  # before anything is cleared: another command may be writing
      probe = workdir / ".write-test"
      probe.write_text("")
      probe.unlink()
    except OSError as e:
      raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    if (finished and overwrite) or restart:
      for name in RUN_OUTPUTS:
        path = workdir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
  parallel.sync("workdir ready")


# --- What a folder is ----------------------------------------------------------

# The kinds `folder_kind` tells apart.
FINISHED_TEACHER = "teacher"
IMPORTED_TEACHER = "imported"
STUDENT = "student"
TARGETS_ONLY = "targets"
SWEEP = "sweep"
UNFINISHED = "unfinished"
NOT_A_RUN = "other"
EMPTY = "empty"
A_FILE = "file"
MISSING = "missing"
# A finished run: something `compare`, `report` and the run-reading commands can use.
FINISHED_RUNS = (FINISHED_TEACHER, IMPORTED_TEACHER, STUDENT)
# What students learn from: exported targets (and a trained teacher, for online teaching).
TEACHER_KINDS = (FINISHED_TEACHER, IMPORTED_TEACHER, TARGETS_ONLY)


def folder_kind(path: Path) -> str:
  """What `path` holds, as one of the kinds above; the one place a run folder is classified.

  A finished run has a summary.json naming its role; a folder with any other
  run output (a recipe, checkpoints, metrics) but no summary is unfinished.
  """
  path = Path(path)
  if not path.exists():
    return MISSING
  if not path.is_dir():
    return A_FILE
  if not any(path.iterdir()):
    return EMPTY
  if (path / SWEEP_FILE).is_file():
    return SWEEP
  if (path / SUMMARY_FILE).is_file():
    if (path / IMPORTED_FILE).exists():
      return IMPORTED_TEACHER
    try:
      role = json.loads((path / SUMMARY_FILE).read_text()).get("role")
    except (OSError, ValueError, AttributeError):
      # A damaged summary: the command that reads it names the damage.
      role = None
    return STUDENT if role == "student" else FINISHED_TEACHER
  if (path / TARGETS_META_FILE).is_file() and (path / RECIPE_FILE).is_file():
    return TARGETS_ONLY  # `distill export --out`: targets (one teacher's or an ensemble's) alone
  if any((path / name).exists() for name in (RECIPE_FILE, CHECKPOINTS_DIR, METRICS_FILE)):
    return UNFINISHED
  return NOT_A_RUN


def describe_folder(path: Path, kind: str | None = None) -> str:
  """What `path` is, in words a person can act on, e.g. 'an empty folder'."""
  kind = kind or folder_kind(path)
  if kind == STUDENT:
    teacher = summary_field(path, "teacher_dir")
    return "a student run" + (f" (taught by {teacher})" if teacher else "")
  if kind == TARGETS_ONLY:
    return _describe_targets_only(path)
  runs = runs_in(path) if kind == NOT_A_RUN else []
  if runs:  # `compare runs/digits` meant the runs in it

    return f"a folder of runs ({first_few(runs, 4)}), not a run"
  return {
      FINISHED_TEACHER: "a finished teacher run",
      IMPORTED_TEACHER: "an imported teacher",
      SWEEP: "a sweep folder (`distill sweep`)",
      UNFINISHED: "an unfinished run (no summary.json): re-run its command to finish it",
      NOT_A_RUN: "a folder that holds no run (no summary.json or recipe.json)",
      EMPTY: "an empty folder",
      A_FILE: "a file, not a run folder",
      MISSING: "not found",
  }[kind]


def runs_in(path: Path) -> list[str]:
  """The names of the run folders (finished or not) and sweeps directly inside `path`."""
  return sorted(child.name for child in Path(path).iterdir() if child.is_dir() and folder_kind(
      child) in (STUDENT, FINISHED_TEACHER, IMPORTED_TEACHER, SWEEP, UNFINISHED))


def _describe_targets_only(path: Path) -> str:
  """A folder `distill export --out` wrote: whose targets (one teacher's or an ensemble's), at T."""
  try:
    meta = json.loads((Path(path) / TARGETS_META_FILE).read_text())
    teachers = meta.get("teachers") or [meta["teacher"]]
    whose = (f"an ensemble of {len(teachers)} teachers" if len(teachers) > 1
             else f"one teacher ({teachers[0]['dir']})")
    whose += f" at T={meta['temperature']:g}"
  except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError):
    # Damaged metadata: the command that loads the targets names the damage.
    whose = "a teacher or an ensemble"
  return f"a folder of exported targets of {whose}, with no run of its own"


def summary_field(path: Path, key: str) -> Any:
  """A finished run's summary value of `key`; None where the folder has no readable summary."""
  try:
    return json.loads((Path(path) / SUMMARY_FILE).read_text()).get(key)
  except (OSError, ValueError, AttributeError):
    return None


def trained_again(path: Path, params_sha256: str | None) -> bool:
  """Whether the finished run in `path` now holds another model than the one whose parameters
  hashed to `params_sha256` (trained again with --overwrite since that hash was recorded). False
  where either side is unknown: no readable summary (an ensemble's targets) or no hash recorded
  (a record from before hashes were kept)."""
  now = summary_field(path, "params_sha256")
  return bool(now and params_sha256 and now != params_sha256)


def check_teacher_folder(path: Path, *, needs: str = "targets") -> str:
  """Refuses a --teacher that is no teacher, in one line that says what it is; returns its kind.

  needs: 'targets' (a student taught by exported targets: any teacher, or a
  folder of exported targets) or 'model' (online teaching and export run the
  teacher: a trained or an imported one; an imported one that cannot run is
  refused later, by what reads its imported.json).
  """
  kind = folder_kind(path)
  accepted = {"targets": TEACHER_KINDS, "model": (FINISHED_TEACHER, IMPORTED_TEACHER)}[needs]
  if kind in accepted:
    return kind
  if kind == STUDENT:
    teacher = summary_field(path, "teacher_dir")
    hint = (f"its teacher is --teacher {teacher}" if teacher
            else "give a teacher run's folder")
  elif kind == UNFINISHED:
    hint = "or give a finished teacher run's folder"
  elif kind == TARGETS_ONLY:
    hint = ("students learn from it with --teaching targets or views; online teaching and "
            "export need a teacher's own run folder")
  elif kind == SWEEP:
    hint = "give the teacher the sweep learned from (its sweep.json names it)"
  elif teachers := [name for name in (runs_in(path) if kind == NOT_A_RUN else [])
                    if folder_kind(Path(path) / name) in TEACHER_KINDS]:
    hint = f"give the teacher in it: --teacher {Path(path) / teachers[0]}" + (
        f" (or {', '.join(teachers[1:])})" if len(teachers) > 1 else "")
  else:
    hint = "train one with `distill teacher` (or bring one with `distill import-teacher`)"
  what = "a student run" if kind == STUDENT else describe_folder(path, kind)
  raise UserError(f"--teacher {path} is {what}; {hint}")


def check_finished_run(path: Path, what: str = "RUN", *, model: bool = False) -> str:
  """Refuses a folder that is not a finished run, in one line; returns its kind.

  model: the command restores the run's model, which an imported teacher lacks.
  """
  kind = folder_kind(path)
  if kind in FINISHED_RUNS and not (model and kind == IMPORTED_TEACHER):
    return kind
  if kind == UNFINISHED:
    hint = "or give a finished run's folder"
  elif kind == IMPORTED_TEACHER:
    hint = ("distill holds only its outputs, no model to restore: run it where it came from, "
            "or use a student it taught")
  else:
    hint = ("give a finished run's folder, the one `distill teacher` or `distill student` "
            "wrote (e.g. runs/teacher)")
  raise UserError(f"{what} {path} is {describe_folder(path, kind)}; {hint}")

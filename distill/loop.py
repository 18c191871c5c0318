"""One training loop for teachers and students.

What differs between a teacher and a student (the model, the objective, the
teaching strategy, whether to augment) is chosen before the loop and handed
to it in a `step.TrainingSetup`; the loop itself is the same: check the
resume, check the step-0 loss, then run the feeder's dispatches through the compiled
step, logging, validating and checkpointing at the recipe's cadence.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from distill import backend, interrupts, losses, parallel, rundir
from distill.checkpoint import Checkpointer
from distill.config import TrainSettings
from distill.errors import UserError
from distill.inference import DeviceValidation, TrainedModel, predict_in_batches
from distill.metrics import accuracy
from distill.step import TrainingSetup, prepare_training
from distill.teaching import HardLabels, Objective

# How many dispatches a plain log line waits behind: enough queued work that
# the device stays busy while the host fetches the metrics and writes the line.
_LOG_LAG_DISPATCHES = 3


@dataclasses.dataclass(frozen=True)
class RunStats:
  """What a training run measured about itself (the model is apart: `TrainedModel`)."""

  init_loss: float
  init_loss_expected: float | None  # None: not checked (a fine-tuned model)
  final_train_loss: float
  steps: int
  # All stretches of a resumed run, compilation excluded; with `fit`'s `final_write`,
  # up to the final checkpoint's hand-over to Orbax, not its write.
  train_seconds: float
  compile_seconds: float  # this stretch's
  images_per_second: float  # this stretch's (the whole run's where it ran no step)
  resumed_from: int | None


def fit(*, model: nnx.Module, images, labels: np.ndarray, val_images, val_labels: np.ndarray,
        objective: Objective, settings: TrainSettings, augment_settings: dict[str, Any] | None,
        workdir: Path, seed: int, checkpoint_meta: dict[str, Any],
        teaching: HardLabels | None = None, strict_init_check: bool = False,
        check_init: bool = True, quiet: bool = False,
        echo: Callable[[str], None] = print,
        warn: Callable[[str], None] = print,
        stats_images=None,
        final_write: contextlib.ExitStack | None = None) -> tuple[TrainedModel, RunStats]:
  """Trains `model`, resuming from a checkpoint in `workdir`; returns it trained, and its stats.

  Args:
    model: an NNX classifier, freshly initialised.
    images, labels: the training split, uint8 [N, H, W, C] (or rows on disk) and int [N].
    val_images, val_labels: the validation split for periodic evaluation.
    objective: what to minimise (see `teaching.make_objective`).
    settings: the role's training settings (steps, batch size, optimizer, cadences).
    augment_settings: the recipe's `augment` table, or None for no augmentation.
    workdir: the run directory; checkpoints and `metrics.jsonl` go here.
    seed: seeds the data order and the augmentation.
    checkpoint_meta: JSON stored with each checkpoint; a resumed run must match
      its `recipe_hash`.
    teaching: where the soft targets come from (needed by the 'soft' objective): a
      `distill.teaching` strategy, `HardLabels` or one of its subclasses
      (`ExportedTargets`, `OnlineTeacher`, `ReplayedViews`).
    strict_init_check: raise instead of warning when the step-0 loss is off.
    check_init: compare the step-0 loss with the objective's expectation; off
      for a model that starts from trained weights (its head is not uniform).
    quiet: hide the progress bar.
    echo, warn: where to print normal and loud messages.
    stats_images: where the pixel statistics come from, when not `images`
      (see `prepare_training`).
    final_write: where to wait for the final checkpoint. Given, a run that
      finishes hands its last state to Orbax from a thread of its own and
      returns; closing the stack waits for that handoff and the files, so the
      caller's evaluation overlaps both (it must not donate the returned
      parameters before). None: `fit` waits. A run that stops early always
      waits.
  """
  setup = prepare_training(model=model, images=images, labels=labels, objective=objective,
                           teaching=teaching, settings=settings,
                           augment_settings=augment_settings, seed=seed,
                           stats_images=stats_images)
  run = _Run(setup, settings, Path(workdir), checkpoint_meta, quiet)
  # Resuming is said first: the step-0 check that follows is of the run's start,
  # which a resumed run recomputes from the same seed and data.
  start_step = run.resume(echo)
  init_loss, expected = _check_init_loss(setup, objective, settings.init_check_tolerance,
                                         strict_init_check, echo, warn, check_init)
  run.start_progress(start_step)  # after the lines above: a terminal's bar would take their line
  run.compile_logging(val_images, val_labels)
  if start_step == 0:  # A resumed run's event files already hold step 0.
    run.tensorboard.init_loss(init_loss, expected)
  # A resumed run's last logged loss stands until it logs again: one resumed after its final
  # checkpoint (stopped while evaluating) runs no step, and its step-0 loss is no final loss.
  logged = [record["loss"] for record in rundir.read_metrics(workdir)
            if "loss" in record and record.get("step", 0) <= start_step]
  last_train_loss = logged[-1] if start_step and logged else init_loss
  finished = False
  try:
    with _StopFlag() as stop, contextlib.closing(setup.feeder.dispatches(run.plan)) as feed:
      for (first, count), rows in zip(run.plan, feed, strict=True):
        step = run.train(first, count, rows)
        # Read once: a signal handled while this step logs or evaluates
        # must not stop the run before this step's checkpoint is saved. Every process
        # stops at the step any of them heard of a stop.
        stop_signal = parallel.stop_on_every_process(stop.signal_name)
        stopping = stop_signal is not None
        saving = stopping or run.at_checkpoint(step)  # decided once: it depends on the clock
        deferred = run.can_defer_log(step, saving)
        # Earlier log lines: those whose steps have dispatches queued behind them,
        # or all of them before this step syncs, so the lines stay in order.
        last_train_loss = run.write_deferred_logs(
            last_train_loss, every_one=not deferred and (run.at_log(step) or saving))
        if deferred:
          continue
        if run.at_log(step) or saving:
          # Checked before every save too, so a checkpoint never holds a diverged state.
          record = run.summary_of_window(step)
        if run.at_log(step):
          run.log(record, val_images, val_labels)
          last_train_loss = record["loss"]
        if saving:
          # The caller waits for the last save's write (`final_write`), so it can
          # take the handoff to Orbax too.
          run.save(step, in_background=final_write is not None and step == run.total_steps)
        if stopping and step < run.total_steps:
          raise UserError(
              f"stopped by {stop_signal} at step {step}; checkpoint saved. "
              "Run the same command again to resume.",
              exit_code=interrupts.exit_status(stop_signal))
    finished = True
  finally:
    run.close(final_write if finished else None)
  jax.block_until_ready(run.state)
  seconds = run.stretch_seconds()
  train_seconds = run.earlier_seconds + seconds
  # This stretch's speed; a stretch that ran no step (resumed after its final checkpoint)
  # has none, and the whole run's stands for it.
  steps_run = run.total_steps - start_step
  images_per_second = (steps_run * settings.batch_size / max(seconds, 1e-9) if steps_run
                       else run.total_steps * settings.batch_size / max(train_seconds, 1e-9))
  stats = RunStats(
      init_loss=init_loss, init_loss_expected=expected, final_train_loss=last_train_loss,
      steps=run.total_steps, train_seconds=train_seconds,
      compile_seconds=run.compile_seconds, images_per_second=images_per_second,
      resumed_from=start_step or None)
  return setup.trained(run.state["params"]), stats


def _check_init_loss(setup: TrainingSetup, objective: Objective, tolerance: float,
                     strict: bool, echo, warn,
                     check_init: bool = True) -> tuple[float, float | None]:
  """The untrained model's loss on the exact batch step 0 trains on, against what it must be."""
  init_loss, num_classes, first_batch = setup.first_loss()
  if not check_init:
    echo(f"step-0 loss {init_loss:.4f}: the model starts from trained weights, so it is not "
         f"compared with a uniform prediction's log({num_classes})")
    return init_loss, None
  expected = objective.expected_init_loss(num_classes, first_batch)
  check = losses.init_loss_check(init_loss, num_classes, expected=expected, tolerance=tolerance)
  if check.ok:
    echo(check.message)
  elif strict:
    raise UserError(check.message + " (--strict-init-check)")
  else:
    warn(check.message)
  return init_loss, expected


class _Run:
  """One stretch of training: its state, clocks, cadences, log and checkpoints."""

  def __init__(self, setup: TrainingSetup, settings: TrainSettings, workdir: Path,
               checkpoint_meta: dict[str, Any], quiet: bool):
    self.setup, self.settings, self.workdir = setup, settings, workdir
    self.meta = checkpoint_meta
    self.quiet = quiet
    self.state = setup.state
    self.total_steps = settings.steps
    self.checkpointer = Checkpointer(workdir)
    self.metrics = rundir.MetricsLog(workdir / rundir.METRICS_FILE)
    self.tensorboard = rundir.TensorBoardLog(workdir / rundir.TENSORBOARD_DIR)
    self.earlier_seconds = 0.0
    self.compile_seconds = 0.0
    self._compiled: dict[int, Any] = {}
    self._window: list[dict[str, jax.Array]] = []
    self._dispatches = 0
    # (dispatch count, step, its window, its validation or None) of the log lines not yet
    # written (`can_defer_log`).
    self._deferred: collections.deque[tuple[int, int, list[dict[str, jax.Array]], Any]] = (
        collections.deque())
    self._validation = None
    self._last_validation: tuple[int, float] | None = None  # (step, accuracy), for the bar
    self.plan: list[tuple[int, int]] = []
    self._progress = None

  def resume(self, echo) -> int:
    """Restores the newest checkpoint (if any) and plans the dispatches; returns the first step."""
    start_step = 0
    latest = self.checkpointer.latest_step()
    if latest is not None:
      saved_meta = self.checkpointer.restore_meta(latest)
      if saved_meta.get("recipe_hash") != self.meta.get("recipe_hash"):
        raise UserError(
            f"{self.workdir} holds an unfinished run with a different recipe; "
            "re-run with --restart to start over, or use another --workdir")
      self.state, _ = self.checkpointer.restore(latest, self.state)
      start_step = int(self.state["step"])
      # The steps since the last log line, so that the next line averages them all, as an
      # uninterrupted run's does.
      self._window = _window_from_meta(saved_meta.get("log_window"))
      # Earlier stretches' training time, so a resumed run reports its whole cost.
      self.earlier_seconds = float(saved_meta.get("train_seconds", 0.0))
      echo(f"resuming from step {start_step} ({self.checkpointer.directory})")
    self.metrics.start(after_step=start_step if latest is not None else None)
    self.tensorboard.start(after_step=start_step if latest is not None else None,
                           note=echo)
    settings = self.settings
    per_dispatch = backend.steps_per_dispatch(settings.steps_per_dispatch)
    if per_dispatch != settings.steps_per_dispatch:
      echo(f"{per_dispatch} steps a dispatch, not the recipe's {settings.steps_per_dispatch}: "
           f"{backend.choices().backend} runs them in one compiled loop (distill/backend.py)")
    self.plan = dispatch_plan(start_step, self.total_steps, per_dispatch,
                              (settings.log_every, settings.eval_every,
                               settings.checkpoint_every))
    return start_step

  def start_progress(self, start_step: int) -> None:
    """Shows the progress bar from `start_step` (`resume`'s), and starts the stretch's clocks."""
    from distill.console import progress  # noqa: PLC0415

    self._progress = progress(total=self.total_steps, initial=start_step, unit="step",
                              quiet=self.quiet,
                              desc=f"train {self.meta.get('role', '')}".strip())
    self._loop_start = time.perf_counter()
    self._last_save = self._loop_start

  def stretch_seconds(self) -> float:
    """This stretch's training time so far; compilation is reported apart."""
    return time.perf_counter() - self._loop_start - self.compile_seconds

  def compile_logging(self, val_images, val_labels: np.ndarray) -> None:
    """Prepares what logging runs: the validation program, compiled, and the learning rates.

    Done once, before the first dispatch, and counted as compile time: left
    to the first log, the compiles (and the dozens of eager ops they replace)
    would stall the device in the middle of training.
    """
    started = time.perf_counter()
    # The learning rate of every step that logs, computed now: a program run
    # at a log line would queue behind the dispatch in flight and leave the
    # device idle while the host writes the line.
    log_steps = [first + count for first, count in self.plan if self.at_log(first + count)]
    rates = (np.asarray(jax.jit(jax.vmap(self.setup.schedule))(np.asarray(log_steps, np.int32)),
                        np.float64).tolist() if log_steps else [])
    self._learning_rates = dict(zip(log_steps, rates, strict=True))
    self._validation = None
    if isinstance(val_images, np.ndarray) and len(val_images):
      # In memory: the split lives on the devices and one program scores it.
      spec = self.setup.spec
      self._validation = DeviceValidation(spec.graphdef, spec.rest, self.setup.stats,
                                          val_images, val_labels, self.settings.eval_batch_size,
                                          self.setup.mesh)
      jax.block_until_ready(self._validation(self.state["params"]))
    elif len(val_images):  # Streamed from disk: batch by batch.
      batch = min(self.settings.eval_batch_size, len(val_images))
      logits = predict_in_batches(self.setup.predict, self.state["params"], val_images[:batch],
                                  batch)
      jax.block_until_ready(_validation_metrics(
          np.zeros((len(val_images), logits.shape[-1]), np.float32), np.asarray(val_labels)))
    self.compile_seconds += time.perf_counter() - started

  def train(self, first: int, count: int, rows) -> int:
    """Runs one dispatch of `count` steps (compiling for its length once); returns the step."""
    if count not in self._compiled:
      started = time.perf_counter()
      self._compiled[count] = self.setup.compile(self.state, rows)
      self.compile_seconds += time.perf_counter() - started
    self.state, chunk_metrics = self.setup.run_chunk(self._compiled[count], self.state, rows)
    self._window.append(chunk_metrics)
    self._dispatches += 1
    self._progress.update(count)
    return first + count

  def at_log(self, step: int) -> bool:
    """Whether `step` writes a line of metrics.jsonl: at the log cadence, and at every
    validation (which a line holds: eval_every=25 beside log_every=10 validated only at 50)."""
    return (step % self.settings.log_every == 0 or step % self.settings.eval_every == 0
            or step == self.total_steps)

  def at_checkpoint(self, step: int) -> bool:
    """Whether `step` saves a checkpoint (a stop signal saves one too).

    The last step always does; a step at the checkpoint cadence does once
    `checkpoint_min_seconds` have passed since the last save (or the start of
    this stretch), so a model that runs the cadence in a second is not slowed
    by saves, while a killed run still loses at most the larger of the two.
    """
    if step == self.total_steps:
      return True
    if step % self.settings.checkpoint_every:
      return False
    # Every process of a multi-host run saves together, so process 0's clock decides.
    return parallel.process_zero_decides(
        time.perf_counter() - self._last_save >= self.settings.checkpoint_min_seconds)

  def can_defer_log(self, step: int, saving: bool) -> bool:
    """Whether `step`'s log line can wait; if so, it is written a few dispatches later.

    Fetching its metrics now would leave the device idle while the host writes
    the line; written once `_LOG_LAG_DISPATCHES` more dispatches are queued,
    they cost the device nothing. A step that validates on the devices starts
    its validation now, on this step's parameters, and reads the two numbers
    with the line. Steps that save a checkpoint (`saving`), end the run, or
    validate batch by batch from disk need this very step's state, so they
    are written at once.
    """
    evaluates = self.at_eval(step)
    plain = (self.at_log(step) and step < self.total_steps and not saving
             and (not evaluates or self._validation is not None))
    if plain:
      # Queued before the next dispatch, which donates (and so overwrites) these parameters.
      validation = self._validation(self.state["params"]) if evaluates else None
      self._deferred.append((self._dispatches, step, self._window, validation))
      self._window = []
    return bool(plain)

  def write_deferred_logs(self, last_train_loss: float, every_one: bool = False) -> float:
    """Writes the deferred log lines that are due (`every_one`: all); returns the latest loss."""
    while self._deferred and (
        every_one or self._dispatches - self._deferred[0][0] >= _LOG_LAG_DISPATCHES):
      _, step, window, validation = self._deferred.popleft()
      record = self._checked(_summarise(window, step))
      self.log(record, None, None, validation=validation)
      last_train_loss = record["loss"]
    return last_train_loss

  def summary_of_window(self, step: int) -> dict[str, Any]:
    """The metrics since the last log line; a non-finite loss stops the run here.

    A step that logs starts the next window.
    """
    record = self._checked(_summarise(self._window, step))
    if self.at_log(step):
      self._window = []
    return record

  def _checked(self, record: dict[str, Any]) -> dict[str, Any]:
    """`record`, unless its loss is not finite: then the run stops, saying what is kept."""
    step = record["step"]
    if not math.isfinite(record["loss"]):
      good = self.checkpointer.latest_step()
      kept = (f"the last good checkpoint (step {good}) is kept in {self.checkpointer.directory}"
              if good is not None else "no checkpoint had been saved yet")
      raise UserError(f"training diverged: the loss became {record['loss']} by step {step}; "
                      f"{kept}. Try a lower learning rate.")
    return record

  def at_eval(self, step: int) -> bool:
    """Whether `step`'s log line holds a validation."""
    return step % self.settings.eval_every == 0 or step == self.total_steps

  def log(self, record: dict[str, Any], val_images, val_labels, validation=None) -> None:
    """Adds the learning rate and (at its cadence) validation, and appends the record.

    `validation` is the (loss, accuracy) pair already started on the devices
    for this step (see `can_defer_log`); otherwise a step that validates runs
    it now. The metrics window was started again when the record was summarised.
    """
    step = record["step"]
    record["learning_rate"] = self._learning_rates[step]
    if self.at_eval(step):
      if validation is not None:
        val_loss, val_accuracy = validation
      elif self._validation is not None:
        val_loss, val_accuracy = self._validation(self.state["params"])
      else:
        val_logits = predict_in_batches(self.setup.predict, self.state["params"], val_images,
                                        self.settings.eval_batch_size)
        val_loss, val_accuracy = _validation_metrics(val_logits, np.asarray(val_labels))
      record["val_loss"], record["val_accuracy"] = float(val_loss), float(val_accuracy)
    record["elapsed_seconds"] = round(time.perf_counter() - self._loop_start, 3)
    self.metrics.append(record)
    self.tensorboard.append(record)
    if "val_accuracy" in record:
      self._last_validation = (step, record["val_accuracy"])
    # The step the numbers are from: the bar runs ahead of the log lines, which are
    # written when their step's dispatch has finished (`can_defer_log`).
    # Steps as the bar counts them: 1200, not 1,200.
    shown = {"step": str(step), **{key: f"{record[key]:.4f}" for key in ("loss", "accuracy")}}
    if self._last_validation is not None:
      at, value = self._last_validation
      shown["val_accuracy"] = f"{value:.4f}" + (f" (step {at})" if at != step else "")
    self._progress.set_postfix(shown, refresh=False)

  def save(self, step: int, in_background: bool = False) -> None:
    """Checkpoints the state, with the training time of every stretch so far.

    `in_background`: the state is handed to Orbax from a thread of its own
    (`Checkpointer.save_in_background`), for a save after which nothing
    donates the state. In one process only: a multi-process save meets the
    other processes at barriers, which stay in the loop's order.
    """
    meta = {**self.meta, "step": step,
            "train_seconds": round(self.earlier_seconds + self.stretch_seconds(), 3),
            # A step between log lines keeps the metrics of the steps since the last one.
            "log_window": _window_to_meta(self._window)}
    if in_background and jax.process_count() == 1:
      self.checkpointer.save_in_background(step, self.state, meta)
    else:
      self.checkpointer.save(step, self.state, meta)
    self._last_save = time.perf_counter()
    # The event files keep up with the checkpoints: a killed run loses no more of them.
    self.tensorboard.flush()

  def close(self, final_write: contextlib.ExitStack | None = None) -> None:
    """However the loop ended: the bar, the event files and the checkpoints are closed.

    Closing the checkpoints waits for the last save's write: now, or when
    `final_write` closes.
    """
    if self._progress is not None:
      self._progress.close()
    self.tensorboard.close()
    if final_write is None:
      self.checkpointer.close()
    else:
      final_write.callback(self.checkpointer.close)


def dispatch_plan(start: int, total: int, per_dispatch: int,
                  cadences: tuple[int, ...]) -> list[tuple[int, int]]:
  """(first step, step count) of every dispatch from `start` to `total`.

  A dispatch never crosses a log, eval or checkpoint boundary, so those
  happen at exact steps whatever steps_per_dispatch is.
  """
  plan = []
  step = start
  while step < total:
    next_event = min(total, *((step // every + 1) * every for every in cadences))
    count = min(per_dispatch, next_event - step)
    plan.append((step, count))
    step += count
  return plan


@jax.jit
def _validation_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Validation cross-entropy and accuracy, one compiled call (not a dozen eager ops)."""
  return losses.hard_cross_entropy(logits, labels), accuracy(logits, labels)


def _window_to_meta(window: list[dict[str, jax.Array]]) -> dict[str, Any] | None:
  """The per-step metrics of `window` as JSON, exactly: {key: {dtype, values}}; None if empty."""
  if not window:
    return None
  # A float32 value is exactly a Python float, and JSON writes that float back exactly.
  return {key: {"dtype": str(values.dtype), "values": values.tolist()}
          for key, values in _per_step(window).items()}


def _window_from_meta(saved: dict[str, Any] | None) -> list[dict[str, Any]]:
  """The window `_window_to_meta` saved, as one chunk of numpy arrays; [] for None."""
  if not saved:
    return []
  return [{key: np.asarray(entry["values"], entry["dtype"]) for key, entry in saved.items()}]


def _per_step(window: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """{metric: its values at every step of `window`, in order} on the host (one sync)."""
  fetched = jax.tree.map(parallel.fetch, window)
  return {key: np.concatenate([np.atleast_1d(chunk[key]) for chunk in fetched])
          for key in fetched[0]}


def _summarise(window: list[dict[str, jax.Array]], step: int) -> dict[str, Any]:
  """Means of the per-step metrics since the last log line (one host sync)."""
  return {"step": step, **{key: float(np.mean(values))
                           for key, values in _per_step(window).items()}}


class _StopFlag:
  """Turns SIGINT/SIGTERM into a flag the loop checks between dispatches.

  Stopping between dispatches (rather than raising inside one) guarantees the
  state we checkpoint is a whole step, not a half-donated buffer. A second
  Ctrl-C stops at once.
  """

  def __init__(self):
    self._signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  @property
  def signal_name(self) -> str | None:
    """The stop signal that came, to this loop or remembered for it (`interrupts.remember`)."""
    return self._signal_name or interrupts.requested()

  def __enter__(self):
    # A Ctrl-C from before the loop that Python dropped (see distill.interrupts).
    self._signal_name = interrupts.take()
    for sig in (signal.SIGINT, signal.SIGTERM):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals stay as they are.
        pass
    return self

  def _handle(self, signum, frame):
    # A second stop, unless the first only came through a sweep (`interrupts.arrived`).
    if interrupts.arrived() and self.signal_name is not None:
      interrupts.stop_at_once(signum)
    self._signal_name = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


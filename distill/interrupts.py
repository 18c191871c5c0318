"""Ctrl-C before a training loop listens for it: remembered, so it is never lost.

Python raises KeyboardInterrupt in whatever code runs when SIGINT arrives. In
a run's first seconds that can be a callback JAX runs from the garbage
collector, where Python prints the exception and drops it, and the command
went on to train to its end. `listen()`, at every command's start, keeps
Python's behaviour (KeyboardInterrupt at once) and also remembers the signal;
where the exception would be dropped it is not raised at all. A training loop
that starts after such a signal takes it (`take()`) and stops at its first
dispatch with a checkpoint, as if Ctrl-C came then.

A command a stop signal ends exits with that signal's status (`exit_status`):
130 after SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import signal
from typing import NoReturn

_pending: str | None = None
# Whether a stop signal has reached this process's own handlers during the stop now under way:
# then another one is a second stop (`arrived`).
_arrived = False
# Functions in which Python drops a raised exception, printing a traceback that only alarms:
# JAX's garbage-collector callback and finalizers.
_DROPPING = ("_xla_gc_callback", "__del__")


def _interrupt(signum, frame) -> None:
  global _pending
  arrived()
  _pending = signal.Signals(signum).name
  while frame is not None:
    if frame.f_code.co_name in _DROPPING:
      return  # remembered only: the loop stops at its first dispatch
    frame = frame.f_back
  raise KeyboardInterrupt


def listen() -> None:
  """Remembers SIGINT from now on, still raising KeyboardInterrupt (main thread only)."""
  try:
    signal.signal(signal.SIGINT, _interrupt)
  except ValueError:  # not the main thread: signals stay as they are
    pass


def remember(signum: int) -> None:
  """Keeps a stop signal for the next training loop without raising (a handler's body).

  For a process that must not be interrupted where it is: a sweep's worker
  between runs (distill.workers). The run that starts next stops at its first
  dispatch with a checkpoint, as after a dropped Ctrl-C; a run in training
  stops at its next dispatch, as if the signal had come to it (a worker's
  watcher passes on its sweep's first stop this way, so a copy of the same
  signal sent to the worker directly does not count twice).
  """
  global _pending
  _pending = signal.Signals(signum).name


def arrived() -> bool:
  """Notes that a stop signal reached one of this process's handlers (a handler's body): True
  when one had reached them before, in the stop now under way, so this is a second stop.

  A signal a sweep's worker hears of only through its sweep (`remember`, by the
  worker's watcher) has not arrived: where a batch system's cancel reaches
  every process at once, the worker's own copy may come before or after the
  sweep's, and the two are one stop. The watcher passes later stops on by
  sending them, after calling this itself, so that they count as second ones.
  """
  global _arrived
  before, _arrived = _arrived, True
  return before


def requested() -> str | None:
  """The signal remembered (`remember`, or a dropped Ctrl-C), if any, without forgetting it."""
  return _pending


def take() -> str | None:
  """The signal remembered since `listen()` ('SIGINT'), if one came; forgets it.

  Without one, no stop is under way: the next signal to arrive is a first one.
  """
  global _pending, _arrived
  name, _pending = _pending, None
  if name is None:
    _arrived = False
  return name


def exit_status(signal_name: str) -> int:
  """The exit status of a command that the signal `signal_name` ('SIGTERM') stopped.

  128 + the signal's number, as shells and batch systems report a process a
  signal ended (130 for SIGINT, 143 for SIGTERM): a script or a scheduler tells
  a cancel from a Ctrl-C, and either from an error (2), even though the run
  stopped cleanly at a checkpoint.
  """
  return 128 + signal.Signals[signal_name].value


def stop_at_once(signum: int) -> NoReturn:
  """Raises KeyboardInterrupt for a second stop signal (a handler's body), naming the signal.

  A plain KeyboardInterrupt says nothing of the signal behind it; the name
  lets the command exit with that signal's status (`interrupted_by`).
  """
  raise KeyboardInterrupt(signal.Signals(signum).name)


def interrupted_by(error: KeyboardInterrupt) -> str:
  """The stop signal behind `error`: the one `stop_at_once` named, else SIGINT (Python's own)."""
  name = error.args[0] if error.args else None
  return name if name in signal.Signals.__members__ else "SIGINT"

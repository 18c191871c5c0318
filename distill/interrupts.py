"""Ctrl-C before a training loop listens for it: remembered, so it is never lost.

Python raises KeyboardInterrupt in whatever code runs when SIGINT arrives. In
a run's first seconds that can be a callback JAX runs from the garbage
collector, where Python prints the exception and drops it, and the command
went on to train to its end. `listen()`, at every command's start, keeps
Python's behaviour (KeyboardInterrupt at once) and also remembers the signal;
where the exception would be dropped it is not raised at all. A training loop
that starts after such a signal takes it (`take()`) and stops at its first
dispatch with a checkpoint, as if Ctrl-C came then.
"""

from __future__ import annotations

import signal

_pending: str | None = None
# Functions in which Python drops a raised exception, printing a traceback that only alarms:
# JAX's garbage-collector callback and finalizers.
_DROPPING = ("_xla_gc_callback", "__del__")


def _interrupt(signum, frame) -> None:
  global _pending
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


def requested() -> str | None:
  """The signal remembered (`remember`, or a dropped Ctrl-C), if any, without forgetting it."""
  return _pending


def take() -> str | None:
  """The signal remembered since `listen()` ('SIGINT'), if one came; forgets it."""
  global _pending
  name, _pending = _pending, None
  return name

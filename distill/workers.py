"""Several runs at once, each in a process of its own on its own share of the CPU cores.

A small model's step gains little or nothing from a second core on XLA:CPU:
the demo's linear student trains as fast on one core as on two (its second
XLA thread mostly spins, waiting for work), its ViT student within 3%. A
sweep of such runs finishes sooner with the runs side by side, one process
per share of the cores (BENCHMARKS.md, "Sweeps on several cores": on 2 cores,
the demo's 18 runs in 62-77 s as two one-core jobs against 93-116 s one after
the other).

Each worker is a fresh interpreter (`spawn`: no JAX state is copied from the
parent), pinned to its share of the cores, with XLA told that share's size
before JAX starts (`PJRT_NPROC`, read once when JAX's CPU client is made), so
two workers never contend for one core. A run's floating-point sums depend on
how many threads it has, so a run trained as one of several jobs matches the
same run trained alone to the last few digits, not bit for bit.

A stop signal to the sweep (Ctrl-C, SIGTERM) closes the pool: no run starts
after it, and each worker is sent the signal once, so a run in training saves
a checkpoint and stops as a single run does. A worker runs in a process group
of its own, so the terminal's Ctrl-C reaches it through the sweep alone: a
second copy of the signal would stop its run at once, without that checkpoint.
A worker whose sweep died exits too, its run stopped at a checkpoint.

In a group of its own a worker does not get the terminal's Ctrl-Z (SIGTSTP)
either: the sweep passes job control on. It stops its workers, then itself,
and continues them when it is continued (the shell's `fg` or `bg`), so a
suspended sweep leaves nothing training in the background.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distill import interrupts
from distill.errors import UserError

# The size of XLA:CPU's thread pool, read once when a process makes its CPU client.
XLA_THREADS_ENV = "PJRT_NPROC"
# The signals a training loop stops at with a checkpoint (loop._StopFlag).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Job control the sweep passes on to its workers: Ctrl-Z, and the shell's `fg` or `bg` (POSIX).
JOB_CONTROL_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTSTP", "SIGCONT")
                            if hasattr(signal, name))
# Every signal a pool handles: held back while it starts a worker (`Pool.submit`).
_POOL_SIGNALS = STOP_SIGNALS + JOB_CONTROL_SIGNALS
# How often a worker looks for a stop its sweep asks for, and for its sweep's death.
WATCH_SECONDS = 0.05
# The pool's state, shared with its workers (written by the parent, read by the workers):
# closed (no call starts once set), the stop signal's number, how many times it came.
_CLOSED, _SIGNUM, _SIGNALS = range(3)
# A worker's own: the shared state, its sweep's process id, whether it is running a call.
_worker: dict[str, Any] = {"state": None, "parent": None, "busy": False}


class NotStarted(Exception):
  """A call a worker took up after its pool closed (a stop or a failure): it did not run."""


def available_cores() -> list[int]:
  """The CPU cores this process may run on (all of them where affinity is not supported)."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def core_shares(cores: Sequence[int], jobs: int) -> list[list[int]]:
  """`cores` split into `jobs` runs of neighbouring cores whose sizes differ by one at most."""
  if jobs < 1:
    raise UserError(f"--jobs must be 1 or more, got {jobs}")
  if jobs > len(cores):
    raise UserError(f"--jobs {jobs} needs {jobs} CPU cores, one a job at least; this process "
                    f"may run on {len(cores)}")
  size, larger = divmod(len(cores), jobs)
  shares, start = [], 0
  for job in range(jobs):
    end = start + size + (job < larger)
    shares.append(list(cores[start:end]))
    start = end
  return shares


def describe(shares: list[list[int]]) -> str:
  """e.g. '2 at a time, 1 core each (cores 0 | 1)', for the line a parallel sweep starts with."""
  sizes = sorted({len(share) for share in shares})
  each = " or ".join(str(size) for size in sizes)
  noun = "core" if sizes == [1] else "cores"
  where = " | ".join(",".join(map(str, share)) for share in shares)
  return f"{len(shares)} at a time, {each} {noun} each (cores {where})"


def _start_worker(shares, state, parent: int) -> None:
  """A worker's first act, before JAX starts: its share of the cores, and XLA's threads sized to it.

  Also how it hears of a stop. It leaves the terminal's process group (Ctrl-C
  goes to the sweep, which passes it on once) and keeps a stop signal that
  comes between runs for the next run's loop (`interrupts.remember`), never
  raising where it waits for work. A watcher thread passes on each stop signal
  the sweep gets and notices the sweep's death. The sweep holds the stop
  signals back while it starts a worker (`Pool.submit`), so one that comes
  before this point waits for the handlers below.
  """
  cores = shares.get()
  os.environ[XLA_THREADS_ENV] = str(len(cores))
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cores)
  _worker.update(state=state, parent=parent)
  if hasattr(os, "setpgrp"):
    os.setpgrp()
    # Outside the terminal's foreground group a write to it would stop this process
    # (SIGTTOU) where the terminal says `tostop`; ignored, the write goes through.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
  for sig in STOP_SIGNALS:
    signal.signal(sig, _between_runs)
  # Started while the signals are held back, so the thread never takes one: they all
  # go to the main thread, where the handlers run.
  threading.Thread(target=_watch, name="distill-stop-watch", daemon=True).start()
  if hasattr(signal, "pthread_sigmask"):
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _POOL_SIGNALS)


def _between_runs(signum, frame) -> None:
  """A worker's handler outside a run's loop: the signal is kept for the next loop."""
  interrupts.arrived()
  interrupts.remember(signum)


def _sweep_gone() -> bool:
  """Whether the process that started this worker has died (it is someone else's child now)."""
  return os.getppid() != _worker["parent"]


def _watch() -> None:
  """A worker's thread: passes on the sweep's stop signals to the main thread; exits with it.

  The first is remembered for the run's loop (`interrupts.remember`), not sent:
  where every process gets the signal at once (a batch system's cancel), the
  worker's own copy and the sweep's are one stop with its checkpoint, not two,
  whichever comes first (`interrupts.arrived`). Later ones are sent, and stop
  the run at once like a second Ctrl-C.
  """
  main, passed = threading.main_thread().ident, 0
  state = _worker["state"]
  while True:
    time.sleep(WATCH_SECONDS)
    if _sweep_gone():
      if not _worker["busy"]:
        os._exit(1)  # no run to stop, and no one left to take a result
      # The run stops at a checkpoint; the worker exits after it (`_call_if_open`).
      interrupts.remember(signal.SIGTERM)
      return
    while passed < state[_SIGNALS] and state[_SIGNUM]:  # the number is written first
      if passed == 0:
        interrupts.remember(state[_SIGNUM])
      else:
        interrupts.arrived()  # so that the loop's handler takes it as a second
        signal.pthread_kill(main, state[_SIGNUM])
      passed += 1


def _call_if_open(fn: Callable, args: tuple) -> Any:
  """A worker's task: `fn(*args)`, unless the pool closed before the worker took it up."""
  if _worker["state"][_CLOSED] or _sweep_gone():
    raise NotStarted
  _worker["busy"] = True
  try:
    return fn(*args)
  finally:
    _worker["busy"] = False
    if _sweep_gone():
      os._exit(1)  # the result has no one to go to


def jobs_on_this_backend(jobs: int, note) -> int:
  """`jobs` where JAX trains on the CPU; 1 on an accelerator, with a `note` that says why.

  Jobs share out CPU cores. On a GPU the runs train one at a time, so the same
  command (`make demo`'s `--jobs 2`) works on either machine. Decided here, in
  the parent, once: workers start only where JAX trains on the CPU.
  """
  import jax  # noqa: PLC0415

  backend = jax.default_backend()
  if jobs == 1 or backend == "cpu":
    return jobs
  note(f"--jobs {jobs} shares out CPU cores, but JAX trains on {backend} here: "
       "the runs train one at a time")
  return 1


class Pool:
  """What `core_pool` yields: runs calls in its workers until it is closed.

  The first stop signal (SIGINT, SIGTERM) to this process closes it
  (`signal_name` says which came) and is passed on to every worker: a run in
  training saves a checkpoint and stops. A second is passed on too (a run
  stops at once, as a second Ctrl-C stops a single run) and raises
  KeyboardInterrupt here.

  SIGTSTP (Ctrl-Z) stops every worker, then this process; SIGCONT continues
  the workers.
  """

  def __init__(self, executor: concurrent.futures.ProcessPoolExecutor, state):
    self.executor = executor
    self.signal_name: str | None = None
    self._state = state

  def submit(self, fn: Callable, *args) -> concurrent.futures.Future:
    """Runs `fn(*args)` in a worker; the future raises NotStarted if the pool closes first."""
    # A worker this starts inherits the held signals: one that came before it listens
    # waits for it (see `_start_worker`).
    with _signals_held():
      return self.executor.submit(_call_if_open, fn, args)

  def close(self) -> None:
    """No call starts from now on; those running go on."""
    self._state[_CLOSED] = 1

  def _on_signal(self, signum, frame) -> None:
    self.close()
    self._state[_SIGNUM] = signum
    self._state[_SIGNALS] += 1  # after the number: a worker reads the count, then the number
    if self.signal_name is not None:
      interrupts.stop_at_once(signum)
    self.signal_name = signal.Signals(signum).name

  def _on_suspend(self, signum, frame) -> None:
    """SIGTSTP: stops the workers, then this process as SIGTSTP does where it is not handled."""
    # SIGSTOP, which a worker can neither catch nor ignore: it stops with the sweep, always.
    self._signal_workers(signal.SIGSTOP)
    signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    # Raised in this thread, unblocked (a handler can run where `submit` holds signals back),
    # the stop takes effect before `raise_signal` returns.
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTSTP])
    try:
      signal.raise_signal(signal.SIGTSTP)  # stopped here until SIGCONT
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, mask)
      signal.signal(signal.SIGTSTP, self._on_suspend)
    # Running again, or never stopped: a process in an orphaned process group (its parent
    # in another session) ignores SIGTSTP, and its workers must not stay stopped either.
    self._signal_workers(signal.SIGCONT)

  def _on_continue(self, signum, frame) -> None:
    """SIGCONT: continues the workers (this process was continued before the handler ran)."""
    self._signal_workers(signal.SIGCONT)

  def _signal_workers(self, signum: int) -> None:
    """Sends `signum` to each worker's process group: the worker and whatever it started."""
    # multiprocessing's record of this process's children holds a worker still starting,
    # before it could tell anyone its id; the pool's workers are the sweep's only children.
    for pid in (child.pid for child in multiprocessing.active_children()):
      try:
        os.killpg(pid, signum)
      except ProcessLookupError:
        # No group of that id: a worker still starting (in this process's group until
        # `_start_worker` leaves it), or one that has exited.
        with contextlib.suppress(ProcessLookupError):
          os.kill(pid, signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
  """The pool's signals held back from this thread, and what it starts, in the block.

  A worker started in the block is in multiprocessing's record of children (`_signal_workers`)
  before a SIGTSTP that came meanwhile is handled.
  """
  if not hasattr(signal, "pthread_sigmask"):
    yield
    return
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, _POOL_SIGNALS)
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _listening(pool: Pool) -> Iterator[None]:
  """The pool's signals go to `pool` in the block (main thread only; elsewhere they stay)."""
  handlers = {sig: pool._on_signal for sig in STOP_SIGNALS}
  if JOB_CONTROL_SIGNALS:
    handlers.update({signal.SIGTSTP: pool._on_suspend, signal.SIGCONT: pool._on_continue})
  previous = {}
  for sig, handler in handlers.items():
    try:
      previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
      pass
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def core_pool(jobs: int) -> Iterator[tuple[Pool, str]]:
  """A pool of `jobs` worker processes, each on its own share of this process's cores.

  Yields the pool and a line that says how the cores were shared. Leaving
  the block waits for the calls in progress and for the workers to exit; left
  by an error, the pool closes first, so no further call starts. The stop
  and job-control signals go to the pool from before its first worker starts
  until the last has exited (see `Pool`).
  """
  shares = core_shares(available_cores(), jobs)
  context = multiprocessing.get_context("spawn")
  # Made first, as it starts multiprocessing's resource tracker: started later, for a
  # worker, the tracker would let through the signals `Pool.submit` holds back.
  queue = context.Queue()
  for share in shares:
    queue.put(share)
  state = context.RawArray("i", 3)  # no lock: one writer, and a signal handler may write
  executor = concurrent.futures.ProcessPoolExecutor(
      jobs, mp_context=context, initializer=_start_worker, initargs=(queue, state, os.getpid()))
  pool = Pool(executor, state)
  with _listening(pool):
    try:
      yield pool, describe(shares)
    except BaseException:
      pool.close()
      executor.shutdown(wait=True, cancel_futures=True)
      raise
    executor.shutdown(wait=True)

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
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence

from distill.errors import UserError

# The size of XLA:CPU's thread pool, read once when a process makes its CPU client.
XLA_THREADS_ENV = "PJRT_NPROC"


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


def _start_worker(shares) -> None:
  """A worker's first act, before JAX starts: its share of the cores, and XLA's threads sized to it.

  Ctrl-C reaches every process of the terminal's group. A worker that is
  training saves a checkpoint and stops (the loop's own handler, installed
  for the run); an idle one leaves the stop to the parent.
  """
  cores = shares.get()
  os.environ[XLA_THREADS_ENV] = str(len(cores))
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cores)
  signal.signal(signal.SIGINT, signal.SIG_IGN)


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


@contextlib.contextmanager
def core_pool(jobs: int) -> Iterator[tuple[concurrent.futures.ProcessPoolExecutor, str]]:
  """A pool of `jobs` worker processes, each on its own share of this process's cores.

  Yields the pool and a line that says how the cores were shared. Leaving
  the block waits for the runs in progress; a pending one is cancelled when
  the block is left by an error.
  """
  shares = core_shares(available_cores(), jobs)
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  for share in shares:
    queue.put(share)
  pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context,
                                                initializer=_start_worker, initargs=(queue,))
  try:
    yield pool, describe(shares)
  except BaseException:
    pool.shutdown(wait=True, cancel_futures=True)
    raise
  pool.shutdown(wait=True)

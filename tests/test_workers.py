"""distill.workers: runs side by side, each process on its own share of the CPU cores."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill import interrupts, workers
from distill.errors import UserError


def test_cores_are_shared_out_in_neighbouring_runs_of_near_equal_size():
  assert workers.core_shares([0, 1], 2) == [[0], [1]]
  assert workers.core_shares([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
  assert workers.core_shares([4, 5, 6, 7, 8, 9, 10], 3) == [[4, 5, 6], [7, 8], [9, 10]]
  assert workers.core_shares([3], 1) == [[3]]


@pytest.mark.parametrize("jobs, message", [
    (0, "--jobs must be 1 or more, got 0"),
    (3, "--jobs 3 needs 3 CPU cores, one a job at least; this process may run on 2"),
])
def test_impossible_job_counts_are_one_line_errors(jobs, message):
  with pytest.raises(UserError, match=message):
    workers.core_shares([0, 1], jobs)


def test_jobs_share_cpu_cores_and_an_accelerator_trains_one_run_at_a_time(monkeypatch):
  """`make demo`'s --jobs 2 on a GPU machine: one run at a time, and a note, not an error."""
  import jax  # noqa: PLC0415

  notes = []
  assert workers.jobs_on_this_backend(2, notes.append) == 2 and not notes  # the CPU here
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert workers.jobs_on_this_backend(1, notes.append) == 1 and not notes
  assert workers.jobs_on_this_backend(2, notes.append) == 1
  assert notes == ["--jobs 2 shares out CPU cores, but JAX trains on gpu here: "
                   "the runs train one at a time"]


def test_describe_says_how_the_cores_were_shared():
  assert workers.describe([[0], [1]]) == "2 at a time, 1 core each (cores 0 | 1)"
  assert workers.describe([[0, 1, 2], [3, 4]]) == (
      "2 at a time, 2 or 3 cores each (cores 0,1,2 | 3,4)")


def _what_a_worker_sees():
  return (sorted(os.sched_getaffinity(0)), os.environ.get(workers.XLA_THREADS_ENV),
          "jax" in sys.modules)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity")
                    or len(workers.available_cores()) < 2, reason="needs two cores to share")
def test_each_worker_runs_on_its_share_with_as_many_xla_threads():
  with workers.core_pool(2) as (pool, how):
    seen = [pool.submit(_what_a_worker_sees).result() for _ in range(3)]
  shares = workers.core_shares(workers.available_cores(), 2)
  assert how.startswith("2 at a time")
  for cores, threads, jax_started in seen:
    assert cores in shares and threads == str(len(cores))
    # The share is set before anything starts JAX, whose CPU client reads it once.
    assert not jax_started


def children(pid):
  """The processes whose parent is `pid` (Linux's /proc)."""
  found = []
  for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone since the listing
      continue
    if int(fields[1]) == pid:
      found.append(int(stat.parent.name))
  return found


def running(pid):
  """Whether process `pid` is alive: neither gone nor a zombie no one has reaped yet."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def wait_until(condition, seconds, what):
  """Polls `condition` until it holds; fails with `what` after `seconds`."""
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
    time.sleep(0.01)


def _until_a_stop_signal(started):
  """A call that marks its start and waits for a stop signal: what reached its worker."""
  Path(started, str(os.getpid())).touch()
  deadline = time.monotonic() + 20
  while (first := interrupts.take()) is None:
    assert time.monotonic() < deadline, "no stop signal reached the worker"
    time.sleep(0.01)
  time.sleep(10 * workers.WATCH_SECONDS)  # time enough for a second copy of the signal to come
  return first, interrupts.take(), os.getpgrp() == os.getpid(), os.getpid()


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@needs_proc
@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="needs two cores to share")
def test_a_stop_signal_reaches_each_running_call_once_and_no_waiting_call_starts(tmp_path):
  """What a sweep's runs rely on: a stop signal to the sweep (in a group of its own, so not
  the workers' as well) is passed on once to each worker, and no call starts after it."""
  handler = signal.getsignal(signal.SIGTERM)
  with workers.core_pool(2) as (pool, _):
    futures = [pool.submit(_until_a_stop_signal, tmp_path) for _ in range(4)]
    wait_until(lambda: len(list(tmp_path.iterdir())) == 2, 60, "the first two calls did not start")
    assert signal.getsignal(signal.SIGTERM) is not handler  # else the signal would end pytest
    os.kill(os.getpid(), signal.SIGTERM)  # the pool's handler takes it
    results = [future.exception() or future.result() for future in futures]
  assert pool.signal_name == "SIGTERM"
  passed_on, waiting = results[:2], results[2:]
  assert [result[:3] for result in passed_on] == [("SIGTERM", None, True)] * 2
  assert all(isinstance(result, workers.NotStarted) for result in waiting)
  assert len(list(tmp_path.iterdir())) == 2  # the waiting calls never began
  assert not any(running(result[3]) for result in passed_on)  # the workers exited
  assert signal.getsignal(signal.SIGTERM) is handler  # and this process's handler is put back


def _a_loop_until_stopped(folder):
  """A training loop's stop flag, waiting for a stop: 'stopped at once' if a second one came.

  Touches folder/started/PID once it listens and folder/stopped/PID once a stop reached it.
  """
  from distill import loop  # noqa: PLC0415 (in the worker)

  with loop._StopFlag() as stop:
    Path(folder, "started", str(os.getpid())).touch()
    deadline = time.monotonic() + 20
    while stop.signal_name is None:
      assert time.monotonic() < deadline, "no stop signal reached the loop"
      time.sleep(0.01)
    Path(folder, "stopped", str(os.getpid())).touch()
    try:
      time.sleep(20 * workers.WATCH_SECONDS)  # time enough for a second copy of the signal
    except KeyboardInterrupt:
      return "stopped at once"
  return stop.signal_name


@needs_proc
@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="needs two cores to share")
@pytest.mark.parametrize("sweep_first", [False, True], ids=["workers-first", "sweep-first"])
def test_a_signal_sent_to_every_process_at_once_stops_each_run_once(tmp_path, sweep_first):
  """A batch system's cancel signals the sweep and its workers together: each worker's own copy
  and the one the sweep passes on are one stop (a checkpoint), not two (a stop at once), in
  whichever order they reach the worker."""
  started, stopped = tmp_path / "started", tmp_path / "stopped"
  started.mkdir()
  stopped.mkdir()
  with workers.core_pool(2) as (pool, _):
    futures = [pool.submit(_a_loop_until_stopped, tmp_path) for _ in range(2)]
    wait_until(lambda: len(list(started.iterdir())) == 2, 60, "the calls did not start")
    pids = [int(path.name) for path in started.iterdir()]
    if sweep_first:
      os.kill(os.getpid(), signal.SIGTERM)  # the pool's handler takes it and passes it on
      wait_until(lambda: len(list(stopped.iterdir())) == 2, 20,
                 "the sweep's stop did not reach the loops")
    for pid in pids:
      os.kill(pid, signal.SIGTERM)
    if not sweep_first:
      os.kill(os.getpid(), signal.SIGTERM)
    results = [future.result() for future in futures]
  assert results == ["SIGTERM", "SIGTERM"]


_DYING_SWEEP = """
import sys, time
sys.path.insert(0, {tests!r})
from test_workers import _until_a_stop_signal
from distill import workers
with workers.core_pool(2) as (pool, _):
  calls = [pool.submit(_until_a_stop_signal, {started!r}) for _ in range(2)]
  time.sleep(600)
"""


@needs_proc
@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="needs two cores to share")
def test_workers_stop_their_calls_and_exit_when_the_sweep_dies(tmp_path):
  """A sweep killed outright (SIGKILL, or SIGHUP when its terminal closes, which no longer
  reaches workers in their own group) leaves no worker behind."""
  started = tmp_path / "started"
  started.mkdir()
  script = _DYING_SWEEP.format(tests=str(Path(__file__).parent), started=str(started))
  # Its output to a file: killed, it leaves multiprocessing's tracker a warning to print.
  with (tmp_path / "output.txt").open("w") as output:
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=output, stderr=output,
                             start_new_session=True)
  try:
    wait_until(lambda: len(list(started.iterdir())) == 2, 60, "the calls did not start")
    pids = [int(path.name) for path in started.iterdir()]
    sweep.kill()
    sweep.wait()
    wait_until(lambda: not any(running(pid) for pid in pids), 10, "a worker outlived its sweep")
  finally:
    for pid in [int(path.name) for path in started.iterdir()]:
      if running(pid):
        os.kill(pid, signal.SIGKILL)


def _count_until_done(folder):
  """A call that adds a byte to a file named by its process id, over and over, until
  `folder`/done exists: the file's size is its progress."""
  progress = Path(folder, str(os.getpid()))
  while not Path(folder, "done").exists():
    with progress.open("ab") as file:
      file.write(b".")
    time.sleep(0.005)
  return os.getpid()


_SUSPENDED_SWEEP = """
import signal, sys
sys.path.insert(0, {tests!r})
from test_workers import _count_until_done
from distill import workers
with workers.core_pool(2) as (pool, _):
  calls = [pool.submit(_count_until_done, {folder!r}) for _ in range(2)]
  print(sorted(call.result() for call in calls))
print(all(signal.getsignal(sig) is signal.SIG_DFL for sig in workers.JOB_CONTROL_SIGNALS))
"""


def state(pid):
  """Process `pid`'s state letter in /proc: 'T' once it has stopped."""
  return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@needs_proc
@pytest.mark.skipif(len(workers.available_cores()) < 2, reason="needs two cores to share")
def test_ctrl_z_stops_the_workers_with_the_sweep_and_fg_continues_them(tmp_path):
  """A worker in a group of its own never gets the terminal's SIGTSTP: the sweep stops its
  workers before itself, and continues them when it is continued."""
  folder = tmp_path / "progress"
  folder.mkdir()
  script = _SUSPENDED_SWEEP.format(tests=str(Path(__file__).parent), folder=str(folder))
  with (tmp_path / "output.txt").open("w") as output:
    # A group of its own in this session, as a shell's job (a new session would make it an
    # orphaned group, which ignores SIGTSTP); the signals go to its process alone, never
    # to this one.
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=output, stderr=output,
                             process_group=0)
  pids = []
  try:
    wait_until(lambda: len(list(folder.iterdir())) == 2, 60, "the calls did not start")
    pids = [int(path.name) for path in folder.iterdir()]

    def progress():
      return [(folder / str(pid)).stat().st_size for pid in pids]

    os.kill(sweep.pid, signal.SIGTSTP)
    wait_until(lambda: all(state(pid) == "T" for pid in [sweep.pid, *pids]), 10,
               "the sweep and its workers did not all stop")
    # Stopped processes write nothing: a write under way when the stop came ended before it.
    stopped_at = progress()
    time.sleep(0.2)
    assert progress() == stopped_at
    os.kill(sweep.pid, signal.SIGCONT)
    wait_until(lambda: all(now > then for now, then in zip(progress(), stopped_at, strict=True)),
               10, "the workers did not continue")
    (folder / "done").touch()
    assert sweep.wait(timeout=60) == 0, (tmp_path / "output.txt").read_text()
  finally:
    sweep.kill()
    for pid in pids:
      if running(pid):
        os.kill(pid, signal.SIGKILL)
  assert (tmp_path / "output.txt").read_text() == f"{sorted(pids)}\nTrue\n"

"""distill.workers: runs side by side, each process on its own share of the CPU cores."""

import os
import sys

import pytest

from distill import workers
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

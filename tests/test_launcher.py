"""The `distill` command starts itself again with glibc's huge-page tunable where it helps."""

import os
import subprocess
import sys

import pytest

from distill import launcher

MADVISE_GLIBC = {"glibc_version": "2.36", "thp_mode": "madvise"}


def test_the_tunable_is_added_where_huge_pages_are_left_to_madvise():
  environment = launcher.restart_environment({"PATH": "/bin"}, **MADVISE_GLIBC)
  assert environment == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
                         "DISTILL_RESTARTED_FOR_HUGE_PAGES": "1"}
  # Restarted once, never again, even where glibc drops the tunable (a setuid program).
  assert launcher.restart_environment({"PATH": "/bin", "DISTILL_RESTARTED_FOR_HUGE_PAGES": "1"},
                                      **MADVISE_GLIBC) is None
  # The user's own tunables are kept.
  kept = launcher.restart_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                      **MADVISE_GLIBC)
  assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, glibc_version, thp_mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "2.36", "madvise"),  # already restarted
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "2.36", "madvise"),  # the user's choice
    ({"DISTILL_HUGE_PAGES": "off"}, "2.36", "madvise"),
    ({"DISTILL_HUGE_PAGES": "0"}, "2.36", "madvise"),
    ({}, "2.36", "always"),  # huge pages without asking
    ({}, "2.36", "never"),  # none to be had
    ({}, "2.36", None),  # no such setting (not Linux)
    ({}, "2.34", "madvise"),  # the tunable came in glibc 2.35
    ({}, None, "madvise"),  # another C library (musl)
])
def test_the_process_goes_on_as_started_elsewhere(environ, glibc_version, thp_mode):
  assert launcher.restart_environment(environ, glibc_version, thp_mode) is None


def test_huge_pages_in_use_reads_the_tunable(monkeypatch):
  monkeypatch.setattr(launcher, "_thp_mode", lambda: "madvise")
  monkeypatch.setattr(launcher, "_glibc_version", lambda: "2.36")
  assert launcher.huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  assert not launcher.huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert not launcher.huge_pages_in_use({})
  monkeypatch.setattr(launcher, "_glibc_version", lambda: "2.34")
  assert not launcher.huge_pages_in_use({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
  monkeypatch.setattr(launcher, "_thp_mode", lambda: "always")
  assert launcher.huge_pages_in_use({})


def test_a_process_restarts_once_with_the_same_arguments():
  # The child restarts itself where this machine calls for it, then reports what it runs with.
  code = ("import os, sys; from distill import launcher; launcher.restart_with_huge_pages(); "
          "print(repr(os.environ.get('GLIBC_TUNABLES')), launcher.huge_pages_in_use(), "
          "sys.argv[1:])")
  environ = {key: value for key, value in os.environ.items()
             if key not in ("GLIBC_TUNABLES", launcher.HUGE_PAGES_ENV, launcher._RESTARTED_ENV)}
  result = subprocess.run([sys.executable, "-c", code, "a b", "--c"], env=environ,
                          capture_output=True, text=True, check=True, timeout=60)
  restarts = launcher.restart_environment(environ, launcher._glibc_version(),
                                          launcher._thp_mode()) is not None
  expected_tunables = repr("glibc.malloc.hugetlb=1" if restarts else None)
  assert result.stdout.split(" ", 1)[0] == expected_tunables
  assert result.stdout.strip().endswith("['a b', '--c']")
  assert ("True" in result.stdout) == (restarts or launcher._thp_mode() == "always")
  # Turned off, it never restarts.
  off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**environ, launcher.HUGE_PAGES_ENV: "off"}, timeout=60)
  assert off.stdout.startswith("None ")


def test_python_dash_m_distill_runs_the_command_through_its_restart():
  # `python -m distill` restarts itself the same way (sys.orig_argv keeps the `-m distill`).
  environ = {key: value for key, value in os.environ.items()
             if key not in ("GLIBC_TUNABLES", launcher.HUGE_PAGES_ENV, launcher._RESTARTED_ENV)}
  result = subprocess.run([sys.executable, "-m", "distill", "teacher", "--help"], env=environ,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Usage: python -m distill teacher")

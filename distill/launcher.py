"""The `distill` command's entry point: the memory allocator set for XLA:CPU, then the CLI.

XLA:CPU allocates each execution's scratch buffer afresh (`posix_memalign`)
and frees it when the execution ends; glibc serves a block above 32 MiB with
a fresh `mmap`, so every dispatch of a large model page-faults its whole
scratch buffer again, 4 KiB at a time (the default teacher: 162 MB, ~40,000
faults a dispatch). glibc's tunable `glibc.malloc.hugetlb=1` asks for
transparent huge pages on those mappings instead (~400 faults). glibc reads
its tunables when a process starts, so the command starts itself once more
with the tunable added, before anything is imported, where that helps: glibc
2.35 or newer, and transparent huge pages left to `madvise` (with `always`
they are used anyway; with `never`, not at all).

$DISTILL_HUGE_PAGES=off (or 0, false, no) keeps the process as started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

HUGE_PAGES_ENV = "DISTILL_HUGE_PAGES"
# Set in the restarted process: glibc drops GLIBC_TUNABLES from a setuid program's environment,
# and a process must not restart itself over and over.
_RESTARTED_ENV = "DISTILL_RESTARTED_FOR_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def restart_environment(environ: Mapping[str, str], glibc_version: str | None,
                        thp_mode: str | None) -> dict[str, str] | None:
  """The environment to start again with, or None to go on as is.

  Args:
    environ: this process's environment.
    glibc_version: e.g. '2.36', or None when the C library is not glibc.
    thp_mode: the kernel's transparent huge page mode ('always', 'madvise',
      'never'), or None when it cannot be read.
  """
  if (environ.get(HUGE_PAGES_ENV, "").strip().lower() in ("off", "0", "false", "no")
      or _RESTARTED_ENV in environ):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or not _tunable_gives_huge_pages(glibc_version, thp_mode):
    return None
  return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{TUNABLE}=1"])),
          _RESTARTED_ENV: "1"}


def huge_pages_in_use(environ: Mapping[str, str] | None = None) -> bool:
  """Whether this process's large allocations get transparent huge pages (see the module)."""
  environ = os.environ if environ is None else environ
  mode = _thp_mode()
  return mode == "always" or (_tunable_gives_huge_pages(_glibc_version(), mode)
                              and f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "").split(":"))


def huge_page_environment() -> dict[str, str] | None:
  """This process's environment with the tunable added, where it helps on this machine; or None.

  `benchmarks/bench.sh` starts every process it times (PyTorch's too) with it.
  """
  return restart_environment(os.environ, _glibc_version(), _thp_mode())


def restart_with_huge_pages() -> None:
  """Starts this process again with the tunable added, where it helps; otherwise returns."""
  environment = huge_page_environment()
  if environment is None or not sys.orig_argv:
    return
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
  except OSError:
    pass  # Go on as started: slower on large models, the same results.


def main() -> None:
  """The `distill` command: huge pages first (see the module), then the CLI."""
  restart_with_huge_pages()
  from distill.cli import main as cli  # noqa: PLC0415

  cli()


def _glibc_version() -> str | None:
  try:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
  except (AttributeError, ValueError, OSError):  # Not glibc, or not a POSIX system.
    return None
  return version if name == "glibc" else None


def _thp_mode() -> str | None:
  try:
    with open(_THP_SETTING) as setting:
      text = setting.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def _tunable_gives_huge_pages(glibc_version: str | None, thp_mode: str | None) -> bool:
  """Whether the tunable decides: glibc 2.35 or newer, and huge pages left to `madvise`."""
  return thp_mode == "madvise" and _at_least(glibc_version, (2, 35))


def _at_least(version: str | None, minimum: tuple[int, int]) -> bool:
  try:
    return tuple(int(part) for part in (version or "").split(".")[:2]) >= minimum
  except ValueError:
    return False

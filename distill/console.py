"""Messages for people: progress notes on stderr, warnings that stand out."""

from __future__ import annotations

import click

from distill.io import is_primary_process


class Console:
  """Where the library talks; `quiet` hides notes but never warnings.

  Only process 0 of a multi-process run speaks.
  """

  def __init__(self, quiet: bool = False):
    self.quiet = quiet

  def info(self, message: str) -> None:
    """A normal progress note."""
    if not self.quiet and is_primary_process():
      click.echo(message, err=True)

  def warn(self, message: str) -> None:
    """A loud message: bold red, framed, never silenced."""
    if not is_primary_process():
      return
    bar = "!" * min(max(len(message), 20), 100)
    click.secho(f"{bar}\n{message}\n{bar}", err=True, fg="red", bold=True)

"""Messages for people: progress notes on stderr, warnings that stand out."""

from __future__ import annotations

import click


class Console:
  """Where the library talks; `quiet` hides notes but never warnings."""

  def __init__(self, quiet: bool = False):
    self.quiet = quiet

  def info(self, message: str) -> None:
    """A normal progress note."""
    if not self.quiet:
      click.echo(message, err=True)

  def warn(self, message: str) -> None:
    """A loud message: bold red, framed, never silenced."""
    bar = "!" * min(max(len(message), 20), 100)
    click.secho(f"{bar}\n{message}\n{bar}", err=True, fg="red", bold=True)

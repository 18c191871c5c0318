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


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, quiet: bool = False):
  """A progress bar: tqdm's on a terminal; through a pipe, a plain line at every 10%.

  Every bar in distill comes from here. A bar redraws itself with carriage
  returns, which a log file keeps as one endless line of frames; so when
  stderr is not a terminal the progress is a few whole lines instead. Hidden
  when `quiet` and on every process but 0.
  """
  import sys  # noqa: PLC0415

  hidden = quiet or not is_primary_process()
  if not hidden and sys.stderr.isatty():
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
                dynamic_ncols=True, leave=False)
  return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                      hidden=hidden)


class LineProgress:
  """tqdm's interface (iterate, update, set_postfix, close) as a line per 10% on stderr."""

  STEPS = 10

  def __init__(self, iterable=None, *, total: int | None, desc: str, unit: str, initial: int,
               hidden: bool):
    self.iterable = iterable
    self.total = len(iterable) if total is None and iterable is not None else total
    self.desc, self.unit, self.hidden = desc, unit, hidden
    self.n = initial
    self.postfix: dict[str, str] = {}
    self._shown = self._tenth()

  def _tenth(self) -> int:
    return self.n * self.STEPS // self.total if self.total else 0

  def __iter__(self):
    for item in self.iterable:
      yield item
      self.update(1)
    self.close()

  def update(self, count: int = 1) -> None:
    """Advances by `count`; prints a line when a new tenth of the total is reached.

    The last line waits for `close`, so that it shows the numbers of the end
    (a loop logs its last step after the step itself).
    """
    self.n += count
    tenth = self._tenth()
    if tenth > self._shown and self.n < self.total:  # a tenth counts only with a total
      self._show(tenth)

  def _show(self, tenth: int) -> None:
    self._shown = tenth
    if self.hidden:
      return
    values = dict(self.postfix)
    # Numbers from a step of their own (a loop's log line, behind the count) say which.
    step = values.pop("step", None)
    extra = ", ".join(f"{key}={value}" for key, value in values.items())
    if extra:
      extra = f"; at step {step}: {extra}" if step is not None else f", {extra}"
    units = self.unit + ("es" if self.unit.endswith(("s", "h", "x")) else "s")
    click.echo(f"{self.desc}: {100 * self.n // self.total}% ({self.n} of {self.total} "
               f"{units}){extra}", err=True)

  def set_postfix(self, values: dict[str, str], refresh: bool = True) -> None:
    """Numbers shown on the next line."""
    del refresh
    self.postfix = dict(values)

  def close(self) -> None:
    """Prints the last line, if the end was reached and it is not shown yet; the lines stay."""
    tenth = self._tenth()
    if tenth > self._shown:
      self._show(tenth)

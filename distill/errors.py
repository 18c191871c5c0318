"""Errors that reach the user as one clear line instead of a traceback."""


class UserError(Exception):
  """A mistake in what the user asked for (bad path, unknown name, damaged file).

  The CLI prints the message on one line to stderr and exits with
  `exit_code` (2 unless said otherwise); library callers can catch it like
  any exception.
  """

  def __init__(self, message: str, *, exit_code: int = 2):
    super().__init__(message)
    self.exit_code = exit_code


def one_line(error: BaseException) -> str:
  """An exception's text on one line (its type's name if it has none), for a UserError."""
  text = " ".join(str(error).split())
  return text or type(error).__name__


def first_few(values, limit: int = 5, *, quoted: bool = False, sep: str = ", ") -> str:
  """'1, 2, 3, 4, 5 and 12 more': the first `limit` of many values (`quoted`: as repr), for a
  message. One value past the limit is shown rather than counted: 'and 1 more' would hide a
  name that fits in its place."""
  # A numpy array's own scalars would print as np.str_('cat'); its Python values do not.
  values = [repr(value) if quoted else str(value)
            for value in (values.tolist() if hasattr(values, "tolist") else values)]
  if len(values) <= limit + 1:
    return sep.join(values)
  return sep.join(values[:limit]) + f" and {len(values) - limit:,} more"


def _size_text(count: int) -> str:
  """A byte count as people read it: '13.2 TB'."""
  for unit in ("bytes", "kB", "MB", "GB", "TB"):
    if count < 1000 or unit == "TB":
      return f"{count:,} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
    count /= 1000
  raise AssertionError("unreachable")


def resource_failure(error: BaseException) -> UserError | None:
  """A failure of the machine rather than the program, as one line with what to do, or None.

  Running out of accelerator or host memory (XLA's RESOURCE_EXHAUSTED) and a
  full disk (ENOSPC, which Orbax wraps in its own errors) end a run whose
  checkpoint is intact; a traceback from deep in XLA or Orbax says neither. A
  folder the user may not write (EACCES, EPERM, a read-only file system) is
  named with the permission it lacks.
  """
  import errno  # noqa: PLC0415
  import re  # noqa: PLC0415

  chain, cause = [], error
  while cause is not None and len(chain) < 10:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  text = " ".join(str(cause) for cause in chain)
  if any(getattr(cause, "errno", None) == errno.ENOSPC for cause in chain) or (
      "No space left on device" in text):
    return UserError("the disk is full (no space left on device); free some space and run the "
                     "same command again: it resumes from the last checkpoint", exit_code=1)
  denied = next((cause for cause in chain if getattr(cause, "errno", None) in (
      errno.EACCES, errno.EPERM, errno.EROFS)), None)
  if denied is not None:  # a folder the user may not write (or read): theirs to choose
    where = f" {denied.filename}" if getattr(denied, "filename", None) else ""
    return UserError(f"cannot use{where}: {denied.strerror.lower()}; give a folder you can "
                     "write to, or fix its permissions", exit_code=1)
  if "RESOURCE_EXHAUSTED" in text and "memory" in text.lower():
    size = re.search(r"allocat\w* (\d+) bytes", text)
    asked = f" ({_size_text(int(size.group(1)))} asked for)" if size else ""
    return UserError(f"out of memory{asked}; lower the batch size (--batch-size, "
                     "student.batch_size, eval_batch_size) or use smaller images or a smaller "
                     "model, then run the command again", exit_code=1)
  return None

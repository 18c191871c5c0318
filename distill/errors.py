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

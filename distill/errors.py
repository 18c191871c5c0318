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

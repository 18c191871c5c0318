"""Errors that reach the user as one clear line instead of a traceback."""


class UserError(Exception):
  """A mistake in what the user asked for (bad path, unknown name, damaged file).

  The CLI prints the message on one line to stderr and exits with status 2;
  library callers can catch it like any exception.
  """

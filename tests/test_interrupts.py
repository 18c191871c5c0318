"""distill.interrupts: a command a stop signal ends exits with that signal's status."""

import os
import signal
import time

import pytest

from distill import cli, interrupts, loop


def test_the_exit_status_is_128_plus_the_signals_number():
  """As shells and batch systems report a process a signal ended."""
  assert interrupts.exit_status("SIGINT") == 130
  assert interrupts.exit_status("SIGTERM") == 143


def _stopped_twice(sig):
  """A command whose training loop gets `sig` twice: the second stops it at once."""

  @cli._user_errors
  def command():
    with loop._StopFlag() as stop:
      os.kill(os.getpid(), sig)
      deadline = time.monotonic() + 10
      while stop.signal_name is None:  # the handler runs between two of these lines
        assert time.monotonic() < deadline, "the first signal did not reach the loop"
        time.sleep(0.01)
      os.kill(os.getpid(), sig)
      time.sleep(10)  # the second signal's handler raises here
    raise AssertionError("the second signal did not stop the command")

  return command


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_command_a_second_stop_signal_ends_exits_with_that_signals_status(sig, status):
  with pytest.raises(SystemExit) as exited:
    _stopped_twice(sig)()
  assert exited.value.code == status


def test_a_plain_keyboard_interrupt_is_a_ctrl_c():
  """Python's own (its SIGINT handler, before a command listens) names no signal."""
  assert interrupts.interrupted_by(KeyboardInterrupt()) == "SIGINT"
  assert interrupts.interrupted_by(KeyboardInterrupt("SIGTERM")) == "SIGTERM"

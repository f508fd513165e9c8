"""SIGTERM ends a command as Ctrl-C does, with exit 143, and leaves no trace after it."""

from __future__ import annotations

import os
import signal

import pytest

from dist_train.stopping import EXIT_CODE, INTERRUPTED, stopped_by_sigterm


def _terminated() -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")


def _interrupted() -> int:
    raise KeyboardInterrupt


def test_sigterm_is_exit_143_and_the_callers_handler_is_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert stopped_by_sigterm(_terminated) == EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) == before
    assert stopped_by_sigterm(lambda: 0) == 0


def test_ctrl_c_is_exit_130_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A later Ctrl-C is a Ctrl-C (once, any KeyboardInterrupt after a SIGTERM read 143):
    130 and one line, where it printed a traceback of every frame it passed (and under
    Ray, whose Ctrl-C handler ends with sys.exit, 1 and nothing)."""
    stopped_by_sigterm(_terminated)
    assert stopped_by_sigterm(_interrupted) == INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"

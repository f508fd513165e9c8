"""SIGTERM ends a command as Ctrl-C does, with exit 143, and leaves no trace after it."""

from __future__ import annotations

import os
import signal

import pytest

from dist_train.stopping import EXIT_CODE, stopped_by_sigterm


def _terminated() -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")


def _interrupted() -> int:
    raise KeyboardInterrupt


def test_sigterm_is_exit_143_and_the_callers_handler_is_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert stopped_by_sigterm(_terminated) == EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) == before
    # a later Ctrl-C is a Ctrl-C (once, any KeyboardInterrupt after a SIGTERM read 143)
    with pytest.raises(KeyboardInterrupt):
        stopped_by_sigterm(_interrupted)
    assert stopped_by_sigterm(lambda: 0) == 0

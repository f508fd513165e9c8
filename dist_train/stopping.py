"""SIGTERM as a clean stop for the command-line entry points (light: no torch import)."""

from __future__ import annotations

import signal
from collections.abc import Callable

EXIT_CODE = 128 + signal.SIGTERM  # 143, as a process the signal ended reports


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that whatever handles Ctrl-C handles it:
    Ray's wait for its workers ends on it (a SystemExit there ended the process with 1),
    though Ray raises it again as a plain KeyboardInterrupt."""


_received: list[int] = []  # the SIGTERMs this process got


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``docker stop``, a scheduler's stop) end this process as
    Ctrl-C does, through its ``finally`` blocks: the ranks it started are stopped and its
    temporary files removed, where the default action ended it on the spot, its ranks left
    training. :func:`stopped_by_sigterm` turns it into exit 143."""

    def terminated(signum: int, frame: object) -> None:
        _received.append(signum)
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)


def stopped_by_sigterm(main: Callable[[], int]) -> int:
    """``main()``'s exit code, or 143 if SIGTERM stopped it."""
    try:
        return main()
    except KeyboardInterrupt:
        if _received:
            return EXIT_CODE
        raise

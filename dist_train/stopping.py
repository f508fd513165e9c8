"""SIGTERM as a clean stop for the command-line entry points (light: no torch import)."""

from __future__ import annotations

import signal


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``docker stop``, a scheduler's stop) end this process as
    Ctrl-C does, through its ``finally`` blocks: the ranks it started are stopped and its
    temporary files removed, where the default action ended it on the spot, its ranks left
    training. It exits 143 (128 + SIGTERM), as a process the signal ended reports."""

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)

"""The command's standard output, and whether its reader left: ``dist-train ... | head``
closes the pipe once it has its lines, which is no command's error."""

from __future__ import annotations

import select
import sys


def reader_gone() -> bool:
    """Whether stdout's reader has closed it (poll: an error on a pipe, a hang-up on a
    socket)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(events & gone for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (a test's capture), or no poll
        return False

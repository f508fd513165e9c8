"""A stop the driver leaves for the Ray workers of its embedded instance: a file they watch.

A SIGTERM to the driver's whole process group (a shell's ``kill -- -PGID``, a scheduler
stopping a job's processes) also reaches the embedded instance's daemons, which then shut
down gracefully and leave its workers, in process groups of their own, training and
committing checkpoints for seconds after the stop; the driver itself waits on that
shutdown. Each worker polls the file and ends when it appears, whatever Ray's daemons do.
The workers run on the driver's machine, so a file in its temporary directory reaches them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

CHECK_SECONDS = 0.25  # how often a worker looks: a stat, a few microseconds
STOPPED_EXIT = 143  # a worker's exit status when the stop ends it: as SIGTERM's


class StopMarker:
    """Where the driver leaves its stop: :meth:`leave` writes it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "stop"

    def leave(self) -> None:
        """Write the stop, best effort: it runs as the launch ends, whatever ended it (a
        finished run's workers are gone already), and must not turn that end into a
        failure of its own (a temporary-file cleaner may have removed the folder)."""
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()


@contextlib.contextmanager
def stop_marker() -> Iterator[StopMarker]:
    """A :class:`StopMarker` in a temporary folder, removed with it after the block."""
    folder = Path(tempfile.mkdtemp(prefix="dist-train-stop-"))
    try:
        yield StopMarker(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def end_on_stop(path: str, every: float = CHECK_SECONDS) -> None:
    """End this process (``os._exit``: no cleanup runs, as after a kill; a partial save
    stays uncommitted) once ``path`` exists, checked every ``every`` s by a daemon thread."""

    def watch() -> None:
        while not os.path.exists(path):
            time.sleep(every)
        os._exit(STOPPED_EXIT)

    threading.Thread(target=watch, name="dist-train-stop-watch", daemon=True).start()

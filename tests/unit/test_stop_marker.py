"""The stop the driver of an embedded Ray instance leaves for its workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from dist_train.launchers.stop_marker import STOPPED_EXIT, StopMarker, stop_marker


def test_a_watching_process_ends_once_the_stop_is_left() -> None:
    with stop_marker() as stop:
        watch = (
            "import sys, time; from dist_train.launchers.stop_marker import end_on_stop; "
            f"end_on_stop({str(stop.path)!r}, every=0.05); print('watching', flush=True); "
            "time.sleep(60)"
        )
        worker = subprocess.Popen([sys.executable, "-c", watch], stdout=subprocess.PIPE, text=True)
        try:
            assert worker.stdout is not None and worker.stdout.readline() == "watching\n"
            time.sleep(0.2)
            assert worker.poll() is None  # no stop yet: it goes on
            stop.leave()
            assert worker.wait(timeout=10) == STOPPED_EXIT
        finally:
            worker.kill()
        folder = stop.path.parent
    assert not folder.exists()  # removed after the block


def test_leaving_the_stop_never_fails_the_launch(tmp_path: Path) -> None:
    """It runs as the launch ends, a finished one too: a temporary-file cleaner that
    removed its folder made a finished run exit 1 without its summary."""
    gone = StopMarker(tmp_path / "removed")
    gone.leave()  # the folder made again
    assert gone.path.exists()
    (tmp_path / "file").write_text("")
    StopMarker(tmp_path / "file").leave()  # cannot be made: nothing raised

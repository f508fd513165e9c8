"""Fault injection for recovery tests and drills.

``DIST_TRAIN_KILL_AT=<rank>:<step>`` makes that rank ``SIGKILL`` itself right after training
global step ``<step>``, the way a lost node or an OOM kill ends a worker: no exception, no
cleanup. It fires once per run directory (a marker file records it), so the restarted
worker group trains on.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "DIST_TRAIN_KILL_AT"


def kill_point() -> tuple[int, int] | None:
    """The (rank, step) of ``DIST_TRAIN_KILL_AT``, or None."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    try:
        rank, step = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: expected <rank>:<step>, e.g. 1:12") from None
    return rank, step


def maybe_kill(run_dir: str | Path, rank: int, step: int) -> None:
    """SIGKILL this process if ``DIST_TRAIN_KILL_AT`` names this rank and step (once)."""
    point = kill_point()
    if point != (rank, step):
        return
    marker = Path(run_dir) / "faults" / f"killed-rank{rank}-step{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.time()}\n")
    os.kill(os.getpid(), signal.SIGKILL)

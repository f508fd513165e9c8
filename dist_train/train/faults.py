"""Fault injection for recovery tests and drills.

``DIST_TRAIN_KILL_AT=<rank>:<step>`` makes that rank ``SIGKILL`` itself right after training
global step ``<step>``; ``<rank>:<step>:save`` does it in the middle of saving that step's
checkpoint, after the rank wrote its shards and before the commit. Either is what a lost
node or an OOM kill does to a worker: no exception, no cleanup. It fires once per run
directory (a marker file records it), so the restarted worker group trains on.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "DIST_TRAIN_KILL_AT"
PHASES = ("step", "save")


def kill_point() -> tuple[int, int, str] | None:
    """The (rank, step, phase) of ``DIST_TRAIN_KILL_AT``, or None."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    try:
        rank, step = int(parts[0]), int(parts[1])
        phase = parts[2] if len(parts) == 3 else "step"
        if len(parts) > 3 or phase not in PHASES:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"{ENV}={spec!r}: expected <rank>:<step> or <rank>:<step>:save, e.g. 1:12"
        ) from None
    return rank, step, phase


def maybe_kill(run_dir: str | Path, rank: int, step: int, phase: str = "step") -> None:
    """SIGKILL this process if ``DIST_TRAIN_KILL_AT`` names this rank, step and phase (once)."""
    if kill_point() != (rank, step, phase):
        return
    marker = Path(run_dir) / "faults" / f"killed-rank{rank}-step{step}-{phase}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.time()}\n")
    os.kill(os.getpid(), signal.SIGKILL)

"""Fault injection for recovery tests and drills.

``DIST_TRAIN_KILL_AT=<rank>:<step>`` makes that rank ``SIGKILL`` itself right after training
global step ``<step>``; ``<rank>:<step>:save`` does it in the middle of saving that step's
checkpoint, after the rank wrote its shards and before the commit. Either is what a lost
node or an OOM kill does to a worker: no exception, no cleanup. It fires once per run
directory (a marker file records it), so the restarted worker group trains on.

``DIST_TRAIN_SAVE_FAULT=<rank>:<step>:<kind>`` makes that rank's write of step ``<step>``'s
checkpoint fail the way storage fails: ``enospc`` (the disk fills after 64 KiB of its
shards), ``error`` (opening its shard file raises) or ``vanish`` (rank 0 only: the checkpoint
directory disappears after every shard is written, before the commit: a dropped mount or a
deleted bucket prefix). The save must fail with a clear error and leave earlier checkpoints as they
were.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dist_train import storage

ENV = "DIST_TRAIN_KILL_AT"
PHASES = ("step", "save")
SAVE_FAULT_ENV = "DIST_TRAIN_SAVE_FAULT"
SAVE_FAULTS = ("enospc", "error", "vanish")
# the drills' variables, which the Ray launcher hands from the driver to its workers
DRILL_ENVS = (ENV, SAVE_FAULT_ENV)
FULL_AFTER_BYTES = 64 << 10


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


def maybe_kill(
    run_dir: str | Path,
    rank: int,
    step: int,
    phase: str = "step",
    settle: Callable[[], Any] | None = None,
) -> None:
    """SIGKILL this process if ``DIST_TRAIN_KILL_AT`` names this rank, step and phase (once).

    ``settle`` runs first (the loop waits for a checkpoint still being written, so a drill
    "after step N" finds every earlier save committed, as without background saves)."""
    if kill_point() != (rank, step, phase):
        return
    if settle is not None:
        settle()
    marker = Path(run_dir) / "faults" / f"killed-rank{rank}-step{step}-{phase}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{time.time()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def save_fault(rank: int, step: int) -> str | None:
    """The kind of ``DIST_TRAIN_SAVE_FAULT`` if it names this rank and step, else None."""
    spec = os.environ.get(SAVE_FAULT_ENV, "").strip()
    if not spec:
        return None
    parts = spec.split(":")
    try:
        want_rank, want_step, kind = int(parts[0]), int(parts[1]), parts[2]
        if len(parts) != 3 or kind not in SAVE_FAULTS:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"{SAVE_FAULT_ENV}={spec!r}: expected <rank>:<step>:<kind>, kind one of "
            f"{', '.join(SAVE_FAULTS)}"
        ) from None
    return kind if (want_rank, want_step) == (rank, step) else None


class _FaultyStorage:
    """A DCP filesystem object that fails as ``kind`` says (see the module docstring)."""

    def __init__(self, fs: Any, kind: str, where: storage.Location) -> None:
        self.fs, self.kind, self.where, self.written = fs, kind, where, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    @contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
        if "w" in mode and self.kind == "error":
            raise OSError(errno.EIO, "injected shard write failure", os.fspath(path))
        with self.fs.create_stream(path, mode) as raw:
            yield _Filling(raw, self) if "w" in mode and self.kind == "enospc" else raw

    def rename(self, path: Any, new_path: Any) -> None:
        self.fs.rename(path, new_path)  # DCP's last step: .metadata.tmp -> .metadata
        if self.kind == "vanish":
            storage.rmtree(self.where)


class _Filling:
    """A write stream on a disk that is full after ``FULL_AFTER_BYTES``."""

    def __init__(self, raw: Any, disk: _FaultyStorage) -> None:
        self.raw, self.disk = raw, disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def write(self, b: Any) -> int:
        self.disk.written += len(memoryview(b).cast("B"))
        if self.disk.written > FULL_AFTER_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self.raw.write(b))


def faulty_storage(rank: int, step: int, where: storage.Location) -> Callable[[Any], Any] | None:
    """A wrapper of DCP's filesystem object failing as ``DIST_TRAIN_SAVE_FAULT`` asks for this
    rank and step (None: no fault here)."""
    kind = save_fault(rank, step)
    if kind is None:
        return None
    return lambda fs: _FaultyStorage(fs, kind, where)

"""The input ledger: which rows each rank trained on, step by step, across failures.

With ``data.row_id_column`` set, every rank appends to ``<run dir>/ledger/rank-<r>.jsonl``:

- ``{"attempt": {"pid": ..., "resume_step": s, "unix": t}}`` when a worker (re)starts;
- ``{"step": k, "epoch": e, "unix": t, "ids": [...]}`` after each training step.

A restarted worker resumes from a checkpoint at step ``s``: the steps after ``s`` that the
failed attempt trained were rolled back with its model state. :func:`read` and
:func:`read_run` apply exactly that and return the rows behind the model the run ended with,
so a test (or a user auditing a run) can check that every row was trained on exactly once
per epoch. After an elastic restart with fewer workers some ranks never start again; only
:func:`read_run`, which looks at every rank's attempts, rolls their steps back.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def ledger_path(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / "ledger" / f"rank-{rank}.jsonl"


class Ledger:
    """One rank's append-only ledger. Each record is appended and flushed on its own (the file
    is not held open), so a killed worker leaves every step up to the kill."""

    def __init__(self, run_dir: str | Path, rank: int, resume_step: int) -> None:
        self.path = ledger_path(run_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        # A worker killed mid-write leaves a torn last line: end it, so it stays unreadable
        # on its own instead of swallowing this attempt's first record.
        self._append({"attempt": {"pid": os.getpid(), "resume_step": resume_step}}, torn)

    def _append(self, record: dict[str, Any], newline_first: bool = False) -> None:
        record["unix"] = time.time()
        with self.path.open("a") as f:
            f.write(("\n" if newline_first else "") + json.dumps(record) + "\n")

    def record(self, step: int, epoch: int, ids: np.ndarray | None) -> None:
        """The rows of global step ``step``."""
        self._append({"step": step, "epoch": epoch, "ids": [] if ids is None else ids.tolist()})


@dataclass(frozen=True)
class LedgerStep:
    epoch: int
    ids: list[int]
    unix: float


@dataclass(frozen=True)
class Attempt:
    pid: int
    resume_step: int
    unix: float


def read(path: Path) -> tuple[list[Attempt], dict[int, LedgerStep]]:
    """The attempts recorded in a rank's ledger, and the steps the run ended with.

    A step trained by a failed attempt after the step its successor resumed from is dropped
    (rolled back); a step trained again replaces the earlier record.
    """
    attempts: list[Attempt] = []
    steps: dict[int, LedgerStep] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a worker killed mid-write
        if "attempt" in rec:
            a = rec["attempt"]
            attempts.append(Attempt(a["pid"], a["resume_step"], rec["unix"]))
            steps = {k: v for k, v in steps.items() if k <= a["resume_step"]}
        elif "step" in rec:
            steps[rec["step"]] = LedgerStep(rec["epoch"], rec["ids"], rec["unix"])
        else:
            raise ValueError(f"{path}:{number}: not a ledger record")
    return attempts, steps


def read_run(run_dir: str | Path) -> dict[int, dict[int, LedgerStep]]:
    """Every rank's steps the run ended with: a step record counts unless some attempt, on
    any rank, started after it from an earlier step."""
    per_rank: dict[int, tuple[list[Attempt], dict[int, LedgerStep]]] = {}
    for path in sorted((Path(run_dir) / "ledger").glob("rank-*.jsonl")):
        per_rank[int(path.stem.split("-")[1])] = read(path)
    attempts = [a for found, _ in per_rank.values() for a in found]
    return {
        rank: {
            k: entry
            for k, entry in steps.items()
            if all(a.resume_step >= k for a in attempts if a.unix > entry.unix)
        }
        for rank, (_, steps) in sorted(per_rank.items())
    }

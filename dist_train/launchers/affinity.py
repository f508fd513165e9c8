"""Pin each CPU rank of a machine to cores of its own.

Unpinned, the OS moves a rank's threads between cores and lets ranks sharing a machine run
on each other's: on this project's 2-core machine the default job's step took 0.87x the
time at 2 ranks and 0.93x at 4 with each rank held to its own core (``dist-train bench
train``'s trials; docs/benchmarks.md, "Each rank on cores of its own"). Only a launcher
that owns the machine should pin: on a shared Ray node other jobs' workers may be pinned to
the same cores, and the OS could no longer move ours off them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from planners.cores import process_cores

TASKS = Path("/proc/self/task")


def rank_cores(cores: Sequence[int], local_rank: int, local_world_size: int) -> list[int]:
    """The cores of ``local_rank`` among ``local_world_size`` ranks sharing ``cores``: an equal
    run of consecutive cores each (the remainder left to the last rank), or, with more ranks
    than cores, the ranks dealt round the cores."""
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"local rank {local_rank} outside a world of {local_world_size}")
    ordered = sorted(cores)
    if not ordered:
        raise ValueError("no cores to pin to")
    if local_world_size > len(ordered):
        return [ordered[local_rank % len(ordered)]]
    each = len(ordered) // local_world_size
    end = len(ordered) if local_rank == local_world_size - 1 else (local_rank + 1) * each
    return ordered[local_rank * each : end]


def pin_process(cores: Sequence[int]) -> None:
    """Hold every thread of this process, and the threads it starts later, to ``cores``
    (``sched_setaffinity`` sets one thread's: the process's may already run gloo's, Ray's
    and jemalloc's)."""
    wanted = set(cores)
    for task in TASKS.iterdir():
        try:
            os.sched_setaffinity(int(task.name), wanted)
        except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            continue


def pin_local_rank(local_rank: int, local_world_size: int) -> list[int] | None:
    """Pin this process to its share of the cores it may use (:func:`rank_cores`); the cores,
    or None where there is nothing to pin (one rank, or no affinity on this OS)."""
    if local_world_size <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = rank_cores(process_cores(), local_rank, local_world_size)
    pin_process(cores)
    return cores

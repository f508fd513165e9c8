"""Pin each CPU rank of a machine to cores of its own.

Unpinned, the OS moves a rank's threads between cores and lets ranks sharing a machine run
on each other's: on this project's 2-core machine the default job's step took 0.90-0.93x
the time at 4 ranks with two ranks held to each core, and at 2 ranks, a core each, 0.87x
and 1.04x in two runs (``dist-train bench train``'s trials; docs/performance_log.md, "Each rank
on cores of its own"). Only a launcher that owns the machine should pin: on a shared Ray
node other jobs' workers may be pinned to the same cores, and the OS could no longer move
ours off them.

Nothing is pinned where pinning would crowd or skew the ranks: a rank with more threads than
its share of cores (libgomp sized its spinning for the cores it saw when it loaded, before
the pin), more ranks than cores but not a whole number of ranks a core (some cores would
carry one rank more), or an OpenMP binding the user set (it already placed the threads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from planners.cores import process_cores

TASKS = Path("/proc/self/task")
# OpenMP runtimes' own thread placement (libgomp's and Intel's): a user who set one chose it
OPENMP_BINDING = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")


def rank_cores(cores: Sequence[int], local_rank: int, local_world_size: int) -> list[int]:
    """The cores of ``local_rank`` among ``local_world_size`` ranks sharing ``cores`` (CPU
    ids, sorted): an equal run of them each (the remainder left to the last rank), or, with
    more ranks than cores, the ranks dealt round the cores."""
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


def can_pin() -> bool:
    """Whether this OS lets a process set its threads' CPUs (Linux does)."""
    return hasattr(os, "sched_setaffinity") and TASKS.is_dir()


def pin_process(cores: Sequence[int]) -> None:
    """Hold every thread of this process, and the threads it starts later, to ``cores``
    (``sched_setaffinity`` sets one thread's: the process's may already run gloo's, Ray's
    and jemalloc's). Does nothing where the OS cannot (:func:`can_pin`) or ``cores`` is
    empty."""
    if not cores or not can_pin():
        return
    wanted = set(cores)
    for task in TASKS.iterdir():
        try:
            os.sched_setaffinity(int(task.name), wanted)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def why_not_pinned(
    cores: int, local_world_size: int, threads: int, environ: Mapping[str, str] = os.environ
) -> str | None:
    """Why ``local_world_size`` ranks of ``threads`` threads each should not be pinned to
    ``cores`` cores (the module docstring), or None where they should."""
    if local_world_size <= 1:
        return "one rank has every core"
    if not can_pin():
        return "this OS sets no thread's CPUs"
    bound = [k for k in OPENMP_BINDING if k in environ]
    if bound:
        return f"{', '.join(bound)} already place the OpenMP threads"
    if local_world_size > cores and local_world_size % cores:
        return f"{local_world_size} ranks do not share {cores} cores evenly"
    if threads > max(1, cores // local_world_size):
        return f"{threads} threads a rank exceed its share of {cores} cores"
    return None


def pin_local_rank(local_rank: int, local_world_size: int, threads: int) -> list[int] | None:
    """Pin this process to its share of the cores it may use (:func:`rank_cores`); the cores,
    or None where it should not be pinned (:func:`why_not_pinned`)."""
    cores = process_cores()
    if not cores or why_not_pinned(len(cores), local_world_size, threads) is not None:
        return None
    share = rank_cores(cores, local_rank, local_world_size)
    pin_process(share)
    return share

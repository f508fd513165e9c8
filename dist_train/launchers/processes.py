"""Launch the worker function in plain ``torch.multiprocessing`` processes (no Ray).

Used by tests, benchmarks and anyone without Ray: N spawned processes on this machine form a
gloo process group on a free loopback port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WorkerFn = Callable[..., Any]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int, world_size: int, port: int, threads: int, fn: WorkerFn, args: tuple[Any, ...],
    results: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out = fn(*args)
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


def run_processes(
    fn: WorkerFn, args: tuple[Any, ...], world_size: int, threads_per_rank: int = 1
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` gloo ranks; return each rank's result, by rank.

    ``fn`` must be importable (a module-level function); it runs inside the process group.
    """
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(
        _entry,
        args=(world_size, free_port(), threads_per_rank, fn, args, results),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )
    by_rank: dict[int, Any] = {}
    while not results.empty():
        rank, out = results.get()
        by_rank[rank] = out
    return [by_rank[r] for r in range(world_size)]

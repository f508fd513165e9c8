"""Launch the worker function in plain ``torch.multiprocessing`` processes (no Ray).

Used by tests, benchmarks and anyone without Ray: N spawned processes on this machine form a
gloo process group on a free loopback port.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_train.logs import quiet_worker_logs

WorkerFn = Callable[..., Any]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(
    rank: int,
    world_size: int,
    port: int,
    threads: int,
    fn: WorkerFn,
    args: tuple[Any, ...],
    result_dir: str,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(threads)
    quiet_worker_logs()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out = fn(*args)
        # A file, not a queue: a large result in a pipe deadlocks against join().
        with open(Path(result_dir) / f"rank{rank}.pkl", "wb") as f:
            pickle.dump(out, f)
    finally:
        dist.destroy_process_group()
    # The result is safe on disk. Skip interpreter teardown: a native library's static
    # destructors occasionally abort ("terminate called without an active exception") after
    # gloo shuts down, which would turn a finished rank into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_processes(
    fn: WorkerFn, args: tuple[Any, ...], world_size: int, threads_per_rank: int = 1
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` gloo ranks; return each rank's result, by rank.

    ``fn`` must be importable (a module-level function); it runs inside the process group.
    """
    with tempfile.TemporaryDirectory(prefix="dist-train-results-") as result_dir:
        mp.start_processes(
            _entry,
            args=(world_size, free_port(), threads_per_rank, fn, args, result_dir),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        out = []
        for r in range(world_size):
            with open(Path(result_dir) / f"rank{r}.pkl", "rb") as f:
                out.append(pickle.load(f))  # written by our own child processes
        return out

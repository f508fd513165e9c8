"""The multiprocessing forkserver that CPU ranks fork from
(:func:`~dist_train.launchers.processes.run_processes`), and starting it ahead of time.

The server imports :mod:`dist_train.launchers.rank_preload` (torch, TorchRec, dist_train, the
numba kernels) and the worker's module once, before it forks any rank. That takes seconds;
a command that knows early it will launch CPU ranks starts the server first, so those
imports run beside its own. This module imports nothing heavy, so that it can.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator

PRELOAD = ("dist_train.launchers.rank_preload",)


def use_rank_server(worker_module: str) -> None:
    """CPU ranks fork from a server that preloads :data:`PRELOAD` and ``worker_module``
    (no effect once the server runs: it keeps what it preloaded)."""
    multiprocessing.set_forkserver_preload([*PRELOAD, worker_module])


@contextlib.contextmanager
def rank_server_started(worker_module: str) -> Iterator[None]:
    """Start the server now; when the block ends, stop it if the block started it and no
    rank runs.

    Starting returns at once: the server imports in its own process, and the first rank's
    fork waits for it. The stop matters when the block fails before any rank started: a
    server left to itself finishes its imports before it notices its parent is gone, and
    holds the command's output pipes open meanwhile. While ranks still run (the block left
    by Ctrl-C), it stays: ranks get SIGINT when their server dies, and this process waits
    for them at exit, as it did before the server started early.
    """
    server = multiprocessing.forkserver._forkserver  # the one multiprocessing forks from
    before = _server_pid(server)
    use_rank_server(worker_module)
    multiprocessing.forkserver.ensure_running()
    started = _server_pid(server) != before
    try:
        yield
    finally:
        pid = _server_pid(server)
        if started and pid is not None and not multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            server._stop()  # type: ignore[attr-defined]  # closes its pipe, reaps it


def _server_pid(server: multiprocessing.forkserver.ForkServer) -> int | None:
    # CPython's ForkServer keeps its process id here (3.4 to 3.14); None while none runs
    pid = getattr(server, "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None

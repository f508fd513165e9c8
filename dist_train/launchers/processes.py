"""Launch the worker function in plain ``torch.multiprocessing`` processes (no Ray).

Used by tests, benchmarks and anyone without Ray: N processes on this machine form a process
group on a free loopback port (gloo; nccl for CUDA tensors when ranks run on GPUs, one GPU
each). CPU ranks fork from a multiprocessing forkserver that has imported torch, TorchRec and
dist_train and loaded the numba kernels but run no torch op, so none of torch's thread pools
crosses the fork (pyarrow's jemalloc starts a background thread on import; jemalloc has fork
handlers for it); GPU ranks are spawned. Each rank's result comes back as JSON with its
tensors in a safetensors file: reading it runs no code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dist_train.data.memory import reuse_freed_memory
from dist_train.devices import backend_for, select_local_gpu
from dist_train.launchers.affinity import pin_local_rank
from dist_train.launchers.procfs import proc_stat
from dist_train.launchers.rank_server import use_rank_server
from dist_train.logs import LOG, drop_message, quiet_worker_logs, worded_for_users
from dist_train.storage import write_atomically

WorkerFn = Callable[..., Any]
# How often a rank checks that the process that started it still runs, and how long ranks
# get to end on SIGTERM before they are killed
DRIVER_CHECK_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0


class RankError(RuntimeError):
    """A rank's function raised, or the rank was killed; the message is the rank's and its
    error. ``kind`` and ``detail``: the error's type name and its own message (empty for a
    killed rank), for callers that raise it again as itself; ``trace``: the rank's traceback
    where the error is a bug's or a library's (one of ours says what it needs to)."""

    def __init__(self, message: str, kind: str = "", detail: str = "", trace: str = "") -> None:
        super().__init__(message)
        self.kind, self.detail, self.trace = kind, detail, trace

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Ray, a sweep's pool)
        return (type(self), (str(self), self.kind, self.detail, self.trace))


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different free TCP ports on 127.0.0.1, bound together while chosen: ports
    chosen one at a time may repeat (a test's Ray head was given one port for two of its
    components, and refused to start)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _entry(
    rank: int,
    world_size: int,
    port: int,
    threads: int,
    device_type: str,
    pin_cores: bool,
    environ: dict[str, str],
    fn: WorkerFn,
    args: tuple[Any, ...],
    result_dir: str,
    driver: tuple[int, str | None, bool],
) -> None:
    # A forked rank inherits the server's environment, from when it started: use the caller's.
    os.environ.clear()
    os.environ.update(environ)
    # The server ignores Ctrl-C; a rank takes it as its driver does: a driver that ignores
    # it (a background job of a script) would have kept running without ranks that stopped
    pid, started, ignores_sigint = driver
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignores_sigint else signal.default_int_handler)
    _end_with(pid, started)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    if pin_cores and device_type == "cpu":
        pin_local_rank(rank, world_size, threads)  # every rank runs on this machine
    torch.set_num_threads(threads)
    # Every rank, a benchmark's or a test's too, allocates as the training loop's ranks do:
    # without it each step pays thousands of page faults (25% of a default-job step).
    reuse_freed_memory()
    quiet_worker_logs()
    if device_type == "cuda":
        select_local_gpu()
    try:  # a port taken since free_port() chose it fails here (run_processes tries another)
        dist.init_process_group(backend_for(device_type), rank=rank, world_size=world_size)
    except Exception as err:
        _record_error(result_dir, rank, err, JOINING)
        raise
    try:
        try:
            out = fn(*args)
        except (Exception, KeyboardInterrupt) as err:  # torch's spawn ends 0 on the latter
            _record_error(result_dir, rank, err)
            raise
        # A file, not a queue: a large result in a pipe deadlocks against join().
        tensors: dict[str, torch.Tensor] = {}
        encoded = json.dumps(_encode(out, tensors))
        save_file(tensors, str(Path(result_dir) / f"rank{rank}.safetensors"))
        (Path(result_dir) / f"rank{rank}.json").write_text(encoded)
    finally:
        dist.destroy_process_group()
    # The result is safe on disk. Skip interpreter teardown: a native library's static
    # destructors occasionally abort ("terminate called without an active exception") after
    # gloo shuts down, which would turn a finished rank into a failed one.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


JOINING = "while joining the process group: "  # a failed rank's error before its function ran
PORT_TRIES = 3  # rendezvous ports tried where another process took the one chosen


def _record_error(result_dir: str, rank: int, err: BaseException, stage: str = "") -> None:
    """What the driver reports of a failed rank: its error, not its whole traceback, and
    when (:func:`_first_error`); whole or not at all, as the ranks left are stopped as soon
    as one fails."""
    interrupted = isinstance(err, KeyboardInterrupt)
    message = str(err) or ("interrupted (SIGINT)" if interrupted else "")
    # a bug's line alone ("IndexError: list index out of range") says not where it was
    trace = "" if interrupted or worded_for_users(err) else "".join(traceback.format_exception(err))
    record = {
        "ns": time.time_ns(),
        "stage": stage,
        "type": type(err).__name__,
        "message": message,
        "trace": trace,
    }
    write_atomically(Path(result_dir) / f"rank{rank}.error", json.dumps(record))


def _port_taken(err: RankError) -> bool:
    """Whether ``err`` is a rank's failure to join because its rendezvous port was taken
    (between :func:`free_port` and the join): before the function ran, so safe to retry."""
    text = str(err)
    return JOINING in text and ("EADDRINUSE" in text or "address already in use" in text)


def _first_error(result_dir: Path, exited: int) -> RankError | None:
    """The error of the rank that failed first, by when it failed: the one whose exit broke
    its peers' collectives, which fail after it ("Connection closed by peer"). The first to
    exit, ``exited`` (which torch reports), is often such a peer; it is named where the
    times tie."""
    failed = []
    for path in result_dir.glob("rank*.error"):
        try:
            record = json.loads(path.read_text())
            when, stage = int(record["ns"]), str(record["stage"])
            kind, detail = str(record["type"]), str(record["message"])
            trace = str(record.get("trace", ""))
        except (ValueError, KeyError, TypeError):  # cut short as its rank was stopped
            continue
        rank = int(path.stem.removeprefix("rank"))
        failed.append((when, rank != exited, rank, stage, kind, detail, trace))
    if not failed:
        return None
    _, _, rank, stage, kind, detail, trace = min(failed)
    return RankError(f"rank {rank} failed: {stage}{kind}: {detail}", kind, detail, trace)


def _killed(err: mp.ProcessExitedException) -> RankError:
    """The rank that ended first, without an error of its own: killed (the kernel's
    out-of-memory killer sends SIGKILL), or exited with a status."""
    rank, name = err.error_index, err.signal_name
    if not name:
        return RankError(f"rank {rank} exited with status {err.exit_code}, without an error")
    hint = " (out of memory? see `dmesg | grep -i killed`)" if name == "SIGKILL" else ""
    return RankError(f"rank {rank} was killed by {name}{hint}", name)


# torch logs each rank it stops after one failed; the rank that failed is what we report
drop_message("torch.multiprocessing.spawn", "Terminating process")


def run_processes(
    fn: WorkerFn,
    args: tuple[Any, ...],
    world_size: int,
    threads_per_rank: int = 1,
    device_type: str = "cpu",
    pin_cores: bool = True,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks; return each rank's result, by rank.

    With ``device_type="cuda"`` rank r's current device is ``cuda:r`` and CUDA tensors go over
    nccl (CPU tensors still over gloo).

    ``pin_cores``: hold each CPU rank to its share of this process's cores
    (:mod:`dist_train.launchers.affinity`).

    ``fn`` must be importable (a module-level function); it runs inside the process group.
    """
    # CPU ranks fork from a server that imported torch, TorchRec, dist_train and the
    # worker's module and loaded the numba kernels once: a spawned rank spent about 4.5 s of
    # CPU on the imports and 0.7 s on the kernels before its first batch, on every call. GPU
    # ranks are spawned: a CUDA library's import may initialize the driver, which a forked
    # child cannot use.
    start_method = "forkserver" if device_type == "cpu" else "spawn"
    if start_method == "forkserver":
        use_rank_server(fn.__module__)
    for attempt in range(1, PORT_TRIES + 1):
        try:
            return _run_ranks(
                fn, args, world_size, threads_per_rank, device_type, pin_cores, start_method
            )
        except RankError as err:
            if attempt == PORT_TRIES or not _port_taken(err):
                raise
            LOG.info(f"the rendezvous port was taken ({err}); trying another")
    raise AssertionError("unreachable")  # the loop returns or raises


def _run_ranks(
    fn: WorkerFn,
    args: tuple[Any, ...],
    world_size: int,
    threads_per_rank: int,
    device_type: str,
    pin_cores: bool,
    start_method: str,
) -> list[Any]:
    """One start of ``world_size`` ranks on a port free now: their results, by rank."""
    with tempfile.TemporaryDirectory(prefix="dist-train-results-") as result_dir:
        ranks = mp.start_processes(
            _entry,
            args=(
                world_size,
                free_port(),
                threads_per_rank,
                device_type,
                pin_cores,
                dict(os.environ),
                fn,
                args,
                result_dir,
                (
                    os.getpid(),
                    _running_since(os.getpid()),
                    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                ),
            ),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        try:
            while not ranks.join():  # raises, the other ranks stopped, when one fails
                pass
        except mp.ProcessRaisedException as err:
            first = _first_error(Path(result_dir), err.error_index)
            if first is None:
                raise
            if first.trace:  # a bug's or a library's error: where it was raised
                LOG.error(f"{first}; its traceback:\n{first.trace.rstrip()}")
            else:
                LOG.debug(f"rank {err.error_index}'s traceback:{err}")
            raise first from None
        except mp.ProcessExitedException as err:  # torch has stopped the other ranks
            raise _killed(err) from None
        except BaseException:  # Ctrl-C, SIGTERM (dist_train.stopping): the ranks end too
            _stop(ranks.processes)
            raise
        finally:
            # torch's file for each rank's traceback (in $TMPDIR, readable by every user),
            # written where a rank raised: read by join, never removed
            for error_file in ranks.error_files:
                if error_file:
                    Path(error_file).unlink(missing_ok=True)
        out = []
        for r in range(world_size):
            if not (Path(result_dir) / f"rank{r}.json").is_file():  # it stopped, exit 0
                raise _first_error(Path(result_dir), r) or RankError(
                    f"rank {r} ended without a result"
                )
            tensors = load_file(str(Path(result_dir) / f"rank{r}.safetensors"))
            out.append(
                _decode(json.loads((Path(result_dir) / f"rank{r}.json").read_text()), tensors)
            )
        return out


def _end_with(driver: int, started: str | None) -> None:
    """End this rank when process ``driver``, which started it, is gone (killed, say): its
    ranks are the forkserver's children, not its own, and would train on unseen. ``started``
    is the driver's start as the driver read it: a rank forked after its driver died (a
    Ctrl-C while the server still imported) ends at its first check."""

    def watch() -> None:
        while True:
            time.sleep(DRIVER_CHECK_SECONDS)
            if _running_since(driver) != started:
                os._exit(1)

    threading.Thread(target=watch, name="dist-train-driver-watch", daemon=True).start()


def _running_since(pid: int) -> str | None:
    """When process ``pid`` started (``/proc``'s clock ticks), None if it is gone: exited
    but not yet reaped (a zombie) counts as gone, and another process given the same id
    has another start time. Without ``/proc``: whether a process of that id exists."""
    if not Path("/proc/self/stat").exists():  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's process: it exists
        return "alive"
    stat = proc_stat(pid)
    return None if stat is None or stat.gone else str(stat.started)


def _stop(processes: list[Any]) -> None:
    """SIGTERM the ranks still running, then SIGKILL those not gone within the grace."""
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


_TENSOR, _ARRAY, _TUPLE = "__tensor__", "__ndarray__", "__tuple__"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON-able data, its tensors moved into ``tensors`` (by placeholder key)."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensor = obj.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory (one returned twice, two views)
        shared = tensor.untyped_storage().data_ptr()
        if any(t.untyped_storage().data_ptr() == shared for t in tensors.values()):
            tensor = tensor.clone()
        tensors[key] = tensor
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        return {_ARRAY: _encode(torch.from_numpy(np.ascontiguousarray(obj)), tensors)[_TENSOR]}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"worker results need str dict keys, not {list(obj)[:3]}")
        return {k: _encode(v, tensors) for k, v in obj.items()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"a worker result cannot hold a {type(obj).__name__}: return plain data")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_ARRAY}:
            return tensors[obj[_ARRAY]].numpy()
        if set(obj) == {_TUPLE}:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj

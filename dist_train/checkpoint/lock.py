"""One run at a time in a run's folders.

A run's driver removes the half-written saves it finds when it starts (``.partial-step-N``),
its ranks prune old checkpoints as they save, and a job on generated data writes them into
its run folder: a second run of the same job took the first's save in progress for a
crashed one and deleted it, regenerated its data under it, and the two runs' checkpoints
mixed. The driver holds an exclusive lock on the run folder and on the checkpoint folder
for the whole run, from before it writes anything; a second run is refused, naming the
holder. The lock is the kernel's (``flock`` of the directory: no file is added to the
folder), so a run that dies, however it dies, leaves none behind. It keeps apart the runs of
one machine: on a shared folder (NFS) a directory's ``flock`` is each client's own, and a
URL's storage (``s3://``, ...) has no such lock (docs/checkpoint.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import local_path
from dist_train.logs import LOG
from dist_train.storage import Location, same_file

PROC_LOCKS = Path("/proc/locks")  # Linux: every lock held on this machine, with its holder


class CheckpointFolderInUse(CheckpointError):
    """Another run holds the run's folder: it goes on, and this one changed nothing."""


def same_folder(a: Location, b: Location) -> bool:
    """Whether ``a`` and ``b`` are one folder on this machine (a run folder given as its own
    checkpoint.dir: it is locked once)."""
    here, there = local_path(a), local_path(b)
    return here is not None and there is not None and same_file(here, there)


@contextlib.contextmanager
def one_run_in(root: Location, what: str) -> Iterator[None]:
    """Hold the lock of ``root``, the run's ``what`` ("run folder", "checkpoint folder"),
    for the block, where it is a folder on this machine; CheckpointFolderInUse, naming the
    process that holds it, if another run (or another block of this process) does."""
    folder = local_path(root)
    if folder is None or not folder.is_dir():
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise CheckpointError(f"{root}: cannot open the {what} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointFolderInUse(
                f"{root}: another run uses this {what} ({_holder(fd)}): two runs of one job "
                "delete each other's saves and data. Wait for it to end, or give this run a "
                "folder of its own (--set name=... or checkpoint.dir); nothing was changed"
            ) from None
        except OSError as err:  # a filesystem without locks: the run goes on unguarded
            LOG.warning(f"{root}: cannot lock the {what} ({err.strerror})")
        yield
    finally:
        os.close(fd)  # the lock goes with the folder's last descriptor of this run


def _holder(fd: int) -> str:
    """The process holding the lock on ``fd``'s folder, as this machine's kernel lists it
    (``/proc/locks``)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in PROC_LOCKS.read_text().splitlines():
            fields = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2384244 0 EOF"; "->" marks a waiter
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                return f"process {fields[4]}{_command_of(fields[4])}"
    except OSError:
        pass
    return "a process that held its lock a moment ago"


def _command_of(pid: str) -> str:
    """``: <its command line>`` of process ``pid``, where it can be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [a.decode(errors="replace") for a in argv if a]
    return f": {' '.join(words)[:200]}" if words else ""

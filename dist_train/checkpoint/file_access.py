"""A checkpoint's files opened: on this machine regular files only (a device or a pipe may
never end a read), at a URL through fsspec; and the names a checkpoint may give its files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from fsspec.implementations.local import LocalFileSystem

from dist_train.checkpoint.errors import CheckpointError
from dist_train.storage import Location

METADATA = ".metadata"


def refuse_irregular(path: str | os.PathLike[str]) -> None:
    """CheckpointError for a local checkpoint file that is no regular file: a device or a
    pipe may never end a read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise CheckpointError(f"{path}: not a regular file")


def local_path(loc: Location) -> Path | None:
    """``loc`` on this machine's filesystem (a path, or a ``file://`` URL), else None."""
    if isinstance(loc, os.PathLike):
        return Path(loc)
    return Path(loc.path) if isinstance(loc.fs, LocalFileSystem) else None


@contextmanager
def open_file(loc: Location) -> Iterator[IO[bytes]]:
    """A checkpoint file, local (regular files only, a ``file://`` URL's too) or at a URL,
    for reading bytes."""
    local = local_path(loc)
    if local is not None:
        refuse_irregular(local)
    if isinstance(loc, os.PathLike):
        with open(loc, "rb") as f:
            yield f
    else:
        with loc.fs.open(loc.path, "rb") as f:
            yield f


def is_plain_file_name(name: object) -> bool:
    """Whether ``name`` names a file in the checkpoint's own folder: no folder part, no
    ``..`` (a shard named ``../x.distcp`` or ``/x`` was read from outside it)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )

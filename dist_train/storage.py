"""Where checkpoints live: a local (or shared) path, or an fsspec URL (``s3://``, ``gs://``,
``abfs://``, ``file://``, ...).

Local paths stay :class:`pathlib.Path`. URLs become :class:`UrlPath`, which offers the same
small part of the ``Path`` interface the checkpoint code uses, over an fsspec filesystem.
The few operations ``Path`` lacks (remove a tree, move a directory) are functions here that
take either.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec


class StorageError(ValueError):
    """A URL whose filesystem this environment cannot open (its fsspec package is missing)."""


def url_filesystem(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``url`` and its path there; StorageError naming the URL and
    what to install where none opens it (an unknown protocol, or its package missing)."""
    try:
        fs, path = fsspec.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise StorageError(
            f"{url}: cannot open this URL ({err}); install the fsspec package for its scheme "
            "(s3fs, gcsfs, adlfs) into the job's environment on every node"
        ) from None
    return fs, path


class UrlPath:
    """A file or directory at an fsspec URL."""

    def __init__(self, url: str, fs: Any = None, path: str | None = None) -> None:
        if fs is None:
            fs, path = url_filesystem(url)
        self.url = url.rstrip("/")
        self.fs = fs
        self.path = str(path).rstrip("/")  # the filesystem's own name for it

    def __truediv__(self, name: str) -> UrlPath:
        return UrlPath(f"{self.url}/{name}", self.fs, f"{self.path}/{name}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"UrlPath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: UrlPath) -> bool:
        return self.url < other.url

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self.url.rsplit("/", 1)[0], self.fs, self.path.rsplit("/", 1)[0])

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def iterdir(self) -> Iterator[UrlPath]:
        for entry in self.fs.ls(self.path, detail=False):
            yield self / str(entry).rstrip("/").rsplit("/", 1)[-1]

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.fs.makedirs(self.path, exist_ok=exist_ok)

    def read_text(self) -> str:
        with self.fs.open(self.path, "r") as f:
            return str(f.read())

    def write_text(self, text: str) -> None:
        with self.fs.open(self.path, "w") as f:
            f.write(text)


Location = Path | UrlPath


def same_place_key(where: str) -> str:
    """What two names of one place share: a local path (a ``file://`` URL's too) with its
    links resolved; another URL as written, less a trailing slash."""
    local = where.removeprefix("file://")
    return os.path.realpath(local) if "://" not in local else where.rstrip("/")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether local paths ``a`` and ``b`` name one file or folder (links, hard links, other
    spellings); False where either is not there."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def location(where: str | Path | UrlPath) -> Location:
    """A ``Path`` for a local path, a :class:`UrlPath` for a URL."""
    if isinstance(where, Path | UrlPath):
        return where
    return UrlPath(where) if "://" in where else Path(where)


def rmtree(loc: Location) -> None:
    """Remove ``loc``, a file or a folder and everything below it, if it exists."""
    if isinstance(loc, Path):
        if loc.is_file() or loc.is_symlink():
            loc.unlink(missing_ok=True)
        else:
            shutil.rmtree(loc, ignore_errors=True)
    elif loc.exists():
        loc.fs.rm(loc.path, recursive=True)


def move(src: Location, dst: Location) -> None:
    """Rename directory ``src`` to ``dst``: atomic on a local filesystem; a copy then a delete
    on object stores (callers commit with a marker written afterwards)."""
    if isinstance(src, Path) and isinstance(dst, Path):
        os.replace(src, dst)
        _sync_directory(dst.parent)
    elif isinstance(src, UrlPath) and isinstance(dst, UrlPath):
        src.fs.mv(src.path, dst.path, recursive=True)
    else:
        raise ValueError(f"cannot move {src} to {dst}: different filesystems")


def write_atomically(loc: Location, text: str, mode: int | None = None) -> None:
    """Write a small file so readers see all of it or none: a temporary file beside it,
    then renamed over it (on object stores a copy, which a reader also sees whole or not at
    all; a ``file://`` URL's plain write could be cut short and read as committed)."""
    if isinstance(loc, Path):
        tmp = loc.with_name(loc.name + ".tmp")
        try:
            with tmp.open("w") as f:
                if mode is not None:  # a local file's permissions, kept as it is replaced
                    os.fchmod(f.fileno(), mode)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())  # on disk before it is renamed into place
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk's cut copy: no litter beside the file
            raise
        try:
            os.replace(tmp, loc)
        except OSError as err:  # a folder where the file goes, say: named, not the copy
            tmp.unlink(missing_ok=True)
            raise type(err)(err.errno, err.strerror, str(loc)) from None
        _sync_directory(loc.parent)
    else:
        staged = loc.parent / (loc.name + ".tmp")
        staged.write_text(text)
        loc.fs.mv(staged.path, loc.path)


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` at ``path`` so that a write that fails (a full disk, a size limit)
    leaves the file that was there: :func:`write_atomically` to the link's target, with the
    old file's mode. A file a rename would change otherwise is written in place: no regular
    file (``/dev/stdout``, a pipe), this process's own output, one of several names (hard
    links), or another user's."""
    try:
        was = os.stat(path)
    except FileNotFoundError:
        write_atomically(path, text)
        return
    outputs = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            outputs.append((os.fstat(fd).st_dev, os.fstat(fd).st_ino))
    if (
        not stat.S_ISREG(was.st_mode)
        or (was.st_dev, was.st_ino) in outputs
        or was.st_nlink > 1
        or was.st_uid != os.geteuid()
    ):
        path.write_text(text)
        return
    write_atomically(Path(os.path.realpath(path)), text, mode=stat.S_IMODE(was.st_mode))


def _sync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable: a commit marker, and the directory it marks, must
    survive a power loss before older checkpoints are deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # a platform or filesystem that cannot open directories
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories; nothing more to do there
    finally:
        os.close(fd)


def clear_stale_staging(where: Path, prefix: str) -> list[Path]:
    """Remove the folders ``where/<prefix><pid>@<host>`` that a process of this host no
    longer running left (a killed conversion's or evaluation's parts, staged to be moved in
    once whole); returns the others: a running process's, or another host's (a shared
    folder: whether its process runs cannot be told here). A folder of this process's pid
    is stale: this process has not made its own yet (a container's first process, pid 1,
    found its killed predecessor's "running"). Before 2026-12-07 the host was not named:
    such a folder is taken for this host's."""
    if not where.is_dir():
        return []
    live = []
    here = _host()
    for staged in sorted(where.glob(f"{glob.escape(prefix)}*")):
        pid, at, host = staged.name[len(prefix) :].partition("@")
        if not pid.isdigit():
            continue
        if (host or here) == here and (int(pid) == os.getpid() or not _running(int(pid))):
            shutil.rmtree(staged, ignore_errors=True)
        elif at:  # (an older dist_train's folder of a running pid is kept, as it was)
            live.append(staged)
    return live


def _host() -> str:
    """This machine's name as a folder name holds it (a hostname may hold a ``/``)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"


def new_staging(where: Path, prefix: str) -> Path:
    """A new, empty folder ``where/<prefix><this pid>@<this host>`` (see
    :func:`clear_stale_staging`)."""
    staged = where / f"{prefix}{os.getpid()}@{_host()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def move_new(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` on its filesystem; FileExistsError where ``target``
    exists (another writer's file: never replaced)."""
    try:
        os.link(source, target)  # refuses an existing target, atomically
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: checked, then renamed
        if target.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(source, target)
        return
    source.unlink()


def move_in(staged: Path, folder: Path, last: str) -> None:
    """Move a staged folder's files into ``folder``: the whole staged folder where there is
    none; else entry by entry (renames, each whole; a folder of the same name replaced),
    ``last`` last, so that its presence says the rest are in."""
    if not folder.exists():
        staged.rename(folder)
        return
    names = sorted(p.name for p in staged.iterdir() if p.name != last)
    for name in [*names, last]:
        if not (staged / name).exists():
            continue
        if (staged / name).is_dir() and (folder / name).is_dir():
            shutil.rmtree(folder / name)
        os.replace(staged / name, folder / name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True

"""DCP's storage writer, hashing every file as it writes it (:func:`writer`): the sizes and
digests ``meta.json`` records at the commit (:class:`WriteLog`), with nothing read back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
from torch.distributed.checkpoint.storage import StorageWriter

from dist_train.checkpoint.digests import FileDigests, FileHasher
from dist_train.storage import Location


class _HashingStream(io.RawIOBase):
    """A write stream that hashes and counts what passes through it."""

    def __init__(
        self,
        raw: Any,
        done: Callable[[dict[str, Any] | None], None],
        failed: Callable[[OSError], None],
    ) -> None:
        self.raw, self.done, self.failed = raw, done, failed
        self.hasher, self.sequential = FileHasher(), True

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self.hasher.update(view)
        try:
            return int(self.raw.write(view))
        except OSError as err:  # torch.save's writer replaces it with "unexpected pos"
            self.failed(err)
            raise

    def tell(self) -> int:
        return int(self.raw.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        self.sequential = False  # the digest would miss overwritten bytes: recompute
        return int(self.raw.seek(offset, whence))

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def flush(self) -> None:
        if not self.raw.closed:
            self.raw.flush()

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.done(self.hasher.entry() if self.sequential else None)
        super().close()


class WriteLog:
    """What a writer saw: each written file's size and digest, and the first storage error."""

    def __init__(self) -> None:
        self.digests: FileDigests = {}
        self.error: str | None = None

    def failed(self, err: OSError) -> None:
        self.error = self.error or f"{type(err).__name__}: {err}"


class _DigestingFs:
    """DCP's filesystem object, recording each written file's size and digest."""

    def __init__(self, fs: Any, log: WriteLog) -> None:
        self.fs, self.log = fs, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    @contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
        with self.fs.create_stream(path, mode) as raw:
            if "w" not in mode:
                yield raw
                return
            name = os.path.basename(os.fspath(path))

            def done(entry: dict[str, Any] | None) -> None:
                if entry is None:  # written out of order: read it back
                    hasher = FileHasher()
                    with self.fs.create_stream(path, "rb") as f:
                        hasher.update(f.read())
                    entry = hasher.entry()
                self.log.digests[name] = entry

            stream = _HashingStream(raw, done, self.log.failed)
            yield stream
            stream.close()

    def rename(self, path: Any, new_path: Any) -> None:
        self.fs.rename(path, new_path)
        old = os.path.basename(os.fspath(path))
        digests = self.log.digests
        if old in digests:
            digests[os.path.basename(os.fspath(new_path))] = digests.pop(old)


def writer(
    loc: Location, wrap_fs: Callable[[Any], Any] | None = None
) -> tuple[StorageWriter, WriteLog]:
    """DCP's storage writer for ``loc``, and the log it fills in as it writes.

    ``wrap_fs`` wraps DCP's filesystem object beneath the hashing (fault drills)."""
    out: FileSystemWriter = (
        FileSystemWriter(str(loc)) if isinstance(loc, os.PathLike) else FsspecWriter(loc.url)
    )
    log = WriteLog()
    out.fs = _DigestingFs(wrap_fs(out.fs) if wrap_fs else out.fs, log)  # type: ignore[assignment]
    return out, log

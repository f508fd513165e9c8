"""DCP's storage readers with verification folded into the read (:func:`reader`).

Before an item is decoded, the reader checks the chunks that hold it against ``meta.json``
(each chunk once; local files are mapped, so the hash reads the same page-cache pages the
decoder then copies from), and fails naming the file. A rank that needs a few items of a
large file (dense layers beside a table shard) reads only their chunks. No byte that differs
from the commit is ever decoded, and nothing is decoded with code (:mod:`.safe_decode`).
"""

from __future__ import annotations

import io
import mmap
import os
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from dist_train.checkpoint.digests import FileDigests, check_file, digest_of
from dist_train.checkpoint.errors import CheckpointError, safe_load_refusal
from dist_train.checkpoint.file_access import METADATA, local_path, refuse_irregular
from dist_train.checkpoint.safe_decode import (
    SafeExportPlanner,
    SafeLoadPlanner,
    read_metadata_bytes,
)
from dist_train.storage import Location

METADATA_MAX_BYTES = 1 << 30
"""The most ``.metadata`` of a checkpoint without digests may hold (it is read whole)."""


class _VerifyingRead:
    """What the verified readers add to DCP's: digests, a safe ``.metadata``, safe items."""

    fs: Any
    path: Any
    storage_data: dict[Any, Any]
    load_id: str
    digests: FileDigests | None
    where: str
    local: Path | None  # the folder, where it is on this machine

    def _check(self, name: str, size: int, digest: str) -> None:
        want = self._listed(name)
        if want is not None:
            check_file(f"{self.where}/{name}", want, size, digest)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        want = self._listed(METADATA)
        with self.fs.create_stream(self.fs.concat_path(self.path, METADATA), "rb") as f:
            # no more than recorded, and one byte (a link to /dev/zero ends at its size check)
            most = METADATA_MAX_BYTES if want is None else int(want.get("bytes", 0))
            data = f.read(most + 1)
        if want is None and len(data) > most:  # (recorded: the digest check names it)
            raise CheckpointError(f"{self.where}/{METADATA}: larger than {most:,} bytes")
        self._check(METADATA, len(data), digest_of(data))
        metadata = read_metadata_bytes(data, f"{self.where}/{METADATA}")
        if self.local is not None:  # a shard that is a pipe never ends its read
            for info in (metadata.storage_data or {}).values():
                with suppress(FileNotFoundError):  # the read names a missing one
                    refuse_irregular(self.local / info.relative_path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # type: ignore[union-attr]
        return metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if not isinstance(planner, SafeLoadPlanner | SafeExportPlanner):
            raise TypeError("verified checkpoint reads need a SafeLoadPlanner")
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(
                item
            )
        for name, items in per_file.items():
            self._read_file(name, items, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_file(self, name: str, items: list[ReadItem], planner: LoadPlanner) -> None:
        """Hand each item of ``name`` to the planner after verifying the chunks that hold it
        against ``meta.json`` (so no byte that differs is decoded)."""
        where = f"{self.where}/{name}"
        by_item: dict[Any, list[ReadItem]] = {}
        for item in items:
            by_item.setdefault(item.storage_index, []).append(item)
        order = sorted(by_item, key=lambda index: self.storage_data[index].offset)
        want = self._listed(name)
        verified: set[int] = set()
        with self.fs.create_stream(self.fs.concat_path(self.path, name), "rb") as f:
            source = _MappedFile.of(f) or _StreamedFile(f)
            try:
                if want is not None and source.size != want.get("bytes"):
                    raise CheckpointError(
                        f"{where}: {source.size} bytes, but meta.json recorded "
                        f"{want.get('bytes')}: the file is truncated, extended or replaced"
                    )
                for index in order:
                    info = self.storage_data[index]
                    if info.transform_descriptors:
                        raise CheckpointError(f"{where}: stream transforms are not supported")
                    if info.offset < 0 or info.offset + info.length > source.size:
                        raise CheckpointError(f"{where}: an item lies outside the file")
                    data = source.read_at(info.offset, info.length)
                    problem = _deliver(by_item[index], data, planner)
                    if want is not None:  # after decoding: its pages are in memory now
                        _verify_span(where, want, source, info.offset, info.length, verified)
                    if problem is not None:
                        raise CheckpointError(f"{where}: unreadable checkpoint data ({problem})")
            finally:
                source.close()

    def _listed(self, name: str) -> dict[str, Any] | None:
        if self.digests is None:
            return None  # a checkpoint from before digests were recorded
        want = self.digests.get(name)
        if want is None:
            raise CheckpointError(f"{self.where}/{name}: not among the files meta.json lists")
        return want


def _verify_span(
    where: str, want: dict[str, Any], source: Any, offset: int, length: int, done: set[int]
) -> None:
    """Check the chunks holding bytes ``[offset, offset + length)`` (once each)."""
    size, step = int(want["bytes"]), int(want.get("chunk_bytes") or want["bytes"] or 1)
    chunks = want.get("chunks") or [want.get("xxh3_128")]
    for c in range(offset // step, (offset + max(length, 1) - 1) // step + 1):
        if c in done:
            continue
        start = c * step
        got = source.digest(start, min(step, size - start))
        if c >= len(chunks) or got != chunks[c]:
            raise CheckpointError(
                f"{where}: bytes {start:,} to {min(size, start + step):,} differ from the "
                "digest meta.json recorded: the file is corrupt or was changed after the "
                "checkpoint was committed"
            )
        done.add(c)


class _StreamedFile:
    """A file read through its stream (fsspec URLs): each read copies into memory."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.size = f.seek(0, io.SEEK_END)

    def read_at(self, offset: int, length: int) -> memoryview:
        self.f.seek(offset)
        return memoryview(self.f.read(length))

    def digest(self, offset: int, length: int) -> str:
        return digest_of(self.read_at(offset, length))

    def close(self) -> None:
        pass


class _MappedFile:
    """A local file mapped into memory: bytes are read from the page cache in place, with no
    copy before torch decodes them (fresh buffers would cost a page fault every 4 KiB)."""

    def __init__(self, mapped: mmap.mmap) -> None:
        self.mapped, self.view = mapped, memoryview(mapped)
        self.size = len(self.view)

    @classmethod
    def of(cls, f: IO[bytes]) -> _MappedFile | None:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return None  # not a local file, or empty
        return cls(mapped)

    def read_at(self, offset: int, length: int) -> memoryview:
        return self.view[offset : offset + length]

    def digest(self, offset: int, length: int) -> str:
        return digest_of(self.read_at(offset, length))

    def close(self) -> None:
        try:
            self.view.release()
            self.mapped.close()
        except BufferError:  # a slice still referenced: the mapping goes with it
            pass


class _View(io.RawIOBase):
    """A seekable, read-only file over a buffer; ``readinto`` copies straight into the
    caller's memory (torch's loader reads tensor storage that way)."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.data)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self.data) - self.pos))
        out[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def _deliver(reqs: list[ReadItem], data: memoryview, planner: LoadPlanner) -> str | None:
    """Hand one stored item to its read requests; a description of what failed, or None."""
    try:
        if reqs[0].type == LoadItemType.BYTE_IO:
            for req in reqs:
                planner.load_bytes(req, io.BytesIO(data))
            return None
        stored = torch.load(cast(IO[bytes], _View(data)), map_location="cpu", weights_only=True)
        if not isinstance(stored, torch.Tensor):
            return f"a {type(stored).__name__} where a tensor was stored"
        for req in reqs:
            tensor = narrow_tensor_by_index(stored, req.storage_offsets, req.lengths)
            target = planner.resolve_tensor(req).detach()
            if target.size() != tensor.size():
                return f"{req.dest_index.fqn}: stored {tuple(tensor.size())}, want {target.size()}"
            target.copy_(tensor)
            planner.commit_tensor(req, target)
    except Exception as err:  # noqa: BLE001 - unpicklers and corrupt zips raise anything
        first = str(err).splitlines()[0] if str(err) else ""
        return safe_load_refusal(err) or f"{type(err).__name__}: {first}"
    return None


class _VerifiedFileSystemReader(_VerifyingRead, FileSystemReader):  # type: ignore[misc]
    pass


class _VerifiedFsspecReader(_VerifyingRead, FsspecReader):  # type: ignore[misc]
    pass


def _check_regular(folder: Path, digests: FileDigests | None) -> None:
    """CheckpointError for a file the reader would open that is no regular file (a pipe or
    a device may never end a read): ``.metadata`` and the files ``digests`` list (the shards
    by name, for a checkpoint without digests). What else the folder holds is not read."""
    names = {METADATA, *(digests or {})}
    if digests is None:
        names |= {p.name for p in folder.glob("*.distcp")}
    for name in sorted(names):
        try:
            refuse_irregular(folder / name)
        except FileNotFoundError:
            continue  # the reader names a missing file itself


def reader(loc: Location, digests: FileDigests | None) -> StorageReader:
    """DCP's storage reader for ``loc`` that checks ``digests`` (None: a checkpoint saved
    before digests were recorded) and never unpickles code."""
    out: _VerifyingRead
    local = local_path(loc)
    if local is not None:  # a file:// URL's too: a pipe there hung the read
        _check_regular(local, digests)
    if isinstance(loc, os.PathLike):
        out = _VerifiedFileSystemReader(str(loc))
    else:
        out = _VerifiedFsspecReader(loc.url)
    out.digests, out.where, out.local = digests, str(loc), local
    return out  # type: ignore[return-value]

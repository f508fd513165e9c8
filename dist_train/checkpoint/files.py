"""The files of a DCP checkpoint, written with digests and read without trusting them.

DCP trusts its files: its reader unpickles ``.metadata``, its load planners
``torch.load(..., weights_only=False)`` non-tensor items, and nothing is checksummed. Here:

- **digests.** The writer hashes every file as it writes it (xxh3-128 of the whole file and
  of each 16 MiB chunk) and counts its bytes, so saving reads nothing back. ``meta.json``
  records them at the commit.
- **verification folded into the read.** Before an item is decoded, the reader checks the
  chunks that hold it against ``meta.json`` (each chunk once; local files are mapped, so the
  hash reads the same page-cache pages the decoder then copies from), and fails naming the
  file. A rank that needs a few items of a large file (dense layers beside a table shard)
  reads only their chunks. No byte that differs from the commit is ever decoded.
- **no code from the files.** ``.metadata`` is unpickled by :class:`MetadataUnpickler`, which
  admits only the classes DCP metadata is made of; tensors and non-tensor items load with
  torch's ``weights_only`` unpickler.

Digests guard against corruption, not against a forger: whoever can rewrite the shards can
rewrite ``meta.json`` too. What such a forger cannot do is run code in the loading process.

Here too: :class:`CheckpointError`, and DCP's errors made one line (:func:`reason`) or the
stop they wrap (:func:`raise_a_wrapped_stop`).
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, cast

import torch
import xxhash
from fsspec.implementations.local import LocalFileSystem
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter
from torch.futures import Future

from dist_train.storage import Location

METADATA = ".metadata"
METADATA_MAX_BYTES = 1 << 30
"""The most ``.metadata`` of a checkpoint without digests may hold (it is read whole)."""
_BLOCK = 8 << 20
CHUNK_BYTES = 16 << 20  # verified as a unit when a rank reads part of a file

FileDigests = dict[str, dict[str, Any]]  # file name -> {"bytes": n, "xxh3_128": hex}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def digest_of(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class FileHasher:
    """Hashes a file front to back: xxh3-128 of all of it, and of each ``CHUNK_BYTES`` chunk
    (a rank that needs a few items of a large file verifies only their chunks)."""

    def __init__(self) -> None:
        self.whole, self.chunk = xxhash.xxh3_128(), xxhash.xxh3_128()
        self.size, self.in_chunk = 0, 0
        self.chunks: list[str] = []

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.whole.update(view)
        self.size += len(view)
        while len(view):
            take = min(CHUNK_BYTES - self.in_chunk, len(view))
            self.chunk.update(view[:take])
            self.in_chunk += take
            view = view[take:]
            if self.in_chunk == CHUNK_BYTES:
                self.chunks.append(self.chunk.hexdigest())
                self.chunk, self.in_chunk = xxhash.xxh3_128(), 0

    def entry(self) -> dict[str, Any]:
        """What ``meta.json`` records of the file."""
        last = [self.chunk.hexdigest()] if self.in_chunk else []
        return {
            "bytes": self.size,
            "xxh3_128": self.whole.hexdigest(),
            "chunk_bytes": CHUNK_BYTES,
            "chunks": self.chunks + last,
        }


def file_digest(loc: Location, limit: int | None = None) -> dict[str, Any]:
    """What ``meta.json`` records of one file, read in blocks (``dist-train validate``);
    past ``limit`` bytes (the size recorded) it stops, its size then past the limit."""
    hasher = FileHasher()
    with open_file(loc) as f:
        while block := f.read(_BLOCK):
            hasher.update(block)
            if limit is not None and hasher.size > limit:
                break
    return hasher.entry()


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


# -- .metadata without code ------------------------------------------------------------------

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (_DCP_METADATA, "Metadata"),
        (_DCP_METADATA, "MetadataIndex"),
        (_DCP_METADATA, "StorageMeta"),
        (_DCP_METADATA, "TensorProperties"),
        (_DCP_METADATA, "TensorStorageMetadata"),
        (_DCP_METADATA, "ChunkStorageMetadata"),
        (_DCP_METADATA, "BytesStorageMetadata"),
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # maps a layout's name to the layout
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }
)


def check_file(where: str, want: dict[str, Any], size: int, digest: str) -> None:
    """CheckpointError naming ``where`` unless its ``size`` and whole-file ``digest`` are
    what ``meta.json`` recorded (``want``)."""
    if (want.get("bytes"), want.get("xxh3_128")) != (size, digest):
        raise CheckpointError(
            f"{where}: {size} bytes with xxh3-128 {digest}, but meta.json recorded "
            f"{want.get('bytes')} bytes with {want.get('xxh3_128')}: the file is corrupt or "
            "was changed after the checkpoint was committed"
        )


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``Metadata`` and refuses every other global (functions above all)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of DCP metadata")


def read_metadata_bytes(data: bytes, where: str) -> Metadata:
    """DCP ``Metadata`` from the bytes of a ``.metadata`` file, its contents checked
    (:func:`_metadata_problem`), or CheckpointError."""
    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - a crafted or corrupt file raises anything
        raise CheckpointError(f"{where}: not DCP checkpoint metadata ({err})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{where}: not DCP checkpoint metadata (a {type(metadata)})")
    problem = _metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{where}: not DCP checkpoint metadata ({problem})")
    return metadata


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


def _metadata_problem(metadata: Metadata) -> str | None:
    """What in unpickled ``metadata`` a save does not write, or None. Its classes are DCP's
    (:class:`MetadataUnpickler`); their fields are checked here, since a forged file (its
    digests rewritten) reached torch with them: a declared size no chunk covers exported
    the process's uninitialized memory, a list index in ``planner_data`` of 10**12 grew a
    list without end, a shard path out of the folder was read, and odd types failed in
    tracebacks."""
    entries = metadata.state_dict_metadata
    for key, entry in entries.items():
        if not isinstance(key, str):
            return f"a key {key!r} that is no name"
        if isinstance(entry, BytesStorageMetadata):
            continue
        if not isinstance(entry, TensorStorageMetadata):
            return f"{key}: a {type(entry).__name__}, not a tensor's or an item's"
        problem = _tensor_problem(entry)
        if problem:
            return f"{key}: {problem}"
    if metadata.planner_data is not None:
        if not isinstance(metadata.planner_data, dict):
            return "planner_data is not a mapping"
        for key, where in metadata.planner_data.items():
            # a path into the state: names, and list indices no longer than the entries
            if not isinstance(where, tuple | list) or not all(
                isinstance(p, str) or (type(p) is int and 0 <= p < len(entries)) for p in where
            ):
                return f"planner_data[{key!r}]: {str(where)[:80]} is no path into the state"
    if metadata.storage_meta is not None and not isinstance(metadata.storage_meta, StorageMeta):
        return f"storage_meta is a {type(metadata.storage_meta).__name__}"
    storage = metadata.storage_data
    if storage is not None:
        if not isinstance(storage, dict):
            return "storage_data is not a mapping"
        for info in storage.values():
            name = getattr(info, "relative_path", None)
            if not is_plain_file_name(name):
                return f"a shard at {str(name)[:80]!r}, outside the checkpoint's folder"
            offset, length = getattr(info, "offset", None), getattr(info, "length", None)
            if not (type(offset) is int and type(length) is int and offset >= 0 <= length):
                return f"{name}: an item at offset {offset!r} of length {length!r}"
    return None


def _tensor_problem(entry: TensorStorageMetadata) -> str | None:
    """What in one tensor's metadata no save writes: its size, dtype, or chunks that do
    not tile it (each inside it, their elements adding up to its own)."""
    size = entry.size
    if not isinstance(size, torch.Size) or any(type(n) is not int or n < 0 for n in size):
        return f"size {str(size)[:80]}"
    if not isinstance(getattr(entry.properties, "dtype", None), torch.dtype):
        return "no dtype"
    if not isinstance(entry.chunks, list):
        return "its chunks are no list"
    covered = 0
    for chunk in entry.chunks:
        offsets, sizes = getattr(chunk, "offsets", None), getattr(chunk, "sizes", None)
        if not (isinstance(offsets, torch.Size) and isinstance(sizes, torch.Size)) or not (
            len(offsets) == len(sizes) == len(size)
        ):
            return f"a chunk {str(chunk)[:80]} of another shape than its size {tuple(size)}"
        if any(
            type(o) is not int or type(n) is not int or o < 0 or n < 0 or o + n > d
            for o, n, d in zip(offsets, sizes, size, strict=True)
        ):
            return f"a chunk at {tuple(offsets)} of {tuple(sizes)}, outside its size {tuple(size)}"
        covered += sizes.numel()
    if covered != size.numel():
        return f"chunks of {covered:,} elements for a size of {size.numel():,} ({tuple(size)})"
    return None


# -- non-tensor items without code -------------------------------------------------------------


def _load_bytes_safely(planner: DefaultLoadPlanner, read_item: ReadItem, value: io.BytesIO) -> None:
    """``DefaultLoadPlanner.load_bytes`` with the ``weights_only`` unpickler."""
    obj = torch.load(value, map_location="cpu", weights_only=True)
    fqn = read_item.dest_index.fqn
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[fqn], obj)
    else:
        planner.state_dict[fqn] = obj


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, loading non-tensor items with the ``weights_only`` unpickler."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_bytes_safely(self, read_item, value)


class SafeExportPlanner(_EmptyStateDictLoadPlanner):
    """DCP's load-everything planner (exports), with non-tensor items loaded safely."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_bytes_safely(self, read_item, value)


class SafeDecodePlanner(SafeExportPlanner):
    """Decodes every item as a load would, and keeps no tensor (``verify``): the state is
    planned without memory, and each decoded item is checked against its size, then dropped
    (at most one item's tensor at a time, beside the file's mapped pages)."""

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        metadata: Metadata | None = None,
        is_coordinator: bool = False,
    ) -> None:
        if metadata is None:
            raise AssertionError("a decode needs the checkpoint's metadata")
        for key, entry in metadata.state_dict_metadata.items():
            value: Any = entry
            if isinstance(entry, TensorStorageMetadata):
                # one element seen at every index: the plan needs the sizes, not the memory
                value = torch.empty((), dtype=entry.properties.dtype).expand(entry.size)
            if metadata.planner_data is not None and key in metadata.planner_data:
                set_element(state_dict, metadata.planner_data[key], value)
            else:
                state_dict[key] = value
        DefaultLoadPlanner.set_up_planner(self, state_dict, metadata, is_coordinator)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        # on the meta device: the size is checked, nothing is copied or kept
        dtype = self.lookup_tensor(read_item.dest_index).dtype
        return torch.empty(tuple(read_item.lengths), dtype=dtype, device="meta")


# -- the reader --------------------------------------------------------------------------------


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


_REFUSED = "Weights only load failed"  # torch's weights_only unpickler's refusal opens so
# what it refused, by the shapes of torch.serialization's messages (its _get_wo_message)
_WHAT_WAS_REFUSED = (
    re.compile(r"GLOBAL (\S+) was not an allowed global by default"),
    re.compile(r"GLOBAL \S+ whose module \S+ is blocked"),
    re.compile(r"\S+ must be \S+ to load"),
    re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)"),
    re.compile(r"Weights only load failed\.\s*\n\s*\n(\S[^\n]*)"),
)


def safe_load_refusal(err: BaseException) -> str | None:
    """What torch's ``weights_only`` unpickler refused in ``err``'s text (a global, an
    opcode), None where it is no such refusal. Its message is mostly advice: to load the file
    with ``weights_only=False``, which runs the code a crafted file holds, or to allow its
    globals. Only what was refused is kept."""
    text = str(err)
    start = text.find(_REFUSED)
    if start < 0:
        return None
    text = text[start:]
    for pattern in _WHAT_WAS_REFUSED:
        found = pattern.search(text)
        if found:
            what = found.group(1) if pattern.groups else found.group(0)
            if pattern is _WHAT_WAS_REFUSED[0]:
                what = f"GLOBAL {what}, not among the types a checkpoint holds"
            break
    else:
        what = "a pickle it does not load"
    return f"refused by the safe (weights-only) unpickler: {what.strip().rstrip('.')}"


def raise_a_wrapped_stop(err: BaseException) -> None:
    """Raise the Ctrl-C or SIGTERM (a KeyboardInterrupt; :class:`~dist_train.stopping.Terminated`
    stays one) that DCP caught inside a read and wrapped in a CheckpointException: a stop,
    which was reported as an unreadable checkpoint (exit 1, where a stop exits 130 or 143)."""
    if isinstance(err, CheckpointException):
        for failure, _ in err.failures.values():
            if isinstance(failure, KeyboardInterrupt):
                raise failure from None


def reason(err: BaseException) -> str:
    """The last line of a DCP error (a CheckpointException carries every rank's traceback),
    or what the safe unpickler refused in it."""
    refused = safe_load_refusal(err)
    if refused:
        return refused
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


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


# -- the writer --------------------------------------------------------------------------------


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

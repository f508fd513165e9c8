"""A checkpoint file's digests: xxh3-128 of the whole file and of each 16 MiB chunk, and its
size, as ``meta.json`` records them (:class:`FileHasher`), and the check against them.

The writer hashes every file as it writes it (:mod:`.writer`), so saving reads nothing back;
the reader checks the chunks that hold an item before it decodes it (:mod:`.reader`).
Digests guard against corruption, not against a forger: whoever can rewrite the shards can
rewrite ``meta.json`` too.
"""

from __future__ import annotations

from typing import Any

import xxhash

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import open_file
from dist_train.storage import Location

_BLOCK = 8 << 20
CHUNK_BYTES = 16 << 20  # verified as a unit when a rank reads part of a file

FileDigests = dict[str, dict[str, Any]]  # file name -> {"bytes": n, "xxh3_128": hex}


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


def check_file(where: str, want: dict[str, Any], size: int, digest: str) -> None:
    """CheckpointError naming ``where`` unless its ``size`` and whole-file ``digest`` are
    what ``meta.json`` recorded (``want``)."""
    if (want.get("bytes"), want.get("xxh3_128")) != (size, digest):
        raise CheckpointError(
            f"{where}: {size} bytes with xxh3-128 {digest}, but meta.json recorded "
            f"{want.get('bytes')} bytes with {want.get('xxh3_128')}: the file is corrupt or "
            "was changed after the checkpoint was committed"
        )

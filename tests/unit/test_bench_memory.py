"""The benchmarks' memory figure: a system's own peak, not the library code it maps."""

from __future__ import annotations

import mmap
from pathlib import Path

from dist_train.bench.planner import MemoryMark

MiB = 1 << 20


def test_peak_growth_counts_anonymous_memory_and_not_mapped_files(tmp_path: Path) -> None:
    """64 MiB written into anonymous memory count; 64 MiB of a file read through a mapping
    (as a library's code is) do not: the rank's resident set grew by both."""
    path = tmp_path / "library.so"
    path.write_bytes(b"\x01" * (64 * MiB))
    mark = MemoryMark.now()
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == 64 * MiB // 4096
        only_file = mark.peak_growth()
    owned = bytearray(64 * MiB)
    owned[::4096] = b"\x02" * (64 * MiB // 4096)  # touch every page
    both = mark.peak_growth()
    del owned
    assert only_file < 8 * MiB
    assert 60 * MiB < both < 80 * MiB

"""Parquet input: list row groups (driver), assign them to ranks, stream them (workers).

The driver lists row groups once; each epoch's assignment to ranks is a pure function of
(row groups, world size, seed, epoch), so every worker computes the same split without
talking to the others. Every rank runs the same number of steps (collectives need it):
``steps_per_epoch`` is the smallest rank's row count divided by the batch size.
"""

from __future__ import annotations

import glob
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_train.data.validation import BadInputPolicy

T = TypeVar("T")


class DataSourceError(ValueError):
    """A data path that cannot be read; the message names the file."""


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: the unit of sharding."""

    path: str
    index: int
    num_rows: int

    @property
    def source(self) -> str:
        return f"{self.path} (row group {self.index})"


def resolve_files(path: str) -> list[str]:
    """Parquet files of a file, a directory (``*.parquet`` inside, recursively) or a glob."""
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
    elif p.is_file():
        files = [str(p)]
    else:
        files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise DataSourceError(f"{path}: no Parquet files found")
    return files


def list_row_groups(path: str, policy: BadInputPolicy | None = None) -> list[RowGroup]:
    """All non-empty row groups under ``path``, in file order.

    An unreadable (e.g. truncated) or empty file is bad input: an error, or with a ``skip``
    policy a counted, skipped file.
    """
    groups: list[RowGroup] = []
    for f in resolve_files(path):
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as err:
            _file_problem(policy, f"{f}: not a readable Parquet file ({err})")
            continue
        if meta.num_rows == 0:
            _file_problem(policy, f"{f}: empty file (no rows)")
            continue
        groups += [
            RowGroup(f, i, meta.row_group(i).num_rows)
            for i in range(meta.num_row_groups)
            if meta.row_group(i).num_rows > 0
        ]
    if not groups:
        raise DataSourceError(f"{path}: the Parquet files hold no usable rows")
    return groups


def _file_problem(policy: BadInputPolicy | None, message: str) -> None:
    if policy is None:
        raise DataSourceError(message)
    policy.file_problem(message)


def assign_row_groups(
    groups: list[RowGroup], world_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[RowGroup]]:
    """Split ``groups`` over ranks, balanced by row count, deterministic per (seed, epoch)."""
    order = list(range(len(groups)))
    if shuffle:
        order = list(np.random.default_rng([seed, epoch]).permutation(len(groups)))
    loads = [0] * world_size
    out: list[list[RowGroup]] = [[] for _ in range(world_size)]
    # Greedy: next group to the least-loaded rank (lowest rank on ties) keeps it deterministic.
    for i in order:
        r = min(range(world_size), key=lambda k: (loads[k], k))
        out[r].append(groups[i])
        loads[r] += groups[i].num_rows
    return out


def steps_per_epoch(assignment: list[list[RowGroup]], batch_size: int) -> int:
    """Steps every rank can run: the smallest rank's rows // batch_size."""
    return min(sum(g.num_rows for g in groups) for groups in assignment) // batch_size


def iter_tables(
    groups: list[RowGroup],
    columns: list[str],
    batch_size: int,
    drop_last: bool = True,
    policy: BadInputPolicy | None = None,
) -> Iterator[tuple[pa.Table, str]]:
    """Stream ``groups`` as tables of ``batch_size`` rows; the shorter tail only if not
    ``drop_last``. Yields each table with a description of its source for error messages.
    With a ``policy``, each row group is checked (and cleaned, under ``skip``) first.
    """
    pending: list[pa.Table] = []
    pending_rows = 0
    files: dict[str, pq.ParquetFile] = {}
    for g in groups:
        try:
            pf = files.get(g.path) or files.setdefault(g.path, pq.ParquetFile(g.path))
            table = pf.read_row_group(g.index, columns=columns)
        except (pa.ArrowInvalid, OSError, KeyError) as err:
            message = f"{g.source}: cannot read ({err})"
            if policy is None:
                raise DataSourceError(message) from None
            policy.row_group_problem(message)
            continue
        if policy is not None:
            table = policy.clean(table, g.source)
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= batch_size:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, batch_size), g.source
            rest = merged.slice(batch_size)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows and not drop_last:
        yield pa.concat_tables(pending), groups[-1].source


def eval_steps(assignment: list[list[RowGroup]], batch_size: int) -> int:
    """Steps that cover every rank's rows: the largest rank's ceil(rows / batch_size)."""
    return max(-(-sum(g.num_rows for g in groups) // batch_size) for groups in assignment)


def padded_tables(
    groups: list[RowGroup],
    columns: list[str],
    batch_size: int,
    num_steps: int,
    filler: pa.Table,
    policy: BadInputPolicy | None = None,
) -> Iterator[tuple[pa.Table, str, int]]:
    """Exactly ``num_steps`` tables of ``batch_size`` rows covering all of ``groups``.

    Collective ops need equal batches on every rank, so a short tail is padded by repeating
    its rows, and a rank that runs out reads ``filler`` rows. Yields (table, source, valid
    rows); only the first ``valid`` rows are real.
    """
    produced = 0
    for table, source in iter_tables(groups, columns, batch_size, False, policy):
        valid = table.num_rows
        if valid < batch_size:
            table = table.take(np.arange(batch_size) % valid)
        yield table, source, valid
        produced += 1
    if produced < num_steps:
        filler = filler.select(columns)
        if policy is not None:
            filler = policy.clean(filler, "padding rows", count=False)
        if filler.num_rows == 0:
            raise DataSourceError("no valid rows to pad evaluation batches with")
    pad = filler.take(np.arange(batch_size) % max(filler.num_rows, 1))
    for _ in range(produced, num_steps):
        yield pad, "padding", 0


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``items`` in a background thread, ``depth`` items ahead; re-raises its errors."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((False, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put((False, err))

    thread = threading.Thread(target=work, daemon=True, name="prefetch")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()


def batches(
    groups: list[RowGroup],
    columns: list[str],
    batch_size: int,
    num_batches: int,
    build: Callable[[pa.Table, str], T],
    prefetch_depth: int = 2,
    policy: BadInputPolicy | None = None,
) -> Iterator[T]:
    """At most ``num_batches`` built batches from ``groups`` (prefetched in a thread); fewer
    if a ``skip`` policy dropped rows."""

    def produce() -> Iterator[T]:
        tables = iter_tables(groups, columns, batch_size, True, policy)
        for n, (table, source) in enumerate(tables):
            if n >= num_batches:
                return
            yield build(table, source)

    yield from prefetch(produce(), prefetch_depth)

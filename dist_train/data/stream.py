"""Parquet input, streamed (the workers): a rank's row groups read, checked against their
listing, shuffled and cut into batches, built ahead on a prefetch thread.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_train.data.arrow_numpy import typed_nulls
from dist_train.data.listing import (
    READ_ERRORS,
    DataSourceError,
    RowGroup,
    bad_input,
    is_transient,
    open_parquet,
    report_bad_input,
    schema_digest,
)
from dist_train.data.validation import BadInputPolicy
from dist_train.logs import LOG

T = TypeVar("T")


class RowBlock(Protocol):
    """What shuffling and rebatching need of a block of rows (``pa.Table`` or ``Rows``)."""

    @property
    def num_rows(self) -> int: ...

    def slice(self, offset: int = 0, length: int | None = None) -> RowBlock: ...

    def take(self, indices: np.ndarray) -> RowBlock: ...


B = TypeVar("B", bound=RowBlock)


def concat_blocks(blocks: list[B]) -> B:
    """One block of ``blocks`` (arrow tables or :class:`Rows`), in order."""
    if len(blocks) == 1:
        return blocks[0]
    if isinstance(blocks[0], pa.Table):
        return pa.concat_tables(blocks)  # type: ignore[arg-type,return-value]
    return type(blocks[0]).concat(blocks)  # type: ignore[attr-defined,no-any-return]


def _changed_since_listed(g: RowGroup, meta: pq.FileMetaData, schema_checked: bool) -> str:
    """What of ``g``'s file (its footer ``meta``, as opened now) differs from its listing:
    a file rewritten while the job ran (an upstream job's output, overwritten) read as
    listed failed with a bare error, or hashed its ids as another type silently; "" if
    nothing (its schema compared unless ``schema_checked``)."""
    if g.index >= meta.num_row_groups or meta.row_group(g.index).num_rows != g.num_rows:
        now = meta.row_group(g.index).num_rows if g.index < meta.num_row_groups else "no"
        return f"the file changed since the job listed it: {now} rows here, not {g.num_rows}"
    if schema_checked or not g.schema or schema_digest(meta) == g.schema:
        return ""
    return (
        "the file changed since the job listed it: its columns or their types differ from "
        "those checked before training"
    )


def open_files_budget() -> int:
    """How many Parquet files a stream keeps open: an eighth of this process's open-file
    limit, 8 to 256 (a rank may read thousands of files an epoch; each reopen costs a
    footer read)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 256 if soft == resource.RLIM_INFINITY else min(256, max(8, soft // 8))


def _validate_table(table: pa.Table) -> None:
    """``table.validate(full=True)``, its error naming the column by name (Arrow's names
    its position in the columns read: "Column 4")."""
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as err:
        found = re.match(r"Column (\d+): (.*)", str(err), re.S)
        if found is None or int(found[1]) >= table.num_columns:
            raise
        name, why = table.column_names[int(found[1])], found[2]
        hint = "; ids that are no UTF-8 text go in a binary column" if "UTF8" in why else ""
        raise pa.ArrowInvalid(f"column {name!r}: {why}{hint}") from None


READ_RETRY_SECONDS = (1.0, 4.0)
"""The pauses before a row group is opened and read again, where that failed as storage
fails for a moment (a reset connection, a time-out, ``EIO``, ``ESTALE``:
:func:`is_transient`)."""

_prefetching = threading.local()  # .stop: the prefetch thread's stop event, in that thread


class ReadingStopped(Exception):
    """The prefetch thread's consumer left while a read waited to be tried again."""


def _pause(seconds: float) -> None:
    """Wait ``seconds``; in a prefetch thread, end the wait (:class:`ReadingStopped`) as soon
    as its consumer leaves: a Ctrl-C or SIGTERM waited on the thread's join."""
    stop: threading.Event | None = getattr(_prefetching, "stop", None)
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise ReadingStopped


def _retried(g: RowGroup, read: Callable[[], T]) -> T:
    """``read()`` of ``g``, tried again after each of :data:`READ_RETRY_SECONDS` where it
    failed for a moment: a training stream cannot skip such a row group (a resume would
    replay it, and shift every batch after it), so it is read again before the job is
    stopped for it."""
    for pause in (*READ_RETRY_SECONDS, None):
        try:
            return read()
        except READ_ERRORS as err:
            if pause is None or not is_transient(err):
                raise
            LOG.warning(
                f"{g.source}: cannot read ({bad_input(err)}); reading it again in {pause:g} s"
            )
            _pause(pause)
    raise AssertionError("unreachable")  # (the last try returns or raises)


def row_group_tables(
    groups: list[RowGroup],
    columns: list[str],
    policy: BadInputPolicy | None = None,
    read_dictionary: Sequence[str] = (),
) -> Iterator[tuple[pa.Table, str]]:
    """Each row group, projected to ``columns`` (and checked/cleaned by ``policy``)."""
    files: dict[str, pq.ParquetFile] = {}  # the newest used last
    footers: dict[str, pq.FileMetaData] = {}  # of files closed: reopened without a read
    schemas_compared: set[str] = set()  # files whose schema was compared to their listing's

    def read(g: RowGroup) -> pa.Table | None:
        """``g``'s table, or None where its file changed since it was listed (reported)."""
        pf = files.pop(g.path, None) or open_parquet(g.path, read_dictionary, footers.get(g.path))
        files[g.path] = pf
        if len(files) > budget:
            path, oldest = next(iter(files.items()))
            footers[path] = files.pop(path).metadata
            oldest.close(force=True)
        changed = _changed_since_listed(g, pf.metadata, g.path in schemas_compared)
        if changed:
            report_bad_input(policy, f"{g.source}: {changed}", whole_file=False)
            return None
        schemas_compared.add(g.path)
        try:
            return pf.read_row_group(g.index, columns=columns)
        except READ_ERRORS:
            # opened anew for the next try: a stale NFS handle or a dropped connection stays
            # broken (its footer kept: nothing read twice)
            files.pop(g.path, None)
            footers[g.path] = pf.metadata
            pf.close(force=True)
            raise

    budget = open_files_budget()
    try:
        for g in groups:
            try:
                table = _retried(g, functools.partial(read, g))
                if table is None:
                    continue
                table = typed_nulls(table)
                # Decoding does not check everything a corrupt page can hold (e.g. dictionary
                # indices past the dictionary's end): full validation turns that into an error.
                _validate_table(table)
            except READ_ERRORS as err:
                message = f"{g.source}: cannot read ({bad_input(err)})"
                report_bad_input(policy, message, whole_file=False, io_error=is_transient(err))
                continue
            if policy is not None:
                table = policy.clean(table, g.source)
            yield table, g.source
    finally:
        for pf in files.values():
            pf.close(force=True)  # a URL's file too, which open_parquet opened


def shuffle_windows(
    tables: Iterator[tuple[B, str]], window_rows: int, seed: Sequence[int]
) -> Iterator[tuple[B, str]]:
    """Rows shuffled within consecutive windows of about ``window_rows`` rows.

    Memory is bounded by one window; the permutation is a pure function of ``seed`` (pass
    (seed, epoch, rank)), so a stream replays identically.
    """
    rng = np.random.default_rng(list(seed))
    window: list[B] = []
    rows, source = 0, ""
    for table, source in tables:
        window.append(table)
        rows += table.num_rows
        if rows >= window_rows:
            merged = concat_blocks(window)
            yield merged.take(rng.permutation(merged.num_rows)), source  # type: ignore[misc]
            window, rows = [], 0
    if rows:
        merged = concat_blocks(window)
        yield merged.take(rng.permutation(merged.num_rows)), source  # type: ignore[misc]


def rebatch(
    tables: Iterator[tuple[B, str]], batch_size: int, drop_last: bool = True
) -> Iterator[tuple[B, str]]:
    """Blocks of exactly ``batch_size`` rows (and the shorter tail unless ``drop_last``).

    Batches inside a block are slices of it; only a batch that spans two blocks is
    concatenated (from the first block's tail and the next block's head).
    """
    pending: list[B] = []
    pending_rows, source = 0, ""
    for block, source in tables:
        offset = 0
        if pending_rows:
            head = block.slice(0, batch_size - pending_rows)
            pending.append(head)  # type: ignore[arg-type]
            pending_rows += head.num_rows
            offset = head.num_rows
            if pending_rows < batch_size:
                continue
            yield concat_blocks(pending), source
            pending, pending_rows = [], 0
        while block.num_rows - offset >= batch_size:
            yield block.slice(offset, batch_size), source  # type: ignore[misc]
            offset += batch_size
        if offset < block.num_rows:
            pending, pending_rows = [block.slice(offset)], block.num_rows - offset  # type: ignore[list-item]
    if pending_rows and not drop_last:
        yield concat_blocks(pending), source


def iter_tables(
    groups: list[RowGroup],
    columns: list[str],
    batch_size: int,
    drop_last: bool = True,
    policy: BadInputPolicy | None = None,
    shuffle_rows: int = 0,
    shuffle_seed: Sequence[int] = (),
    start_batch: int = 0,
) -> Iterator[tuple[pa.Table, str]]:
    """Stream ``groups`` as tables of ``batch_size`` rows, each with its source for errors.

    ``policy`` checks/cleans each row group; ``shuffle_rows`` > 0 shuffles rows within windows
    of that many rows (seeded by ``shuffle_seed``); ``start_batch`` resumes a stream exactly
    where a checkpoint left it (earlier batches are re-read, not returned).
    """
    return stream_batches(
        row_group_tables(groups, columns, policy),
        batch_size,
        drop_last,
        shuffle_rows,
        shuffle_seed,
        start_batch,
    )


def stream_batches(
    blocks: Iterator[tuple[B, str]],
    batch_size: int,
    drop_last: bool = True,
    shuffle_rows: int = 0,
    shuffle_seed: Sequence[int] = (),
    start_batch: int = 0,
) -> Iterator[tuple[B, str]]:
    """Row-group ``blocks`` (arrow tables, or :class:`Rows` decoded from them) shuffled and
    cut into batches exactly as :func:`iter_tables` does: the same rows in the same order."""
    if shuffle_rows > 0:
        blocks = shuffle_windows(blocks, shuffle_rows, shuffle_seed)
    return itertools.islice(rebatch(blocks, batch_size, drop_last), start_batch, None)


def padded(
    blocks: Iterator[tuple[B, str]], batch_size: int, num_steps: int, filler: B | None
) -> Iterator[tuple[B, int]]:
    """Exactly ``num_steps`` blocks of ``batch_size`` rows: ``blocks`` (batches of at most
    ``batch_size`` rows), then ``filler``'s rows.

    Collective ops need equal batches on every rank, so a short tail is padded by repeating
    its rows, and a rank that runs out repeats ``filler``. Yields (block, valid rows); only
    the first ``valid`` rows are real.
    """
    produced = 0
    for block, _ in blocks:
        valid = block.num_rows
        if valid < batch_size:
            block = block.take(np.arange(batch_size) % valid)  # type: ignore[assignment]
        yield block, valid
        produced += 1
    if produced < num_steps:
        if filler is None or filler.num_rows == 0:
            raise DataSourceError("no valid rows to pad evaluation batches with")
        pad = filler.take(np.arange(batch_size) % filler.num_rows)
        for _ in range(produced, num_steps):
            yield pad, 0  # type: ignore[misc]


def _lower_this_threads_priority(niceness: int) -> None:
    """Raise this thread's niceness to at least ``niceness``. Threads it starts later inherit
    it: pyarrow's decoding pool too, if this thread is the first to use it."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere setpriority's PRIO_PROCESS takes a process, not a thread
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
    except OSError:
        pass  # a sandbox that forbids it: the thread runs at the process's priority


PREFETCH_THREAD = "prefetch"  # the background thread's name (tests and /proc read it)


def prefetch(items: Iterator[T], depth: int, *, niceness: int) -> Iterator[T]:
    """Run ``items`` in a background thread at ``niceness`` or lower priority (Linux;
    ``train.prefetch_niceness``, docs/performance_log.md, "The prefetch thread at the lowest
    priority"), ``depth`` items ahead; re-raises its errors."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        _lower_this_threads_priority(niceness)
        _prefetching.stop = stop  # a read's pause before it is tried again ends with it
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
                if stop.is_set():  # the consumer left while the queue was full
                    return
            q.put((False, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put((False, err))

    thread = threading.Thread(target=work, daemon=True, name=PREFETCH_THREAD)
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
        # a thread blocked on the full queue would never see the stop
        while True:
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join()  # it ends after the item in hand: nothing reads on after the consumer


def batches(
    blocks: Iterator[tuple[B, str]],
    num_batches: int,
    build: Callable[[B], T],
    prefetch_depth: int = 2,
    *,
    niceness: int,
) -> Iterator[T]:
    """At most ``num_batches`` built batches of ``blocks`` (read and built in a background
    thread at ``niceness``, ``prefetch_depth`` ahead); fewer if a ``skip`` policy dropped
    rows."""

    def produce() -> Iterator[T]:
        for block, _ in itertools.islice(blocks, num_batches):
            yield build(block)

    yield from prefetch(produce(), prefetch_depth, niceness=niceness)

"""Bad input: find it (vectorized), then fail or skip it by policy, and count what was skipped.

Row problems (per row group, before batching):
- ``label_null``: a null label;  ``label_out_of_range``: a label other than 0 or 1;
- ``dense_not_finite``: NaN or +-inf in a dense column (nulls are missing values, filled with 0);
  under ``dense_transform: none`` also a value beyond float32's range (inf in the batch);
- ``id_out_of_range``: an integer id outside ``[0, cardinality)`` of a feature that declares
  its cardinality (negative ids included), scalar or inside a list.

File problems (before training, from footers): unreadable or truncated file, empty file,
schema differing from the first file, missing column, wrong type, a codec pyarrow lacks, a
row group whose label column holds other than its rows.
Under ``error``, the row problems a footer's statistics show (ids beyond a cardinality,
null or out-of-range labels, an infinite dense value) are found there too, before training.

``on_bad_input: error`` raises :class:`BadInputError` naming file, row group, column and the
first bad row; ``skip`` drops the rows (or files) and counts them by reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.distributed as dist

from dist_train.config.schema import FeatureConfig, JobConfig
from dist_train.data.arrow_numpy import (
    all_missing,
    as_array,
    ints_within,
    is_list_type,
    is_string_type,
    list_parts,
    raw_values,
    valid_mask,
)
from dist_train.logs import LOG


class BadInputError(ValueError):
    """Input data that cannot be trained on; the message names the file and column."""


class FooterRowsError(BadInputError):
    """A row group whose footer statistics show a bad row (:meth:`BadInputPolicy.check_footer`):
    under ``skip`` its rows are dropped as they are read, not its file."""


class InputReadError(BadInputError):
    """A row group whose read failed as storage fails for a moment (a connection reset, a
    time-out, an NFS hiccup), not for the data's fault, so a restart may read it."""


@dataclass
class BadInputCounts:
    """What a ``skip`` policy dropped, by reason."""

    files: int = 0
    row_groups: int = 0
    rows: dict[str, int] = field(default_factory=dict)

    def add_rows(self, reason: str, n: int) -> None:
        self.rows[reason] = self.rows.get(reason, 0) + n

    def copy(self) -> BadInputCounts:
        return BadInputCounts(self.files, self.row_groups, dict(self.rows))

    def merge(self, other: BadInputCounts) -> BadInputCounts:
        out = BadInputCounts(self.files + other.files, self.row_groups + other.row_groups)
        for counts in (self.rows, other.rows):
            for reason, n in counts.items():
                out.add_rows(reason, n)
        return out

    def since(self, earlier: BadInputCounts) -> BadInputCounts:
        """What was counted after ``earlier``, a copy of these counts taken before."""
        out = BadInputCounts(self.files - earlier.files, self.row_groups - earlier.row_groups)
        for reason, n in self.rows.items():
            if n - earlier.rows.get(reason, 0):
                out.add_rows(reason, n - earlier.rows.get(reason, 0))
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "files_skipped": self.files,
            "row_groups_skipped": self.row_groups,
            "rows_skipped": dict(sorted(self.rows.items())),
            "rows_skipped_total": sum(self.rows.values()),
        }


def skipped_counts(b: dict[str, Any]) -> str:
    """A summary's ``bad_input`` counts as the summary line prints them."""
    return (
        # rows as read: an epoch that reads a bad row again counts it again (docs/data.md)
        f"{b.get('rows_skipped_total', 0):,} rows, {b.get('files_skipped', 0)} files, "
        f"{b.get('row_groups_skipped', 0)} row groups"
        + (f" ({b['rows_skipped']})" if b.get("rows_skipped") else "")
    )


def across_ranks(counts: BadInputCounts) -> BadInputCounts:
    """Every rank's ``counts`` added up (a collective: every rank calls it)."""
    gathered: list[BadInputCounts | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, counts)
    total = BadInputCounts()
    for each in gathered:
        if each is not None:
            total = total.merge(each)
    return total


@dataclass(frozen=True)
class RowProblem:
    reason: str
    column: str
    mask: np.ndarray  # True = bad row
    detail: str


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def row_problems(
    table: pa.Table,
    label_column: str,
    dense_columns: list[str],
    features: list[FeatureConfig],
    dense_transform: str = "log1p",
) -> list[RowProblem]:
    """Every row-level problem in ``table`` (an empty list for clean data)."""
    # Each check first asks a cheap whole-column question (null count, min/max, all finite)
    # and builds per-row masks only for a column that fails it: clean data costs one pass.
    n = table.num_rows
    found: list[RowProblem] = []
    label = as_array(table.column(label_column))
    null = np.zeros(n, dtype=bool)
    if label.null_count:
        null = ~valid_mask(label)
        found.append(RowProblem("label_null", label_column, null, "null label"))
    y = raw_values(label) if not pa.types.is_boolean(label.type) else label.to_numpy(False)
    bad = ~((y == 0) | (y == 1)) & ~null
    if bad.any():
        found.append(
            RowProblem(
                "label_out_of_range",
                label_column,
                bad,
                f"label {float(y[_first(bad)]):g}, expected 0 or 1",
            )
        )
    for name in dense_columns:
        col = as_array(table.column(name))
        if not pa.types.is_floating(col.type):
            continue
        x = raw_values(col)
        finite = np.isfinite(x)
        if dense_transform == "none" and x.dtype == np.float64:
            # Untransformed, the value must fit the float32 batch (log1p makes any finite fit).
            finite &= np.abs(x) <= _FLOAT32_MAX
        if finite.all():
            continue
        bad = ~finite & valid_mask(col)
        if bad.any():
            value = x[_first(bad)]
            detail = f"value {value}" + (
                " (beyond float32's range; data.dense_transform: none)"
                if np.isfinite(value)
                else ""
            )
            found.append(RowProblem("dense_not_finite", name, bad, detail))
    for f in features:
        if f.cardinality is None:
            continue
        col = as_array(table.column(f.source_column))
        lengths, values = list_parts(col) if is_list_type(col.type) else (None, col)
        if not pa.types.is_integer(values.type):
            continue
        if ints_within(values, 0, f.cardinality):
            continue
        ids = raw_values(values)
        bad_values = ((ids < 0) | (ids >= f.cardinality)) & valid_mask(values)
        if lengths is not None:
            bad = np.zeros(n, dtype=bool)
            bad[np.repeat(np.arange(n), lengths)[bad_values]] = True
        else:
            bad = bad_values
        found.append(
            RowProblem(
                "id_out_of_range",
                f.source_column,
                bad,
                f"id {ids[_first(bad_values)]} outside [0, {f.cardinality})",
            )
        )
    return found


class BadInputPolicy:
    """Applies ``on_bad_input`` to files and row groups and keeps the counts."""

    def __init__(
        self,
        mode: str,
        label_column: str,
        dense_columns: list[str],
        features: list[FeatureConfig],
        dense_transform: str = "log1p",
        replayed: bool = False,
    ) -> None:
        if mode not in ("error", "skip"):
            raise ValueError(f"on_bad_input must be 'error' or 'skip', got {mode!r}")
        self.mode = mode
        self.label_column = label_column
        self.dense_columns = list(dense_columns)
        self.features = list(features)
        self.dense_transform = dense_transform
        # a training stream, which a resume replays from its start: what it skips must be
        # skipped again (a read that failed for a moment is not skipped: row_group_problem)
        self.replayed = replayed
        self.counts = BadInputCounts()
        # False while a resumed stream re-reads the batches its checkpoint counted (on that
        # stream's own copy of the policy: BatchBuilder.stream)
        self.counting = True

    @classmethod
    def for_job(cls, cfg: JobConfig, replayed: bool = False) -> BadInputPolicy:
        """The policy and checked columns of a job config (``replayed``: training's)."""
        return cls(
            cfg.data.on_bad_input,
            cfg.data.label_column,
            cfg.data.resolved_dense_columns(),
            cfg.features,
            cfg.data.dense_transform,
            replayed,
        )

    def file_problem(self, message: str) -> None:
        """A whole file is unusable: raise, or count it and warn once."""
        if self.mode == "error":
            raise BadInputError(message)
        self.counts.files += 1
        LOG.warning(f"skipping bad input: {message}")

    def row_group_problem(self, message: str, io_error: bool = False) -> None:
        """A row group cannot be read: raise, or count it and warn. A read that failed as
        storage fails for a moment (``io_error``, after its retries) raises
        :class:`InputReadError`; under ``skip`` too where the stream is ``replayed``: a
        resumed training stream replays its row groups, and the group read then would shift
        every batch after it (rows trained twice, others never)."""
        if io_error and (self.mode == "error" or self.replayed):
            raise InputReadError(message)
        if self.mode == "error":
            raise BadInputError(message)
        if self.counting:
            self.counts.row_groups += 1
            LOG.warning(f"skipping bad input: {message}")

    def check_footer(self, path: str, meta: pq.FileMetaData, schema: pa.Schema) -> None:
        """Under ``error``, raise for a row group whose footer statistics already show a bad
        row (an id outside its feature's cardinality, a null label, a label outside [0, 1]),
        so that the job stops before it trains rather than at that row, hours in, or at
        evaluation; ``skip`` drops such rows as they are read. Files without statistics
        are checked as they are read. ``schema``: the file's, as Arrow reads it."""
        if self.mode != "error":
            return
        # a label of Arrow's null type has no statistics: found only as its rows were read
        if pa.types.is_null(schema.field(self.label_column).type):
            raise FooterRowsError(
                f"{path}: column {self.label_column!r}: every label is null (the column's type "
                "is null), by the file's footer (set data.on_bad_input: skip to drop such rows)"
            )
        leaves = _leaves(meta)
        for group in range(meta.num_row_groups):
            for column, detail in self._footer_problems(meta.row_group(group), leaves):
                raise FooterRowsError(
                    f"{path} (row group {group}): column {column!r}: {detail}, by the file's "
                    "footer statistics (set data.on_bad_input: skip to drop such rows)"
                )

    def _footer_problems(
        self, group: pq.RowGroupMetaData, leaves: dict[str, list[int]]
    ) -> Iterator[tuple[str, str]]:
        label = _statistics(group, leaves, self.label_column, nested=False)
        if label is not None and label.null_count:
            yield self.label_column, f"{label.null_count} null label(s)"
        # numbers only: a float16 column's statistics are bytes
        numeric = label is not None and label.has_min_max and isinstance(label.min, int | float)
        if label is not None and numeric and not 0 <= label.min <= label.max <= 1:
            yield self.label_column, f"labels from {label.min} to {label.max}, expected 0 or 1"
        for name in self.dense_columns:
            dense = _statistics(group, leaves, name, nested=False)
            if dense is None or not dense.has_min_max or not isinstance(dense.max, float):
                continue  # NaN is in no statistics: found as rows are read
            if math.isinf(dense.min) or math.isinf(dense.max):
                yield name, f"values from {dense.min} to {dense.max}, not all finite"
        for f in self.features:
            if f.cardinality is None:
                continue
            ids = _statistics(group, leaves, f.source_column, nested=True)
            if ids is None or not ids.has_min_max or type(ids.min) is not int:
                continue
            if ids.min < 0 or ids.max >= f.cardinality:
                yield (
                    f.source_column,
                    f"ids from {ids.min} to {ids.max}, outside [0, {f.cardinality})",
                )

    def clean(self, table: pa.Table, source: str, count: bool = True) -> pa.Table:
        """``table`` without its bad rows (skip), or the table itself (error: raises if bad).

        ``count=False`` for rows read again (padding), so nothing is counted twice.
        """
        problems = row_problems(
            table, self.label_column, self.dense_columns, self.features, self.dense_transform
        )
        if not problems:
            return table
        if self.mode == "error":
            p = problems[0]
            raise BadInputError(
                f"{source}: column {p.column!r}: {p.detail} (row {_first(p.mask)} of the row "
                f"group; set data.on_bad_input: skip to drop such rows)"
            )
        bad = np.zeros(table.num_rows, dtype=bool)
        for p in problems:
            if count and self.counting:
                self.counts.add_rows(p.reason, int((p.mask & ~bad).sum()))
            bad |= p.mask
        return table.filter(pa.array(~bad))


def _leaves(meta: pq.FileMetaData) -> dict[str, list[int]]:
    """The footer's leaf columns by path (``C3.list.element`` for a list's values)."""
    leaves: dict[str, list[int]] = {}
    for i in range(meta.num_columns):
        leaves.setdefault(meta.schema.column(i).path, []).append(i)
    return leaves


_CODECS = ("SNAPPY", "GZIP", "BROTLI", "LZ4", "ZSTD")  # pyarrow's names it may build without


def _codec_readable(name: str) -> bool:
    """Whether pyarrow can decompress a column chunk its footer names ``name``; True for a
    name this does not know (UNKNOWN: Hadoop's LZ4, which pyarrow reads), left to the read."""
    if name == "LZO":  # a codec of the format that Arrow's C++ never reads
        return False
    return name not in _CODECS or bool(pa.Codec.is_available(name.lower()))


def check_footer_reads(path: str, meta: pq.FileMetaData, columns: list[str], label: str) -> None:
    """BadInputError for a file whose footer parses but whose rows would fail to read, or read
    short, hours into a job: a column it reads compressed by a codec this pyarrow lacks (LZO,
    as older Hive and Hadoop data hold; looked for in the first row group, as writers
    compress a column alike throughout: a later one's read names the file too), or a row
    group whose label column holds other than its recorded rows (a damaged footer lowering
    a row group's count and the file's total alike, which readers trust)."""
    leaves = _leaves(meta)
    first = meta.row_group(0)
    for name in columns:
        found = leaves.get(name) or [
            i for leaf, ids in leaves.items() if leaf.startswith(name + ".") for i in ids
        ]
        for i in found:
            codec = first.column(i).compression
            if not _codec_readable(codec):
                raise BadInputError(
                    f"{path}: column {name!r} is compressed with {codec}, which this pyarrow "
                    f"cannot read: rewrite the file with another codec (zstd, snappy)"
                )
    for i in leaves.get(label, [])[:1]:
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.column(i).num_values != group.num_rows:
                raise BadInputError(
                    f"{path} (row group {g}): corrupt footer: column {label!r} holds "
                    f"{group.column(i).num_values} values but the row group records "
                    f"{group.num_rows} rows"
                )


def _statistics(
    group: pq.RowGroupMetaData, leaves: dict[str, list[int]], column: str, nested: bool
) -> pq.Statistics | None:
    """The statistics of ``column``'s one leaf in ``group``: the column itself, or with
    ``nested``, a list's values (``C3.list.element``: one level below the column, whatever
    the writer named it); None where the footer has none, or the leaf is not found alone."""
    found = leaves.get(column, [])
    if not found and nested:
        prefix = column + "."
        found = [i for path, ids in leaves.items() if path.startswith(prefix) for i in ids]
    if len(found) != 1:
        return None
    chunk = group.column(found[0])
    return chunk.statistics if chunk.is_stats_set else None


def read_alike(t: pa.DataType) -> str:
    """The class of Arrow types that decode to the same values and hash alike: any width of
    integer (ids are their two's-complement bits), any string or binary (their bytes),
    dictionary-encoded or not, lists of these; floats; booleans."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if is_list_type(t):
        return f"list<{read_alike(t.value_type)}>"
    for kind, test in (
        ("integer", pa.types.is_integer),
        ("string", is_string_type),
        ("floating point", pa.types.is_floating),
        ("boolean", pa.types.is_boolean),
    ):
        if test(t):
            return kind
    return str(t)


class SchemaSource(Protocol):
    """What :class:`SchemaCheck` needs of a batch builder: its columns and their rules."""

    @property
    def columns(self) -> list[str]: ...

    @property
    def id_columns(self) -> list[str]: ...

    @property
    def label_column(self) -> str: ...

    def check_schema(self, schema: pa.Schema, source: str) -> None: ...


class SchemaCheck:
    """A file's columns and types are usable, and its id columns read alike
    (:func:`read_alike`) to those of the first file taken that gives each column values. One
    check for both splits: a test id column of another type would hash to other rows than
    training's. A column of no values (``all_missing``: Arrow's ``null`` type, or lists of
    it) reads alike to any. Labels and dense values are numbers whatever their type: a
    float label beside an int one was a schema mismatch, its file dropped."""

    def __init__(self, builder: SchemaSource) -> None:
        self.builder = builder
        self.reference: dict[str, tuple[pa.DataType, str]] = {}  # column -> (type, file)

    def __call__(self, path: str, schema: pa.Schema, meta: pq.FileMetaData | None = None) -> None:
        """Check the file at ``path``: its ``schema``, and where its footer ``meta`` is given
        (a file to be read, not one read for its types alone), what
        :func:`check_footer_reads` checks."""
        self.builder.check_schema(schema, path)
        if meta is not None:
            check_footer_reads(path, meta, self.builder.columns, self.builder.label_column)
        new: dict[str, tuple[pa.DataType, str]] = {}
        for name in self.builder.id_columns:
            have = schema.field(name).type
            if all_missing(have):
                continue
            want, first = self.reference.get(name) or new.setdefault(name, (have, path))
            if read_alike(have) != read_alike(want):
                raise BadInputError(
                    f"{path}: schema mismatch: column {name!r} is {have} here but {want} in "
                    f"{first}, the first file with values in it"
                )
        # only a file taken whole sets a column's type: one skipped for another column
        # would make every later file of the right type a mismatch
        self.reference.update(new)

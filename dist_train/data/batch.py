"""Arrow tables -> decoded :class:`Rows` -> training batches (dense, KeyedJaggedTensor, labels).

Two stages: :meth:`BatchBuilder.prepare` decodes a table (a row group) once into numpy
(labels, transformed dense, categorical fingerprints); :meth:`BatchBuilder.batch` hashes a
batch of those rows into every key's table rows and wraps them as tensors. No per-row Python.
Categorical columns may be integers or strings, scalar or lists (multi-hot); null scalars and
null lists give an empty bag for that example, null list elements are dropped.
"""

from __future__ import annotations

import collections
import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torchrec import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from dist_train.config.schema import FeatureConfig
from dist_train.data.arrow_numpy import (
    as_array,
    is_list_type,
    is_string_type,
    list_parts,
    raw_values,
    typed_nulls,
    valid_mask,
)
from dist_train.data.listing import RowGroup
from dist_train.data.rows import DecodedIds, FeatureIds, Rows, ScalarIntIds, kjt_parts
from dist_train.data.stream import row_group_tables, stream_batches
from dist_train.data.validation import BadInputError, BadInputPolicy
from dist_train.embedding.hashing import fingerprint_ints, fingerprint_strings, key_params
from dist_train.embedding.layout import EmbeddingLayout


@dataclass
class Batch(Pipelineable):
    """One step's examples for one rank (``Pipelineable``: TorchRec's train pipelines can
    move it)."""

    dense: torch.Tensor  # [B, num_dense] float32
    sparse: KeyedJaggedTensor  # one key per (feature, chunk), already-hashed row ids
    labels: torch.Tensor  # [B] float32
    row_ids: np.ndarray | None = None  # int64 [B], when the job audits its input

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory, so a copy to a GPU can overlap compute."""
        return Batch(
            self.dense.pin_memory(),
            self.sparse.pin_memory(),
            self.labels.pin_memory(),
            self.row_ids,
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.row_ids,
        )

    def record_stream(self, stream: torch.Stream) -> None:
        """Keep the tensors' memory until ``stream``'s queued work is done (a pipeline copies
        batches on a side stream)."""
        self.dense.record_stream(stream)  # type: ignore[arg-type]
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)  # type: ignore[arg-type]


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _value_type(t: pa.DataType) -> pa.DataType:
    """The element type of list columns, the type itself otherwise (dictionaries unwrapped)."""
    if is_list_type(t):
        t = t.value_type
    return t.value_type if pa.types.is_dictionary(t) else t


def _fingerprints(values: pa.Array, column: str) -> np.ndarray:
    """uint64 fingerprints of a null-free arrow array of ints or strings."""
    if _is_int(values.type):
        return fingerprint_ints(values.to_numpy(zero_copy_only=False))
    if is_string_type(_value_type(values.type)):
        return fingerprint_strings(values)
    raise BadInputError(
        f"column {column!r}: categorical values must be integers or strings, got {values.type}"
    )


_NO_NULLS = np.zeros(0, dtype=np.uint8)


def _nulls_in_indices(column: pa.Array) -> pa.Array:
    """A dictionary column whose dictionary holds a null (in-memory Arrow only: Parquet keeps
    nulls in the indices) decoded, so that its nulls count as the column's: hashing the
    dictionary's null failed with a TypeError."""
    if pa.types.is_dictionary(column.type) and column.dictionary.null_count:
        return column.dictionary_decode()
    return column


def categorical_ids(column: pa.Array, name: str) -> FeatureIds:
    """A column's ids: per-example bag lengths and flat fingerprints. Scalar int64 ids
    (Parquet's INT64, the common case) stay Arrow's buffers until :meth:`Rows.of` decodes
    them in place."""
    column = _nulls_in_indices(as_array(column))
    n = len(column)
    t = column.type
    if is_list_type(t):
        lengths, flat = list_parts(column)
        flat = _nulls_in_indices(flat)
        if flat.null_count:  # drop null elements from their bags
            keep = valid_mask(flat)
            parents = np.repeat(np.arange(n), lengths)[keep]
            lengths = np.bincount(parents, minlength=n).astype(np.int64)
            flat = flat.filter(pa.array(keep))
        return DecodedIds(lengths, _fingerprints(flat, name))
    if pa.types.is_int64(t):
        validity = column.buffers()[0]
        return ScalarIntIds(
            raw_values(column),
            np.frombuffer(validity, dtype=np.uint8) if column.null_count else _NO_NULLS,
            column.offset,
            n - column.null_count,
        )
    if column.null_count:
        valid = valid_mask(column)
        if _is_int(t):
            return DecodedIds(valid.astype(np.int64), fingerprint_ints(raw_values(column)[valid]))
        return DecodedIds(
            valid.astype(np.int64), _fingerprints(column.filter(pa.array(valid)), name)
        )
    return DecodedIds(np.ones(n, dtype=np.int64), _fingerprints(column, name))


def _skipped_uncounted(
    batches: Iterator[tuple[Rows, str]], skip: int, policy: BadInputPolicy
) -> Iterator[tuple[Rows, str]]:
    """``batches`` after the first ``skip``, for a resumed stream: the rows read for those
    were trained, and their bad rows counted, before the checkpoint; rows read after them
    count (a checkpoint counts the rows read for its trained batches, no more)."""
    policy.counting = False
    try:
        collections.deque(itertools.islice(batches, skip), maxlen=0)
    finally:
        policy.counting = True
    yield from batches


class BatchBuilder:
    """Turns arrow record batches into :class:`Batch` es for one embedding layout.

    Row values (labels 0 or 1, ids within a declared cardinality, finite dense values) are
    checked in one place, :func:`~dist_train.data.validation.row_problems`, before rows are
    decoded: by the job's policy, or, where none is given, under ``on_bad_input: error``
    without the dense rule (decoding maps null and non-finite dense values to 0). The builder
    itself checks what decoding needs: the columns are there, of usable types.
    """

    def __init__(
        self,
        layout: EmbeddingLayout,
        features: list[FeatureConfig],
        dense_columns: list[str],
        label_column: str,
        dense_transform: str = "log1p",
        row_id_column: str | None = None,
        dense_origin: str = "",
    ) -> None:
        """``dense_origin``: where ``dense_columns`` came from, said with a missing one."""
        self.layout = layout
        self.dense_origin = dense_origin
        self.row_id_column = row_id_column
        self.features = list(features)
        self.dense_columns = list(dense_columns)
        self.label_column = label_column
        self.dense_transform = dense_transform
        names = [f.name for f in self.features]
        keys = layout.keys
        self._key_feature = np.array([names.index(k.feature) for k in keys], dtype=np.int64)
        self._key_exact = np.array([k.salt is None for k in keys], dtype=np.bool_)
        self._key_params = np.array(
            [key_params(k.salt or 0, k.num_rows) for k in keys], dtype=np.uint64
        ).reshape(len(keys), 4)
        # Exact (collisionless) features and their row counts: ids are rows, so they are
        # range-checked here, before anything reaches the embedding kernels.
        self._errors = BadInputPolicy("error", label_column, [], self.features)
        self._hashed = {f.name: layout.keys_of(f.name)[0].salt is not None for f in features}

    @property
    def columns(self) -> list[str]:
        """The columns this builder reads (for projection)."""
        ids = [self.row_id_column] if self.row_id_column else []
        return [self.label_column, *self.dense_columns, *self.id_columns, *ids]

    @property
    def id_columns(self) -> list[str]:
        """The categorical columns, whose ids are hashed or are rows."""
        return [f.source_column for f in self.features]

    def check_schema(self, schema: pa.Schema, source: str) -> None:
        """Fail fast, before training, on a missing column or one of an unusable type."""
        for name in self.columns:
            found = len(schema.get_all_field_indices(name))
            if found != 1:
                problem = "missing column" if not found else f"{found} columns named"
                raise BadInputError(f"{source}: {problem} {name!r} ({self._role(name)})")
        label = schema.field(self.label_column).type
        if not (
            pa.types.is_integer(label)
            or pa.types.is_floating(label)
            or pa.types.is_boolean(label)
            or pa.types.is_null(label)  # null labels: bad rows, named by the row checks
        ):
            cast = ": cast it to an integer" if pa.types.is_decimal(label) else ""
            raise BadInputError(
                f"{source}: label column {self.label_column!r} has type {label}{cast}"
            )
        if self.row_id_column and not _is_int(row_ids := schema.field(self.row_id_column).type):
            raise BadInputError(
                f"{source}: row id column {self.row_id_column!r} has type {row_ids}: row ids "
                "are integers"
            )
        for name in self.dense_columns:
            t = schema.field(name).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
                cast = ": cast it to float" if pa.types.is_decimal(t) else ""
                raise BadInputError(f"{source}: dense column {name!r} has type {t}{cast}")
        for f in self.features:
            self._check_categorical_type(f, schema.field(f.source_column).type, source)

    def _check_categorical_type(self, f: FeatureConfig, t: pa.DataType, source: str) -> None:
        """Ids of ``f`` are integers or strings (or lists); integers for exact tables."""
        value = _value_type(t)
        if pa.types.is_null(value):
            return  # all null: missing values, whatever the type of the other files'
        if not (_is_int(value) or is_string_type(value)):
            raise BadInputError(
                f"{source}: column {f.source_column!r}: categorical values must be "
                f"integers or strings (or list or large_list of them), got {t}"
                + (": cast the column to list" if pa.types.is_fixed_size_list(value) else "")
            )
        if not self._hashed[f.name] and not _is_int(value):
            raise BadInputError(
                f"{source}: column {f.source_column!r} holds {t}; the collisionless "
                "embedding needs integer ids in [0, cardinality)"
            )

    def _role(self, name: str) -> str:
        """What the job reads column ``name`` as, and the key that says so."""
        if name == self.label_column:
            return "the label, data.label_column"
        if name in self.dense_columns:
            return self.dense_origin or "a dense column of data.dense_columns"
        reading = [f for f in self.features if f.source_column == name]
        if reading:
            f = reading[0]
            if f.column:
                return f"the ids of feature {f.name}, features.{f.name}.column"
            return f"the ids of feature {f.name}; features.{f.name}.column unset: its name"
        return "the row ids, data.row_id_column"

    def _column(self, batch: pa.RecordBatch | pa.Table, name: str, source: str) -> pa.Array:
        idx = batch.schema.get_field_index(name)
        if idx < 0:
            raise BadInputError(f"{source}: missing column {name!r} ({self._role(name)})")
        return as_array(batch.column(idx))

    def labels(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> np.ndarray:
        """Labels as float32 (checked rows: 0 or 1, no nulls)."""
        col = self._column(batch, self.label_column, source)
        return col.to_numpy(zero_copy_only=False).astype(np.float32)

    def dense(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> np.ndarray:
        """Dense features, float32 [n, num_dense]: nulls and non-finite values as 0, then the
        transform (``log1p`` of the non-negative part, or none)."""
        n = batch.num_rows
        log1p = self.dense_transform == "log1p"
        columns = np.empty((len(self.dense_columns), n), dtype=np.float32)
        wide = np.zeros(len(self.dense_columns), dtype=np.bool_)
        for i, name in enumerate(self.dense_columns):
            col = self._column(batch, name, source)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise BadInputError(f"{source}: dense column {name!r} has type {col.type}")
            values = raw_values(col)
            if log1p and values.dtype == np.float64:
                # Transformed before narrowing: float32 would make a finite 1e39 inf (then 0);
                # its log1p, 89.8, fits. NaN and inf stay non-finite, for nan_to_num below.
                values = np.log1p(np.maximum(values, 0.0))
                wide[i] = True
            with np.errstate(over="ignore"):  # past float32's range: inf, then 0 below
                columns[i] = values
            if col.null_count:
                columns[i][~valid_mask(col)] = 0.0
        np.nan_to_num(columns, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if log1p:
            todo = columns if not wide.any() else columns[~wide]  # all, in one call, as a rule
            np.maximum(todo, 0.0, out=todo)
            np.log1p(todo, out=todo)
            if wide.any():
                columns[~wide] = todo
        return np.ascontiguousarray(columns.T)

    def decode(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> Rows:
        """Decode checked rows (see the class docstring) into :class:`Rows`; ``source``
        names the file/row group in errors."""
        per_feature: list[FeatureIds] = []
        for f in self.features:
            col = self._column(batch, f.source_column, source)
            self._check_categorical_type(f, col.type, source)
            per_feature.append(categorical_ids(col, f.source_column))
        return Rows.of(
            self.labels(batch, source),
            self.dense(batch, source),
            per_feature,
            self._ids(batch, source),
        )

    def _ids(self, batch: pa.RecordBatch | pa.Table, source: str) -> np.ndarray | None:
        if not self.row_id_column:
            return None
        col = self._column(batch, self.row_id_column, source)
        if not _is_int(col.type) or col.null_count:
            raise BadInputError(
                f"{source}: row id column {self.row_id_column!r} must hold integers without "
                f"nulls (it has type {col.type}, {col.null_count} nulls)"
            )
        ids = col.to_numpy()
        if ids.dtype == np.uint64 and len(ids) and int(ids.max()) > np.iinfo(np.int64).max:
            raise BadInputError(
                f"{source}: row id column {self.row_id_column!r} holds ids from 2**63 on "
                f"(up to {int(ids.max())}), which row ids (int64) cannot hold"
            )
        return ids.astype(np.int64, copy=False)

    def to_batch(self, rows: Rows) -> Batch:
        """The training batch of ``rows``: categorical fingerprints hashed into table rows."""
        # the offsets and per-key split too: TorchRec would otherwise derive them from the
        # lengths inside the training step
        values, lengths, offsets, per_key = kjt_parts(
            rows, self._key_feature, self._key_params, self._key_exact
        )
        keys = self.layout.key_names
        return Batch(
            dense=torch.from_numpy(rows.dense),
            sparse=KeyedJaggedTensor(
                keys=keys,
                values=torch.from_numpy(values),
                lengths=torch.from_numpy(lengths),
                offsets=torch.from_numpy(offsets),
                stride=len(rows.labels),
                length_per_key=per_key.tolist(),
                offset_per_key=[0, *np.cumsum(per_key).tolist()],
            ),
            labels=torch.from_numpy(rows.labels),
            row_ids=rows.ids,
        )

    def stream(
        self,
        groups: list[RowGroup],
        batch_size: int,
        policy: BadInputPolicy | None = None,
        shuffle_rows: int = 0,
        shuffle_seed: Sequence[int] = (),
        start_batch: int = 0,
        drop_last: bool = True,
    ) -> Iterator[tuple[Rows, str]]:
        """A rank's batches of ``groups``: the rows and order of
        :func:`~dist_train.data.stream.iter_tables`, each row group checked by ``policy``
        (None: the builder's own checks, see the class docstring) and decoded once."""
        strings = [f.source_column for f in self.features if self._hashed[f.name]]
        checks = policy or self._errors
        if start_batch:
            # this stream's own switch (counts shared): other streams and threads keep theirs
            checks = copy.copy(checks)
        decoded = (
            (self.decode(table, source), source)
            for table, source in row_group_tables(groups, self.columns, checks, strings)
        )
        batches = stream_batches(decoded, batch_size, drop_last, shuffle_rows, shuffle_seed)
        return _skipped_uncounted(batches, start_batch, checks) if start_batch else batches

    def build(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> Batch:
        """A :class:`Batch` of an arrow table, its rows checked (see the class docstring),
        then ``decode`` and ``to_batch`` (for tools and tests; training and evaluation use
        :meth:`stream`)."""
        return self.to_batch(self.rows(batch, source))

    def rows(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> Rows:
        """The checked (see the class docstring) and decoded :class:`Rows` of an arrow
        table."""
        self.check_schema(batch.schema, source)
        table = typed_nulls(
            batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        )
        return self.decode(self._errors.clean(table, source), source)

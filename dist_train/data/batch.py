"""Arrow record batches -> training batches (dense, KeyedJaggedTensor, labels).

Vectorized throughout (numpy / pyarrow kernels, no per-row Python). Categorical columns may be
integers or strings, scalar or lists (multi-hot); null scalars and null lists give an empty bag
for that example, null list elements are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec import KeyedJaggedTensor

from dist_train.config import FeatureConfig
from dist_train.data.validation import BadInputError
from dist_train.embedding.hashing import fingerprint_ints, fingerprint_strings
from dist_train.embedding.layout import EmbeddingLayout, InvalidIdError


@dataclass
class Batch:
    """One step's examples for one rank."""

    dense: torch.Tensor  # [B, num_dense] float32
    sparse: KeyedJaggedTensor  # one key per (feature, chunk), already-hashed row ids
    labels: torch.Tensor  # [B] float32

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or (pa.types.is_large_binary(t))
    )


def _value_type(t: pa.DataType) -> pa.DataType:
    """The element type of list columns, the type itself otherwise."""
    return t.value_type if (pa.types.is_list(t) or pa.types.is_large_list(t)) else t


def _fingerprints(values: pa.Array, column: str) -> np.ndarray:
    """uint64 fingerprints of a null-free arrow array of ints or strings."""
    if _is_int(values.type):
        return fingerprint_ints(values.to_numpy(zero_copy_only=False))
    if _is_str(values.type):
        return fingerprint_strings(values)
    raise BadInputError(
        f"column {column!r}: categorical values must be integers or strings, got {values.type}"
    )


def categorical_ids(column: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example bag lengths (int64 [B]) and flat fingerprints (uint64 [nnz]) of a column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    t = column.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = pc.list_flatten(column)  # skips null lists
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        if flat.null_count:
            valid = flat.is_valid()
            parents = parents[valid.to_numpy(zero_copy_only=False)]
            flat = flat.filter(valid)
        lengths = np.bincount(parents, minlength=n).astype(np.int64)
        return lengths, _fingerprints(flat, name)
    if column.null_count:
        valid = column.is_valid()
        lengths = valid.to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths, _fingerprints(column.filter(valid), name)
    return np.ones(n, dtype=np.int64), _fingerprints(column, name)


class BatchBuilder:
    """Turns arrow record batches into :class:`Batch` es for one embedding layout."""

    def __init__(
        self,
        layout: EmbeddingLayout,
        features: list[FeatureConfig],
        dense_columns: list[str],
        label_column: str,
        dense_transform: str = "log1p",
    ) -> None:
        self.layout = layout
        self.features = list(features)
        self.dense_columns = list(dense_columns)
        self.label_column = label_column
        self.dense_transform = dense_transform

    @property
    def columns(self) -> list[str]:
        """The columns this builder reads (for projection)."""
        return [self.label_column, *self.dense_columns, *(f.source_column for f in self.features)]

    def check_schema(self, schema: pa.Schema, source: str) -> None:
        """Fail fast, before training, on a missing column or one of an unusable type."""
        for name in self.columns:
            if schema.get_field_index(name) < 0:
                raise BadInputError(f"{source}: missing column {name!r}")
        label = schema.field(self.label_column).type
        if not (
            pa.types.is_integer(label)
            or pa.types.is_floating(label)
            or (pa.types.is_boolean(label))
        ):
            raise BadInputError(f"{source}: label column {self.label_column!r} has type {label}")
        for name in self.dense_columns:
            t = schema.field(name).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                raise BadInputError(f"{source}: dense column {name!r} has type {t}")
        for f in self.features:
            self._check_categorical_type(f, schema.field(f.source_column).type, source)

    def _check_categorical_type(self, f: FeatureConfig, t: pa.DataType, source: str) -> None:
        """Ids of ``f`` are integers or strings (or lists); integers for exact tables."""
        value = _value_type(t)
        if not (_is_int(value) or _is_str(value)):
            raise BadInputError(
                f"{source}: column {f.source_column!r}: categorical values must be "
                f"integers or strings (or lists of them), got {value}"
            )
        if self.layout.keys_of(f.name)[0].salt is None and not _is_int(value):
            raise BadInputError(
                f"{source}: column {f.source_column!r} holds {t}; the collisionless "
                "embedding needs integer ids in [0, cardinality)"
            )

    def _column(self, batch: pa.RecordBatch | pa.Table, name: str, source: str) -> pa.Array:
        idx = batch.schema.get_field_index(name)
        if idx < 0:
            raise BadInputError(f"{source}: missing column {name!r}")
        col = batch.column(idx)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    def labels(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> np.ndarray:
        col = self._column(batch, self.label_column, source)
        if col.null_count:
            raise BadInputError(f"{source}: label column {self.label_column!r} has nulls")
        y = col.to_numpy(zero_copy_only=False).astype(np.float32)
        if y.size and not np.isin(y, (0.0, 1.0)).all():
            bad = y[~np.isin(y, (0.0, 1.0))][0]
            raise BadInputError(
                f"{source}: label column {self.label_column!r} holds {bad}, expected 0 or 1"
            )
        return y

    def dense(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> np.ndarray:
        n = batch.num_rows
        out = np.zeros((n, len(self.dense_columns)), dtype=np.float32)
        for i, name in enumerate(self.dense_columns):
            col = self._column(batch, name, source)
            if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
                raise BadInputError(f"{source}: dense column {name!r} has type {col.type}")
            x = col.to_numpy(zero_copy_only=False).astype(np.float32)  # nulls -> NaN
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
            if self.dense_transform == "log1p":
                x = np.log1p(np.maximum(x, 0.0))
            out[:, i] = x
        return out

    def sparse(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> KeyedJaggedTensor:
        lengths: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for f in self.features:
            col = self._column(batch, f.source_column, source)
            self._check_categorical_type(f, col.type, source)
            lens, fps = categorical_ids(col, f.source_column)
            for key in self.layout.keys_of(f.name):
                try:
                    values.append(self.layout.rows_for(key, fps))
                except InvalidIdError as err:
                    raise BadInputError(f"{source}: column {f.source_column!r}: {err}") from None
                lengths.append(lens)
        return KeyedJaggedTensor(
            keys=self.layout.key_names,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
        )

    def build(self, batch: pa.RecordBatch | pa.Table, source: str = "batch") -> Batch:
        """A :class:`Batch` of ``batch``; ``source`` names the file/row group in errors."""
        return Batch(
            dense=torch.from_numpy(self.dense(batch, source)),
            sparse=self.sparse(batch, source),
            labels=torch.from_numpy(self.labels(batch, source)),
        )

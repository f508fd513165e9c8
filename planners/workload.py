"""What one training step asks of the embedding tables: sizes, lookups and optimizer state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T", int, np.ndarray)

WEIGHT_BYTES = 4  # fp32 rows
INDEX_BYTES = 8  # int64 ids on the wire
LENGTH_BYTES = 4  # int32 bag lengths on the wire


@dataclass(frozen=True)
class TableLoad:
    """One embedding table and the lookups a sample makes into it."""

    name: str
    rows: int
    dim: int
    bags_per_sample: int  # pooled outputs per sample (feature chunks reading this table)
    ids_per_sample: float  # looked-up rows per sample (bags x their mean pooling factor)

    @property
    def weight_bytes(self) -> int:
        return self.rows * self.dim * WEIGHT_BYTES


@dataclass(frozen=True)
class OptimizerState:
    """Bytes of optimizer state an embedding optimizer keeps, per row and per element."""

    name: str
    bytes_per_row: int
    bytes_per_element: int
    fused: bool  # False: dense kernel, which also holds a full gradient per element

    @classmethod
    def of(cls, optimizer: str, device_type: str) -> OptimizerState:
        if optimizer == "rowwise_adagrad":
            return cls(optimizer, 4, 0, True)
        if optimizer == "sgd":
            return cls(optimizer, 0, 0, True)
        if optimizer == "adam":  # two moments; FBGEMM's CPU TBE has no Adam (dense kernel)
            return cls(optimizer, 0, 8, device_type != "cpu")
        raise ValueError(f"unknown embedding optimizer {optimizer!r}")

    def bytes_for(self, rows: T, cols: int) -> T:
        """State bytes for ``rows`` (an int or an array of per-rank row counts)."""
        grad = 0 if self.fused else rows * cols * WEIGHT_BYTES
        return rows * self.bytes_per_row + rows * cols * self.bytes_per_element + grad


@dataclass(frozen=True)
class Workload:
    """Tables, per-rank batch and the dense model that every plan of a job shares."""

    tables: tuple[TableLoad, ...]
    batch_size_per_rank: int
    optimizer: OptimizerState
    dense_parameters: int
    dense_optimizer_slots: int  # extra fp32 copies of the dense parameters (Adam: 2)
    interaction_elements_per_sample: int = 0  # dot interaction: n^2 x d (n vectors of d)

    def table(self, name: str) -> TableLoad:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

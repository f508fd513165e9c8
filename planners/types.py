"""The planner's shared types: what a step asks of the tables (:class:`Workload`), where a
table goes (:class:`TablePlacement`), what a rank pays for it (:class:`RankCosts`).

The parts of the planner meet only here: the enumerator (:mod:`planners.enumerator`) proposes
placements, the cost model (:mod:`planners.cost_model`) prices them, the search
(:mod:`planners.search`, :mod:`planners.groups`) picks a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from functools import cached_property
from typing import TypeVar

import numpy as np


class PlanningError(ValueError):
    """No plan satisfies the tables, the topology and the constraints."""


class ShardingType(StrEnum):
    """How one table is placed on ranks (TorchRec's names, and one of ours; docs/planner.md).

    ``row_wise_unpooled`` is TorchRec's row_wise placement (same shards, kernel and optimizer
    state; the TorchRec plan says ``row_wise``) whose lookups travel unpooled: each rank sends
    its ids to their rows' holders and gets one vector per id back, pooling its own bags
    (``dist_train/train/unpooled_row_wise.py``). Its bytes per rank do not grow with the world.
    """

    ROW_WISE = "row_wise"
    ROW_WISE_UNPOOLED = "row_wise_unpooled"
    COLUMN_WISE = "column_wise"
    TABLE_ROW_WISE = "table_row_wise"
    GRID_SHARD = "grid_shard"
    TABLE_WISE = "table_wise"
    DATA_PARALLEL = "data_parallel"


SHARDING_TYPES: tuple[str, ...] = tuple(t.value for t in ShardingType)
# Types whose shards sit on one node's ranks: TorchRec builds intra-node groups for them.
HIERARCHICAL = frozenset({ShardingType.TABLE_ROW_WISE.value, ShardingType.GRID_SHARD.value})
# Our types that TorchRec runs as another type: the TorchRec plan names the latter.
TORCHREC_TYPE = {ShardingType.ROW_WISE_UNPOOLED.value: ShardingType.ROW_WISE.value}
# Types of which one plan may use at most one: TorchRec groups a module's row_wise tables into
# one input and output dist, and the trainer swaps that dist whole for the unpooled tables.
EXCLUSIVE_TYPES = (frozenset({ShardingType.ROW_WISE.value, ShardingType.ROW_WISE_UNPOOLED.value}),)


def torchrec_type(sharding_type: str) -> str:
    """The sharding type TorchRec's plan gives a placement of ``sharding_type``."""
    return TORCHREC_TYPE.get(sharding_type, sharding_type)


def compatible(types: frozenset[str] | set[str], sharding_type: str) -> bool:
    """Whether a plan using ``types`` may also use ``sharding_type`` (no mixing of the two
    row-wise types)."""
    return not any(
        sharding_type in group and (types & group) - {sharding_type} for group in EXCLUSIVE_TYPES
    )


def mixed_types(types: frozenset[str] | set[str]) -> list[str]:
    """The types of ``types`` that one plan may not use together (empty when it may)."""
    for group in EXCLUSIVE_TYPES:
        if len(types & group) > 1:
            return sorted(types & group)
    return []


@dataclass(frozen=True)
class Shard:
    rank: int
    row_offset: int
    col_offset: int
    rows: int
    cols: int


@dataclass(frozen=True)
class TablePlacement:
    """One table's sharding type and shards (data_parallel: one full replica per rank).

    ``cache_load_factor``: None keeps every shard in device memory (the job's kernel); a
    fraction c runs the table on TorchRec's ``fused_uvm_caching`` kernel, each shard held in
    host memory behind an HBM cache of c x its rows (c = 0: TorchRec's ``fused_uvm``, no cache).
    """

    table: str
    sharding_type: str
    shards: tuple[Shard, ...]
    label: str  # e.g. "row_wise (uneven)", "column_wise x4", "grid_shard 2 nodes x 4"
    cache_load_factor: float | None = None

    @property
    def ranks(self) -> list[int]:
        return [s.rank for s in self.shards]

    @property
    def cached(self) -> bool:
        return self.cache_load_factor is not None

    @cached_property
    def ranks_without_rows(self) -> frozenset[int]:
        """Ranks holding a shard of none of the table's rows (once: the search asks of a
        placement in every plan it weighs)."""
        return frozenset(s.rank for s in self.shards if s.rows == 0)

    @cached_property
    def ranks_with_rows(self) -> frozenset[int]:
        """Ranks holding some of the table's rows."""
        return frozenset(s.rank for s in self.shards if s.rows > 0)

    def blocks(self) -> dict[int, list[Shard]]:
        """Shards by column block (first column -> its row shards, in shard order)."""
        out: dict[int, list[Shard]] = {}
        for s in self.shards:
            out.setdefault(s.col_offset, []).append(s)
        return out


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
    # Zipf exponent of the ids over a table's rows (0 = uniform): sets the UVM cache's hit rate
    id_skew: float = 1.1
    # Rows of a shard the UVM caching kernel keeps in HBM, as a fraction (TorchRec's default)
    cache_load_factor: float = 0.2
    # Whether the model reads the tables' pooled vectors in table order, each table's bags
    # one run (False: a unified layout of several tables deals its keys round-robin, so the
    # output is reordered whatever the plan; cost_model.reorder_costs)
    tables_in_key_order: bool = True
    # the fewest interaction elements the interaction needs (the dot's distinct pairs:
    # n (n - 1) / 2 x d), for floors; None: all of them (last: callers pass the rest by place)
    interaction_least_elements_per_sample: int | None = None
    # bytes the dense network keeps for its backward an example (its activations)
    activation_bytes_per_sample: float = 0.0
    # CPU ranks: a kernel a table (else a rank's tables of one sharding type share one); a
    # kernel of no rows fails (placement.kernel_without_rows)
    kernel_per_table: bool = False

    def table(self, name: str) -> TableLoad:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass
class RankCosts:
    """Per-rank arrays (length = world size)."""

    memory: np.ndarray  # bytes of device memory (HBM on GPUs)
    lookup: np.ndarray  # seconds
    framework: np.ndarray  # seconds of TorchRec's per-bag work
    dense: np.ndarray  # seconds of dense-model compute
    comm: np.ndarray  # seconds, bandwidth part
    latency: np.ndarray  # seconds
    comm_bytes: np.ndarray  # bytes sent + received
    cache: np.ndarray  # seconds of UVM cache misses: host-link transfers and cache upkeep
    host_memory: np.ndarray  # bytes of host memory holding UVM-cached shards

    @classmethod
    def zeros(cls, world: int) -> RankCosts:
        return cls(*(np.zeros(world) for _ in fields(cls)))

    def __add__(self, other: RankCosts) -> RankCosts:
        return RankCosts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def step_seconds(self) -> np.ndarray:
        return self.lookup + self.framework + self.dense + self.comm + self.latency + self.cache

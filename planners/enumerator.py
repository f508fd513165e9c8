"""The enumerator: the placements the search considers for one table, given the load that
the tables placed before it left on each rank (TorchRec's planner calls this part its
enumerator; our candidates depend on that load, so they are made during the search)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from planners import placement as pl
from planners import uvm_cache as uvm
from planners.cost_model import table_costs
from planners.topology import Topology
from planners.types import WEIGHT_BYTES, RankCosts, TableLoad, TablePlacement, Workload

T = TypeVar("T")


def least_busy(values: np.ndarray, k: int) -> list[int]:
    return sorted(int(i) for i in np.argsort(values, kind="stable")[:k])


def _unique(*choices: T) -> list[T]:
    """``choices`` without repeats, in order."""
    out: list[T] = []
    for c in choices:
        if c not in out:
            out.append(c)
    return out


def _bytes_per_row(
    table: TableLoad, workload: Workload, load_factor: float | None
) -> tuple[float, float]:
    """(device, host) bytes one more row of ``table`` costs a rank."""
    if load_factor is None:
        return table.dim * WEIGHT_BYTES + workload.optimizer.bytes_for(1, table.dim), 0.0
    # per row of the shard: its share of cache slots and their state, the LFU count, the
    # cache index map and row-wise optimizer state
    device = (
        load_factor * (table.dim * WEIGHT_BYTES + uvm.CACHE_STATE_BYTES_PER_SLOT)
        + uvm.INDEX_TABLE_BYTES_PER_ROW
        + uvm.LFU_COUNT_BYTES_PER_ROW
        + workload.optimizer.bytes_per_row
    )
    return device, float(uvm.host_bytes(np.array([1.0]), table.dim, workload.optimizer)[0])


def uneven_row_wise(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    busy: RankCosts,
    cache_load_factor: float | None = None,
    sharding_type: str = "row_wise",
) -> TablePlacement | None:
    """Row-wise (``sharding_type``: row_wise or row_wise_unpooled) with the rows split so that
    ranks made busy by ``busy`` get fewer (on the UVM caching kernel when
    ``cache_load_factor`` is given)."""
    even = pl.row_wise(table, topo, sharding_type=sharding_type)
    if cache_load_factor is not None:
        even = pl.with_cache(even, cache_load_factor)
    costs = table_costs(even, table, workload, topo)
    rows = np.maximum(np.array([s.rows for s in even.shards], dtype=float), 1.0)
    # Time per row held: a rank's lookups (and cache misses) scale with its share of the rows
    # (hashing spreads ids evenly); the output traffic does not, so it is left out of the slope
    # (row_wise_unpooled: the vectors a holder serves do, but the all-to-all waits for the
    # larger of sent and received bytes; left out too).
    per_row = np.maximum((costs.lookup + costs.cache) / rows, 1e-15)
    device_row, host_row = _bytes_per_row(table, workload, cache_load_factor)
    free = topo.usable_bytes_per_rank - busy.memory - (costs.memory - rows * device_row)
    cap = np.maximum(free, 0) / device_row
    if cache_load_factor is not None:
        host_free = topo.usable_host_bytes_per_rank - busy.host_memory
        cap = np.minimum(cap, np.maximum(host_free, 0) / host_row)
    sizes = pl.uneven_row_sizes(table, busy.step_seconds, per_row, cap)
    if sizes is None:
        return None
    out = pl.row_wise(table, topo, sizes, sharding_type)
    if cache_load_factor is None:
        return out
    cached = cached_variants([out], workload, cache_load_factor)
    return cached[0] if cached else None


def offers_cache(workload: Workload, topo: Topology) -> bool:
    """Whether the UVM caching kernel is a candidate: CUDA ranks with host memory and a host
    link in the topology, and an optimizer FBGEMM fuses (the kernel is a fused TBE)."""
    return topo.host_offload and workload.optimizer.fused and workload.cache_load_factor > 0


def cached_variants(
    placements: list[TablePlacement], workload: Workload, load_factor: float | None = None
) -> list[TablePlacement]:
    """Each sharded placement again on the UVM caching kernel (``load_factor``: the
    workload's by default). data_parallel is left out (its replicas run on TorchRec's dense
    kernel), and so are shards whose cache would exceed FBGEMM's LFU limit of 2^24 - 1 sets."""
    clf = workload.cache_load_factor if load_factor is None else load_factor
    out = []
    for p in placements:
        if p.sharding_type == "data_parallel" or p.cached:
            continue
        rows = np.array([s.rows for s in p.shards], dtype=float)
        if uvm.cache_slots(rows, clf).max(initial=0.0) > uvm.LFU_MAX_SLOTS:
            continue
        out.append(pl.with_cache(p, clf))
    return out


def candidates(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    busy: RankCosts,
    allowed: frozenset[str],
    offer_cache: bool = True,
) -> list[TablePlacement]:
    """The placements considered for ``table`` given the load ``busy`` of earlier tables.

    On CUDA topologies with host memory (``offer_cache``), every sharded placement is offered
    twice: with its rows in HBM and on the UVM caching kernel. The cost model decides: the
    cached copy is never cheaper per step (it adds the misses), so it wins only where it lets
    the table, or the tables after it, fit or take a faster placement.
    """
    out: list[TablePlacement] = []
    world, seconds = topo.world_size, busy.step_seconds
    if table.dim % pl.MIN_COLUMN_BLOCK:  # FBGEMM's sharded kernels assert on such rows
        return [pl.data_parallel(table, topo)] if "data_parallel" in allowed else []
    cache = offer_cache and offers_cache(workload, topo)
    row_types = [t for t in pl.ROW_WISE_TYPES if t in allowed]
    for kind in row_types:  # row_wise and row_wise_unpooled: the same shards
        even = pl.row_wise(table, topo, sharding_type=kind)
        out.append(even)
        if topo.device_type == "cpu" and table.rows >= world and pl.kernel_without_rows([even]):
            # TorchRec's ceil(rows / ranks) a rank leaves the last none, a kernel FBGEMM's CPU
            # kernel fails on where no other table gives it rows: a row for every rank too
            out.append(pl.row_wise(table, topo, pl.balanced_row_sizes(table.rows, world), kind))
        uneven = uneven_row_wise(table, workload, topo, busy, sharding_type=kind)
        if uneven is not None:
            out.append(uneven)
    # Each placement on the least busy ranks (or nodes) by time, and, where they differ, by
    # memory: by time alone, a heavily read table's rank could be the one with room for
    # the large table after it, and the search then found no plan where one fits.
    memory = busy.memory
    if "table_wise" in allowed:
        memory_order = memory + 1e-9 * np.arange(world)
        by_time = int(np.lexsort((memory_order, seconds))[0])
        for rank in _unique(by_time, int(np.argmin(memory_order))):
            out.append(pl.table_wise(table, rank))
    if "column_wise" in allowed:
        for k in pl.column_blocks(table.dim, world):
            for ranks in _unique(least_busy(seconds, k), least_busy(memory, k)):
                out.append(pl.column_wise(table, ranks))
    if "data_parallel" in allowed:
        out.append(pl.data_parallel(table, topo))
    node_seconds = seconds.reshape(topo.num_nodes, topo.ranks_per_node).max(axis=1)
    node_memory = memory.reshape(topo.num_nodes, topo.ranks_per_node).max(axis=1)
    if "table_row_wise" in allowed:
        for node in _unique(int(np.argmin(node_seconds)), int(np.argmin(node_memory))):
            out.append(pl.table_row_wise(table, topo, node))
    if "grid_shard" in allowed and topo.num_nodes > 1:
        for k in pl.column_blocks(table.dim, topo.num_nodes):
            for nodes in _unique(least_busy(node_seconds, k), least_busy(node_memory, k)):
                out.append(pl.grid(table, topo, nodes))
    if cache:
        # the uneven split of the cached copy is its own: caching changes the cost per row
        out += cached_variants([p for p in out if not pl.is_uneven(p)], workload)
        for kind in row_types:
            uneven = uneven_row_wise(table, workload, topo, busy, workload.cache_load_factor, kind)
            if uneven is not None:
                out.append(uneven)
    return out

"""The enumerator: the placements the search considers for one table, given the load that
the tables placed before it left on each rank (TorchRec's planner calls this part its
enumerator; our candidates depend on that load, so they are made during the search)."""

from __future__ import annotations

import numpy as np

from planners import placement as pl
from planners.cost_model import table_costs
from planners.topology import Topology
from planners.types import RankCosts, TableLoad, TablePlacement, Workload


def least_busy(values: np.ndarray, k: int) -> list[int]:
    return sorted(int(i) for i in np.argsort(values, kind="stable")[:k])


def uneven_row_wise(
    table: TableLoad, workload: Workload, topo: Topology, busy: RankCosts
) -> TablePlacement | None:
    """Row-wise with the rows split so that ranks made busy by ``busy`` get fewer."""
    even = pl.row_wise(table, topo)
    costs = table_costs(even, table, workload, topo)
    rows = np.maximum(np.array([s.rows for s in even.shards], dtype=float), 1.0)
    # Time per row held: a rank's lookups scale with its share of the rows (hashing spreads
    # ids evenly); the output traffic does not, so it is left out of the slope.
    per_row = np.maximum(costs.lookup / rows, 1e-15)
    bytes_per_row = table.dim * 4 + workload.optimizer.bytes_for(1, table.dim)
    free = topo.usable_bytes_per_rank - busy.memory - (costs.memory - rows * bytes_per_row)
    sizes = pl.uneven_row_sizes(
        table, busy.step_seconds, per_row, np.maximum(free, 0) / bytes_per_row
    )
    return None if sizes is None else pl.row_wise(table, topo, sizes)


def candidates(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    busy: RankCosts,
    allowed: frozenset[str],
) -> list[TablePlacement]:
    """The placements considered for ``table`` given the load ``busy`` of earlier tables."""
    out: list[TablePlacement] = []
    world, seconds = topo.world_size, busy.step_seconds
    if "row_wise" in allowed:
        out.append(pl.row_wise(table, topo))
        uneven = uneven_row_wise(table, workload, topo, busy)
        if uneven is not None:
            out.append(uneven)
    if "table_wise" in allowed:
        memory_order = busy.memory + 1e-9 * np.arange(world)
        out.append(pl.table_wise(table, int(np.lexsort((memory_order, seconds))[0])))
    if "column_wise" in allowed:
        for k in pl.column_blocks(table.dim, world):
            out.append(pl.column_wise(table, least_busy(seconds, k)))
    if "data_parallel" in allowed:
        out.append(pl.data_parallel(table, topo))
    node_seconds = seconds.reshape(topo.num_nodes, topo.ranks_per_node).max(axis=1)
    if "table_row_wise" in allowed:
        out.append(pl.table_row_wise(table, topo, int(np.argmin(node_seconds))))
    if "grid_shard" in allowed and topo.num_nodes > 1:
        for k in pl.column_blocks(table.dim, topo.num_nodes):
            out.append(pl.grid(table, topo, least_busy(node_seconds, k)))
    return out

"""Placements of one table on ranks: the shapes each sharding type gives its shards.

Shard layouts follow what TorchRec's runtime expects of each sharding type: row-wise shards in
rank order over every rank (rows may be uneven; the trainer patches TorchRec's routing for
that: :mod:`dist_train.train.uneven_row_wise`), table-row-wise and grid row shards of
``ceil(rows / ranks_per_node)`` over one node's ranks in order, column blocks of equal width.
row_wise_unpooled has row_wise's shards (TorchRec runs it as row_wise; only the travel of its
lookups differs), even or uneven.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from planners.topology import Topology
from planners.types import Shard, ShardingType, TableLoad, TablePlacement

MIN_COLUMN_BLOCK = 4  # FBGEMM TBE on CUDA needs row widths that are multiples of 4


def even_row_sizes(rows: int, parts: int) -> list[int]:
    """TorchRec's row split: ``ceil(rows / parts)`` each, the remainder (maybe 0) last."""
    block = -(-rows // parts)
    sizes = []
    left = rows
    for _ in range(parts):
        sizes.append(min(block, left))
        left -= sizes[-1]
    return sizes


def balanced_row_sizes(rows: int, parts: int) -> list[int]:
    """``rows`` split as evenly as they go: ``rows // parts`` each, a row more for the first
    ``rows % parts``. Every part holds a row where ``rows >= parts``, unlike
    :func:`even_row_sizes` (300,000 rows over 4,096 ranks leave TorchRec's 41 ranks none)."""
    block, extra = divmod(rows, parts)
    return [block + 1 if i < extra else block for i in range(parts)]


def kernel_without_rows(
    placements: Sequence[TablePlacement], kernel_per_table: bool = False
) -> tuple[str, int, list[str]] | None:
    """The first CPU kernel that would hold shards but none of their rows, as (sharding
    type, rank, its tables); None if every kernel holds a row. FBGEMM's CPU kernel of only
    such shards fails on its rank at the first step ("weights[0] must be a GPU or MTIA
    tensor"). A rank's tables of one sharding type share a kernel, which runs with rows of
    any of them, unless ``kernel_per_table`` (the sharder's one kernel a table)."""
    if not any(p.ranks_without_rows for p in placements):  # most plans: asked of each the
        return None  # search weighs, a placement's shards read once
    empty: list[tuple[str, int]] = []  # (sharding type, rank)
    if kernel_per_table:
        for p in placements:
            empty += [(p.sharding_type, r) for r in p.ranks_without_rows - p.ranks_with_rows]
    else:
        for kind in {p.sharding_type for p in placements}:
            mine = [p for p in placements if p.sharding_type == kind]
            rows = frozenset().union(*(p.ranks_with_rows for p in mine))
            none = frozenset().union(*(p.ranks_without_rows for p in mine))
            empty += [(kind, r) for r in none - rows]
    if not empty:
        return None
    kind, rank = min(empty)
    tables = [
        p.table for p in placements if p.sharding_type == kind and rank in p.ranks_without_rows
    ]
    return kind, rank, tables


def _row_shards(
    table: TableLoad, ranks: list[int], sizes: list[int], col_offset: int, cols: int
) -> list[Shard]:
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    return [
        Shard(r, int(o), col_offset, int(n), cols)
        for r, o, n in zip(ranks, offsets, sizes, strict=True)
    ]


ROW_WISE_TYPES = (ShardingType.ROW_WISE.value, ShardingType.ROW_WISE_UNPOOLED.value)
UNEVEN = " (uneven)"


def row_wise(
    table: TableLoad,
    topo: Topology,
    sizes: list[int] | None = None,
    sharding_type: str = ShardingType.ROW_WISE.value,
) -> TablePlacement:
    """Rows over every rank in rank order; ``sizes`` gives an uneven split. ``sharding_type``
    ``row_wise_unpooled``: the same shards, its lookups travel unpooled (planners/types.py)."""
    if sharding_type not in ROW_WISE_TYPES:
        raise ValueError(f"not a row-wise type: {sharding_type!r}")
    world = topo.world_size
    even = even_row_sizes(table.rows, world)
    sizes = sizes or even
    label = sharding_type if sizes == even else sharding_type + UNEVEN
    shards = _row_shards(table, list(range(world)), sizes, 0, table.dim)
    return TablePlacement(table.name, sharding_type, tuple(shards), label)


def row_wise_unpooled(
    table: TableLoad, topo: Topology, sizes: list[int] | None = None
) -> TablePlacement:
    """:func:`row_wise`'s shards, lookups unpooled (``row_wise_unpooled``)."""
    return row_wise(table, topo, sizes, ShardingType.ROW_WISE_UNPOOLED.value)


def is_uneven(placement: TablePlacement) -> bool:
    """A row-wise placement with an uneven split, on the device-memory kernel."""
    return not placement.cached and placement.label.endswith(UNEVEN)


def uneven_row_sizes(
    table: TableLoad, busy_seconds: np.ndarray, seconds_per_row: np.ndarray, cap_rows: np.ndarray
) -> list[int] | None:
    """A row split that evens out the ranks' step times (water-filling).

    Hashing spreads lookups uniformly over rows, so a rank's share of the table's work is its
    share of the rows. ``busy_seconds``: time each rank already spends on other tables;
    ``seconds_per_row``: this table's time per row held; ``cap_rows``: rows each rank has memory
    for. Returns None when the even split is as good (no rank is busier than another), and
    when no split fits the caps.
    """
    if np.ptp(busy_seconds) <= 1e-12 * max(1.0, float(busy_seconds.max())):
        return None
    if table.rows < len(busy_seconds):  # a row for every rank is more than the table has
        return None
    if cap_rows.sum() < table.rows:
        # no split fits the ranks' memory; the rows over the caps went out one at a time,
        # minutes for a billion-row table
        return None
    lo, hi = (
        float(busy_seconds.min()),
        float(busy_seconds.max() + seconds_per_row.max() * table.rows),
    )
    for _ in range(60):  # bisection on the common finishing time
        level = (lo + hi) / 2
        rows = np.minimum(np.maximum(0.0, (level - busy_seconds) / seconds_per_row), cap_rows)
        if rows.sum() >= table.rows:
            hi = level
        else:
            lo = level
    rows = np.minimum(np.maximum(0.0, (hi - busy_seconds) / seconds_per_row), cap_rows)
    if (cap_rows < 1).any():  # every row-wise rank keeps a shard (the runtime routes to all)
        return None
    sizes = np.maximum(np.floor(rows).astype(np.int64), 1)
    deficit = table.rows - int(sizes.sum())
    order = np.argsort(busy_seconds + sizes * seconds_per_row)
    # the rounding rows: handed out a row a rank, least busy first, to ranks with room for it
    # (handed out past the caps, a split of 10 rows under caps of 3 and 100 came out [4, 6]
    # and was lost as not fitting); or taken back a row a rank, busiest first, from ranks
    # above one row (a loop of a row at a time took most of a 4,096-rank plan's minutes)
    room = np.floor(cap_rows).astype(np.int64) - sizes
    while deficit > 0:
        open_ranks = order[room[order] > 0]
        if not len(open_ranks):
            return None
        given = open_ranks[: min(deficit, len(open_ranks))]
        sizes[given] += 1
        room[given] -= 1
        deficit -= len(given)
    while deficit < 0:
        above = order[::-1][sizes[order[::-1]] > 1]
        if not len(above):  # fewer rows than ranks: excluded above
            return None
        taken = above[: min(-deficit, len(above))]
        sizes[taken] -= 1
        deficit += len(taken)
    return [int(s) for s in sizes]


def column_blocks(dim: int, max_blocks: int) -> list[int]:
    """Numbers of equal column blocks (>= 2) of at least MIN_COLUMN_BLOCK columns."""
    return [
        k
        for k in range(2, max_blocks + 1)
        if dim % k == 0 and (dim // k) % MIN_COLUMN_BLOCK == 0 and (k & (k - 1)) == 0
    ]


def column_wise(table: TableLoad, ranks: list[int]) -> TablePlacement:
    """Equal column blocks, block i on ``ranks[i]``."""
    width = table.dim // len(ranks)
    shards = tuple(Shard(r, 0, i * width, table.rows, width) for i, r in enumerate(ranks))
    return TablePlacement(table.name, "column_wise", shards, f"column_wise x{len(ranks)}")


def table_wise(table: TableLoad, rank: int) -> TablePlacement:
    shard = Shard(rank, 0, 0, table.rows, table.dim)
    return TablePlacement(table.name, "table_wise", (shard,), f"table_wise on rank {rank}")


def data_parallel(table: TableLoad, topo: Topology) -> TablePlacement:
    shards = tuple(Shard(r, 0, 0, table.rows, table.dim) for r in range(topo.world_size))
    return TablePlacement(table.name, "data_parallel", shards, "data_parallel")


def _node_ranks(topo: Topology, node: int) -> list[int]:
    g = topo.ranks_per_node
    return list(range(node * g, (node + 1) * g))


def table_row_wise(table: TableLoad, topo: Topology, node: int) -> TablePlacement:
    """Rows over the ranks of one node."""
    ranks = _node_ranks(topo, node)
    sizes = even_row_sizes(table.rows, len(ranks))
    shards = _row_shards(table, ranks, sizes, 0, table.dim)
    return TablePlacement(
        table.name, "table_row_wise", tuple(shards), f"table_row_wise on node {node}"
    )


def grid(table: TableLoad, topo: Topology, nodes: list[int]) -> TablePlacement:
    """Column block i on node ``nodes[i]``, its rows over that node's ranks."""
    width = table.dim // len(nodes)
    sizes = even_row_sizes(table.rows, topo.ranks_per_node)
    shards: list[Shard] = []
    for i, node in enumerate(nodes):
        shards += _row_shards(table, _node_ranks(topo, node), sizes, i * width, width)
    label = f"grid_shard {len(nodes)} nodes x {topo.ranks_per_node}"
    return TablePlacement(table.name, "grid_shard", tuple(shards), label)


def with_cache(placement: TablePlacement, load_factor: float) -> TablePlacement:
    """``placement`` on the UVM caching kernel: shards in host memory, ``load_factor`` of
    their rows cached in HBM (planners/uvm_cache.py)."""
    label = f"{placement.label} + fused_uvm_caching ({load_factor:.0%} of rows in HBM)"
    return replace(placement, label=label, cache_load_factor=load_factor)


def check_covers(placement: TablePlacement, table: TableLoad) -> None:
    """Every (row, column) of the table is in exactly one shard (one per replica for DP)."""
    if placement.sharding_type == "data_parallel":
        bad = [s for s in placement.shards if (s.rows, s.cols) != (table.rows, table.dim)]
        if bad:
            raise AssertionError(f"{table.name}: partial data_parallel replicas {bad}")
        return
    area = sum(s.rows * s.cols for s in placement.shards)
    if area != table.rows * table.dim:
        raise AssertionError(f"{table.name}: shards cover {area} cells of {table.rows * table.dim}")
    # Column blocks: each is a set of row ranges that tile [0, rows) without overlap.
    blocks: dict[tuple[int, int], list[Shard]] = {}
    for s in placement.shards:
        blocks.setdefault((s.col_offset, s.cols), []).append(s)
    col_edges = sorted(blocks)
    pos = 0
    for c0, w in col_edges:
        if c0 != pos:
            raise AssertionError(f"{table.name}: column gap or overlap at column {pos}")
        pos = c0 + w
        row = 0
        for s in sorted(blocks[(c0, w)], key=lambda s: s.row_offset):
            if s.row_offset != row:
                raise AssertionError(f"{table.name}: row gap or overlap at row {row}")
            row += s.rows
        if row != table.rows:
            raise AssertionError(f"{table.name}: column block {c0} covers {row} rows")
    if pos != table.dim:
        raise AssertionError(f"{table.name}: columns covered up to {pos} of {table.dim}")

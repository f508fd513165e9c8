"""Per-rank memory and step time of a placement (the planner's cost model; docs/planner.md).

Every sharding type is built from one primitive, a *block*: a column range of a table whose
rows are split over a set of holder ranks.

- row_wise: one block, all ranks hold rows.       - table_wise: one block, one holder.
- column_wise: k blocks, one holder each.           - table_row_wise: one block on a node.
- grid_shard: k blocks, each on one node's ranks.   - data_parallel: a replica per rank.
- row_wise_unpooled: row_wise's block, priced by :func:`unpooled_block_costs` (below).

A step of a pooled block moves and computes, per rank (B = batch per rank, R ranks, H holders,
q_j = holder j's share of the rows, L ids and F bags per sample, w block columns, 4-byte floats):

- input all-to-all: each rank sends its B samples' ids to the holders of their rows;
  holder j receives (R-1) B ids_bytes q_j;
- lookups (forward, backward and the fused update): holder j reads R B L q_j rows of w columns;
- output: the holders' partial pooled sums (R B F w each) are reduce-scattered among the H
  holders, then each holder sends the other ranks their samples' bags (all-to-all);
  the backward pass moves the same bytes the other way.

Bytes cross the intra-node link or the inter-node link in proportion to where the peers are.
Time = bytes / bandwidth of the collective on that link + a latency per collective, and
lookups = rows x the measured TBE time per row at that row width. The dense part (6 flops per
parameter per sample, the dot interaction, the optimizer step, DDP all-reduce of its
gradients) is the same for every plan. On CPUs, ranks of a node share its cores: a plan's step
is at least the node's total work divided by its cores (see ``PlanEstimate``).

**row_wise_unpooled** (row_wise's shards; the lookups travel unpooled,
``dist_train/train/unpooled_row_wise.py``) has no partial sums. A rank asks each distinct row
its B L ids read once: D rows, the expected distinct count of B L Zipf(id_skew) draws over
the table's rows (:func:`distinct_rows`; the default job's batches measured 0.25 of their ids
distinct, the model says 0.21). Per rank r (q_r its share of the rows, 0 off the holders):

- counts all-to-all: an int64 count per table to every rank (R x 8 bytes out and as many in)
  -- the one term that grows with R;
- rows all-to-all: it sends the off-rank share of the rows it asks, D (1-q_r) x 8 bytes (no
  lengths), and receives (R-1) D q_r x 8;
- lookups: R D q_r rows, each a bag of one;
- vectors all-to-all: forward the holder sends (R-1) D q_r w x 4 bytes of looked-up vectors
  and each rank receives D (1-q_r) w x 4; backward their gradients travel back, the same
  bytes the other way;
- framework: its own measured per-bag figure (``calibrate``; else row_wise's) for its own
  B F pooled bags and the R D q_r one-row bags it looks up as holder; plus its local pooling
  (a vector for each of its B L ids into B F bags, and the gradients back) at the copy
  bandwidth: 2 (B L + B F) w x 4 bytes;
- memory: weights and optimizer state as row_wise; workspace = received rows (R D q_r x 8),
  looked-up vectors and their gradients (2 R D q_r w x 4), the requester's vectors and their
  gradients (2 D w x 4), its pooled bags and their gradients (2 B F w x 4).

So its bytes per rank stay flat as R grows (q_r = 1/R), where pooled row_wise reduce-scatters
[R B, F w] partial sums. It makes 4 collective calls a step (counts, rows, vectors, gradients)
for tables of one dim, as the default per type does (2 more per extra dim: not charged).

**The pooled output's order.** The model reads the pooled vectors in feature order. TorchRec
returns them grouped by sharding type, and table_wise (or column_wise, table_row_wise, grid)
tables by the first rank holding each, each rank's tables in their order. Where that is not
the order the model reads, every rank copies its B F w floats into place forward and their
gradients back (``dist_train/models/base.py``, ``in_layout_order``): :func:`reorder_costs`
charges a read and a write of each at the copy bandwidth. A plan of one table, or of tables
of one type that keeps the tables' order (:func:`in_feature_order`), pays nothing where the
model reads the tables in their order (not a unified layout of several tables, whose keys
go round-robin); the search offers a table_wise plan that keeps it (planners/search.py).

A placement on the UVM caching kernel (``TablePlacement.cache_load_factor``) keeps its shards
in host memory behind an HBM cache: memory splits into HBM (cache and its metadata) and host
bytes, and each holder's step adds the cache misses' rows over the host link and the cache's
own work (:func:`cache_costs`, planners/uvm_cache.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from planners import uvm_cache as uvm
from planners.topology import Topology
from planners.types import (
    INDEX_BYTES,
    LENGTH_BYTES,
    WEIGHT_BYTES,
    RankCosts,
    TableLoad,
    TablePlacement,
    Workload,
)
from planners.zipf import expected_distinct

# Collective calls a sharding type adds to a step: ids and lengths all-to-all, output
# reduce-scatter/all-to-all forward, and its mirror in backward. TorchRec fuses the tables
# of one sharding type into one set of calls, so latency is paid per type, not per table.
# row_wise_unpooled also makes 4 (counts, ids, vectors forward, their gradients backward).
CALLS_PER_TYPE = {"data_parallel": 1}
CALLS_DEFAULT = 4


def _link_seconds(
    nbytes: np.ndarray, inter_fraction: np.ndarray, topo: Topology, collective: str
) -> np.ndarray:
    attr = f"{collective}_bytes_per_second"
    intra = getattr(topo.intra_node, attr)
    inter = getattr(topo.inter_node, attr)
    return nbytes * ((1.0 - inter_fraction) / intra + inter_fraction / inter)


def seconds_per_row(cols: int, topo: Topology) -> float:
    """TBE time per looked-up row of ``cols`` columns: interpolated between the measured row
    widths, extrapolated along the last segment beyond the widest (never below the widest's
    time: a wider row is not cheaper)."""
    widths = np.array([w for w, _ in topo.lookup_seconds_per_row], dtype=float)
    secs = np.array([s for _, s in topo.lookup_seconds_per_row])
    if cols <= widths[-1] or len(widths) == 1:
        return float(np.interp(cols, widths, secs))
    # Timing noise can make the last segment fall; extended, it would reach negative times.
    slope = max(0.0, (secs[-1] - secs[-2]) / (widths[-1] - widths[-2]))
    return float(secs[-1] + slope * (cols - widths[-1]))


def _lookup_seconds(rows: np.ndarray, cols: int, topo: Topology) -> np.ndarray:
    return rows * seconds_per_row(cols, topo)


def _row_shares(
    table: TableLoad, topo: Topology, holders: list[int], row_sizes: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rank: its share q of a block's rows; of what it sends to the holders, the part held
    on other nodes; of what a holder receives, the part from other nodes' ranks (every rank
    sends each holder alike)."""
    world, per_node = topo.world_size, topo.ranks_per_node
    h = np.asarray(holders)
    q_h = np.asarray(row_sizes, dtype=float) / table.rows
    node = np.arange(world) // per_node
    q = np.zeros(world)
    q[h] = q_h
    share_on_node = np.bincount(node[h], weights=q_h, minlength=topo.num_nodes)[node]
    sent_inter = np.divide(1.0 - share_on_node, 1.0 - q, out=np.zeros(world), where=q < 1)
    recv_inter = np.full(world, (world - per_node) / max(world - 1, 1))
    return q, sent_inter, recv_inter


def _held_rows_costs(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    holders: list[int],
    row_sizes: list[int],
    rows_read: np.ndarray,
    cols: int,
    cache_load_factor: float | None,
) -> RankCosts:
    """The holders' rows and optimizer state: in device memory, or on the UVM caching kernel
    (:func:`cache_costs`)."""
    rows_held = np.zeros(topo.world_size)
    rows_held[np.asarray(holders)] = row_sizes
    if cache_load_factor is not None:
        return cache_costs(table, workload, topo, rows_held, rows_read, cols, cache_load_factor)
    c = RankCosts.zeros(topo.world_size)
    c.memory += rows_held * cols * WEIGHT_BYTES + workload.optimizer.bytes_for(rows_held, cols)
    return c


def block_costs(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    holders: list[int],
    row_sizes: list[int],
    cols: int,
    cache_load_factor: float | None = None,
) -> RankCosts:
    """Bandwidth, lookup and memory costs of one block (latency is added per plan);
    ``cache_load_factor``: the block runs on the UVM caching kernel (:func:`cache_costs`)."""
    world, per_node = topo.world_size, topo.ranks_per_node
    batch = workload.batch_size_per_rank
    ids_bytes = batch * (table.ids_per_sample * INDEX_BYTES + table.bags_per_sample * LENGTH_BYTES)
    bags_bytes = batch * table.bags_per_sample * cols * WEIGHT_BYTES  # one rank's pooled output
    h = np.asarray(holders)
    node = np.arange(world) // per_node
    q, sent_inter, recv_inter = _row_shares(table, topo, holders, row_sizes)
    is_holder = np.zeros(world, dtype=bool)
    is_holder[h] = True
    holders_on_node = np.bincount(node[h], minlength=topo.num_nodes)[node]
    c = RankCosts.zeros(world)

    # Input all-to-all: send the off-rank share of this rank's ids; holders receive theirs.
    sent = ids_bytes * (1.0 - q)
    recv = (world - 1) * ids_bytes * q
    c.comm += np.maximum(
        _link_seconds(sent, sent_inter, topo, "all_to_all"),
        _link_seconds(recv, recv_inter, topo, "all_to_all"),
    )
    c.comm_bytes += sent + recv

    # Lookups (forward + backward + fused update) on the holders.
    rows_read = world * rows_asked("row_wise", table, workload) * q
    c.lookup += _lookup_seconds(rows_read, cols, topo)

    # Output, forward and (mirrored) backward.
    partials = world * bags_bytes  # the holders' pooled partial sums, all samples
    n_h = len(holders)
    if n_h > 1:  # reduce-scatter among the holders
        rs = np.where(is_holder, partials * (n_h - 1) / n_h, 0.0)
        rs_inter = np.where(is_holder, (n_h - holders_on_node) / (n_h - 1), 0.0)
        # forward reduce-scatter, backward all-gather of the same bytes
        c.comm += _link_seconds(rs, rs_inter, topo, "reduce_scatter")
        c.comm += _link_seconds(rs, rs_inter, topo, "all_gather")
        c.comm_bytes += 4 * rs
    if n_h < world:  # all-to-all: holders hand the other ranks their samples' bags
        out = np.where(is_holder, bags_bytes * (world - n_h) / n_h, bags_bytes)
        non_holders_on_node = per_node - holders_on_node
        out_inter = np.where(
            is_holder,
            1.0 - non_holders_on_node / max(world - n_h, 1),
            1.0 - holders_on_node / n_h,
        )
        c.comm += 2 * _link_seconds(out, out_inter, topo, "all_to_all")
        c.comm_bytes += 2 * out

    # Memory: buffers for partial sums, received ids and gradients of the outputs, then rows
    # and optimizer state on holders. The partial sums and, in backward, their gradient do not
    # coexist at the peak: measured peak RSS (bench planner) fits one copy, not two
    # (docs/planner.md, "Memory").
    c.memory += np.where(is_holder, partials + recv, 2 * bags_bytes)
    return c + _held_rows_costs(
        table, workload, topo, holders, row_sizes, rows_read, cols, cache_load_factor
    )


def unpooled_block_costs(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    holders: list[int],
    row_sizes: list[int],
    cols: int,
    cache_load_factor: float | None = None,
) -> RankCosts:
    """Bandwidth, lookup and memory costs of a row_wise_unpooled block (the module docstring):
    each distinct row a rank's ids read asked of its holder once, its vector back, bags pooled
    by the requester. The per-bag framework work is added by :func:`table_costs`
    (:func:`bags_handled`)."""
    world, per_node = topo.world_size, topo.ranks_per_node
    batch, ids, bags = workload.batch_size_per_rank, table.ids_per_sample, table.bags_per_sample
    own_ids = batch * ids  # ids a rank's own samples look up
    asked = rows_asked("row_wise_unpooled", table, workload)  # the rows they read
    vector = cols * WEIGHT_BYTES
    q, ask_inter, serve_inter = _row_shares(table, topo, holders, row_sizes)
    c = RankCosts.zeros(world)

    # Counts all-to-all: an int64 count to every rank, as many back (grows with the world).
    counts = np.full(world, float(world * INDEX_BYTES))
    counts_inter = np.full(world, (world - per_node) / world)
    c.comm += _link_seconds(counts, counts_inter, topo, "all_to_all")
    c.comm_bytes += 2 * counts

    # Rows all-to-all: the off-rank share of the rows it asks out, the rows asked of it in.
    ids_out = asked * (1.0 - q) * INDEX_BYTES
    ids_in = (world - 1) * asked * q * INDEX_BYTES
    c.comm += np.maximum(
        _link_seconds(ids_out, ask_inter, topo, "all_to_all"),
        _link_seconds(ids_in, serve_inter, topo, "all_to_all"),
    )
    c.comm_bytes += ids_out + ids_in

    # Lookups on the holders (forward, backward and the fused update), a bag of one per row.
    rows_read = world * asked * q
    c.lookup += _lookup_seconds(rows_read, cols, topo)

    # Vectors all-to-all forward (holder -> requesters), their gradients backward (the same
    # bytes the other way: the same time).
    served = (world - 1) * asked * q * vector
    received = asked * (1.0 - q) * vector
    forward = np.maximum(
        _link_seconds(served, serve_inter, topo, "all_to_all"),
        _link_seconds(received, ask_inter, topo, "all_to_all"),
    )
    c.comm += 2 * forward
    c.comm_bytes += 2 * (served + received)
    # The requester's local pooling: read a vector for each of its B L ids, write B F bags;
    # backward reads the bags' gradients and adds one per id.
    c.framework += 2 * (own_ids + batch * bags) * vector / topo.memory_bytes_per_second

    c.memory += (
        rows_read * INDEX_BYTES  # ids received (its own included)
        + 2 * rows_read * vector  # looked-up vectors and their gradients
        + 2 * asked * vector  # the requester's vectors and their gradients
        + 2 * batch * bags * vector  # its pooled bags and their gradients
    )
    return c + _held_rows_costs(
        table, workload, topo, holders, row_sizes, rows_read, cols, cache_load_factor
    )


def rows_asked(sharding_type: str, table: TableLoad, workload: Workload) -> float:
    """Rows one rank's batch asks of ``table``'s holders a step: every id where the lookups
    pool on the holders, each distinct row once where they travel unpooled."""
    if sharding_type == "row_wise_unpooled":
        return distinct_rows(table, workload)
    return workload.batch_size_per_rank * table.ids_per_sample


def distinct_rows(table: TableLoad, workload: Workload) -> float:
    """Distinct rows of ``table`` one rank's batch reads: its B L ids as Zipf(id_skew) draws
    over the table's rows (planners/zipf.py)."""
    draws = workload.batch_size_per_rank * table.ids_per_sample
    return expected_distinct(draws, table.rows, workload.id_skew)


def cache_costs(
    table: TableLoad,
    workload: Workload,
    topo: Topology,
    rows_held: np.ndarray,
    rows_read: np.ndarray,
    cols: int,
    load_factor: float,
) -> RankCosts:
    """What the UVM caching kernel adds for a block (planners/uvm_cache.py): HBM for the cache
    and its metadata, host memory for the shard, and per step the misses' rows moved over the
    host link (the fetch; the write-back of as many evicted rows goes the other way at the same
    time), written into and evicted from the cache in HBM, the prefetch's index work and its
    kernel launches. Hits cost what HBM-resident rows cost (the lookup time, charged already)."""
    c = RankCosts.zeros(topo.world_size)
    opt = workload.optimizer
    c.memory += uvm.device_bytes(rows_held, cols, load_factor, opt)
    c.host_memory += uvm.host_bytes(rows_held, cols, opt)
    link = topo.host_to_device_bytes_per_second or math.inf
    row_bytes = cols * WEIGHT_BYTES
    hit = uvm.shard_hit_rates(table.rows, rows_held, load_factor, workload.id_skew)
    misses = rows_read * (1.0 - hit)  # an upper bound: a row missed twice in a step is fetched once
    hbm = 2 * misses * row_bytes + rows_read * uvm.INDEX_BYTES_PER_LOOKUP
    seconds = misses * row_bytes / link + hbm / topo.memory_bytes_per_second
    c.cache += np.where(rows_held > 0, seconds + uvm.PREFETCH_SECONDS, 0.0)
    return c


def placement_hit_rates(
    placement: TablePlacement, table: TableLoad, workload: Workload
) -> list[float]:
    """The estimated cache hit rate of each shard of a cached placement (empty if none)."""
    if placement.cache_load_factor is None:
        return []
    return [
        uvm.shard_hit_rate(table.rows, s.rows, placement.cache_load_factor, workload.id_skew)
        for s in placement.shards
    ]


def data_parallel_costs(table: TableLoad, workload: Workload, topo: Topology) -> RankCosts:
    """A replica per rank: local lookups, DDP all-reduce of the whole table's gradient."""
    world = topo.world_size
    batch = workload.batch_size_per_rank
    c = RankCosts.zeros(world)
    c.lookup += _lookup_seconds(np.full(world, batch * table.ids_per_sample), table.dim, topo)
    # The dense kernel's optimizer steps every element of the replica, every step.
    c.lookup += table.rows * table.dim / topo.dense_update_elements_per_second
    grad = table.weight_bytes
    allreduce = np.full(world, 2.0 * grad * (world - 1) / world)
    inter = (world - topo.ranks_per_node) / max(world - 1, 1)
    c.comm += _link_seconds(allreduce, np.full(world, inter), topo, "all_reduce")
    c.comm_bytes += 2 * allreduce
    # Weights, a dense gradient, optimizer state (dense kernel), output buffers, and on more
    # than one rank the copy of the gradient DDP's hook averages (dense_parallel.py)
    state = workload.optimizer.bytes_for(table.rows, table.dim)
    dense_grad = 0 if not workload.optimizer.fused else grad  # bytes_for counts it otherwise
    out = 2 * batch * table.bags_per_sample * table.dim * WEIGHT_BYTES
    c.memory += grad + dense_grad + state + out + (grad if world > 1 else 0)
    return c


# TorchRec runs table_row_wise, and grid_shard per column block, with its row-wise machinery
# inside a node (bucketizing ids, reduce-scattering partial sums). row_wise_unpooled has its
# own measured figure where `calibrate` timed it; a topology without one (the cuda preset)
# charges row_wise's (same TBE, bags of one).
_FRAMEWORK_AS = {
    "table_row_wise": "row_wise",
    "grid_shard": "row_wise",
    "row_wise_unpooled": "row_wise",
}


def bags_handled(
    placement: TablePlacement, table: TableLoad, workload: Workload, topo: Topology
) -> np.ndarray:
    """Pooled bags each rank handles for a table: a holder every sample's bags of its block,
    any other rank its own samples' bags (data_parallel: its own, on every rank;
    row_wise_unpooled: its own, pooled locally, and as holder a bag of one per row it is
    asked for, R D q_r with D the distinct rows a rank asks for)."""
    world, bags = topo.world_size, workload.batch_size_per_rank * table.bags_per_sample
    if placement.sharding_type == "data_parallel":
        return np.full(world, float(bags))
    if placement.sharding_type == "row_wise_unpooled":
        q = np.zeros(world)
        for s in placement.shards:
            q[s.rank] += s.rows * s.cols / (table.rows * table.dim)
        return bags + world * distinct_rows(table, workload) * q
    handled = np.zeros(world)
    for block in placement.blocks().values():
        held = np.zeros(world, dtype=bool)
        held[[s.rank for s in block]] = True
        handled += np.where(held, world * bags, bags)
    return handled


def per_bag_seconds(sharding_type: str, topo: Topology) -> float:
    """TorchRec's measured per-bag work for ``sharding_type``: its own figure, else the figure
    of the type whose machinery it runs (:func:`framework_kind`)."""
    measured = dict(topo.bag_seconds)
    if sharding_type in measured:
        return measured[sharding_type]
    return measured.get(framework_kind(sharding_type), 0.0)


def framework_kind(sharding_type: str) -> str:
    """The sharding type whose measured per-bag cost applies to ``sharding_type``."""
    return _FRAMEWORK_AS.get(sharding_type, sharding_type)


def table_costs(
    placement: TablePlacement, table: TableLoad, workload: Workload, topo: Topology
) -> RankCosts:
    """Costs of one table's placement, without the per-type collective latency."""
    total = RankCosts.zeros(topo.world_size)
    per_bag = per_bag_seconds(placement.sharding_type, topo)
    total.framework += per_bag * bags_handled(placement, table, workload, topo)
    if placement.sharding_type == "data_parallel":
        return total + data_parallel_costs(table, workload, topo)
    costs = unpooled_block_costs if placement.sharding_type == "row_wise_unpooled" else block_costs
    for block in placement.blocks().values():
        ranks, sizes = [s.rank for s in block], [s.rows for s in block]
        total = total + costs(
            table, workload, topo, ranks, sizes, block[-1].cols, placement.cache_load_factor
        )
    return total


def latency_costs(sharding_types: set[str], topo: Topology) -> RankCosts:
    """The fixed cost of each sharding type's collectives (every rank takes part)."""
    link = topo.inter_node if topo.num_nodes > 1 else topo.intra_node
    calls = sum(CALLS_PER_TYPE.get(t, CALLS_DEFAULT) for t in sharding_types)
    c = RankCosts.zeros(topo.world_size)
    c.latency += calls * link.latency_seconds
    return c


def dense_costs(workload: Workload, topo: Topology) -> RankCosts:
    """The dense MLPs: matmuls, a DDP gradient all-reduce, parameters and optimizer state."""
    world = topo.world_size
    c = RankCosts.zeros(world)
    params, batch = workload.dense_parameters, workload.batch_size_per_rank
    c.dense += 6.0 * params * batch / topo.dense_flops_per_second
    c.dense += (
        batch * workload.interaction_elements_per_sample / (topo.interaction_elements_per_second)
    )
    c.dense += params / topo.dense_update_elements_per_second
    if world > 1:
        grad = params * WEIGHT_BYTES
        allreduce = 2.0 * grad * (world - 1) / world
        inter = (world - topo.ranks_per_node) / max(world - 1, 1)
        c.comm += _link_seconds(
            np.full(world, allreduce), np.full(world, inter), topo, "all_reduce"
        )
        link = topo.inter_node if topo.num_nodes > 1 else topo.intra_node
        # one all-reduce: the trainer's DDP keeps every gradient in one bucket
        # (dist_train/train/dense_parallel.py), where DDP's default is one a 25 MiB
        c.latency += link.latency_seconds
        c.comm_bytes += 2 * allreduce
        c.memory += grad  # the copy DDP's hook averages (as a data_parallel table's)
    c.memory += dense_state_bytes(workload)
    c.memory += step_working_bytes(workload, topo)
    return c


ACTIVATION_PEAK = 1.5
"""A step's peak activation memory over what autograd saves: the backward holds the saved
tensors and, for the layer it is in, their gradients (fitted on CPU ranks: docs/planner.md)."""


def dense_state_bytes(workload: Workload) -> float:
    """The dense parameters, their gradients and optimizer state."""
    return workload.dense_parameters * WEIGHT_BYTES * (2 + workload.dense_optimizer_slots)


def step_working_bytes(workload: Workload, topo: Topology) -> float:
    """What a step allocates besides the tables and dense state: the dense network's
    activations at the rank's batch, and the overhead any step takes (autograd, allocator
    caches, TorchRec and DDP buffers)."""
    activations = workload.batch_size_per_rank * workload.activation_bytes_per_sample
    return ACTIVATION_PEAK * activations + topo.step_overhead_bytes


def in_feature_order(placements: Sequence[TablePlacement], workload: Workload) -> bool:
    """Whether TorchRec's pooled output of ``placements`` comes in the order the model reads
    it (the module docstring): the model reads the tables in their order
    (``workload.tables_in_key_order``), and the plan has one table, or one sharding type that
    keeps the order: row_wise, row_wise_unpooled and data_parallel always, the others where
    each table's lowest rank is no lower than the tables' before it (TorchRec lists them by
    the first rank holding each)."""
    if len(placements) <= 1:
        return True
    if not workload.tables_in_key_order:
        return False
    types = {p.sharding_type for p in placements}
    if len(types) > 1:
        return False
    if types <= {"row_wise", "row_wise_unpooled", "data_parallel"}:
        return True
    first = {p.table: min(s.rank for s in p.shards) for p in placements}
    ranks = [first[t.name] for t in workload.tables if t.name in first]
    return all(a <= b for a, b in itertools.pairwise(ranks))


def reorder_costs(
    placements: Sequence[TablePlacement], workload: Workload, topo: Topology
) -> RankCosts:
    """Every rank's copies of its pooled vectors into feature order and of their gradients
    back, where :func:`in_feature_order` does not hold (the module docstring)."""
    c = RankCosts.zeros(topo.world_size)
    if in_feature_order(placements, workload):
        return c
    width = sum(t.dim * t.bags_per_sample for t in workload.tables)
    copied = 2 * 2 * workload.batch_size_per_rank * width * WEIGHT_BYTES  # read + write, twice
    c.framework += copied / topo.memory_bytes_per_second
    return c

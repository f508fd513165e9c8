"""2D plans: shard inside groups of ``group_size`` consecutive ranks, replicate the groups.

A group of G ranks runs a plan made for G ranks (its batch is G x the per-rank batch, whatever
the world size), so its step does not grow with the world. What 2D adds, per rank:

- the replica merge: every ``sync_every`` steps, the W/G ranks holding the same shards
  all-reduce the gradients they applied (ring all-reduce bytes 2 (R-1)/R x held weight bytes
  over the replicas' link, R = W/G) and re-apply their sum; each keeps a copy of its shards'
  weights and optimizer state as of the last merge;
- DDP of the dense model (and of data_parallel tables) over the whole world, as in 1D.

Groups are consecutive ranks, so a group of at most one node keeps its all-to-alls on the
intra-node link, and a group of several whole nodes spans them; the sync of a replica group
then crosses nodes. Hierarchical types (table_row_wise, grid_shard) are not used inside
groups: TorchRec builds their intra-node process groups over the whole world. Nor is the UVM
caching kernel: the merge reads and rewrites FBGEMM's weights, which would bypass dirty rows
held in the cache. row_wise_unpooled is (its ids travel inside the group), in groups of more
than one rank, and as in 1D never beside row_wise in one plan (the beam search's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planners.cost_model import dense_costs, latency_costs, reorder_costs, table_costs
from planners.search import PlanEstimate, beam_search, check_constraints, dense_does_not_fit, gib
from planners.topology import Topology, resize
from planners.types import (
    HIERARCHICAL,
    WEIGHT_BYTES,
    PlanningError,
    RankCosts,
    TablePlacement,
    Workload,
)

SYNC_CALLS = 1  # one all-reduce of the recovered gradients
# Recovering the gradient and re-applying it, per held element, in optimizer steps' work:
# measured 22 ms for 4.8M elements on this project's CPUs (a torch optimizer step there: 1.0e9
# elements/s), all-reduce excluded.
MERGE_UPDATES = 4.6


@dataclass(frozen=True)
class GroupPlan:
    """A plan for one group and what the whole world pays to run it as replicas."""

    group_size: int
    group_topology: Topology
    estimate: PlanEstimate  # per group rank: group plan + world DDP + replica sync

    @property
    def step_seconds(self) -> float:
        return self.estimate.step_seconds

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    def score(self) -> tuple[bool, bool, float, int]:
        return self.estimate.score()


def _no_fit_in_groups(
    plans: list[GroupPlan], workload: Workload, topo: Topology, group_size: int, sync_every: int
) -> str:
    """Why no plan fits groups of ``group_size``: the dense side alone, or the leanest of
    ``plans`` (those the search kept, for speed): its fullest rank's memory with the replica
    merge's copy of what the rank holds, and the tables it holds. (The group's own topology
    leaves that copy out: a table of 750 MiB was said to need less than 921.6 MiB usable
    where it needed 1,463.)"""
    dense_alone = dense_does_not_fit(workload, group_topology(topo, group_size))
    if dense_alone is not None:  # no table is at fault
        return dense_alone
    leanest = min(plans, key=lambda c: c.estimate.max_memory_bytes).estimate
    rank = int(np.argmax(leanest.costs.memory))
    held = [p for p in leanest.placements if p.sharding_type != "data_parallel"]
    copy = replica_sync_costs(tuple(held), workload, topo, group_size, sync_every).memory[rank]
    tables = [p.table for p in held if any(s.rank == rank and s.rows for s in p.shards)]
    named = (
        f", holding {', '.join(tables[:4])}{' ...' if len(tables) > 4 else ''}" if tables else ""
    )
    return (
        f"does not fit: {leanest.label} needs {gib(leanest.max_memory_bytes)} on its fullest "
        f"rank{named} ({gib(copy)} of it the replica merge's copy of the rows and optimizer "
        f"state it holds), {gib(leanest.usable_bytes)} usable"
    )


def group_sizes(num_nodes: int, ranks_per_node: int) -> list[int]:
    """Group sizes that tile the nodes: divisors of a node's ranks, or whole nodes (< world)."""
    inside = [g for g in range(1, ranks_per_node + 1) if ranks_per_node % g == 0]
    spanning = [ranks_per_node * k for k in range(2, num_nodes) if num_nodes % k == 0]
    return [g for g in inside + spanning if g < num_nodes * ranks_per_node]


def group_topology(topo: Topology, group_size: int) -> Topology:
    """The topology one group sees: its own ranks (one node, or whole nodes)."""
    per_node = topo.ranks_per_node
    if group_size <= per_node:
        return resize(topo, num_nodes=1, ranks_per_node=group_size)
    return resize(topo, num_nodes=group_size // per_node)


def _core_share(topo: Topology, group_size: int) -> float:
    """Threads per core a group's CPU work gets where ranks share a node's cores: a node's
    ``ranks_per_node / group_size`` groups all do the same work on its cores."""
    if topo.device_type != "cpu" or not topo.cores_per_node:
        return 0.0
    groups_per_node = max(1, topo.ranks_per_node // group_size)
    return topo.threads_per_rank * groups_per_node / topo.cores_per_node


def replica_sync_costs(
    placements: tuple[TablePlacement, ...],
    workload: Workload,
    topo: Topology,
    group_size: int,
    sync_every: int,
) -> RankCosts:
    """Per group rank: merging held shards with the other replicas every ``sync_every`` steps
    (dist_train.train.replicas.ReplicaSync): a sum all-reduce of a gradient the size of the
    held weights, about ``MERGE_UPDATES`` optimizer updates of every held element, and a copy
    of the held weights and optimizer state as of the last merge."""
    weights = np.zeros(group_size)
    state = np.zeros(group_size)
    for p in placements:
        if p.sharding_type == "data_parallel":
            continue  # DDP keeps these in step over the whole world
        for s in p.shards:
            weights[s.rank] += s.rows * s.cols * WEIGHT_BYTES
            state[s.rank] += workload.optimizer.bytes_for(s.rows, s.cols)
    replicas = topo.world_size // group_size
    c = RankCosts.zeros(group_size)
    if replicas < 2:
        return c
    sent = 2.0 * weights * (replicas - 1) / replicas
    # a replica group is one rank per group: rpn / G of them share a node when G < rpn
    same_node = topo.ranks_per_node // group_size if group_size < topo.ranks_per_node else 1
    inter = (replicas - min(same_node, replicas)) / (replicas - 1)
    per_byte = (1.0 - inter) / topo.intra_node.all_reduce_bytes_per_second + (
        inter / topo.inter_node.all_reduce_bytes_per_second
    )
    link = topo.inter_node if inter > 0 else topo.intra_node
    c.comm += sent * per_byte / sync_every
    c.latency += SYNC_CALLS * link.latency_seconds / sync_every
    c.comm_bytes += 2 * sent / sync_every
    elements = weights / WEIGHT_BYTES
    c.dense += MERGE_UPDATES * elements / topo.dense_update_elements_per_second / sync_every
    c.memory += weights + state + np.minimum(weights, SYNC_BUCKET_BYTES)
    return c


SYNC_BUCKET_BYTES = 64 * 2**20


def estimate_group_plan(
    placements: tuple[TablePlacement, ...],
    workload: Workload,
    topo: Topology,
    group_size: int,
    sync_every: int,
) -> GroupPlan:
    """The estimate of ``placements`` (made for one group) run as replicas on ``topo``."""
    gtopo = group_topology(topo, group_size)
    world_dense = dense_costs(workload, topo)
    costs = RankCosts.zeros(group_size)
    for p in placements:
        table = workload.table(p.table)
        # data_parallel tables are in the world's DDP: charge their all-reduce over the world
        t_topo = topo if p.sharding_type == "data_parallel" else gtopo
        tc = table_costs(p, table, workload, t_topo)
        costs = costs + (_first(tc, group_size) if t_topo is topo else tc)
    costs = costs + _first(world_dense, group_size)
    costs = costs + latency_costs({p.sharding_type for p in placements}, gtopo)
    costs = costs + reorder_costs(placements, workload, gtopo)
    costs = costs + replica_sync_costs(placements, workload, topo, group_size, sync_every)
    estimate = PlanEstimate.of(placements, costs, gtopo, workload)
    estimate.core_share = _core_share(topo, group_size)
    return GroupPlan(group_size, gtopo, estimate)


def _first(c: RankCosts, n: int) -> RankCosts:
    """The first ``n`` ranks of world-sized costs (uniform costs: DDP, data_parallel)."""
    return RankCosts(*(getattr(c, f)[:n] for f in RankCosts.__dataclass_fields__))


def best_group_plans(
    workload: Workload,
    topo: Topology,
    allowed: frozenset[str],
    sync_every: int,
    sizes: list[int] | None = None,
) -> dict[int, GroupPlan | str]:
    """The best 2D plan for each group size (or why there is none)."""
    types = allowed - HIERARCHICAL
    out: dict[int, GroupPlan | str] = {}
    if not types:
        return {g: "hierarchical types are not used inside groups" for g in sizes or []}
    valid = group_sizes(topo.num_nodes, topo.ranks_per_node)
    for g in sizes if sizes is not None else valid:
        if g not in valid:
            out[g] = (
                f"groups of {g} do not tile {topo.num_nodes} node(s) x {topo.ranks_per_node} "
                f"ranks; use one of {valid} or {topo.world_size} (1D)"
            )
            continue
        gtopo = group_topology(topo, g)
        # a group of one rank looks every id up locally: row_wise_unpooled is row_wise there
        group_types = types if g > 1 else types & {"table_wise", "row_wise", "data_parallel"}
        if not group_types:
            out[g] = "no sharding type of the job runs on a group of one rank"
            continue
        try:
            check_constraints(workload, gtopo, frozenset(group_types))
        except PlanningError as err:
            out[g] = str(err)
            continue
        candidates = [
            estimate_group_plan(plan.placements, workload, topo, g, sync_every)
            # No UVM caching inside groups: the replica merge reads and rewrites the TBE's
            # weights directly (ReplicaSync), which a cache holding dirty rows would bypass.
            for plan in beam_search(workload, gtopo, frozenset(group_types), offer_cache=False)
        ]
        if not candidates:  # the beam found no placement at all (no reason of its own)
            out[g] = f"no placement of {sorted(group_types)} on {g} ranks"
            continue
        best = min(candidates, key=lambda c: c.score())
        replicated = all(p.sharding_type == "data_parallel" for p in best.estimate.placements)
        if not best.fits:
            out[g] = _no_fit_in_groups(candidates, workload, topo, g, sync_every)
        elif replicated and sizes is None:  # under auto, 1D's data_parallel already covers it
            out[g] = "data_parallel in groups is 1D data_parallel"
        else:
            out[g] = best
    return out

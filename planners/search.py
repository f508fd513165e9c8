"""The search: place tables largest first, keeping the best few partial plans (a beam).

Objective: the smallest estimated step time of the slowest rank (training is synchronous, so
the slowest rank sets the pace), among plans whose every rank fits in its usable memory; ties
go to the smaller peak memory. Candidates for each table depend on what earlier tables left:
table-wise and column blocks go to the least busy ranks, table-row-wise and grid blocks to the
least busy nodes, and an uneven row split evens out ranks that other tables made busier. A plan
uses at most one of row_wise and row_wise_unpooled (``types.EXCLUSIVE_TYPES``): a partial plan
never takes a candidate of the other.

Beside the beam's plans, one whole plan is offered as it stands: every table table_wise, the
tables cut in their order into runs of balanced cost, run k on rank k
(:func:`contiguous_table_wise`). Its pooled output needs no reordering into feature order,
which the cost model charges the others (``cost_model.reorder_costs``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from planners import placement as pl
from planners import uvm_cache as uvm
from planners.cost_model import (
    dense_costs,
    dense_state_bytes,
    latency_costs,
    reorder_costs,
    table_costs,
)
from planners.enumerator import candidates, offers_cache, uneven_row_wise
from planners.topology import Topology
from planners.types import (
    SHARDING_TYPES,
    PlanningError,
    RankCosts,
    Shard,
    TablePlacement,
    Workload,
    compatible,
)

BEAM_WIDTH = 8


@dataclass
class PlanEstimate:
    """A whole plan and its estimated per-rank costs (dense model and latency included)."""

    placements: tuple[TablePlacement, ...]
    costs: RankCosts
    usable_bytes: int
    ranks_per_node: int
    # threads per rank / cores per node where ranks share a node's CPU cores, else 0
    core_share: float = 0.0
    usable_host_bytes: int = 0  # host memory per rank for UVM-cached shards
    # a CPU rank's kernel would hold no rows (placement.kernel_without_rows): the search
    # prefers any plan without one, and the trainer refuses such a plan
    empty_kernel: bool = False

    @classmethod
    def of(
        cls,
        placements: tuple[TablePlacement, ...],
        costs: RankCosts,
        topo: Topology,
        workload: Workload,
    ) -> PlanEstimate:
        share = 0.0
        if topo.device_type == "cpu" and topo.cores_per_node:
            share = topo.threads_per_rank / topo.cores_per_node
        empty = topo.device_type == "cpu" and (
            pl.kernel_without_rows(placements, workload.kernel_per_table) is not None
        )
        return cls(
            placements,
            costs,
            topo.usable_bytes_per_rank,
            topo.ranks_per_node,
            share,
            topo.usable_host_bytes_per_rank,
            empty,
        )

    @property
    def fits(self) -> bool:
        return bool(
            self.costs.memory.max() <= self.usable_bytes
            and self.costs.host_memory.max() <= self.usable_host_bytes
            and uvm.most_cache_slots(self.placements) <= uvm.LFU_MAX_SLOTS
        )

    @property
    def step_seconds(self) -> float:
        """The slowest rank's step; on shared CPU cores at least a node's work / its cores."""
        per_rank = self.costs.step_seconds
        slowest = float(per_rank.max())
        if self.core_share <= 0:
            return slowest
        # CPU work of a node's ranks queues on its cores; waiting in collectives does not.
        c = self.costs
        cpu = (c.lookup + c.framework + c.dense).reshape(-1, self.ranks_per_node)
        wait = (c.comm + c.latency).reshape(-1, self.ranks_per_node)
        node = cpu.sum(axis=1) * self.core_share + wait.max(axis=1)
        return max(slowest, float(node.max()))

    @property
    def max_memory_bytes(self) -> int:
        return int(self.costs.memory.max())

    @property
    def max_host_memory_bytes(self) -> int:
        return int(self.costs.host_memory.max())

    @property
    def label(self) -> str:
        labels = {p.label for p in self.placements}
        if len(labels) == 1:
            return labels.pop()
        return ", ".join(f"{p.table}: {p.label}" for p in self.placements)

    def score(self) -> tuple[bool, bool, float, int]:
        return (not self.fits, self.empty_kernel, self.step_seconds, self.max_memory_bytes)


@dataclass
class SearchResult:
    best: PlanEstimate
    # One entry per sharding type: the best plan using only it, or why there is none.
    alternatives: dict[str, PlanEstimate | str] = field(default_factory=dict)
    seconds: float = 0.0
    allowed: frozenset[str] = frozenset(SHARDING_TYPES)  # the types the job let it use


@dataclass
class _Partial:
    placements: tuple[TablePlacement, ...]
    costs: RankCosts  # tables only
    types: frozenset[str]


def _rebalance(
    plan: PlanEstimate, workload: Workload, topo: Topology, allowed: frozenset[str]
) -> PlanEstimate:
    """Re-split each row-wise table unevenly against the load of the tables placed after it
    (the beam places large tables first, before the small ones that unbalance the ranks)."""
    if not allowed & set(pl.ROW_WISE_TYPES):
        return plan
    for i, p in enumerate(plan.placements):
        if p.sharding_type not in pl.ROW_WISE_TYPES:
            continue
        table = workload.table(p.table)
        mine = table_costs(p, table, workload, topo)
        others = RankCosts(
            *(getattr(plan.costs, f) - getattr(mine, f) for f in RankCosts.__dataclass_fields__)
        )
        uneven = uneven_row_wise(
            table, workload, topo, others, p.cache_load_factor, p.sharding_type
        )
        if uneven is None:
            continue
        trial = PlanEstimate.of(
            (*plan.placements[:i], uneven, *plan.placements[i + 1 :]),
            others + table_costs(uneven, table, workload, topo),
            topo,
            workload,
        )
        if trial.score() < plan.score():
            plan = trial
    return plan


def _finish(p: _Partial, base: RankCosts, workload: Workload, topo: Topology) -> PlanEstimate:
    costs = p.costs + base + latency_costs(set(p.types), topo)
    costs = costs + reorder_costs(p.placements, workload, topo)
    return PlanEstimate.of(p.placements, costs, topo, workload)


def estimate_plan(
    placements: Sequence[TablePlacement], workload: Workload, topo: Topology
) -> PlanEstimate:
    """Our cost model's estimate of any plan (TorchRec's included)."""
    costs = dense_costs(workload, topo)
    full = []
    for p in placements:
        table = workload.table(p.table)
        if p.sharding_type == "data_parallel" and not p.shards:
            p = TablePlacement(
                p.table,
                p.sharding_type,
                tuple(Shard(r, 0, 0, table.rows, table.dim) for r in range(topo.world_size)),
                p.label,
                p.cache_load_factor,
            )
        full.append(p)
        costs = costs + table_costs(p, table, workload, topo)
    costs = costs + latency_costs({p.sharding_type for p in full}, topo)
    costs = costs + reorder_costs(full, workload, topo)
    return PlanEstimate.of(tuple(full), costs, topo, workload)


def contiguous_table_wise(workload: Workload, topo: Topology) -> tuple[TablePlacement, ...]:
    """Every table table_wise, the tables in their order cut into at most one run per rank,
    run k on rank k, the runs' largest cost on their holder as small as such cuts make it."""
    holder = [
        float(table_costs(pl.table_wise(t, 0), t, workload, topo).step_seconds[0])
        for t in workload.tables
    ]

    def runs_under(cap: float) -> list[int] | None:
        """Each table's run, greedily filling runs up to ``cap``; None past the ranks."""
        run, total, out = 0, 0.0, []
        for cost in holder:
            if total and total + cost > cap:
                run, total = run + 1, 0.0
            total += cost
            out.append(run)
        return out if run < topo.world_size else None

    lo, hi = max(holder), sum(holder)
    for _ in range(60):  # bisect the cap: runs_under(hi) always fits
        mid = (lo + hi) / 2
        if runs_under(mid) is None:
            lo = mid
        else:
            hi = mid
    runs = runs_under(hi)
    assert runs is not None
    return tuple(pl.table_wise(t, r) for t, r in zip(workload.tables, runs, strict=True))


def beam_search(
    workload: Workload,
    topo: Topology,
    allowed: frozenset[str],
    width: int = BEAM_WIDTH,
    offer_cache: bool = True,
) -> list[PlanEstimate]:
    """The best few whole plans over ``allowed`` types, best first (``offer_cache``: the UVM
    caching kernel may be used where the topology allows it)."""
    base = dense_costs(workload, topo)
    beam = [_Partial((), RankCosts.zeros(topo.world_size), frozenset())]
    for table in sorted(workload.tables, key=lambda t: (-t.weight_bytes, t.name)):
        grown = []
        for state in beam:
            busy = state.costs + base
            for cand in candidates(table, workload, topo, busy, allowed, offer_cache):
                if not compatible(state.types, cand.sharding_type):
                    continue  # row_wise and row_wise_unpooled never share a plan
                costs = state.costs + table_costs(cand, table, workload, topo)
                grown.append(
                    _Partial((*state.placements, cand), costs, state.types | {cand.sharding_type})
                )
        if not grown:  # (a config allows one type or all: the API may allow others)
            raise PlanningError(
                f"table {table.name} ({table.rows:,} rows x {table.dim} columns) has no "
                f"placement of sharding types {sorted(allowed)} on {topo.world_size} ranks"
            )
        grown.sort(key=lambda s: _finish(s, base, workload, topo).score())
        beam = grown[:width]
    order = {t.name: i for i, t in enumerate(workload.tables)}
    plans = []
    for state in beam:
        placements = tuple(sorted(state.placements, key=lambda p: order[p.table]))
        plan = _finish(_Partial(placements, state.costs, state.types), base, workload, topo)
        plans.append(_rebalance(plan, workload, topo, allowed))
    # every table table_wise: not where a table's rows FBGEMM's sharded kernels refuse
    # (candidates() offers such a table data_parallel alone: this plan bypassed it)
    sharded_kernels_take_all = all(t.dim % pl.MIN_COLUMN_BLOCK == 0 for t in workload.tables)
    if (
        "table_wise" in allowed
        and topo.world_size > 1
        and len(workload.tables) > 1
        and sharded_kernels_take_all
    ):
        runs = contiguous_table_wise(workload, topo)
        costs = RankCosts.zeros(topo.world_size)
        for p, t in zip(runs, workload.tables, strict=True):
            costs = costs + table_costs(p, t, workload, topo)
        plans.append(
            _finish(_Partial(runs, costs, frozenset({"table_wise"})), base, workload, topo)
        )
    plans.sort(key=lambda p: p.score())
    return plans


def check_constraints(workload: Workload, topo: Topology, allowed: frozenset[str]) -> None:
    """Refuse (PlanningError, saying why) a set of sharding types that cannot place
    ``workload`` on ``topo`` whatever the memory: unknown types, grid_shard on one node, a
    table a column split cannot cut, a table whose rows no sharded kernel takes."""
    unknown = allowed - set(SHARDING_TYPES)
    if unknown:
        raise PlanningError(
            f"unknown sharding type(s) {sorted(unknown)}; use {list(SHARDING_TYPES)}"
        )
    odd = [t for t in workload.tables if t.dim % pl.MIN_COLUMN_BLOCK]
    if odd and "data_parallel" not in allowed:  # a worker failed on FBGEMM's assertion
        raise PlanningError(
            f"table {odd[0].name} has rows {odd[0].dim} wide (embedding.dim, or a feature's "
            f"chunks x dim): FBGEMM's sharded kernels take rows a multiple of "
            f"{pl.MIN_COLUMN_BLOCK} wide; set embedding.dim to a multiple of "
            f"{pl.MIN_COLUMN_BLOCK}, or sharding.type to data_parallel or auto (which "
            "replicates such a table)"
        )
    if allowed == {"grid_shard"}:
        if topo.num_nodes < 2:
            raise PlanningError(
                "grid_shard needs at least 2 nodes; the topology has 1 (ray.num_nodes, or "
                "`dist-train plan --nodes`)"
            )
        for t in workload.tables:
            if not pl.column_blocks(t.dim, topo.num_nodes):
                raise PlanningError(
                    f"grid_shard cannot split table {t.name}: "
                    f"{_no_column_split(t.dim, topo.num_nodes)}"
                )
    if allowed == {"column_wise"}:
        if topo.world_size < 2:
            raise PlanningError(
                "column_wise needs at least 2 ranks to split a table's columns over; the "
                "topology has 1 (ray.num_workers)"
            )
        for t in workload.tables:
            if not pl.column_blocks(t.dim, topo.world_size):
                raise PlanningError(
                    f"column_wise cannot split table {t.name}: "
                    f"{_no_column_split(t.dim, topo.world_size)}"
                )


def _no_column_split(dim: int, most: int) -> str:
    """Why ``dim`` has no column split into at most ``most`` blocks (:func:`column_blocks`)."""
    return (
        f"dim {dim} (embedding.dim, or a chunk's share of it) has no split into 2, 4, 8, ... "
        f"(at most {most}) equal blocks whose width is a multiple of {pl.MIN_COLUMN_BLOCK} "
        "columns (FBGEMM's kernels' rows); set embedding.dim to such a width or "
        "sharding.type to another type"
    )


def gib(n: float) -> str:
    """Bytes in GiB to 2 decimals, below 1 GiB in MiB (0.08 GiB needed of 0.08 usable hid
    the difference)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def dense_does_not_fit(workload: Workload, topo: Topology) -> str | None:
    """Why the dense network and a step's working memory alone fill a rank of ``topo``
    (no table is then at fault), or None where they leave room."""
    base = dense_costs(workload, topo)
    usable = topo.usable_bytes_per_rank
    dense = float(base.memory.max())
    if dense <= usable:
        return None
    weights = dense_state_bytes(workload)
    activations = dense - weights - topo.step_overhead_bytes
    return (
        f"the dense network ({workload.dense_parameters:,} parameters: {gib(weights)} a "
        f"rank with their gradients and optimizer state) and a step's working memory "
        f"({gib(dense - weights)}, of which {gib(activations)} the network's activations "
        f"at {workload.batch_size_per_rank:,} examples a rank) are more than the "
        f"{gib(usable)} a rank has usable: "
        + (
            "give the model fewer or smaller layers (the model.* settings its model.kind "
            "reads: docs/models.md) or the ranks more memory"
            if weights > usable
            else "give the model fewer or smaller layers, or the ranks a smaller "
            "train.batch_size or more memory"
        )
    )


def explain_no_fit(
    workload: Workload,
    topo: Topology,
    allowed: frozenset[str],
    short: bool = False,
    offer_cache: bool = True,
) -> str:
    """Why no plan of ``allowed`` types fits ``topo``: the dense side, the first table that
    fits nowhere (its leanest placement's figures), or the tables together; ``short``: the
    table's placement and figures alone (``offer_cache``: whether the UVM caching kernel may
    be used, as in :func:`beam_search`)."""
    offer_cache = offer_cache and offers_cache(workload, topo)
    base = dense_costs(workload, topo)
    usable, usable_host = topo.usable_bytes_per_rank, topo.usable_host_bytes_per_rank
    dense_alone = dense_does_not_fit(workload, topo)
    if dense_alone is not None:
        return dense_alone
    for table in sorted(workload.tables, key=lambda t: -t.weight_bytes):
        options = candidates(table, workload, topo, base, allowed, offer_cache)
        needs = []
        for c in options:
            costs = table_costs(c, table, workload, topo) + base
            host = float(costs.host_memory.max())
            over = max(float(costs.memory.max()) / max(usable, 1), host / max(usable_host, 1))
            needs.append((over, float(costs.memory.max()), host, c.label))
        over, need, host, label = min(needs)
        if over <= 1:
            continue
        host_note = f" and {gib(host)} of host memory" if host > 0 else ""
        if short:
            return (
                f"does not fit: {label} needs {gib(need)}{host_note} on a rank, "
                f"{gib(usable)} usable"
                + (f" ({gib(usable_host)} of host memory)" if host > 0 else "")
            )
        state = workload.optimizer.bytes_for(table.rows, table.dim)
        host_usable = (
            f"; host memory for the UVM caching kernel: {gib(usable_host)} a rank"
            if offer_cache
            else ""
        )
        return (
            f"table {table.name} ({table.rows:,} rows x {table.dim} columns: "
            f"{gib(table.weight_bytes)} of weights + {gib(state)} of optimizer state) "
            f"fits nowhere: its leanest placement ({label}) needs {gib(need)}{host_note} on "
            f"its fullest rank, but each of the {topo.world_size} ranks has {gib(usable)} usable "
            f"({gib(topo.memory_per_rank_bytes)} less a {topo.reserve_fraction:.0%} reserve)"
            f"{host_usable}"
        )
    cache_limit = (
        f" (or, cached, more than the {uvm.LFU_MAX_SLOTS:,} rows FBGEMM's LFU cache holds "
        "in one TBE, a rank's tables of one sharding type: a lower sharding.cache_load_factor "
        "may fit)"
        if offer_cache
        else ""
    )
    return (
        f"the tables together need more than the {topo.world_size} ranks' "
        f"{gib(usable)} usable each{cache_limit}; add ranks or memory"
    )


def search(
    workload: Workload,
    topo: Topology,
    allowed: tuple[str, ...] | None = None,
    beam_width: int = BEAM_WIDTH,
) -> SearchResult:
    """The best plan over ``allowed`` sharding types, and the best plan of each type alone."""
    start = time.perf_counter()
    types = frozenset(allowed or SHARDING_TYPES)
    if topo.num_nodes < 2 and len(types) > 1:
        # On one node table_row_wise is row_wise, and grid needs two nodes.
        types = types - {"grid_shard", "table_row_wise"}
    check_constraints(workload, topo, types)
    plans = beam_search(workload, topo, types, beam_width)
    best = plans[0]
    if not best.fits:
        raise PlanningError(explain_no_fit(workload, topo, types))
    result = SearchResult(best, allowed=types)
    for t in SHARDING_TYPES:
        if t in ("grid_shard", "table_row_wise") and topo.num_nodes < 2 and t not in types:
            result.alternatives[t] = "needs at least 2 nodes (on one node, row_wise is it)"
            continue
        try:
            check_constraints(workload, topo, frozenset({t}))
            alt = beam_search(workload, topo, frozenset({t}), 1)[0]
        except PlanningError as e:
            result.alternatives[t] = str(e)
            continue
        result.alternatives[t] = (
            alt if alt.fits else explain_no_fit(workload, topo, frozenset({t}), short=True)
        )
        if t in types and alt.fits and alt.score() < result.best.score():
            # the beam over all types keeps a few partial plans a table: one type's own
            # search can end below them all (1 workload in about 300, a planner audit)
            result.best = alt
    result.seconds = time.perf_counter() - start
    return result

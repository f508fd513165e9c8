"""The plan report: a JSON-ready dict (``dist-train plan --json``) and its readable text."""

from __future__ import annotations

from typing import Any

import numpy as np

from planners.cost_model import placement_hit_rates, rows_asked, table_costs
from planners.groups import GroupPlan
from planners.planner import UVM_CACHING_KERNEL, UVM_KERNEL, CostModelPlanner
from planners.search import PlanEstimate, SearchResult, beam_search, gib
from planners.topology import Topology
from planners.types import (
    HIERARCHICAL,
    SHARDING_TYPES,
    PlanningError,
    TablePlacement,
    Workload,
    torchrec_type,
)

_PARTS = ("lookup", "framework", "dense", "comm", "latency", "cache")


def _placement_json(
    p: TablePlacement, workload: Workload, compute_kernel: str = "fused"
) -> dict[str, Any]:
    t = workload.table(p.table)
    kernel = "dense" if p.sharding_type == "data_parallel" else compute_kernel
    out: dict[str, Any] = {
        "table": p.table,
        "sharding_type": p.sharding_type,
        "torchrec_sharding_type": torchrec_type(p.sharding_type),  # what the TorchRec plan says
        "label": p.label,
        "compute_kernel": kernel,
        "num_rows": t.rows,
        "num_cols": t.dim,
        "ranks": p.ranks,
        "shard_offsets": [[s.row_offset, s.col_offset] for s in p.shards],
        "shard_sizes": [[s.rows, s.cols] for s in p.shards],
    }
    if p.cache_load_factor is not None:
        hits = placement_hit_rates(p, t, workload)
        out["compute_kernel"] = UVM_CACHING_KERNEL if p.cache_load_factor else UVM_KERNEL
        out["cache_load_factor"] = p.cache_load_factor
        out["cache_hit_rate"] = min(hits) if hits else 1.0  # the shard that misses most
        out["id_skew"] = workload.id_skew
    return out


def _step_line(step: float, parts: dict[str, float]) -> str:
    """The estimated step and the slowest rank's parts; where the ranks of a node share its
    cores, their CPU work queues on them, and the step is the node's (longer than the
    parts' sum)."""
    listed = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in parts.items() if k != "cache" or v > 0)
    own = sum(parts.values())
    if step <= own * (1 + 1e-9):
        return f"estimated step: {step * 1e3:.2f} ms on the slowest rank = {listed} ms"
    return (
        f"estimated step: {step * 1e3:.2f} ms, a node's: its ranks share its cores, and their "
        f"CPU work queues on them; the slowest rank's own {own * 1e3:.2f} ms = {listed} ms"
    )


def _breakdown(est: PlanEstimate) -> dict[str, float]:
    """Each part of the step on the slowest rank, in seconds."""
    r = int(np.argmax(est.costs.step_seconds))
    return {part: float(getattr(est.costs, part)[r]) for part in _PARTS}


def estimate_json(
    est: PlanEstimate, workload: Workload, compute_kernel: str = "fused"
) -> dict[str, Any]:
    out = {
        "label": est.label,
        "placements": [_placement_json(p, workload, compute_kernel) for p in est.placements],
        "per_rank_memory_bytes": [int(m) for m in est.costs.memory],
        "max_memory_bytes": est.max_memory_bytes,
        "estimated_step_seconds": est.step_seconds,
        "step_breakdown_seconds": _breakdown(est),
        "comm_bytes_per_step": {
            "max_rank": float(est.costs.comm_bytes.max()),
            "total": float(est.costs.comm_bytes.sum()),
        },
    }
    if est.costs.host_memory.any():
        out["per_rank_host_memory_bytes"] = [int(m) for m in est.costs.host_memory]
        out["max_host_memory_bytes"] = est.max_host_memory_bytes
    return out


def uvm_caching_json(
    est: PlanEstimate, workload: Workload, topo: Topology, allowed: frozenset[str]
) -> list[dict[str, Any]]:
    """For each table of ``est`` on the UVM caching kernel: its cache, estimated hit rate and
    per-step misses on the busiest holder, and why (the best plan without the kernel)."""
    cached = [p for p in est.placements if p.cached]
    if not cached:
        return []
    without = beam_search(workload, topo, allowed, offer_cache=False)[0]
    out = []
    for p in cached:
        table = workload.table(p.table)
        costs = table_costs(p, table, workload, topo)
        r = int(np.argmax(costs.cache))
        hits = placement_hit_rates(p, table, workload)
        busiest = next((i for i, s in enumerate(p.shards) if s.rank == r), 0)
        row_bytes = p.shards[busiest].cols * 4
        link = topo.host_to_device_bytes_per_second or float("inf")
        rows_read = (  # the busiest holder's lookups, as the cost model charges them
            rows_asked(p.sharding_type, table, workload)
            * topo.world_size
            * p.shards[busiest].rows
            / table.rows
        )
        misses = rows_read * (1.0 - hits[busiest])
        out.append(
            {
                "table": p.table,
                "compute_kernel": UVM_CACHING_KERNEL if p.cache_load_factor else UVM_KERNEL,
                "cache_load_factor": p.cache_load_factor,
                "id_skew": workload.id_skew,
                "hit_rate": hits[busiest],
                "min_hit_rate": min(hits),
                "misses_per_step": misses,
                "miss_bytes_per_step": misses * row_bytes,
                "host_link_seconds": misses * row_bytes / link,
                "cache_seconds": float(costs.cache[r]),
                "hbm_bytes": int(costs.memory[r]),
                "host_bytes": int(costs.host_memory[r]),
                "without_uvm_caching": {
                    "label": without.label,
                    "fits": without.fits,
                    "estimated_step_seconds": without.step_seconds,
                    "max_memory_bytes": without.max_memory_bytes,
                },
            }
        )
    return out


def _why(
    best: PlanEstimate, alternatives: dict[str, PlanEstimate | str], allowed: frozenset[str]
) -> str:
    others = [a for t, a in alternatives.items() if isinstance(a, PlanEstimate) and t in allowed]
    others = [a for a in others if a.label != best.label]
    if not others:
        if len(allowed) == 1:
            return "the job's sharding.type allows only this type"
        return "it is the only placement that fits"
    runner = min(others, key=lambda a: a.score())
    mine, theirs = _breakdown(best), _breakdown(runner)
    part = max(_PARTS, key=lambda k: theirs[k] - mine[k])
    slower = runner.step_seconds / best.step_seconds
    return (
        f"the runner-up, {runner.label}, is estimated {slower:.2f}x slower, mostly in {part} "
        f"({theirs[part] * 1e3:.2f} ms vs {mine[part] * 1e3:.2f} ms on the slowest rank)"
    )


def _groups_json(groups: dict[int, GroupPlan | str]) -> list[dict[str, Any]]:
    return [
        {"group_size": g, "reason": gp}
        if isinstance(gp, str)
        else {
            "group_size": g,
            "label": gp.estimate.label,
            "estimated_step_seconds": gp.step_seconds,
            "max_memory_bytes": gp.estimate.max_memory_bytes,
        }
        for g, gp in groups.items()
    ]


def build_report(
    planner: CostModelPlanner, torchrec: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything ``dist-train plan --json`` writes (see docs/planner.md for the fields)."""
    chosen = planner.choice()
    try:
        result: SearchResult | None = planner.search()
    except PlanningError as err:  # a 2D plan was chosen (choice() raised otherwise)
        result, no_1d = None, str(err)
    workload, topo = planner.workload, planner.topology
    best = chosen.estimate
    g = chosen.group_size
    passed = chosen.passed_over
    if passed is not None and planner.eval_batch_size is not None:
        need = planner.peak_memory_at(passed, planner.eval_batch_size)
        why = (
            f"the fastest plan, {passed.label} (estimated {passed.step_seconds * 1e3:.2f} ms), "
            f"has no room for evaluation's batch (train.eval_batch_size="
            f"{planner.eval_batch_size:,}: {gib(need)} on a rank, "
            f"{gib(passed.estimate.usable_bytes)} usable); this is the fastest that has"
        )
    elif result is None:
        why = (
            f"no 1D plan fits ({no_1d}); groups of {g} do, each holding the tables on its "
            f"{g} rank(s)"
        )
    elif chosen.is_2d:
        slower = result.best.step_seconds / best.step_seconds
        why = (
            f"the best 1D plan, {result.best.label}, is estimated {slower:.2f}x slower; "
            f"groups of {g} keep each group's step at the cost of {g} rank(s)"
        )
    else:
        why = _why(result.best, result.alternatives, result.allowed)
        if topo.num_nodes < 2 and result.allowed <= HIERARCHICAL:  # asked for on one node
            why += " (on one node it places the rows as row_wise does)"
    allowed = frozenset(planner.allowed or SHARDING_TYPES) if result is None else result.allowed
    caching = uvm_caching_json(best, workload, chosen.topology, allowed)
    for c in caching:
        alt = c["without_uvm_caching"]
        why += f"; {c['table']} runs on {c['compute_kernel']} because " + (
            "no plan fits with every table in HBM"
            if not alt["fits"]
            else f"the best plan in HBM alone, {alt['label']}, is estimated "
            f"{alt['estimated_step_seconds'] * 1e3:.2f} ms"
        )
    report: dict[str, Any] = {
        **estimate_json(best, workload, planner.compute_kernel),
        "label": chosen.label,
        "group_size": chosen.group_size,
        "num_replicas": topo.world_size // chosen.group_size,
        "sync_every": planner.sync_every,
        "plan_seconds": 0.0 if result is None else result.seconds,
        "why": why,
        "tables": {t.name: {"num_rows": t.rows, "num_cols": t.dim} for t in workload.tables},
        "topology": {
            "num_nodes": topo.num_nodes,
            "ranks_per_node": topo.ranks_per_node,
            "world_size": topo.world_size,
            "device_type": topo.device_type,
            "memory_per_rank_bytes": topo.memory_per_rank_bytes,
            "usable_bytes_per_rank": topo.usable_bytes_per_rank,
            "cores_per_node": topo.cores_per_node,
            "source": topo.source,
        },
        "workload": {
            "batch_size_per_rank": workload.batch_size_per_rank,
            "optimizer": workload.optimizer.name,
            "dense_parameters": workload.dense_parameters,
            "ids_per_sample": {t.name: t.ids_per_sample for t in workload.tables},
        },
        "alternatives": [
            {"sharding_type": k, "reason": v}
            if isinstance(v, str)
            else {
                "sharding_type": k,
                "label": v.label,
                "estimated_step_seconds": v.step_seconds,
                "max_memory_bytes": v.max_memory_bytes,
                "allowed": k in allowed,
                "empty_cpu_kernel": v.empty_kernel,
            }
            for k, v in ({} if result is None else result.alternatives).items()
        ],
        "groups": _groups_json(planner.group_plans()),
        "uvm_caching": caching,
    }
    if topo.host_memory_per_rank_bytes:
        report["topology"]["host_memory_per_rank_bytes"] = topo.host_memory_per_rank_bytes
        report["topology"]["usable_host_bytes_per_rank"] = topo.usable_host_bytes_per_rank
        report["topology"]["host_to_device_bytes_per_second"] = topo.host_to_device_bytes_per_second
    report["workload"]["id_skew"] = workload.id_skew
    report["workload"]["cache_load_factor"] = workload.cache_load_factor
    if torchrec is not None:
        report["torchrec"] = torchrec
    return report


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _memory_line(per_rank: list[int]) -> str:
    m = np.asarray(per_rank)
    if len(m) <= 8:
        return ", ".join(f"r{r}: {_size(x)}" for r, x in enumerate(m))
    return (
        f"min {_size(m.min())}, median {_size(float(np.median(m)))}, max {_size(m.max())} "
        f"(rank {int(m.argmax())})"
    )


def _placement_line(p: dict[str, Any]) -> str:
    ranks = p["ranks"]
    shown = ranks if len(ranks) <= 8 else f"{ranks[:4]}..{ranks[-1]} ({len(ranks)} ranks)"
    sizes = {tuple(s) for s in p["shard_sizes"]}
    shapes = (
        f"shards {p['shard_sizes'][0][0]:,} x {p['shard_sizes'][0][1]}"
        if len(sizes) == 1
        else f"{len(sizes)} shard shapes, rows {min(s[0] for s in sizes):,}.."
        f"{max(s[0] for s in sizes):,}"
    )
    kernel = p.get("compute_kernel")
    torchrec = p.get("torchrec_sharding_type", p["sharding_type"])
    return (
        f"  {p['table']} ({p['num_rows']:,} x {p['num_cols']}): {p['label']} on ranks {shown}, "
        f"{shapes}"
        + (f", kernel {kernel}" if kernel else "")
        + (
            f" (TorchRec plan: {torchrec}; ids go to the rows' holders, one vector per id "
            "comes back, each rank pools its own bags)"
            if torchrec != p["sharding_type"]
            else ""
        )
    )


def _caching_line(c: dict[str, Any]) -> str:
    return (
        f"uvm caching: {c['table']} on {c['compute_kernel']}, HBM caches "
        f"{c['cache_load_factor']:.0%} of each shard's rows; estimated hit rate "
        f"{c['hit_rate']:.1%} (ids Zipf s={c['id_skew']:g} over the table's rows); the busiest "
        f"rank misses {c['misses_per_step']:,.0f} rows a step, {_size(c['miss_bytes_per_step'])} "
        f"over the host link ({c['host_link_seconds'] * 1e3:.2f} ms; cache work in all "
        f"{c['cache_seconds'] * 1e3:.2f} ms); {_size(c['hbm_bytes'])} of HBM and "
        f"{_size(c['host_bytes'])} of host memory on that rank"
    )


def format_report(report: dict[str, Any]) -> str:
    """The readable form of :func:`build_report`'s dict."""
    topo = report["topology"]
    bd = report["step_breakdown_seconds"]
    lines = [
        f"plan for {topo['num_nodes']} node(s) x {topo['ranks_per_node']} {topo['device_type']} "
        f"rank(s), {_size(topo['memory_per_rank_bytes'])} each "
        f"({_size(topo['usable_bytes_per_rank'])} usable); speeds: {topo['source']}",
        f"chosen: {report['label']}  (searched in {report['plan_seconds']:.2f} s)",
        *(
            [
                f"2D: {report['num_replicas']} replicas of {report['group_size']} rank(s), "
                f"merged every {report['sync_every']} step(s); figures below are per "
                "rank of one group"
            ]
            if report.get("group_size", topo["world_size"]) < topo["world_size"]
            else []
        ),
        *(_placement_line(p) for p in report["placements"]),
        f"why: {report['why']}",
        *(_caching_line(c) for c in report.get("uvm_caching", [])),
        *(f"note: {n}" for n in report.get("notes", [])),
        _step_line(report["estimated_step_seconds"], bd),
        f"communication: {_size(report['comm_bytes_per_step']['max_rank'])} per step on the "
        f"busiest rank, {_size(report['comm_bytes_per_step']['total'])} in all",
        f"memory per rank: {_memory_line(report['per_rank_memory_bytes'])}",
        *(
            [f"host memory per rank: {_memory_line(report['per_rank_host_memory_bytes'])}"]
            if "per_rank_host_memory_bytes" in report
            else []
        ),
        "options (every table with one type):"
        + ("" if report["alternatives"] else " none: no 1D plan fits"),
    ]
    width = max((len(a["sharding_type"]) for a in report["alternatives"]), default=0)
    for alt in sorted(
        report["alternatives"], key=lambda a: a.get("estimated_step_seconds", float("inf"))
    ):
        if "reason" in alt:
            lines.append(f"  {alt['sharding_type']:<{width}} {alt['reason']}")
        else:
            lines.append(
                f"  {alt['sharding_type']:<{width}} {alt['estimated_step_seconds'] * 1e3:9.2f} ms  "
                f"max {_size(alt['max_memory_bytes']):>10}  {alt['label']}"
                + ("" if alt.get("allowed", True) else "  (left out for this job)")
                + (
                    "  (refused on CPU ranks: a rank would hold none of a table's rows)"
                    if alt.get("empty_cpu_kernel")
                    else ""
                )
            )
    if report.get("groups"):
        lines.append("group sizes (2D: shard inside groups, replicate them):")
        for grp in report["groups"]:
            if "reason" in grp:
                lines.append(f"  {grp['group_size']:>6}  {grp['reason']}")
            else:
                lines.append(
                    f"  {grp['group_size']:>6}  {grp['estimated_step_seconds'] * 1e3:9.2f} ms  "
                    f"max {_size(grp['max_memory_bytes']):>10}  {grp['label']}"
                )
    scaling = report.get("weak_scaling")
    if scaling:
        lines.append(
            f"weak scaling (same {report['workload']['batch_size_per_rank']:,} examples per "
            "rank, the plan chosen at each size; in brackets, the step over the first size's):"
        )
        first = next((r["estimated_step_seconds"] for r in scaling if "error" not in r), 1.0)
        for row in scaling:
            if "error" in row:
                lines.append(f"  {row['num_nodes']:>4} node(s): {row['error']}")
                continue
            lines.append(
                f"  {row['num_nodes']:>4} node(s) x {row['ranks_per_node']}: "
                f"{row['estimated_step_seconds'] * 1e3:9.2f} ms "
                f"({row['estimated_step_seconds'] / first:5.2f}x)  "
                f"{row['label']}"
            )
    tr = report.get("torchrec")
    if tr is not None:
        if "error" in tr:
            lines.append(f"TorchRec's planner: cannot plan: {tr['error']}")
        else:
            types = sorted({p["label"] for p in tr["placements"]})
            lines.append(
                f"TorchRec's planner: {', '.join(types)}; its estimate "
                f"{tr['estimated_step_seconds'] * 1e3:.2f} ms, max "
                f"{_size(max(tr['per_rank_memory_bytes']))} per rank; ours for its plan "
                f"{tr['ours']['estimated_step_seconds'] * 1e3:.2f} ms, max "
                f"{_size(tr['ours']['max_memory_bytes'])}"
                + ("" if tr["ours"]["fits"] else " (does not fit by our memory model)")
                + f" (planned in {tr['plan_seconds']:.2f} s)"
            )
    return "\n".join(lines)

"""``dist-train plan``: plan a job for any cluster shape without hardware, with a report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.config.schema import JobConfig
from dist_train.logs import verbosity
from dist_train.storage import replace_file
from dist_train.train.sharding import (
    job_fused_params,
    make_sharder,
    optimizer_notes,
    planner_for_config,
    refuse_an_evaluation_past_memory,
    refuse_group_above,
    refuse_what_cpu_kernels_refuse,
    simulated_node_cores,
)
from planners.report import build_report, estimate_json, format_report
from planners.search import estimate_plan
from planners.topology import TopologyError
from planners.torchrec_baseline import placements_of, torchrec_plan
from planners.types import PlanningError


def _torchrec_side(cfg: JobConfig, model: Any, planner: Any, device_type: str) -> dict[str, Any]:
    params = job_fused_params(cfg, device_type)
    try:
        plan, figures = torchrec_plan(model, planner.workload, planner.topology, params)
    except Exception as err:  # noqa: BLE001 - any failure of TorchRec's planner is reported
        return {"error": f"{type(err).__name__}: {err}".strip()[:2000]}
    ours = estimate_plan(placements_of(plan, planner.topology), planner.workload, planner.topology)
    side = estimate_json(ours, planner.workload)
    return {
        "placements": side["placements"],
        "per_rank_memory_bytes": figures["per_rank_memory_bytes"],
        "estimated_step_seconds": figures["estimated_step_seconds"],
        "plan_seconds": figures["plan_seconds"],
        "ours": {  # our cost model applied to TorchRec's plan, for a like-for-like comparison
            "estimated_step_seconds": side["estimated_step_seconds"],
            "max_memory_bytes": side["max_memory_bytes"],
            "per_rank_memory_bytes": side["per_rank_memory_bytes"],
            "fits": ours.fits,
        },
    }


def dry_run(
    cfg: JobConfig,
    num_nodes: int | None = None,
    ranks_per_node: int | None = None,
    device_type: str = "cpu",
    with_torchrec: bool = True,
    cores_per_node: int | None = None,
    weak_scaling: bool = True,
) -> dict[str, Any]:
    """Plan ``cfg`` for ``num_nodes`` x ``ranks_per_node`` ranks (default: the job's own)."""
    job_fused_params(cfg, device_type)  # refuses what training refuses, TorchRec's side or not
    job_nodes = cfg.ray.num_nodes or 1
    job_per_node = max(1, cfg.ray.num_workers // job_nodes)
    nodes = job_nodes if num_nodes is None else num_nodes
    per_node = job_per_node if ranks_per_node is None else ranks_per_node
    cores = cores_per_node
    own_shape = (nodes, per_node) == (job_nodes, job_per_node)
    if cores is None and own_shape and cfg.launcher == "processes" and device_type == "cpu":
        # the job's simulated nodes share this machine, as training plans them
        # (plan_for_config): the estimate used the topology's cores for each
        cores = simulated_node_cores(nodes)
    refuse_group_above(cfg, nodes * per_node, f"the {nodes * per_node} ranks planned for")
    planner, model = planner_for_config(cfg, nodes * per_node, per_node, device_type, cores)
    side = _torchrec_side(cfg, model, planner, device_type) if with_torchrec else None
    report = build_report(planner, side)
    chosen = planner.choice()  # refused where training refuses it (plan_job)
    refuse_what_cpu_kernels_refuse(chosen.placements, make_sharder(cfg, device_type), device_type)
    refuse_an_evaluation_past_memory(cfg, planner, chosen)
    report["notes"] = optimizer_notes(cfg, {p.sharding_type for p in chosen.placements})
    if weak_scaling:
        # the row of the shape planned above with its cores (simulated nodes' too): it said
        # another step than the plan's (a helper's audit)
        report["weak_scaling"] = weak_scaling_table(
            cfg, per_node, device_type, cores_per_node, {nodes: cores}
        )
    return report


WEAK_SCALING_NODES = (1, 8, 64, 512)


SLOW_PLAN_S = 5.0  # a size planned slower than this: the next ones are said as they start


def weak_scaling_table(
    cfg: JobConfig,
    ranks_per_node: int,
    device_type: str,
    cores_per_node: int | None,
    cores_at: dict[int, int | None] | None = None,
) -> list[dict[str, Any]]:
    """The chosen plan's estimated step at 1, 8, 64 and 512 nodes, same per-rank batch;
    ``cores_at``: a node count's own cores per node, where not ``cores_per_node``."""
    rows = []
    slow = False
    sharder = make_sharder(cfg, device_type)  # the job's and device's: one for every size
    for nodes in WEAK_SCALING_NODES:
        if slow and verbosity() != "quiet":  # thousands of tables' shards take minutes at
            # 512 nodes: said, on stderr (progress: -q leaves it out)
            print(
                f"plan: weak scaling at {nodes} node(s) x {ranks_per_node} (--no-weak-scaling "
                "leaves the table out) ...",
                file=sys.stderr,
                flush=True,
            )
        started = time.perf_counter()
        try:  # a job may not plan at every size (a group_size below the world size, say)
            refuse_group_above(cfg, nodes * ranks_per_node)
            cores = (cores_at or {}).get(nodes, cores_per_node)
            planner, _ = planner_for_config(
                cfg, nodes * ranks_per_node, ranks_per_node, device_type, cores
            )
            chosen = planner.choice()
            refuse_what_cpu_kernels_refuse(chosen.placements, sharder, device_type)
            refuse_an_evaluation_past_memory(cfg, planner, chosen)
        except (PlanningError, TopologyError) as err:  # past the planner's ranks, say
            rows.append({"num_nodes": nodes, "ranks_per_node": ranks_per_node, "error": str(err)})
            continue
        slow = slow or time.perf_counter() - started > SLOW_PLAN_S
        rows.append(
            {
                "num_nodes": nodes,
                "ranks_per_node": ranks_per_node,
                "group_size": chosen.group_size,
                "label": chosen.label,
                "estimated_step_seconds": chosen.step_seconds,
            }
        )
    return rows


def write_report(report: dict[str, Any], json_path: str | None) -> str:
    """The readable report; also the JSON at ``json_path`` if given."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        replace_file(Path(json_path), json.dumps(report, indent=1) + "\n")
    return format_report(report)

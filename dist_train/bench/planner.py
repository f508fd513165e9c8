"""``dist-train bench planner``: our plans vs TorchRec's, and the cost model vs the clock.

The job's topology file is used if it has one; otherwise the bench calibrates this machine
first (``dist-train calibrate``), so estimates and measurements share the run's conditions.

1. Ours vs TorchRec: for 2 and 4 CPU ranks, the job's plan (our planner) and TorchRec's
   ``EmbeddingShardingPlanner`` plan (stock sharder, default constants) each train the same
   fixed batches in real gloo processes. Printed: median step time (slowest rank) and max
   per-rank memory held by embedding weights + optimizer state, as TorchRec/ours ratios.
2. Fidelity: every sharding type the planner can emit (2 ranks; table_row_wise and grid_shard
   on 2 simulated nodes x 2 ranks) is run the same way and its estimated step time is set
   against the measured one; the planner's ranking of the types is compared with the measured
   ranking (Kendall's tau and whether both pick the same fastest type).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dist_train.config import JobConfig, apply_overrides, parse_config
from dist_train.data.synthetic import generate
from dist_train.launchers.processes import run_processes
from dist_train.train.sharding import JobPlan, plan_job, planner_for_config
from dist_train.train.topology import discover_topology
from dist_train.train.trainer import Trainer
from planners.calibrate import calibrate
from planners.sharders import embedding_kernel, fused_params
from planners.topology import save_topology
from planners.torchrec_baseline import estimate, placements_of, torchrec_plan

WARMUP_STEPS = 3
TIMED_STEPS = 12


def _state_bytes(trainer: Trainer) -> int:
    """Bytes this rank holds in embedding weights and (fused) optimizer state."""
    total = 0
    for key, value in trainer.model.state_dict().items():
        if not key.startswith("sparse_arch."):
            continue
        if hasattr(value, "local_shards"):
            total += sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
        elif isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    for state in trainer.optimizer.state_dict()["state"].values():
        for v in state.values():
            if hasattr(v, "local_shards"):
                total += sum(s.tensor.numel() * s.tensor.element_size() for s in v.local_shards())
            elif isinstance(v, torch.Tensor) and v.dim() > 0:
                total += v.numel() * v.element_size()
    return total


def time_plan(
    cfg_raw: dict[str, Any], job_plan: JobPlan, data_path: str, steps: int
) -> dict[str, Any]:
    """Worker: train on fixed batches with ``job_plan``; step times (slowest rank) and bytes."""
    cfg = parse_config(cfg_raw)
    rank, world = dist.get_rank(), dist.get_world_size()
    discover_topology(f"node-{rank // job_plan.local_world_size}")
    trainer = Trainer.build(cfg, job_plan, local_world_size=job_plan.local_world_size)
    builder = trainer.batch_builder()
    table = pq.read_table(data_path, columns=builder.columns)
    batch = cfg.train.batch_size
    batches = [
        builder.build(table.slice(((s * world + rank) * batch) % (table.num_rows - batch), batch))
        for s in range(steps)
    ]
    times = []
    for b in batches:
        dist.barrier()
        start = time.perf_counter()
        trainer.train_step(b)
        dist.barrier()  # the step ends when the slowest rank is done
        times.append(time.perf_counter() - start)
    return {"step_seconds": times, "state_bytes": _state_bytes(trainer)}


def _measure(cfg: JobConfig, job_plan: JobPlan, data: str) -> dict[str, float]:
    args = (cfg.model_dump(mode="json"), job_plan, data, WARMUP_STEPS + TIMED_STEPS)
    out = run_processes(time_plan, args, world_size=job_plan.world_size)
    return {
        "step_seconds": statistics.median(out[0]["step_seconds"][WARMUP_STEPS:]),
        "max_state_bytes": max(r["state_bytes"] for r in out),
    }


def _torchrec_job_plan(cfg: JobConfig, world: int) -> tuple[JobPlan, float]:
    planner, model = planner_for_config(cfg, world, world)
    opt = cfg.embedding.optimizer
    params = (
        fused_params(opt.type, opt.learning_rate, opt.eps, opt.weight_decay)
        if embedding_kernel(opt.type, "cpu") == "fused"
        else None
    )
    plan, _ = torchrec_plan(model, planner.workload, planner.topology, params)
    ours = estimate(placements_of(plan, planner.topology), planner.workload, planner.topology)
    return JobPlan(plan, world, world, "cpu", ours.step_seconds), ours.step_seconds


def _kendall_tau(a: list[float], b: list[float]) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    score = sum(
        ((a[i] - a[j]) * (b[i] - b[j]) > 0) - ((a[i] - a[j]) * (b[i] - b[j]) < 0) for i, j in pairs
    )
    return score / max(len(pairs), 1)


def run_planner_bench(cfg: JobConfig, json_out: str | None = None) -> dict[str, Any]:
    """Run both parts; print and return the figures."""
    rows_needed = (WARMUP_STEPS + TIMED_STEPS) * 4 * cfg.train.batch_size + cfg.train.batch_size
    synth = cfg.data.synthetic.model_copy(
        update={"num_train_rows": rows_needed, "num_test_rows": 1024}
    )
    data = str(generate(synth, cfg.run_dir / "bench-planner-data", progress=False).train_dir)
    result: dict[str, Any] = {"versus_torchrec": [], "fidelity": []}
    if cfg.sharding.topology is None:  # measure this machine now, under this run's conditions
        topo_file = cfg.run_dir / "bench-planner-topology.json"
        print(f"[bench] calibrating this machine -> {topo_file}", flush=True)
        save_topology(calibrate(ranks=2, threads=int(cfg.ray.cpus_per_worker)), topo_file)
        cfg = parse_config(
            apply_overrides(cfg.model_dump(mode="json"), [f"sharding.topology={topo_file}"]),
            "bench planner",
        )

    print("[bench] ours vs TorchRec's default plan (same model, same batches)", flush=True)
    for world in (2, 4):
        ours_plan = plan_job(cfg, world, world)
        tr_plan, tr_estimate = _torchrec_job_plan(cfg, world)
        ours, theirs = _measure(cfg, ours_plan, data), _measure(cfg, tr_plan, data)
        row = {
            "ranks": world,
            "ours": ours_plan.label,
            "torchrec": tr_plan.label,
            "ours_step_seconds": ours["step_seconds"],
            "torchrec_step_seconds": theirs["step_seconds"],
            "ours_estimated_step_seconds": ours_plan.estimated_step_seconds,
            "torchrec_estimated_step_seconds_by_our_model": tr_estimate,
            "step_time_ratio_torchrec_over_ours": theirs["step_seconds"] / ours["step_seconds"],
            "ours_max_memory_bytes": ours["max_state_bytes"],
            "torchrec_max_memory_bytes": theirs["max_state_bytes"],
            "memory_ratio_torchrec_over_ours": theirs["max_state_bytes"] / ours["max_state_bytes"],
        }
        result["versus_torchrec"].append(row)
        print(
            f"  {world} ranks: ours {row['ours']} {ours['step_seconds'] * 1e3:.1f} ms, "
            f"{ours['max_state_bytes'] / 2**20:.1f} MiB | TorchRec {row['torchrec']} "
            f"{theirs['step_seconds'] * 1e3:.1f} ms, {theirs['max_state_bytes'] / 2**20:.1f} MiB"
            f" | TorchRec/ours: step x{row['step_time_ratio_torchrec_over_ours']:.2f}, "
            f"memory x{row['memory_ratio_torchrec_over_ours']:.2f}",
            flush=True,
        )

    print("[bench] fidelity: estimated vs measured step time per sharding type", flush=True)
    cases = [(t, 2, 2) for t in ("row_wise", "column_wise", "table_wise", "data_parallel")]
    cases += [(t, 4, 2) for t in ("row_wise", "column_wise", "table_row_wise", "grid_shard")]
    for sharding_type, world, per_node in cases:
        typed = parse_config(
            apply_overrides(cfg.model_dump(mode="json"), [f"sharding.type={sharding_type}"]),
            f"bench {sharding_type}",
        )
        plan = plan_job(typed, world, per_node)
        measured = _measure(typed, plan, data)
        row = {
            "sharding_type": sharding_type,
            "ranks": world,
            "ranks_per_node": per_node,
            "estimated_step_seconds": plan.estimated_step_seconds,
            "measured_step_seconds": measured["step_seconds"],
        }
        result["fidelity"].append(row)
        print(
            f"  {sharding_type:<15} {world} ranks ({per_node}/node): estimated "
            f"{plan.estimated_step_seconds * 1e3:7.1f} ms, measured "
            f"{measured['step_seconds'] * 1e3:7.1f} ms",
            flush=True,
        )
    for world in (2, 4):
        rows = [r for r in result["fidelity"] if r["ranks"] == world]
        est = [r["estimated_step_seconds"] for r in rows]
        meas = [r["measured_step_seconds"] for r in rows]
        tau = _kendall_tau(est, meas)
        same_best = est.index(min(est)) == meas.index(min(meas))
        result[f"ranking_kendall_tau_{world}_ranks"] = tau
        result[f"same_fastest_type_{world}_ranks"] = same_best
        print(f"  {world} ranks: Kendall tau {tau:+.2f}, same fastest type: {same_best}")
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result

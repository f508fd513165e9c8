"""``dist-train bench planner``: our plans vs TorchRec's, and the cost model vs the clock.

The job's topology file is used if it has one; otherwise the bench calibrates this machine
first (``dist-train calibrate``), so estimates and measurements share the run's conditions.
For each shape (2 ranks on one node; 4 ranks as 2 simulated nodes x 2) every plan below is
built in the same gloo processes and timed in interleaved rounds on the same fixed batches, so
a shared machine's slow spells hit all plans alike; each plan's figure is its median step
(slowest rank).

1. Ours vs TorchRec: the job's plan (our planner) and TorchRec's ``EmbeddingShardingPlanner``
   plan (stock sharder, default constants): step time and max per-rank memory held by
   embedding weights + optimizer state, as TorchRec/ours ratios; and our plan's measured peak
   memory per rank (RSS, less the same process before it built any table) beside the plan's
   estimate.
2. Fidelity: every sharding type the planner can emit at that shape, and 2D plans (groups of
   each size that tiles the shape), its estimated step time against the measured one; the
   planner's ranking of the types against the measured ranking
   (Kendall's tau, and whether both pick the same fastest type), and whether the job's plan is
   the measured fastest among the types ``sharding.type: auto`` may use for this job.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dist_train.bench import rank_batches, synthetic_train_data, write_json
from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.embedding.layout import build_layout
from dist_train.launchers.processes import run_processes
from dist_train.models.dot_interaction import pairwise_dots
from dist_train.train.rank_layout import discover_rank_layout
from dist_train.train.sharding import (
    JobPlan,
    allowed_types,
    job_fused_params,
    plan_job,
    planner_for_config,
    simulated_node_cores,
)
from dist_train.train.shared_tables import read_shared_tables_as_one_feature
from dist_train.train.trainer import Trainer, make_batch_builder
from dist_train.train.unpooled_row_wise import enable_unpooled_row_wise
from planners.calibrate import calibrate
from planners.groups import group_sizes
from planners.search import estimate_plan
from planners.topology import save_topology
from planners.torchrec_baseline import placements_of, torchrec_plan

WARMUP_STEPS = 2
ROUNDS = 10
STEPS_PER_ROUND = 3
SHAPES = ((2, 2), (4, 2))  # (ranks, ranks per node)


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


def time_plans(
    cfg_raw: dict[str, Any], plans: list[JobPlan], data_path: str, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Worker: build a trainer per plan, then time them round-robin on the same batches."""
    cfg = parse_config(cfg_raw)
    discover_rank_layout(f"node-{dist.get_rank() // plans[0].local_world_size}")
    trainers = [Trainer.build(cfg, p, local_world_size=p.local_world_size) for p in plans]
    builder = trainers[0].batch_builder()
    table = pq.read_table(data_path, columns=builder.columns)
    batch = cfg.train.batch_size
    steps = WARMUP_STEPS + rounds * STEPS_PER_ROUND
    batches = rank_batches(builder, table, batch, steps)
    times: list[list[float]] = [[] for _ in plans]
    for trainer in trainers:
        for b in batches[:WARMUP_STEPS]:
            trainer.train_step(b)
    for r in range(rounds):
        for i, trainer in enumerate(trainers):
            for s in range(STEPS_PER_ROUND):
                b = batches[WARMUP_STEPS + r * STEPS_PER_ROUND + s]
                dist.barrier()
                start = time.perf_counter()
                trainer.train_step(b)
                dist.barrier()  # the step ends when the slowest rank is done
                times[i].append(time.perf_counter() - start)
    return {
        "step_seconds": [statistics.median(t) for t in times],
        "state_bytes": [_state_bytes(t) for t in trainers],
    }


def rss_bytes(field: str) -> int:
    """``VmRSS`` (now), ``VmHWM`` (peak since the last reset) or ``RssFile`` (file-backed
    pages now) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


@dataclass(frozen=True)
class MemoryMark:
    """This process's resident bytes, and their file-backed part, when a measurement began."""

    rss: int
    file: int

    @classmethod
    def now(cls) -> MemoryMark:
        """Begin a measurement: the peak starts again from what is resident now."""
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return cls(rss_bytes("VmRSS"), rss_bytes("RssFile"))

    def peak_growth(self) -> int:
        """The peak resident bytes since the mark, less those at the mark and less the
        file-backed pages mapped since: library code a system's first calls fault in, which
        other processes share (a rank forked from the rank server has none of its parent's
        mapped; about 26-30 MiB a system, 1 rank, the default job)."""
        mapped = max(0, rss_bytes("RssFile") - self.file)
        return rss_bytes("VmHWM") - self.rss - mapped


def peak_memory(cfg_raw: dict[str, Any], plan: JobPlan, data_path: str) -> int:
    """Worker: this rank's peak RSS over building ``plan``'s trainer and a few steps, less
    the peak before (imports, process group, the batches: the process with no table)."""
    cfg = parse_config(cfg_raw)
    rank, world = dist.get_rank(), dist.get_world_size()
    discover_rank_layout(f"node-{rank // plan.local_world_size}")
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    builder = make_batch_builder(cfg, layout)
    table = pq.read_table(data_path, columns=builder.columns)
    batch = cfg.train.batch_size
    batches = [builder.build(table.slice((s * world + rank) * batch, batch)) for s in range(3)]
    del table
    dist.barrier()
    mark = MemoryMark.now()  # reading the data peaked higher than training may
    trainer = Trainer.build(cfg, plan, local_world_size=plan.local_world_size)
    for b in batches:
        trainer.train_step(b)
    return mark.peak_growth()


def measure_memory(cfg: JobConfig, plan: JobPlan, data: str) -> int:
    """The largest rank's measured peak memory for ``plan`` (fresh processes: peaks only grow)."""
    args = (cfg.model_dump(mode="json"), plan, data)
    return max(run_processes(peak_memory, args, world_size=plan.world_size))


def _measure(
    cfg: JobConfig, plans: list[JobPlan], data: str, rounds: int
) -> list[dict[str, float]]:
    args = (cfg.model_dump(mode="json"), plans, data, rounds)
    out = run_processes(time_plans, args, world_size=plans[0].world_size)
    return [
        {
            "step_seconds": max(r["step_seconds"][i] for r in out),  # the slowest rank's
            "max_state_bytes": max(r["state_bytes"][i] for r in out),
        }
        for i in range(len(plans))
    ]


def torchrec_job_plan(
    cfg: JobConfig, world: int, per_node: int, cores: int
) -> tuple[JobPlan, float]:
    planner, model = planner_for_config(cfg, world, per_node, cores_per_node=cores)
    params = job_fused_params(cfg, "cpu")
    plan, _ = torchrec_plan(model, planner.workload, planner.topology, params)
    ours = estimate_plan(placements_of(plan, planner.topology), planner.workload, planner.topology)
    return JobPlan(plan, world, per_node, "cpu", ours.step_seconds), ours.step_seconds


def _plan_key(plan: JobPlan) -> tuple[str, int, tuple[str, ...]]:
    """Plans that run the same: the TorchRec plan, the group it is made for and the tables
    whose lookups come back unpooled."""
    return str(plan.sharding_plan), plan.sharding_group_size, plan.unpooled_tables


def _kendall_tau(a: list[float], b: list[float]) -> float:
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    score = sum(
        ((a[i] - a[j]) * (b[i] - b[j]) > 0) - ((a[i] - a[j]) * (b[i] - b[j]) < 0) for i, j in pairs
    )
    return score / max(len(pairs), 1)


def run_memory_bench(cfg: JobConfig, data: str) -> list[dict[str, Any]]:
    """The job's plan at each shape: measured peak memory per rank against the estimate."""
    rows = []
    for world, per_node in SHAPES:
        plan = plan_job(
            cfg, world, per_node, cores_per_node=simulated_node_cores(world // per_node)
        )
        measured = measure_memory(cfg, plan, data)
        rows.append(
            {
                "ranks": world,
                "ranks_per_node": per_node,
                "plan": plan.label,
                "estimated_peak_memory_bytes": plan.estimated_memory_bytes,
                "measured_peak_memory_bytes": measured,
                "measured_over_estimate": measured / max(plan.estimated_memory_bytes, 1),
            }
        )
        print(
            f"[bench] {world} ranks ({per_node} per node), {plan.label}: peak memory per rank "
            f"{measured / 2**20:.1f} MiB measured (RSS less the process with no table), "
            f"{plan.estimated_memory_bytes / 2**20:.1f} MiB estimated: "
            f"x{rows[-1]['measured_over_estimate']:.2f}",
            flush=True,
        )
    return rows


def run_planner_bench(
    cfg: JobConfig, json_out: str | None = None, memory_only: bool = False, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Run both parts (or, ``memory_only``, only the memory of the job's plan); print and
    return the figures."""
    rows_needed = (WARMUP_STEPS + rounds * STEPS_PER_ROUND + 1) * 4 * cfg.train.batch_size
    data = synthetic_train_data(cfg, rows_needed, "bench-planner-data")
    if memory_only:
        result: dict[str, Any] = {"memory": run_memory_bench(cfg, data)}
        if json_out:
            write_json(json_out, result)
        return result
    result = {"versus_torchrec": [], "fidelity": []}
    if cfg.sharding.topology is None:  # measure this machine now, under this run's conditions
        topo_file = cfg.run_dir / "bench-planner-topology.json"
        print(f"[bench] calibrating this machine -> {topo_file}", flush=True)
        threads = cfg.ray.threads_per_worker  # at least 1, as a training rank's
        spec = calibrate(
            run_processes,
            ranks=2,
            threads=threads,
            unpool=enable_unpooled_row_wise,
            pairwise_dots=pairwise_dots,
            one_feature=read_shared_tables_as_one_feature,
        )
        save_topology(spec, topo_file)
        cfg = parse_config(
            apply_overrides(cfg.model_dump(mode="json"), [f"sharding.topology={topo_file}"]),
            "bench planner",
        )

    for world, per_node in SHAPES:
        types = ["row_wise", "row_wise_unpooled", "column_wise", "table_wise", "data_parallel"]
        if world > per_node:
            types += ["table_row_wise", "grid_shard"]
        typed = [  # 1D: one group of the whole world
            parse_config(
                apply_overrides(
                    cfg.model_dump(mode="json"),
                    [f"sharding.type={t}", f"sharding.group_size={world}"],
                ),
                f"bench {t}",
            )
            for t in types
        ]
        # The simulated nodes share this machine's cores.
        cores = simulated_node_cores(world // per_node)
        # 2D: groups of each size that tiles the shape, the planner's plan for one group
        # (over the job's sharding.type)
        for g in group_sizes(world // per_node, per_node):
            types.append(f"groups of {g}")
            typed.append(
                parse_config(
                    apply_overrides(
                        cfg.model_dump(mode="json"),
                        [f"sharding.group_size={g}"],
                    ),
                    f"bench groups of {g}",
                )
            )
        ours = plan_job(cfg, world, per_node, cores_per_node=cores)
        theirs, theirs_estimate = torchrec_job_plan(cfg, world, per_node, cores)
        plans = [ours, theirs, *(plan_job(c, world, per_node, cores_per_node=cores) for c in typed)]
        print(
            f"[bench] {world} ranks ({per_node} per node): timing "
            f"{len({_plan_key(p) for p in plans})} distinct plans "
            f"interleaved, {rounds} rounds x {STEPS_PER_ROUND} steps",
            flush=True,
        )
        # Identical plans (ours is usually one of the single-type plans) are timed once, so
        # a plan is never compared with itself through noise.
        unique: dict[tuple[str, int, tuple[str, ...]], JobPlan] = {}
        for p in plans:
            unique.setdefault(_plan_key(p), p)
        timed = dict(zip(unique, _measure(cfg, list(unique.values()), data, rounds), strict=True))
        measured = [timed[_plan_key(p)] for p in plans]
        m_ours, m_theirs = measured[0], measured[1]
        row = {
            "ranks": world,
            "ranks_per_node": per_node,
            "ours": ours.label,
            "torchrec": theirs.label,
            "ours_step_seconds": m_ours["step_seconds"],
            "torchrec_step_seconds": m_theirs["step_seconds"],
            "ours_estimated_step_seconds": ours.estimated_step_seconds,
            "torchrec_estimated_step_seconds_by_our_model": theirs_estimate,
            "step_time_ratio_torchrec_over_ours": m_theirs["step_seconds"] / m_ours["step_seconds"],
            "ours_max_memory_bytes": m_ours["max_state_bytes"],
            "torchrec_max_memory_bytes": m_theirs["max_state_bytes"],
            "memory_ratio_torchrec_over_ours": m_theirs["max_state_bytes"]
            / m_ours["max_state_bytes"],
        }
        memory = measure_memory(cfg, ours, data)
        row["ours_estimated_peak_memory_bytes"] = ours.estimated_memory_bytes
        row["ours_measured_peak_memory_bytes"] = memory
        row["memory_measured_over_estimate"] = memory / max(ours.estimated_memory_bytes, 1)
        result["versus_torchrec"].append(row)
        print(
            f"  ours {row['ours']} {m_ours['step_seconds'] * 1e3:.1f} ms, "
            f"{m_ours['max_state_bytes'] / 2**20:.1f} MiB | TorchRec {row['torchrec']} "
            f"{m_theirs['step_seconds'] * 1e3:.1f} ms, "
            f"{m_theirs['max_state_bytes'] / 2**20:.1f} MiB | TorchRec/ours: step "
            f"x{row['step_time_ratio_torchrec_over_ours']:.2f}, memory "
            f"x{row['memory_ratio_torchrec_over_ours']:.2f}",
            flush=True,
        )
        print(
            f"  ours: peak memory per rank {memory / 2**20:.1f} MiB measured (RSS less the "
            f"process with no table), {ours.estimated_memory_bytes / 2**20:.1f} MiB estimated: "
            f"measured/estimate x{row['memory_measured_over_estimate']:.2f}",
            flush=True,
        )
        rows: list[dict[str, Any]] = []
        for t, plan, m in zip(types, plans[2:], measured[2:], strict=True):
            rows.append(
                {
                    "sharding_type": t,
                    "ranks": world,
                    "ranks_per_node": per_node,
                    "estimated_step_seconds": plan.estimated_step_seconds,
                    "measured_step_seconds": m["step_seconds"],
                }
            )
            print(
                f"  {t:<15} estimated {plan.estimated_step_seconds * 1e3:7.1f} ms, "
                f"measured {m['step_seconds'] * 1e3:7.1f} ms",
                flush=True,
            )
        result["fidelity"] += rows
        two_d = [r for r in rows if r["sharding_type"].startswith("groups of")]
        one_d = [r for r in rows if r not in two_d]
        # Ranking agreement over the 1D types (comparable with earlier runs), and with 2D
        est = [float(r["estimated_step_seconds"]) for r in one_d]
        meas = [float(r["measured_step_seconds"]) for r in one_d]
        tau = _kendall_tau(est, meas)
        tau_all = _kendall_tau(
            [float(r["estimated_step_seconds"]) for r in rows],
            [float(r["measured_step_seconds"]) for r in rows],
        )
        same_best = est.index(min(est)) == meas.index(min(meas))
        # Among the plans the job lets the planner use, is its pick the measured fastest?
        allowed = [r for r in one_d if r["sharding_type"] in allowed_types(cfg)]
        if cfg.sharding.group_size == "auto":
            allowed += two_d
        if two_d:
            best_2d = min(two_d, key=lambda r: float(r["measured_step_seconds"]))
            best_1d = min(
                (r for r in rows if r not in two_d),
                key=lambda r: float(r["measured_step_seconds"]),
            )
            result[f"measured_2d_over_1d_{world}_ranks"] = float(
                best_2d["measured_step_seconds"]
            ) / float(best_1d["measured_step_seconds"])
            print(
                f"  2D: fastest {best_2d['sharding_type']} "
                f"{float(best_2d['measured_step_seconds']) * 1e3:.1f} ms vs fastest 1D "
                f"{best_1d['sharding_type']} {float(best_1d['measured_step_seconds']) * 1e3:.1f} "
                f"ms (x{result[f'measured_2d_over_1d_{world}_ranks']:.2f})",
                flush=True,
            )
        fastest = min(allowed, key=lambda r: float(r["measured_step_seconds"]))["sharding_type"]
        pick_ok = ours.label == fastest or (
            ours.is_2d and fastest == f"groups of {ours.group_size}"
        )
        result[f"ranking_kendall_tau_{world}_ranks"] = tau
        result[f"ranking_kendall_tau_with_2d_{world}_ranks"] = tau_all
        result[f"same_fastest_type_{world}_ranks"] = same_best
        result[f"pick_is_measured_fastest_allowed_{world}_ranks"] = pick_ok
        print(
            f"  ranking: Kendall tau {tau:+.2f} (1D types), {tau_all:+.2f} with the 2D plans; "
            f"same fastest type: {same_best}; among the "
            f"types auto may use here, measured fastest {fastest}, picked {ours.label}",
            flush=True,
        )
    if json_out:
        write_json(json_out, result)
    return result

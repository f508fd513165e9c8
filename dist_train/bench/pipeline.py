"""``dist-train bench pipeline``: ``train.pipeline`` (TorchRec's ``TrainPipelineSparseDist``)
against one step at a time.

The pipeline starts the next batch's input dist (the ids' all-to-all) before the current
batch's forward and waits for it after; on GPUs it also copies the batch after next on a side
stream. Both sides are built alike (same plan, seed and batches), so each trains the same
steps; the bench checks that their losses agree step by step, then times them in interleaved
rounds and prints the ratio round by round. Each system runs on our planner's plan, the one
its training job would run.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

import pyarrow.parquet as pq
import torch.distributed as dist

from dist_train.bench import rank_batches, spread, synthetic_train_data, variant, write_json
from dist_train.config.load import parse_config
from dist_train.config.schema import JobConfig
from dist_train.launchers.processes import run_processes
from dist_train.train.sharding import JobPlan, plan_job
from dist_train.train.trainer import Trainer
from planners.cores import usable_cores

SYSTEMS = ("unified", "hashing_trick")
WARMUP_STEPS = 3
STEPS_PER_ROUND = 8


def time_pipeline(raw: dict[str, Any], plan: JobPlan, data: str, rounds: int) -> dict[str, Any]:
    """Worker: one step at a time and the pipeline over the same batches; their losses, and
    seconds per round of each."""
    cfgs = {
        p: parse_config({**raw, "train": {**raw["train"], "pipeline": p}}) for p in (False, True)
    }
    plain, pipe = (
        Trainer.build(cfgs[p], plan, local_world_size=plan.local_world_size) for p in (False, True)
    )
    builder = plain.batch_builder()
    table = pq.read_table(data, columns=builder.columns)
    # two more than it trains: the pipeline reads two batches ahead
    count = WARMUP_STEPS + rounds * STEPS_PER_ROUND + 2
    batches = rank_batches(builder, table, cfgs[False].train.batch_size, count)
    del table
    pipelined = pipe.train_steps(iter(batches))
    plain_losses = [plain.train_step(b) for b in batches[:WARMUP_STEPS]]
    pipe_losses = [loss for _, loss in itertools.islice(pipelined, WARMUP_STEPS)]
    seconds: dict[str, list[float]] = {"plain": [], "pipeline": []}
    for r in range(rounds):
        first = WARMUP_STEPS + r * STEPS_PER_ROUND

        def run_plain(first: int = first) -> None:
            plain_losses.extend(
                plain.train_step(b) for b in batches[first : first + STEPS_PER_ROUND]
            )

        def run_pipeline() -> None:
            pipe_losses.extend(loss for _, loss in itertools.islice(pipelined, STEPS_PER_ROUND))

        # each opens every other round: the pipeline's read-ahead (its next batch's input
        # exchange) spills into what follows it, the plain loop half the time, not always
        turns = [("plain", run_plain), ("pipeline", run_pipeline)]
        for name, run in turns if r % 2 == 0 else turns[::-1]:
            dist.barrier()
            start = time.perf_counter()
            run()
            dist.barrier()
            seconds[name].append(time.perf_counter() - start)
    pipelined.close()  # the two batches read ahead stay untrained
    return {
        "seconds": seconds,
        "max_loss_difference": max(
            abs(a - b) for a, b in zip(plain_losses, pipe_losses, strict=True)
        ),
    }


def run_pipeline_bench(
    cfg: JobConfig, ranks: list[int], json_out: str | None = None, rounds: int = 5
) -> dict[str, Any]:
    """Time one step at a time and the pipeline for each system and rank count; print and
    return the figures."""
    cfgs = {s: variant(cfg, [f"embedding.kind={s}"], f"bench pipeline {s}") for s in SYSTEMS}
    size = cfg.train.batch_size
    rows = int(1.5 * (WARMUP_STEPS + rounds * STEPS_PER_ROUND + 2) * size * max(ranks))
    data = synthetic_train_data(cfg, rows, "bench-pipeline-data")
    results = []
    cores = usable_cores()
    for world in ranks:
        threads = max(1, cores // world)
        for system, sys_cfg in cfgs.items():
            plan = plan_job(sys_cfg, world, world)
            print(
                f"[bench] {system}, {world} rank(s) x {threads} thread(s), plan "
                f"{plan.label}: {rounds} interleaved rounds x {STEPS_PER_ROUND} steps",
                flush=True,
            )
            raw = sys_cfg.model_dump(mode="json")
            out = run_processes(time_pipeline, (raw, plan, data, rounds), world, threads)
            # each round ends at a barrier: the slowest rank's time is everyone's
            per_round = {
                k: [max(r["seconds"][k][i] for r in out) for i in range(rounds)]
                for k in ("plain", "pipeline")
            }
            speedups = [
                p / q for p, q in zip(per_round["plain"], per_round["pipeline"], strict=True)
            ]
            results.append(
                {
                    "system": system,
                    "ranks": world,
                    "plan": plan.label,
                    "plain_step_seconds": statistics.median(per_round["plain"]) / STEPS_PER_ROUND,
                    "pipeline_step_seconds": statistics.median(per_round["pipeline"])
                    / STEPS_PER_ROUND,
                    "pipeline_speedup": spread(speedups),
                    "max_loss_difference": max(r["max_loss_difference"] for r in out),
                }
            )
    _print(results)
    differ = [r for r in results if r["max_loss_difference"] != 0]
    for r in differ:  # the pipeline trains the same steps: its losses are equal to the bit
        print(
            f"[bench] WARNING: {r['system']} at {r['ranks']} rank(s): the pipeline's losses "
            f"differ from one step at a time's by up to {r['max_loss_difference']:.1e}; it "
            "trains other steps than the loop",
            flush=True,
        )
    if json_out:
        write_json(json_out, {"results": results})
    return {"results": results}


def _print(results: list[dict[str, Any]]) -> None:
    print(
        "\nsystem         ranks  plain ms  pipeline ms  plain/pipeline, median (min-max)  "
        "max |loss diff|"
    )
    for r in results:
        median, low, high = r["pipeline_speedup"]
        print(
            f"{r['system']:<14} {r['ranks']:>5}  {r['plain_step_seconds'] * 1e3:>8.1f}  "
            f"{r['pipeline_step_seconds'] * 1e3:>11.1f}  x{median:.2f} ({low:.2f}-{high:.2f})"
            f"{'':>18}{r['max_loss_difference']:.1e}"
        )

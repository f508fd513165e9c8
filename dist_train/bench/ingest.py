"""``dist-train bench ingest``: Parquet -> ready training batches, per CPU core, in one run.

Three figures on the same files:
- ours: the training workers' input path on one thread (Arrow's own pools pinned to 1):
  row groups read, checked by the bad-input policy, decoded once into numpy rows, cut (and
  shuffled, if the job shuffles) into batches whose ids are hashed into the unified table's
  KJT;
- Ray Data: ``read_parquet(...).iter_torch_batches`` with our batch builder as the collate
  function, so both produce the same ready batches;
- training: the steady examples/s of a short training run of the same job (the rate input
  must keep up with).

"Per core" divides rows by the CPU time the whole machine spent (busy time from
``/proc/stat``), so work in Ray's worker processes and threads is counted too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.collate_fn import ArrowBatchCollateFn

from dist_train.bench import variant
from dist_train.config import JobConfig
from dist_train.data.memory import reuse_freed_memory
from dist_train.data.validation import BadInputPolicy
from dist_train.driver import prepare_inputs, run_job
from dist_train.embedding.layout import build_layout
from dist_train.launchers.ray_train import private_ray
from dist_train.train.trainer import make_batch_builder
from planners.cores import usable_cores


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (Linux /proc/stat: user, nice, system,
    irq, softirq; idle, iowait and steal, the hypervisor's time elsewhere, are not ours)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def _measure(fn: Callable[[], int], min_seconds: float) -> tuple[int, float, float]:
    """Repeat ``fn`` (returns rows) for at least ``min_seconds``: rows, wall, busy CPU s."""
    rows, wall0, busy0 = 0, time.perf_counter(), _busy_seconds()
    while True:
        rows += fn()
        wall = time.perf_counter() - wall0
        if wall >= min_seconds:
            return rows, wall, _busy_seconds() - busy0


def run_ingest_bench(
    cfg: JobConfig, json_out: str | None = None, min_seconds: float = 5.0
) -> dict[str, Any]:
    """Measure ours, Ray Data and training on the job's training files; print and return."""
    inputs = prepare_inputs(cfg)
    groups = inputs.train_groups
    train_dir = cfg.data.train_path or str(cfg.run_dir / "data" / "train")
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    batch_size = cfg.train.batch_size

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    reuse_freed_memory()  # as the training workers do

    def ours() -> int:
        policy = BadInputPolicy.for_job(cfg)
        n = 0
        for rows, _ in builder.stream(
            groups,
            batch_size,
            policy=policy,
            shuffle_rows=cfg.data.shuffle_buffer_rows,
            shuffle_seed=(cfg.seed, 0, 0),
        ):
            n += len(builder.to_batch(rows))
        return n

    print(f"[bench] ours: {sum(g.num_rows for g in groups):,} rows per pass", flush=True)
    ours()  # warm-up, as for Ray Data: compiled kernels load, the heap grows once
    rows, wall, busy = _measure(ours, min_seconds)
    result: dict[str, Any] = {
        "rows_per_second_per_core": rows / busy,
        "rows_per_second": rows / wall,
        "cpu_seconds": busy,
    }

    # A private instance, as the embedded default of the launcher: never a cluster that runs
    # beside it (``ray start``, RAY_ADDRESS), whose size would change the figures.
    with private_ray(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.ERROR,
        configure_logging=True,
    ):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        columns = builder.columns

        class BuildBatches(ArrowBatchCollateFn):  # type: ignore[misc]
            """Our batch builder as Ray Data's collate step (same output as ours)."""

            def __call__(self, batch: pa.Table) -> Any:
                return builder.build(batch, "ray data")

        collate = BuildBatches()

        def ray_data() -> int:
            ds = ray.data.read_parquet(train_dir, columns=columns)
            n = 0
            for batch in ds.iter_torch_batches(
                batch_size=batch_size, collate_fn=collate, drop_last=True
            ):
                n += len(batch)
            return n

        print("[bench] Ray Data read_parquet().iter_torch_batches", flush=True)
        ray_data()  # warm-up: actor/process start-up is not ingestion
        rows, wall, busy = _measure(ray_data, min_seconds)
        result["ray_data_rows_per_second_per_core"] = rows / busy
        result["ray_data_rows_per_second"] = rows / wall
    pa.set_cpu_count(usable_cores())

    print("[bench] training consumption (short run)", flush=True)
    job = variant(
        cfg,
        [f"name={cfg.name}-ingest-train", "launcher=processes", "train.max_steps=30"],
        "bench ingest training run",
    )
    summary = run_job(job)
    result["train_rows_per_second"] = summary["steady_examples_per_second"]
    result["ours_over_ray_data"] = (
        result["rows_per_second_per_core"] / result["ray_data_rows_per_second_per_core"]
    )
    result["ours_per_core_over_train"] = (
        result["rows_per_second_per_core"] / result["train_rows_per_second"]
    )
    print(
        "\n                     rows/s per core   rows/s (wall)\n"
        f"ours                 {result['rows_per_second_per_core']:>14,.0f}   "
        f"{result['rows_per_second']:>12,.0f}\n"
        f"Ray Data             {result['ray_data_rows_per_second_per_core']:>14,.0f}   "
        f"{result['ray_data_rows_per_second']:>12,.0f}\n"
        f"training consumes                      {result['train_rows_per_second']:>12,.0f}\n"
        f"ours / Ray Data (per core) x{result['ours_over_ray_data']:.2f}; "
        f"one core of ours / training x{result['ours_per_core_over_train']:.1f}",
        flush=True,
    )
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result

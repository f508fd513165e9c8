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

"Per core" divides rows by the CPU time of this process and every process it started (Ray's
workers among them; ``/proc``), so what other programs on the machine do is not counted.
Ours and Ray Data alternate in rounds (Ray's instance up throughout); the figures are medians
over the rounds, and ours / Ray Data the median of the per-round ratios.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.collate_fn import ArrowBatchCollateFn

from dist_train.bench import over, spread, variant, write_json
from dist_train.config.schema import JobConfig
from dist_train.data.memory import reuse_freed_memory
from dist_train.data.validation import BadInputPolicy
from dist_train.driver import prepare_inputs, run_job
from dist_train.embedding.layout import build_layout
from dist_train.launchers.procfs import proc_stat
from dist_train.launchers.ray_train import private_ray
from dist_train.train.trainer import make_batch_builder
from planners.cores import usable_cores

ROUNDS = 5


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass  # gone, or a kernel without the children files: its own time still counts
    return out


class TreeCpu:
    """CPU seconds of this process and every process it started, each sampled on its own
    every ``period`` seconds while in use: a process that exits keeps the CPU it was last
    seen with. (A parent's cutime would miss them: Ray's raylet ignores SIGCHLD, and Ray
    Data replaces its workers every pass.) A process's last ``period`` may be missed."""

    def __init__(self, period: float = 0.02) -> None:
        self.period = period
        self._seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-cpu")

    def __enter__(self) -> TreeCpu:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        pending, seen = [os.getpid()], {}
        while pending:
            pid = pending.pop()
            stat = proc_stat(pid)
            if stat is not None:
                seen[(pid, stat.started)] = stat.cpu_seconds
                pending += _children(pid)
        with self._lock:  # a sample taken earlier may land later: CPU time only grows
            for key, cpu in seen.items():
                self._seen[key] = max(cpu, self._seen.get(key, 0.0))

    def seconds(self) -> float:
        """Sampled now: every process seen, at its latest CPU time."""
        self.sample()
        with self._lock:
            return sum(self._seen.values())


def _measure(fn: Callable[[], int], min_seconds: float, cpu: TreeCpu) -> tuple[int, float, float]:
    """Repeat ``fn`` (returns rows) for at least ``min_seconds``: rows, wall, CPU seconds of
    this process tree."""
    rows, wall0, cpu0 = 0, time.perf_counter(), cpu.seconds()
    while True:
        rows += fn()
        wall = time.perf_counter() - wall0
        if wall >= min_seconds:
            return rows, wall, cpu.seconds() - cpu0


def run_ingest_bench(
    cfg: JobConfig, json_out: str | None = None, min_seconds: float = 5.0
) -> dict[str, Any]:
    """Measure ours, Ray Data and training on the job's training files; print and return."""
    inputs = prepare_inputs(cfg)
    groups = inputs.train_groups
    # the files our reader listed (a glob, linked folders): Ray Data reads the same ones
    train_files = sorted({g.path for g in groups})
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
    per_round: dict[str, list[tuple[int, float, float]]] = {"ours": [], "ray_data": []}

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
            ds = ray.data.read_parquet(train_files, columns=columns)
            n = 0
            for batch in ds.iter_torch_batches(
                batch_size=batch_size, collate_fn=collate, drop_last=True
            ):
                n += len(batch)
            return n

        print("[bench] Ray Data read_parquet().iter_torch_batches", flush=True)
        ray_data()  # warm-up: actor/process start-up is not ingestion
        per_pass = min_seconds / ROUNDS
        turns = [("ours", ours), ("ray_data", ray_data)]
        with TreeCpu() as cpu:
            for r in range(ROUNDS):
                # each opens every other round: what one leaves behind (Ray starting new idle
                # workers after a pass) lands in the other's window half the time
                order = turns if r % 2 == 0 else turns[::-1]
                print(f"[bench] round {r + 1}/{ROUNDS}: {order[0][0]} first", flush=True)
                for name, fn in order:
                    per_round[name].append(_measure(fn, per_pass, cpu))

    def rates(name: str) -> tuple[list[float], list[float]]:
        runs = per_round[name]
        return [rows / cpu for rows, _, cpu in runs], [rows / wall for rows, wall, _ in runs]

    (ours_core, ours_wall), (ray_core, ray_wall) = rates("ours"), rates("ray_data")
    result: dict[str, Any] = {
        "rounds": ROUNDS,
        "rows_per_second_per_core": statistics.median(ours_core),
        "rows_per_second": statistics.median(ours_wall),
        "ray_data_rows_per_second_per_core": statistics.median(ray_core),
        "ray_data_rows_per_second": statistics.median(ray_wall),
        "ours_over_ray_data_spread": spread(
            [o / r for o, r in zip(ours_core, ray_core, strict=True)]
        ),
    }
    pa.set_cpu_count(usable_cores())

    print("[bench] training consumption (short run)", flush=True)
    job = variant(
        cfg,
        [f"name={cfg.name}-ingest-train", "launcher=processes", "train.max_steps=30"],
        "bench ingest training run",
    )
    summary = run_job(job)
    result["train_rows_per_second"] = summary["steady_examples_per_second"]
    result["ours_over_ray_data"] = result["ours_over_ray_data_spread"][0]
    result["ours_per_core_over_train"] = over(
        result["rows_per_second_per_core"], result["train_rows_per_second"], "ours over training"
    )
    print(
        "\n                     rows/s per core   rows/s (wall)\n"
        f"ours                 {result['rows_per_second_per_core']:>14,.0f}   "
        f"{result['rows_per_second']:>12,.0f}\n"
        f"Ray Data             {result['ray_data_rows_per_second_per_core']:>14,.0f}   "
        f"{result['ray_data_rows_per_second']:>12,.0f}\n"
        f"training consumes                      {result['train_rows_per_second']:>12,.0f}\n"
        "ours / Ray Data (per core), round by round: x{:.2f} ({:.2f}-{:.2f}); ".format(
            *result["ours_over_ray_data_spread"]
        )
        + f"one core of ours / training x{result['ours_per_core_over_train']:.1f}",
        flush=True,
    )
    if json_out:
        write_json(json_out, result)
    return result

"""Benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch.distributed as dist

from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch, BatchBuilder
from dist_train.data.synthetic import generate
from dist_train.storage import replace_file
from dist_train.train.progress import strict_json


def variant(cfg: JobConfig, overrides: list[str], label: str) -> JobConfig:
    """``cfg`` with ``overrides``, reading the same data files as ``cfg`` (its paths, or the
    synthetic data it generates under its own run directory). A benchmark's runs save no
    checkpoints unless ``overrides`` ask: they are measurements, and a rerun of the benchmark
    must not meet them (a fresh run beside checkpoints is refused)."""
    no_saves = ["checkpoint.save_at_end=false", "checkpoint.every_steps=null"]
    raw = apply_overrides(cfg.model_dump(mode="json"), [*no_saves, *overrides])
    if cfg.data.train_path is None:  # what the generated data allow, checked as generated
        parse_config(raw, label)
    raw["data"]["train_path"] = cfg.data.train_path or str(cfg.run_dir / "data" / "train")
    raw["data"]["test_path"] = cfg.data.test_path or str(cfg.run_dir / "data" / "test")
    return parse_config(raw, label)


def over(numerator: float, denominator: float, what: str) -> float:
    """``numerator / denominator``; NaN (null in the JSON), said, where ``denominator`` is 0:
    a run too short for a steady figure (one step) measured none. The figures measured
    beside it are kept."""
    if denominator:
        return numerator / denominator
    print(f"[bench] {what}: not measured (a run too short for it); reported as NaN", flush=True)
    return math.nan


def write_json(path: str, value: Any) -> None:
    """``value`` as JSON at ``path``, its folder made if missing (a benchmark's ``--json``,
    checked as the command line was read: ``dist_train.cli.values.output_file``), strict as the
    summaries and the sweep's files: a figure that is NaN or infinite is ``null``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_file(out, strict_json(value, indent=2))  # a failed write keeps the last one


def synthetic_train_data(cfg: JobConfig, rows: int, name: str) -> str:
    """``rows`` training rows of ``cfg``'s synthetic data under ``run_dir/name``; their
    directory. (A benchmark times steps: the test split is a token 1,024 rows.)"""
    synth = cfg.data.synthetic.model_copy(update={"num_train_rows": rows, "num_test_rows": 1024})
    # said, with its progress: the rows follow from the rounds asked, a typo's millions too
    return str(generate(synth, cfg.run_dir / name).train_dir)


def rank_batches(builder: BatchBuilder, table: pa.Table, batch: int, count: int) -> list[Batch]:
    """This rank's ``count`` batches of ``table``, built before any timing: step ``s`` reads
    the ranks' consecutive slices, wrapping around the table."""
    rank, world = dist.get_rank(), dist.get_world_size()
    return [
        builder.build(table.slice(((s * world + rank) * batch) % (table.num_rows - batch), batch))
        for s in range(count)
    ]


def seconds_per_call(fn: Callable[[], object], calls: int = 5) -> float:
    """Mean seconds of ``calls`` back-to-back calls of ``fn``: one round's sample of a kernel
    too short to time alone."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def spread(values: list[float]) -> list[float]:
    """[median, min, max] of ``values``: how the benchmarks report a figure over rounds."""
    return [statistics.median(values), min(values), max(values)]

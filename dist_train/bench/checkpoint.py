"""``dist-train bench checkpoint``: checkpoint save/load against this disk, and recovery time.

One run measures:

- **the disk.** Write a file as large as the checkpoint in 8 MiB blocks and fsync it, as
  ``dd conv=fsync`` does. Drop it from the page cache (``posix_fadvise(DONTNEED)``), then
  read it back, as ``dd iflag=direct`` does.
- **checkpoint save and load.** The job's trainer on 2 gloo ranks saves a checkpoint: DCP
  shards, fsynced, committed. The checkpoint's files are dropped from the page cache and the
  trainer loads it back. Figures are bytes on disk / seconds, and the ratio to the disk.
- **recovery.** A real Ray run of ``launch/configs/tiny.yaml`` in which rank 1 SIGKILLs
  itself after step 11 (``DIST_TRAIN_KILL_AT``). From the kill's marker file and the row
  ledger: seconds from the kill to the restarted worker's start, and to its first resumed
  step.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dist_train import checkpoint
from dist_train.bench import variant
from dist_train.config import JobConfig, load_config, parse_config
from dist_train.driver import run_job
from dist_train.launchers.processes import run_processes
from dist_train.train.faults import ENV
from dist_train.train.ledger import ledger_path, read
from dist_train.train.sharding import JobPlan, plan_job
from dist_train.train.trainer import Trainer

_BLOCK = 8 << 20
TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"


def _drop_cache(path: Path) -> None:
    """Evict ``path`` (a file, or every file below a directory) from the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bandwidth(directory: Path, size: int) -> tuple[float, float]:
    """(write, read) bytes/s of a ``size``-byte file in ``directory``: fsynced writes, reads
    from the disk rather than the page cache."""
    path = directory / "bench-disk.bin"
    block = os.urandom(_BLOCK)
    start = time.perf_counter()
    with path.open("wb", buffering=0) as f:
        for _ in range(max(1, size // _BLOCK)):
            f.write(block)
        os.fsync(f.fileno())
    written = path.stat().st_size
    write_bps = written / (time.perf_counter() - start)
    _drop_cache(path)
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.read(_BLOCK):
            pass
    read_bps = written / (time.perf_counter() - start)
    path.unlink()
    return write_bps, read_bps


def save_and_load(cfg_raw: dict[str, Any], plan: JobPlan, root: str) -> dict[str, float]:
    """Worker: build the job's trainer, save a checkpoint, drop it from the cache, load it."""
    cfg = parse_config(cfg_raw)
    trainer = Trainer.build(cfg, plan, local_world_size=plan.local_world_size)
    dist.barrier()
    start = time.perf_counter()
    saver = checkpoint.CheckpointSaver(
        trainer, Path(root), 1, {"sharding": plan.placements()}, background=False
    )
    saver.save(checkpoint.TrainPosition(step=1))
    path = checkpoint.committed(Path(root))[-1]
    save_seconds = time.perf_counter() - start
    assert isinstance(path, Path)  # a local root
    if dist.get_rank() == 0:
        _drop_cache(path)
    dist.barrier()
    start = time.perf_counter()
    checkpoint.load(trainer, path)
    dist.barrier()
    load_seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {"save_seconds": save_seconds, "load_seconds": load_seconds, "bytes": float(size)}


def recovery_seconds(out_dir: Path) -> dict[str, float]:
    """Kill rank 1 of a tiny Ray run after step 11; time the recovery from its records."""
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run: its own kill and ledger
    os.environ[ENV] = "1:11"
    try:
        run_job(
            load_config(
                TINY,
                [
                    f"output_dir={out_dir}",
                    "ray.max_failures=1",
                    "checkpoint.every_steps=4",
                    "data.row_id_column=row_id",
                ],
            )
        )
    finally:
        del os.environ[ENV]
    run_dir = out_dir / "tiny"
    killed_at = float((run_dir / "faults" / "killed-rank1-step11-step").read_text())
    attempts, steps = read(ledger_path(run_dir, 0))
    restart = attempts[-1]
    first = min(k for k in steps if k > restart.resume_step)
    return {
        "kill_to_worker_start_seconds": restart.unix - killed_at,
        "kill_to_first_resumed_step_seconds": steps[first].unix - killed_at,
        "resumed_from_step": float(restart.resume_step),
        "steps_replayed": float(11 - restart.resume_step),
    }


def run_checkpoint_bench(
    cfg: JobConfig, rows: int, json_out: str | None = None, recovery: bool = True
) -> dict[str, Any]:
    """Measure and print the three parts; return the figures."""
    job = variant(cfg, [f"embedding.num_rows={rows}"], "bench checkpoint")
    plan = plan_job(job, 2, 2)
    root = job.run_dir / "bench-checkpoint"
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"[bench] saving and loading {job.embedding.num_rows:,} x {job.embedding.dim} "
        f"({plan.label}) on 2 ranks under {root}",
        flush=True,
    )
    ranks = run_processes(save_and_load, (job.model_dump(mode="json"), plan, str(root)), 2)
    size = int(ranks[0]["bytes"])
    save_s = max(r["save_seconds"] for r in ranks)
    load_s = max(r["load_seconds"] for r in ranks)
    print(f"[bench] disk: {size / 1e6:,.0f} MB written with fsync and read uncached", flush=True)
    write_bps, read_bps = disk_bandwidth(root, size)
    result: dict[str, Any] = {
        "checkpoint_bytes": size,
        "save_bytes_per_second": size / save_s,
        "load_bytes_per_second": size / load_s,
        "disk_write_bytes_per_second": write_bps,
        "disk_read_bytes_per_second": read_bps,
        "save_over_disk_write": size / save_s / write_bps,
        "load_over_disk_read": size / load_s / read_bps,
    }
    if recovery:
        print("[bench] recovery: a Ray run with rank 1 killed after step 11", flush=True)
        result.update(recovery_seconds(job.run_dir / "bench-recovery"))
    mb = 1e6
    lines = [
        "",
        f"checkpoint {size / mb:,.0f} MB          MB/s     disk MB/s   ratio",
        f"save (DCP, fsync, commit)  {size / save_s / mb:>8,.0f}  {write_bps / mb:>10,.0f}"
        f"   x{result['save_over_disk_write']:.2f}",
        f"load (uncached)            {size / load_s / mb:>8,.0f}  {read_bps / mb:>10,.0f}"
        f"   x{result['load_over_disk_read']:.2f}",
    ]
    if recovery:
        lines.append(
            f"recovery: kill -> restarted worker {result['kill_to_worker_start_seconds']:.1f} s, "
            f"-> first resumed step {result['kill_to_first_resumed_step_seconds']:.1f} s "
            f"(resumed from step {result['resumed_from_step']:.0f}, "
            f"{result['steps_replayed']:.0f} steps replayed)"
        )
    print("\n".join(lines), flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return result

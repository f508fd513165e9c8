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

import os
import shutil
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from dist_train.bench import over, variant, write_json
from dist_train.checkpoint.folders import committed
from dist_train.checkpoint.load import load
from dist_train.checkpoint.meta import TrainPosition
from dist_train.checkpoint.save import CheckpointSaver
from dist_train.config.errors import ConfigError
from dist_train.config.load import load_config, parse_config
from dist_train.config.schema import JobConfig
from dist_train.driver import prepare_inputs, run_job
from dist_train.embedding.layout import build_layout
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
        written = 0
        while written < size:  # the checkpoint's bytes, the last block short (8 MiB rounded
            written += f.write(block[: size - written])  # a 1 MB checkpoint up to 8)
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


def save_and_load(cfg_raw: dict[str, Any], plan: JobPlan, root: str, rounds: int) -> dict[str, Any]:
    """Worker: build the job's trainer; per round, save and load it with dist_train's
    checkpoints (digests written, verified on load, safe unpickling, commit) and with plain DCP
    (none of that; the load still copies into the model and optimizer), interleaved, each
    load from an uncached checkpoint. Seconds per round."""
    cfg = parse_config(cfg_raw)
    trainer = Trainer.build(cfg, plan, local_world_size=plan.local_world_size)
    out: dict[str, Any] = {k: [] for k in ("save", "load", "plain_save", "plain_load")}
    size = 0.0
    for r in range(rounds):
        ours, plain = Path(root) / f"ours-{r}", Path(root) / f"plain-{r}"
        saver = CheckpointSaver(trainer, ours, 1, {"sharding": plan.placements()}, background=False)
        state = {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}
        saves = {
            "save": partial(saver.save, TrainPosition(step=1)),
            "plain_save": partial(dcp.save, state, storage_writer=FileSystemWriter(str(plain))),
        }
        for key in sorted(saves, reverse=r % 2 == 1):  # alternate which goes first
            out[key].append(_timed(saves[key]))
        path = Path(str(committed(ours)[-1]))
        if dist.get_rank() == 0:
            _drop_cache(path)
            _drop_cache(plain)
        loads = {
            "load": partial(load, trainer, path),
            "plain_load": partial(_plain_load, trainer, state, plain),
        }
        for key in sorted(loads, reverse=r % 2 == 1):
            out[key].append(_timed(loads[key]))
        size = float(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(ours, ignore_errors=True)
            shutil.rmtree(plain, ignore_errors=True)
    out["bytes"] = size
    return out


def _plain_load(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """What :func:`load` does, with DCP's stock reader and planner: no digests,
    ``weights_only=False`` for non-tensor items (the baseline of verification's cost)."""
    dcp.load(state, storage_reader=FileSystemReader(str(path)))
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])


def _timed(action: Any) -> float:
    dist.barrier()
    start = time.perf_counter()
    action()
    dist.barrier()
    return time.perf_counter() - start


STALL_EVERY = 8
STALL_VARIANTS = {  # name -> overrides
    "none": ["checkpoint.every_steps=null"],
    "every_8": [f"checkpoint.every_steps={STALL_EVERY}"],  # background saves (the default)
    "every_8_inline": [f"checkpoint.every_steps={STALL_EVERY}", "checkpoint.background=false"],
}


def training_stall(cfg: JobConfig, rounds: int) -> dict[str, float]:
    """The job for 2 epochs without checkpoints, with background saves every 8 steps, and
    with inline (blocking) saves every 8 steps, under plain processes and Ray, rounds
    interleaved. Medians of examples/s, their ratio to no checkpoints, and the training time
    each checkpoint cost (extra train seconds / checkpoints)."""
    prepare_inputs(cfg)  # generate the data once; every run reads these files
    # an earlier bench's runs saved checkpoints there: a fresh run beside them is refused
    shutil.rmtree(cfg.run_dir / "bench-stall", ignore_errors=True)
    rate: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    steps = 0
    for r in range(rounds):
        for launcher in ("processes", "ray"):
            for name, overrides in STALL_VARIANTS.items():
                key = f"{launcher}_{name}"
                job = variant(
                    cfg,
                    [
                        f"launcher={launcher}",
                        "train.epochs=2",
                        *overrides,
                        "checkpoint.save_at_end=false",
                        # each its own folder: a job's checkpoint.dir held the one before's
                        "checkpoint.dir=null",
                        f"output_dir={cfg.run_dir / 'bench-stall' / f'{key}-{r}'}",
                    ],
                    "bench checkpoint stall",
                )
                print(f"[bench] stall round {r + 1}/{rounds}: {key}", flush=True)
                summary = run_job(job)
                rate.setdefault(key, []).append(summary["examples_per_second"])
                seconds.setdefault(key, []).append(summary["train_seconds"])
                steps = summary["steps"]
    out: dict[str, float] = {}
    for launcher in ("processes", "ray"):
        none_rate = statistics.median(rate[f"{launcher}_none"])
        none_seconds = statistics.median(seconds[f"{launcher}_none"])
        out[f"{launcher}_examples_per_second"] = none_rate
        for name in ("every_8", "every_8_inline"):
            key = f"{launcher}_{name}"
            out[f"{key}_examples_per_second"] = statistics.median(rate[key])
            out[f"{key}_over_none"] = over(statistics.median(rate[key]), none_rate, key)
            out[f"{key}_stall_seconds_per_checkpoint"] = over(
                statistics.median(seconds[key]) - none_seconds,
                # the saves on the training clock: a save due at the last step is the
                # final one, made off it
                (steps - 1) // STALL_EVERY,
                f"{key}'s stall per checkpoint ({steps} steps, a save every {STALL_EVERY})",
            )
    return out


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
    cfg: JobConfig,
    rows: int,
    json_out: str | None = None,
    recovery: bool = True,
    rounds: int = 5,
    stall_rounds: int = 1,
) -> dict[str, Any]:
    """Measure and print the parts; return the figures."""
    if cfg.embedding.kind == "collisionless":  # --rows sizes nothing: it said it did
        raise ConfigError(
            "bench checkpoint sizes the tables by --rows (embedding.num_rows): "
            "embedding.kind=collisionless sizes them from the features' cardinalities; use "
            "unified or hashing_trick"
        )
    job = variant(cfg, [f"embedding.num_rows={rows}"], "bench checkpoint")
    plan = plan_job(job, 2, 2)
    tables = build_layout(job.embedding, job.features, job.seed).tables
    shape = (
        f"{tables[0].num_rows:,} x {tables[0].dim}"
        if len(tables) == 1
        else f"{len(tables)} tables, {sum(t.num_rows * t.dim for t in tables):,} parameters"
    )
    root = job.run_dir / "bench-checkpoint"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"[bench] saving and loading {shape} ({plan.label}) on 2 ranks under {root}, "
        f"{rounds} interleaved rounds",
        flush=True,
    )
    ranks = run_processes(save_and_load, (job.model_dump(mode="json"), plan, str(root), rounds), 2)
    size = int(ranks[0]["bytes"])
    med = {k: statistics.median(ranks[0][k]) for k in ("save", "load", "plain_save", "plain_load")}
    save_s, load_s = med["save"], med["load"]
    print(f"[bench] disk: {size / 1e6:,.0f} MB written with fsync and read uncached", flush=True)
    write_bps, read_bps = disk_bandwidth(root, size)
    result: dict[str, Any] = {
        "checkpoint_bytes": size,
        "save_bytes_per_second": size / save_s,
        "load_bytes_per_second": size / load_s,
        "plain_dcp_save_bytes_per_second": size / med["plain_save"],
        "plain_dcp_load_bytes_per_second": size / med["plain_load"],
        "load_verified_over_plain": med["plain_load"] / load_s,
        "save_with_digests_over_plain": med["plain_save"] / save_s,
        "disk_write_bytes_per_second": write_bps,
        "disk_read_bytes_per_second": read_bps,
        "save_over_disk_write": size / save_s / write_bps,
        "load_over_disk_read": size / load_s / read_bps,
    }
    if stall_rounds:
        result.update(training_stall(cfg, stall_rounds))
    if recovery:
        print("[bench] recovery: a Ray run with rank 1 killed after step 11", flush=True)
        result.update(recovery_seconds(job.run_dir / "bench-recovery"))
    mb = 1e6
    lines = [
        "",
        f"checkpoint {size / mb:,.0f} MB      MB/s  plain DCP MB/s  /plain  disk MB/s  /disk",
        f"save (digests, commit) {size / save_s / mb:>8,.0f}"
        f"  {size / med['plain_save'] / mb:>14,.0f}"
        f"  x{result['save_with_digests_over_plain']:.2f}  {write_bps / mb:>10,.0f}"
        f"  x{result['save_over_disk_write']:.2f}",
        f"load (verified, uncached) {size / load_s / mb:>5,.0f}"
        f"  {size / med['plain_load'] / mb:>14,.0f}"
        f"  x{result['load_verified_over_plain']:.2f}  {read_bps / mb:>10,.0f}"
        f"  x{result['load_over_disk_read']:.2f}",
    ]
    if stall_rounds:
        lines.append(
            "training             no checkpoints   every 8 steps: background (ratio, stall per "
            "checkpoint)   inline"
        )
        for launcher in ("processes", "ray"):
            cells = [f"{result[f'{launcher}_examples_per_second']:>9,.0f} ex/s"]
            for name in ("every_8", "every_8_inline"):
                key = f"{launcher}_{name}"
                cells.append(
                    f"{result[f'{key}_examples_per_second']:>9,.0f} ex/s "
                    f"(x{result[f'{key}_over_none']:.2f}, "
                    f"{result[f'{key}_stall_seconds_per_checkpoint'] * 1e3:+.0f} ms)"
                )
            lines.append(f"  {launcher:<9}  " + "   ".join(cells))
    if recovery:
        lines.append(
            f"recovery: kill -> restarted worker {result['kill_to_worker_start_seconds']:.1f} s, "
            f"-> first resumed step {result['kill_to_first_resumed_step_seconds']:.1f} s "
            f"(resumed from step {result['resumed_from_step']:.0f}, "
            f"{result['steps_replayed']:.0f} steps replayed)"
        )
    print("\n".join(lines), flush=True)
    if json_out:
        write_json(json_out, result)
    return result

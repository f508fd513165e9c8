"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout under ``<checkpoint dir>``:

    step-00000040/           a committed checkpoint: DCP shards + .metadata + meta.json
    .partial-step-00000060/  being written (or left by a crash): never loaded, removed

Every rank writes its shards of the model (sharded tables, dense layers) and of the optimizer
state (fused TBE state included) into the partial directory; after a barrier rank 0 writes
``meta.json`` (step, epoch, reader position, bad-input counts, config, plan) and renames the
directory, an atomic step on one filesystem. A crash before the rename leaves the previous
checkpoint as the latest. DCP reads tensors with ``weights_only`` semantics; ``meta.json`` is
JSON: loading never runs pickled code from a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dist_train.config import JobConfig
from dist_train.train.trainer import Trainer

PREFIX = "step-"
PARTIAL_PREFIX = ".partial-step-"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TrainPosition:
    """Where training is: global ``step``, and ``batches`` consumed in ``epoch``."""

    step: int = 0
    epoch: int = 0
    batches: int = 0
    bad_input_rows: dict[str, int] = field(default_factory=dict)
    bad_input_row_groups: int = 0


def reason(err: BaseException) -> str:
    """The last line of a DCP error: a CheckpointException carries every rank's traceback."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def checkpoint_root(cfg: JobConfig) -> Path:
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else cfg.run_dir / "checkpoints"


def committed(root: Path) -> list[Path]:
    """Committed checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def remove_partials(root: Path) -> list[Path]:
    """Delete checkpoints a crash left half-written; returns what was removed."""
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(PARTIAL_PREFIX)]
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def resolve(cfg: JobConfig, resume: str) -> Path | None:
    """``latest`` -> the newest committed checkpoint (None if there is none); a path -> it."""
    if resume == "latest":
        found = committed(checkpoint_root(cfg))
        return found[-1] if found else None
    path = Path(resume)
    if not (path / META).is_file():
        raise CheckpointError(f"{path / META}: not a committed dist_train checkpoint")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(meta, dict) or "position" not in meta:
        raise CheckpointError(f"{meta_path}: not dist_train checkpoint metadata")
    return meta


def check_compatible(
    meta: dict[str, Any],
    path: Path,
    world: int,
    placements: dict[str, dict[str, object]] | None = None,
) -> TrainPosition:
    """The saved position, if a job of ``world`` ranks can resume it; else CheckpointError."""
    position = TrainPosition(**meta["position"])
    saved_world = meta.get("world_size")
    saved_plan = meta.get("sharding") or {}
    if saved_world == world:
        if placements is not None and saved_plan and saved_plan != placements:
            # Loading across plans breaks on optimizer-state keys (TorchRec issue 2394).
            raise CheckpointError(
                f"{path}: saved with the plan {saved_plan}, but this job plans {placements}; "
                "resume with the saved plan (set sharding.type to its type, and the same "
                "sharding.topology and memory_per_rank)"
            )
        return position
    if position.batches:
        # Rows are dealt to ranks per (world size, epoch): mid-epoch, another world size would
        # re-read or skip rows. At an epoch boundary DCP reshards the tables and state.
        raise CheckpointError(
            f"{path}: saved mid-epoch by {saved_world} ranks; resume it with {saved_world} "
            f"ranks (this job has {world}), or from a checkpoint at an epoch boundary"
        )
    saved_types = {p["type"] for p in saved_plan.values()}
    if saved_types - {"row_wise"}:
        raise CheckpointError(
            f"{path}: resharding {sorted(saved_types)} plans to another world size is not "
            "supported yet (row_wise is)"
        )
    return position


def _state(trainer: Trainer) -> dict[str, Any]:
    return {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}


def save(
    trainer: Trainer,
    root: Path,
    position: TrainPosition,
    num_to_keep: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint from every rank and commit it; returns its final path."""
    rank = dist.get_rank()
    final = root / f"{PREFIX}{position.step:08d}"
    partial = root / f"{PARTIAL_PREFIX}{position.step:08d}"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    dcp.save(_state(trainer), storage_writer=dcp.FileSystemWriter(str(partial)))
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        meta = {"position": asdict(position), "world_size": dist.get_world_size(), **(extra or {})}
        (partial / META).write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in committed(root)[:-num_to_keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(trainer: Trainer, path: Path) -> TrainPosition:
    """Restore model and optimizer state from ``path`` into ``trainer``; the saved position."""
    meta = read_meta(path)
    position = check_compatible(meta, path, dist.get_world_size(), trainer.plan.placements())
    state = _state(trainer)
    try:
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
        # (CheckpointException, which wraps a rank's failure, is a BaseException)
        raise CheckpointError(f"{path}: cannot load checkpoint shards ({reason(err)})") from None
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])
    return position

"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout under ``<checkpoint dir>`` (a local or shared path, or an fsspec URL):

    step-00000040/           a committed checkpoint: DCP shards + .metadata + meta.json
    .partial-step-00000060/  being written (or left by a crash): never loaded, removed

Every rank writes its shards of the model (sharded tables, dense layers) and of the optimizer
state (fused TBE state included) into the partial directory. After a barrier rank 0 renames
it to ``step-N`` and then writes ``meta.json`` (step, epoch, reader position, bad-input
counts, config, plan) into it: a checkpoint counts as committed only once its ``meta.json``
exists, so a crash at any point leaves the previous checkpoint as the latest (on object
stores, where a rename is a copy, too). DCP reads tensors with ``weights_only`` semantics;
``meta.json`` is JSON: loading never runs pickled code from a checkpoint.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dist_train import storage
from dist_train.config import JobConfig
from dist_train.storage import Location, location
from dist_train.train.trainer import Trainer

PREFIX = "step-"
PARTIAL_PREFIX = ".partial-step-"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TrainPosition:
    """Where training is: global ``step``, and ``batches`` each rank consumed in ``epoch``
    under ``plan`` (an :class:`~dist_train.data.epoch_plan.EpochPlan` as JSON; None at an
    epoch boundary, and in checkpoints written before plans were saved)."""

    step: int = 0
    epoch: int = 0
    batches: int = 0
    bad_input_rows: dict[str, int] = field(default_factory=dict)
    bad_input_row_groups: int = 0
    plan: dict[str, Any] | None = None


def reason(err: BaseException) -> str:
    """The last line of a DCP error: a CheckpointException carries every rank's traceback."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def checkpoint_root(cfg: JobConfig) -> Location:
    return location(cfg.checkpoint.dir) if cfg.checkpoint.dir else cfg.run_dir / "checkpoints"


def committed(root: Location) -> list[Location]:
    """Committed checkpoints under ``root`` (with their ``meta.json``), oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / META).is_file())


def remove_partials(root: Location) -> list[Location]:
    """Delete checkpoints a crash left half-written; returns what was removed."""
    if not root.is_dir():
        return []
    partial = [
        p
        for p in root.iterdir()
        if p.name.startswith(PARTIAL_PREFIX)
        or (p.name.startswith(PREFIX) and not (p / META).is_file())
    ]
    for p in partial:
        storage.rmtree(p)
    return partial


def resolve(cfg: JobConfig, resume: str) -> Location | None:
    """``latest`` -> the newest committed checkpoint (None if there is none); a path -> it."""
    if resume == "latest":
        found = committed(checkpoint_root(cfg))
        return found[-1] if found else None
    path = location(resume)
    if not (path / META).is_file():
        raise CheckpointError(f"{path / META}: not a committed dist_train checkpoint")
    return path


def read_meta(path: Location) -> dict[str, Any]:
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(meta, dict) or "position" not in meta:
        raise CheckpointError(f"{meta_path}: not dist_train checkpoint metadata")
    return meta


def check_compatible(meta: dict[str, Any], path: Location, world: int) -> TrainPosition:
    """The saved position, if a job of ``world`` ranks can resume it; else CheckpointError.

    Any plan and world size can load a checkpoint (:func:`load` reshards it). Mid-epoch, the
    saved epoch plan re-deals the batches not yet trained to the new ranks; a checkpoint
    from before plans were saved needs the world size it was saved with.
    """
    position = TrainPosition(**meta["position"])
    saved_world = meta.get("world_size")
    if saved_world != world and position.batches and position.plan is None:
        raise CheckpointError(
            f"{path}: saved mid-epoch by {saved_world} ranks without an epoch plan; resume "
            f"it with {saved_world} ranks (this job has {world}), or from a checkpoint at an "
            "epoch boundary"
        )
    return position


def _state(trainer: Trainer) -> dict[str, Any]:
    return {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}


def save(
    trainer: Trainer,
    root: Location,
    position: TrainPosition,
    num_to_keep: int,
    extra: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> Location:
    """Write a checkpoint from every rank and commit it; returns its final path.

    ``before_commit`` runs on every rank once its shards are written (fault drills)."""
    rank = dist.get_rank()
    final = root / f"{PREFIX}{position.step:08d}"
    partial = root / f"{PARTIAL_PREFIX}{position.step:08d}"
    if rank == 0:
        storage.rmtree(partial)
        partial.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dcp.save(_state(trainer), storage_writer=storage.writer(partial))
    if before_commit is not None:
        before_commit()
    dist.barrier()  # every rank's shards are on disk
    rng: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(rng, base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode())
    if rank == 0:
        meta = {
            "position": asdict(position),
            "world_size": dist.get_world_size(),
            "torch_rng_states": rng,  # per rank (shuffles are seeded; this is for the rest)
            **(extra or {}),
        }
        storage.rmtree(final)
        storage.move(partial, final)
        storage.write_atomically(final / META, json.dumps(meta, indent=2))  # the commit
        for old in committed(root)[:-num_to_keep]:
            storage.rmtree(old)
    dist.barrier()
    return final


def load(trainer: Trainer, path: Location) -> TrainPosition:
    """Restore model and optimizer state from ``path`` into ``trainer``; the saved position.

    The checkpoint may come from another plan or world size. DCP maps every tensor by its
    global offsets. Row-wise Adagrad's accumulators are the exception: TorchRec keeps one per
    row per column block (a ``[rows * blocks]`` tensor under column-wise sharding, ``[rows]``
    otherwise), so :func:`_reshard_row_states` converts them between block layouts.
    """
    meta = read_meta(path)
    position = check_compatible(meta, path, dist.get_world_size())
    state = _state(trainer)
    try:
        reader = storage.reader(path)
        saved = reader.read_metadata().state_dict_metadata
        # Ranks convert different tables (each holds its own optimizer state), so the
        # conversion runs without collectives; they agree on its outcome before DCP's load.
        problem: CheckpointError | None = None
        try:
            converted = _reshard_row_states(state, saved, path)
        except CheckpointError as err:
            problem, converted = err, {}
        _raise_if_any_rank_failed(problem, path)
        dcp.load(state, storage_reader=reader)
        for (param, key), tensor in converted.items():
            state["optim"]["state"].setdefault(param, {})[key] = tensor
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
        # (CheckpointException, which wraps a rank's failure, is a BaseException)
        raise CheckpointError(f"{path}: cannot load checkpoint shards ({reason(err)})") from None
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])
    rng = meta.get("torch_rng_states")
    if rng and len(rng) == dist.get_world_size():  # another world size: ranks start afresh
        state_bytes = bytearray(base64.b64decode(rng[dist.get_rank()]))
        torch.set_rng_state(torch.frombuffer(state_bytes, dtype=torch.uint8))
    return position


def _raise_if_any_rank_failed(problem: CheckpointError | None, path: Location) -> None:
    """Raise on every rank if ``problem`` occurred on any (so none waits in a collective)."""
    failed = torch.tensor([problem is not None], dtype=torch.int32)
    dist.all_reduce(failed)
    if problem is not None:
        raise problem
    if failed.item():
        raise CheckpointError(f"{path}: another rank could not convert its optimizer state")


def _column_blocks(chunks: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[int]:
    """Widths of a table's column blocks, left to right, from its shards' (offsets, sizes)."""
    return [width for _, width in sorted({(o[1], s[1]) for o, s in chunks})]


def _reshard_row_states(
    state: dict[str, Any], saved: dict[str, Any], path: Location
) -> dict[tuple[str, str], Any]:
    """Load the per-row optimizer states whose block layout differs from the saved one.

    Such entries are removed from ``state`` (DCP cannot map them) and returned, filled:
    the saved blocks are averaged, weighted by width, into one value per row (exactly the
    row-wise Adagrad accumulator of the whole row), then copied into every target block.
    """
    out: dict[tuple[str, str], Any] = {}
    for param, entries in list(state["optim"]["state"].items()):
        weight = state["model"].get(param)
        if weight is None or not hasattr(weight, "metadata") or weight.dim() != 2:
            continue
        rows = weight.shape[0]
        target_blocks = _column_blocks(
            [
                (tuple(m.shard_offsets), tuple(m.shard_sizes))
                for m in weight.metadata().shards_metadata
            ]
        )
        saved_weight = saved.get(f"model.{param}")
        if saved_weight is None:
            continue  # DCP names the missing key when it loads
        saved_blocks = _column_blocks(
            [(tuple(c.offsets), tuple(c.sizes)) for c in saved_weight.chunks]
        )
        for key, tensor in list(entries.items()):
            fqn = f"optim.state.{param}.{key}"
            md = saved.get(fqn)
            if md is None or not hasattr(tensor, "local_shards") or tensor.dim() != 1:
                continue
            if tuple(md.size) == tuple(tensor.shape) and saved_blocks == target_blocks:
                continue  # same layout: DCP reshards it by offsets
            if md.size[0] != rows * len(saved_blocks) or tensor.shape[0] != rows * len(
                target_blocks
            ):
                raise CheckpointError(
                    f"{path}: {fqn} has {md.size[0]} values; expected one per row per column "
                    f"block ({rows} rows x {len(saved_blocks)} blocks)"
                )
            whole = torch.empty(tuple(md.size), dtype=tensor.dtype)
            dcp.load({fqn: whole}, storage_reader=storage.reader(path), no_dist=True)
            widths = torch.tensor(saved_blocks, dtype=torch.float64)
            per_row = (whole.view(len(saved_blocks), rows).double() * widths[:, None]).sum(0)
            per_row = (per_row / widths.sum()).to(tensor.dtype)
            for shard in tensor.local_shards():
                (offset,), (size,) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                row = offset % rows  # a shard never spans two blocks
                shard.tensor.copy_(per_row[row : row + size])
            del entries[key]
            out[(param, key)] = tensor
    for param, _ in out:  # an emptied entry would look like a missing key to DCP
        if not state["optim"]["state"].get(param, True):
            del state["optim"]["state"][param]
    return out

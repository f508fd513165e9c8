"""Loading: a checkpoint into a trainer (any plan or world size: resharded), or decoded whole
to verify it; every file read checked against ``meta.json``, no code run from any.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from dist_train.checkpoint.digests import FileDigests, check_file, file_digest
from dist_train.checkpoint.errors import CheckpointError, raise_a_wrapped_stop, reason
from dist_train.checkpoint.file_access import METADATA
from dist_train.checkpoint.folders import META
from dist_train.checkpoint.meta import (
    TrainPosition,
    check_compatible,
    file_digests,
    read_meta,
    redeals_skipping,
)
from dist_train.checkpoint.reader import reader as checkpoint_reader
from dist_train.checkpoint.rng import restore_rng_state
from dist_train.checkpoint.safe_decode import SafeDecodePlanner, SafeLoadPlanner
from dist_train.checkpoint.sharded_moments import Wrapped, placeable, shard_like_weights, unwrap
from dist_train.checkpoint.state import Trainer, agree, trainer_state
from dist_train.logs import LOG
from dist_train.storage import Location


class CheckpointOfAnotherJob(CheckpointError):
    """A checkpoint that does not fit this job's config: another model, or its values
    hashed into other rows (most often the wrong --config)."""


def load(trainer: Trainer, path: Location, resuming: bool = True) -> TrainPosition:
    """Restore model and optimizer state from ``path`` into ``trainer``; the saved position
    (checked to resume on this world size where ``resuming``; an evaluation only reads it).

    Every file read is checked against ``meta.json``'s digests. The checkpoint may come from
    another plan or world size. DCP maps every tensor by its global offsets. Row-wise
    Adagrad's accumulators are the exception: TorchRec keeps one per row per column block (a
    ``[rows * blocks]`` tensor under column-wise sharding, ``[rows]`` otherwise), so
    :func:`_reshard_row_states` converts them between block layouts, and
    :func:`_convert_row_states` between replicated and sharded tables.
    """
    meta = read_meta(path)
    if resuming:
        position = check_compatible(meta, path, dist.get_world_size())
    else:
        position = TrainPosition(**meta["position"])
    if resuming and redeals_skipping(meta, dist.get_world_size(), False) and dist.get_rank() == 0:
        # an elastic group back at another size (the driver refuses it for a resume asked
        # for): training goes on, said
        LOG.warning(
            f"{path}: resumed mid-epoch on {dist.get_world_size()} ranks, saved by "
            f"{meta.get('world_size')}, where bad rows are skipped: this epoch's re-dealt "
            "batches may miss some rows, a rank's share all of its batches (each row is "
            "still trained at most once)"
        )
    digests = file_digests(meta, path) if dist.get_rank() == 0 else meta.get("files")
    state, wrapped = trainer_state(trainer)
    try:
        reader = checkpoint_reader(path, digests)
        saved = reader.read_metadata().state_dict_metadata
        # Ranks convert different tables (each holds its own optimizer state), so the
        # conversion runs without collectives; they agree on its outcome before DCP's load.
        problem: str | None = None
        try:
            _check_model_shapes(state["model"], saved, path)
            wrapped += _add_lazy_optimizer_state(state, saved, trainer)
            converted = _reshard_row_states(state, saved, path, digests)
            converted.update(_convert_row_states(state, saved, path, digests, position.step))
        except CheckpointError as err:
            problem, converted = str(err), {}
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP's, a BaseException
            # every rank must reach agree(): the others would wait there for this one
            problem, converted = f"{path}: cannot load checkpoint shards ({reason(err)})", {}
        for param, _ in converted:  # an emptied entry would look like a missing key to DCP
            if not state["optim"]["state"].get(param, True):
                del state["optim"]["state"][param]
        agree(problem)
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
        for (param, key), tensor in converted.items():
            state["optim"]["state"].setdefault(param, {})[key] = tensor
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
        # (CheckpointException, which wraps a rank's failure, is a BaseException; DCP's
        # collective load hands every rank the same one, so all stop alike)
        raise_a_wrapped_stop(err)
        raise CheckpointError(f"{path}: cannot load checkpoint shards ({reason(err)})") from None
    unwrap(state, wrapped)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])
    restore_rng_state(meta.get("torch_rng_states"))
    return position


def verify(path: Location) -> str:
    """Check a committed checkpoint without loading it into a model: every file's size and
    digest, no file missing or unlisted, the metadata and every item decoded as a load decodes
    it, without running code. A one-line description; CheckpointError naming the file if not."""
    meta = read_meta(path)
    digests = meta.get("files")
    if digests is None:
        raise CheckpointError(
            f"{path / META}: lists no file digests (an older dist_train saved it): nothing to "
            "verify against"
        )
    present = {p.name for p in path.iterdir()} - {META}
    for name in sorted(set(digests) | present):
        if name not in digests:
            raise CheckpointError(f"{path / name}: not among the files meta.json lists")
        if name not in present:
            raise CheckpointError(f"{path / name}: missing (meta.json lists it)")
        got = file_digest(path / name, int(digests[name].get("bytes", 0)))
        check_file(str(path / name), digests[name], got["bytes"], got["xxh3_128"])
    reader = checkpoint_reader(path, digests)
    entries = reader.read_metadata().state_dict_metadata
    try:  # every item decoded as a load decodes it (weights_only), none kept
        _load_state_dict({}, storage_reader=reader, planner=SafeDecodePlanner(), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001
        raise_a_wrapped_stop(err)
        raise CheckpointError(f"{path}: unreadable checkpoint items ({reason(err)})") from None
    size = sum(int(d.get("bytes", 0)) for d in digests.values())
    return (
        f"checkpoint step {meta['position'].get('step')}: {len(digests)} files, "
        f"{size / 1e6:,.1f} MB, digests match, {len(entries)} entries"
    )


def _add_lazy_optimizer_state(
    state: dict[str, Any], saved: dict[str, Any], trainer: Trainer
) -> Wrapped:
    """Slots for torch Adam's moments and step where the checkpoint holds them and the fresh
    optimizer has not made them yet: torch's Adam makes them at its first step, and DCP
    loads only the keys its target holds, so a resume started Adam afresh beside the
    restored weights. Only an Adam whose state for the parameter is empty, only the three
    keys Adam makes, each moment of the whole weight's shape (a table's, under TorchRec's
    dense kernel, given DCP placed as the weight: :mod:`dist_train.checkpoint.sharded_moments`; a
    checkpoint of more than one rank made before that holds one rank's and starts afresh).
    What was placed as a weight, for :func:`~dist_train.checkpoint.sharded_moments.unwrap`."""
    params: dict[str, Any] = getattr(trainer.optimizer, "params", {})
    names = sorted(params, key=len, reverse=True)  # the longest name a key starts with
    prefix = "optim.state."
    held: dict[str, dict[str, Any]] = {}
    for fqn, md in saved.items():
        if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            rest = fqn[len(prefix) :]
            name = next((n for n in names if rest.startswith(n + ".")), None)
            if name is not None:
                held.setdefault(name, {})[rest[len(name) + 1 :]] = md
    added: list[str] = []
    for name, keys in held.items():
        param = params[name]
        owner = _owner(trainer.optimizer, param)
        weight = state["model"].get(name, param)
        whole = tuple(weight.size())
        if (
            not isinstance(owner, torch.optim.Adam)
            or owner.state.get(param)
            or set(keys) != {"step", "exp_avg", "exp_avg_sq"}
            or hasattr(param, "local_shards")
            or not (tuple(param.size()) == whole or placeable(param, weight))
        ):
            continue
        if any(tuple(keys[k].size) != whole for k in ("exp_avg", "exp_avg_sq")):
            LOG.warning(
                f"{name}: the checkpoint's Adam moments are of another shape than the table "
                "(one rank's, as dist_train saved them on CPU ranks before 2026-12-05): "
                "they start afresh"
            )
            continue
        group = next(g for g in owner.param_groups if any(p is param for p in g["params"]))
        on_device = group.get("fused") or group.get("capturable")  # where torch keeps step
        slots = {
            "step": torch.zeros((), dtype=keys["step"].properties.dtype).to(
                param.device if on_device else "cpu"
            ),
            "exp_avg": torch.zeros_like(param, dtype=keys["exp_avg"].properties.dtype),
            "exp_avg_sq": torch.zeros_like(param, dtype=keys["exp_avg_sq"].properties.dtype),
        }
        # the optimizer's own state holds the same tensors: TorchRec's load_state_dict
        # copies into state the optimizer already has, and refuses any it has not
        owner.state[param].update(slots)
        state["optim"]["state"].setdefault(name, {}).update(slots)
        added.append(name)
    return shard_like_weights(state, added)


def _owner(optimizer: Any, param: torch.Tensor) -> Any:
    """The (leaf) optimizer that updates ``param``: TorchRec's wrappers hold torch's."""
    for _, inner in getattr(optimizer, "optimizers", []):
        if any(p is param for p in inner.params.values()):
            return _owner(inner, param)
    return getattr(optimizer, "_optimizer", optimizer)


def check_model_shapes(
    path: Location, meta: dict[str, Any], model: dict[str, Any], settings: str = ""
) -> None:
    """:func:`_check_model_shapes` on the driver, before any worker starts: ``model`` is a
    state dict of whole tensors (a meta-device model's serves), ``meta`` the checkpoint's
    ``meta.json``, ``settings`` what the job's model settings changed since (said in the
    error). The ranks check again against their sharded model as they load."""
    digests = file_digests(meta, path)
    try:
        saved = checkpoint_reader(path, digests).read_metadata()
    except FileNotFoundError:
        if digests is not None and METADATA in digests:
            # found here, not in the ranks once they have started
            raise CheckpointError(
                f"{path}: no .metadata, which its meta.json lists: not a checkpoint's folder "
                "(an export's, or one a copy left out?)"
            ) from None
        return  # the load names a missing file
    _check_model_shapes(model, saved.state_dict_metadata, path, settings)


def _check_model_shapes(
    model: dict[str, Any], saved: dict[str, Any], path: Location, settings: str = ""
) -> None:
    """CheckpointError naming the model tensors the checkpoint lacks, those it holds that
    the model does not (a model of fewer layers: loading would drop trained ones), or the
    first whose whole shape (any plan's shards together) differs from the saved one: the
    checkpoint is of another model, which no resharding turns into this one. (DCP's own
    error came from one rank, mid-load: "Missing key in checkpoint state_dict".)"""
    tensors = {k: t for k, t in model.items() if isinstance(t, torch.Tensor)}
    since = f"it was saved with {settings}" if settings else ""
    changed = f"; {since}" if since else ""
    missing = [k for k in tensors if f"model.{k}" not in saved]
    instead = sorted(  # what the checkpoint holds that the model does not
        k.removeprefix("model.")
        for k in saved
        if k.startswith("model.") and k.removeprefix("model.") not in model
    )
    if missing:
        raise CheckpointOfAnotherJob(
            f"{path}: this job's model holds {_some(missing)}, which the checkpoint does "
            "not" + (f" (it holds {_some(instead)} instead)" if instead else "") + ": the "
            "checkpoint is of another model (another model.kind or layers; or a DLRM "
            "without dense columns saved by a dist_train before 116a848, whose bottom MLP "
            f"never trained){changed}. Resume it with the config and dist_train that saved "
            "it, or start a new run"
        )
    for key, tensor in tensors.items():
        size = getattr(saved.get(f"model.{key}"), "size", None)
        if size is None:
            continue
        now, then = tuple(tensor.size()), tuple(size)
        if now != then:
            raise CheckpointOfAnotherJob(
                f"{path}: {key} was saved as {' x '.join(map(str, then))}, but this job's "
                f"model holds {' x '.join(map(str, now))}: the checkpoint is of another "
                "model (another config's table rows, dims or layers; or, for hashing_trick "
                f"tables, a dist_train before fc4d3c4, which rounded their rows down){changed}. "
                "Resume it with the config and dist_train that saved it, or start a new run"
            )
    if instead:
        raise CheckpointOfAnotherJob(
            f"{path}: the checkpoint holds {_some(instead)}, which this job's model does not: "
            "it is of a model of more layers, whose trained weights this one would drop"
            f"{f' ({since})' if since else ''}. Resume it with the config that saved "
            "it, or start a new run"
        )


def _some(keys: list[str], shown: int = 3) -> str:
    """``keys``, the first ``shown`` of them and how many more."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _load_whole(
    fqn: str, md: Any, dtype: torch.dtype, path: Location, digests: FileDigests | None
) -> torch.Tensor:
    """One saved item (its metadata ``md``) in full, read by this rank alone."""
    whole = torch.empty(tuple(md.size), dtype=dtype)
    dcp.load(
        {fqn: whole},
        storage_reader=checkpoint_reader(path, digests),
        planner=SafeLoadPlanner(),
        no_dist=True,
    )
    return whole


def _column_blocks(chunks: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[int]:
    """Widths of a table's column blocks, left to right, from its shards' (offsets, sizes)."""
    return [width for _, width in sorted({(o[1], s[1]) for o, s in chunks})]


def _saved_blocks(saved: dict[str, Any], param: str) -> list[int] | None:
    """Column block widths of ``param``'s saved weight (None: not in the checkpoint)."""
    weight = saved.get(f"model.{param}")
    if weight is None:
        return None
    return _column_blocks([(tuple(c.offsets), tuple(c.sizes)) for c in weight.chunks])


def _saved_per_row(
    fqn: str,
    md: Any,
    blocks: list[int],
    rows: int,
    dtype: torch.dtype,
    path: Location,
    digests: FileDigests | None,
) -> torch.Tensor:
    """A saved per-row-per-block state as one value per row: the blocks' values averaged,
    weighted by width (exactly the row-wise Adagrad accumulator of the whole row)."""
    if md.size[0] != rows * len(blocks):
        raise CheckpointError(
            f"{path}: {fqn} has {md.size[0]} values; expected one per row per column "
            f"block ({rows} rows x {len(blocks)} blocks)"
        )
    whole = _load_whole(fqn, md, dtype, path, digests)
    widths = torch.tensor(blocks, dtype=torch.float64)
    per_row = (whole.view(len(blocks), rows).double() * widths[:, None]).sum(0)
    return (per_row / widths.sum()).to(dtype)


def _fill_blocks(tensor: Any, per_row: torch.Tensor, rows: int) -> None:
    """Copy one value per row into every column block of a sharded per-row state."""
    for shard in tensor.local_shards():
        (offset,), (size,) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        row = offset % rows  # a shard never spans two column blocks
        shard.tensor.copy_(per_row[row : row + size])


def _reshard_row_states(
    state: dict[str, Any], saved: dict[str, Any], path: Location, digests: FileDigests | None
) -> dict[tuple[str, str], Any]:
    """Load the per-row optimizer states whose block layout differs from the saved one.

    Such entries are removed from ``state`` (DCP cannot map them) and returned, filled:
    one value per row (:func:`_saved_per_row`), copied into every target block.
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
        saved_blocks = _saved_blocks(saved, param)
        if saved_blocks is None:
            continue  # DCP names the missing key when it loads
        for key, tensor in list(entries.items()):
            fqn = f"optim.state.{param}.{key}"
            md = saved.get(fqn)
            if md is None or not hasattr(tensor, "local_shards") or tensor.dim() != 1:
                continue
            if tuple(md.size) == tuple(tensor.shape) and saved_blocks == target_blocks:
                continue  # same layout: DCP reshards it by offsets
            if tensor.shape[0] != rows * len(target_blocks):
                raise CheckpointError(
                    f"{path}: {fqn} has {md.size[0]} values; expected one per row per column "
                    f"block ({rows} rows x {len(saved_blocks)} blocks)"
                )
            per_row = _saved_per_row(fqn, md, saved_blocks, rows, tensor.dtype, path, digests)
            _fill_blocks(tensor, per_row, rows)
            del entries[key]
            out[(param, key)] = tensor
    return out


def _convert_row_states(
    state: dict[str, Any],
    saved: dict[str, Any],
    path: Location,
    digests: FileDigests | None,
    step: int,
) -> dict[tuple[str, str], Any]:
    """Row-wise Adagrad accumulators of a table that moved between data_parallel (TorchRec's
    dense ``RowWiseAdagrad``: ``sum`` [rows, 1] and ``step``) and a sharded type (FBGEMM's
    fused ``<table>.momentum1``: one value per row per column block).

    Such entries are removed from ``state`` and returned, filled: one value per row
    (:func:`_saved_per_row`), copied into every target block.
    """
    out: dict[tuple[str, str], Any] = {}
    for param, entries in list(state["optim"]["state"].items()):
        prefix = f"optim.state.{param}."
        saved_keys = {k[len(prefix) :] for k in saved if k.startswith(prefix)}
        fused_saved = sorted(k for k in saved_keys if k.endswith(".momentum1"))
        if "sum" in entries and "sum" not in saved_keys and fused_saved:
            target = entries.pop("sum")
            entries.pop("step", None)
            rows = target.shape[0]
            fqn = prefix + fused_saved[0]
            blocks = _saved_blocks(saved, param) or [1]
            per_row = _saved_per_row(fqn, saved[fqn], blocks, rows, target.dtype, path, digests)
            target.copy_(per_row[:, None])
            out[(param, "sum")] = target
            out[(param, "step")] = torch.tensor(float(step))
            continue
        for key, tensor in list(entries.items()):
            if not key.endswith(".momentum1") or key in saved_keys or "sum" not in saved_keys:
                continue
            md = saved[prefix + "sum"]
            rows = int(md.size[0])
            _fill_blocks(
                tensor,
                _load_whole(prefix + "sum", md, tensor.dtype, path, digests).reshape(rows),
                rows,
            )
            del entries[key]
            out[(param, key)] = tensor
    return out

"""A sharded table's torch optimizer state as sharded as its weight, for checkpoints.

Tables on TorchRec's dense kernel (embedding Adam on CPU ranks) are stepped by a torch
optimizer over each rank's local slice of the table: its moments are plain tensors of the
local slice's shape, under the table's one key. DCP saves a plain tensor as replicated, one
rank's copy, so a checkpoint of more than one rank held rank 0's moments in place of the
table's and a resume restarted them. Here each such tensor is given DCP as a ShardedTensor
with the weight's placement: every rank's slice is saved at its offsets, and a load
reshards it to any plan or world size, as the weight."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

from dist_train.logs import LOG

# (parameter key, state key, the optimizer's own tensor) of each state given as sharded
Wrapped = list[tuple[str, str, torch.Tensor]]


def placeable(tensor: torch.Tensor, weight: Any) -> bool:
    """Whether ``tensor`` can be placed as ``weight``: a plain tensor of the shape of the
    one shard of ``weight`` (a ShardedTensor) this rank holds."""
    if not isinstance(weight, ShardedTensor) or isinstance(tensor, ShardedTensor):
        return False
    shards = weight.local_shards()
    return len(shards) == 1 and tuple(tensor.shape) == tuple(shards[0].tensor.shape)


def _like_weight(tensor: torch.Tensor, weight: ShardedTensor) -> ShardedTensor:
    """``tensor`` as a ShardedTensor placed as ``weight`` (:func:`placeable`)."""
    shards = weight.local_shards()
    meta = copy.deepcopy(weight.metadata())
    meta.tensor_properties.dtype = tensor.dtype
    meta.tensor_properties.requires_grad = False
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        local_shards=[Shard(tensor, copy.deepcopy(shards[0].metadata))],
        sharded_tensor_metadata=meta,
        process_group=weight._process_group,
    )


def shard_like_weights(state: dict[str, Any], params: list[str] | None = None) -> Wrapped:
    """Replace, in ``state`` (``{"model": ..., "optim": ...}`` state dicts), each optimizer
    state tensor of a sharded weight's local shape (of ``params``, else of every parameter)
    by a ShardedTensor placed as the weight; what was replaced, for :func:`unwrap`."""
    wrapped: Wrapped = []
    for name, entries in state["optim"]["state"].items():
        if params is not None and name not in params:
            continue
        weight = state["model"].get(name)
        for key, tensor in list(entries.items()):
            # FBGEMM's fused state (row-wise Adagrad's momentum1) comes sharded already
            plain = isinstance(tensor, torch.Tensor) and not isinstance(tensor, ShardedTensor)
            if not plain or tensor.dim() == 0:
                continue
            if placeable(tensor, weight):
                entries[key] = _like_weight(tensor, weight)
                wrapped.append((name, key, tensor))
            elif isinstance(weight, ShardedTensor) and tensor.size() != weight.size():
                _warn_once(
                    f"{name}: its optimizer state {key!r} is of this rank's part of the "
                    "table, not of the shard's shape (the rank holds several of its shards?), "
                    "so a checkpoint cannot place it: checkpoints hold one rank's, and a "
                    "resume starts it afresh"
                )
    return wrapped


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        LOG.warning(message)


def unwrap(state: dict[str, Any], wrapped: Wrapped) -> None:
    """Put the optimizer's own tensors back in ``state`` (after a load filled them through
    the ShardedTensors' views): an optimizer loads a state dict of the types it holds."""
    for name, key, tensor in wrapped:
        state["optim"]["state"][name][key] = tensor

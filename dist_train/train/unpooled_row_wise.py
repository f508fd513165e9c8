"""Unpooled row-wise lookups: one vector per id crosses the network, not a global-batch block.

TorchRec's row-wise output dist reduce-scatters, from every rank, pooled partial sums for the
*global* batch (``[world x batch, dims]``), so a rank's bytes grow with the world. Its
sequence (``EmbeddingCollection``) sharding sends one vector per id but still all-to-alls
bucketized KJT lengths of ``world x batch x features`` per rank. For a row-wise table the
planner marks ``row_wise_unpooled`` (planners/types.py), this module replaces both dists of
TorchRec's row-wise sharding, keeping its shards, FBGEMM kernel, fused optimizer and
checkpoint state as they are:

- forward: each rank sends each of its ids to the rank holding its row (an all-to-all of
  per-feature counts, then one of ids); the holder runs TorchRec's own lookup with every
  received id in a bag of its own, and sends the vectors back (all-to-all); the requesting
  rank sums its bags itself;
- backward: autograd sends each id's gradient back the same way, and the fused TBE backward
  sums a row's gradients and updates it, as in pooled row_wise.

Per rank the bytes are ``ids x (8 + dim x 4)`` each way, whatever the world size; only the
counts (``world x features`` int64) grow. The row routing uses the plan's real row boundaries,
so uneven splits work unchanged. Routing is stashed between the input dist and the output
dist of one forward, so TorchRec's pipelines that run input dists ahead are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import nn
from torchrec.distributed.comm_ops import get_gradient_division
from torchrec.distributed.embedding_sharding import EmbeddingShardingContext
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.sharding.rw_sharding import (
    RwPooledEmbeddingSharding,
    get_embedding_shard_metadata,
)
from torchrec.distributed.types import Awaitable, NoWait
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.models.base import scale_grad


@dataclass
class _Routing:
    """Where one forward's ids went: what the output dist needs to bring vectors home."""

    # row of each received id in the lookup output read as [bags x features, dim]; None: the
    # first rows, in order (a sharding of one table)
    lookup_rows: torch.Tensor | None
    num_received: int
    send_splits: list[int]  # ids sent to each rank
    recv_splits: list[int]  # ids received from each rank
    bag_of_sent: torch.Tensor  # local bag (sample x features + feature) of each sent id
    num_features: int
    batch: int


class _RoutingSlot:
    """Hands the routing of a forward from the input dist to the output dist."""

    def __init__(self) -> None:
        self.routing: _Routing | None = None

    def take(self) -> _Routing:
        if self.routing is None:
            raise RuntimeError("unpooled row-wise output dist ran without its input dist")
        routing, self.routing = self.routing, None
        return routing


class _GatherRows(torch.autograd.Function):
    """``x[rows]`` for distinct ``rows``: the backward copies instead of accumulating."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.num_rows = x.shape[0]
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.num_rows, grad.shape[1])
        return out.index_copy_(0, rows, grad), None


class UnpooledInputDist(nn.Module):
    """Sends each id to the rank holding its row; returns the holder's lookup input, one id
    per bag. A table's received ids fill the bags of all its features in turn (every feature
    of a table reads the same rows), so the lookup has as few bags as the ids need, however
    the ids spread over features."""

    def __init__(
        self,
        pg: dist.ProcessGroup,
        row_bounds: list[list[int]],
        features_per_table: list[int],
        slot: _RoutingSlot,
        device: torch.device,
    ) -> None:
        super().__init__()
        self._pg = pg
        self._world = pg.size()
        # features are grouped by table, in TorchRec's order (as ``row_bounds`` lists them)
        sizes = torch.tensor(features_per_table, dtype=torch.int64, device=device)
        self._features_per_table = sizes
        self._first_feature = torch.cumsum(sizes, 0) - sizes
        self._table_of_feature = torch.repeat_interleave(
            torch.arange(len(features_per_table), device=device), sizes
        )
        # rank r holds rows [bounds[r], bounds[r + 1]) of a feature's table; tables with fewer
        # shards than ranks leave the last ranks empty. Features of one table (or of tables
        # split alike) share a row of bounds, so routing takes one search per distinct split.
        padded = [tuple(b + [b[-1]] * (self._world + 1 - len(b))) for b in row_bounds]
        splits = sorted(set(padded))
        self._bounds = torch.tensor(splits, dtype=torch.int64, device=device)
        self._split_of_feature = torch.tensor(
            [splits.index(b) for b in padded], dtype=torch.int64, device=device
        )
        self._slot = slot

    def _owners(self, ids: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        world = self._world
        if len(self._bounds) == 1:
            return torch.searchsorted(self._bounds[0, 1:], ids, right=True).clamp_(max=world - 1)
        split = self._split_of_feature[feature]
        owner = torch.empty_like(ids)
        for s, bounds in enumerate(self._bounds):
            mine = split == s
            owner[mine] = torch.searchsorted(bounds[1:], ids[mine], right=True)
        return owner.clamp_(max=world - 1)

    def forward(self, features: KeyedJaggedTensor) -> Awaitable[Awaitable[KeyedJaggedTensor]]:
        if features.weights_or_none() is not None:
            raise ValueError("unpooled row-wise lookups do not take per-id weights")
        keys, batch = features.keys(), features.stride()
        num_features, world = len(keys), self._world
        ids = features.values().to(torch.int64)
        lengths = features.lengths().to(torch.int64)
        feature_ids = torch.arange(num_features, device=ids.device)
        feature = torch.repeat_interleave(feature_ids, lengths.view(num_features, batch).sum(1))
        owner = self._owners(ids, feature)
        first_row = self._bounds[self._split_of_feature[feature], owner]

        # send ids grouped by owner, then feature; counts first, so receivers size buffers
        bucket = owner * num_features + feature
        send_order = torch.argsort(bucket, stable=True)
        counts = torch.bincount(bucket, minlength=world * num_features)
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self._pg)
        send_splits = counts.view(world, num_features).sum(1).tolist()
        recv_per_rank = recv_counts.view(world, num_features)
        recv_splits = recv_per_rank.sum(1).tolist()
        received = ids.new_empty(sum(recv_splits))
        sent = (ids - first_row)[send_order]  # rows within the holder's shard
        dist.all_to_all_single(received, sent, recv_splits, send_splits, group=self._pg)

        # lookup input: table t's k-th received id goes to bag k // F_t of its (k % F_t)-th
        # feature (F_t features, consecutive), so the lookup output [bags, features x dim],
        # read as rows of dim, holds a one-table sharding's vectors in received order
        recv_table = self._table_of_feature[
            torch.repeat_interleave(feature_ids.repeat(world), recv_counts)
        ]
        one_table = len(self._features_per_table) == 1
        lookup_order = (
            torch.arange(received.numel(), device=ids.device)
            if one_table
            else torch.argsort(recv_table, stable=True)
        )
        per_table = torch.bincount(recv_table, minlength=len(self._features_per_table))
        table_start = torch.cumsum(per_table, 0) - per_table
        width = self._features_per_table
        lookup_batch = max(int(((per_table + width - 1) // width).max()) if num_features else 0, 1)
        # [features, bags]: index into the table-sorted ids of each bag's id, and which bags
        # have one
        feature_table = self._table_of_feature
        slot = feature_ids - self._first_feature[feature_table]
        k = torch.arange(lookup_batch, device=ids.device) * width[feature_table].unsqueeze(1)
        k += slot.unsqueeze(1)
        filled = k < per_table[feature_table].unsqueeze(1)
        values = received[lookup_order][(k + table_start[feature_table].unsqueeze(1))[filled]]
        lookup_rows = None
        if not one_table:
            k_recv = torch.empty_like(lookup_order)
            k_recv[lookup_order] = torch.arange(lookup_order.numel(), device=ids.device)
            k_recv -= table_start[recv_table]
            t_width = width[recv_table]
            lookup_rows = (k_recv // t_width) * num_features + (
                self._first_feature[recv_table] + k_recv % t_width
            )
        # local bag of each own id, sample-major (sample x F + feature) like the output
        kjt_bag = torch.repeat_interleave(
            torch.arange(num_features * batch, device=ids.device), lengths
        )
        bag_of_id = (kjt_bag % batch) * num_features + kjt_bag // batch
        self._slot.routing = _Routing(
            lookup_rows=lookup_rows,
            num_received=received.numel(),
            send_splits=send_splits,
            recv_splits=recv_splits,
            bag_of_sent=bag_of_id[send_order],
            num_features=num_features,
            batch=batch,
        )
        lookup_input = KeyedJaggedTensor(
            keys=keys,
            values=values,
            lengths=filled.to(torch.int32).view(-1),
            stride=lookup_batch,
        )
        return NoWait(NoWait(lookup_input))


class UnpooledOutputDist(nn.Module):
    """Sends each looked-up vector back to the rank that asked for it, which pools its bags;
    returns ``[batch, features x dim]`` like TorchRec's row-wise output dist."""

    def __init__(self, pg: dist.ProcessGroup, dim: int, slot: _RoutingSlot) -> None:
        super().__init__()
        self._pg = pg
        self._dim = dim
        self._slot = slot

    def forward(
        self, local_embs: torch.Tensor, sharding_ctx: EmbeddingShardingContext | None = None
    ) -> Awaitable[torch.Tensor]:
        r = self._slot.take()
        dim = self._dim
        rows = local_embs.view(-1, dim)
        if r.lookup_rows is None:  # one table: the rows are already in received order
            looked_up = rows[: r.num_received]
        else:
            looked_up = cast(torch.Tensor, _GatherRows.apply(rows, r.lookup_rows))
        returned = local_embs.new_empty(sum(r.send_splits), dim)
        returned = dist_autograd.all_to_all_single(
            returned, looked_up, r.send_splits, r.recv_splits, group=self._pg
        )
        pooled = local_embs.new_zeros(r.batch * r.num_features, dim)
        pooled.index_add_(0, r.bag_of_sent, returned)
        # TorchRec's pooled dists divide embedding gradients by the group size (comm_ops
        # GRADIENT_DIVISION, DDP's averaging); so must this one, or updates double
        scale = 1.0 / self._pg.size() if get_gradient_division() else 1.0
        return NoWait(scale_grad(pooled.view(r.batch, r.num_features * dim), scale))


def _table_names(sharding: RwPooledEmbeddingSharding) -> set[str]:
    return {
        t.name
        for group in sharding._grouped_embedding_configs_per_rank[0]
        for t in group.embedding_tables
    }


def _input_dist_factory(
    sharding: RwPooledEmbeddingSharding, slot: _RoutingSlot
) -> Callable[..., Any]:
    def create_input_dist(*args: Any, **kwargs: Any) -> UnpooledInputDist:
        configs = sharding._grouped_embedding_configs_per_rank
        bounds, _ = get_embedding_shard_metadata(configs)
        # the same walk get_embedding_shard_metadata and feature_names() make: groups, tables
        per_table = [t.num_features() for g in configs[0] for t in g.embedding_tables]
        pg = cast(dist.ProcessGroup, sharding._pg)
        return UnpooledInputDist(pg, bounds, per_table, slot, sharding._device)

    return create_input_dist


def enable_unpooled_row_wise(model: nn.Module, tables: Iterable[str]) -> int:
    """Run the row-wise tables ``tables`` (the plan's ``row_wise_unpooled`` ones) with
    unpooled lookups. Call on the sharded model before its first forward, after
    :func:`~dist_train.train.uneven_row_wise.enable_uneven_row_wise` (this replaces the input
    dist it adjusts). Returns the number of row-wise shardings changed."""
    wanted = set(tables)
    patched = 0
    if not wanted:
        return patched
    for sub in model.modules():
        if not isinstance(sub, ShardedEmbeddingBagCollection):
            continue
        for i, sharding in enumerate(sub._embedding_shardings):
            if type(sharding) is not RwPooledEmbeddingSharding:
                continue
            names = _table_names(sharding)
            if not names & wanted:
                continue
            if names - wanted:
                raise ValueError(
                    f"row-wise tables {sorted(names & wanted)} are unpooled and "
                    f"{sorted(names - wanted)} are not: TorchRec runs a module's row-wise "
                    "tables through one output dist, so a plan cannot mix the two"
                )
            dims = set(sharding.embedding_dims())
            if len(dims) != 1:
                raise ValueError(
                    f"unpooled row-wise tables {sorted(names)} need one embedding dim, "
                    f"got {sorted(dims)}"
                )
            if sub._input_dists:
                raise RuntimeError("enable_unpooled_row_wise must run before the first forward")
            slot = _RoutingSlot()
            sharding.create_input_dist = _input_dist_factory(sharding, slot)  # type: ignore[method-assign]
            pg = cast(dist.ProcessGroup, sharding._pg)
            sub._output_dists[i] = UnpooledOutputDist(pg, dims.pop(), slot)
            patched += 1
            wanted -= names
    if wanted:
        raise ValueError(f"tables {sorted(wanted)} are not row-wise tables of the model")
    return patched

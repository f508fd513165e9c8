"""Unpooled row-wise lookups: one vector per id crosses the network, not a global-batch block.

TorchRec's row-wise output dist reduce-scatters, from every rank, pooled partial sums for the
*global* batch (``[world x batch, dims]``), so a rank's bytes grow with the world. Its
sequence (``EmbeddingCollection``) sharding sends one vector per id but still all-to-alls
bucketized KJT lengths of ``world x batch x features`` per rank. For a row-wise table the
planner marks ``row_wise_unpooled`` (planners/types.py), this module replaces both dists of
TorchRec's row-wise sharding, keeping its shards, FBGEMM kernel, fused optimizer and
checkpoint state as they are (which rows a batch asks for, and from whom:
:mod:`dist_train.train.unpooled_asks`):

- forward: each rank asks the rank holding each row its ids read for it, once per distinct
  row (an all-to-all of per-table counts, then one of rows); the holder runs TorchRec's own
  lookup with every asked row in a bag of its own, and sends the vectors back (all-to-all);
  the requesting rank sums its bags itself;
- backward: autograd sends each row's summed gradient back the same way, and the fused TBE
  backward sums a row's gradients and updates it, as in pooled row_wise.

Per rank the bytes are ``distinct rows x (8 + dim x 4)`` each way, whatever the world size;
only the counts (``world x tables`` int64) grow. The row routing uses the plan's real row
boundaries, so uneven splits work unchanged. The input dist's exchanges are asynchronous, in
stages as TorchRec's dists are: in TorchRec's train pipeline (:mod:`dist_train.train.pipelining`)
the next batch's counts travel during this batch's forward and its rows during this batch's
backward; the last stage, in the next batch's own forward, queues the routing its output dist
reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
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

from dist_train.kernels import lookup_input_into
from dist_train.models.base import scale_grad
from dist_train.train.unpooled_asks import Asker, Asks, Bags, Tables

_T = TypeVar("_T")


@dataclass
class _Routing:
    """Where one forward's ids went: what the output dist needs to bring vectors home. Lists
    are per dim group (:attr:`Tables.dim_groups`)."""

    received_per_table: list[int]
    # position of each of the group's received ids (in received order) among its tables'
    # looked-up vectors, table after table; None: already in that order (one table)
    lookup_rows: list[torch.Tensor | None]
    send_splits: list[list[int]]  # rows asked of each rank
    recv_splits: list[list[int]]  # rows asked by each rank
    # requester: how the group's bags (example-major) read the vectors that come back
    bags: list[Bags]
    batch: int
    lookup_batch: int  # rows of the lookup input (and output) this routing goes with


class _RoutingQueue:
    """Hands each batch's routing from its input dist to its output dist. The input dist's
    last stage queues it right before the batch's lookup, in a train pipeline too (TorchRec
    waits that stage in the batch's own forward), so one is in flight at most: a second means
    a forward stopped between the two, and its routing must not reach the next batch."""

    MAX_IN_FLIGHT = 1

    def __init__(self) -> None:
        self._routings: deque[_Routing] = deque()

    def put(self, routing: _Routing) -> None:
        if len(self._routings) >= self.MAX_IN_FLIGHT:
            raise RuntimeError(
                f"unpooled row-wise lookups: {len(self._routings) + 1} batches passed their "
                "input dist without reaching their output dist (a forward was abandoned "
                "midway: drop_routings_in_flight forgets its routing)"
            )
        self._routings.append(routing)

    def clear(self) -> int:
        """Forget the routings of batches that will never reach the output dist; how many."""
        dropped = len(self._routings)
        self._routings.clear()
        return dropped

    def take(self, lookup_batch: int) -> _Routing:
        """The oldest routing; ``lookup_batch``: the lookup output's rows, checked against it."""
        if not self._routings:
            raise RuntimeError("unpooled row-wise output dist ran without its input dist")
        routing = self._routings.popleft()
        if routing.lookup_batch != lookup_batch:
            raise RuntimeError(
                f"unpooled row-wise output dist got a lookup of {lookup_batch} rows for a "
                f"routing of {routing.lookup_batch}: batches reached it out of order"
            )
        return routing


class _AfterExchange(Awaitable[_T]):
    """``then()`` once the asynchronous exchange ``work`` is done: one stage of the input
    dist, run when its caller (or TorchRec's train pipeline) waits for it."""

    def __init__(self, work: dist.Work | None, then: Callable[[], _T]) -> None:
        super().__init__()
        self._work = work
        self._then = then

    def _wait_impl(self) -> _T:
        if self._work is not None:
            self._work.wait()
        return self._then()


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


class _PoolBags(torch.autograd.Function):
    """Each bag's sum of its ids' vectors (``embedding_bag``). The backward is an
    embedding_bag too: each vector sums the gradients of the bags that read it, where
    embedding_bag's own CPU backward sorts the ids every step (measured at the default job's
    102,480 ids: 0.5 against 4.9 ms, one thread)."""

    @staticmethod
    def forward(ctx: Any, vectors: torch.Tensor, bags: Bags) -> torch.Tensor:
        ctx.bags = bags
        return torch.nn.functional.embedding_bag(
            bags.vector_of_id, vectors, bags.offsets, mode="sum"
        )

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        b = ctx.bags
        return (
            torch.nn.functional.embedding_bag(b.bag_by_vector, grad, b.vector_offsets, mode="sum"),
            None,
        )


class _AllToAll(torch.autograd.Function):
    """All-to-all of rows (``send_splits`` rows to each rank); the backward sends the
    gradients back the same way."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        send_splits: list[int],
        recv_splits: list[int],
        pg: dist.ProcessGroup,
    ) -> torch.Tensor:
        ctx.splits, ctx.pg = (send_splits, recv_splits), pg
        out = x.new_empty(sum(recv_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=pg)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        send_splits, recv_splits = ctx.splits
        out = grad.new_empty(sum(send_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), send_splits, recv_splits, group=ctx.pg)
        return out, None, None, None


def lookup_input(
    in_table_order: torch.Tensor,
    per_table: torch.Tensor,
    table_start: torch.Tensor,
    asker: Asker,
    lookup_batch: int,
    compiled: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The holder's lookup input from the received rows, sorted by table (``per_table`` of
    each, from ``table_start``): the values and the lengths (feature-major, ``features x
    lookup_batch`` bags of one row or none) of :class:`UnpooledInputDist`'s layout.
    ``compiled``: one compiled pass (:func:`~dist_train.kernels.lookup_input_into`; None:
    on CPU), or torch ops."""
    table = asker.table_of_feature
    if compiled is None:
        compiled = in_table_order.device.type == "cpu"
    if compiled:
        values = torch.empty_like(in_table_order)
        lengths = torch.empty(table.numel(), lookup_batch, dtype=torch.int32)
        placed = lookup_input_into(
            in_table_order.numpy(),
            per_table.numpy(),
            table_start.numpy(),
            table.numpy(),
            asker.slot_of_feature.numpy(),
            asker.features_per_table.numpy(),
            values.numpy(),
            lengths.numpy(),
        )
        assert placed == values.numel()  # every received row has a bag
        return values, lengths.view(-1)
    # [features, bags]: each bag's place among the table-sorted rows, and which bags have one
    k = torch.arange(lookup_batch, device=in_table_order.device)
    k = k * asker.features_per_table[table].unsqueeze(1) + asker.slot_of_feature.unsqueeze(1)
    filled = k < per_table[table].unsqueeze(1)
    values = in_table_order[(k + table_start[table].unsqueeze(1))[filled]]
    return values, filled.to(torch.int32).view(-1)


class UnpooledInputDist(nn.Module):
    """Asks the rank holding each row for it, once per row however many of this rank's ids
    read it (hot rows repeat: about 4 ids per distinct row in the default job's batches);
    returns the holder's lookup input, one asked row per bag. A table's received rows fill
    the bags of all its features in turn (every feature of a table reads the same rows): its
    k-th row goes to bag k // F_t of its (k % F_t)-th feature, so the table's block of the
    lookup output, read as rows of its dim, holds its vectors in received order, and the
    lookup has as few bags as the rows need."""

    def __init__(
        self,
        pg: dist.ProcessGroup,
        row_bounds: list[list[int]],
        tables: Tables,
        routings: _RoutingQueue,
        device: torch.device,
    ) -> None:
        super().__init__()
        self._pg = pg
        self._asker = Asker(pg.size(), row_bounds, tables, device)
        self._routings = routings

    def forward(self, features: KeyedJaggedTensor) -> Awaitable[Awaitable[KeyedJaggedTensor]]:
        """Staged like TorchRec's input dists: this call asks and starts the per-table
        counts' exchange; the returned awaitable's wait starts the rows' exchange; the next
        one's builds the lookup input. The exchanges run asynchronously in between, so
        TorchRec's train pipeline overlaps them with the current batch's forward and
        backward."""
        if features.variable_stride_per_key():
            raise ValueError("unpooled row-wise lookups need one batch size for every feature")
        keys, batch = features.keys(), features.stride()
        ids = features.values().to(torch.int64)
        lengths = features.lengths().view(len(keys), batch)
        asks = self._asker.ask(ids, lengths, keys)
        recv_counts = torch.empty_like(asks.counts)
        work = dist.all_to_all_single(recv_counts, asks.counts, group=self._pg, async_op=True)
        return _AfterExchange(work, lambda: self._exchange_rows(asks, recv_counts, keys, batch))

    def _exchange_rows(
        self, asks: Asks, recv_counts: torch.Tensor, keys: list[str], batch: int
    ) -> Awaitable[KeyedJaggedTensor]:
        world, num_tables = self._asker.world, len(self._asker.tables.features)
        sent_per_rank = asks.counts.view(world, num_tables)
        recv_per_rank = recv_counts.view(world, num_tables)
        received = asks.rows.new_empty(int(recv_counts.sum()))
        work = dist.all_to_all_single(
            received,
            asks.rows,
            recv_per_rank.sum(1).tolist(),
            sent_per_rank.sum(1).tolist(),
            group=self._pg,
            async_op=True,
        )
        return _AfterExchange(
            work,
            lambda: self._holder_input(
                asks, sent_per_rank, recv_per_rank, recv_counts, received, keys, batch
            ),
        )

    def _holder_input(
        self,
        asks: Asks,
        sent_per_rank: torch.Tensor,
        recv_per_rank: torch.Tensor,
        recv_counts: torch.Tensor,
        received: torch.Tensor,
        keys: list[str],
        batch: int,
    ) -> KeyedJaggedTensor:
        """The lookup input of the class docstring's layout from the received rows (rows
        per rank and table: ``[world, tables]``); queues the routing the output dist of this
        batch needs."""
        world, num_tables = self._asker.world, len(self._asker.tables.features)
        device = received.device
        if num_tables == 1:
            recv_table = None
            lookup_order = None
            per_table = torch.tensor([received.numel()], device=device)
        else:
            recv_table = torch.repeat_interleave(
                torch.arange(num_tables, device=device).repeat(world),
                recv_counts,
                output_size=received.numel(),
            )
            lookup_order = torch.argsort(recv_table, stable=True)
            per_table = torch.bincount(recv_table, minlength=num_tables)
        in_table_order = received if lookup_order is None else received[lookup_order]
        table_start = torch.cumsum(per_table, 0) - per_table
        width = self._asker.features_per_table
        lookup_batch = max(int(((per_table + width - 1) // width).max()) if keys else 0, 1)
        values, lengths = lookup_input(
            in_table_order, per_table, table_start, self._asker, lookup_batch
        )

        # per dim group: the vectors' way back
        received_per_table = per_table.tolist()
        k_recv = None
        if lookup_order is not None:  # each received row's place among its table's rows
            assert recv_table is not None
            k_recv = torch.empty_like(lookup_order)
            k_recv[lookup_order] = torch.arange(lookup_order.numel(), device=device)
            k_recv -= table_start[recv_table]
        lookup_rows: list[torch.Tensor | None] = []
        send_splits, recv_splits = [], []
        for g, group in enumerate(self._asker.tables.dim_groups):
            send_splits.append(sent_per_rank[:, group].sum(1).tolist())
            recv_splits.append(recv_per_rank[:, group].sum(1).tolist())
            if len(group) == 1:
                lookup_rows.append(None)
                continue
            assert k_recv is not None and recv_table is not None  # several tables
            offset = torch.zeros(num_tables, dtype=torch.int64, device=device)
            offset[group] = torch.cumsum(per_table[group], 0) - per_table[group]
            in_group = (self._asker.group_of_table[recv_table] == g).nonzero().squeeze(1)
            lookup_rows.append(offset[recv_table[in_group]] + k_recv[in_group])
        self._routings.put(
            _Routing(
                received_per_table,
                lookup_rows,
                send_splits,
                recv_splits,
                asks.bags,
                batch,
                lookup_batch,
            )
        )
        return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=lookup_batch)


class UnpooledOutputDist(nn.Module):
    """Sends each looked-up vector back to the rank that asked for it, which pools its bags;
    returns ``[batch, sum of feature dims]`` like TorchRec's row-wise output dist."""

    def __init__(self, pg: dist.ProcessGroup, tables: Tables, routings: _RoutingQueue) -> None:
        super().__init__()
        self._pg = pg
        self._tables = tables
        self._routings = routings
        # output columns in feature order: (dim group, place among the group's features)
        self._columns = sorted(
            (f, g, j)
            for g, members in enumerate(tables.features_of_group)
            for j, f in enumerate(members)
        )

    def forward(
        self, local_embs: torch.Tensor, sharding_ctx: EmbeddingShardingContext | None = None
    ) -> Awaitable[torch.Tensor]:
        r = self._routings.take(local_embs.shape[0])
        t = self._tables
        # TorchRec's pooled dists divide embedding gradients by the group size (comm_ops
        # GRADIENT_DIVISION, DDP's averaging); so must this one, or updates double. Each
        # vector's summed gradient is divided, not each bag's: about a third of the values
        # in the default job, and the same result where the size is a power of two.
        scale = 1.0 / self._pg.size() if get_gradient_division() else 1.0
        first_column = t.first_column
        pooled = []
        for g, group in enumerate(t.dim_groups):
            dim = t.dims[group[0]]
            # table i's block of the lookup output, read as rows of its dim: its vectors in
            # the order its ids were received
            blocks = [
                local_embs[:, first_column[i] : first_column[i] + t.features[i] * dim].reshape(
                    -1, dim
                )[: r.received_per_table[i]]
                for i in group
            ]
            looked_up = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
            rows = r.lookup_rows[g]
            if rows is not None:
                looked_up = cast(torch.Tensor, _GatherRows.apply(looked_up, rows))
            # the holder sends back what it received: its receive splits are its send splits
            returned = cast(
                torch.Tensor,
                _AllToAll.apply(looked_up, r.recv_splits[g], r.send_splits[g], self._pg),
            )
            width = len(t.features_of_group[g])
            bags = cast(torch.Tensor, _PoolBags.apply(scale_grad(returned, scale), r.bags[g]))
            pooled.append(bags.view(r.batch, width, dim))
        if len(pooled) == 1:  # one dim: the group's features are all features, in order
            return NoWait(pooled[0].flatten(1))  # [batch, width * dim], of 0 rows too
        return NoWait(torch.cat([pooled[g][:, j] for _, g, j in self._columns], dim=1))


def _table_configs(sharding: RwPooledEmbeddingSharding) -> list[Any]:
    """The sharding's tables in the walk get_embedding_shard_metadata and feature_names()
    make: groups, then tables."""
    return [t for g in sharding._grouped_embedding_configs_per_rank[0] for t in g.embedding_tables]


def _tables_of(sharding: RwPooledEmbeddingSharding) -> Tables:
    configs = _table_configs(sharding)
    return Tables(tuple(t.num_features() for t in configs), tuple(t.local_cols for t in configs))


def _input_dist_factory(
    sharding: RwPooledEmbeddingSharding, tables: Tables, routings: _RoutingQueue
) -> Callable[..., Any]:
    def create_input_dist(*args: Any, **kwargs: Any) -> UnpooledInputDist:
        bounds, _ = get_embedding_shard_metadata(sharding._grouped_embedding_configs_per_rank)
        pg = cast(dist.ProcessGroup, sharding._pg)
        return UnpooledInputDist(pg, bounds, tables, routings, sharding._device)

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
            names = {t.name for t in _table_configs(sharding)}
            if not names & wanted:
                continue
            if names - wanted:
                raise ValueError(
                    f"row-wise tables {sorted(names & wanted)} are unpooled and "
                    f"{sorted(names - wanted)} are not: TorchRec runs a module's row-wise "
                    "tables through one output dist, so a plan cannot mix the two"
                )
            if any(
                g.is_weighted or g.has_feature_processor
                for g in sharding._grouped_embedding_configs
            ):
                raise ValueError(
                    f"row-wise tables {sorted(names)} take per-id weights, which unpooled "
                    "lookups do not carry; plan them as row_wise"
                )
            if sub._input_dists:
                raise RuntimeError("enable_unpooled_row_wise must run before the first forward")
            routings, layout = _RoutingQueue(), _tables_of(sharding)
            sharding.create_input_dist = _input_dist_factory(sharding, layout, routings)  # type: ignore[method-assign]
            pg = cast(dist.ProcessGroup, sharding._pg)
            sub._output_dists[i] = UnpooledOutputDist(pg, layout, routings)
            patched += 1
            wanted -= names
    if wanted:
        raise ValueError(f"tables {sorted(wanted)} are not row-wise tables of the model")
    return patched


def drop_routings_in_flight(model: nn.Module) -> int:
    """Forget the routings of input dists whose batches will not be looked up: a forward
    that raised between its input dist's last stage and its output dist. (Batches a train
    pipeline read ahead leave none: their last stage never ran.) Returns how many were
    dropped."""
    return sum(
        output_dist._routings.clear()
        for sub in model.modules()
        if isinstance(sub, ShardedEmbeddingBagCollection)
        for output_dist in sub._output_dists  # a plain list: not among model.modules()
        if isinstance(output_dist, UnpooledOutputDist)
    )

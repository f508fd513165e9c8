"""The peers ``bench train`` measures us against, written as their users would write them.

- :class:`PlainPyTorch`: the same dense network over ``nn.EmbeddingBag`` tables (one per
  table of the job's layout, ``sparse=True``), the dense network in
  ``DistributedDataParallel``, the tables' sparse gradients all-reduced by hand on more
  than one rank, one gloo sparse all-reduce a table, as DDP runs them; torch's Adagrad
  for the tables (sparse gradients, element-wise state), the job's dense optimizer
  (``train.dense_optimizer``) for the dense network, as our trainer. (DDP over the tables
  too, the first thing a user writes, corrupts the heap in torch 2.13 on CPU: ``malloc():
  unaligned tcache chunk detected`` or a segfault in the backward within a few hundred
  steps, one rank or two, every try here.) With ``exchange="batched"`` the tables'
  gradients travel in one exchange for all tables instead (:func:`mean_over_ranks`): what a
  user who writes the exchange by hand can reach.
- :class:`DenseOnly`: not a peer but the floor under every system's step: the same dense
  network, DDP and dense optimizer over fixed vectors in place of the tables.
- :func:`plain_parquet_batches`: the simplest honest input pipeline with pyarrow: each rank
  reads every ``world``-th row group in file order with ``read_row_group``, converts it in
  the training thread with the job's :class:`BatchBuilder` (the same ids as ours) and
  trains; no prefetch, no shuffling.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterator
from typing import Literal

import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec import KeyedJaggedTensor, KeyedTensor

from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch, BatchBuilder
from dist_train.data.listing import resolve_files
from dist_train.data.rows import Rows
from dist_train.data.stream import rebatch
from dist_train.embedding.init import torch_seed
from dist_train.embedding.layout import EmbeddingLayout
from dist_train.models import CTRModel, create_model
from dist_train.train.trainer import dense_optimizer


class _Pooled(dict[str, torch.Tensor]):
    """Pooled vectors by key, read the way the models read TorchRec's ``KeyedTensor``."""

    def to_dict(self) -> dict[str, torch.Tensor]:
        return self


class EmbeddingBags(nn.Module):
    """One ``nn.EmbeddingBag`` (the layout's pooling, sparse gradients) per table; a KJT key
    reads its table."""

    def __init__(self, layout: EmbeddingLayout) -> None:
        super().__init__()
        self.bags = nn.ModuleDict()
        for t in layout.tables:
            bag = nn.EmbeddingBag(t.num_rows, t.dim, mode=layout.pooling, sparse=True)
            nn.init.uniform_(bag.weight, -0.01, 0.01)
            self.bags[t.name] = bag
        self.table_of = {k.key: k.table for k in layout.keys}

    def forward(self, sparse: KeyedJaggedTensor) -> _Pooled:
        return _Pooled(
            {
                key: self.bags[self.table_of[key]](jt.values(), jt.offsets()[:-1])
                for key, jt in sparse.to_dict().items()
            }
        )


def table_optimizer(cfg: JobConfig, tables: list[nn.Parameter]) -> torch.optim.Optimizer:
    """torch's optimizer of sparse gradients nearest the job's embedding optimizer:
    Adagrad for FBGEMM's row-wise Adagrad (torch has no row-wise one), ``SparseAdam`` for
    Adam, SGD for SGD."""
    o = cfg.embedding.optimizer
    if o.type == "sgd":
        return torch.optim.SGD(tables, lr=o.learning_rate)
    if o.type == "adam":
        return torch.optim.SparseAdam(tables, lr=o.learning_rate, eps=o.eps)
    return torch.optim.Adagrad(tables, lr=o.learning_rate, eps=o.eps)


def _model_over(
    cfg: JobConfig, layout: EmbeddingLayout, tables: Callable[[], nn.Module]
) -> CTRModel:
    """The job's model (our dense network, seeded as the job) over ``tables()``, made after
    it, in place of TorchRec's: what the peer and the dense-alone timing share with our
    trainer."""
    torch.manual_seed(torch_seed(cfg.seed))
    model = create_model(layout, len(cfg.data.resolved_dense_columns()), cfg.model, "meta")
    model.sparse_arch = tables()  # type: ignore[assignment]
    return model


# How the plain-PyTorch peer averages its tables' sparse gradients over the ranks: one gloo
# sparse all-reduce a table, as DDP does, or one exchange for all tables (mean_over_ranks)
PeerExchange = Literal["ddp", "batched"]


class PlainPyTorch:
    """The job's model on plain PyTorch: ``nn.EmbeddingBag`` tables with torch's Adagrad,
    the dense network in DDP with the job's dense optimizer, the tables' gradients averaged
    by ``exchange`` (see the module docstring)."""

    def __init__(
        self, cfg: JobConfig, layout: EmbeddingLayout, exchange: PeerExchange = "ddp"
    ) -> None:
        self.exchange = exchange
        model = _model_over(cfg, layout, lambda: EmbeddingBags(layout))
        tables = {n: p for n, p in model.named_parameters() if n.startswith("sparse_arch.")}
        dense = [p for n, p in model.named_parameters() if n not in tables]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(tables))
        self.model = DistributedDataParallel(model)
        self.tables = list(tables.values())
        self.optimizers = [table_optimizer(cfg, self.tables), dense_optimizer(cfg, dense)]

    def train_step(self, batch: Batch) -> float:
        logits = self.model(batch.dense, batch.sparse)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        for opt in self.optimizers:
            opt.zero_grad()
        loss.backward()
        self._average_table_gradients()
        for opt in self.optimizers:
            opt.step()
        return float(loss.detach())

    def _average_table_gradients(self) -> None:
        """What DDP does for the tables it is kept away from: the mean of the ranks' sparse
        gradients, one gloo sparse all-reduce a table (or one exchange for all tables)."""
        world = dist.get_world_size()
        tables = [t for t in self.tables if t.grad is not None]
        if world == 1 or not tables:  # one rank's mean is its own gradient
            return
        grads = [t.grad.coalesce() for t in tables]  # type: ignore[union-attr]
        if self.exchange == "batched":
            means = mean_over_ranks(grads, world)
        else:
            with _gloo_threads_without_openmp_teams():  # this thread only waits in it
                for grad in grads:
                    dist.all_reduce(grad)
            means = [grad / world for grad in grads]
        for table, mean in zip(tables, means, strict=True):
            table.grad = mean


def mean_over_ranks(grads: list[torch.Tensor], world: int) -> list[torch.Tensor]:
    """The mean over the ranks of each coalesced sparse gradient of ``grads`` (every rank
    the same tables, in the same order, each of one sparse dimension): every rank's rows and
    values gathered from every rank in three all-to-alls for all tables (counts, rows,
    values; what gloo's sparse all-reduce sends, table by table), summed on this thread, so
    that every rank computes the same sum. Gloo's all-to-all of contiguous tensors runs no
    ATen op on gloo's threads."""
    tables = len(grads)
    rows = [g.indices()[0] for g in grads]
    values = [g.values().reshape(-1) for g in grads]  # flat: tables of any width in one
    width = torch.tensor([math.prod(g.shape[1:]) for g in grads])  # elements a row
    counts = torch.empty(world * tables, dtype=torch.int64)
    mine = torch.tensor([r.numel() for r in rows], dtype=torch.int64)
    dist.all_to_all_single(counts, mine.repeat(world))
    per_rank = counts.view(world, tables)  # rows of table t from rank r
    sent_rows, sent_values = torch.cat(rows), torch.cat(values)
    all_rows = sent_rows.new_empty(int(per_rank.sum()))
    dist.all_to_all_single(
        all_rows, sent_rows.repeat(world), per_rank.sum(1).tolist(), [sent_rows.numel()] * world
    )
    elements = per_rank * width
    all_values = sent_values.new_empty(int(elements.sum()))
    dist.all_to_all_single(
        all_values,
        sent_values.repeat(world),
        elements.sum(1).tolist(),
        [sent_values.numel()] * world,
    )
    row_parts = all_rows.split(per_rank.flatten().tolist())  # rank-major, then table
    value_parts = all_values.split(elements.flatten().tolist())
    means = []
    for t, g in enumerate(grads):
        parts = range(t, world * tables, tables)  # table t of rank 0, 1, ...
        summed = torch.sparse_coo_tensor(
            torch.cat([row_parts[i] for i in parts]).unsqueeze(0),
            torch.cat([value_parts[i] for i in parts]).view(-1, *g.shape[1:]),
            g.shape,
            check_invariants=False,  # rows of coalesced gradients: in range
        )
        means.append(summed.coalesce() / world)
    return means


@contextlib.contextmanager
def _gloo_threads_without_openmp_teams() -> Iterator[None]:
    """Torch's thread count at 1 while the block runs.

    Gloo's sparse all-reduce sums on gloo's threads with ATen's parallel ops, and a thread
    takes the process's thread count at its first op: at 2 or more each gloo thread kept an
    OpenMP team, and libgomp, counting more threads than cores, put every worker to sleep
    between parallel regions (docs/performance_log.md, "OpenMP's workers asleep"). Taken at 1,
    gloo's threads run their ops inline for good (as does any thread whose first op falls
    in the block)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _FixedVectors(nn.Module):
    """In place of the tables: the same pooled vectors every step, their gradient computed
    (as for the tables) and dropped."""

    def __init__(self, layout: EmbeddingLayout, batch: int) -> None:
        super().__init__()
        widths = [k.dim for k in layout.keys]
        self.pooled = KeyedTensor(
            keys=layout.key_names,
            length_per_key=widths,
            values=torch.rand(batch, sum(widths), requires_grad=True),
        )

    def forward(self, sparse: KeyedJaggedTensor) -> KeyedTensor:
        self.pooled.values().grad = None
        return self.pooled


class DenseOnly:
    """The job's dense network alone: the model over fixed vectors in place of the tables,
    in DDP on more than one rank (torch's defaults, as the ``pytorch`` peer; TorchRec's
    wrapper views gradients as buckets, a few hundred KB less copying here) and bare on one
    (as :class:`~dist_train.train.dense_parallel.OneRankDense`), the job's dense optimizer. What a
    step costs without embeddings: no system's step can be shorter."""

    def __init__(self, cfg: JobConfig, layout: EmbeddingLayout) -> None:
        model = _model_over(cfg, layout, lambda: _FixedVectors(layout, cfg.train.batch_size))
        self.model = DistributedDataParallel(model) if dist.get_world_size() > 1 else model
        self.optimizer = dense_optimizer(cfg, model.parameters())

    def train_step(self, batch: Batch) -> float:
        logits = self.model(batch.dense, batch.sparse)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def plain_parquet_batches(path: str, builder: BatchBuilder, batch_size: int) -> Generator[Batch]:
    """This rank's full batches: every ``world``-th row group of ``path``'s files, in order,
    each read, checked and decoded whole, then cut into batches (a batch that spans two row
    groups joins their rows)."""
    rank, world = dist.get_rank(), dist.get_world_size()

    def groups() -> Iterator[tuple[Rows, str]]:
        index = 0
        for file in resolve_files(path):
            parquet = pq.ParquetFile(file)
            for group in range(parquet.num_row_groups):
                index += 1
                if (index - 1) % world == rank:
                    table = parquet.read_row_group(group, columns=builder.columns)
                    yield builder.rows(table, file), file

    for rows, _ in rebatch(groups(), batch_size):
        yield builder.to_batch(rows)

"""A shared table's sum-pooled lookup on CPU and its backward fused with the row-wise Adagrad
update, in C (``_table_rows.c``), in place of FBGEMM's kernels for the same update.

:class:`~dist_train.train.shared_tables.OneFeatureFusedEmbeddingBag` hands FBGEMM a table's
bags as one feature's; where :func:`applies` holds it runs :class:`TableRows` instead, on
the same weights and optimizer state (FBGEMM's ``weights_host`` and ``momentum1_host``:
checkpoints, resharding and the fused optimizer see no difference). The rows come out as
FBGEMM's up to the order and fusion of float operations (a test compares them); what it
buys is in docs/benchmarks.md, "The shared table's lookup and update in C".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

_native: ModuleType | None
try:
    from dist_train.train import _table_rows as _native
except ImportError:  # built without a C compiler (setup.py): FBGEMM's kernels run
    _native = None


# Tables of more rows a rank keep FBGEMM's kernels: the update's slot per row grows with
# the table (4 bytes a row), and it reads and writes rows in the order the batch first reads
# them, where FBGEMM's follow the sorted ids. Step A/Bs on one rank (ad hoc,
# docs/benchmarks.md), FBGEMM's step over this one's: 1.067 at 4,000,000 x 64 rows, 1.036
# at 8,000,000 x 64, 1.09 at 16,000,000 x 16, the largest measured.
MAX_ROWS = 16_000_000
# Wider rows keep FBGEMM's kernels too: at 128 floats `dist-train bench kernel` measured
# FBGEMM's one-feature kernel over this one 0.74-1.17 (this one the slower in 4 of 6 cases:
# FBGEMM's update walks the rows in sorted order); at 64, 0.93-1.44, and the trainer's step
# measured this one the faster at 64 (docs/benchmarks.md).
MAX_DIM = 64


def applies(tbe: SplitTableBatchedEmbeddingBagsCodegen) -> bool:
    """Whether :class:`TableRows` computes what ``tbe`` would, and is measured to be the
    faster: one float32 table on CPU of at most :data:`MAX_ROWS` rows of at most
    :data:`MAX_DIM` floats, sum pooling, exact row-wise Adagrad with none of its options
    (weight decay, clipping, max norm, counters, regularization), the C extension built."""
    args = tbe.optimizer_args
    return (
        _native is not None
        and tbe.use_cpu
        and len(tbe.embedding_specs) == 1
        and tbe.embedding_specs[0][0] <= MAX_ROWS
        and tbe.embedding_specs[0][1] <= MAX_DIM
        and tbe.optimizer == EmbOptimType.EXACT_ROWWISE_ADAGRAD
        and tbe.weights_host.dtype == torch.float32
        and tbe.momentum1_host.dtype == torch.float32
        and tbe.output_dtype == 0  # SparseType.FP32.as_int()
        and tbe.pooling_mode == PoolingMode.SUM
        and not args.gradient_clipping
        and args.max_norm == 0.0
        and args.weight_decay == 0.0
        and args.weight_decay_mode == 0
        and args.regularization_mode == 0
        and not tbe._used_rowwise_adagrad_with_counter
        and not getattr(tbe, "_used_rowwise_adagrad_with_global_weight_decay", False)
        and tbe.weights_host.numel() == tbe.embedding_specs[0][0] * tbe.embedding_specs[0][1]
        and tbe.momentum1_host.numel() == tbe.embedding_specs[0][0]
    )


class TableRows:
    """The lookup of ``tbe``'s one table by ``num_features`` features, each bag pooled into
    its row of ``[batch, num_features x dim]``; the backward updates the table in place."""

    def __init__(self, tbe: SplitTableBatchedEmbeddingBagsCodegen, num_features: int) -> None:
        if not applies(tbe):
            raise ValueError("TableRows: the table's kernel has options it does not implement")
        self.tbe = tbe
        self.num_features = num_features
        self.rows, self.dim = int(tbe.embedding_specs[0][0]), int(tbe.embedding_specs[0][1])
        # the update's scratch, allocated once (grown with the batch): one slot per row, -1
        # between calls (4 bytes a row, a sixteenth of a dim-16 table's weights), and a few
        # ids' worth per id and thread
        self.slot = torch.full((self.rows,), -1, dtype=torch.int32)
        self.scratch = torch.empty(0, dtype=torch.int32)

    def __call__(self, features: KeyedJaggedTensor, table: str) -> torch.Tensor:
        batch = features.stride()
        ids = features.values().to(torch.int64).contiguous()
        offsets = features.offsets().to(torch.int64).contiguous()
        if offsets.numel() != self.num_features * batch + 1:
            raise ValueError(
                f"table {table}: {offsets.numel() - 1} bags, expected {self.num_features} "
                f"features x {batch} examples"
            )
        out: torch.Tensor = _PooledRows.apply(
            self.tbe.placeholder_autograd_tensor, self, ids, offsets, batch, table
        )
        # FBGEMM's counters, as its forward keeps them (iter_cpu catches up with a loaded
        # iter first)
        tbe = self.tbe
        tbe.step += 1
        if int(tbe.iter_cpu.item()) == 0:
            tbe.iter_cpu.fill_(int(tbe.iter.item()))
        tbe.iter_cpu.add_(1)
        tbe.iter.add_(1)
        return out


def refuse_ids_outside(ids: torch.Tensor, rows: int, table: str) -> None:
    """Raise ``ValueError`` naming ``table`` if an id is negative or ``rows`` or more."""
    if ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= rows:
        outside = ids[(ids < 0) | (ids >= rows)]
        raise ValueError(
            f"table {table}: {outside.numel()} id(s) of this batch outside its {rows:,} rows on "
            f"this rank (first: {int(outside[0])}); the ids reaching a table are its rows, so "
            "these were probably not hashed or routed for it"
        )


class _PooledRows(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        placeholder: torch.Tensor,
        rows: TableRows,
        ids: torch.Tensor,
        offsets: torch.Tensor,
        batch: int,
        table: str,
    ) -> torch.Tensor:
        assert _native is not None
        out = torch.empty(batch, rows.num_features * rows.dim, dtype=torch.float32)
        outside = _native.pool(
            ids.data_ptr(), offsets.data_ptr(), rows.num_features, batch,
            rows.tbe.weights_host.data_ptr(), rows.rows, rows.dim,
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if outside:
            refuse_ids_outside(ids[: int(offsets[-1])], rows.rows, table)
            raise AssertionError(f"table {table}: the lookup counted {outside} id(s) outside")
        ctx.rows, ctx.batch = rows, batch
        ctx.save_for_backward(ids, offsets)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        assert _native is not None
        rows: TableRows = ctx.rows
        ids, offsets = ctx.saved_tensors
        grad = grad.to(torch.float32).contiguous()
        tbe = rows.tbe
        threads = torch.get_num_threads()
        needed = _native.scratch_size(int(offsets[-1]), threads)
        if rows.scratch.numel() < needed:
            rows.scratch = torch.empty(needed, dtype=torch.int32)
        _native.update(
            ids.data_ptr(), offsets.data_ptr(), rows.num_features, ctx.batch,
            grad.data_ptr(), tbe.weights_host.data_ptr(), tbe.momentum1_host.data_ptr(),
            rows.rows, rows.dim, tbe.get_learning_rate(), tbe.optimizer_args.eps,
            rows.slot.data_ptr(), rows.scratch.data_ptr(), rows.scratch.numel(), threads,
        )  # fmt: skip
        return (None,) * 6

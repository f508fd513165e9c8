"""Sum-pooled lookups of an FBGEMM kernel's tables on CPU and their backward fused with the
row-wise Adagrad update, in C (``_table_rows.c``), in place of FBGEMM's kernels for the same
update.

Two kinds of kernel run it, on the same weights and optimizer state as FBGEMM's
(``weights_host`` and ``momentum1_host``: checkpoints, resharding and the fused optimizer
see no difference):

- a table several features share, which
  :class:`~dist_train.train.shared_tables.OneFeatureFusedEmbeddingBag` hands FBGEMM as one
  feature's (the unified table);
- a kernel of tables each read by its own features
  (:class:`~dist_train.train.tables_in_c.TablesInCFusedEmbeddingBag`: a rank's tables of
  one table per feature, as ``hashing_trick`` jobs have).

Where :func:`applies` holds, :class:`TableRows` runs instead of FBGEMM's kernels. The rows
come out as FBGEMM's up to the order and fusion of float operations (tests compare them);
what it buys is in docs/performance_log.md, "The shared table's lookup and update in C" and "A
rank's per-feature tables in C".
"""

from __future__ import annotations

from collections.abc import Sequence
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
# docs/performance_log.md), FBGEMM's step over this one's: 1.067 at 4,000,000 x 64 rows, 1.036
# at 8,000,000 x 64, 1.09 at 16,000,000 x 16, the largest measured. (Measured with the update
# that gathered each row's gradients, before 3529fdd; not measured again since. The update's
# scratch now also holds a gradient sum per distinct row a thread may meet: (dim + 1) x 4
# bytes each, up to the fewer of the batch's ids and the rows a thread owns.)
MAX_ROWS = 16_000_000
# Wider rows keep FBGEMM's kernels too: at 128 floats `dist-train bench kernel` measured
# FBGEMM's one-feature kernel over this one 0.74-1.17 (this one the slower in 4 of 6 cases:
# FBGEMM's update walks the rows in sorted order); at 64, 0.93-1.44, and the trainer's step
# measured this one the faster at 64 (docs/performance_log.md).
MAX_DIM = 64


def applies(tbe: SplitTableBatchedEmbeddingBagsCodegen) -> bool:
    """Whether :class:`TableRows` computes what ``tbe`` would, and is measured to be the
    faster: float32 tables on CPU of 1 to :data:`MAX_ROWS` rows (a row-wise shard of a table
    of fewer rows than ranks holds none) of at most :data:`MAX_DIM` floats each, each read
    by a run of consecutive features, sum pooling, exact row-wise Adagrad with none of its
    options (weight decay, clipping, max norm, counters, regularization), the C extension
    built."""
    args = tbe.optimizer_args
    specs = tbe.embedding_specs
    return (
        _native is not None
        and tbe.use_cpu
        and len(specs) >= 1
        and all(1 <= rows <= MAX_ROWS and 1 <= dim <= MAX_DIM for rows, dim, *_ in specs)
        and list(tbe.feature_table_map) == sorted(tbe.feature_table_map)
        and set(tbe.feature_table_map) == set(range(len(specs)))
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
        and tbe.weights_host.numel() == sum(rows * dim for rows, dim, *_ in specs)
        and tbe.momentum1_host.numel() == sum(rows for rows, *_ in specs)
    )


class TableRows:
    """The lookup of ``tbe``'s tables (``names``), each bag pooled into its feature's columns
    of ``[batch, total width]`` in feature order; the backward updates the tables in place.
    ``features_per_table``: how many consecutive features read each table; None: as
    ``tbe.feature_table_map`` says (a table FBGEMM reads as one feature but several share
    passes its count)."""

    def __init__(
        self,
        tbe: SplitTableBatchedEmbeddingBagsCodegen,
        names: Sequence[str],
        features_per_table: Sequence[int] | None = None,
    ) -> None:
        if not applies(tbe):
            raise ValueError(
                "TableRows: the kernel is not one it computes (applies: float32 CPU tables of at "
                f"most {MAX_ROWS:,} rows of at most {MAX_DIM} floats, each read by a run of "
                "features in order, sum pooling, exact row-wise Adagrad without options it does "
                "not implement, the C extension built)"
            )
        specs = tbe.embedding_specs
        if features_per_table is None:
            features_per_table = [list(tbe.feature_table_map).count(t) for t in range(len(specs))]
        if len(names) != len(specs) or len(features_per_table) != len(specs):
            raise ValueError(
                f"TableRows: {len(specs)} tables in the kernel, {len(names)} names and "
                f"{len(features_per_table)} feature counts"
            )
        self.tbe = tbe
        self.names = list(names)
        self.rows = [int(rows) for rows, *_ in specs]
        self.dims = [int(dim) for _, dim, *_ in specs]
        info, feature, column = [], 0, 0
        for t, count in enumerate(features_per_table):
            info.append(
                [
                    int(tbe.weights_physical_offsets[t]),
                    int(tbe.momentum1_physical_offsets[t]),
                    self.rows[t],
                    self.dims[t],
                    feature,
                    count,
                    column,
                ]
            )
            feature += count
            column += count * self.dims[t]
        self.num_features, self.width = feature, column
        self.features = [(row[4], row[5]) for row in info]  # per table: first, how many
        self.tables = torch.tensor(info, dtype=torch.int64)  # _table_rows.c's Table fields
        # the update's scratch, allocated once (grown with the batch): one slot per row of the
        # largest table, -1 between calls (4 bytes a row, a sixteenth of a dim-16 table's
        # weights), and per thread a distinct row and a gradient sum for each of a table's
        # distinct rows
        self.slot = torch.full((max(self.rows),), -1, dtype=torch.int32)
        self.scratch = torch.empty(0, dtype=torch.int32)

    def __call__(self, features: KeyedJaggedTensor) -> torch.Tensor:
        batch = features.stride()
        ids = features.values().to(torch.int64).contiguous()
        offsets = features.offsets().to(torch.int64).contiguous()
        if offsets.numel() != self.num_features * batch + 1:
            raise ValueError(
                f"tables {', '.join(self.names)}: {offsets.numel() - 1} bags, expected "
                f"{self.num_features} features x {batch} examples"
            )
        out: torch.Tensor = _PooledRows.apply(
            self.tbe.placeholder_autograd_tensor, self, ids, offsets, batch
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

    def refuse_ids_outside(self, ids: torch.Tensor, offsets: torch.Tensor, batch: int) -> None:
        """Raise ``ValueError`` naming the first table a batch's id falls outside of."""
        for name, rows, (first, count) in zip(self.names, self.rows, self.features, strict=True):
            lo, hi = int(offsets[first * batch]), int(offsets[(first + count) * batch])
            refuse_ids_outside(ids[lo:hi], rows, name)


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
    ) -> torch.Tensor:
        assert _native is not None
        out = torch.empty(batch, rows.width, dtype=torch.float32)
        outside = _native.pool(
            ids.data_ptr(), ids.numel(), offsets.data_ptr(), rows.tables.data_ptr(),
            len(rows.names), rows.num_features, batch, rows.tbe.weights_host.data_ptr(),
            out.data_ptr(), rows.width, torch.get_num_threads(),
        )  # fmt: skip
        if outside:
            rows.refuse_ids_outside(ids, offsets, batch)
            raise AssertionError(
                f"tables {', '.join(rows.names)}: the lookup counted {outside} id(s) outside"
            )
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
        needed = _native.scratch_size(int(offsets[-1]), max(rows.rows), threads, max(rows.dims))
        if rows.scratch.numel() < needed:
            rows.scratch = torch.empty(needed, dtype=torch.int32)
        _native.update(
            ids.data_ptr(), ids.numel(), offsets.data_ptr(), rows.tables.data_ptr(),
            len(rows.names), rows.num_features, ctx.batch, grad.data_ptr(), rows.width,
            tbe.weights_host.data_ptr(), tbe.momentum1_host.data_ptr(),
            tbe.get_learning_rate(), tbe.optimizer_args.eps, rows.slot.data_ptr(),
            rows.slot.numel(), rows.scratch.data_ptr(), rows.scratch.numel(), threads,
        )  # fmt: skip
        return (None,) * 5

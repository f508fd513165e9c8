"""A table several features share, looked up as one feature's: FBGEMM's parallel CPU backward.

FBGEMM's CPU backward with the fused row-wise Adagrad runs its generated kernels, split over
threads, only for a table one feature reads. For a table several features share (a unified
table: every feature reads it) it takes a serial scalar loop (``is_shared_table`` in
``embedding_backward_split_cpu_template.cpp``): on one rank of the default job that loop was
the longest single op of the step's backward.

The bags of ``F`` features over a batch of ``B`` are the bags of one feature over ``F x B``.
For each CPU kernel that holds one table and several features,
:func:`read_shared_tables_as_one_feature` declares the table read by one feature (FBGEMM's
per-feature buffers cut to the first feature's, which every feature of the table shares), and
its lookup hands the kernel the bags example by example (bag ``b x F + f``,
:mod:`dist_train.train.bag_order`). The one feature's pooled output ``[B x F, D]`` is then,
unchanged in memory, the ``[B, F x D]`` TorchRec's dists expect, and the gradient comes back
in that layout without a copy. Weights, optimizer state and checkpoints are untouched: they
live in the table's storage, whose offsets are per table. Kernels of several tables keep
FBGEMM's shared path, so the trainer's sharder gives each table of a job with shared tables
a kernel of its own on CPU (``use_one_tbe_per_table``,
:func:`dist_train.train.sharding.make_sharder`).

The converted kernel checks its ids itself, one ``aminmax`` over the batch, and refuses an id
outside its rows with an error naming the table. FBGEMM's own check (``bounds_check_indices``,
about 3% of a one-rank step) is off for it: in TorchRec's default mode that check does not
refuse such an id, it reads and updates row 0 in its place and logs an error line.

Where :func:`~dist_train.train.table_rows.applies` holds (the default options, a table of at
most 16,000,000 rows a rank of at most 64 floats), the converted kernel runs neither FBGEMM's
kernels nor the example-major pass: :class:`~dist_train.train.table_rows.TableRows` looks up
the bags as the KJT holds them and updates the rows in C, on the same weights and state.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torch import nn
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.train.bag_order import example_major_bags
from dist_train.train.lookups import lookup_modules, plain_fused_cpu_kernel
from dist_train.train.table_rows import TableRows, applies, refuse_ids_outside


class OneFeatureFusedEmbeddingBag(BatchedFusedEmbeddingBag):
    """TorchRec's fused CPU kernel of one table that ``num_features`` features share, whose
    FBGEMM module reads the table as one feature (:func:`read_shared_tables_as_one_feature`
    turns a :class:`BatchedFusedEmbeddingBag` into this class in place)."""

    num_features: int
    table_rows: TableRows | None  # the C lookup and update, where it applies

    def forward(  # type: ignore[override]
        self, features: KeyedJaggedTensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if features.variable_stride_per_key() or args or kwargs:
            raise ValueError(
                f"table {self._config.embedding_tables[0].name}: a shared table read as one "
                "feature needs one batch size for every feature (no variable batch sizes)"
            )
        batch = features.stride()
        weights = features.weights_or_none()
        if weights is not None and not weights.is_floating_point():
            weights = None  # as TorchRec's kernel: integer weights are not per-id weights
        if self.table_rows is not None and weights is None:
            return self.table_rows(features)
        bags = example_major_bags(features.lengths(), features.values(), batch, weights)
        refuse_ids_outside(
            bags.values[: int(bags.offsets[-1])],  # what FBGEMM reads of them
            self.emb_module.embedding_specs[0][0],  # the rows of the table's shard here
            self._config.embedding_tables[0].name,
        )
        pooled = self.emb_module(
            indices=bags.values.to(self._embedding_table_index_type),
            offsets=bags.offsets.to(self._embedding_table_offset_type),
            per_sample_weights=bags.weights,
        )
        return pooled.view(batch, self.num_features * pooled.shape[1])


def _as_one_feature(tbe: SplitTableBatchedEmbeddingBagsCodegen) -> None:
    """Re-declare ``tbe``'s one table as read by one feature: every buffer FBGEMM's constructor
    derives from ``feature_table_map`` as it would derive it for ``[0]`` (a test compares the
    result with a module built that way)."""
    if len(tbe.embedding_specs) != 1:
        raise ValueError(f"expected a kernel of one table, got {len(tbe.embedding_specs)}")
    first = slice(0, 1)
    for name in list(vars(tbe)):
        if name.endswith("_physical_offsets"):  # one state per table (weights, momentum1, ...)
            prefix = name.removesuffix("_physical_offsets")
            for buffer in (f"{prefix}_offsets", f"{prefix}_placements"):
                setattr(tbe, buffer, getattr(tbe, buffer)[first].clone())
    tbe.feature_table_map = [0]
    tbe.D_offsets = tbe.D_offsets[:2].clone()
    tbe.total_D = int(tbe.D_offsets[1])
    hash_size_cumsum = tbe.hash_size_cumsum
    tbe.hash_size_cumsum = torch.cat([hash_size_cumsum[:1], hash_size_cumsum[-1:]])
    tbe.rows_per_table = tbe.rows_per_table[first].clone()
    tbe.feature_dims = tbe.feature_dims[first].clone()
    tbe.info_B_num_bits, tbe.info_B_mask = torch.ops.fbgemm.get_infos_metadata(tbe.D_offsets, 1, 1)


def _convertible(kernel: BatchedFusedEmbeddingBag) -> bool:
    """One table several features share, in a plain fused CPU kernel (the bag permutation
    has no backward for the ids' weights)."""
    tables = kernel.config.embedding_tables
    return len(tables) == 1 and tables[0].num_features() > 1 and plain_fused_cpu_kernel(kernel)


def read_shared_tables_as_one_feature(model: nn.Module, c_kernels: bool = True) -> list[str]:
    """Turn every fused CPU kernel of ``model`` (sharded, before its first forward) that holds
    one table several features share into a :class:`OneFeatureFusedEmbeddingBag`, its lookup
    and update in C where :func:`~dist_train.train.table_rows.applies` holds and ``c_kernels``
    (else FBGEMM's on the example-major bags). Returns the tables changed."""
    changed = []
    for module in lookup_modules(model):
        # exactly this class: its subclass (fully sharded 2D) runs another forward
        if type(module) is not BatchedFusedEmbeddingBag:
            continue
        kernel = cast(BatchedFusedEmbeddingBag, module)
        if not _convertible(kernel):
            continue
        if kernel.emb_module.step != 0:
            raise RuntimeError("read_shared_tables_as_one_feature must run before the first step")
        _as_one_feature(kernel.emb_module)
        # in place: TorchRec's lookup, fused optimizer and state dict keep their references
        kernel.__class__ = OneFeatureFusedEmbeddingBag
        one = cast(OneFeatureFusedEmbeddingBag, kernel)
        one.num_features = kernel.config.embedding_tables[0].num_features()
        tbe = kernel.emb_module
        name = kernel.config.embedding_tables[0].name
        one.table_rows = (
            TableRows(tbe, [name], [one.num_features]) if c_kernels and applies(tbe) else None
        )
        # the forward checks every id (refuse_ids_outside)
        kernel.emb_module.bounds_check_mode_int = BoundsCheckMode.NONE.value
        changed.append(kernel.config.embedding_tables[0].name)
    return changed

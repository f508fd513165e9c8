"""A rank's kernel of per-feature tables run by the C lookup and update, not FBGEMM's.

A ``hashing_trick`` job (one table per feature) gives each rank one fused CPU kernel holding
all the tables placed there, table_wise at the default job's 2 and 4 ranks. FBGEMM's CPU
kernel checks the batch's ids (``bounds_check_indices``), pools the bags, and in the backward
sorts the ids before its row-wise Adagrad update. :class:`~dist_train.train.table_rows.TableRows`
computes the same in C on the same weights and state, the bags read in place
(docs/performance_log.md, "A rank's per-feature tables in C").

:func:`run_tables_in_c` turns each such kernel into a :class:`TablesInCFusedEmbeddingBag` in
place, where :func:`~dist_train.train.table_rows.applies` holds; ``sharding.kernels: fbgemm``
keeps FBGEMM's kernels (what ``bench train``'s stock TorchRec peer runs).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.train.bag_order import refuse_offsets_not_counting
from dist_train.train.lookups import lookup_modules, plain_fused_cpu_kernel
from dist_train.train.table_rows import TableRows, applies


class TablesInCFusedEmbeddingBag(BatchedFusedEmbeddingBag):
    """TorchRec's fused CPU kernel whose lookup and update run in C (:class:`TableRows`)."""

    table_rows: TableRows

    def forward(  # type: ignore[override]
        self, features: KeyedJaggedTensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if features.variable_stride_per_key() or args or kwargs:
            names = ", ".join(self.table_rows.names)
            raise ValueError(
                f"tables {names}: the C lookup needs one batch size for every feature (no "
                "variable batch sizes); sharding.kernels=fbgemm runs FBGEMM's kernel"
            )
        weights = features.weights_or_none()
        if weights is not None and weights.is_floating_point():
            # per-id weights, which TorchRec hands its kernel even where the tables are not
            # declared weighted: FBGEMM's kernel takes them (its bounds check is off: ours runs)
            values, offsets = features.values(), features.offsets()
            refuse_offsets_not_counting(offsets, values.numel())
            self.table_rows.refuse_ids_outside(values, offsets, features.stride())
            return cast(torch.Tensor, super().forward(features))
        return self.table_rows(features)


def run_tables_in_c(model: nn.Module) -> list[str]:
    """Turn every fused CPU kernel of ``model`` (sharded, before its first forward) whose
    tables are each read by features of their own, and which :class:`TableRows` computes,
    into a :class:`TablesInCFusedEmbeddingBag`. Returns the tables changed. Run after
    :func:`~dist_train.train.shared_tables.read_shared_tables_as_one_feature`, which takes
    the kernels of a shared table."""
    changed = []
    for module in lookup_modules(model):
        # exactly this class: subclasses (a shared table read as one feature, fully sharded
        # 2D) run another forward
        if type(module) is not BatchedFusedEmbeddingBag:
            continue
        kernel = cast(BatchedFusedEmbeddingBag, module)
        tbe = kernel.emb_module
        if not (plain_fused_cpu_kernel(kernel) and applies(tbe)):
            continue
        if tbe.step != 0:
            raise RuntimeError("run_tables_in_c must run before the first step")
        names = [t.name for t in kernel.config.embedding_tables]
        # in place: TorchRec's lookup, fused optimizer and state dict keep their references
        kernel.__class__ = TablesInCFusedEmbeddingBag
        cast(TablesInCFusedEmbeddingBag, kernel).table_rows = TableRows(tbe, names)
        # the C lookup checks every id and refuses one outside its table
        tbe.bounds_check_mode_int = BoundsCheckMode.NONE.value
        changed.extend(names)
    return changed

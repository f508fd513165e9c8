"""Walking a sharded model's embedding lookups, which ``nn.Module.modules()`` does not reach,
and which of their kernels the project's own lookups may take over."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag


def lookup_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model``, and of its sharded modules' lookups: TorchRec keeps those in
    plain lists (``_lookups``), outside ``modules()``; ``DMPCollection`` walks them the same
    way. Each module once."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(reversed(list(module.children())))
        stack.extend(reversed(getattr(module, "_lookups", None) or []))


def plain_fused_cpu_kernel(kernel: BatchedFusedEmbeddingBag) -> bool:
    """A fused CPU kernel with none of the options whose state or inputs are per feature
    (FBGEMM's input multiplexer and write-back hook, TorchRec's raw-id tracking) or that need
    gradients through the ids' weights: what the project's lookups
    (:mod:`~dist_train.train.shared_tables`, :mod:`~dist_train.train.tables_in_c`) may
    replace."""
    config, tbe = kernel.config, kernel.emb_module
    return (
        tbe.use_cpu
        and not (config.is_weighted or config.has_feature_processor)
        and tbe.tbe_input_multiplexer is None
        and not tbe.use_writeback_bwd_prehook
        and getattr(kernel, "_raw_id_tracker_wrapper", None) is None
    )

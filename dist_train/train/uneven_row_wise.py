"""Uneven row-wise splits in training.

TorchRec's training input dist for row-wise tables (``RwSparseFeaturesDist``) routes id ``i``
to rank ``i // ceil(rows / world)``: it assumes the even split. FBGEMM's bucketize kernel also
takes explicit per-feature row boundaries (``block_bucketize_row_pos``, which TorchRec's
inference path uses for uneven shards); handing it the plan's boundaries routes every id to the
rank that holds its row and makes it local to that shard. This is checked numerically against
a one-process run in ``tests/test_planner_runs.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.sharding.rw_sharding import (
    RwPooledEmbeddingSharding,
    RwSparseFeaturesDist,
    get_embedding_shard_metadata,
)


def _with_row_boundaries(
    create: Callable[..., Any], boundaries: list[torch.Tensor]
) -> Callable[..., Any]:
    def create_input_dist(*args: Any, **kwargs: Any) -> Any:
        input_dist = create(*args, **kwargs)
        assert isinstance(input_dist, RwSparseFeaturesDist)
        input_dist.zch_bucketize_row_pos = boundaries
        return input_dist

    return create_input_dist


def enable_uneven_row_wise(model: nn.Module) -> int:
    """Route ids of unevenly split row-wise tables by their real row boundaries.

    Call on the sharded model before its first forward (input dists are built lazily then).
    Returns the number of row-wise shardings that needed it.
    """
    patched = 0
    for sub in model.modules():
        if not isinstance(sub, ShardedEmbeddingBagCollection):
            continue
        for sharding in sub._embedding_shardings:
            if type(sharding) is not RwPooledEmbeddingSharding:
                continue
            per_feature, even = get_embedding_shard_metadata(
                sharding._grouped_embedding_configs_per_rank
            )
            if even:
                continue
            if sub._input_dists:
                raise RuntimeError("enable_uneven_row_wise must run before the first forward")
            device = getattr(sharding, "_device", None)
            boundaries = [torch.tensor(b, dtype=torch.int64, device=device) for b in per_feature]
            sharding.create_input_dist = _with_row_boundaries(  # type: ignore[method-assign]
                sharding.create_input_dist, boundaries
            )
            patched += 1
    return patched

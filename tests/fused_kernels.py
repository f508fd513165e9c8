"""TorchRec's fused CPU embedding kernels built directly, as a sharded model's lookup holds
them, for tests of the kernels that replace their lookup (shared tables, tables in C); and
one step of the C update at several thread counts, for the tests that compare them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch.distributed._shard.metadata import ShardMetadata
from torch.distributed._shard.sharded_tensor.metadata import (
    ShardedTensorMetadata,
    TensorProperties,
)
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag
from torchrec.distributed.embedding_types import (
    EmbeddingComputeKernel,
    GroupedEmbeddingConfig,
    ShardedEmbeddingTable,
)
from torchrec.modules.embedding_configs import DataType, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.train.table_rows import TableRows


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    """A gloo group of this process alone: TorchRec's kernels build sharded tensors."""
    assert not dist.is_initialized(), "another test left a process group in this process"
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def fused_cpu_kernel(
    tables: Sequence[tuple[str, int, int, list[str]]],
) -> BatchedFusedEmbeddingBag:
    """TorchRec's fused CPU kernel (row-wise Adagrad, sum pooling) of ``tables``: each a name,
    rows, dim and the features that read it, whole on rank 0. Needs a process group
    (:func:`one_rank_group`)."""
    configs = []
    for name, rows, dim, features in tables:
        shard = ShardMetadata(shard_offsets=[0, 0], shard_sizes=[rows, dim], placement="rank:0/cpu")
        configs.append(
            ShardedEmbeddingTable(
                num_embeddings=rows,
                embedding_dim=dim,
                name=name,
                feature_names=features,
                local_rows=rows,
                local_cols=dim,
                compute_kernel=EmbeddingComputeKernel.FUSED,
                pooling=PoolingType.SUM,
                local_metadata=shard,
                global_metadata=ShardedTensorMetadata(
                    shards_metadata=[shard],
                    size=torch.Size([rows, dim]),
                    tensor_properties=TensorProperties(),
                ),
            )
        )
    config = GroupedEmbeddingConfig(
        data_type=DataType.FP32,
        pooling=PoolingType.SUM,
        is_weighted=False,
        has_feature_processor=False,
        compute_kernel=EmbeddingComputeKernel.FUSED,
        embedding_tables=configs,
        fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.1},
    )
    return BatchedFusedEmbeddingBag(config, device=torch.device("cpu"))


def updated_at(
    threads: Sequence[int],
    build: Callable[[], TableRows],
    batch: KeyedJaggedTensor,
    grad: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows and Adagrad state after one step on ``batch`` (the pooled output's gradient
    ``grad``) of a fresh :class:`TableRows` from ``build``, its weights drawn from the same
    seed, at each thread count of ``threads``."""
    results = []
    before = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            rows = build()
            kernel = rows.tbe
            kernel.weights_host.data.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
            rows(batch).backward(grad)
            results.append((kernel.weights_host.clone(), kernel.momentum1_host.clone()))
    finally:
        torch.set_num_threads(before)
    return results

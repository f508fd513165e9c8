"""The TorchRec sharder for our EmbeddingBagCollections.

TorchRec's ``EmbeddingBagCollectionSharder.sharding_types`` offers row_wise, table_row_wise
and grid_shard only on CUDA. They run correctly on CPU/gloo too (tests/test_planner_runs.py
runs every type against one rank), and row-wise is the natural placement of one big shared
table, so this sharder offers every type on every device.
"""

from __future__ import annotations

from typing import Any

from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingType

ALL_SHARDING_TYPES = [
    ShardingType.DATA_PARALLEL.value,
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.GRID_SHARD.value,
]

_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adam": EmbOptimType.ADAM,
    "sgd": EmbOptimType.EXACT_SGD,
}


# FBGEMM's CPU TBE implements these fused optimizers only (Adam is CUDA-only).
_CPU_FUSED = {"rowwise_adagrad", "sgd"}


def embedding_kernel(optimizer: str, device_type: str) -> str:
    """``fused`` (TBE with the optimizer in backward) where FBGEMM supports the optimizer on
    this device, else ``dense`` (plain sharded weights stepped by a torch optimizer)."""
    if device_type == "cpu" and optimizer not in _CPU_FUSED:
        return "dense"
    return "fused"


def fused_params(
    optimizer: str, learning_rate: float, eps: float, weight_decay: float
) -> dict[str, Any]:
    """FBGEMM TBE fused-optimizer parameters for an optimizer name of the job config."""
    if optimizer not in _OPTIMIZERS:
        raise ValueError(
            f"unknown embedding optimizer {optimizer!r}; use one of {list(_OPTIMIZERS)}"
        )
    params: dict[str, Any] = {
        "optimizer": _OPTIMIZERS[optimizer],
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
    }
    if weight_decay > 0:  # FBGEMM applies weight_decay only under a mode (default: none)
        params["weight_decay_mode"] = WeightDecayMode.L2
    if optimizer != "sgd":
        params["eps"] = eps
    return params


class AnyDeviceEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """``EmbeddingBagCollectionSharder`` offering every sharding type on CPU as well."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return list(ALL_SHARDING_TYPES)

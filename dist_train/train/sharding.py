"""The job's sharding plan, made once on the driver and shipped to every worker.

The driver knows the world size and (from ``ray.num_nodes``) the ranks per node before any
worker starts, so it plans there, prints the placement, and workers run that exact plan after
checking that their real node layout matches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torchrec.distributed.types import ShardingPlan

from dist_train.config import JobConfig
from dist_train.embedding.layout import EmbeddingLayout, build_layout
from dist_train.models.dlrm import DLRM
from planners.explicit import explicit_plan
from planners.sharders import (
    AnyDeviceEmbeddingBagCollectionSharder,
    embedding_kernel,
    fused_params,
)

MODULE_PATH = "sparse_arch"
HIERARCHICAL = {"table_row_wise", "grid_shard"}


@dataclass(frozen=True)
class JobPlan:
    """A TorchRec plan and the topology it was made for."""

    plan: ShardingPlan
    world_size: int
    local_world_size: int
    device_type: str

    def placements(self) -> dict[str, dict[str, object]]:
        """table -> sharding type and ranks (for logs and summaries)."""
        return {
            table: {"type": ps.sharding_type, "ranks": list(ps.ranks or [])}
            for module_plan in self.plan.plan.values()
            for table, ps in module_plan.items()  # type: ignore[attr-defined]
        }

    @property
    def hierarchical(self) -> bool:
        return any(p["type"] in HIERARCHICAL for p in self.placements().values())


def make_sharder(cfg: JobConfig, device_type: str) -> AnyDeviceEmbeddingBagCollectionSharder:
    """The EBC sharder with the job's fused optimizer (None on the dense kernel)."""
    opt = cfg.embedding.optimizer
    kernel = embedding_kernel(opt.type, device_type)
    params = fused_params(opt.type, opt.learning_rate, opt.eps, opt.weight_decay)
    return AnyDeviceEmbeddingBagCollectionSharder(
        fused_params=params if kernel == "fused" else None
    )


def build_model(cfg: JobConfig, layout: EmbeddingLayout) -> DLRM:
    """The unsharded model, embedding tables on the meta device (no memory)."""
    return DLRM(layout, len(cfg.data.resolved_dense_columns()), cfg.model, "meta")


def plan_job(
    cfg: JobConfig, world_size: int, local_world_size: int, device_type: str = "cpu"
) -> JobPlan:
    """Plan the job's embedding tables for ``world_size`` ranks, ``local_world_size`` a node."""
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    model: nn.Module = build_model(cfg, layout)
    plan = explicit_plan(
        MODULE_PATH,
        model.sparse_arch,  # type: ignore[arg-type]
        [t.name for t in layout.tables],
        cfg.sharding.type,
        make_sharder(cfg, device_type),
        world_size=world_size,
        local_world_size=local_world_size,
        device_type=device_type,
        compute_kernel=embedding_kernel(cfg.embedding.optimizer.type, device_type),
    )
    return JobPlan(plan, world_size, local_world_size, device_type)

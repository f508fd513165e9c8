"""The job's sharding plan, made once on the driver and shipped to every worker.

The driver knows the world size and (from ``ray.num_nodes``) the ranks per node before any
worker starts, so it plans there, prints the placement, and workers run that exact plan after
checking that their real node layout matches it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from torchrec.distributed.types import ParameterSharding, ShardingPlan

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

    def _tables(self) -> Iterator[tuple[str, ParameterSharding]]:
        for module_plan in self.plan.plan.values():
            yield from module_plan.items()  # type: ignore[attr-defined]

    def placements(self) -> dict[str, dict[str, object]]:
        """table -> sharding type and ranks (for logs and summaries)."""
        return {
            table: {"type": ps.sharding_type, "ranks": list(ps.ranks or [])}
            for table, ps in self._tables()
        }

    def shards_per_rank(
        self, table_shapes: dict[str, tuple[int, int]]
    ) -> dict[int, list[tuple[int, int]]]:
        """(rows, cols) of every shard each rank holds; a replicated (data_parallel) table
        counts in full on each of its ranks. ``table_shapes``: table -> (rows, cols)."""
        out: dict[int, list[tuple[int, int]]] = {r: [] for r in range(self.world_size)}
        for table, ps in self._tables():
            if ps.sharding_spec is None:
                for r in ps.ranks or []:
                    out[r].append(table_shapes[table])
                continue
            for shard in ps.sharding_spec.shards:  # type: ignore[attr-defined]
                rows, cols = shard.shard_sizes
                out[shard.placement.rank()].append((rows, cols))
        return out

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


def plan_for_config(cfg: JobConfig, device_type: str = "cpu") -> JobPlan:
    """The plan of a job as configured: ``num_workers`` ranks, ``num_workers / num_nodes`` per
    node (what the driver ships to workers, and what ``validate`` sizes)."""
    world = cfg.ray.num_workers
    return plan_job(cfg, world, world // (cfg.ray.num_nodes or 1), device_type)

"""``CostModelPlanner``: TorchRec's ``ShardingPlanner`` interface over our cost-model search.

The plan it returns is an ordinary TorchRec ``ShardingPlan`` (``ParameterSharding`` with an
``EnumerableShardingSpec`` per table) that ``DistributedModelParallel`` runs unchanged. Shards
are built here, not by TorchRec's helpers, so that grid blocks may be any width and row-wise
splits may be uneven (which needs :func:`planners.uneven.enable_uneven_row_wise` on the
sharded model, because TorchRec's training input dist assumes even blocks).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch import nn
from torchrec.distributed.sharding_plan import placement as shard_placement
from torchrec.distributed.types import (
    EmbeddingModuleShardingPlan,
    EnumerableShardingSpec,
    ModuleSharder,
    ParameterSharding,
    ShardingPlan,
    ShardingPlanner,
    ShardMetadata,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from planners.placement import TablePlacement
from planners.search import PlanningError, SearchResult, search
from planners.topology import Topology
from planners.workload import Workload


def parameter_sharding(p: TablePlacement, topo: Topology, compute_kernel: str) -> ParameterSharding:
    """TorchRec's description of one table's placement."""
    if p.sharding_type == "data_parallel":
        return ParameterSharding(
            sharding_type="data_parallel",
            compute_kernel="dense",
            ranks=p.ranks,
            sharding_spec=None,
        )
    shards = [
        ShardMetadata(
            shard_offsets=[s.row_offset, s.col_offset],
            shard_sizes=[s.rows, s.cols],
            placement=shard_placement(topo.device_type, s.rank, topo.ranks_per_node),
        )
        for s in p.shards
    ]
    return ParameterSharding(
        sharding_type=p.sharding_type,
        compute_kernel=compute_kernel,
        ranks=p.ranks,
        sharding_spec=EnumerableShardingSpec(shards),
    )


def _embedding_modules(module: nn.Module) -> Iterator[tuple[str, EmbeddingBagCollection]]:
    for path, sub in module.named_modules():
        if isinstance(sub, EmbeddingBagCollection):
            yield path, sub


def plan_from_placements(
    module: nn.Module,
    placements: tuple[TablePlacement, ...] | list[TablePlacement],
    workload: Workload,
    topology: Topology,
    compute_kernel: str,
) -> ShardingPlan:
    """The TorchRec plan placing every table of ``module``'s EmbeddingBagCollections."""
    chosen = {p.table: p for p in placements}
    plan: dict[str, EmbeddingModuleShardingPlan] = {}
    for path, ebc in _embedding_modules(module):
        module_plan = EmbeddingModuleShardingPlan()
        for cfg in ebc.embedding_bag_configs():
            if cfg.name not in chosen:
                raise PlanningError(
                    f"table {cfg.name!r} of module {path or '<root>'} is not in the "
                    f"workload (tables: {sorted(chosen)})"
                )
            table = workload.table(cfg.name)
            if (cfg.num_embeddings, cfg.embedding_dim) != (table.rows, table.dim):
                raise PlanningError(
                    f"table {cfg.name!r}: the module has {cfg.num_embeddings} x "
                    f"{cfg.embedding_dim}, the workload {table.rows} x {table.dim}"
                )
            module_plan[cfg.name] = parameter_sharding(chosen[cfg.name], topology, compute_kernel)
        plan[path] = module_plan
    if not plan:
        raise PlanningError("the module has no EmbeddingBagCollection to plan")
    return ShardingPlan(plan)  # type: ignore[arg-type]


class CostModelPlanner(ShardingPlanner):
    """Plans every EmbeddingBagCollection of a module with the cost-model search.

    ``workload`` describes the tables (by name) and the batch; ``allowed`` restricts the
    sharding types; ``compute_kernel`` is TorchRec's kernel for sharded tables (``fused``:
    FBGEMM TBE with the optimizer in backward, ``dense``: plain weights).
    """

    def __init__(
        self,
        topology: Topology,
        workload: Workload,
        allowed: tuple[str, ...] | None = None,
        compute_kernel: str = "fused",
    ) -> None:
        self.topology = topology
        self.workload = workload
        self.allowed = allowed
        self.compute_kernel = compute_kernel
        self.result: SearchResult | None = None

    def search(self) -> SearchResult:
        if self.result is None:
            self.result = search(self.workload, self.topology, self.allowed)
        return self.result

    def plan(self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]]) -> ShardingPlan:
        return plan_from_placements(
            module,
            self.search().best.placements,
            self.workload,
            self.topology,
            self.compute_kernel,
        )

    def collective_plan(
        self,
        module: nn.Module,
        sharders: list[ModuleSharder[nn.Module]],
        pg: dist.ProcessGroup | None = None,
    ) -> ShardingPlan:
        """Plan on rank 0 and broadcast, so every rank runs the very same plan."""
        box: list[ShardingPlan | None] = [None]
        if dist.get_rank(pg) == 0:
            box[0] = self.plan(module, sharders)
        dist.broadcast_object_list(box, src=dist.get_global_rank(pg, 0) if pg else 0, group=pg)
        assert box[0] is not None
        return box[0]

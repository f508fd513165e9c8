"""``CostModelPlanner``: TorchRec's ``ShardingPlanner`` interface over our cost-model search.

The plan it returns is an ordinary TorchRec ``ShardingPlan`` (``ParameterSharding`` with an
``EnumerableShardingSpec`` per table) that ``DistributedModelParallel`` runs unchanged. Shards
are built here, not by TorchRec's helpers, so that grid blocks may be any width and row-wise
splits may be uneven (which needs the trainer's ``enable_uneven_row_wise`` on the sharded
model, because TorchRec's training input dist assumes even blocks). A ``row_wise_unpooled``
placement becomes TorchRec ``row_wise`` with the same shards; the trainer reads which tables
are unpooled from ``CostModelPlanner.choice().placements`` (the chosen estimate's placements)
and replaces their dists (``dist_train/train/unpooled_row_wise.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_common import CacheAlgorithm
from torch import nn
from torchrec.distributed.sharding_plan import placement as shard_placement
from torchrec.distributed.types import (
    CacheParams,
    EmbeddingModuleShardingPlan,
    EnumerableShardingSpec,
    ModuleSharder,
    ParameterSharding,
    ShardingPlan,
    ShardingPlanner,
    ShardMetadata,
)
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from planners.groups import GroupPlan, best_group_plans, estimate_group_plan
from planners.search import PlanEstimate, SearchResult, estimate_plan, search
from planners.topology import Topology
from planners.types import (
    SHARDING_TYPES,
    PlanningError,
    TablePlacement,
    Workload,
    mixed_types,
    torchrec_type,
)

UVM_CACHING_KERNEL = "fused_uvm_caching"  # TorchRec's EmbeddingComputeKernel.FUSED_UVM_CACHING
UVM_KERNEL = "fused_uvm"  # EmbeddingComputeKernel.FUSED_UVM: host rows, no cache


def cache_params(p: TablePlacement) -> CacheParams | None:
    """TorchRec's cache settings of a placement on the UVM caching kernel: its load factor,
    and FBGEMM's LFU cache, whose steady state the planner's hit rate models
    (planners/uvm_cache.py). TorchRec copies them into the TBE's fused params
    (``add_params_from_parameter_sharding``)."""
    if not p.cache_load_factor:
        return None
    return CacheParams(algorithm=CacheAlgorithm.LFU, load_factor=p.cache_load_factor)


def parameter_sharding(p: TablePlacement, topo: Topology, compute_kernel: str) -> ParameterSharding:
    """TorchRec's description of one table's placement; ``compute_kernel`` is the job's
    kernel for tables held in device memory, a cached placement runs on ``fused_uvm_caching``."""
    if p.cached and topo.device_type != "cuda":
        raise PlanningError(f"table {p.table}: UVM caching needs CUDA ranks")
    if p.cached:
        compute_kernel = UVM_CACHING_KERNEL if p.cache_load_factor else UVM_KERNEL
    if p.sharding_type == "data_parallel":
        return ParameterSharding(
            sharding_type="data_parallel",
            compute_kernel="dense",
            ranks=p.ranks,
            sharding_spec=None,
        )
    # row_wise_unpooled: TorchRec's row_wise shards and kernel; the trainer swaps its dists
    sharding_type = torchrec_type(p.sharding_type)
    shards = [
        ShardMetadata(
            shard_offsets=[s.row_offset, s.col_offset],
            shard_sizes=[s.rows, s.cols],
            placement=shard_placement(topo.device_type, s.rank, topo.ranks_per_node),
        )
        for s in p.shards
    ]
    return ParameterSharding(
        sharding_type=sharding_type,
        compute_kernel=compute_kernel,
        ranks=p.ranks,
        sharding_spec=EnumerableShardingSpec(shards),
        cache_params=cache_params(p),
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
    """The TorchRec plan placing every table of ``module``'s EmbeddingBagCollections.

    row_wise_unpooled tables come out as TorchRec ``row_wise``; which tables they are is in
    ``placements`` (``CostModelPlanner.choice().estimate.placements``), which may therefore
    not mix them with row_wise tables (TorchRec would fuse both into one row_wise dist)."""
    mixed = mixed_types({p.sharding_type for p in placements})
    if mixed:
        raise PlanningError(f"a plan may not mix sharding types {mixed}")
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


@dataclass(frozen=True)
class Choice:
    """The plan the planner picked: its placements, the ranks they are made for, its estimate."""

    topology: Topology  # the world's (1D) or one group's (2D)
    group_size: int
    estimate: PlanEstimate  # per rank of the world (1D) or of one group (2D)
    world_size: int
    # the fastest plan, where this one was chosen over it for evaluation's memory
    passed_over: Choice | None = None

    @property
    def placements(self) -> tuple[TablePlacement, ...]:
        return self.estimate.placements

    @property
    def step_seconds(self) -> float:
        return self.estimate.step_seconds

    @property
    def is_2d(self) -> bool:
        return self.group_size < self.world_size

    @property
    def label(self) -> str:
        if not self.is_2d:
            return self.estimate.label
        return f"{self.estimate.label} in groups of {self.group_size}"


class CostModelPlanner(ShardingPlanner):
    """Plans every EmbeddingBagCollection of a module with the cost-model search.

    ``workload`` describes the tables (by name) and the batch; ``allowed`` restricts the
    sharding types; ``compute_kernel`` is TorchRec's kernel for sharded tables (``fused``:
    FBGEMM TBE with the optimizer in backward, ``dense``: plain weights); on CUDA topologies
    with host memory the search may put a table on ``fused_uvm_caching`` instead (rows in host
    memory, a cache of ``workload.cache_load_factor`` of them in HBM). ``group_size``: the
    2D group (the world size = 1D; None = the cheapest of 1D and every group size), with
    replicas averaged every ``sync_every`` steps.
    """

    def __init__(
        self,
        topology: Topology,
        workload: Workload,
        allowed: tuple[str, ...] | None = None,
        compute_kernel: str = "fused",
        group_size: int | None = None,
        sync_every: int = 1,
        eval_batch_size: int | None = None,
    ) -> None:
        self.topology = topology
        self.workload = workload
        self.allowed = allowed
        self.compute_kernel = compute_kernel
        self.group_size = group_size
        self.sync_every = sync_every
        self.eval_batch_size = eval_batch_size
        self.result: SearchResult | None = None
        self._no_fit: PlanningError | None = None  # the 1D search's refusal, once found
        self.groups: dict[int, GroupPlan | str] = {}

    def search(self) -> SearchResult:
        """The 1D search (every sharding type alone, for the report); searched once, its
        refusal too (choice() and the report both ask where no 1D plan fits)."""
        if self._no_fit is not None:
            raise self._no_fit
        if self.result is None:
            try:
                self.result = search(self.workload, self.topology, self.allowed)
            except PlanningError as err:
                self._no_fit = err
                raise
        return self.result

    def group_plans(self) -> dict[int, GroupPlan | str]:
        """The best 2D plan of each group size considered."""
        world = self.topology.world_size
        if not self.groups and self.group_size != world and self.compute_kernel == "fused":
            sizes = None if self.group_size is None else [self.group_size]
            allowed = frozenset(self.allowed or SHARDING_TYPES)
            self.groups = best_group_plans(
                self.workload, self.topology, allowed, self.sync_every, sizes
            )
        return self.groups

    def peak_memory_at(self, choice: Choice, batch_size: int) -> int:
        """The fullest rank's memory under ``choice`` at ``batch_size`` examples a rank with
        no activations kept for a backward: evaluation's, whose batch may be larger than
        training's, and whose holders' buffers grow with it (the search plans training's)."""
        work = replace(
            self.workload, batch_size_per_rank=batch_size, activation_bytes_per_sample=0.0
        )
        if choice.is_2d:
            group = estimate_group_plan(
                choice.placements, work, self.topology, choice.group_size, self.sync_every
            )
            return group.estimate.max_memory_bytes
        return estimate_plan(choice.placements, work, self.topology).max_memory_bytes

    def choice(self) -> Choice:
        """1D or the best group size: the smallest estimated step that fits (1D on ties)."""
        world = self.topology.world_size
        options: list[Choice] = []
        no_1d: PlanningError | None = None
        if self.group_size in (None, world):
            try:
                options.append(Choice(self.topology, world, self.search().best, world))
            except PlanningError as err:  # groups hold a share of the table: they may fit
                if self.group_size == world:
                    raise
                no_1d = err
        for g, gp in self.group_plans().items():
            if not isinstance(gp, str):
                options.append(Choice(gp.group_topology, g, gp.estimate, world))
        if not options and no_1d is not None:
            raise no_1d  # nothing fits: the 1D reason is the one a user acts on
        if not options:
            reason = self.group_plans().get(self.group_size or 0, "no plan")
            if self.compute_kernel != "fused":
                reason = "2D needs the fused embedding kernel (rowwise_adagrad or sgd on CPU)"
            raise PlanningError(f"sharding.group_size={self.group_size}: {reason}")
        best = min(options, key=lambda c: c.estimate.score())
        if self.eval_batch_size is None or self.evaluation_fits(best):
            return best
        # the fastest plan with room for evaluation's batch too, a single type's among them
        # (its buffers grow with the batch); none: the best, which plan_job refuses, saying why
        if self.group_size in (None, world) and no_1d is None:
            result = self.search()  # (its alternatives list the types the job left out too)
            options += [
                Choice(self.topology, world, a, world)
                for t, a in result.alternatives.items()
                if isinstance(a, PlanEstimate) and t in result.allowed
            ]
        fitting = [
            c
            for c in options
            if c.estimate.fits and (best.estimate.empty_kernel or not c.estimate.empty_kernel)
        ]
        chosen = min(
            (c for c in fitting if self.evaluation_fits(c)),
            key=lambda c: c.estimate.score(),
            default=best,
        )
        return best if chosen is best else replace(chosen, passed_over=best)

    def evaluation_fits(self, choice: Choice) -> bool:
        """Whether ``choice`` holds ``eval_batch_size`` examples a rank on every rank."""
        batch = self.eval_batch_size
        return batch is None or self.peak_memory_at(choice, batch) <= choice.estimate.usable_bytes

    def plan(self, module: nn.Module, sharders: list[ModuleSharder[nn.Module]]) -> ShardingPlan:
        chosen = self.choice()
        return plan_from_placements(
            module, chosen.placements, self.workload, chosen.topology, self.compute_kernel
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

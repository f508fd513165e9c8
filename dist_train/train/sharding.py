"""The job's sharding plan, made once on the driver and shipped to every worker.

The driver knows the world size and (from ``ray.num_nodes``) the ranks per node before any
worker starts, so it plans there, prints the placement, and workers run that exact plan after
checking that their real node layout matches it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchrec.distributed.embedding_sharding import USE_ONE_TBE_PER_TABLE
from torchrec.distributed.types import ParameterSharding, ShardingPlan

from dist_train.config.schema import JobConfig
from dist_train.embedding.layout import EmbeddingLayout, build_layout
from dist_train.models import CTRModel, create_model
from dist_train.train.replicas import MERGED_OPTIMIZERS
from planners.cores import usable_cores
from planners.placement import kernel_without_rows
from planners.planner import Choice, CostModelPlanner
from planners.search import gib
from planners.sharders import (
    AnyDeviceEmbeddingBagCollectionSharder,
    embedding_kernel,
    fused_params,
)
from planners.topology import (
    Topology,
    TopologyError,
    load_topology,
    parse_bytes,
    preset,
    resize,
)
from planners.types import (
    HIERARCHICAL,
    SHARDING_TYPES,
    OptimizerState,
    PlanningError,
    ShardingType,
    TableLoad,
    TablePlacement,
    Workload,
)

_UNPOOLED = ShardingType.ROW_WISE_UNPOOLED.value
_DENSE_OPTIMIZER_SLOTS = {"adagrad": 1, "adam": 2, "sgd": 0}


@dataclass(frozen=True)
class JobPlan:
    """A TorchRec plan and the topology it was made for."""

    sharding_plan: ShardingPlan
    world_size: int
    local_world_size: int
    device_type: str
    estimated_step_seconds: float = 0.0
    group_size: int = 0  # 2D: ranks per sharding group (the plan is made for them); 0 = 1D
    estimated_memory_bytes: int = 0  # the planner's peak per rank
    # row-wise tables whose lookups come back one vector per id (planners' row_wise_unpooled;
    # TorchRec's plan says row_wise: dist_train.train.unpooled_row_wise)
    unpooled_tables: tuple[str, ...] = ()

    @property
    def sharding_group_size(self) -> int:
        """Ranks the TorchRec plan shards over: the group (2D) or the world (1D)."""
        return self.group_size or self.world_size

    @property
    def is_2d(self) -> bool:
        return self.sharding_group_size < self.world_size

    @property
    def replicas(self) -> int:
        """Copies of the sharded tables: the world's groups (2D), 1 in 1D."""
        return self.world_size // self.sharding_group_size

    def _tables(self) -> Iterator[tuple[str, ParameterSharding]]:
        for module_plan in self.sharding_plan.plan.values():
            yield from module_plan.items()  # type: ignore[attr-defined]

    def placements(self) -> dict[str, dict[str, object]]:
        """table -> sharding type and ranks (for logs and summaries); in 2D, of the first
        group (ranks ``0 .. group size - 1``), which every group repeats."""
        return {
            table: {"type": self._type_of(table, ps), "ranks": list(ps.ranks or [])}
            for table, ps in self._tables()
        }

    def _type_of(self, table: str, ps: ParameterSharding) -> str:
        return _UNPOOLED if table in self.unpooled_tables else ps.sharding_type

    def shards_per_rank(
        self, table_shapes: dict[str, tuple[int, int]]
    ) -> dict[int, list[tuple[int, int]]]:
        """(rows, cols) of every shard each rank holds; a replicated (data_parallel) table
        counts in full on each of its ranks. ``table_shapes``: table -> (rows, cols)."""
        group: dict[int, list[tuple[int, int]]] = {r: [] for r in range(self.sharding_group_size)}
        for table, ps in self._tables():
            if ps.sharding_spec is None:
                for r in ps.ranks or []:
                    group[r].append(table_shapes[table])
                continue
            for shard in ps.sharding_spec.shards:  # type: ignore[attr-defined]
                rows, cols = shard.shard_sizes
                group[shard.placement.rank()].append((rows, cols))
        # 2D: rank r holds what rank r % group_size of the plan holds
        return {r: group[r % self.sharding_group_size] for r in range(self.world_size)}

    @property
    def label(self) -> str:
        """The sharding types in use, e.g. ``row_wise`` (2D: ``row_wise in groups of 2``)."""
        types = ", ".join(sorted({str(p["type"]) for p in self.placements().values()}))
        return f"{types} in groups of {self.group_size}" if self.is_2d else types

    @property
    def hierarchical(self) -> bool:
        return any(p["type"] in HIERARCHICAL for p in self.placements().values())


def job_fused_params(cfg: JobConfig, device_type: str) -> dict[str, Any] | None:
    """The job's FBGEMM fused-optimizer parameters; None where it runs on the dense kernel."""
    opt = cfg.embedding.optimizer
    if embedding_kernel(opt.type, device_type) != "fused":
        return None
    if opt.weight_decay > 0 and device_type == "cpu":
        # Measured (tests/unit/test_weight_decay.py): the CPU kernel of fbgemm-gpu-cpu 1.8
        # leaves weights untouched by weight_decay in every mode, while replicated tables
        # would apply it: refuse rather than train half the tables regularized.
        raise PlanningError(
            f"embedding.optimizer.weight_decay={opt.weight_decay}: FBGEMM's CPU kernel "
            "ignores weight decay for fused embedding optimizers; set it to 0 on CPU"
        )
    return fused_params(opt.type, opt.learning_rate, opt.eps, opt.weight_decay)


def make_sharder(cfg: JobConfig, device_type: str) -> AnyDeviceEmbeddingBagCollectionSharder:
    """The EBC sharder with the job's fused optimizer (None on the dense kernel). On CPU, a
    job whose tables several keys share puts each table in a kernel of its own, which
    :func:`~dist_train.train.shared_tables.read_shared_tables_as_one_feature` can read as one
    feature (TorchRec otherwise batches a rank's tables into one kernel, which keeps FBGEMM's
    serial shared-table backward)."""
    params = job_fused_params(cfg, device_type)
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    if params is not None and _kernel_per_table(layout, device_type):
        params = {**params, USE_ONE_TBE_PER_TABLE: True}
    return AnyDeviceEmbeddingBagCollectionSharder(fused_params=params)


def _kernel_per_table(layout: EmbeddingLayout, device_type: str) -> bool:
    """Whether :func:`make_sharder`, given a fused optimizer, puts each table in a kernel
    of its own: on CPU, where several keys share a table."""
    return device_type == "cpu" and any(len(t.keys) > 1 for t in layout.tables)


def build_model(cfg: JobConfig, layout: EmbeddingLayout) -> CTRModel:
    """The unsharded model, embedding tables on the meta device (no memory)."""
    return create_model(layout, len(cfg.data.resolved_dense_columns()), cfg.model, "meta")


def generated_ids_per_sample(cfg: JobConfig) -> dict[str, float]:
    """Each feature's mean ids a sample in the job's generated data (none for data at
    ``data.train_path``, where a feature not in ``sharding.pooling_factors`` counts one): a
    cell is null at ``null_fraction``, a list column's cell holds ``mean_multi_hot_length``
    ids (the default job's C24-C26: 3)."""
    if cfg.data.train_path is not None:
        return {}
    synth = cfg.data.synthetic
    present = 1.0 - synth.null_fraction
    lists = set(synth.multi_hot_columns)
    return {
        f.name: present * (synth.mean_multi_hot_length if f.source_column in lists else 1.0)
        for f in cfg.features
    }


def workload_for_config(
    cfg: JobConfig, layout: EmbeddingLayout, model: CTRModel, device_type: str
) -> Workload:
    """The planner's view of a job: tables, lookups per sample, batch and dense model size."""
    pooling = {**generated_ids_per_sample(cfg), **cfg.sharding.pooling_factors}
    keys = {k.key: k for k in layout.keys}
    tables = tuple(
        TableLoad(
            name=t.name,
            rows=t.num_rows,
            dim=t.dim,
            bags_per_sample=len(t.keys),
            ids_per_sample=sum(pooling.get(keys[k].feature, 1.0) for k in t.keys),
        )
        for t in layout.tables
    )
    return Workload(
        tables=tables,
        batch_size_per_rank=cfg.train.batch_size,
        optimizer=OptimizerState.of(cfg.embedding.optimizer.type, device_type),
        dense_parameters=model.dense_parameters,
        dense_optimizer_slots=_DENSE_OPTIMIZER_SLOTS[cfg.train.dense_optimizer],
        interaction_elements_per_sample=model.interaction_elements_per_sample,
        interaction_least_elements_per_sample=model.interaction_least_elements_per_sample,
        activation_bytes_per_sample=model.activation_bytes_per_sample(
            len(cfg.data.resolved_dense_columns())
        ),
        id_skew=cfg.sharding.id_skew,
        cache_load_factor=cfg.sharding.cache_load_factor,
        tables_in_key_order=_tables_in_key_order(layout),
        kernel_per_table=job_fused_params(cfg, device_type) is not None
        and _kernel_per_table(layout, device_type),
    )


def _tables_in_key_order(layout: EmbeddingLayout) -> bool:
    """Whether the layout's keys read the tables in their order, each table's keys one run in
    the order TorchRec pools them (its ``feature_names``)."""
    pooled = [key for t in layout.tables for key in t.keys]
    return pooled == layout.key_names


def topology_for_config(
    cfg: JobConfig,
    world_size: int,
    local_world_size: int,
    device_type: str,
    cores_per_node: int | None = None,
) -> Topology:
    """The job's topology file (or the device preset) shaped to ``world_size`` ranks."""
    if world_size % local_world_size:
        raise ValueError(f"world size {world_size} is not a multiple of {local_world_size}")
    base = load_topology(cfg.sharding.topology) if cfg.sharding.topology else preset(device_type)
    if base.device_type != device_type:  # its placements would name the other device
        raise TopologyError(
            f"{cfg.sharding.topology}: a topology of {base.device_type} ranks (sharding."
            f"topology), but this job trains on {device_type}; give a topology of "
            f"{device_type} ranks (dist-train calibrate on such a machine), or plan for "
            f"{base.device_type} (dist-train plan --device {base.device_type})"
        )
    memory = cfg.sharding.memory_per_rank
    return resize(
        base,
        num_nodes=world_size // local_world_size,
        ranks_per_node=local_world_size,
        memory_per_rank_bytes=parse_bytes(memory) if memory else None,
        cores_per_node=cores_per_node,
    )


def allowed_types(cfg: JobConfig) -> tuple[str, ...]:
    """The sharding types the planner may use for this job."""
    if cfg.sharding.type != "auto":
        return (cfg.sharding.type,)
    return SHARDING_TYPES


def _one_d_only(cfg: JobConfig) -> str | None:
    """The setting that keeps a job out of 2D, None if none does. The replica merge
    re-applies summed gradients: each replica's L2 term would count once per replica, and
    it recombines only some optimizers' states exactly (with group_size auto the planner
    offered 2D to adam on CUDA, whose ranks then failed at start-up)."""
    optimizer = cfg.embedding.optimizer
    if optimizer.weight_decay > 0:
        return f"embedding.optimizer.weight_decay={optimizer.weight_decay}"
    if optimizer.type not in MERGED_OPTIMIZERS:
        return f"embedding.optimizer.type={optimizer.type}"
    return None


def planner_for_config(
    cfg: JobConfig,
    world_size: int,
    local_world_size: int,
    device_type: str = "cpu",
    cores_per_node: int | None = None,
) -> tuple[CostModelPlanner, CTRModel]:
    """The cost-model planner of a job and the (meta-device) model it plans."""
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    with torch.device("meta"):  # the planner reads shapes only: no dense weights either
        model = build_model(cfg, layout)
    group = cfg.sharding.group_size
    why_1d = _one_d_only(cfg)
    if why_1d is not None:
        if group != "auto" and group < world_size:
            raise PlanningError(
                f"sharding.group_size={group} (2D) does not support {why_1d}; use "
                f"group_size auto or {world_size} (2D merges {' and '.join(MERGED_OPTIMIZERS)} "
                "without weight decay)"
            )
        group = world_size
    planner = CostModelPlanner(
        topology_for_config(cfg, world_size, local_world_size, device_type, cores_per_node),
        workload_for_config(cfg, layout, model, device_type),
        allowed_types(cfg),
        compute_kernel=embedding_kernel(cfg.embedding.optimizer.type, device_type),
        group_size=None if group == "auto" else min(group, world_size),
        sync_every=cfg.sharding.sync_every,
        eval_batch_size=cfg.train.eval_batch_size,
    )
    return planner, model


def plan_job(
    cfg: JobConfig,
    world_size: int,
    local_world_size: int,
    device_type: str = "cpu",
    cores_per_node: int | None = None,
) -> JobPlan:
    """Plan the job's embedding tables for ``world_size`` ranks, ``local_world_size`` a node
    (``cores_per_node``: CPU cores a node's ranks share, if not the topology's)."""
    planner, model = planner_for_config(
        cfg, world_size, local_world_size, device_type, cores_per_node
    )
    sharder = make_sharder(cfg, device_type)
    plan = planner.plan(model, [sharder])  # type: ignore[list-item]
    chosen = planner.choice()
    refuse_what_cpu_kernels_refuse(chosen.placements, sharder, device_type)
    refuse_an_evaluation_past_memory(cfg, planner, chosen)
    group = chosen.group_size if chosen.group_size < world_size else 0
    unpooled = tuple(p.table for p in chosen.placements if p.sharding_type == _UNPOOLED)
    return JobPlan(
        plan,
        world_size,
        local_world_size,
        device_type,
        chosen.step_seconds,
        group,
        chosen.estimate.max_memory_bytes,
        unpooled,
    )


def refuse_an_evaluation_past_memory(
    cfg: JobConfig, planner: CostModelPlanner, chosen: Choice
) -> None:
    """PlanningError where evaluation, at ``train.eval_batch_size`` examples a rank, would
    need more memory on a rank than it has under the chosen plan (the planner prefers one
    with room for it: :meth:`~planners.planner.CostModelPlanner.choice`): the holders'
    buffers grow with the batch (row_wise's pooled sums of the world's batch: four times
    training's at the default 8,192), and the job would run out of memory at its end, after
    all of training. Names the largest batch that fits."""
    if planner.evaluation_fits(chosen):
        return
    batch, usable = cfg.train.eval_batch_size, chosen.estimate.usable_bytes
    need = planner.peak_memory_at(chosen, batch)
    # the largest batch that fits, by bisection: memory grows with the batch, not in
    # proportion (row_wise_unpooled's distinct rows level off)
    fits, over = 0, batch
    while over - fits > 1:
        middle = (fits + over) // 2
        if planner.peak_memory_at(chosen, middle) <= usable:
            fits = middle
        else:
            over = middle
    hint = (
        f"set train.eval_batch_size={fits:,} or less"
        if fits >= 1
        else "no evaluation batch fits: give the ranks more memory"
    )
    raise PlanningError(
        f"train.eval_batch_size={batch:,}: evaluation would need {gib(need)} on a rank with "
        f"the plan chosen ({chosen.label}), of {gib(usable)} usable (training: "
        f"{gib(chosen.estimate.max_memory_bytes)}), since its buffers grow with the batch; " + hint
    )


def refuse_what_cpu_kernels_refuse(
    placements: Sequence[TablePlacement], sharder: Any, device_type: str
) -> None:
    """PlanningError for a chosen plan that CPU ranks' kernels would fail on
    (:func:`refuse_ranks_without_rows`, with ``sharder``'s kernels: one a table, or one a
    rank's tables of a sharding type); nothing for GPU ranks."""
    if device_type == "cpu":
        one_a_table = bool((sharder.fused_params or {}).get(USE_ONE_TBE_PER_TABLE))
        refuse_ranks_without_rows(placements, one_a_table)


def refuse_ranks_without_rows(
    placements: Sequence[TablePlacement], kernel_per_table: bool = False
) -> None:
    """PlanningError where a rank's CPU kernel would hold shards but none of their rows
    (:func:`planners.placement.kernel_without_rows`): TorchRec's ``ceil(rows / ranks)`` rows
    a rank leave the last ranks none of a table of few rows, and FBGEMM's CPU kernel of only
    such shards fails on that rank at its first step. The search prefers a plan without
    one; only a job whose every plan has one meets this."""
    empty = kernel_without_rows(placements, kernel_per_table)
    if empty is not None:
        sharding_type, rank, tables = empty
        raise PlanningError(
            f"sharding.type={sharding_type}: rank {rank} would hold none of the rows of "
            f"{', '.join(tables[:4])}{' ...' if len(tables) > 4 else ''} (ceil(rows / ranks) "
            "rows a rank leave the last ranks none), and FBGEMM's CPU kernel fails on a "
            "rank holding no rows; split the rows over fewer ranks (ray.num_workers, or a "
            "smaller sharding.group_size), give the table more (embedding.num_rows), or "
            "choose another sharding.type (data_parallel replicates it)"
        )


COLUMN_SPLITTING = frozenset({"column_wise", "grid_shard"})


def optimizer_notes(cfg: JobConfig, sharding_types: set[str]) -> list[str]:
    """What a plan changes about the embedding optimizer's arithmetic, for the logs."""
    if cfg.embedding.optimizer.type == "rowwise_adagrad" and sharding_types & COLUMN_SPLITTING:
        return [
            "column blocks keep their own row-wise Adagrad accumulator (TorchRec's column-wise "
            "semantics: each block averages its own columns' squared gradients); "
            "sharding.type=row_wise keeps one accumulator per row"
        ]
    return []


def refuse_group_above(cfg: JobConfig, world: int, ranks: str = "") -> None:
    """PlanningError where ``sharding.group_size`` exceeds the ``world`` ranks planned for
    (``ranks``: how to name them): planned as 1D, unsaid. (:func:`plan_job` still plans an
    elastic group that comes back smaller than its groups as 1D.)"""
    group = cfg.sharding.group_size
    if group != "auto" and group > world:
        raise PlanningError(
            f"sharding.group_size={group} exceeds {ranks or f'the {world} ranks'}: a group "
            f"shards the tables over some of them; group_size {world} is 1D"
        )


def plan_for_config(cfg: JobConfig, device_type: str = "cpu") -> JobPlan:
    """The plan of a job as configured: ``num_workers`` ranks, ``num_workers / num_nodes`` per
    node (what the driver ships to workers, and what ``validate`` sizes)."""
    world, nodes = cfg.ray.num_workers, cfg.ray.num_nodes or 1
    refuse_group_above(cfg, world, f"the job's {world} ranks (ray.num_workers)")
    cores = None
    if cfg.launcher == "processes" and device_type == "cpu":
        cores = simulated_node_cores(nodes)
    return plan_job(cfg, world, world // nodes, device_type, cores)


def simulated_node_cores(num_nodes: int) -> int:
    """Cores of one simulated node when ``num_nodes`` of them share this machine."""
    return max(1, usable_cores() // num_nodes)

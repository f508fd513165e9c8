"""TorchRec's own ``EmbeddingShardingPlanner`` on the same inputs, for side-by-side reports.

It gets what a TorchRec user would give it: the world size, ranks per node, device, memory per
rank, batch size, pooling factors and TorchRec's stock sharder (which on CPU offers only
table_wise, column_wise, table_column_wise and data_parallel). Its bandwidths are its built-in
defaults: that is the "default plan" we compare with.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner import Topology as TorchRecTopology
from torchrec.distributed.planner.constants import UVM_CACHING_RATIO
from torchrec.distributed.types import ShardingPlan

from planners.planner import UVM_CACHING_KERNEL, UVM_KERNEL
from planners.topology import Topology
from planners.types import Shard, TablePlacement, Workload

TIMEOUT_SECONDS = 120


def _cache_load_factor(ps: Any, default: float) -> float | None:
    """The UVM cache a TorchRec parameter sharding asks for: its load factor on
    ``fused_uvm_caching`` (``default`` when the plan leaves it to the fused params), 0 on
    ``fused_uvm`` (no cache), None for tables in device memory."""
    if ps.compute_kernel == UVM_KERNEL:
        return 0.0
    if ps.compute_kernel != UVM_CACHING_KERNEL:
        return None
    params = ps.cache_params
    if params is not None and params.load_factor is not None:
        return float(params.load_factor)
    return default


def placements_of(
    plan: ShardingPlan, topo: Topology, cache_load_factor: float = UVM_CACHING_RATIO
) -> list[TablePlacement]:
    """Our description of the tables of a TorchRec plan (``cache_load_factor``: the UVM cache
    size of tables whose plan does not give one; TorchRec's default)."""
    out = []
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[attr-defined]
            if ps.sharding_spec is None:  # data_parallel: a replica on each rank
                shards = []
            else:
                shards = [
                    Shard(s.placement.rank(), *s.shard_offsets, *s.shard_sizes)
                    for s in ps.sharding_spec.shards
                ]
            clf = _cache_load_factor(ps, cache_load_factor)
            label = ps.sharding_type if clf is None else f"{ps.sharding_type} + {ps.compute_kernel}"
            out.append(TablePlacement(table, ps.sharding_type, tuple(shards), label, clf))
    return out


class _DropSpecNotFound(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Sharding spec not found")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute TorchRec's planner warnings (about its own dry-run memory estimate, and "Sharding
    spec not found" for each table it replicates) for one call."""
    log, root = logging.getLogger("torchrec.distributed.planner"), logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    # TorchRec logs the latter through logging.warning, on the root logger: a filter there
    # drops only what is logged there, not what other loggers pass up. While the root has no
    # handler, logging.warning would also install one for good (basicConfig): a guard
    # handler prevents it.
    drop = _DropSpecNotFound()
    guard = None if root.handlers else logging.NullHandler()
    root.addFilter(drop)
    if guard is not None:
        root.addHandler(guard)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)
        root.removeFilter(drop)
        if guard is not None:
            root.removeHandler(guard)


def _torchrec_topology(topo: Topology) -> TorchRecTopology:
    cuda = topo.device_type == "cuda"
    return TorchRecTopology(
        world_size=topo.world_size,
        compute_device=topo.device_type,
        local_world_size=topo.ranks_per_node,
        hbm_cap=topo.memory_per_rank_bytes if cuda else None,
        # host memory for TorchRec's own UVM kernels, where the topology has it
        ddr_cap=(topo.host_memory_per_rank_bytes if cuda else None) or topo.memory_per_rank_bytes,
    )


def torchrec_plan(
    module: nn.Module, workload: Workload, topo: Topology, fused_params: dict[str, Any] | None
) -> tuple[ShardingPlan, dict[str, Any]]:
    """TorchRec's plan and its own figures: max per-rank memory and step estimate."""
    constraints = {
        t.name: ParameterConstraints(
            pooling_factors=[t.ids_per_sample / t.bags_per_sample] * t.bags_per_sample
        )
        for t in workload.tables
    }
    start = time.perf_counter()
    with _quiet():
        planner = EmbeddingShardingPlanner(
            topology=_torchrec_topology(topo),
            batch_size=workload.batch_size_per_rank,
            constraints=constraints,
            timeout_seconds=TIMEOUT_SECONDS,
        )
        sharder = EmbeddingBagCollectionSharder(fused_params=fused_params)
        plan = planner.plan(module, [sharder])  # type: ignore[list-item]
    seconds = time.perf_counter() - start
    perf = [0.0] * topo.world_size
    memory = [0] * topo.world_size
    storage = "hbm" if topo.device_type == "cuda" else "ddr"
    for option in planner._best_plan or []:
        for shard in option.shards:
            if shard.rank is None:
                continue
            if shard.perf is not None:
                perf[shard.rank] += shard.perf.total / 1000.0  # TorchRec's perf is in ms
            if shard.storage is not None:
                memory[shard.rank] += getattr(shard.storage, storage)
    return plan, {
        "estimated_step_seconds": max(perf),
        "per_rank_memory_bytes": memory,
        "plan_seconds": seconds,
    }

"""An explicit plan: one sharding type applied to every table (until the cost-model planner)."""

from __future__ import annotations

from torch import nn
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_row_wise,
    table_wise,
)
from torchrec.distributed.types import ModuleSharder, ShardingPlan


def explicit_plan(
    module_path: str,
    module: nn.Module,
    table_names: list[str],
    sharding_type: str,
    sharder: ModuleSharder[nn.Module],
    world_size: int,
    local_world_size: int,
    device_type: str,
    compute_kernel: str = "fused",
) -> ShardingPlan:
    """A ``ShardingPlan`` placing every table of ``module`` (at ``module_path``) by one type.

    table_wise places table i on rank i mod world_size; column_wise splits every table over all
    ranks; row_wise splits rows evenly over all ranks; data_parallel replicates;
    table_row_wise splits table i's rows over the ranks of node i mod num_nodes. (TorchRec's
    grid_shard helper only cuts column blocks of 128+ columns; the planner will build grids.)
    ``compute_kernel`` is ``fused`` (FBGEMM TBE, optimizer in backward) or ``dense``.
    """
    if world_size % local_world_size:
        raise ValueError(f"world size {world_size} is not a multiple of {local_world_size}")
    num_nodes = world_size // local_world_size
    per_table = {}
    for i, name in enumerate(table_names):
        if sharding_type == "row_wise":
            per_table[name] = row_wise(compute_kernel=compute_kernel)
        elif sharding_type == "table_wise":
            per_table[name] = table_wise(rank=i % world_size, compute_kernel=compute_kernel)
        elif sharding_type == "column_wise":
            per_table[name] = column_wise(
                ranks=list(range(world_size)), compute_kernel=compute_kernel
            )
        elif sharding_type == "data_parallel":
            per_table[name] = data_parallel()
        elif sharding_type == "table_row_wise":
            per_table[name] = table_row_wise(host_index=i % num_nodes)
        else:
            raise ValueError(f"unsupported sharding type {sharding_type!r}")
    module_plan = construct_module_sharding_plan(
        module,
        per_table,
        sharder=sharder,
        local_size=local_world_size,
        world_size=world_size,
        device_type=device_type,
    )
    return ShardingPlan({module_path: module_plan})

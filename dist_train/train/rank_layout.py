"""Which ranks share a node: discovered at start-up from each rank's node id.

TorchRec's hierarchical shardings (table_row_wise, grid_shard) treat each run of
``local_world_size`` consecutive ranks as one host. Ray groups "local" workers by node IP,
which is wrong when several Ray nodes share a machine (tests, or containers on one host), so
the ranks exchange their node ids and derive the layout themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch.distributed as dist

if TYPE_CHECKING:
    from dist_train.config.schema import JobConfig
    from dist_train.train.sharding import JobPlan


class RankLayoutError(RuntimeError):
    """Workers are placed in a way the job cannot use (uneven or interleaved nodes)."""


@dataclass(frozen=True)
class RankLayout:
    """This rank's place among ``num_nodes`` nodes of ``local_world_size`` ranks each."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    node_ids: tuple[str, ...]  # per rank


def layout_from_node_ids(node_ids: list[str], rank: int) -> RankLayout:
    """The rank layout implied by each rank's node id; ranks of a node must be contiguous."""
    world = len(node_ids)
    order: list[str] = []
    for i, node in enumerate(node_ids):
        if not order or order[-1] != node:
            if node in order:
                raise RankLayoutError(
                    f"rank {i} is on node {node} but ranks of that node are not contiguous "
                    f"(ranks by node: {node_ids})"
                )
            order.append(node)
    sizes = {n: node_ids.count(n) for n in order}
    if len(set(sizes.values())) != 1:
        raise RankLayoutError(f"nodes hold different numbers of ranks: {sizes}")
    local = world // len(order)
    return RankLayout(
        rank=rank,
        world_size=world,
        local_rank=rank % local,
        local_world_size=local,
        node_rank=rank // local,
        num_nodes=len(order),
        node_ids=tuple(node_ids),
    )


def discover_rank_layout(node_id: str) -> RankLayout:
    """Gather every rank's ``node_id`` and export LOCAL_WORLD_SIZE/LOCAL_RANK/NODE_RANK."""
    ids: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node_id)
    topo = layout_from_node_ids([str(i) for i in ids], dist.get_rank())
    os.environ.update(
        LOCAL_WORLD_SIZE=str(topo.local_world_size),
        LOCAL_RANK=str(topo.local_rank),
        NODE_RANK=str(topo.node_rank),
    )
    return topo


def check_landing(cfg: JobConfig, plan: JobPlan | None, topo: RankLayout, world: int) -> None:
    """Fail, saying how the workers landed, if that does not match the config or the plan."""
    if cfg.ray.num_nodes is not None and topo.num_nodes != cfg.ray.num_nodes:
        raise RankLayoutError(
            f"the job asks for {cfg.ray.num_nodes} nodes but its {world} workers landed on "
            f"{topo.num_nodes} ({topo.local_world_size} ranks each); check ray.num_nodes, "
            "cpus_per_worker and the nodes' CPU counts"
        )
    if plan is not None and plan.hierarchical and plan.local_world_size != topo.local_world_size:
        raise RankLayoutError(
            f"the plan puts {plan.local_world_size} ranks on a node but the workers landed "
            f"{topo.local_world_size} per node on {topo.num_nodes} node(s); set ray.num_nodes "
            "to match the cluster"
        )

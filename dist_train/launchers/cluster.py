"""Does a job's worker group fit a cluster? Pure logic over node resources.

Used on a live Ray cluster (``ray.nodes()``) before launching, and by ``dist-train validate``
on cluster-launcher and KubeRay files at their maximum size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class ClusterTooSmallError(RuntimeError):
    """The requested workers cannot all be placed; the message says what is missing."""


@dataclass(frozen=True)
class NodeResources:
    """One node (or ``count`` identical nodes) and what it offers."""

    name: str
    cpus: float
    gpus: float = 0.0
    memory_bytes: int = 0
    count: int = 1

    def worker_slots(self, cpus_per_worker: float, gpus_per_worker: float = 0.0) -> int:
        """Workers one such node can host."""
        slots = math.floor(self.cpus / cpus_per_worker + 1e-9)
        if gpus_per_worker > 0:
            slots = min(slots, math.floor(self.gpus / gpus_per_worker + 1e-9))
        return max(slots, 0)


def describe(nodes: list[NodeResources]) -> str:
    cpus = sum(n.cpus * n.count for n in nodes)
    gpus = sum(n.gpus * n.count for n in nodes)
    count = sum(n.count for n in nodes)
    return f"{count} node(s), {cpus:g} CPUs, {gpus:g} GPUs"


def check_fits(
    nodes: list[NodeResources],
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
    num_nodes: int | None = None,
) -> None:
    """Raise :class:`ClusterTooSmallError` unless ``num_workers`` fit ``nodes``.

    With ``num_nodes``, each of ``num_nodes`` nodes must host ``num_workers / num_nodes``.
    """
    per_node = [(n, n.worker_slots(cpus_per_worker, gpus_per_worker)) for n in nodes]
    total = sum(slots * n.count for n, slots in per_node)
    need = f"{num_workers} workers x {cpus_per_worker:g} CPU" + (
        f" + {gpus_per_worker:g} GPU" if gpus_per_worker else ""
    )
    detail = "; ".join(
        f"{n.name}{f' x{n.count}' if n.count > 1 else ''}: {n.cpus:g} CPUs, {n.gpus:g} GPUs "
        f"-> {slots} worker(s)"
        for n, slots in per_node
    )
    if total < num_workers:
        raise ClusterTooSmallError(
            f"the cluster is too small: {need} do not fit its {describe(nodes)} "
            f"(room for {total} worker(s): {detail})"
        )
    if num_nodes is not None:
        ranks = num_workers // num_nodes
        fitting = sum(n.count for n, slots in per_node if slots >= ranks)
        if fitting < num_nodes:
            raise ClusterTooSmallError(
                f"the job needs {num_nodes} nodes with room for {ranks} worker(s) each; "
                f"only {fitting} such node(s) in {describe(nodes)} ({detail})"
            )


def live_nodes(ray_nodes: list[dict[str, Any]]) -> list[NodeResources]:
    """NodeResources of the alive nodes in ``ray.nodes()`` output."""
    out = []
    for n in ray_nodes:
        if not n.get("Alive", False):
            continue
        res = n.get("Resources", {})
        out.append(
            NodeResources(
                name=str(n.get("NodeManagerAddress", "?")) + "/" + str(n.get("NodeID", "?"))[:8],
                cpus=float(res.get("CPU", 0.0)),
                gpus=float(res.get("GPU", 0.0)),
                memory_bytes=int(res.get("memory", 0)),
            )
        )
    return out

"""Does a job's worker group fit a cluster? Pure logic over node resources.

Used on a live Ray cluster (``ray.nodes()``) before launching, and by ``dist-train validate``
on cluster-launcher and KubeRay files at their maximum size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class ClusterLimits:
    """What a cluster file lets a cluster grow to: ``nodes``, each type at the most of it
    the cluster may hold (the head's type counting the head), and at most ``max_workers``
    nodes past the head ``head`` of all types together (a cluster-launcher file's
    top-level cap; None: no cap but each type's)."""

    nodes: list[NodeResources]
    head: str | None = None
    max_workers: int | None = None

    def largest(self, value: Callable[[NodeResources], float]) -> list[NodeResources]:
        """The cluster's largest mix by ``value`` of a node: the capped workers go to the
        types of most value first (the autoscaler may start any mix), the head always up.
        Taking the most valuable nodes first also gives the most nodes of any value."""
        if self.max_workers is None:
            return self.nodes
        budget = self.max_workers
        out = []
        for n in sorted(self.nodes, key=lambda n: -value(n)):  # stable: file order on ties
            head = int(n.name == self.head)
            workers = min(n.count - head, budget)
            budget -= workers
            if workers + head:
                out.append(replace(n, count=workers + head))
        return out

    def describe(self) -> str:
        """What the cluster may grow to, in words."""
        if self.max_workers is None:
            unbounded = any(n.count >= UNBOUNDED for n in self.nodes)
            return describe(self.nodes) if unbounded else f"at most {describe(self.nodes)}"
        cpus = sum(n.cpus * n.count for n in self.largest(lambda n: n.cpus))
        gpus = sum(n.gpus * n.count for n in self.largest(lambda n: n.gpus))
        counts = [(n.name, n.count - (n.name == self.head)) for n in self.nodes]
        types = ", ".join(f"{name} (up to {count})" for name, count in counts if count)
        # the types' own caps may hold fewer workers than the cluster's
        workers = min(self.max_workers, sum(count for _, count in counts))
        return (
            f"at most {1 + workers} node(s): the head ({self.head}) and "
            f"{workers} of {types or 'no worker type'}; up to {cpus:g} CPUs or "
            f"{gpus:g} GPUs"
        )


UNBOUNDED = 2**31 - 1
"""A node count with no bound: a KubeRay worker group autoscaled with no ``maxReplicas``
(its CRD's default)."""


def describe(nodes: list[NodeResources]) -> str:
    unbounded = [n.name for n in nodes if n.count >= UNBOUNDED]
    if unbounded:
        return f"as many nodes as it asks for ({', '.join(unbounded)}: autoscaled, no maxReplicas)"
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
    strategy: str = "PACK",
) -> None:
    """Raise :class:`ClusterTooSmallError` unless ``num_workers`` fit ``nodes``.

    With ``num_nodes``, each of ``num_nodes`` nodes must host ``num_workers / num_nodes``.
    Ray's placement ``strategy`` STRICT_SPREAD puts each worker on a node of its own, and
    STRICT_PACK all on one node (a group Ray cannot place waits for nodes without end).
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
    if strategy == "STRICT_SPREAD":
        hosts = sum(n.count for n, slots in per_node if slots >= 1)
        if hosts < num_workers:
            raise ClusterTooSmallError(
                f"placement_strategy STRICT_SPREAD puts each of the {num_workers} workers on "
                f"a node of its own; {describe(nodes)} has {hosts} node(s) with room for one "
                f"({detail})"
            )
    if strategy == "STRICT_PACK" and not any(slots >= num_workers for _, slots in per_node):
        raise ClusterTooSmallError(
            f"placement_strategy STRICT_PACK puts all {num_workers} workers on one node; no "
            f"node of {describe(nodes)} has room for them ({detail})"
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


def packing_risk(
    nodes: list[NodeResources],
    num_workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    num_nodes: int | None,
    strategy: str,
) -> str | None:
    """Why Ray may land the workers of a job with ``num_nodes`` on other nodes than it asks,
    or None: PACK fills a node before it uses the next, so a node with room for more than
    its share gets more (the job then stops at start: "landed on 1 node"); Ray places
    workers by resources, not per node."""
    if num_nodes is None or num_nodes == 1 or strategy != "PACK":
        return None
    ranks = num_workers // num_nodes
    roomy = [n for n in nodes if n.worker_slots(cpus_per_worker, gpus_per_worker) > ranks]
    if not roomy:
        return None
    node = roomy[0]
    risk = (
        f"Ray's PACK placement fills a node first: a {node.name} node has room for "
        f"{node.worker_slots(cpus_per_worker, gpus_per_worker)} workers, more than the "
        f"{ranks} of each of the job's {num_nodes} nodes"
    )
    # CPUs a worker that leave each roomy node room for its share exactly, if one value does
    cpus = math.floor(min(n.cpus for n in roomy) / ranks * 10_000) / 10_000
    exact = cpus > 0 and all(n.worker_slots(cpus, gpus_per_worker) == ranks for n in roomy)
    hosts = sum(n.count for n in nodes if n.worker_slots(cpus, gpus_per_worker) >= ranks)
    if exact and hosts >= num_nodes:
        return f"{risk}; set ray.cpus_per_worker={cpus:g} so that each node holds {ranks}"
    return (
        f"{risk}, and no one ray.cpus_per_worker gives every node exactly {ranks}: make the "
        "nodes the job may use alike (a head of 0 CPUs, say), or set "
        "ray.placement_strategy=SPREAD"
    )

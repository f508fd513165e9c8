"""The hardware a plan is made for: nodes, ranks, memory and the speeds of each resource.

A topology is read from a file written by ``dist-train calibrate`` (measured on the machine and
backend that will train) or starts from a built-in preset; command-line or config overrides
(nodes, ranks per node, memory per rank) are applied last. The file is validated once here
(pydantic); the planner only sees the plain, frozen :class:`Topology`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class TopologyError(ValueError):
    """An unreadable or inconsistent topology."""


@dataclass(frozen=True)
class Link:
    """One kind of link between ranks: per-rank bandwidth of each collective and a latency.

    Bandwidths are bytes one rank sends per second (gloo implements the collectives very
    differently, so each is measured on its own)."""

    all_to_all_bytes_per_second: float
    reduce_scatter_bytes_per_second: float
    all_gather_bytes_per_second: float
    all_reduce_bytes_per_second: float
    latency_seconds: float  # fixed cost of one collective call across this link


@dataclass(frozen=True)
class Topology:
    """A cluster of ``num_nodes`` x ``ranks_per_node`` identical ranks and its measured speeds."""

    num_nodes: int
    ranks_per_node: int
    device_type: str  # cpu | cuda
    memory_per_rank_bytes: int
    memory_bytes_per_second: float  # copy bandwidth of one rank (read + write)
    # TBE forward + backward + fused update, seconds per looked-up row, by row width (columns)
    lookup_seconds_per_row: tuple[tuple[int, float], ...]
    dense_flops_per_second: float  # the dense MLPs' matmuls
    interaction_elements_per_second: float  # dot interaction fwd+bwd, per sample x n^2 x d
    dense_update_elements_per_second: float  # a torch optimizer step, per parameter
    intra_node: Link
    inter_node: Link
    # TorchRec's own work per pooled bag a rank handles (KJT permutes, bucketizing, output
    # assembly), by sharding type; measured by `dist-train calibrate`
    bag_seconds: tuple[tuple[str, float], ...] = ()
    reserve_fraction: float = 0.1  # of each rank's memory kept free (allocator, fragmentation)
    # what a training step allocates beyond tables, optimizer state and dense model, whatever
    # the tables (autograd, allocator caches, TorchRec and DDP buffers)
    step_overhead_bytes: int = 0
    cores_per_node: int | None = None  # CPU: ranks of a node share these cores
    threads_per_rank: int = 1
    source: str = "preset"  # where the speeds came from (a calibration file or a preset)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.ranks_per_node

    @property
    def usable_bytes_per_rank(self) -> int:
        return int(self.memory_per_rank_bytes * (1.0 - self.reserve_fraction))


_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS.update({"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40})


def parse_bytes(text: str | int | float) -> int:
    """``80GiB``, ``16GB``, ``512MiB``, ``1e9`` or a number of bytes -> bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kmgtKMGT]i?)?[bB]?\s*", text)
    if not m:
        raise TopologyError(f"cannot read {text!r} as a size (examples: 80GiB, 16GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinkSpec(_Strict):
    all_to_all_bytes_per_second: float = Field(gt=0)
    reduce_scatter_bytes_per_second: float = Field(gt=0)
    all_gather_bytes_per_second: float = Field(gt=0)
    all_reduce_bytes_per_second: float = Field(gt=0)
    latency_seconds: float = Field(ge=0)


class TopologySpec(_Strict):
    """The on-disk topology file (JSON), as ``dist-train calibrate`` writes it."""

    num_nodes: int = Field(1, gt=0)
    ranks_per_node: int = Field(gt=0)
    device_type: Literal["cpu", "cuda"]
    memory_per_rank_bytes: int = Field(gt=0)
    memory_bytes_per_second: float = Field(gt=0)
    lookup_seconds_per_row: dict[int, float] = Field(
        min_length=1, description="Row width (columns) -> TBE seconds per looked-up row."
    )
    dense_flops_per_second: float = Field(gt=0)
    interaction_elements_per_second: float = Field(gt=0)
    dense_update_elements_per_second: float = Field(gt=0)
    intra_node: LinkSpec
    inter_node: LinkSpec
    bag_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Sharding type -> TorchRec's seconds per pooled bag a rank handles.",
    )
    reserve_fraction: float = Field(0.1, ge=0, lt=1)
    step_overhead_bytes: int = Field(
        0,
        ge=0,
        description="Bytes a training step allocates beyond tables, their optimizer state and "
        "the dense model, whatever the tables' size.",
    )
    cores_per_node: int | None = Field(None, gt=0)
    threads_per_rank: int = Field(1, gt=0)
    source: str = "file"
    measured: dict[str, object] = Field(
        default_factory=dict, description="Raw calibration measurements, for the record."
    )

    @field_validator("lookup_seconds_per_row")
    @classmethod
    def _positive_lookups(cls, v: dict[int, float]) -> dict[int, float]:
        bad = {k: x for k, x in v.items() if k <= 0 or x <= 0}
        if bad:
            raise ValueError(f"row widths and seconds must be > 0: {bad}")
        return v


# Measured on this project's 2-core CPU machines with `dist-train calibrate --ranks 2` (gloo, 1
# thread per rank; docs/planner.md), rounded. Inter-node speeds cannot be measured on one machine:
# they assume a 25 Gb/s NIC shared by a node's 2 ranks and a 500 us latency, and gloo's
# collectives no faster than measured on one machine.
CPU_PRESET = TopologySpec(
    num_nodes=1,
    ranks_per_node=2,
    device_type="cpu",
    memory_per_rank_bytes=8 * 2**30,
    memory_bytes_per_second=2.4e10,
    lookup_seconds_per_row={4: 4.9e-8, 8: 5.3e-8, 16: 7.2e-8, 32: 1.15e-7, 64: 2.3e-7, 128: 5.9e-7},
    dense_flops_per_second=9.6e10,
    interaction_elements_per_second=2.5e9,
    dense_update_elements_per_second=7.7e8,
    intra_node=LinkSpec(
        all_to_all_bytes_per_second=1.5e9,
        reduce_scatter_bytes_per_second=6.6e8,
        all_gather_bytes_per_second=1.4e9,
        all_reduce_bytes_per_second=2.2e9,
        latency_seconds=3.0e-4,
    ),
    inter_node=LinkSpec(
        all_to_all_bytes_per_second=1.5e9,
        reduce_scatter_bytes_per_second=6.6e8,
        all_gather_bytes_per_second=1.4e9,
        all_reduce_bytes_per_second=1.5e9,
        latency_seconds=5e-4,
    ),
    bag_seconds={
        "row_wise": 2.0e-7,
        "column_wise": 1.0e-7,
        "table_wise": 8.0e-8,
        "data_parallel": 1.9e-7,
    },
    cores_per_node=2,
    threads_per_rank=1,
    # Peak RSS over 3 training steps of the default job with a 1,000-row table, less the
    # process before it built the trainer, less the tables and dense model: 91-97 MiB per rank
    # on this project's machines.
    step_overhead_bytes=95 * 2**20,
    source="preset:cpu (calibrated on the project's 2-core machines)",
)

# Datasheet figures for an H100 SXM node (not measured here): 80 GB HBM3 at 3.35 TB/s, NVLink 4
# at 450 GB/s per direction, one 400 Gb/s NIC per GPU, ~400 dense TFLOP/s. TBE rows assume half
# the HBM bandwidth plus 0.5 ns per row. Run `dist-train calibrate` on the GPU machines instead.
CUDA_PRESET = TopologySpec(
    num_nodes=1,
    ranks_per_node=8,
    device_type="cuda",
    memory_per_rank_bytes=80 * 10**9,
    memory_bytes_per_second=3.35e12,
    lookup_seconds_per_row={d: 5e-10 + 3 * 4 * d / 1.6e12 for d in (4, 16, 64, 128, 256, 512)},
    dense_flops_per_second=4.0e14,
    interaction_elements_per_second=1.0e12,
    dense_update_elements_per_second=1.0e11,
    intra_node=LinkSpec(
        all_to_all_bytes_per_second=3.0e11,
        reduce_scatter_bytes_per_second=3.0e11,
        all_gather_bytes_per_second=3.0e11,
        all_reduce_bytes_per_second=3.0e11,
        latency_seconds=2e-5,
    ),
    inter_node=LinkSpec(
        all_to_all_bytes_per_second=4.0e10,
        reduce_scatter_bytes_per_second=4.0e10,
        all_gather_bytes_per_second=4.0e10,
        all_reduce_bytes_per_second=4.0e10,
        latency_seconds=3e-5,
    ),
    source="preset:cuda (H100 datasheet figures, not measured)",
)


def topology_of(spec: TopologySpec) -> Topology:
    values = spec.model_dump(exclude={"measured"})
    values["intra_node"] = Link(**values["intra_node"])
    values["inter_node"] = Link(**values["inter_node"])
    values["lookup_seconds_per_row"] = tuple(sorted(spec.lookup_seconds_per_row.items()))
    values["bag_seconds"] = tuple(sorted(spec.bag_seconds.items()))
    return Topology(**values)


def load_topology(path: str | Path) -> Topology:
    """A topology file (JSON from ``dist-train calibrate``); errors name the file and key."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such topology file") from None
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}: not valid JSON ({e})") from None
    try:
        spec = TopologySpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise TopologyError(f"{path}: {problems}") from None
    return topology_of(spec)


def save_topology(spec: TopologySpec, path: str | Path) -> None:
    Path(path).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")


def preset(device_type: str) -> Topology:
    """The built-in topology for ``cpu`` or ``cuda``."""
    if device_type not in ("cpu", "cuda"):
        raise TopologyError(f"unknown device type {device_type!r}; use cpu or cuda")
    return topology_of(CPU_PRESET if device_type == "cpu" else CUDA_PRESET)


def resize(
    topo: Topology,
    num_nodes: int | None = None,
    ranks_per_node: int | None = None,
    memory_per_rank_bytes: int | None = None,
    cores_per_node: int | None = None,
) -> Topology:
    """``topo`` with another shape or memory size (its measured speeds kept)."""
    out = replace(
        topo,
        cores_per_node=topo.cores_per_node if cores_per_node is None else cores_per_node,
        num_nodes=topo.num_nodes if num_nodes is None else num_nodes,
        ranks_per_node=topo.ranks_per_node if ranks_per_node is None else ranks_per_node,
        memory_per_rank_bytes=(
            topo.memory_per_rank_bytes if memory_per_rank_bytes is None else memory_per_rank_bytes
        ),
    )
    check_topology(out)
    return out


def check_topology(topo: Topology) -> None:
    """Refuse shapes and speeds no cluster has."""
    problems = []
    if topo.num_nodes < 1 or topo.ranks_per_node < 1:
        problems.append(f"{topo.num_nodes} nodes x {topo.ranks_per_node} ranks per node")
    if topo.memory_per_rank_bytes <= 0:
        problems.append(f"memory per rank {topo.memory_per_rank_bytes} bytes")
    if not 0 <= topo.reserve_fraction < 1:
        problems.append(f"reserve_fraction {topo.reserve_fraction} (use 0 <= r < 1)")
    for name, value in asdict(topo).items():
        if isinstance(value, float) and value <= 0 and name != "reserve_fraction":
            problems.append(f"{name} = {value} (must be > 0)")
    for link_name in ("intra_node", "inter_node"):
        link: Link = getattr(topo, link_name)
        speeds = (
            link.all_to_all_bytes_per_second,
            link.reduce_scatter_bytes_per_second,
            link.all_gather_bytes_per_second,
            link.all_reduce_bytes_per_second,
        )
        if min(speeds) <= 0:
            problems.append(f"{link_name} bandwidth must be > 0")
        if link.latency_seconds < 0:
            problems.append(f"{link_name} latency must be >= 0")
    if topo.device_type == "cpu" and topo.cores_per_node is not None:
        if topo.threads_per_rank < 1 or topo.cores_per_node < 1:
            problems.append(
                f"{topo.cores_per_node} cores per node, {topo.threads_per_rank} threads per rank"
            )
    if problems:
        raise TopologyError("inconsistent topology: " + "; ".join(problems))

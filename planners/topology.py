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
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from planners.json_keys import KeyGivenTwice, loads_unique_keys
from planners.types import SHARDING_TYPES


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
    # CUDA: host (DDR) memory a rank may hold tables in, and the host-to-device link it reaches
    # it over (UVM, per direction). None: no host offload (CPU ranks, older topology files), so
    # the planner never offers the UVM caching kernel.
    host_memory_per_rank_bytes: int | None = None
    host_to_device_bytes_per_second: float | None = None

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.ranks_per_node

    @property
    def usable_bytes_per_rank(self) -> int:
        return int(self.memory_per_rank_bytes * (1.0 - self.reserve_fraction))

    @property
    def usable_host_bytes_per_rank(self) -> int:
        """Host memory a rank may fill with UVM-held tables (0 without host offload)."""
        if self.host_memory_per_rank_bytes is None:
            return 0
        return int(self.host_memory_per_rank_bytes * (1.0 - self.reserve_fraction))

    @property
    def host_offload(self) -> bool:
        """Whether tables may live in host memory behind an HBM cache (UVM caching)."""
        return (
            self.device_type == "cuda"
            and bool(self.host_memory_per_rank_bytes)
            and bool(self.host_to_device_bytes_per_second)
        )


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS.update({"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40})
# A number, then an optional unit prefix and an optional B (any case: configs spell "16gb" for
# bytes; a memory size in bits is no reading anyone means).
_SIZE = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([kmgtKMGT][iI]?)?[bB]?\s*")
# The largest size numpy's int64 arithmetic in the planner holds.
_MAX_BYTES = 2**63 - 1


def parse_bytes(text: str | int | float) -> int:
    """``80GiB``, ``16GB``, ``512MiB``, ``1e9`` or a number of bytes -> bytes (at least 1).

    Raises :class:`TopologyError`, naming ``text``, for anything else: an unknown unit, a
    malformed, non-finite, zero or overflowing size."""
    examples = "examples: 80GiB, 16GB, 512MiB, 1e9"
    value: int | float | Decimal
    if isinstance(text, int | float):
        value = text
    else:
        m = _SIZE.fullmatch(text)
        if not m:
            raise TopologyError(f"cannot read {text!r} as a size ({examples})")
        # exact (a float rounds sizes past 2^53); an exponent past any size is out of range
        # before it is applied (1e400000000 would take Decimal ages)
        number = Decimal(m.group(1))
        huge = number.adjusted() > 30
        value = Decimal("Infinity") if huge else number * _UNITS[(m.group(2) or "").lower()]
    if not 1 <= value <= _MAX_BYTES:  # also refuses inf and nan
        raise TopologyError(f"{text!r} is not a size between 1 byte and 8 EiB ({examples})")
    return int(value)


class _Strict(BaseModel):
    # a JSON NaN or Infinity (Python's json reads both) is no measurement
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _not_text_or_bool(v: object) -> object:
    # JSON's true and "2" are no counts or measurements (pydantic reads them as 1 and 2): a
    # hand-edited true per row planned every lookup at a second; 8e9 still reads as a count
    if isinstance(v, bool | str):
        raise ValueError(f"Input should be a number, not {type(v).__name__} {v!r}")
    return v


Number = Annotated[float, BeforeValidator(_not_text_or_bool)]
Count = Annotated[int, BeforeValidator(_not_text_or_bool)]
# Bounds no machine falls outside: a rate under 1 a second (1e-320 bytes/s planned every
# step at "inf ms"), or an hour for one row, one bag or one collective's latency.
Rate = Annotated[Number, Field(ge=1)]
MAX_SECONDS = 3600.0
# 131,072 ranks plan in about 8 s and 650 MB here; 2^31 nodes asked for 32 GiB, and a
# million took minutes
MAX_RANKS = 2**18
MAX_CORES = 2**16  # a node's, or a rank's threads: past any machine's


class LinkSpec(_Strict):
    all_to_all_bytes_per_second: Rate
    reduce_scatter_bytes_per_second: Rate
    all_gather_bytes_per_second: Rate
    all_reduce_bytes_per_second: Rate
    latency_seconds: Number = Field(ge=0, le=MAX_SECONDS)


class TopologySpec(_Strict):
    """The on-disk topology file (JSON), as ``dist-train calibrate`` writes it."""

    num_nodes: Count = Field(1, gt=0)
    ranks_per_node: Count = Field(gt=0)
    device_type: Literal["cpu", "cuda"]
    memory_per_rank_bytes: Count = Field(gt=0, le=_MAX_BYTES)
    memory_bytes_per_second: Rate
    lookup_seconds_per_row: dict[int, Number] = Field(
        min_length=1, description="Row width (columns) -> TBE seconds per looked-up row."
    )
    dense_flops_per_second: Rate
    interaction_elements_per_second: Rate
    dense_update_elements_per_second: Rate
    intra_node: LinkSpec
    inter_node: LinkSpec
    bag_seconds: dict[str, Number] = Field(
        default_factory=dict,
        description="Sharding type -> TorchRec's seconds per pooled bag a rank handles.",
    )
    reserve_fraction: Number = Field(0.1, ge=0, lt=1)
    step_overhead_bytes: Count = Field(
        0,
        ge=0,
        le=_MAX_BYTES,
        description="Bytes a training step allocates beyond tables, their optimizer state and "
        "the dense model, whatever the tables' size.",
    )
    cores_per_node: Count | None = Field(None, gt=0, le=MAX_CORES)
    threads_per_rank: Count = Field(1, gt=0, le=MAX_CORES)
    host_memory_per_rank_bytes: Count | None = Field(
        None,
        gt=0,
        le=_MAX_BYTES,
        description="CUDA: host (DDR) memory per rank for tables behind the UVM cache; "
        "absent = no host offload.",
    )
    host_to_device_bytes_per_second: Number | None = Field(
        None,
        ge=1,
        description="CUDA: host-to-device (PCIe/UVM) bandwidth per rank and direction.",
    )
    source: str = "file"
    measured: dict[str, object] = Field(
        default_factory=dict, description="Raw calibration measurements, for the record."
    )

    @field_validator("lookup_seconds_per_row", mode="before")
    @classmethod
    def _widths_written_once(cls, v: Any) -> Any:
        """A width written twice (``"4"`` and ``"04"``, or ``" 4"``) passed JSON's duplicate-key
        check and was read as one, the last value kept: each width must be its plain digits."""
        if isinstance(v, dict):
            odd = [k for k in v if isinstance(k, str) and not re.fullmatch(r"[1-9][0-9]*", k)]
            if odd:
                raise ValueError(
                    f"row widths are written as plain positive integers: {odd[0]!r} is not"
                )
        return v

    @field_validator("lookup_seconds_per_row")
    @classmethod
    def _positive_lookups(cls, v: dict[int, float]) -> dict[int, float]:
        bad = {k: x for k, x in v.items() if k <= 0 or not 0 < x <= MAX_SECONDS}
        if bad:
            raise ValueError(f"row widths must be > 0, seconds in (0, {MAX_SECONDS:g}]: {bad}")
        return v

    @model_validator(mode="after")
    def _step_within_memory(self) -> TopologySpec:
        # 2**62 bytes passed, and every plan then blamed the model for the memory
        if self.step_overhead_bytes >= self.memory_per_rank_bytes:
            raise ValueError(
                f"step_overhead_bytes ({self.step_overhead_bytes:,}), a step's own working "
                f"memory, is no less than memory_per_rank_bytes ({self.memory_per_rank_bytes:,})"
            )
        return self

    @field_validator("bag_seconds")
    @classmethod
    def _known_bag_types(cls, v: dict[str, float]) -> dict[str, float]:
        # a misspelt type's cost was read as none: 'row-wise' made row_wise's bags free
        unknown = sorted(set(v) - set(SHARDING_TYPES))
        if unknown:
            raise ValueError(f"unknown sharding types {unknown}; known: {list(SHARDING_TYPES)}")
        bad = {k: x for k, x in v.items() if not 0 <= x <= MAX_SECONDS}
        if bad:
            raise ValueError(f"seconds must be in [0, {MAX_SECONDS:g}]: {bad}")
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
    # A shared table's kernel as the trainer runs it on CPU ranks, read as one feature
    # (dist_train/train/shared_tables.py): medians of three runs (2026-12-03). Before, the
    # preset measured FBGEMM's shared-table path; timed against it in one process (3
    # interleaved rounds, 1 thread) that path took 1.35-2.45x as long a row (widths 4-128).
    lookup_seconds_per_row={4: 4.4e-8, 8: 4.8e-8, 16: 4.7e-8, 32: 6.7e-8, 64: 1.16e-7, 128: 4.2e-7},
    # MKL's rate on Zen 4; `dist-train calibrate` probes through oneDNN on AMD's AVX-512
    # CPUs (planners/gemm.py), 1.23x this at 2 threads and 1.40x at 1 there
    # (docs/performance_log.md, "The dense layers through oneDNN"): the preset overstates the
    # dense term there
    dense_flops_per_second=9.6e10,
    # 2.5e9 measured with autograd's backward of the Gram matrix; the model's interaction in
    # C (dist_train/models/dot_interaction.py, AVX-512), as calibrate times it, runs 2.48x
    # its rate (median of 7 interleaved pairs, 1 thread, 2026-12-03). This preset assumes the
    # C kernels: where torch's path runs (about 1.25x autograd's rate) it underestimates the
    # interaction about 2x
    interaction_elements_per_second=6.2e9,
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
    # Three runs of calibrate after the kernels were read as one feature (2026-12-03) gave
    # 120-206, 82-104, 59-115, 100-210 and 207-302 ns: the spread of the earlier runs these
    # figures come from, so they stay.
    bag_seconds={
        "row_wise": 2.0e-7,
        "column_wise": 1.0e-7,
        "table_wise": 8.0e-8,
        "data_parallel": 1.9e-7,
        # dist-train calibrate, three runs: 197, 241 and 274 ns (the median)
        "row_wise_unpooled": 2.4e-7,
    },
    cores_per_node=2,
    threads_per_rank=1,
    # Peak RSS over 3 training steps of the default job with a 1,000-row table, less the
    # process before it built the trainer, less the tables and dense model: 91-97 MiB per rank
    # on this project's machines; less the default DLRM's activations as the cost model
    # charges them (ACTIVATION_PEAK x 2,048 x 6,884 bytes: 20 MiB).
    step_overhead_bytes=75 * 2**20,
    source="preset:cpu (calibrated on the project's 2-core machines)",
)

# An H100 SXM node (8 GPUs on NVLink 4 / NVSwitch, one 400 Gb/s NIC per GPU), from published
# figures, not measured here; run `dist-train calibrate` on the GPU machines instead. Sources
# (quoted numbers in brackets; "assumption" where no public figure was found):
# [DS]  NVIDIA H100 datasheet, H100 SXM column, https://www.nvidia.com/en-us/data-center/h100/
#       (copies checked: https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html and
#       https://glennklockwood.com/garden/processors/h100): 80 GB HBM3 at 3.35 TB/s; FP32
#       67 TFLOPS; TF32 989 / BF16 1,979 TFLOPS "shown with sparsity, 1/2 lower without"; NVLink
#       900 GB/s (bidirectional, 450 GB/s each way); PCIe Gen5 128 GB/s (64 GB/s each way).
# [AR]  NCCL maintainer, https://github.com/NVIDIA/nccl-tests/issues/212: "450GB/s is the line
#       rate. With the protocol overhead (~20%) NCCL can get an effective NVLink bandwidth of
#       370GB/s, which you can observe as BusBw when running non-allreduce operations";
#       all-reduce with NVLink SHARP on 8 GPUs: "a peak busBw of ~480GB/s". Also
#       https://github.com/NVIDIA/nccl-tests/issues/326 (all_gather on 8 H100: "360 GB/s is
#       exactly what we'd expect on H100").
# [NIC] https://github.com/NVIDIA/nccl-tests/issues/267: "CX-7 NICs at NDR rate (400Gbps)
#       should achieve up to 48-49GB/s per NIC"; "Alltoall cannot aggregate the bandwidth of
#       multiple NICs, so the performance you should see is the performance of a single NIC".
# [MN]  Multi-node all_reduce busbw expected for "H100 SXM, NVLink + IB NDR": 400-450 GB/s,
#       https://saturncloud.io/blog/crusoe-nccl-cluster-validation
# [SYS] 8x H100 SXM servers: "host_memory_capacity": "2 TB", "8x 400Gb Infiniband", "PCIe
#       Gen5 x16" host interconnect (MLPerf system description,
#       https://github.com/mlcommons/inference_results_v3.1/blob/main/closed/Dell/systems/XE9680_H100_SXM_80GBx8_TRT.json).
# [H2D] nvbandwidth host_to_device_memcpy_ce: 55.63 GB/s (a PCIe Gen5 x16 GPU; the page does not
#       name it), https://dev.smart-guide.co.kr/en/tutorial/nvidia-nvbandwidth-measure-gpu-interconnect-performance-tutorial/
# [TBE] FBGEMM TBE on an H100 (TorchRec's TBE benchmark, https://github.com/meta-pytorch/torchrec/pull/4757):
#       forward "2.525 TB/s; 64.7%" of peak, backward (with the fused optimizer) "1.035 TB/s;
#       26.5%".
# [LAT] nccl-tests all_reduce of 4 B to 4 KiB on one 8-GPU Hopper NVLink 4 node (H20): 12.5-16.7
#       us, https://github.com/deepseek-ai/DeepEP/issues/303; 2 nodes x 8 Hopper (H20) with CX-7
#       NDR NICs, NVLSTree: 46-48 us, https://github.com/NVIDIA/nccl/issues/1244.
# [TF32] PyTorch computes float32 matmuls in full FP32 unless told otherwise
#       (torch.backends.cuda.matmul.allow_tf32 is False since 1.12; checked here on torch 2.13:
#       False, float32_matmul_precision "highest"),
#       https://pytorch.org/docs/stable/notes/cuda.html#tensorfloat-32-tf32-on-ampere-and-later-devices;
#       this project's trainer sets neither TF32 nor autocast.
_H100_HBM = 3.35e12  # [DS] bytes/s
CUDA_PRESET = TopologySpec(
    num_nodes=1,
    ranks_per_node=8,  # [SYS] 8 GPUs per server
    device_type="cuda",
    memory_per_rank_bytes=80 * 10**9,  # [DS] 80 GB
    memory_bytes_per_second=_H100_HBM,  # [DS] 3.35 TB/s
    # Per looked-up row of d fp32 columns: the forward pass reads 4d bytes at 64.7 % of the HBM
    # peak and backward + fused update read and write the row (8d bytes, our reading of the
    # benchmark's "backward" traffic) at 26.5 % [TBE]; plus 0.5 ns per row for the index work
    # (sorting, deduplicating), an assumption kept from the first preset.
    lookup_seconds_per_row={
        d: 5e-10 + 4 * d / (0.647 * _H100_HBM) + 8 * d / (0.265 * _H100_HBM)
        for d in (4, 16, 64, 128, 256, 512)
    },
    # FP32 peak, 67 TFLOPS [DS]: the trainer's MLPs run in float32 without TF32 [TF32]. (The
    # first preset's 400 TFLOP/s matched no datasheet figure: dense TF32 is 495, FP32 67.) A peak
    # is an upper bound for these small GEMMs.
    dense_flops_per_second=6.7e13,
    # The dot interaction (6 flops per sample x n^2 x d: a bmm forward, two backward) on small
    # batched FP32 GEMMs: assumption, about 9 % of the FP32 peak [DS]; calibrate to replace it.
    interaction_elements_per_second=1.0e12,
    # torch.optim.Adagrad (foreach) moves about 44 bytes per parameter (addcmul 12, sqrt 8, add 8,
    # addcdiv 16): 3.35 TB/s [DS] / 44 B at an assumed 85 % of peak.
    dense_update_elements_per_second=6.5e10,
    intra_node=LinkSpec(
        all_to_all_bytes_per_second=3.7e11,  # [AR] effective NVLink, non-allreduce busBw
        reduce_scatter_bytes_per_second=3.7e11,  # [AR]
        all_gather_bytes_per_second=3.7e11,  # [AR]
        all_reduce_bytes_per_second=4.8e11,  # [AR] NVLink SHARP all-reduce busBw, 8 GPUs
        latency_seconds=1.5e-5,  # [LAT] 12.5-16.7 us per small collective in one node
    ),
    # Per rank, its own NIC: the model sends a rank's off-node bytes over it. For all-to-all
    # that is what NCCL does [NIC]. NCCL's rings and trees send only about 1/8 of a rank's
    # all-reduce / reduce-scatter / all-gather bytes off the node, spread over all 8 NICs
    # (multi-node all-reduce busBw 400-450 GB/s [MN]); the model charges them all to the NIC, so
    # it overstates those collectives across nodes (docs/planner.md).
    inter_node=LinkSpec(
        all_to_all_bytes_per_second=4.8e10,  # [NIC] 48-49 GB/s per NIC
        reduce_scatter_bytes_per_second=4.8e10,  # [NIC]
        all_gather_bytes_per_second=4.8e10,  # [NIC]
        all_reduce_bytes_per_second=4.8e10,  # [NIC]
        latency_seconds=5e-5,  # [LAT] 46-48 us for a small all-reduce over 2 nodes
    ),
    # UVM caching (fused_uvm_caching): tables held in host memory behind an HBM cache.
    host_memory_per_rank_bytes=250 * 10**9,  # [SYS] 2 TB per 8-GPU server / 8 ranks
    # [H2D] 55.6 GB/s measured; [DS] 64 GB/s per direction raw. Assumes each GPU's x16 link is
    # its own (servers that put two GPUs behind one switch uplink halve it: calibrate).
    host_to_device_bytes_per_second=5.5e10,
    source="preset:cuda (H100 SXM datasheet and published NCCL/FBGEMM figures, not measured)",
)


def topology_of(spec: TopologySpec) -> Topology:
    values = spec.model_dump(exclude={"measured"})
    values["intra_node"] = Link(**values["intra_node"])
    values["inter_node"] = Link(**values["inter_node"])
    values["lookup_seconds_per_row"] = tuple(sorted(spec.lookup_seconds_per_row.items()))
    values["bag_seconds"] = tuple(sorted(spec.bag_seconds.items()))
    return Topology(**values)


def load_topology(path: str | Path) -> Topology:
    """A topology file (JSON from ``dist-train calibrate``; ``~`` expanded, as the driver
    expands a job's paths); errors name the file and key."""
    try:
        raw = loads_unique_keys(Path(path).expanduser().read_text())
    except KeyGivenTwice as e:
        raise TopologyError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such topology file") from None
    except UnicodeDecodeError:
        raise TopologyError(f"{path}: not a topology file (not UTF-8 text)") from None
    except OSError as e:  # a folder, say
        raise TopologyError(f"{path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}: not valid JSON ({e})") from None
    except ValueError as e:  # an integer of more digits than Python converts, say
        raise TopologyError(f"{path}: not a topology file ({e})") from None
    except RecursionError:
        raise TopologyError(f"{path}: not a topology file (JSON nested too deeply)") from None
    try:
        spec = TopologySpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'the file'}: {err['msg']}"
            for err in e.errors()
        )
        raise TopologyError(f"{path}: {problems}") from None
    topo = topology_of(spec)
    try:
        check_topology(topo)
    except TopologyError as e:
        raise TopologyError(f"{path}: {e}") from None
    return topo


def topology_json(spec: TopologySpec) -> str:
    """``spec`` as a topology file holds it (``sharding.topology``)."""
    return json.dumps(spec.model_dump(mode="json"), indent=2) + "\n"


def save_topology(spec: TopologySpec, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(topology_json(spec))


def preset_spec(device_type: str) -> TopologySpec:
    """The built-in topology file's contents for ``cpu`` or ``cuda``."""
    if device_type not in ("cpu", "cuda"):
        raise TopologyError(f"unknown device type {device_type!r}; use cpu or cuda")
    return CPU_PRESET if device_type == "cpu" else CUDA_PRESET


def preset(device_type: str) -> Topology:
    """The built-in topology for ``cpu`` or ``cuda``."""
    return topology_of(preset_spec(device_type))


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
    elif topo.num_nodes * topo.ranks_per_node > MAX_RANKS:  # its arrays outgrow memory
        problems.append(
            f"{topo.num_nodes:,} nodes x {topo.ranks_per_node:,} ranks per node: the planner "
            f"plans for at most {MAX_RANKS:,} ranks"
        )
    if topo.memory_per_rank_bytes <= 0:
        problems.append(f"memory per rank {topo.memory_per_rank_bytes} bytes")
    if topo.host_memory_per_rank_bytes is not None and topo.host_memory_per_rank_bytes <= 0:
        problems.append(f"host memory per rank {topo.host_memory_per_rank_bytes} bytes")
    if not 0 <= topo.reserve_fraction < 1:
        problems.append(f"reserve_fraction {topo.reserve_fraction} (use 0 <= r < 1)")
    elif topo.memory_per_rank_bytes > 0 and topo.usable_bytes_per_rank < 1:
        problems.append(
            f"memory per rank {topo.memory_per_rank_bytes} bytes leaves none usable after "
            f"its reserve (reserve_fraction {topo.reserve_fraction:g})"
        )
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

"""``dist-train calibrate``: measure this machine and backend, write a topology file.

Measured on the device the job's ranks train on (``--device``: CPU ranks over gloo with the
job's thread count, or one GPU per rank over nccl; CUDA work is timed to completion):

- copy bandwidth: ``Tensor.copy_`` of 256 MiB (bytes read + written per second);
- dense matmul flop/s at MLP-like shapes, the dot interaction (batched ``x x^T`` and its
  upper-triangle gather, forward and backward) per sample x n^2 x d, and a torch Adagrad step
  per parameter;
- FBGEMM TBE forward + backward with the fused row-wise Adagrad update, seconds per looked-up
  row at row widths 4 to 128. Each of 32 features draws ids Zipf(1.1) over 10M values, hashed
  into a 1M-row table with its own salt, like Unified Embedding over CTR data (repeated ids
  are cheaper than uniform ones; distinct salts spread the hot ids over many rows);
- all-to-all, reduce-scatter, all-gather and all-reduce between real processes at two message
  sizes, fit as ``latency + bytes / bandwidth`` (bytes one rank moves; twice that for a ring
  all-reduce);
- TorchRec's own per-bag work by sharding type: a real sharded EmbeddingBagCollection runs
  forward + backward with each flat type between the ranks; what the model's lookups and traffic
  do not explain, over the bags the busiest rank handles, is that type's ``bag_seconds``.

Inter-node links cannot be measured on one machine; they keep the preset's NIC figures, capped
by the measured intra-node link, and the file says so under ``measured``. On CUDA the host
memory per rank is this machine's RAM over its ranks and the host-to-device link is a pinned
copy's measured rate (the UVM cache's misses cross it).
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from planners.cores import usable_cores, usable_memory_bytes
from planners.cost_model import bags_handled, latency_costs, table_costs
from planners.gemm import ONEDNN_GEMM, onednn_linear
from planners.search import search
from planners.topology import (
    LinkSpec,
    Topology,
    TopologySpec,
    preset_spec,
    resize,
    topology_of,
)
from planners.types import OptimizerState, TableLoad, Workload

TBE_ROWS = 1_000_000
TBE_VALUES = 10_000_000
TBE_BATCH = 2048
TBE_BAGS = 32
TBE_DIMS = (4, 8, 16, 32, 64, 128)
COLLECTIVES = ("all_to_all", "reduce_scatter", "all_gather", "all_reduce")
COLLECTIVE_BYTES = (256 * 2**10, 16 * 2**20)
_TRAFFIC = {"all_to_all": 1, "reduce_scatter": 1, "all_gather": 1, "all_reduce": 2}
CPU = torch.device("cpu")


def _best_seconds(
    fn: Callable[[], object], repeats: int, warmup: int = 2, device: torch.device = CPU
) -> float:
    """The fastest of ``repeats`` timed calls (the least disturbed by other load); on a GPU
    each call is timed until its kernels finish."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(min(times))


def rank_device(device_type: str) -> torch.device:
    """This process's device: its current GPU (the launcher chose it) or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else CPU


COPY_PROBE_BYTES = 256 * 2**20  # a buffer well past any cache: memory's own bandwidth


def copy_probe(
    device: torch.device = CPU, buffer_bytes: int = COPY_PROBE_BYTES
) -> tuple[Callable[[], object], float]:
    """One copy of a ``buffer_bytes`` buffer into another on ``device`` and the bytes it
    reads and writes."""
    src = torch.ones(max(1, buffer_bytes // 4), device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src), 2 * src.numel() * 4


def matmul_probe(device: torch.device = CPU) -> tuple[Callable[[], object], float]:
    """One 2048 x 512 x 512 matmul on ``device`` and its flops, through the library the dense
    network's large layers use (:mod:`planners.gemm`: oneDNN on AVX-512 CPUs other than
    Intel's)."""
    a = torch.randn(2048, 512, device=device)
    b = torch.randn(512, 512, device=device)
    flops = 2 * 2048 * 512 * 512
    if ONEDNN_GEMM and device.type == "cpu":
        return lambda: onednn_linear(a, b.t()), flops
    return lambda: a @ b, flops


def copy_bytes_per_second(device: torch.device = CPU) -> float:
    call, moved = copy_probe(device)
    return moved / _best_seconds(call, repeats=5, device=device)


def host_to_device_bytes_per_second(device: torch.device) -> float:
    """A pinned 256 MiB host buffer copied to ``device`` (a GPU), bytes per second."""
    src = torch.ones(64 * 2**20).pin_memory()
    dst = torch.empty(src.shape, device=device)
    seconds = _best_seconds(lambda: dst.copy_(src, non_blocking=True), 5, device=device)
    return src.numel() * 4 / seconds


def dense_flops_per_second(device: torch.device = CPU) -> float:
    call, flops = matmul_probe(device)
    return flops / _best_seconds(call, repeats=10, device=device)


def dense_update_elements_per_second(device: torch.device = CPU) -> float:
    param = torch.nn.Parameter(torch.randn(4 * 2**20, device=device))
    param.grad = torch.randn_like(param)
    opt = torch.optim.Adagrad([param], lr=0.01)
    return param.numel() / _best_seconds(opt.step, repeats=5, device=device)


# The model's dot interaction, ``[B, n, d]`` -> each pair's dot product (the trainer hands it
# in: the planner does not import the model).
PairwiseDots = Callable[[torch.Tensor], torch.Tensor]


def _autograd_pairwise_dots(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[1]
    rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)
    return torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, rows * n + cols)


def interaction_elements_per_second(
    batch: int = 2048,
    vectors: int = 40,
    dim: int = 16,
    device: torch.device = CPU,
    pairwise_dots: PairwiseDots | None = None,
) -> float:
    """The dot interaction's forward + backward, per sample x n^2 x d: the model's
    ``pairwise_dots``, else plain autograd through the Gram matrix."""
    x = torch.randn(batch, vectors, dim, requires_grad=True, device=device)
    dots = pairwise_dots or _autograd_pairwise_dots

    def step() -> None:
        dots(x).sum().backward()

    return batch * vectors * vectors * dim / _best_seconds(step, repeats=5, device=device)


def zipf_rows(batch: int, bags: int, seed: int = 0) -> torch.Tensor:
    """Ids of ``batch`` samples x ``bags`` features, each drawn Zipf(1.1) over TBE_VALUES
    values and hashed into TBE_ROWS rows with a salt per feature, as Unified Embedding does
    (bag-major, the order TBE takes)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, TBE_VALUES + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-1.1)
    values = np.searchsorted(cdf / cdf[-1], rng.random((bags, batch))).astype(np.uint64)
    salts = (np.arange(bags, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93))[:, None]
    mixed = (values ^ salts) * np.uint64(0x9E3779B97F4A7C15)
    rows = (mixed >> np.uint64(17)) % np.uint64(TBE_ROWS)
    return torch.from_numpy(rows.reshape(-1).astype(np.int64))


def calibration_tbe(
    dim: int, device: torch.device = CPU, features: int = TBE_BAGS
) -> torch.nn.Module:
    """The measured kernel: a TBE_ROWS x ``dim`` table (in host memory, or in the GPU's) read
    by ``features`` features (TBE_BAGS, as a unified table is), with FBGEMM's fused row-wise
    Adagrad (also what ``dist-train bench kernel`` times)."""
    # FBGEMM and TorchRec take seconds to import; only the measurements need them.
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    cuda = device.type == "cuda"
    location = EmbeddingLocation.DEVICE if cuda else EmbeddingLocation.HOST
    compute = ComputeDevice.CUDA if cuda else ComputeDevice.CPU
    return SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(TBE_ROWS, dim, location, compute)],
        feature_table_map=[0] * features,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.01,
        **({"device": device} if cuda else {}),
    )


def tbe_seconds_per_row(
    dim: int, indices: torch.Tensor, device: torch.device = CPU, features: int = TBE_BAGS
) -> float:
    """Forward + backward (fused row-wise Adagrad) time per looked-up row of width ``dim``:
    TBE_BATCH x TBE_BAGS bags of one row each, the table read by ``features`` features
    (TBE_BAGS as TorchRec declares a unified table; 1 as the trainer's CPU ranks run one,
    dist_train/train/shared_tables.py)."""
    tbe = calibration_tbe(dim, device, features)
    n = indices.numel()
    indices = indices.to(device)
    offsets = torch.arange(n + 1, device=device)
    grad = torch.ones(n // features, features * dim, device=device)

    def step() -> None:
        out = tbe(indices, offsets)
        out.backward(grad)

    return _best_seconds(step, repeats=12, warmup=3, device=device) / n


def non_decreasing(seconds: dict[int, float]) -> dict[int, float]:
    """Per-row times by row width, each raised to the narrower widths' largest: a wider row
    reads more bytes, so a faster reading at a wider width is the machine's noise (which would
    otherwise make the cost model's extrapolation beyond the widest width fall)."""
    widths = sorted(seconds)
    return dict(zip(widths, itertools.accumulate((seconds[w] for w in widths), max), strict=True))


def _fit(xs: tuple[float, float], ys: tuple[float, float]) -> tuple[float, float]:
    """Intercept and slope through two points, both kept positive."""
    slope = max((ys[1] - ys[0]) / (xs[1] - xs[0]), 1e-30)
    intercept = max(ys[0] - slope * xs[0], 1e-12)
    return intercept, slope


def collective_timings(repeats: int, device_type: str = "cpu") -> dict[str, list[float]]:
    """Run on every rank of the group: seconds of each collective at each message size
    (the slowest rank's best of ``repeats``), on ``device_type`` tensors (gloo or nccl)."""
    world = dist.get_world_size()
    device = rank_device(device_type)
    out: dict[str, list[float]] = {name: [] for name in COLLECTIVES}
    for nbytes in COLLECTIVE_BYTES:
        n = nbytes // 4 // world * world
        send = torch.ones(n, device=device)
        recv, small = torch.empty(n, device=device), torch.empty(n // world, device=device)
        calls: dict[str, Callable[[], object]] = {
            "all_to_all": functools.partial(dist.all_to_all_single, recv, send),
            "reduce_scatter": functools.partial(dist.reduce_scatter_tensor, small, send),
            "all_gather": functools.partial(dist.all_gather_into_tensor, recv, small),
            "all_reduce": functools.partial(dist.all_reduce, recv),
        }
        for name in COLLECTIVES:
            dist.barrier()
            best = _best_seconds(calls[name], repeats, device=device)
            worst = torch.tensor([best])  # a CPU tensor: gloo, beside nccl on GPU ranks
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
            out[name].append(float(worst.item()))
    return out


FRAMEWORK_TYPES = ("row_wise", "column_wise", "table_wise", "data_parallel")
# Timed only where the trainer hands calibrate its unpooled dists (the planner does not import
# the trainer): ``Unpool(model, tables)`` switches a sharded model's row-wise tables to them.
UNPOOLED = "row_wise_unpooled"
Unpool = Callable[[Any, list[str]], int]
# ``OneFeature(model)``: the trainer's re-declaration of a sharded model's shared tables as read
# by one feature (dist_train/train/shared_tables.py), where it makes one; the tables changed.
OneFeature = Callable[[Any], list[str]]
FRAMEWORK_ROWS = 200_000
FRAMEWORK_DIM = 16
FRAMEWORK_BAGS = 32
FRAMEWORK_BATCH = 1024
FRAMEWORK_ROUNDS = 5
REFERENCE_MEMORY_BYTES = 2**40  # what the reference table is planned on (1 TiB: ample)


def _framework_workload(device_type: str) -> Workload:
    table = TableLoad("t", FRAMEWORK_ROWS, FRAMEWORK_DIM, FRAMEWORK_BAGS, float(FRAMEWORK_BAGS))
    state = OptimizerState.of("rowwise_adagrad", device_type)
    return Workload((table,), FRAMEWORK_BATCH, state, 0, 0)


def sharded_step_timings(
    spec: TopologySpec, unpool: Unpool | None = None, one_feature: OneFeature | None = None
) -> list[float]:
    """Run on every rank: median forward + backward seconds of a real TorchRec sharded
    EmbeddingBagCollection (one table, FRAMEWORK_BAGS features, fused row-wise Adagrad) for
    each of :func:`framework_types`, timed in interleaved rounds; with ``one_feature``, its
    kernels as the trainer runs them."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from planners.planner import plan_from_placements  # imports TorchRec too
    from planners.sharders import AnyDeviceEmbeddingBagCollectionSharder, fused_params

    world, rank = dist.get_world_size(), dist.get_rank()
    device = rank_device(spec.device_type)
    topo = _reference_topology(spec, world)
    workload = _framework_workload(spec.device_type)
    features = [f"f{i}" for i in range(FRAMEWORK_BAGS)]
    sharder = AnyDeviceEmbeddingBagCollectionSharder(
        fused_params=fused_params("rowwise_adagrad", 0.01, 1e-8, 0.0)
    )
    models = []
    for t in framework_types(unpool):
        ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="t",
                    embedding_dim=FRAMEWORK_DIM,
                    num_embeddings=FRAMEWORK_ROWS,
                    feature_names=features,
                )
            ],
            device=torch.device("meta"),
        )
        placements = search(workload, topo, (t,)).best.placements
        kernel = "dense" if t == "data_parallel" else "fused"
        plan = plan_from_placements(ebc, placements, workload, topo, kernel)
        model = DistributedModelParallel(
            ebc,
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=device,
            plan=plan,
            sharders=[sharder],  # type: ignore[list-item]
        )
        if t == UNPOOLED and unpool is not None:
            unpool(model, ["t"])
        if one_feature is not None:
            one_feature(model)
        models.append(model)
    ids = (zipf_rows(FRAMEWORK_BATCH, FRAMEWORK_BAGS, seed=rank) % FRAMEWORK_ROWS).to(device)
    lengths = torch.ones(ids.numel(), dtype=torch.int32, device=device)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=features, values=ids, lengths=lengths)

    def step(model: Any) -> None:
        out = model(kjt)
        out.values().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: list[list[float]] = [[] for _ in models]
    for model in models:
        step(model)
    for _ in range(FRAMEWORK_ROUNDS):
        for i, model in enumerate(models):
            for _ in range(3):
                dist.barrier()
                start = time.perf_counter()
                step(model)
                dist.barrier()
                times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def _reference_topology(spec: TopologySpec, ranks: int) -> Topology:
    """One node of ``ranks`` with ``spec``'s speeds and memory enough for the reference
    table: the memory a user gives is recorded, not needed to measure (a small figure made
    the reference table fit nowhere, after minutes of measuring)."""
    ample = max(spec.memory_per_rank_bytes, REFERENCE_MEMORY_BYTES)
    return resize(topology_of(spec), num_nodes=1, ranks_per_node=ranks, memory_per_rank_bytes=ample)


def framework_types(unpool: Unpool | None) -> tuple[str, ...]:
    """The sharding types whose per-bag work calibrate times."""
    return (*FRAMEWORK_TYPES, UNPOOLED) if unpool is not None else FRAMEWORK_TYPES


def _bag_seconds(
    spec: TopologySpec, ranks: int, seconds: list[float], types: tuple[str, ...]
) -> dict[str, float]:
    """Per-bag TorchRec work by type: the measured step less the model's lookups and traffic,
    over the bags the busiest rank handles."""
    topo = _reference_topology(spec, ranks)
    workload = _framework_workload(spec.device_type)
    table = workload.tables[0]
    out = {}
    for t, measured in zip(types, seconds, strict=True):
        placement = search(workload, topo, (t,)).best.placements[0]
        costs = table_costs(placement, table, workload, topo) + latency_costs({t}, topo)
        handled = bags_handled(placement, table, workload, topo)
        r = int(np.argmax(handled))
        out[t] = max(measured - float(costs.step_seconds[r]), 0.0) / float(handled[r])
    return out


def _inter_node(intra: LinkSpec, device_type: str) -> LinkSpec:
    """The preset's NIC figures, but never faster than the measured intra-node link."""
    nic = preset_spec(device_type).inter_node
    return LinkSpec(
        **{
            f"{name}_bytes_per_second": min(
                getattr(nic, f"{name}_bytes_per_second"), getattr(intra, f"{name}_bytes_per_second")
            )
            for name in COLLECTIVES
        },
        latency_seconds=max(nic.latency_seconds, intra.latency_seconds),
    )


# Runs ``fn(*args)`` on ``ranks`` processes of ``threads`` threads on ``device_type`` (one GPU
# each on cuda, current device set); each rank's result.
Launch = Callable[[Callable[..., Any], tuple[Any, ...], int, int, str], list[Any]]


def calibrate(
    run_processes: Launch,
    ranks: int = 2,
    threads: int = 1,
    memory_per_rank_bytes: int | None = None,
    repeats: int = 20,
    device_type: str = "cpu",
    unpool: Unpool | None = None,
    pairwise_dots: PairwiseDots | None = None,
    one_feature: OneFeature | None = None,
) -> TopologySpec:
    """Measure this machine with ``ranks`` processes of ``threads`` threads each on
    ``device_type`` (CPU ranks over gloo, or one GPU per rank over nccl), started by
    ``run_processes`` (the trainer's launcher: the planner does not import it); ``unpool``:
    the trainer's unpooled row-wise dists, to time row_wise_unpooled's per-bag work too;
    ``pairwise_dots``: the model's dot interaction, timed in place of plain autograd's;
    ``one_feature``: the trainer's re-declaration of shared tables, so that the lookups and
    sharded steps are timed on the CPU kernels the trainer runs."""
    torch.set_num_threads(threads)
    cuda = device_type == "cuda"
    device = torch.device("cuda", 0) if cuda else CPU
    base = preset_spec(device_type)
    indices = zipf_rows(TBE_BATCH, TBE_BAGS)
    # Two passes over the widths, the faster of each: a shared machine's bursts of other work
    # otherwise land on whichever width was being timed.
    features = 1 if one_feature is not None and not cuda else TBE_BAGS
    passes = [
        {d: tbe_seconds_per_row(d, indices, device, features) for d in TBE_DIMS} for _ in range(2)
    ]
    raw_lookups = {d: min(p[d] for p in passes) for d in TBE_DIMS}
    lookups = non_decreasing(raw_lookups)
    backend = "nccl" if cuda else "gloo"
    measured: dict[str, Any] = {
        "ranks": ranks,
        "threads_per_rank": threads,
        "backend": backend,
        "tbe_ids": f"{TBE_BAGS} features x Zipf(1.1) over {TBE_VALUES:,} values, salted "
        f"hash into {TBE_ROWS:,} rows, the table declared read by {features} feature(s)",
    }
    if lookups != raw_lookups:
        measured["tbe_seconds_per_row"] = raw_lookups  # before non_decreasing
    if ranks > 1:
        timings = run_processes(
            collective_timings, (repeats, device_type), ranks, threads, device_type
        )[0]
        # Bytes a rank moves, as the cost model counts them (ring all-reduce moves twice).
        moved = [float(b) * (ranks - 1) / ranks for b in COLLECTIVE_BYTES]
        fits = {
            name: _fit((moved[0] * _TRAFFIC[name], moved[1] * _TRAFFIC[name]), (t[0], t[1]))
            for name, t in timings.items()
        }
        measured["collective_seconds"] = {
            name: dict(zip((str(b) for b in COLLECTIVE_BYTES), t, strict=True))
            for name, t in timings.items()
        }
        intra = LinkSpec(
            **{f"{name}_bytes_per_second": 1.0 / fits[name][1] for name in COLLECTIVES},
            latency_seconds=float(np.mean([fits[name][0] for name in COLLECTIVES])),
        )
    else:
        intra = base.intra_node
        measured["collective_seconds"] = f"not measured (1 rank): the {device_type} preset's"
    measured["inter_node"] = "not measured (one machine): the preset's NIC, capped by intra_node"
    ram = usable_memory_bytes()
    if memory_per_rank_bytes is None:
        memory_per_rank_bytes = torch.cuda.get_device_properties(0).total_memory if cuda else 0
        memory_per_rank_bytes = memory_per_rank_bytes or ram // ranks
    where = os.uname().nodename + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
    spec = TopologySpec(
        num_nodes=1,
        ranks_per_node=ranks,
        device_type="cuda" if cuda else "cpu",
        memory_per_rank_bytes=memory_per_rank_bytes,
        memory_bytes_per_second=copy_bytes_per_second(device),
        lookup_seconds_per_row=lookups,
        dense_flops_per_second=dense_flops_per_second(device),
        interaction_elements_per_second=interaction_elements_per_second(
            device=device, pairwise_dots=pairwise_dots
        ),
        dense_update_elements_per_second=dense_update_elements_per_second(device),
        intra_node=intra,
        inter_node=_inter_node(intra, device_type),
        reserve_fraction=base.reserve_fraction,
        step_overhead_bytes=base.step_overhead_bytes,
        # CPU ranks share the node's cores; a GPU rank's host threads do not bound its step
        cores_per_node=None if cuda else usable_cores(),
        threads_per_rank=threads,
        host_memory_per_rank_bytes=ram // ranks if cuda else None,
        host_to_device_bytes_per_second=host_to_device_bytes_per_second(device) if cuda else None,
        source=f"calibrated: {ranks} {backend} ranks x {threads} thread(s) on {where}",
        measured=measured,
    )
    if ranks < 2:  # no exchange to time TorchRec's per-bag work by: the preset's, as the links
        measured["torchrec_step_seconds"] = f"not measured (1 rank): the {device_type} preset's"
        return spec.model_copy(update={"bag_seconds": base.bag_seconds, "measured": measured})
    types = framework_types(unpool)
    seconds = run_processes(
        sharded_step_timings, (spec, unpool, one_feature), ranks, threads, device_type
    )[0]
    measured["torchrec_step_seconds"] = dict(zip(types, seconds, strict=True))
    measured["torchrec_reference"] = (
        f"{FRAMEWORK_ROWS:,} x {FRAMEWORK_DIM} table, {FRAMEWORK_BAGS} bags, batch "
        f"{FRAMEWORK_BATCH} per rank"
    )
    return spec.model_copy(
        update={"bag_seconds": _bag_seconds(spec, ranks, seconds, types), "measured": measured}
    )

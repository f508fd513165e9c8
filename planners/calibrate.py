"""``dist-train calibrate``: measure this machine and backend, write a topology file.

Measured (CPU, gloo; each rank with the job's thread count):

- copy bandwidth: ``Tensor.copy_`` of 256 MiB (bytes read + written per second);
- dense matmul flop/s at MLP-like shapes;
- FBGEMM TBE forward + backward with the fused row-wise Adagrad update, at two row widths, fit
  as ``seconds per row = 1 / lookup_rows_per_second + row_bytes / lookup_bytes_per_second``;
- all-to-all and reduce-scatter between real processes at two message sizes, fit as
  ``latency + bytes / bandwidth`` (bytes one rank sends).

Inter-node links cannot be measured on one machine; they keep the base topology's figures and
the file says so under ``measured``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from planners.topology import CPU_PRESET, LinkSpec, TopologySpec

TBE_ROWS = 1_000_000
TBE_BATCH = 2048
TBE_BAGS = 32
TBE_DIMS = (16, 128)
COLLECTIVE_BYTES = (64 * 2**10, 8 * 2**20)


def _best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """The fastest of ``repeats`` timed calls (the least disturbed by other load)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(min(times))


def copy_bytes_per_second() -> float:
    src = torch.ones(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), repeats=5)
    return 2 * src.numel() * 4 / seconds


def dense_flops_per_second() -> float:
    a, b = torch.randn(2048, 512), torch.randn(512, 512)
    seconds = _best_seconds(lambda: a @ b, repeats=10)
    return 2 * 2048 * 512 * 512 / seconds


def tbe_seconds_per_row(dim: int) -> float:
    """Forward + backward (fused row-wise Adagrad) time per looked-up row of width ``dim``."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(TBE_ROWS, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        feature_table_map=[0] * TBE_BAGS,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.01,
    )
    gen = torch.Generator().manual_seed(0)
    n = TBE_BATCH * TBE_BAGS
    indices = torch.randint(0, TBE_ROWS, (n,), generator=gen)
    offsets = torch.arange(n + 1)
    grad = torch.ones(TBE_BATCH, TBE_BAGS * dim)

    def step() -> None:
        out = tbe(indices, offsets)
        out.backward(grad)

    return _best_seconds(step, repeats=5) / n


def _fit(xs: tuple[float, float], ys: tuple[float, float]) -> tuple[float, float]:
    """Intercept and slope through two points, both kept positive."""
    slope = max((ys[1] - ys[0]) / (xs[1] - xs[0]), 1e-30)
    intercept = max(ys[0] - slope * xs[0], 1e-12)
    return intercept, slope


def collective_timings(repeats: int) -> dict[str, list[float]]:
    """Run on every rank of a gloo group: seconds of each collective at each message size."""
    world = dist.get_world_size()
    out: dict[str, list[float]] = {"all_to_all": [], "reduce_scatter": []}
    for nbytes in COLLECTIVE_BYTES:
        n = nbytes // 4 // world * world
        send = torch.ones(n)
        recv = torch.empty(n)
        small = torch.empty(n // world)

        calls: tuple[tuple[str, Callable[[], object]], ...] = (
            ("all_to_all", functools.partial(dist.all_to_all_single, recv, send)),
            ("reduce_scatter", functools.partial(dist.reduce_scatter_tensor, small, send)),
        )
        for name, fn in calls:
            dist.barrier()
            seconds = _best_seconds(fn, repeats)
            worst = torch.tensor([seconds])
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
            out[name].append(float(worst.item()))
    return out


def _inter_node(intra: LinkSpec) -> LinkSpec:
    """The preset's NIC figures, but never faster than the measured intra-node link."""
    nic = CPU_PRESET.inter_node
    return LinkSpec(
        all_to_all_bytes_per_second=min(
            nic.all_to_all_bytes_per_second, intra.all_to_all_bytes_per_second
        ),
        reduce_scatter_bytes_per_second=min(
            nic.reduce_scatter_bytes_per_second, intra.reduce_scatter_bytes_per_second
        ),
        latency_seconds=max(nic.latency_seconds, intra.latency_seconds),
    )


def calibrate(
    ranks: int = 2, threads: int = 1, memory_per_rank_bytes: int | None = None, repeats: int = 10
) -> TopologySpec:
    """Measure this machine (CPU, gloo) with ``ranks`` processes of ``threads`` threads each."""
    from dist_train.launchers.processes import run_processes

    torch.set_num_threads(threads)
    measured: dict[str, Any] = {"ranks": ranks, "threads_per_rank": threads, "backend": "gloo"}
    copy_bw = copy_bytes_per_second()
    flops = dense_flops_per_second()
    per_row = [tbe_seconds_per_row(d) for d in TBE_DIMS]
    row_s, byte_s = _fit((TBE_DIMS[0] * 4.0, TBE_DIMS[1] * 4.0), (per_row[0], per_row[1]))
    measured.update(
        copy_bytes_per_second=copy_bw,
        dense_flops_per_second=flops,
        tbe_seconds_per_row={str(d): s for d, s in zip(TBE_DIMS, per_row, strict=True)},
    )
    links: dict[str, tuple[float, float]] = {}
    if ranks > 1:
        timings = run_processes(collective_timings, (repeats,), ranks, threads)[0]
        sent = tuple(float(b) * (ranks - 1) / ranks for b in COLLECTIVE_BYTES)
        for name, seconds in timings.items():
            latency, per_byte = _fit((sent[0], sent[1]), (seconds[0], seconds[1]))
            links[name] = (latency, 1.0 / per_byte)
        measured["collective_seconds"] = {
            name: dict(zip((str(b) for b in COLLECTIVE_BYTES), s, strict=True))
            for name, s in timings.items()
        }
        intra = LinkSpec(
            all_to_all_bytes_per_second=links["all_to_all"][1],
            reduce_scatter_bytes_per_second=links["reduce_scatter"][1],
            latency_seconds=float(np.mean([links[k][0] for k in links])),
        )
    else:
        intra = CPU_PRESET.intra_node
        measured["collective_seconds"] = "not measured (1 rank)"
    measured["inter_node"] = (
        "not measured (one machine): the CPU preset's NIC, capped by the intra-node link"
    )
    if memory_per_rank_bytes is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_per_rank_bytes = total // ranks
    return TopologySpec(
        num_nodes=1,
        ranks_per_node=ranks,
        device_type="cpu",
        memory_per_rank_bytes=memory_per_rank_bytes,
        memory_bytes_per_second=copy_bw,
        lookup_rows_per_second=1.0 / row_s,
        lookup_bytes_per_second=1.0 / byte_s,
        dense_flops_per_second=flops,
        intra_node=intra,
        inter_node=_inter_node(intra),
        reserve_fraction=CPU_PRESET.reserve_fraction,
        source=f"calibrated: {ranks} gloo ranks x {threads} thread(s) on {os.uname().nodename}",
        measured=measured,
    )

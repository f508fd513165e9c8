"""The floor under a training step: its unavoidable bytes and flops at measured rates.

Per rank and step, for a job's :class:`~planners.types.Workload`:

- embeddings: every looked-up row read in the forward pass (``dim x 4`` bytes an id), each
  distinct row read and written again with its optimizer state in the fused update
  (``2 x dim x 4`` bytes a distinct row and twice its state: row-wise Adagrad's 8, SGD's
  none, Adam's ``2 x dim x 8``; an update sums a row's gradients first), and the pooled
  outputs written forward and their gradients read backward;
- dense network: ``6 x parameters x batch`` matmul flops plus the interaction's least work
  (DLRM's dot: the n (n - 1) / 2 distinct pairs' products, 2 flops an element forward, 4
  backward), and the optimizer reading a parameter, its gradient and state and writing the
  parameter and state (``(3 + 2 x slots) x 4`` bytes a parameter: Adagrad's 20, SGD's 12,
  Adam's 28);
- collectives (``world > 1``): per table the fewer of two ways' bytes leaving the rank in
  all-to-alls: its ids, pooled vectors (forward) and their gradients (backward); or one
  request, vector and gradient per distinct row (row_wise_unpooled); and DDP's ring
  all-reduce of the dense gradients.

Distinct rows are a rank's batch's, as measured on the job's data where the caller has them
(``bench train``: :func:`~dist_train.bench.train.distinct_rows_per_batch`), else as the
planner expects them (Zipf draws, :func:`~planners.cost_model.distinct_rows`).

Rates are measured on every rank at once, as the step runs (``bench train``: in every round,
beside the steps they judge): copy bandwidth (bytes read + written) and 2048 x 512 x 512
matmul flop/s over windows of back-to-back calls that every rank runs together (the
slowest rank's window, the best of three), and the 16 MiB all-to-all and all-reduce. The
floor adds the terms: CPU ranks compute and run gloo's collectives on the same cores, one
after another. It is a floor, not an estimate: no latency, no framework work, all lookups
streaming at copy speed. The copy runs over a working set the size of a rank's share of the
tables and their state (:func:`working_set_bytes`): the default job's 20 MB copy about twice
as fast as 256 MiB does here (a cache holds them), and at memory's speed the floor's lookups
took longer than a plain ``embedding_bag`` of the same batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from planners.calibrate import (
    COLLECTIVE_BYTES,
    COPY_PROBE_BYTES,
    collective_timings,
    copy_probe,
    matmul_probe,
)
from planners.cost_model import distinct_rows
from planners.types import INDEX_BYTES, WEIGHT_BYTES, TableLoad, Workload

MIN_COPY_BYTES = 2**20  # the copy probe's smallest buffer: tinier ones time the call's overhead


def working_set_bytes(workload: Workload, world: int) -> int:
    """A rank's share of the tables and their optimizer state: what its lookups and updates
    read and write (the copy rate's working set; every rank probes at once)."""
    held = sum(
        t.weight_bytes + workload.optimizer.bytes_for(t.rows, t.dim) for t in workload.tables
    )
    return max(int(held // world), 2 * MIN_COPY_BYTES)


ROWWISE_ADAGRAD_STATE_BYTES = 4  # a row's accumulator


def embedding_bytes(
    ids: float,
    bags: float,
    dim: int,
    distinct: float,
    state_bytes_per_row: float = ROWWISE_ADAGRAD_STATE_BYTES,
) -> tuple[float, float]:
    """Bytes a table-batched lookup of ``ids`` into ``bags``, ``distinct`` rows among them,
    must move (forward, backward with the fused update): forward reads each looked-up row
    and writes each pooled output; backward reads the pooled gradients, then reads and writes
    each distinct row and its ``state_bytes_per_row`` of optimizer state once (the update
    sums a row's gradients before it applies them)."""
    forward = (ids + bags) * dim * WEIGHT_BYTES
    backward = bags * dim * WEIGHT_BYTES + distinct * 2 * (dim * WEIGHT_BYTES + state_bytes_per_row)
    return forward, backward


def dense_update_bytes(workload: Workload) -> float:
    """Bytes the dense optimizer must move a step: each parameter, its gradient and state
    read, the parameter and state written."""
    return workload.dense_parameters * (3 + 2 * workload.dense_optimizer_slots) * WEIGHT_BYTES


def all_to_all_bytes(table: TableLoad, workload: Workload, distinct: float) -> float:
    """Bytes a rank's lookups of ``table`` must send, forward and backward: its ids, pooled
    vectors and their gradients, or a request, a vector and a gradient per ``distinct``
    row, whichever is fewer."""
    batch = workload.batch_size_per_rank
    vector = table.dim * WEIGHT_BYTES
    pooled = batch * (table.ids_per_sample * INDEX_BYTES + 2 * table.bags_per_sample * vector)
    unpooled = distinct * (INDEX_BYTES + 2 * vector)
    return min(pooled, unpooled)


@dataclass(frozen=True)
class MachineRates:
    """This machine's measured rates, per rank, with every rank busy."""

    copy_bytes_per_second: float
    matmul_flops_per_second: float
    all_to_all_bytes_per_second: float  # bytes one rank sends
    all_reduce_bytes_per_second: float  # bytes one rank moves in a ring (2 x its buffer)


def sustained_rate(fn: Callable[[], object], work: float, calls: int, windows: int = 3) -> float:
    """Run on every rank at once: ``work`` per call of ``fn`` over ``calls`` back-to-back
    calls on every rank together, per second of the slowest rank's window; the best of
    ``windows``. Ranks that share cores share them here as in the step: the fastest single
    call instead catches a rank running alone (4 ranks on this machine's 2 cores: 40-77
    GFLOP/s a rank that way, 27 each sustained, against 129 for one rank's 2 threads)."""
    fn()
    best = float("inf")
    for _ in range(windows):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        slowest = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        best = min(best, float(slowest.item()))
    return work * calls / best


def copy_and_matmul_rates(copy_bytes: int = COPY_PROBE_BYTES) -> tuple[float, float]:
    """Run on every rank at once: a rank's copy bandwidth (``copy_bytes`` copied, half of
    them read and half written) and matmul flop/s with every rank busy, on calibration's
    probes (:func:`~planners.calibrate.copy_probe`, :func:`~planners.calibrate.matmul_probe`)."""
    call, moved = copy_probe(buffer_bytes=max(copy_bytes // 2, MIN_COPY_BYTES))
    # windows of about the 256 MiB probe's three calls, however small the buffer
    calls = max(3, math.ceil(3 * 2 * COPY_PROBE_BYTES / moved))
    copy = sustained_rate(call, moved, calls=calls)
    return copy, sustained_rate(*matmul_probe(), calls=10)


def measure_rates(copy_bytes: int = COPY_PROBE_BYTES, repeats: int = 5) -> MachineRates:
    """Run on every rank of the process group at once: a rank's rates, its copy bandwidth
    over a working set of ``copy_bytes`` (its tables and their state: cache-sized ones
    copy faster than memory's bandwidth, and the floor must not charge them more)."""
    world = dist.get_world_size()
    copy, flops = copy_and_matmul_rates(copy_bytes)
    if world == 1:  # no collectives: their terms are 0 (step_floor); JSON writes null
        return MachineRates(copy, flops, float("inf"), float("inf"))
    timings = collective_timings(repeats)
    moved = COLLECTIVE_BYTES[-1] * (world - 1) / world
    return MachineRates(
        copy, flops, moved / timings["all_to_all"][-1], 2 * moved / timings["all_reduce"][-1]
    )


def step_floor(
    workload: Workload,
    world: int,
    rates: MachineRates,
    distinct: Mapping[str, float] | None = None,
    updated: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Seconds of each term of the floor, and ``floor`` (their sum). ``distinct``: per
    table name, the distinct rows a rank's batch reads, measured; a table it leaves out
    takes the planner's estimate. ``updated``: a rank's share of the distinct rows the
    ranks' batches read together, which a row-wise update writes once (``distinct`` where
    not given: at one rank they are the same)."""
    batch = workload.batch_size_per_rank
    measured = distinct or {}
    rows = {
        t.name: measured[t.name] if t.name in measured else distinct_rows(t, workload)
        for t in workload.tables
    }
    written = {t.name: (updated or rows).get(t.name, rows[t.name]) for t in workload.tables}
    state = workload.optimizer
    lookups = sum(
        sum(
            embedding_bytes(
                batch * t.ids_per_sample,
                batch * t.bags_per_sample,
                t.dim,
                written[t.name],
                state.bytes_per_row + t.dim * state.bytes_per_element,
            )
        )
        for t in workload.tables
    )
    params = workload.dense_parameters
    least = workload.interaction_least_elements_per_sample
    interaction = workload.interaction_elements_per_sample if least is None else least
    flops = 6.0 * params * batch + 6.0 * batch * interaction
    terms = {
        "embedding_bytes": lookups / rates.copy_bytes_per_second,
        "dense_flops": flops / rates.matmul_flops_per_second,
        "dense_update": dense_update_bytes(workload) / rates.copy_bytes_per_second,
        "all_to_all": 0.0,
        "all_reduce": 0.0,
    }
    if world > 1:
        share = (world - 1) / world
        sent = sum(all_to_all_bytes(t, workload, rows[t.name]) for t in workload.tables)
        terms["all_to_all"] = sent * share / rates.all_to_all_bytes_per_second
        terms["all_reduce"] = 2 * params * WEIGHT_BYTES * share / rates.all_reduce_bytes_per_second
    terms["floor"] = sum(terms.values())
    return terms


DENSE_TERMS = ("dense_flops", "dense_update", "all_reduce")
"""The floor's terms a step without embeddings still pays: the dense network's flops, its
optimizer's bytes and DDP's all-reduce."""


def dense_floor(terms: dict[str, float]) -> float:
    """Seconds of :func:`step_floor`'s ``terms`` that the dense network alone must take."""
    return sum(terms[k] for k in DENSE_TERMS)

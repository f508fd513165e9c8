"""The floor under a training step: its unavoidable bytes and flops at measured rates.

Per rank and step, for a job's :class:`~planners.types.Workload`:

- embeddings: every looked-up row read in the forward pass, read and written again with its
  row-wise Adagrad accumulator in the fused update (``3 x dim x 4 + 8`` bytes an id), and the
  pooled outputs written forward and their gradients read backward;
- dense network: ``6 x parameters x batch`` matmul flops plus the pairwise interaction
  (2 flops an element forward, 4 backward), and the Adagrad update reading the parameter,
  its gradient and state and writing two (20 bytes a parameter);
- collectives (``world > 1``): the ids and pooled vectors (forward) and their gradients
  (backward) leaving the rank in all-to-alls, and DDP's ring all-reduce of the dense
  gradients.

Rates are measured on every rank at once, as the step runs: copy bandwidth (bytes read +
written), 2048 x 512 x 512 matmul flop/s, and the 16 MiB all-to-all and all-reduce. The
floor adds the terms: CPU ranks compute and run gloo's collectives on the same cores, one
after another. It is a floor, not an estimate: no latency, no framework work, all lookups
streaming at copy speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from planners.calibrate import (
    COLLECTIVE_BYTES,
    collective_timings,
    copy_bytes_per_second,
    dense_flops_per_second,
)
from planners.types import INDEX_BYTES, WEIGHT_BYTES, Workload

ADAGRAD_BYTES_PER_PARAMETER = 20  # read weight, gradient, state; write weight, state


def embedding_bytes(ids: float, bags: float, dim: int) -> tuple[float, float]:
    """Bytes a table-batched lookup must move (forward, backward with the fused row-wise
    Adagrad update): forward reads each looked-up row and writes each pooled output;
    backward reads the pooled gradients, then reads and writes each looked-up row and its
    accumulator."""
    forward = (ids + bags) * dim * WEIGHT_BYTES
    backward = bags * dim * WEIGHT_BYTES + ids * (2 * dim + 2) * WEIGHT_BYTES
    return forward, backward


@dataclass(frozen=True)
class MachineRates:
    """This machine's measured rates, per rank, with every rank busy."""

    copy_bytes_per_second: float
    matmul_flops_per_second: float
    all_to_all_bytes_per_second: float  # bytes one rank sends
    all_reduce_bytes_per_second: float  # bytes one rank moves in a ring (2 x its buffer)


def measure_rates(repeats: int = 5) -> MachineRates:
    """Run on every rank of the process group at once; rank 0's copy and matmul rates."""
    world = dist.get_world_size()
    copy, flops = copy_bytes_per_second(), dense_flops_per_second()
    if world == 1:
        return MachineRates(copy, flops, float("inf"), float("inf"))
    timings = collective_timings(repeats)
    moved = COLLECTIVE_BYTES[-1] * (world - 1) / world
    return MachineRates(
        copy, flops, moved / timings["all_to_all"][-1], 2 * moved / timings["all_reduce"][-1]
    )


def step_floor(workload: Workload, world: int, rates: MachineRates) -> dict[str, float]:
    """Seconds of each term of the floor, and ``floor`` (their sum)."""
    batch = workload.batch_size_per_rank
    ids = batch * sum(t.ids_per_sample for t in workload.tables)
    pooled = batch * sum(t.bags_per_sample * t.dim for t in workload.tables) * WEIGHT_BYTES
    lookups = sum(
        sum(embedding_bytes(batch * t.ids_per_sample, batch * t.bags_per_sample, t.dim))
        for t in workload.tables
    )
    params = workload.dense_parameters
    flops = 6.0 * params * batch + 6.0 * batch * workload.interaction_elements_per_sample
    terms = {
        "embedding_bytes": lookups / rates.copy_bytes_per_second,
        "dense_flops": flops / rates.matmul_flops_per_second,
        "dense_update": params * ADAGRAD_BYTES_PER_PARAMETER / rates.copy_bytes_per_second,
        "all_to_all": 0.0,
        "all_reduce": 0.0,
    }
    if world > 1:
        share = (world - 1) / world
        terms["all_to_all"] = (
            (ids * INDEX_BYTES + 2 * pooled) * share / (rates.all_to_all_bytes_per_second)
        )
        terms["all_reduce"] = 2 * params * WEIGHT_BYTES * share / rates.all_reduce_bytes_per_second
    terms["floor"] = sum(terms.values())
    return terms

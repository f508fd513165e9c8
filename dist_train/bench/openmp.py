"""Whether this process's OpenMP workers still spin between parallel regions.

libgomp counts every OpenMP team's threads against the cores the process may use. A thread
other than the main one that runs ATen's parallel ops keeps a team of its own (gloo's
threads did, under the plain-PyTorch peer's sparse all-reduce). With more threads than
cores, libgomp lets its workers spin only briefly before they sleep on a futex, and every
parallel region then waits for a wake-up: every system timed in the process runs slower
(docs/benchmarks.md, "OpenMP's workers asleep").
"""

from __future__ import annotations

import resource

import torch

PROBE_REGIONS = 200
# spinning workers: about no sleep a region; sleeping ones: about one
SLEEPING_WAITS_PER_REGION = 0.2


def waits_over_parallel_regions(regions: int = PROBE_REGIONS) -> int:
    """Voluntary context switches of this process over ``regions`` back-to-back ATen
    parallel regions on the calling thread."""
    x = torch.ones(1 << 20)
    x.add_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(regions):
        x.add_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before


def openmp_waits(probes: int = 3) -> int:
    """The fewest :func:`waits_over_parallel_regions` of ``probes``: a worker the machine
    preempts may sleep once, a throttled pool sleeps in every probe."""
    return min(waits_over_parallel_regions() for _ in range(probes))

"""Whether this process's OpenMP workers still spin between parallel regions.

libgomp counts every OpenMP team's threads against the cores the process may use. Any thread
other than the main one that runs an ATen parallel op keeps its own team (gloo's threads
did, under the plain-PyTorch peer's sparse all-reduce). With more threads than cores,
libgomp lets its workers spin only briefly before they sleep on a futex, and every parallel
region then waits for a wake-up: every system timed in the process runs slower
(docs/performance_log.md, "OpenMP's workers asleep"). ``OMP_WAIT_POLICY=passive`` or a thread
count over the cores does the same.
"""

from __future__ import annotations

import resource

import torch

PROBE_REGIONS = 200
# spinning workers: about no wait a region; sleeping ones: one or more (the worker's, and
# the calling thread's at the region's end)
SLEEPING_WAITS_PER_REGION = 0.2


def waits_over_parallel_regions(regions: int = PROBE_REGIONS) -> int:
    """Voluntary context switches of this process over ``regions`` back-to-back ATen ops on
    the calling thread, which are parallel regions when ``torch.get_num_threads() > 1``
    (at one thread no team forms, and the count is about 0)."""
    x = torch.ones(1 << 20)
    x.add_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(regions):
        x.add_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before


def openmp_waits(probes: int = 3) -> int:
    """The fewest :func:`waits_over_parallel_regions` of ``probes``: another thread's work
    may inflate one probe, while workers that sleep do so in every probe."""
    return min(waits_over_parallel_regions() for _ in range(probes))

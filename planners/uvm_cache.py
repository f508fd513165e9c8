"""TorchRec's UVM caching kernel (``fused_uvm_caching``): what it keeps where, and how often
it misses.

A table on this kernel lives in host memory (CUDA unified memory); each rank's HBM holds a
software cache of ``cache_load_factor`` x its shard's rows (FBGEMM's
``SplitTableBatchedEmbeddingBagsCodegen`` with ``EmbeddingLocation.MANAGED_CACHING``). Before
each lookup FBGEMM's prefetch finds the step's ids missing from the cache, copies those rows
in from host memory over the host link and writes evicted (trained, so dirty) rows back; the
lookup, backward and fused update then run on the cache like on HBM-resident rows.

Hit rate. Ids are modelled as Zipf(s) over the table's rows: the row of popularity rank r is
looked up with probability r^-s / H(N, s), H the generalized harmonic number. The unified
table hashes several features' ids into one row space, so its rows are a mixture of Zipf
distributions; one Zipf over rows is an approximation (docs/planner.md measures how well it
fits the default job). We ask FBGEMM for its LFU cache: in steady state it holds the most
frequently used rows, so a cache of c N rows hits ``H(cN, s) / H(N, s)`` of lookups. A shard
holds a hashed subset of the rows with the same popularity profile, so c of its rows catch the
same fraction. (FBGEMM's default LRU cache hits less under Zipf; the cache is 32-way set
associative, which also loses a little against this fully associative figure.)

Memory (FBGEMM 1.8 source): HBM holds the cache rows (slots x cols x 4 bytes; slots = c x rows
rounded up to sets of 32), ``cache_index_table_map`` (4 bytes per row), ``lxu_cache_state``
(8 bytes per slot), LFU's ``lxu_state`` counts (8 bytes per row, plus one) and row-wise
optimizer state (``construct_split_state`` keeps row-wise momentum on the device when the
table is managed); host memory holds the weights and any per-element optimizer state (Adam's
moments go to UVM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from planners.types import WEIGHT_BYTES, OptimizerState, TablePlacement
from planners.zipf import generalized_harmonic

CACHE_ASSOC = 32  # FBGEMM's DEFAULT_ASSOC on CUDA: a cache set holds 32 rows
# FBGEMM's LFU cache asserts cache_sets < 2**24 - 1 (a TBE: a rank's cached shards of one type)
LFU_MAX_SLOTS = CACHE_ASSOC * (2**24 - 2)
INDEX_TABLE_BYTES_PER_ROW = 4  # cache_index_table_map, int32 per row of the shard
CACHE_STATE_BYTES_PER_SLOT = 8  # lxu_cache_state, int64 per slot
LFU_COUNT_BYTES_PER_ROW = 8  # lxu_state under LFU, int64 per row (+1)
# The prefetch's own work on HBM per looked-up id (assumption): linearize the ids, sort them to
# deduplicate (4 radix passes over 8-byte keys), count (LFU) and look them up in the cache.
INDEX_BYTES_PER_LOOKUP = 100
# A prefetch launches about ten more kernels per step (linearize, unique, count, find, sort,
# insert, lookup): assumption of 5 us each.
PREFETCH_SECONDS = 5e-5


def zipf_hit_rate(rows: int, cached_fraction: float, s: float) -> float:
    """Fraction of Zipf(s) lookups over ``rows`` rows that hit a cache of the most popular
    ``cached_fraction`` of them: H(cN, s) / H(N, s)."""
    if rows <= 0:
        return 1.0
    cached = math.floor(min(max(cached_fraction, 0.0), 1.0) * rows)
    if cached <= 0:
        return 0.0
    if cached >= rows:
        return 1.0
    if s == 0:
        return cached / rows
    return generalized_harmonic(cached, s) / generalized_harmonic(rows, s)


def cache_slots(rows: np.ndarray, load_factor: float) -> np.ndarray:
    """FBGEMM's cache size for shards of ``rows`` rows: ``int(rows x load_factor)`` rounded up
    to whole sets of 32, at least one set (no cache at all for a load factor of 0)."""
    rows = np.asarray(rows, dtype=np.float64)
    if load_factor <= 0:
        return np.zeros_like(rows)
    sets = np.maximum(np.ceil(np.floor(rows * load_factor) / CACHE_ASSOC), 1.0)
    return np.where(rows > 0, sets * CACHE_ASSOC, 0.0)


def device_bytes(
    rows: np.ndarray, cols: int, load_factor: float, optimizer: OptimizerState
) -> np.ndarray:
    """HBM a cached shard of ``rows`` x ``cols`` takes: cache rows, cache metadata, row-wise
    optimizer state."""
    rows = np.asarray(rows, dtype=np.float64)
    slots = cache_slots(rows, load_factor)
    held = rows > 0
    cache = slots * (cols * WEIGHT_BYTES + CACHE_STATE_BYTES_PER_SLOT)
    if load_factor > 0:
        cache = cache + np.where(
            held,
            rows * INDEX_TABLE_BYTES_PER_ROW + (rows + 1) * LFU_COUNT_BYTES_PER_ROW,
            0.0,
        )
    return cache + rows * optimizer.bytes_per_row


def host_bytes(rows: np.ndarray, cols: int, optimizer: OptimizerState) -> np.ndarray:
    """Host memory a cached shard takes: its weights and per-element optimizer state."""
    rows = np.asarray(rows, dtype=np.float64)
    return rows * cols * (WEIGHT_BYTES + optimizer.bytes_per_element)


@lru_cache(maxsize=4096)
def shard_hit_rate(table_rows: int, shard_rows: float, load_factor: float, s: float) -> float:
    """Hit rate of one shard's cache: its slots over its rows, as a fraction of the table's
    rows (a hashed shard has the table's popularity profile)."""
    if shard_rows <= 0:
        return 1.0
    slots = float(cache_slots(np.array([shard_rows]), load_factor)[0])
    return zipf_hit_rate(table_rows, slots / shard_rows, s)


def shard_hit_rates(
    table_rows: int, shard_rows: np.ndarray, load_factor: float, s: float
) -> np.ndarray:
    """:func:`shard_hit_rate` of each of ``shard_rows`` (1 where a rank holds none)."""
    sizes, inverse = np.unique(np.asarray(shard_rows, dtype=np.float64), return_inverse=True)
    rates = np.array([shard_hit_rate(table_rows, float(n), load_factor, s) for n in sizes])
    return rates[inverse]


def most_cache_slots(placements: Sequence[TablePlacement]) -> float:
    """The most cache slots one TBE of a plan holds: TorchRec builds one a sharding type on
    each rank (its cached shards together), and FBGEMM's LFU cache takes at most
    :data:`LFU_MAX_SLOTS`."""
    slots: dict[tuple[int, str], float] = {}
    for p in placements:
        if p.cache_load_factor is None:
            continue
        rows = np.array([shard.rows for shard in p.shards], dtype=float)
        for shard, held in zip(p.shards, cache_slots(rows, p.cache_load_factor), strict=True):
            key = (shard.rank, p.sharding_type)
            slots[key] = slots.get(key, 0.0) + float(held)
    return max(slots.values(), default=0.0)

"""Plan-independent initialization of (sharded) embedding tables.

Rows are drawn in fixed blocks from a generator seeded by (seed, table, block), so a row gets
the same initial values whichever rank holds it, under any sharding plan or world size: a
1-rank and an N-rank run start from identical tables.

Every table of a job draws from U(-b, b) with one ``b = 1/sqrt(embedding.num_rows)`` (the
shared table's rows), whatever the embedding kind. TorchRec's default, ``1/sqrt(rows)`` per
table, gives the small exact tables of the collisionless baseline (10 rows: +-0.32) large
random vectors; their rarely trained rows stay noise that the dot interaction passes on
(default data, seed 0: collisionless 0.7532 test AUC with per-table bounds, 0.8118 with the
shared bound; docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dist_train.config.schema import EmbeddingConfig
from dist_train.embedding.hashing import fmix64, name_fingerprint

_BLOCK_ROWS = 8192
_TORCH_SEED_BITS = 32  # what torch's CPU generator (mt19937) reads of a seed


def torch_seed(seed: int) -> int:
    """The seed torch's generators get for a job's ``seed``: itself below 2^32; above, a
    32-bit hash of it. The generator reads a seed's low 32 bits, so seed s + 2^32 started
    from seed s's weights."""
    if seed < 1 << _TORCH_SEED_BITS:
        return seed
    return fmix64(seed) & ((1 << _TORCH_SEED_BITS) - 1)


def init_bound(embedding: EmbeddingConfig) -> float:
    """The bound of every table's uniform initialization: ``1/sqrt(embedding.num_rows)``."""
    return math.sqrt(1.0 / embedding.num_rows)


def fill_rows(
    out: torch.Tensor,
    table: str,
    num_rows: int,
    dim: int,
    seed: int,
    row_start: int,
    col_start: int,
    bound: float,
) -> torch.Tensor:
    """Write the initial values of ``table``'s rows ``[row_start, row_start + len(out))``,
    columns ``[col_start, col_start + out.shape[1])``, into ``out``: U(-bound, bound).

    Works block by block, so a column shard never holds more than one block at full width.
    """
    row_end, col_end = row_start + out.shape[0], col_start + out.shape[1]
    table_key = name_fingerprint(table) & 0x7FFFFFFF
    first, last = row_start // _BLOCK_ROWS, (row_end - 1) // _BLOCK_ROWS
    for block in range(first, last + 1 if row_end > row_start else first):
        b0 = block * _BLOCK_ROWS
        b1 = min(b0 + _BLOCK_ROWS, num_rows)
        # 63 bits: manual_seed takes no more. Its CPU generator reads the low 32, in which
        # the key is one-to-one with torch_seed(seed) for a given table and block.
        key = ((torch_seed(seed) * 1_000_003 + table_key) * 65_537 + block) & (2**63 - 1)
        gen = torch.Generator().manual_seed(key)
        values = torch.empty(b1 - b0, dim).uniform_(-bound, bound, generator=gen)
        lo, hi = max(b0, row_start), min(b1, row_end)
        out[lo - row_start : hi - row_start] = values[lo - b0 : hi - b0, col_start:col_end]
    return out


def init_rows(
    table: str, num_rows: int, dim: int, seed: int, row_start: int, row_end: int, bound: float
) -> torch.Tensor:
    """Initial values of rows ``[row_start, row_end)`` of ``table`` at full width."""
    out = torch.empty(row_end - row_start, dim)
    return fill_rows(out, table, num_rows, dim, seed, row_start, 0, bound)


def init_embedding_tables(
    model: nn.Module, tables: dict[str, tuple[int, int]], seed: int, bound: float
) -> None:
    """Overwrite every local shard of the embedding tables in ``model`` in place.

    ``tables`` maps table name -> (num_rows, dim). Works for TorchRec ShardedTensors (any
    row/column split) and plain tensors (data-parallel tables).
    """
    state = model.state_dict()
    done = set()
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) < 2 or parts[-1] != "weight" or parts[-2] not in tables:
            continue
        name = parts[-2]
        num_rows, dim = tables[name]
        with torch.no_grad():
            if hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    r0, c0 = shard.metadata.shard_offsets
                    nr, nc = shard.metadata.shard_sizes
                    assert shard.tensor.shape == (nr, nc)
                    fill_rows(shard.tensor, name, num_rows, dim, seed, r0, c0, bound)
            else:
                fill_rows(value, name, num_rows, dim, seed, 0, 0, bound)
        done.add(name)
    missing = sorted(set(tables) - done)
    if missing:
        raise RuntimeError(f"embedding tables {missing} not found in the model's state dict")

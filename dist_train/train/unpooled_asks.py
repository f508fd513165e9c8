"""Which rows a batch asks of which rank under unpooled row-wise lookups
(:mod:`dist_train.train.unpooled_row_wise`), and how its bags will read the vectors that come
back: the input dist's local work, before any exchange. Nothing here needs a process group.

One request per distinct (holder, table, row): the distinct keys of the batch's ids, found
through a bitmap where the key space allows (:func:`distinct_keys`), and for one table on CPU
all of it in one compiled call (:meth:`Asker.ask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from dist_train.kernels import distinct_keys_into, one_table_requests_into
from dist_train.train.bag_order import example_major_bags, lengths_not_counting

# distinct keys go through a bitmap (on CPU) where the key space is at most this many times
# the keys (plus a floor): kept from when a pass counted into an int32 a key, which then cost
# no more than a sort; the bitmap's pass costs less
COUNTING_SPACE_PER_KEY = 8
COUNTING_SPACE_FLOOR = 2**16


def _countable(key_space: int, keys: int) -> bool:
    return key_space <= COUNTING_SPACE_PER_KEY * keys + COUNTING_SPACE_FLOOR


def _bitmap(key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~dist_train.kernels.distinct_keys_into`'s bitmap of ``key_space`` keys (zeros)
    and its per-word prefix."""
    words = -(-key_space // 64)
    return np.zeros(words, dtype=np.uint64), np.empty(words, dtype=np.int64)


def distinct_keys(
    key: torch.Tensor, key_space: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique``'s work on int64 ``key`` (each in ``[0, key_space)``), keeping the
    sort: the distinct keys ascending, each one's count, the positions of ``key`` in key
    order (stable) and each position's distinct index. On CPU with a key space not much
    larger than the keys, passes over a bitmap of the space
    (:func:`~dist_train.kernels.distinct_keys_into`, which refuses keys outside it; the
    102,282 ids of a default-job batch at 2 ranks, over its 300,000 rows: 0.92 ms, against
    2.92 for the sort and the ops around it, one thread); else a stable sort."""
    key, n = key.to(torch.int64), key.numel()
    if key.device.type == "cpu" and _countable(key_space, n):
        out = [torch.empty(n, dtype=torch.int64) for _ in range(4)]
        found = distinct_keys_into(
            key.contiguous().numpy(), key_space, *_bitmap(key_space), *(t.numpy() for t in out)
        )
        if found < 0:
            raise ValueError(
                f"unpooled row-wise input dist: keys outside [0, {key_space}): "
                f"{int(key.min())} to {int(key.max())}"
            )
        return out[0][:found], out[1][:found], out[2], out[3]
    sorted_keys, by_key = torch.sort(key, stable=True)
    asked, per_key = torch.unique_consecutive(sorted_keys, return_counts=True)
    key_of_value = torch.empty_like(by_key)
    key_of_value[by_key] = torch.repeat_interleave(
        torch.arange(asked.numel(), device=key.device), per_key, output_size=n
    )
    return asked, per_key, by_key, key_of_value


@dataclass(frozen=True)
class Tables:
    """A row-wise sharding's tables as its lookup sees them: their features consecutive, in
    TorchRec's order (``feature_names()``), and the tables grouped by embedding dim, each
    group's vectors travelling in one all-to-all."""

    features: tuple[int, ...]  # per table
    dims: tuple[int, ...]  # per table

    # Derived once (every forward reads them): cached_property writes the instance's __dict__,
    # which a frozen dataclass allows.
    @cached_property
    def first_feature(self) -> list[int]:
        return [sum(self.features[:t]) for t in range(len(self.features))]

    @cached_property
    def first_column(self) -> list[int]:
        """Where each table's features start in the lookup output ``[bags, sum of dims]``."""
        widths = [f * d for f, d in zip(self.features, self.dims, strict=True)]
        return [sum(widths[:t]) for t in range(len(widths))]

    @cached_property
    def dim_groups(self) -> list[list[int]]:
        """Tables by dim, in order of first appearance."""
        groups: dict[int, list[int]] = {}
        for t, d in enumerate(self.dims):
            groups.setdefault(d, []).append(t)
        return list(groups.values())

    @cached_property
    def features_of_group(self) -> list[list[int]]:
        """Each dim group's features, table after table."""
        first = self.first_feature
        return [
            [first[t] + j for t in group for j in range(self.features[t])]
            for group in self.dim_groups
        ]


@dataclass
class Bags:
    """A dim group's bags over the vectors that come back, example-major (bag ``b x F + f``
    for feature ``f`` of the group's ``F``, so that the pooled ``[B x F, dim]`` is the
    ``[B, F x dim]`` the model reads, without a transpose either way): each id, in bag order,
    reads vector ``vector_of_id`` into the bag starting at ``offsets``; ``bag_by_vector``
    lists the ids' bags sorted by vector, each vector's run starting at ``vector_offsets``."""

    vector_of_id: torch.Tensor
    offsets: torch.Tensor
    bag_by_vector: torch.Tensor
    vector_offsets: torch.Tensor

    @classmethod
    def of(
        cls,
        vector_of_id: torch.Tensor,
        lengths: torch.Tensor,
        by_vector: torch.Tensor,
        per_vector: torch.Tensor,
        batch: int,
    ) -> Bags:
        """From the KJT's ids' vectors, its bags' ``lengths`` (feature-major, ``batch`` bags a
        feature), the ids (KJT order) in vector order and each vector's id count."""
        bags = example_major_bags(lengths, vector_of_id, batch)
        return cls(
            bags.values,
            bags.offsets[:-1],
            bags.bag_of_value[by_vector],
            torch.cumsum(per_vector, 0) - per_vector,
        )


@dataclass
class Asks:
    """What one batch asks of the holders: rows per (holder, table), holder-major (flat,
    ``world x tables``); the rows, in (holder, table, row) order, numbered as each holder's
    shard numbers them; and per dim group, how its bags read the vectors that will come
    back."""

    counts: torch.Tensor
    rows: torch.Tensor
    bags: list[Bags]


def _outside_rows(ids: torch.Tensor, keys: list[str]) -> ValueError:
    return ValueError(
        f"ids outside their tables' rows in features {sorted(set(keys))}: "
        f"{int(ids.min())} to {int(ids.max())}"
    )


class Asker:
    """Which rows a batch asks of which holder, and how its bags read them: the input dist's
    local work, before any exchange (``row_bounds``: each feature's table's row boundaries
    over the ranks)."""

    def __init__(
        self, world: int, row_bounds: list[list[int]], tables: Tables, device: torch.device
    ) -> None:
        self.world = world
        self.tables = tables
        sizes = torch.tensor(tables.features, dtype=torch.int64, device=device)
        self.features_per_table = sizes
        self.first_feature = torch.cumsum(sizes, 0) - sizes
        self.table_of_feature = torch.repeat_interleave(
            torch.arange(len(tables.features), device=device), sizes
        )
        # each feature's place among its table's features
        self.slot_of_feature = (
            torch.arange(len(self.table_of_feature), device=device)
            - self.first_feature[self.table_of_feature]
        )
        # rank r holds rows [bounds[r], bounds[r + 1]) of a feature's table; tables with fewer
        # shards than ranks leave the last ranks empty. Features of one table (or of tables
        # split alike) share a row of bounds, so routing takes one search per distinct split.
        padded = [tuple(b + [b[-1]] * (self.world + 1 - len(b))) for b in row_bounds]
        splits = sorted(set(padded))
        self._bounds = torch.tensor(splits, dtype=torch.int64, device=device)
        self._split_of_feature = torch.tensor(
            [splits.index(b) for b in padded], dtype=torch.int64, device=device
        )
        # each feature's dim group
        group_of_feature = [0] * sum(tables.features)
        for g, members in enumerate(tables.features_of_group):
            for f in members:
                group_of_feature[f] = g
        self._group_of_feature = torch.tensor(group_of_feature, device=device)
        self.group_of_table = self._group_of_feature[self.first_feature]
        # (holder, table, row) in one key: rows of a shard stay below the largest shard
        self._row_span = max(1, int((self._bounds[:, 1:] - self._bounds[:, :-1]).max()))

    def ask(self, ids: torch.Tensor, lengths: torch.Tensor, keys: list[str]) -> Asks:
        """The rows this batch asks of each holder, one request per distinct (holder, table,
        row), and each dim group's bags over the vectors that will come back (``ids``:
        int64, feature-major; ``lengths``: ``[features, batch]``; ``keys``: the features,
        for errors)."""
        asks = self._one_table(ids, lengths, keys)
        return self._any_tables(ids, lengths, keys) if asks is None else asks

    def _locate(
        self, ids: torch.Tensor, feature: torch.Tensor | None, keys: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each id's holder and its row in the holder's shard (``feature``: each id's
        feature, needed where tables are split differently). Refuses ids outside their
        tables' rows (``keys``: the features, for the error): the last rank takes any id
        past its shard's start, and where that shard is the shorter, one past the table
        would read a row of it."""
        world = self.world
        split = None
        if len(self._bounds) > 1:
            assert feature is not None  # several splits: several tables
            split = self._split_of_feature[feature]
        rows = self._bounds[0, -1] if split is None else self._bounds[split, -1]
        if ids.numel() and (int(ids.min()) < 0 or bool((ids >= rows).any())):
            raise _outside_rows(ids, keys)
        if split is None:
            bounds = self._bounds[0]
            owner = torch.searchsorted(bounds[1:], ids, right=True).clamp_(max=world - 1)
            return owner, ids - bounds.index_select(0, owner)
        owner = torch.empty_like(ids)
        for s, bounds in enumerate(self._bounds):
            mine = split == s
            owner[mine] = torch.searchsorted(bounds[1:], ids[mine], right=True)
        owner.clamp_(max=world - 1)
        return owner, ids - self._bounds[split, owner]

    def _one_table(self, ids: torch.Tensor, lengths: torch.Tensor, keys: list[str]) -> Asks | None:
        """:meth:`ask` for one table on CPU, in one compiled call
        (:func:`~dist_train.kernels.one_table_requests_into`); None where it does not apply
        (several tables, GPU ids, a key space too large for the bitmap)."""
        n, space = ids.numel(), self.world * self._row_span
        features, batch = lengths.shape
        if (
            ids.device.type != "cpu"
            or len(self.tables.features) != 1
            or not _countable(space, n)
            or max(n, space, features * batch) >= 2**31  # the kernel's arrays are 32-bit
        ):
            return None
        rows = torch.empty(n, dtype=torch.int64)
        # the bags' indices and offsets at 32 bits, which embedding_bag reads as well as 64:
        # the default job's pooling, forward and backward, 2.15 -> 1.98 ms at 2 ranks (ad
        # hoc, one thread, the same bags alternately)
        vector_offsets, bag_vectors, bag_by_vector = (
            torch.empty(n, dtype=torch.int32) for _ in range(3)
        )
        counts = torch.zeros(self.world, dtype=torch.int64)
        bag_offsets = torch.empty(features * batch + 1, dtype=torch.int32)

        # the kernel's own arrays, at half the width: 10-15% faster in an ad hoc benchmark
        # (the default job's batch at 2 ranks, one thread), measured when an int32 count a
        # possible key took the place of the bitmap
        def scratch(*shape: int) -> np.ndarray:
            return np.empty(shape, dtype=np.int32)

        found = one_table_requests_into(
            ids.contiguous().numpy(),
            lengths.contiguous().numpy(),
            self._bounds[0].numpy(),
            self._row_span,
            *_bitmap(space),
            scratch(n),
            rows.numpy(),
            counts.numpy(),
            vector_offsets.numpy(),
            scratch(n),
            scratch(n),
            scratch(batch),
            bag_offsets.numpy(),
            bag_vectors.numpy(),
            scratch(n),
            bag_by_vector.numpy(),
        )
        if found == -2:
            raise lengths_not_counting(lengths, n)
        if found < 0:
            raise _outside_rows(ids, keys)
        bags = Bags(bag_vectors, bag_offsets[:-1], bag_by_vector, vector_offsets[:found])
        return Asks(counts, rows[:found], [bags])

    def _any_tables(self, ids: torch.Tensor, lengths: torch.Tensor, keys: list[str]) -> Asks:
        """:meth:`ask` for any tables, in torch ops."""
        num_features, batch = lengths.shape
        num_tables = len(self.tables.features)
        # each id's feature: only several tables need it (for their table, split and dim)
        feature = (
            torch.repeat_interleave(
                torch.arange(num_features, device=ids.device),
                lengths.sum(1),
                output_size=ids.numel(),
            )
            if num_tables > 1
            else None
        )
        owner, row = self._locate(ids, feature, keys)

        # sorted by holder, then table
        holder_and_table = (
            owner if feature is None else owner * num_tables + self.table_of_feature[feature]
        )
        key = holder_and_table * self._row_span + row
        # the pooling's backward reads ids by row
        key_space = self.world * num_tables * self._row_span
        asked, per_row, by_row, vector_of_id = distinct_keys(key, key_space)
        holder_table = asked // self._row_span
        counts = torch.bincount(holder_table, minlength=self.world * num_tables)
        groups = self.tables.features_of_group
        bags = []
        for g, members in enumerate(groups):
            if len(groups) == 1:
                bags.append(Bags.of(vector_of_id, lengths.view(-1), by_row, per_row, batch))
                continue
            # places among the group's rows only
            assert feature is not None  # several dims: several tables
            asked_in_group = self.group_of_table[holder_table % num_tables] == g
            place = torch.cumsum(asked_in_group, 0) - 1
            vectors = place[vector_of_id[self._group_of_feature[feature] == g]]
            per_vector = torch.bincount(vectors, minlength=int(asked_in_group.sum()))
            group_lengths = lengths[members].view(-1)
            # stable: each vector's ids in KJT order, as distinct_keys gives the one group's,
            # so the backward sums a vector's gradients in one order every run
            by_vector = torch.argsort(vectors, stable=True)
            bags.append(Bags.of(vectors, group_lengths, by_vector, per_vector, batch))
        return Asks(counts, asked - holder_table * self._row_span, bags)

"""The unpooled input dist's local work: the compiled passes (one table's asks, the holder's
lookup input) against the torch ops."""

from __future__ import annotations

import pytest
import torch

from dist_train.train.unpooled_asks import Asker, Tables
from dist_train.train.unpooled_row_wise import lookup_input

FEATURES, BATCH = 5, 64


def _batch(bounds: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = bounds[-1]
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (FEATURES, BATCH), generator=g, dtype=torch.int32)
    lengths[1] = 0  # a feature with no ids
    # hot rows repeat; the table's first and last rows and every holder's first row and the
    # row before it appear (several holders start at one row where a shard is empty)
    ids = torch.randint(0, rows, (int(lengths.sum()),), generator=g) ** 2 // rows
    edges = [0, rows - 1] + [e + d for e in bounds[1:-1] for d in (-1, 0)]
    ids[: len(edges)] = torch.tensor(edges)
    return ids, lengths


@pytest.mark.parametrize(
    "bounds",
    [
        [0, 1000],  # one rank
        [0, 500, 1000],
        [0, 400, 1000],  # uneven
        [0, 300, 300, 700, 1000],  # an empty shard
        [0, 600, 1000],  # fewer shards than ranks: padded
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_one_tables_compiled_asks_are_the_torch_ops(bounds: list[int], seed: int) -> None:
    world = 4 if bounds == [0, 600, 1000] else len(bounds) - 1
    asker = Asker(world, [bounds] * FEATURES, Tables((FEATURES,), (16,)), torch.device("cpu"))
    ids, lengths = _batch(bounds, seed)
    keys = [f"f{i}" for i in range(FEATURES)]
    compiled = asker._one_table(ids, lengths, keys)
    assert compiled is not None
    expected = asker._any_tables(ids, lengths, keys)
    for ours, theirs in [(compiled.counts, expected.counts), (compiled.rows, expected.rows)]:
        assert ours.dtype == theirs.dtype == torch.int64  # torch.equal does not compare dtypes
        assert torch.equal(ours, theirs)
    assert len(compiled.bags) == len(expected.bags) == 1
    got, want = vars(compiled.bags[0]), vars(expected.bags[0])
    assert got.keys() == want.keys()
    for name in want:  # the compiled bags at 32 bits, every index and offset embedding_bag reads
        assert (got[name].dtype, want[name].dtype) == (torch.int32, torch.int64)
        assert torch.equal(got[name].to(torch.int64), want[name])


@pytest.mark.parametrize("bad", [-1, 1000])
def test_an_id_outside_the_table_is_refused_naming_the_features(bad: int) -> None:
    asker = Asker(2, [[0, 500, 1000]] * FEATURES, Tables((FEATURES,), (16,)), torch.device("cpu"))
    ids, lengths = _batch([0, 500, 1000], 0)
    ids[7] = bad
    keys = [f"f{i}" for i in range(FEATURES)]
    for ask in (asker._one_table, asker._any_tables):
        with pytest.raises(
            ValueError, match=rf"outside their tables' rows in features \['f0'.*{bad}"
        ):
            ask(ids, lengths, keys)


def test_ask_takes_the_compiled_pass_for_one_table_only() -> None:
    cpu = torch.device("cpu")
    one = Asker(2, [[0, 500, 1000]] * FEATURES, Tables((FEATURES,), (16,)), cpu)
    ids, lengths = _batch([0, 500, 1000], 0)
    keys = [f"f{i}" for i in range(FEATURES)]
    for lengths_of_any_width in (lengths, lengths.to(torch.int64)):
        compiled = one._one_table(ids, lengths_of_any_width, keys)
        assert compiled is not None
        assert torch.equal(one.ask(ids, lengths_of_any_width, keys).rows, compiled.rows)
    # two tables (features 0-1 and 2-4), or a key space too large to count: the torch ops
    two = Asker(2, [[0, 500, 1000]] * FEATURES, Tables((2, 3), (16, 16)), cpu)
    assert two._one_table(ids, lengths, keys) is None
    assert two.ask(ids, lengths, keys).counts.numel() == 2 * 2
    huge = Asker(2, [[0, 10**9, 2 * 10**9]] * FEATURES, Tables((FEATURES,), (16,)), cpu)
    assert huge._one_table(ids, lengths, keys) is None
    # every id lies in the first holder's rows
    assert huge.ask(ids, lengths, keys).counts.tolist() == [torch.unique(ids).numel(), 0]


@pytest.mark.parametrize(
    ("features", "per_table"),
    [
        ((5,), [23]),
        ((2, 3), [7, 9]),  # a short table: its features' bags run out at different places
        ((1, 3, 2), [4, 0, 11]),  # a table asked for nothing
        ((4,), [0]),
    ],
)
def test_the_compiled_lookup_input_is_the_torch_ops(
    features: tuple[int, ...], per_table: list[int]
) -> None:
    asker = Asker(
        2,
        [[0, 50, 100]] * sum(features),
        Tables(features, (16,) * len(features)),
        torch.device("cpu"),
    )
    counts = torch.tensor(per_table)
    rows = torch.randperm(100)[: sum(per_table)]
    widths = torch.tensor(features)
    bags = max(int(((counts + widths - 1) // widths).max()), 1)
    start = torch.cumsum(counts, 0) - counts
    compiled = lookup_input(rows, counts, start, asker, bags, compiled=True)
    expected = lookup_input(rows, counts, start, asker, bags, compiled=False)
    for ours, theirs in zip(compiled, expected, strict=True):
        assert ours.dtype == theirs.dtype
        assert torch.equal(ours, theirs)
    # every row lands in one bag
    assert compiled[1].sum() == rows.numel()
    assert sorted(compiled[0].tolist()) == sorted(rows.tolist())


def test_lengths_that_do_not_count_the_ids_are_refused() -> None:
    """One table's compiled pass puts the bags example-major by ``lengths``; lengths that
    count more ids than there are would write outside its arrays."""
    asker = Asker(2, [[0, 500, 1000]] * FEATURES, Tables((FEATURES,), (16,)), torch.device("cpu"))
    ids, lengths = _batch([0, 500, 1000], 0)
    lengths[0, 0] += 3
    with pytest.raises(ValueError, match="bag lengths do not count their"):
        asker._one_table(ids, lengths, [f"f{i}" for i in range(FEATURES)])


def test_lengths_whose_sum_wraps_at_32_bits_are_refused() -> None:
    """The pass sums each example's lengths in 32-bit scratch: 2^32 + 1 is 1 there, which
    passed the count's check and wrote past the arrays (a helper's audit)."""
    asker = Asker(2, [[0, 500, 1000]], Tables((1,), (16,)), torch.device("cpu"))
    with pytest.raises(ValueError, match="bag lengths do not count their 1 id"):
        asker._one_table(torch.tensor([7]), torch.tensor([[2**32 + 1]]), ["f0"])

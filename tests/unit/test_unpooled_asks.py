"""The unpooled input dist's asks for one table: the compiled pass against the torch ops."""

from __future__ import annotations

import pytest
import torch

from dist_train.train.unpooled_row_wise import _Asker, _Tables

FEATURES, BATCH = 5, 64


def _batch(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (FEATURES, BATCH), generator=g, dtype=torch.int32)
    lengths[1] = 0  # a feature with no ids
    # hot rows repeat; the table's first and last rows and the holders' edges appear
    ids = torch.randint(0, rows, (int(lengths.sum()),), generator=g) ** 2 // rows
    ids[:3] = torch.tensor([0, rows - 1, rows // 2])
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
    asker = _Asker(world, [bounds] * FEATURES, _Tables((FEATURES,), (16,)), torch.device("cpu"))
    ids, lengths = _batch(bounds[-1], seed)
    keys = [f"f{i}" for i in range(FEATURES)]
    compiled = asker._one_table(ids, lengths, keys)
    assert compiled is not None
    expected = asker._any_tables(ids, lengths, keys)
    assert torch.equal(compiled.counts, expected.counts)
    assert torch.equal(compiled.rows, expected.rows)
    assert len(compiled.bags) == len(expected.bags) == 1
    got, want = vars(compiled.bags[0]), vars(expected.bags[0])
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("bad", [-1, 1000])
def test_an_id_outside_the_table_is_refused_naming_the_features(bad: int) -> None:
    asker = _Asker(2, [[0, 500, 1000]] * FEATURES, _Tables((FEATURES,), (16,)), torch.device("cpu"))
    ids, lengths = _batch(1000, 0)
    ids[7] = bad
    keys = [f"f{i}" for i in range(FEATURES)]
    for ask in (asker._one_table, asker._any_tables):
        with pytest.raises(
            ValueError, match=rf"outside their tables' rows in features \['f0'.*{bad}"
        ):
            ask(ids, lengths, keys)

"""The unpooled row-wise dists' distinct keys: the bitmap's passes against a stable sort."""

from __future__ import annotations

import pytest
import torch

from dist_train.train.unpooled_asks import (
    COUNTING_SPACE_FLOOR,
    COUNTING_SPACE_PER_KEY,
    distinct_keys,
)

# a key space the bitmap takes, and one past its limit (the sort)
COUNTED, SORTED = 1000, 10**9


def _by_definition(key: torch.Tensor) -> tuple[torch.Tensor, ...]:
    asked, per_key = torch.unique(key, return_counts=True)
    by_key = torch.tensor(sorted(range(key.numel()), key=lambda i: (int(key[i]), i)))
    key_of_value = torch.searchsorted(asked, key)
    return asked, per_key, by_key.to(torch.int64), key_of_value


@pytest.mark.parametrize("key_space", [COUNTED, SORTED])
@pytest.mark.parametrize(
    "key",
    [
        torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0)),  # repeats
        torch.randint(0, COUNTED, (300,), generator=torch.Generator().manual_seed(1)),
        torch.full((17,), 999),  # one key, at the top of the space
        # either side of the bitmap's word boundaries, in the last (part) word too
        torch.tensor([64, 63, 0, 127, 128, 960, 959, 999, 64, 991, 63]),
        torch.tensor([0]),
        torch.zeros(0, dtype=torch.int64),
    ],
)
def test_distinct_keys_are_the_stable_sort_by_definition(key: torch.Tensor, key_space: int) -> None:
    assert (key_space <= COUNTING_SPACE_PER_KEY * key.numel() + COUNTING_SPACE_FLOOR) == (
        key_space == COUNTED
    )
    for ours, expected in zip(distinct_keys(key, key_space), _by_definition(key), strict=True):
        assert torch.equal(ours, expected)


def test_a_key_outside_the_space_is_refused_not_written() -> None:
    with pytest.raises(ValueError, match=r"keys outside \[0, 1000\): 3 to 1000"):
        distinct_keys(torch.tensor([3, 1000, 7]), COUNTED)
    with pytest.raises(ValueError, match="keys outside"):
        distinct_keys(torch.tensor([5, -1]), COUNTED)

"""Which cores each rank of a machine is held to, and that every thread is held."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from dist_train.launchers.affinity import pin_local_rank, pin_process, rank_cores
from planners.cores import process_cores


def test_ranks_get_equal_runs_of_consecutive_cores() -> None:
    cores = [7, 0, 1, 2, 3, 4, 5, 6]  # as the OS lists them, unordered
    assert [rank_cores(cores, r, 2) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [rank_cores(cores, r, 8) for r in range(8)] == [[c] for c in range(8)]
    # the remainder goes to the last rank: no core left unused
    assert [rank_cores([0, 1, 2], r, 2) for r in range(2)] == [[0], [1, 2]]


def test_more_ranks_than_cores_are_dealt_round_them() -> None:
    assert [rank_cores([4, 5], r, 4) for r in range(4)] == [[4], [5], [4], [5]]


@pytest.mark.parametrize(("rank", "world", "cores"), [(2, 2, [0, 1]), (-1, 2, [0]), (0, 1, [])])
def test_a_rank_outside_its_world_or_no_cores_is_refused(
    rank: int, world: int, cores: list[int]
) -> None:
    with pytest.raises(ValueError, match=r"local rank|no cores"):
        rank_cores(cores, rank, world)


@pytest.fixture
def restored_affinity() -> Iterator[list[int]]:
    before = process_cores()
    yield before
    pin_process(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_pinning_holds_threads_started_before_and_after(restored_affinity: list[int]) -> None:
    started = threading.Event()
    release = threading.Event()
    native: list[int] = []

    def wait() -> None:
        native.append(threading.get_native_id())
        started.set()
        release.wait()

    earlier = threading.Thread(target=wait)
    earlier.start()
    started.wait()
    try:
        one = [restored_affinity[-1]]
        pin_process(one)
        assert sorted(os.sched_getaffinity(native[0])) == one  # a thread started before
        later: list[list[int]] = []
        thread = threading.Thread(target=lambda: later.append(process_cores()))
        thread.start()
        thread.join()
        assert later == [one]  # and one started after
    finally:
        release.set()
        earlier.join()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_lone_rank_keeps_every_core(restored_affinity: list[int]) -> None:
    assert pin_local_rank(0, 1) is None
    assert process_cores() == restored_affinity
    assert pin_local_rank(1, 2) == rank_cores(restored_affinity, 1, 2)
    assert process_cores() == rank_cores(restored_affinity, 1, 2)

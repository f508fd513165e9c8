"""Which cores each rank of a machine is held to, when not to pin, and that every thread is
held."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from dist_train.launchers.affinity import (
    can_pin,
    pin_local_rank,
    pin_process,
    rank_cores,
    why_not_pinned,
)
from planners.cores import cpu_list, process_cores


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


@pytest.mark.skipif(not can_pin(), reason="no CPU affinity on this OS")
@pytest.mark.parametrize(
    ("cores", "world", "threads", "environ", "why"),
    [
        (2, 2, 1, {}, None),
        (2, 4, 1, {}, None),  # two ranks a core
        (8, 2, 4, {}, None),
        (2, 1, 2, {}, "one rank"),
        (2, 3, 1, {}, "3 ranks do not share 2 cores evenly"),
        (2, 2, 2, {}, "2 threads a rank exceed its share"),  # they would crowd one core
        (8, 2, 4, {"OMP_PROC_BIND": "true"}, "OMP_PROC_BIND already place"),
    ],
)
def test_pinning_is_left_out_where_it_would_crowd_or_skew_the_ranks(
    cores: int, world: int, threads: int, environ: dict[str, str], why: str | None
) -> None:
    found = why_not_pinned(cores, world, threads, environ)
    assert found == why if why is None else why in str(found)


def test_cpu_lists_are_written_as_linux_writes_them() -> None:
    assert cpu_list([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert cpu_list([5]) == "5" and cpu_list([]) == ""


@pytest.fixture
def restored_affinity() -> Iterator[list[int]]:
    before = process_cores()
    yield before
    pin_process(before)


@pytest.mark.skipif(not can_pin(), reason="no CPU affinity on this OS")
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
        pin_process([])  # nothing to pin to: left as it is
        assert process_cores() == one
    finally:
        release.set()
        earlier.join()


@pytest.mark.skipif(not can_pin(), reason="no CPU affinity on this OS")
def test_a_rank_pins_to_its_share_unless_told_why_not(
    restored_affinity: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"):
        monkeypatch.delenv(name, raising=False)
    assert pin_local_rank(0, 1, 1) is None
    assert process_cores() == restored_affinity
    share = rank_cores(restored_affinity, 1, 2)
    assert pin_local_rank(1, 2, len(share) + 1) is None  # more threads than its share
    assert process_cores() == restored_affinity
    assert pin_local_rank(1, 2, 1) == share
    assert process_cores() == share

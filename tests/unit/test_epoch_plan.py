"""EpochPlan with hand-computed values: fresh plans, what is left after some batches, and the
re-deal of a mid-epoch checkpoint to another world size."""

from __future__ import annotations

from dist_train.data.epoch_plan import EpochPlan


def test_fresh_plan_gives_each_rank_its_own_stream() -> None:
    plan = EpochPlan.fresh(3, 5)
    assert plan.segments == (((0, 0, 5),), ((1, 0, 5),), ((2, 0, 5),))
    assert (plan.world, plan.stream_world, plan.steps) == (3, 3, 5)


def test_remaining_skips_done_batches_across_segments() -> None:
    plan = EpochPlan(2, (((0, 0, 3), (1, 5, 7)), ((1, 0, 5),)))
    assert plan.steps == 5  # rank 0: 3 + 2, rank 1: 5
    assert plan.remaining(0, 0) == [(0, 0, 3), (1, 5, 7)]
    assert plan.remaining(0, 2) == [(0, 2, 3), (1, 5, 7)]
    assert plan.remaining(0, 3) == [(1, 5, 7)]
    assert plan.remaining(0, 4) == [(1, 6, 7)]
    assert plan.remaining(0, 5) == []


def test_two_ranks_to_three_after_four_batches() -> None:
    # 2 ranks x 10 batches; 4 done each -> 12 left: stream 0 batches 4..9, stream 1 4..9.
    plan = EpochPlan.fresh(2, 10).replan(4, 3)
    assert plan.stream_world == 2  # the streams stay those of the epoch's starting world
    assert plan.segments == (
        ((0, 4, 8),),
        ((0, 8, 10), (1, 4, 6)),
        ((1, 6, 10),),
    )
    assert plan.steps == 4


def test_three_ranks_to_two_drops_the_uneven_tail() -> None:
    # 3 x 7 batches, 2 done -> 15 left; 2 ranks take 7 each, 1 batch (stream 2's last) dropped.
    plan = EpochPlan.fresh(3, 7).replan(2, 2)
    assert plan.segments == (
        ((0, 2, 7), (1, 2, 4)),
        ((1, 4, 7), (2, 2, 6)),
    )
    assert plan.steps == 7


def test_a_replan_of_a_replan_and_json_round_trip() -> None:
    once = EpochPlan.fresh(2, 10).replan(4, 3)  # as above
    twice = once.replan(1, 1)  # 1 more batch on each of 3 ranks, then 1 rank
    assert twice.segments == (((0, 5, 8), (0, 9, 10), (1, 4, 6), (1, 7, 10)),)
    assert twice.steps == 9
    assert EpochPlan.from_json(twice.as_json()) == twice

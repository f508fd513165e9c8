"""``bench train``'s goal ratios are taken round by round, so a slow spell cancels out."""

from __future__ import annotations

import math

import pytest

from dist_train.bench.train import MODES, SYSTEMS, Rounds, ratios


def test_a_round_slow_for_every_system_leaves_the_ratios_alone() -> None:
    # seconds per round: unified takes half of pytorch's time in each round, but round 2
    # ran 3x slower for everyone (another job on the machine)
    base = {"unified": 1.0, "hashing_trick": 1.5, "torchrec": 1.5, "pytorch": 2.0}
    slow = [1.0, 3.0, 1.0]
    rounds: Rounds = {
        (mode, system, 2): [base[system] * f * (1.1 if mode == "end_to_end" else 1.0) for f in slow]
        for mode in MODES
        for system in SYSTEMS
    }
    out = ratios(rounds)
    assert out["unified_over_pytorch_step_2_ranks"] == pytest.approx([2.0, 2.0, 2.0])
    assert out["hashing_trick_over_torchrec_end_to_end_2_ranks"] == pytest.approx([1.0] * 3)
    assert out["unified_end_to_end_over_step_2_ranks"] == pytest.approx([1 / 1.1] * 3)
    # pytorch alone slow in round 3, unified alone in round 2: those rounds' ratios move, the
    # median does not
    rounds["step", "pytorch", 2] = [2.0, 2.0, 6.0]
    median, low, high = ratios(rounds)["unified_over_pytorch_step_2_ranks"]
    assert (median, low, high) == pytest.approx((2.0, 2.0 / 3.0, 6.0))


def test_a_benchmarks_json_is_strict_where_a_figure_is_not_finite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A figure that is NaN was written as bare ``NaN``, which strict JSON parsers (``jq``,
    browsers, other languages) refuse; summaries and the sweep's files write ``null``."""
    import json

    from dist_train.bench import write_json

    out = tmp_path / "deep" / "train.json"
    write_json(str(out), {"results": [{"examples_per_second": math.nan, "ranks": 1}]})
    text = out.read_text()
    assert "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "results": [{"examples_per_second": None, "ranks": 1}]
    }

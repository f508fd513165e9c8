"""``bench train``'s goal ratios are taken round by round, so a slow spell cancels out."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_a_ratio_over_nothing_is_nan_and_said(capsys: pytest.CaptureFixture[str]) -> None:
    """A run of one step has no steady rate: bench launch, ingest and checkpoint divided by
    it and lost every figure measured before (ZeroDivisionError, no JSON)."""
    from dist_train.bench import over

    assert over(3.0, 2.0, "x") == 1.5
    assert math.isnan(over(3.0, 0.0, "steady ratio"))
    assert "[bench] steady ratio: not measured" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["kernel", "--dims", "10"], "row widths must be multiples of 4; got 10"),
        (["kernel", "--set", "embedding.dim=64"], "unrecognized arguments: --set"),
        # numpy's allocation of 477 GiB, FBGEMM's int32 overflow: tracebacks
        (["kernel", "--batches", "2000000000"], "batch sizes go up to 1,048,576"),
        (["kernel", "--dims", "2000000000"], "row widths go up to 4,096"),
        # bench train and pipeline time CPU ranks: their figures were the CPU's, unsaid
        (["train", "--set", "train.device=cuda"], "bench train times CPU ranks"),
        (["pipeline", "--set", "train.device=cuda"], "bench pipeline times CPU ranks"),
        (["planner", "--set", "data.train_path=/x", "--set", "data.test_path=/y"], "generates"),
        (["train", "--set", "data.train_path=/x", "--set", "data.test_path=/y"], "generates"),
        (["planner", "--set", "sharding.type=grid_shard"], "does not plan: bench another type"),
    ],
)
def test_bench_options_it_would_ignore_or_fail_on_are_refused_first(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was taken: a job's data paths never read (a job on its own data then failed
    mid-bench), --set ignored by bench kernel, FBGEMM's assertion on a width, a planning
    error after the calibration."""
    from dist_train.cli.main import main

    try:
        code = main(["bench", *args])
    except SystemExit as exit:  # argparse's usage error
        code = int(str(exit.code))
    assert code == 2
    assert said in capsys.readouterr().err


def test_a_jobs_own_error_in_a_bench_is_a_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a traceback: every bench ran unguarded."""
    from dist_train.cli.main import main

    missing = tmp_path / "topology.json"
    assert main(["bench", "planner", "--set", f"sharding.topology={missing}"]) == 1
    said = capsys.readouterr().err
    assert f"error: sharding plan: {missing}: no such topology file" in said
    assert "Traceback" not in said

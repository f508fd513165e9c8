"""Progress's rates: steps over the training time they took, on a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_train.train import progress as progress_module
from dist_train.train.progress import Progress, TrainFigures, strict_json

EXAMPLES_PER_STEP, STEP_SECONDS = 1000, 0.5  # the true rate: 2,000 examples/s


class _Clock:
    """Stands in for the ``time`` module; advances only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def _train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, between_epochs: float, after: float
) -> tuple[list[float], TrainFigures]:
    """Two epochs of 6 steps, a line every 4; ``between_epochs`` seconds set up the second,
    ``after`` seconds (the final save) follow the last. The logged rates and the figures."""
    clock = _Clock()
    monkeypatch.setattr(progress_module, "time", clock)
    p = Progress(str(tmp_path), enabled=True, log_every=4, examples_per_step=EXAMPLES_PER_STEP)
    step = 0
    for epoch in range(2):
        p.epoch_started()
        for _ in range(6):
            clock.now += STEP_SECONDS
            step += 1
            p.step_done(0.5)
            if p.should_log(step):
                p.log_train(epoch, step, 12)
        p.epoch_ended()
        clock.now += between_epochs if epoch == 0 else after
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r["examples_per_second"] for r in records], p.figures()


@pytest.mark.usefixtures("one_rank")
def test_logged_rates_are_steps_over_their_training_time_across_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # step 8's window holds steps 5-8: two in each epoch; the 3 s between them are not training
    rates, _ = _train(tmp_path, monkeypatch, between_epochs=3.0, after=0.0)
    assert rates == pytest.approx([EXAMPLES_PER_STEP / STEP_SECONDS] * 3)


@pytest.mark.usefixtures("one_rank")
def test_training_rates_stop_at_the_end_of_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60 s of final save after training, 3 s between the epochs: neither is training time
    _, figures = _train(tmp_path, monkeypatch, between_epochs=3.0, after=60.0)
    assert figures["train_seconds"] == pytest.approx(12 * STEP_SECONDS)
    assert figures["examples_per_second"] == pytest.approx(EXAMPLES_PER_STEP / STEP_SECONDS)
    assert figures["steady_examples_per_second"] == pytest.approx(EXAMPLES_PER_STEP / STEP_SECONDS)


def test_records_hold_no_nan_that_strict_json_parsers_refuse(tmp_path: Path) -> None:
    """A test set of one class has no AUC and a run that trained no step no loss: both are
    null in metrics.jsonl and summary.json, where Python's json wrote bare NaN tokens."""
    p = Progress(str(tmp_path), enabled=True, log_every=4, examples_per_step=1)
    p.log({"event": "eval", "test_auc": float("nan"), "x": [float("inf"), 1.0]}, "line")

    def refuse(token: str) -> None:
        raise ValueError(token)

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record == {"event": "eval", "test_auc": None, "x": [None, 1.0]}
    assert json.loads(strict_json({"a": {"b": (float("-inf"),)}}, indent=2)) == {"a": {"b": [None]}}


def test_a_resume_drops_the_records_of_later_steps_evaluations_too(tmp_path: Path) -> None:
    """An evaluation's record holds ``steps``: a run resumed from an earlier checkpoint kept
    the evaluation of the steps it then trained again, its figures mixed with the new."""
    log = tmp_path / "metrics.jsonl"
    records = [
        {"event": "train", "step": 4},
        {"event": "checkpoint", "step": 8},
        {"event": "train", "step": 12},
        {"event": "eval", "steps": 16, "test_auc": 0.7},
        {"event": "eval", "steps": 8, "test_auc": 0.6},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    Progress(str(tmp_path), enabled=True, log_every=1, examples_per_step=1, append=True).resumed_at(
        8
    )
    kept = log.read_text().splitlines()
    assert [json.loads(line) for line in kept[:-1]] == [records[0], records[1], records[4]]
    assert kept[-1] == "not json"


def test_a_branch_keeps_the_records_of_the_newer_checkpoints_run(tmp_path: Path) -> None:
    """A run that saves nothing may resume an older checkpoint beside newer ones: its resume
    deleted the newer checkpoints' records (their training and test figures) from the log,
    while the checkpoints stayed (a review's finding). They move to a file of their own."""
    log = tmp_path / "metrics.jsonl"
    records = [{"event": "train", "step": 4}, {"event": "eval", "steps": 8, "test_auc": 0.7}]
    for n in (1, 2):  # branched twice from step 4: each branch's set-aside records are kept
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
        progress = Progress(
            str(tmp_path), enabled=True, log_every=1, examples_per_step=1, append=True
        )
        progress.resumed_at(4, branch=True)
        assert [json.loads(line) for line in log.read_text().splitlines()] == records[:1]
        name = "metrics.after-step-4.jsonl" if n == 1 else "metrics.after-step-4.2.jsonl"
        assert json.loads((tmp_path / name).read_text()) == records[1]

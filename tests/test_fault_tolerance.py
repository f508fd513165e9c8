"""Fault tolerance in a real Ray run (no mocks): ``kill -9`` one worker mid-epoch, after a
training step or in the middle of saving a checkpoint.

Ray Train restarts the worker group, which resumes from the newest committed checkpoint of
the launch (``ray.train.get_checkpoint()``, or a newer commit Ray had not registered yet); a
checkpoint whose save was killed is never used. The run then ends exactly as an
uninterrupted one does:
- the row-id ledger, replayed across the failure, shows every training row once per epoch,
  step for step the rows of the uninterrupted run;
- the final weights and optimizer state are bitwise equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_train.config import load_config
from dist_train.driver import run_job
from dist_train.train.faults import ENV
from dist_train.train.ledger import ledger_path, read
from tests.test_checkpoint import TINY, _tensors

pytestmark = pytest.mark.ray

COMMON = [
    "train.epochs=2",
    "data.shuffle_buffer_rows=3000",
    "checkpoint.every_steps=4",
    "data.row_id_column=row_id",
]


@pytest.mark.parametrize(
    ("kill_at", "marker", "resume_step"),
    [
        ("1:11", "killed-rank1-step11-step", 8),  # after step 11 of 32: back to step 8
        ("1:8:save", "killed-rank1-step8-save", 4),  # saving step 8: back to step 4
    ],
)
def test_kill_9_worker_mid_epoch_resumes_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_at: str, marker: str, resume_step: int
) -> None:
    monkeypatch.setenv(ENV, kill_at)
    killed = run_job(
        load_config(TINY, [*COMMON, "ray.max_failures=1", f"output_dir={tmp_path / 'killed'}"])
    )
    monkeypatch.delenv(ENV)
    clean = run_job(
        load_config(TINY, [*COMMON, "launcher=processes", f"output_dir={tmp_path / 'clean'}"])
    )
    run_k, run_c = tmp_path / "killed" / "tiny", tmp_path / "clean" / "tiny"
    assert (run_k / "faults" / marker).is_file()
    assert killed["steps"] == clean["steps"] == 32

    epochs: dict[int, list[int]] = {0: [], 1: []}
    for rank in (0, 1):
        attempts, steps = read(ledger_path(run_k, rank))
        _, clean_steps = read(ledger_path(run_c, rank))
        assert len(attempts) == 2 and attempts[0].pid != attempts[1].pid  # a new process
        assert attempts[1].resume_step == resume_step  # the newest commit before the kill
        assert sorted(steps) == list(range(1, 33))
        for k, entry in steps.items():
            assert (entry.epoch, entry.ids) == (clean_steps[k].epoch, clean_steps[k].ids), k
            epochs[entry.epoch] += entry.ids
    for ids in epochs.values():  # 16 steps x 512 rows x 2 ranks: every row, once
        assert sorted(ids) == list(range(16384))

    assert killed["test_auc"] == clean["test_auc"]
    assert not list((run_k / "checkpoints").glob(".partial-*"))  # a killed save is cleaned up
    final_k = run_k / "checkpoints" / "step-00000032"
    final_c = run_c / "checkpoints" / "step-00000032"
    tk, tc = _tensors(final_k, tmp_path), _tensors(final_c, tmp_path)
    assert tk.keys() == tc.keys() and any("momentum" in k or "state" in k for k in tk)
    for key in tk:
        assert tk[key].equal(tc[key]), key

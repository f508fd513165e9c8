"""Bad input end to end: a 2-rank run under `skip` drops and counts a truncated file and bad
rows (the per-input tests are in tests/unit/test_bad_input.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.synthetic import GeneratedData
from dist_train.driver import print_summary, run_job
from dist_train.launchers.processes import RankError
from dist_train.train.loop import TrainingDiverged
from tests.unit.test_bad_input import (
    ROWS_PER_FILE,
    _copy_train,
    _rewrite,
    _set,
    _truncated,
    _with,
)


def test_training_with_skip_reports_counts(
    small_cfg: JobConfig,
    small_data: GeneratedData,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end on 2 ranks: a truncated file and bad rows are skipped and counted, those
    of the test split apart too."""
    train = _copy_train(small_data, tmp_path)
    _truncated(train / "part-1.parquet")
    t = pq.read_table(train / "part-0.parquet")
    t = _set(t, "C3", [0, 1, 2], 10**9)  # outside C3's declared cardinality
    t = _set(t, "I1", [3], float("nan"))
    _rewrite(train / "part-0.parquet", t)
    test = tmp_path / "test_copy"
    shutil.copytree(small_data.test_dir, test)
    first = sorted(test.glob("*.parquet"))[0]
    _rewrite(first, _set(pq.read_table(first), "C3", [5, 6], 10**9))
    shutil.copy(first, test / "zz-cut.parquet")
    _truncated(test / "zz-cut.parquet")
    raw = apply_overrides(
        _with(small_cfg, train, test, "skip").model_dump(mode="json"), ["launcher=processes"]
    )
    summary = run_job(parse_config(raw))
    assert summary["bad_input"] == {
        "files_skipped": 2,
        "row_groups_skipped": 0,
        "rows_skipped": {"dense_not_finite": 1, "id_out_of_range": 5},
        "rows_skipped_total": 6,
    }
    assert summary["bad_input_test"] == {
        "files_skipped": 1,
        "row_groups_skipped": 0,
        "rows_skipped": {"id_out_of_range": 2},
        "rows_skipped_total": 2,
    }
    assert summary["steps"] == (ROWS_PER_FILE - 4) // (2 * 256)
    saved = json.loads((Path(raw["output_dir"]) / "default" / "summary.json").read_text())
    assert saved["bad_input"]["files_skipped"] == 2
    assert saved["bad_input_test"]["rows_skipped_total"] == 2
    assert np.isfinite(summary["test_auc"])
    print_summary(summary, tmp_path)
    assert (
        "bad input skipped 6 rows, 2 files, 0 row groups ({'dense_not_finite': 1, "
        "'id_out_of_range': 5}); of them in the test files: 2 rows, 1 files, 0 row groups "
        "({'id_out_of_range': 2})"
    ) in capsys.readouterr().out


def test_a_resumed_run_counts_each_bad_row_once(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """2 ranks, a bad row in every row group: stopped mid-epoch and resumed, the run reports
    the counts of one uninterrupted run (the saved counts are every rank's, held once, and
    the rows re-read to reach the resumed batch are not counted again)."""
    train = _copy_train(small_data, tmp_path)
    for part in train.glob("*.parquet"):
        t = pq.read_table(part)
        _rewrite(part, _set(t, "C3", list(range(5, t.num_rows, 1024)), 10**9))
    cfg = _with(small_cfg, train, small_data.test_dir, "skip").model_dump(mode="json")
    base = ["launcher=processes", "train.epochs=1", "data.shuffle_buffer_rows=0"]

    def run(name: str, *more: str) -> dict[str, object]:
        return run_job(parse_config(apply_overrides(cfg, [*base, f"name={name}", *more])))

    whole = run("whole")
    assert whole["bad_input"]["rows_skipped"] == {"id_out_of_range": 8}  # type: ignore[index]
    stopped = run("resumed", "train.max_steps=6")
    assert stopped["steps"] == 6
    resumed = run("resumed", "checkpoint.resume=latest")
    assert resumed["steps"] == whole["steps"]
    # the rates and examples are this launch's: its steps are named apart from the step reached
    assert whole["steps_this_launch"] == whole["steps"] and stopped["steps_this_launch"] == 6
    assert resumed["steps_this_launch"] == whole["steps"] - 6
    assert resumed["train_examples"] == (whole["steps"] - 6) * 2 * 256
    assert resumed["bad_input"] == whole["bad_input"]


def test_a_diverged_run_stops_and_its_newest_checkpoint_resumes_finite(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """A learning rate that sends the training to inf or NaN: the run fails naming the step
    (a loss that is not finite, or a save of a state that is not), and every committed
    checkpoint is of a step before it (before, training ran on to the end, saved NaN weights
    over the good checkpoints and exited 0). The newest checkpoint resumes to a finite loss:
    a save commits only once the next step's loss, computed from its weights, is finite
    (before, the newest held the weights that diverged, and a resume diverged again at
    once)."""
    raw = apply_overrides(
        _with(small_cfg, small_data.train_dir, small_data.test_dir, "error").model_dump(
            mode="json"
        ),
        [
            "launcher=processes",
            "train.dense_optimizer=sgd",
            "train.dense_learning_rate=10000",
            "train.epochs=4",
            "checkpoint.every_steps=1",
            "checkpoint.num_to_keep=100",
            "checkpoint.background=false",  # each save written before the next step
        ],
    )
    diverged = (
        r"(TrainingDiverged: )?step (\d+): the training loss is (nan|inf)"
        r"|checkpoint step (\d+) was not saved \(rank \d: \S+ holds NaN or inf values"
    )
    with pytest.raises((TrainingDiverged, RankError), match=diverged) as err:
        run_job(parse_config(raw))
    step = int(re.search(r"step (\d+)", str(err.value)).group(1))  # type: ignore[union-attr]
    saved = sorted((Path(raw["output_dir"]) / "default" / "checkpoints").glob("step-*"))
    assert saved, "the steps before the divergence were checkpointed"
    newest = max(int(p.name.removeprefix("step-")) for p in saved)
    assert newest < step
    resumed = [
        "checkpoint.resume=latest",
        f"train.max_steps={newest + 1}",
        "checkpoint.every_steps=100",
        "checkpoint.save_at_end=false",
    ]
    assert run_job(parse_config(apply_overrides(raw, resumed)))["steps"] == newest + 1


@pytest.mark.parametrize("split", ["train", "test", "test, saving nothing"])
def test_a_split_whose_every_row_is_skipped_is_named(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path, split: str
) -> None:
    """Every row bad (labels 2) under `skip`: training data that leaves no batch ran 0 steps
    and exited 0 with an untrained model's metrics; test data failed after training with
    "no valid rows to pad evaluation batches with", naming no file or cause, then said the
    run's checkpoints were saved where it saved none (a helper's audit)."""
    saves = split == "test"
    split = split.split(",")[0]
    bad = tmp_path / split
    bad.mkdir()
    for f in (small_data.train_dir if split == "train" else small_data.test_dir).glob("*"):
        t = pq.read_table(f)
        _rewrite(bad / f.name, _set(t, "label", list(range(t.num_rows)), 2))
    train, test = (bad, small_data.test_dir) if split == "train" else (small_data.train_dir, bad)
    cfg = _with(small_cfg, train, test, "skip")
    over = ["launcher=processes", f"checkpoint.save_at_end={str(saves).lower()}"]
    cfg = parse_config(apply_overrides(cfg.model_dump(mode="json"), over))
    after = r"saved as \S*step-\d+" if saves else "and saved no checkpoint"
    named = {
        "train": r"epoch 0 trained no batch of its \d+: .*label_out_of_range.*data.train_path",
        "test": rf"no test row to evaluate: all of the 4,096 rows .*{bad}.*label_out_of_range.*"
        rf"Training finished, {after}; check data.test_path",
    }
    with pytest.raises(RankError, match=named[split]):
        run_job(cfg)

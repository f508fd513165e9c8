"""A fresh run never overwrites or prunes an earlier run's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.folders import META
from dist_train.config.load import load_config
from dist_train.train.checkpointing import resume_point


def _earlier_run(root: Path, steps: list[int]) -> None:
    for step in steps:
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / META).write_text("{}")


def test_fresh_run_beside_earlier_checkpoints_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    cfg = load_config(overrides=[f"output_dir={tmp_path}"])
    root = tmp_path / "default" / "checkpoints"
    _earlier_run(root, [32, 48])
    with pytest.raises(CheckpointError, match=r"step-00000048.*--resume latest.*name"):
        resume_point(cfg)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000032", "step-00000048"]


def test_fresh_run_may_start_where_it_saves_nothing_or_nothing_was_saved(tmp_path: Path) -> None:
    root = tmp_path / "default" / "checkpoints"
    assert resume_point(load_config(overrides=[f"output_dir={tmp_path}"])) is None  # empty
    _earlier_run(root, [48])
    no_saves = ["checkpoint.save_at_end=false", f"output_dir={tmp_path}"]
    assert resume_point(load_config(overrides=no_saves)) is None
    # not over that run's records: it replaced its summary, metrics and config (a helper's
    # audit)
    (tmp_path / "default" / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match=r"would replace that run's summary, metrics"):
        resume_point(load_config(overrides=no_saves))
    # but beside a shared checkpoint.dir, the records in its run folder are its own (a
    # review: its second run was refused), unless the run that saved there had this folder
    # (a second review)
    shared = [*no_saves, f"checkpoint.dir={tmp_path / 'shared'}"]
    other = load_config(overrides=[*shared, "name=other"]).model_dump(mode="json")
    _saved_by_run(tmp_path / "shared" / "step-00000048", other)
    assert resume_point(load_config(overrides=shared)) is None
    # a finished run's summary there, though, is of a run this one does not continue: the
    # other run's newer checkpoints let its records be replaced (a review)
    finished = tmp_path / "default" / "summary.json"
    finished.write_text("{}")
    with pytest.raises(CheckpointError, match=r"holds the records of an earlier run"):
        resume_point(load_config(overrides=shared))
    assert finished.read_text() == "{}"
    finished.unlink()
    this = load_config(overrides=shared).model_dump(mode="json")
    _saved_by_run(tmp_path / "shared" / "step-00000064", this)
    with pytest.raises(CheckpointError, match=r"would replace that run's summary, metrics"):
        resume_point(load_config(overrides=shared))
    other_name = [f"output_dir={tmp_path}", "name=second"]
    assert resume_point(load_config(overrides=other_name)) is None


def _saved_by_run(step: Path, config: dict[str, object]) -> None:
    """A committed checkpoint whose meta.json records the job ``config`` that saved it."""
    step.mkdir(parents=True)
    position = {"step": int(step.name[5:]), "epoch": 0, "batches": 0}
    (step / META).write_text(json.dumps({"position": position, "world_size": 1, "config": config}))

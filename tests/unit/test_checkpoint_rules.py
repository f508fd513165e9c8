"""The checkpoint rules that keep what was saved: a step saved again replaces its checkpoint
only once the new one is committed, a resume never mixes two runs' checkpoints or cuts an
epoch's batches otherwise, and an edited ``meta.json`` is named, not half-read."""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dist_train import storage
from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.folders import META, committed, remove_partials, step_of
from dist_train.checkpoint.load import load, verify
from dist_train.checkpoint.meta import (
    _POSITION_FIELDS,
    META_DIGEST,
    TrainPosition,
    meta_digest,
    read_meta,
)
from dist_train.checkpoint.rng import rng_state_bytes
from dist_train.checkpoint.save import CheckpointSaver
from dist_train.config.load import load_config, parse_config
from dist_train.data.epoch_plan import EpochPlan
from dist_train.data.listing import RowGroup, assign_row_groups, steps_per_epoch
from dist_train.data.validation import BadInputPolicy
from dist_train.stopping import Terminated
from dist_train.train import epochs
from dist_train.train.checkpointing import check_resumed_data, evaluation_point, resume_point


class _Trainer:
    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.Adagrad(self.model.parameters(), lr=0.1)


def _saver(root: Path, seed: int = 0) -> CheckpointSaver:
    return CheckpointSaver(_Trainer(seed), root, num_to_keep=2, background=False)


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str, when: str) -> None:
    """``storage.<name>`` raises ENOSPC when its first argument's name is ``when``."""
    real = getattr(storage, name)

    def failing(loc: Any, *args: Any) -> Any:
        if loc.name == when:
            raise OSError(28, "No space left on device")
        return real(loc, *args)

    monkeypatch.setattr(storage, name, failing)


@pytest.mark.parametrize(
    ("fails", "when"), [("move", ".partial-step-00000004"), ("write_atomically", META)]
)
def test_a_step_saved_again_keeps_its_checkpoint_until_the_new_one_commits(
    one_rank: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str, when: str
) -> None:
    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    before = (root / "step-00000004" / META).read_text()
    _fail_on(monkeypatch, fails, when)
    with pytest.raises(CheckpointError, match=r"step 4 was not saved.*intact"):
        _saver(root, seed=1).save(TrainPosition(step=4))
    assert [p.name for p in committed(root)] == ["step-00000004"]
    assert (root / "step-00000004" / META).read_text() == before
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]
    verify(root / "step-00000004")


def test_a_step_saved_again_is_replaced_once_committed(one_rank: None, tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    _saver(root, seed=1).save(TrainPosition(step=4, batches=1))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]
    assert read_meta(root / "step-00000004")["position"]["batches"] == 1


def test_a_crash_while_a_step_is_saved_again_puts_the_old_checkpoint_back(
    one_rank: None, tmp_path: Path
) -> None:
    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    before = (root / "step-00000004" / META).read_text()
    # the crash: the old one set aside, the new one moved in, its meta.json not yet written
    (root / "step-00000004").rename(root / ".replaced-step-00000004")
    (root / "step-00000004").mkdir()
    (root / "step-00000004" / "__0_0.distcp").write_text("the new save's shard")
    remove_partials(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]
    assert (root / "step-00000004" / META).read_text() == before
    verify(root / "step-00000004")


def test_committed_checkpoints_are_ordered_by_step(tmp_path: Path) -> None:
    for step in (99_999_999, 100_000_000, 7):
        (tmp_path / f"step-{step:08d}").mkdir()
        (tmp_path / f"step-{step:08d}" / META).write_text("{}")
    assert [step_of(p) for p in committed(tmp_path)] == [7, 99_999_999, 100_000_000]


def _checkpoint(root: Path, step: int, config: dict[str, Any], batches: int = 0) -> Path:
    path = root / f"step-{step:08d}"
    path.mkdir(parents=True)
    plan = EpochPlan.fresh(1, 100).as_json() if batches else None
    position = dataclasses.asdict(TrainPosition(step=step, batches=batches, plan=plan))
    meta = {"position": position, "world_size": 1, "config": config}
    (path / META).write_text(json.dumps(meta))
    return path


def _resumed(job: Any, train_groups: list[RowGroup]) -> str | None:
    """The resume the driver takes: checked, then checked against its training files."""
    path = resume_point(job)
    check_resumed_data(path, train_groups)
    return path


def _job(tmp_path: Path, *overrides: str) -> Any:
    return load_config(overrides=[f"output_dir={tmp_path}", "ray.num_workers=1", *overrides])


def test_resuming_an_older_checkpoint_beside_newer_ones_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "default" / "checkpoints"
    config = _job(tmp_path).model_dump(mode="json")
    older = _checkpoint(root, 80, config)
    _checkpoint(root, 120, config)
    with pytest.raises(CheckpointError, match=r"newer than .*step-00000080 \(step-00000120\)"):
        resume_point(_job(tmp_path, f"checkpoint.resume={older}"))
    assert sorted(p.name for p in root.iterdir()) == ["step-00000080", "step-00000120"]
    # the newest resumes; a run that saves nothing may resume any
    assert resume_point(_job(tmp_path, "checkpoint.resume=latest")) == str(root / "step-00000120")
    no_saves = _job(tmp_path, f"checkpoint.resume={older}", "checkpoint.save_at_end=false")
    assert resume_point(no_saves) == str(older)


@pytest.mark.parametrize(
    ("key", "other"),
    [
        ("train.batch_size", "512"),
        ("seed", "7"),
        ("data.shuffle_buffer_rows", "0"),
        ("data.synthetic.rows_per_group", "4096"),
    ],
)
def test_resuming_mid_epoch_under_other_batch_settings_is_refused(
    tmp_path: Path, key: str, other: str
) -> None:
    root = tmp_path / "default" / "checkpoints"
    saved = _job(tmp_path, "train.batch_size=256", "seed=0", "data.shuffle_buffer_rows=65536")
    mid_epoch = _checkpoint(root, 5, saved.model_dump(mode="json"), batches=5)
    same = [f"checkpoint.resume={mid_epoch}", "train.batch_size=256", "seed=0"]
    same.append("data.shuffle_buffer_rows=65536")
    assert resume_point(_job(tmp_path, *same)) == str(mid_epoch)
    # the test split's size does not shape the training rows
    assert resume_point(_job(tmp_path, *same, "data.synthetic.num_test_rows=10")) == str(mid_epoch)
    with pytest.raises(CheckpointError, match=rf"mid-epoch with {key}="):
        resume_point(_job(tmp_path, *same, f"{key}={other}"))
    # at an epoch boundary nothing of the epoch's batches is counted yet
    (mid_epoch / META).unlink()
    mid_epoch.rmdir()
    boundary = _checkpoint(root, 5, saved.model_dump(mode="json"))
    at_boundary = _job(tmp_path, f"checkpoint.resume={boundary}", f"{key}={other}")
    if key == "seed":  # the seed also makes the features' salts: no position takes another
        with pytest.raises(CheckpointError, match="other hashing of the features"):
            resume_point(at_boundary)
    else:
        assert resume_point(at_boundary) == str(boundary)


def test_resuming_mid_epoch_under_other_row_checks_is_refused_where_rows_are_skipped(
    tmp_path: Path,
) -> None:
    """Under on_bad_input=skip the row checks decide which rows make each batch: a feature's
    cardinality changed on resume moved the batches' bounds, and a review's resumed run
    trained 732 rows twice. Without skipping, a bad row stops the run: no batch moves."""
    root = tmp_path / "default" / "checkpoints"
    skip = _job(tmp_path, "data.on_bad_input=skip")
    mid_epoch = _checkpoint(root, 5, skip.model_dump(mode="json"), batches=5)
    same = [f"checkpoint.resume={mid_epoch}", "data.on_bad_input=skip"]
    assert resume_point(_job(tmp_path, *same)) == str(mid_epoch)
    other = skip.model_dump(mode="json")["features"]
    other[1]["cardinality"] = 200
    for change in (f"features={json.dumps(other)}", "data.dense_transform=none"):
        with pytest.raises(CheckpointError, match=r"mid-epoch with (features|data.dense_tr)"):
            resume_point(_job(tmp_path, *same, change))
    with pytest.raises(CheckpointError, match=r"mid-epoch with data.on_bad_input='skip'"):
        resume_point(_job(tmp_path, f"checkpoint.resume={mid_epoch}"))
    (mid_epoch / META).unlink()
    mid_epoch.rmdir()
    strict = _checkpoint(root, 5, _job(tmp_path).model_dump(mode="json"), batches=5)
    assert resume_point(_job(tmp_path, f"checkpoint.resume={strict}", "data.dense_transform=none"))


def test_a_mid_epoch_checkpoint_where_rows_are_skipped_keeps_its_world_size(
    tmp_path: Path,
) -> None:
    """Skipped rows leave a rank's stream fewer batches than its plan: re-dealt to more
    ranks, a review's resume lost 2,048 rows, and another failed with "trained no batch".
    Decided by the setting, not the counts so far (a checkpoint before the first bad row
    counts none, and lost rows all the same; one of a clean epoch after a bad one counts
    them)."""
    root = tmp_path / "default" / "checkpoints"
    skip = _job(tmp_path, "data.on_bad_input=skip", "ray.num_workers=2")
    mid_epoch = _checkpoint(root, 5, skip.model_dump(mode="json"), batches=5)
    meta = json.loads((mid_epoch / META).read_text())
    meta["world_size"] = 2
    (mid_epoch / META).write_text(json.dumps(meta))
    resume = [f"checkpoint.resume={mid_epoch}", "data.on_bad_input=skip"]
    assert resume_point(_job(tmp_path, *resume, "ray.num_workers=2")) == str(mid_epoch)
    with pytest.raises(CheckpointError, match=r"bad rows are skipped .*Resume it with 2 ranks"):
        resume_point(_job(tmp_path, *resume, "ray.num_workers=3"))
    # skipping now only: the rest of the epoch may skip rows too
    meta["config"]["data"]["on_bad_input"] = "error"
    (mid_epoch / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"bad rows are skipped"):
        resume_point(_job(tmp_path, *resume, "ray.num_workers=3"))
    # neither: re-dealt (the 2 -> 1 -> 3 ledger test); at an epoch boundary, any world
    clean = [f"checkpoint.resume={mid_epoch}", "ray.num_workers=3"]
    assert resume_point(_job(tmp_path, *clean)) == str(mid_epoch)
    meta["config"]["data"]["on_bad_input"] = "skip"
    meta["position"].update(batches=0, plan=None)
    (mid_epoch / META).write_text(json.dumps(meta))
    assert resume_point(_job(tmp_path, *resume, "ray.num_workers=3")) == str(mid_epoch)


def _renamed_first_feature(raw: dict[str, Any]) -> None:
    raw["features"][0].update(name="renamed", column=raw["features"][0]["name"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # with a learning rate, which may change: not named among the differences
        (
            lambda raw: (
                raw.update(seed=7),
                raw["embedding"]["optimizer"].update(learning_rate=0.2),
            ),
            r"\(seed differ; first differing key: saved \('C1__0'",
        ),
        # a feature renamed (its column kept): same shapes, other salts
        (_renamed_first_feature, r"\(features \(names, chunks\) differ;"),
        (lambda raw: raw["embedding"].update(num_tables=2), r"\(embedding.num_tables differ;"),
    ],
)
def test_resuming_at_an_epoch_boundary_under_other_hashing_is_refused(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    """The tables' rows are the values hashed with the saved salts: another seed, a renamed
    feature or another split into sub-tables looks every value up in rows trained for
    others, every table's shape unchanged (a review's resume read AUC 0.49, from 0.75)."""
    root = tmp_path / "default" / "checkpoints"
    boundary = _checkpoint(root, 5, _job(tmp_path).model_dump(mode="json"))
    raw = _job(tmp_path, f"checkpoint.resume={boundary}").model_dump(mode="json")
    change(raw)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(boundary))} .*{named}"):
        resume_point(parse_config(raw))
    assert resume_point(_job(tmp_path, f"checkpoint.resume={boundary}")) == str(boundary)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("embedding.pooling=mean", "embedding.pooling='sum', now 'mean'"),
        ("data.dense_transform=none", "data.dense_transform='log1p', now 'none'"),
        ('data.dense_columns=["I2","I1"]', "'I13'], now ['I2', 'I1']"),
        ("features.C3.column=C4", "features.C3.column='C3', now 'C4'"),
    ],
)
def test_a_checkpoint_fed_other_inputs_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str, named: str
) -> None:
    """Same shapes, other inputs: resumed or evaluated with another pooling or transform,
    the weights compute something they were not trained for, and nothing fails (a review's
    finding)."""
    root = tmp_path / "default" / "checkpoints"
    boundary = _checkpoint(root, 5, _job(tmp_path).model_dump(mode="json"))
    with caplog.at_level("WARNING", logger="dist_train"):
        assert resume_point(_job(tmp_path, f"checkpoint.resume={boundary}")) == str(boundary)
        assert evaluation_point(_job(tmp_path), str(boundary)) == boundary
    assert "was trained with" not in caplog.text
    with caplog.at_level("WARNING", logger="dist_train"):
        resume_point(_job(tmp_path, f"checkpoint.resume={boundary}", change))
        evaluation_point(_job(tmp_path, change), str(boundary))
    warned = [r.getMessage() for r in caplog.records if "was trained with" in r.getMessage()]
    assert len(warned) == 2 and all(named in w for w in warned), warned
    assert "resumed with these" in warned[0] and "evaluated with these" in warned[1]


def test_what_feeds_the_same_inputs_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No false warnings (a review's findings): the dense columns unset against the same
    written out; a key an older checkpoint's config lacks; the transform of no dense
    columns; AutoInt's heads in another model. Another label is warned of as a label."""
    root = tmp_path / "default" / "checkpoints"
    saved = _job(tmp_path).model_dump(mode="json")
    del saved["data"]["dense_transform"]  # an older config, without the key
    boundary = _checkpoint(root, 5, saved)
    written_out = f"data.dense_columns=[{','.join(f'I{i}' for i in range(1, 14))}]"
    for change in (written_out, "model.attention_heads=4"):
        with caplog.at_level("WARNING", logger="dist_train"):
            resume_point(_job(tmp_path, f"checkpoint.resume={boundary}", change))
        assert "was trained" not in caplog.text, change
    root2 = tmp_path / "other" / "checkpoints"
    none = _job(tmp_path, "name=other", "data.dense_columns=[]").model_dump(mode="json")
    none["data"]["label_column"] = "clicked"
    boundary = _checkpoint(root2, 5, none)
    job = ["name=other", f"checkpoint.resume={boundary}", "data.dense_columns=[]"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="dist_train"):
        resume_point(_job(tmp_path, *job, "data.dense_transform=none"))
    assert "was trained with" not in caplog.text  # no dense column to transform
    assert "to predict data.label_column='clicked'; this job's label is 'label'" in caplog.text
    assert "resumed against another label" in caplog.text


def test_autoints_heads_are_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "default" / "checkpoints"
    autoint = ["model.kind=autoint", "model.attention_heads=2", "model.attention_dim=16"]
    boundary = _checkpoint(root, 5, _job(tmp_path, *autoint).model_dump(mode="json"))
    job = [f"checkpoint.resume={boundary}", *autoint[:1], "model.attention_heads=4"]
    with caplog.at_level("WARNING", logger="dist_train"):
        resume_point(_job(tmp_path, *job, "model.attention_dim=16"))
    assert "model.attention_heads=2, now 4" in caplog.text


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"lr_scale": 2.0}, "position.lr_scale"),
        ({"step": "8"}, "position.step"),
        ({"batches": -1}, "position.batches"),
        ({"plan": {"segments": 3}}, "position.plan"),
        ({"bad_input_rows": {"label": "many"}}, "position.bad_input_rows"),
    ],
)
def test_an_edited_position_is_named(tmp_path: Path, edit: dict[str, Any], named: str) -> None:
    path = _checkpoint(tmp_path, 8, {})
    meta = json.loads((path / META).read_text())
    meta["position"].update(edit)
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"{path / META}: .*{named}"):
        read_meta(path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"bytes": "abc"}, "'bytes' is not a byte count"),
        ({"chunks": 5}, "'chunks' is not a list of digests"),
        ({"chunk_bytes": 0}, "'chunk_bytes' is not a positive byte count"),
        ({"xxh3_128": None}, "'xxh3_128' is not a digest"),
    ],
)
def test_an_edited_file_digest_is_named(tmp_path: Path, edit: dict[str, Any], named: str) -> None:
    """A review's finding: validate raised ValueError with a traceback on 'bytes': 'abc', and
    export and resume failed on 'chunks': 5 with a TypeError naming no key."""
    path = _checkpoint(tmp_path, 8, {})
    meta = json.loads((path / META).read_text())
    digest = {"bytes": 3, "xxh3_128": "ab", "chunk_bytes": 16, "chunks": ["ab"]}
    meta["files"] = {"__0_0.distcp": {**digest, **edit}}
    meta[META_DIGEST] = meta_digest(meta)
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(f"files['__0_0.distcp']: {named}")):
        read_meta(path)


def test_an_rng_state_a_generator_refuses_is_named(tmp_path: Path) -> None:
    """Of the right length but no Mersenne Twister state: the resume failed in the rank
    with 'Invalid mt19937 state', naming no file."""
    path = _checkpoint(tmp_path, 8, {})
    meta = json.loads((path / META).read_text())
    size = len(rng_state_bytes())
    meta["torch_rng_states"] = [base64.b64encode(b"\xff" * size).decode()]
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="torch_rng_states is not a list of CPU RNG"):
        read_meta(path)
    meta["torch_rng_states"] = [base64.b64encode(rng_state_bytes()).decode()]
    (path / META).write_text(json.dumps(meta))
    assert read_meta(path)["world_size"] == 1


def test_every_position_field_is_checked() -> None:
    fields = {f.name for f in dataclasses.fields(TrainPosition)}
    assert fields == set(_POSITION_FIELDS)


def test_an_epoch_left_empty_by_a_resume_does_not_end_training(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Saved by 2 ranks one batch before epoch 0 ends, resumed on 4: the batch left is
    dropped (fewer than the ranks) and epochs 1 and 2 still run. Said so: the warning put
    it down to the batch size (a helper's audit)."""
    cfg = load_config(overrides=["train.epochs=3", "train.batch_size=10"])
    groups = [RowGroup("x.parquet", i, 100) for i in range(8)]
    steps = steps_per_epoch(assign_row_groups(groups, 2, cfg.seed, 0), 10)
    plan = EpochPlan.fresh(2, steps).as_json()
    start = TrainPosition(step=steps - 1, epoch=0, batches=steps - 1, plan=plan)
    policy = BadInputPolicy("error", "label", [], [])
    resumed = epochs.Epochs(cfg, groups, None, policy, start, ranks=(0, 4))  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="dist_train"):
        ran = [e.index for e in resumed]
    assert ran == [1, 2]
    said = caplog.text
    assert f"epoch 0: the batches left of it at the checkpoint of step {steps - 1}, dealt" in said
    assert "train.batch_size" not in said


def test_a_run_that_trains_nothing_keeps_the_epoch_plan_it_started_from() -> None:
    """A relaunch already at train.max_steps runs no epoch, yet saves at its end: without
    the plan, a later resume dealt the epoch afresh and trained rows twice (120 of 1,000 in
    a review's run) and skipped others."""
    cfg = load_config(overrides=["train.batch_size=10", "train.max_steps=5"])
    groups = [RowGroup("x.parquet", i, 100) for i in range(8)]
    steps = steps_per_epoch(assign_row_groups(groups, 3, cfg.seed, 0), 10)
    plan = EpochPlan.fresh(3, steps).as_json()
    start = TrainPosition(step=5, epoch=0, batches=2, plan=plan)
    policy = BadInputPolicy("error", "label", [], [])
    none = epochs.Epochs(cfg, groups, None, policy, start, ranks=(0, 3))  # type: ignore[arg-type]
    assert list(none) == []
    assert none.position() == start


def test_an_epochs_last_step_stops_at_max_steps() -> None:
    # the progress line read "step 6/16" in a run that ended at step 6
    groups = [RowGroup("x.parquet", i, 100) for i in range(8)]
    policy = BadInputPolicy("error", "label", [], [])
    for limit, last in ((None, 80), (6, 6), (500, 80)):
        over = ["train.batch_size=10"] + ([] if limit is None else [f"train.max_steps={limit}"])
        cfg = load_config(overrides=over)
        first = next(iter(epochs.Epochs(cfg, groups, None, policy, TrainPosition(), ranks=(0, 1))))  # type: ignore[arg-type]
        assert first.last_step == last


def test_the_commit_is_on_disk_before_older_checkpoints_go(
    one_rank: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meta.json, and the directory entries of the renames, are synced before the older
    checkpoints are deleted: after a power loss the newest is whole or the older remain."""
    import os

    root = tmp_path / "checkpoints"
    saver = CheckpointSaver(_Trainer(0), root, num_to_keep=1, background=False)
    saver.save(TrainPosition(step=4))
    synced: set[int] = set()
    synced_when_pruned: list[set[int]] = []
    real_fsync, real_rmtree = os.fsync, storage.rmtree

    def fsync(fd: int) -> None:
        synced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def rmtree(loc: Any) -> None:
        if loc.name == "step-00000004":  # the older checkpoint, pruned
            synced_when_pruned.append(set(synced))
        real_rmtree(loc)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage, "rmtree", rmtree)
    saver.save(TrainPosition(step=8))
    final = root / "step-00000008"
    assert [p.name for p in committed(root)] == ["step-00000008"]
    (before_pruning,) = synced_when_pruned
    assert {(final / META).stat().st_ino, final.stat().st_ino, root.stat().st_ino} <= before_pruning


def test_retention_leaves_a_linked_checkpoint_whole(one_rank: None, tmp_path: Path) -> None:
    """A user's step-N linking to a checkpoint elsewhere (to resume from it) was pruned by
    uncommitting it first: its target's meta.json was deleted through the link (a helper's
    audit)."""
    archived = tmp_path / "archive"
    CheckpointSaver(_Trainer(0), archived, num_to_keep=1, background=False).save(
        TrainPosition(step=2)
    )
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "step-00000002").symlink_to(archived / "step-00000002")
    saver = CheckpointSaver(_Trainer(0), root, num_to_keep=1, background=False)
    saver.save(TrainPosition(step=4))
    saver.save(TrainPosition(step=8))
    verify(archived / "step-00000002")  # whole, its meta.json there
    assert (root / "step-00000002").is_symlink()
    assert [p.name for p in committed(root)] == ["step-00000002", "step-00000008"]


@pytest.mark.parametrize("fails", ["raising", "silently"])
def test_a_prune_cut_short_leaves_no_committed_checkpoint_with_files_missing(
    one_rank: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fails: str,
) -> None:
    """Retention deleted an old checkpoint's files in the directory's order, meta.json
    among them: a stop mid-delete left it committed with shards missing (a helper's reading),
    and a delete that failed reported the save committed before it as not saved. It is
    uncommitted first now, the failure said, and the next start removes the rest."""
    root = tmp_path / "checkpoints"
    saver = CheckpointSaver(_Trainer(0), root, num_to_keep=1, background=False)
    saver.save(TrainPosition(step=4))
    real_rmtree = storage.rmtree

    def failed_midway(loc: Any) -> None:
        if loc.name == "step-00000004":  # one shard gone, then the delete fails
            next(loc.glob("*.distcp")).unlink()
            if fails == "raising":  # a URL's storage
                raise OSError(5, "Input/output error")
            return  # a local folder's delete passes over what it cannot remove
        real_rmtree(loc)

    monkeypatch.setattr(storage, "rmtree", failed_midway)
    with caplog.at_level("WARNING", logger="dist_train"):
        saver.save(TrainPosition(step=8))
    monkeypatch.setattr(storage, "rmtree", real_rmtree)
    assert "step-00000004: not deleted" in caplog.text
    for path in committed(root):
        verify(path)  # whole, every one
    assert [p.name for p in committed(root)] == ["step-00000008"]
    assert [p.name for p in remove_partials(root)] == ["step-00000004"]


def test_start_up_cleanup_removes_only_what_a_save_names(tmp_path: Path) -> None:
    """A user's folders beside the checkpoints whose names merely start with ``step-`` stay;
    they used to be deleted as partial checkpoints, before any check could refuse the run."""
    root = tmp_path / "checkpoints"
    # step-1, step-2024: digits, but not a save's 8; step-00000008: a save's name, a user's
    # file (a review found all three deleted, with failed-experiments/, by any run whose
    # checkpoint.dir was a user's folder)
    users = ["step-by-step-notes", "step-01-baseline", ".partial-step-x", "step-²", "step-1"]
    users += ["step-2024", "step-00000008", "step-000000004", "failed-experiments"]
    for name in users:
        (root / name).mkdir(parents=True)
        (root / name / "mine.txt").write_text("keep")
    (root / "failed-notes.json").write_text("keep")
    (root / ".partial-step-00000004").mkdir()
    (root / "step-000000006").mkdir()  # 9 digits: no save's name, whatever it holds
    (root / "step-000000006" / ".metadata").write_text("")
    users.append("step-000000006")
    (root / "step-00000006").mkdir()  # a save killed before its commit
    for name in (".metadata", "__0_0.distcp", "meta.json.tmp"):
        (root / "step-00000006" / name).write_text("")
    removed = remove_partials(root)
    assert sorted(p.name for p in removed) == [".partial-step-00000004", "step-00000006"]
    # a launch's failure records go at the next launch, and nothing else named failed-
    launch = "3f2a" * 8  # a run_id: a uuid4's hex
    for name in (f"failed-{launch}-rank1.json", f"failed-{launch}-rank0.json.tmp"):
        (root / name).write_text("{}")
    (root / f"diverged-{launch}.json").write_text("{}")  # the first records' name
    resume_point(_job(tmp_path, f"checkpoint.dir={root}"))
    assert sorted(p.name for p in root.iterdir()) == sorted([*users, "failed-notes.json"])


def test_a_users_entry_named_as_a_save_is_never_replaced(
    one_rank: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A review's finding: start-up kept a user's step-00000008/, then the first save of
    step 8 moved it aside and deleted it at the commit. Start-up warns (a run may never
    reach that step); the save refuses."""
    root = tmp_path / "checkpoints"
    (root / "step-00000008").mkdir(parents=True)
    (root / "step-00000008" / "mine.txt").write_text("keep")
    (root / "step-00000012").write_text("a file")
    job = _job(tmp_path, f"checkpoint.dir={root}", "checkpoint.every_steps=4")
    with caplog.at_level("WARNING", logger="dist_train"):
        assert resume_point(job) is None
    warned = [r.getMessage() for r in caplog.records]
    assert any("step-00000008 is named as the checkpoint of step 8" in m for m in warned)
    for step, what in ((8, "a folder of files no save writes"), (12, "a file")):
        with pytest.raises(CheckpointError, match=rf"step-{step:08d}: {what}, named as the"):
            _saver(root).save(TrainPosition(step=step))
    assert (root / "step-00000008" / "mine.txt").read_text() == "keep"
    assert (root / "step-00000012").read_text() == "a file"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_resuming_mid_epoch_over_other_training_data_is_refused(tmp_path: Path) -> None:
    """A file added to data.train_path after a mid-epoch save deals the epoch's row groups
    afresh: a review's resume trained 2,048 of 16,384 rows twice and 4,096 never."""
    from dist_train.train.checkpointing import CONTENTS_KEY, training_contents, training_data

    def groups(folder: str, files: int) -> list[RowGroup]:
        return [
            RowGroup(f"{folder}/part-{f}.parquet", g, 1024) for f in range(files) for g in (0, 1)
        ]

    root = tmp_path / "default" / "checkpoints"
    cfg = _job(tmp_path)
    mid_epoch = _checkpoint(root, 5, cfg.model_dump(mode="json"), batches=5)
    meta = json.loads((mid_epoch / META).read_text())
    meta["train_data"] = training_data(groups("/data/train", 2))
    meta[CONTENTS_KEY] = training_contents(groups("/data/train", 2))
    # train_data keeps the keys older versions compare whole: an extra one refused a resume
    assert set(meta["train_data"]) == {"files", "row_groups", "rows", "digest"}
    (mid_epoch / META).write_text(json.dumps(meta))
    job = _job(tmp_path, f"checkpoint.resume={mid_epoch}")
    with pytest.raises(
        CheckpointError,
        match=r"saved mid-epoch over training data of 2 file\(s\), 4 row group\(s\), 4096 rows; "
        r"the job's data.train_path now holds 3 file\(s\), 6 row group\(s\), 6144 rows\.",
    ):
        _resumed(job, groups("/data/train", 3))
    renamed = [
        RowGroup(g.path.replace("part-0", "other"), g.index, g.num_rows)
        for g in groups("/data/train", 2)
    ]
    with pytest.raises(CheckpointError, match=r"4096 rows \(as many, but other files or order\)"):
        _resumed(job, renamed)
    # the same files, moved to another folder, resume; so does the same listing
    assert _resumed(job, groups("s3://bucket/copy", 2)) == str(mid_epoch)
    assert _resumed(job, groups("/data/train", 2)) == str(mid_epoch)
    # the same files rewritten with other rows: their footers' byte sizes differ
    rewritten = [dataclasses.replace(g, byte_size=7) for g in groups("/data/train", 2)]
    with pytest.raises(CheckpointError, match=r"4096 rows \(the same files .* other rows, or"):
        _resumed(job, rewritten)
    # a checkpoint saved before the contents were recorded compares what it holds
    del meta[CONTENTS_KEY]
    (mid_epoch / META).write_text(json.dumps(meta))
    assert _resumed(job, rewritten) == str(mid_epoch)

    # the folder moved, and data.train_path with it: the files decide, not the path (the
    # path's check refused the resume, saying the batches would differ; a helper's audit)
    paths = ["data.train_path=/data/train", "data.test_path=/data/test"]
    given = _job(tmp_path / "given", *paths).model_dump(mode="json")
    saved = _checkpoint(tmp_path / "given" / "default" / "checkpoints", 5, given, batches=5)
    recorded = json.loads((saved / META).read_text())
    recorded |= {k: meta[k] for k in ("train_data",)}
    recorded[CONTENTS_KEY] = training_contents(groups("/data/train", 2))
    (saved / META).write_text(json.dumps(recorded))
    moved = _job(
        tmp_path / "given",
        f"checkpoint.resume={saved}",
        "data.train_path=/mnt/d2/train",
        "data.test_path=/mnt/d2/test",
    )
    assert _resumed(moved, groups("/mnt/d2/train", 2)) == str(saved)
    with pytest.raises(CheckpointError, match=r"4096 rows \(as many, but other files or order"):
        _resumed(moved, renamed)
    # a checkpoint that does not record its files compares the path, as before
    (saved / META).write_text(json.dumps(recorded | {"train_data": None}))
    with pytest.raises(CheckpointError, match=r"with data.train_path='/data/train'; this job has"):
        _resumed(moved, groups("/mnt/d2/train", 2))


def test_row_groups_carry_their_footers_byte_sizes(tmp_path: Path) -> None:
    """Files rewritten with other rows in the same layout list other byte sizes (what the
    mid-epoch resume check compares), read from the footers alone."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dist_train.data.listing import list_row_groups

    for name, seed in (("a", 0), ("b", 1)):
        ids = np.random.default_rng(seed).integers(0, 1000, 4096)
        pq.write_table(pa.table({"C1": ids}), tmp_path / f"{name}.parquet", row_group_size=2048)
    a, b = (
        list_row_groups(str(tmp_path / "a.parquet")),
        list_row_groups(str(tmp_path / "b.parquet")),
    )
    assert [g.num_rows for g in a] == [g.num_rows for g in b] == [2048, 2048]
    assert all(g.byte_size > 0 for g in a + b)
    assert [g.byte_size for g in a] != [g.byte_size for g in b]


def test_a_commit_marker_at_a_url_is_written_beside_then_moved_in(tmp_path: Path) -> None:
    """A file:// URL's marker was a plain write: killed midway, a cut meta.json counted as
    committed. Now a reader sees the old one or the new one whole."""
    marker = storage.location(f"file://{tmp_path}/step-00000008/{META}")
    (tmp_path / "step-00000008").mkdir()
    moves: list[tuple[str, str]] = []
    real_mv = marker.fs.mv  # type: ignore[union-attr]
    marker.fs.mv = lambda a, b, **kw: (moves.append((a, b)), real_mv(a, b, **kw))  # type: ignore[union-attr]
    try:
        storage.write_atomically(marker, '{"a": 1}')
    finally:
        marker.fs.mv = real_mv  # type: ignore[union-attr]
    assert [Path(b).name for _, b in moves] == [META] and moves[0][0].endswith(".tmp")
    assert sorted(p.name for p in (tmp_path / "step-00000008").iterdir()) == [META]
    assert json.loads((tmp_path / "step-00000008" / META).read_text()) == {"a": 1}


@pytest.mark.parametrize("background", [False, True])
def test_a_state_holding_nan_is_never_committed(
    one_rank: None, tmp_path: Path, background: bool
) -> None:
    """Weights that diverged to NaN or inf would resume into the same divergence: the save
    fails naming the tensor, and the checkpoints committed before stay."""
    root = tmp_path / "checkpoints"
    trainer = _Trainer(0)
    saver = CheckpointSaver(trainer, root, num_to_keep=5, background=background)
    saver.save(TrainPosition(step=1))
    saver.wait()
    with torch.no_grad():
        trainer.model.bias[1] = float("inf")
    with pytest.raises(CheckpointError, match=r"step 2 was not saved \(rank 0: model\.bias holds"):
        saver.save(TrainPosition(step=2))
        saver.wait()
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001"]


@pytest.mark.parametrize("background", [False, True])
def test_a_held_save_commits_only_once_released(
    one_rank: None, tmp_path: Path, background: bool
) -> None:
    """The loop holds each save's commit until the next step's loss, computed from the saved
    weights, is finite: released, it commits; released with a problem, it is dropped."""
    root = tmp_path / "checkpoints"
    saver = CheckpointSaver(_Trainer(0), root, num_to_keep=5, background=background)
    saver.save(TrainPosition(step=2), hold=True)
    for wait in (saver.wait, lambda: saver.save(TrainPosition(step=3))):
        with pytest.raises(RuntimeError, match="step 2 waits for release"):
            wait()  # a forgotten release: refused, not a hang
    assert committed(root) == []
    saver.release()
    saver.wait()
    assert saver.last_path == root / "step-00000002"
    saver.save(TrainPosition(step=3), hold=True)
    with pytest.raises(CheckpointError, match=r"step 3 was not saved \(rank 0: the next step's"):
        saver.release("the next step's loss was nan")  # inline saves raise here
        saver.wait()
    assert [p.name for p in committed(root)] == ["step-00000002"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]
    saver.release()  # nothing held: nothing to do


def _skipping_job(tmp_path: Path, bad: range) -> tuple[Any, Any, list[RowGroup]]:
    """A tiny job that skips bad rows, over 40 rows in 8 row groups of 5, the rows in
    ``bad`` holding an id outside C1's 10; its batch builder and row groups (4 rows a
    batch: 10 planned an epoch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder

    rows, per_group = 40, 5
    ids = [99 if i in bad else 1 for i in range(rows)]  # 99: outside C1's 10
    table = pa.table(
        {
            "label": pa.array([i % 2 for i in range(rows)], pa.int64()),
            "I1": pa.array([float(i) for i in range(rows)]),
            "C1": pa.array(ids, pa.int64()),
            "C2": pa.array([i % 10 for i in range(rows)], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=per_group)
    cfg = load_config(
        "launch/configs/tiny.yaml",
        [
            "data.dense_columns=[I1]",
            "features=[{name: C1, cardinality: 10}, {name: C2, cardinality: 10}]",
            "embedding.num_rows=64",
            "embedding.num_tables=1",
            "data.synthetic.string_columns=[]",
            "data.on_bad_input=skip",
            "train.batch_size=4",
            "train.epochs=2",
            "train.prefetch_batches=0",
            "data.shuffle_buffer_rows=0",
        ],
    )
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    groups = [RowGroup(str(tmp_path / "a.parquet"), g, per_group) for g in range(8)]
    return cfg, builder, groups


@pytest.mark.parametrize(
    "bad",
    [range(0, 40, 5), range(32, 40)],
    ids=["one_bad_row_a_group", "a_short_epoch"],
)
def test_a_checkpoint_counts_the_bad_rows_of_its_trained_batches(
    one_rank: None, tmp_path: Path, bad: range
) -> None:
    """A checkpoint counts the bad rows read for its trained batches, not those the input
    read ahead of training: a review's resumed run reported 20 skipped rows against 16
    uninterrupted (the rows read ahead were counted in the checkpoint and again on resume),
    and the rows a resumed stream read for its first batch were not counted at all. In a
    short epoch (its last 8 rows bad: 8 of 10 planned batches) the rows read past its last
    batch were left out of its counts but carried into the next epoch's (16 against 11
    resumed), and a checkpoint at its last step resumed into "epoch 0 trained no batch"."""
    import itertools

    cfg, builder, groups = _skipping_job(tmp_path, bad)

    def read_ahead(batches: Any) -> Any:  # as a train pipeline does: 3 batches ahead
        it = iter(batches)
        ahead = list(itertools.islice(it, 3))
        while ahead:
            ahead.extend(itertools.islice(it, 1))
            yield ahead.pop(0), 0.0

    def train(start: TrainPosition, stop_at: int | None = None) -> TrainPosition:
        policy = BadInputPolicy.for_job(cfg)
        policy.counts.rows = dict(start.bad_input_rows)  # as Checkpoints.resume does
        run = epochs.Epochs(cfg, groups, builder, policy, start, ranks=(0, 1))
        for epoch in run:
            for _ in epoch.trained(read_ahead):
                if run.step == stop_at:
                    return epoch.position()
        return run.position()

    whole = train(TrainPosition())
    assert whole.bad_input_rows == {"id_out_of_range": 2 * len(bad)}
    for stop in range(1, whole.step + 1):  # the last step of each epoch included
        saved = train(TrainPosition(), stop_at=stop)
        resumed = train(saved)
        assert (resumed.step, resumed.bad_input_rows) == (whole.step, whole.bad_input_rows), stop


def test_a_redealt_epoch_that_leaves_a_rank_no_batch_goes_on_to_the_next(
    one_rank: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An elastic group back at another size resumes mid-epoch where bad rows are skipped
    (load warns): the epoch's batches left, dealt anew, may lie past what a rank's stream
    holds. Every rank then had none, and the run ended with "epoch 0 trained no batch", a
    data error that a restart meets again (a review's finding): it goes on to the next
    epoch."""
    cfg, builder, groups = _skipping_job(tmp_path, range(32, 40))  # 8 of 10 batches
    policy = BadInputPolicy.for_job(cfg)
    first = epochs.Epochs(cfg, groups, builder, policy, TrainPosition(), ranks=(0, 1))
    epoch = next(iter(first))
    for _ in itertools.islice(epoch.trained(lambda b: ((x, 0.0) for x in b)), 6):
        pass
    saved = epoch.position()
    assert (saved.epoch, saved.batches) == (0, 6)
    # on 3 ranks the 4 batches left are 1 a rank: the third's, batch 8, is past its 8
    third = epochs.Epochs(cfg, groups, builder, policy, saved, ranks=(2, 3))
    trained = []
    for epoch in third:
        trained.append([b for b, _ in epoch.trained(lambda b: ((x, 0.0) for x in b))])
        if epoch.index == 0:
            assert epoch.done == 0 and epoch.position().epoch == 1
    assert trained[0] == [] and len(trained) == cfg.train.epochs
    assert "epoch 0: a rank held none of the batches left of it" in caplog.text


def test_a_failure_is_recorded_for_restarts_only_and_never_hides_it(
    one_rank: None, tmp_path: Path
) -> None:
    """One record a rank (several ranks diverging at once raced for one name, and the
    loser's FileNotFoundError replaced its TrainingDiverged), none without restarts, and a
    record that cannot be written is logged, not raised."""
    from dist_train.data.validation import BadInputError
    from dist_train.train.checkpointing import failed_before, record_failure
    from dist_train.train.loop import TrainingDiverged

    cfg = load_config(overrides=[f"checkpoint.dir={tmp_path / 'ckpt'}", "ray.max_failures=2"])
    assert failed_before(cfg, "launch") is None
    plain = cfg.model_copy(update={"ray": type(cfg.ray)()})
    record_failure(plain, "launch", 0, TrainingDiverged("none"))
    assert not (tmp_path / "ckpt").exists()  # max_failures=0: no restart to stop
    for rank in (1, 0):
        record_failure(cfg, "launch", rank, TrainingDiverged(f"step 4: nan on rank {rank}"))
    assert failed_before(cfg, "launch") == ("TrainingDiverged", "step 4: nan on rank 0")
    assert failed_before(cfg, "another") is None
    record_failure(cfg, "bad", 1, BadInputError("part-1.parquet: column 'label': label 7"))
    assert failed_before(cfg, "bad") == ("BadInputError", "part-1.parquet: column 'label': label 7")
    (tmp_path / "file").write_text("")
    blocked = load_config(overrides=[f"checkpoint.dir={tmp_path / 'file'}", "ray.max_failures=2"])
    record_failure(blocked, "launch", 0, TrainingDiverged("step 4"))  # logged, not raised


def test_a_restart_meets_the_runs_own_errors_again_not_its_workers() -> None:
    """The errors a Ray rank records so that a restarted group ends (`repeats_on_restart`):
    a divergence and the data's (a bad row, a footer's, a path left with nothing to read),
    not a read the storage failed for a moment nor a worker's own error, which a restart may
    not meet again. (The mechanism runs under Ray in tests/integration/test_cli.py's error
    test, with a divergence: a Ray run of each kind costs the suite about 40 s.)"""
    from dist_train.data.listing import DataSourceError
    from dist_train.data.validation import BadInputError, FooterRowsError, InputReadError
    from dist_train.launchers.ray_worker import repeats_on_restart
    from dist_train.train.loop import TrainingDiverged

    again = [
        TrainingDiverged("step 4: the training loss is nan"),
        BadInputError("part-1.parquet: column 'label': label 7"),
        FooterRowsError("part-1.parquet: row group 0: column 'label': 7"),
        DataSourceError("data.train_path: no Parquet files under /data"),
    ]
    not_again = [
        InputReadError("part-1.parquet: row group 3: connection reset"),
        RuntimeError("CUDA error: an illegal memory access"),
        OSError(28, "No space left on device"),
        ValueError("a worker's own bug"),
    ]
    assert [repeats_on_restart(e) for e in again] == [True] * len(again)
    assert [repeats_on_restart(e) for e in not_again] == [False] * len(not_again)


def test_a_failure_a_restarted_group_found_is_what_the_job_raises() -> None:
    """The driver's side of a recorded failure (the summary of a restarted group that ended):
    a divergence as itself; any other error (bad input, say) as a LaunchError naming its
    kind and message and why the group stopped; none in a finished run's summary."""
    from dist_train.launchers.ray_reports import FAILED
    from dist_train.launchers.ray_train import LaunchError, recorded_failure
    from dist_train.train.loop import TrainingDiverged

    bad = ["BadInputError", "part-1.parquet: column 'label': label 7"]
    error = recorded_failure({FAILED: bad}, "training")
    assert isinstance(error, LaunchError)
    assert str(error) == (
        "training failed: BadInputError: part-1.parquet: column 'label': label 7 (the "
        "restarted worker group stopped: it would meet the same error again)"
    )
    diverged = recorded_failure({FAILED: ["TrainingDiverged", "step 4: nan"]}, "training")
    assert isinstance(diverged, TrainingDiverged) and str(diverged) == "step 4: nan"
    assert recorded_failure({"steps": 16}, "training") is None


@pytest.mark.parametrize(("max_steps", "last"), [(None, 20), (7, 7), (10, 10)])
def test_training_ends_at_one_step_which_the_loop_knows(
    one_rank: None, tmp_path: Path, max_steps: int | None, last: int
) -> None:
    """The step a periodic save lands on as training's last is left to the final save, off
    the training clock: such a save counted in examples/s (a review measured 99k against
    31k), where the docs say the final checkpoint does not."""
    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder
    from tests.conftest import ONE_FEATURE_JOB, write_one_feature_parquet

    write_one_feature_parquet(tmp_path / "a.parquet", 40, 5)
    over = [
        *ONE_FEATURE_JOB,
        "train.epochs=2",
        "train.prefetch_batches=0",
        f"train.max_steps={'null' if max_steps is None else max_steps}",
    ]
    cfg = load_config("launch/configs/tiny.yaml", over)
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    groups = [RowGroup(str(tmp_path / "a.parquet"), g, 5) for g in range(8)]
    run = epochs.Epochs(
        cfg, groups, builder, BadInputPolicy.for_job(cfg), TrainPosition(), ranks=(0, 1)
    )
    ending = []
    for epoch in run:
        for _ in epoch.trained(lambda batches: ((b, 0.0) for b in batches)):
            if epoch.ends_training:
                ending.append(run.step)
    assert ending == [last] and run.step == last


def test_a_checkpoint_folder_that_cannot_be_written_is_refused_before_training(
    tmp_path: Path,
) -> None:
    """It failed at the first save, by default after all of training."""
    (tmp_path / "a-file").write_text("")
    below_a_file = tmp_path / "a-file" / "checkpoints"  # no folder can be made there
    with pytest.raises(CheckpointError, match=r"a-file/checkpoints: cannot write checkpoints"):
        resume_point(_job(tmp_path, f"checkpoint.dir={below_a_file}"))
    # a job that saves nothing does not need it
    quiet = [f"checkpoint.dir={below_a_file}", "checkpoint.save_at_end=false"]
    assert resume_point(_job(tmp_path, *quiet)) is None
    # the check leaves nothing behind in a folder it can write
    assert resume_point(_job(tmp_path)) is None
    assert list((tmp_path / "default" / "checkpoints").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_is_refused_and_its_partials_are_not_called_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "default" / "checkpoints"
    (root / ".partial-step-00000004").mkdir(parents=True)
    root.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="cannot write checkpoints"):
            resume_point(_job(tmp_path))
        assert remove_partials(root) == []  # still there: not reported as removed
    finally:
        root.chmod(0o755)


def test_a_folder_refusing_writes_is_named_and_what_it_kept_is_not_called_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only case for any user, root included (root writes into read-only folders,
    so the test above is skipped for it): every write and delete there fails."""
    import shutil

    root = tmp_path / "default" / "checkpoints"
    (root / ".partial-step-00000004").mkdir(parents=True)
    real_write = Path.write_text

    def refused(path: Path, *args: Any, **kwargs: Any) -> int:
        if path.parent == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refused)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # ignore_errors
    with pytest.raises(
        CheckpointError,
        match=r"checkpoints: cannot write checkpoints there "
        r"\(Permission denied\)",
    ):
        resume_point(_job(tmp_path))
    assert remove_partials(root) == []
    assert (root / ".partial-step-00000004").is_dir()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
def test_a_stop_while_a_checkpoint_is_read_stays_a_stop(
    one_rank: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    """A Ctrl-C or SIGTERM while validate or export read the shards: DCP catches any
    BaseException and wraps it, and it was reported as an unreadable checkpoint (exit 1,
    where a stop exits 130 or 143)."""
    from dist_train.checkpoint.reader import _VerifiedFileSystemReader
    from dist_train.export import load_unsharded

    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    path = root / "step-00000004"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise stop()

    monkeypatch.setattr(_VerifiedFileSystemReader, "read_data", interrupted)
    with pytest.raises(stop) as verifying:
        verify(path)
    with pytest.raises(stop) as exporting:
        load_unsharded(path, read_meta(path))
    with pytest.raises(stop) as loading:  # a resume's, an evaluation's
        load(_Trainer(1), path)
    assert type(verifying.value) is type(exporting.value) is type(loading.value) is stop


def test_a_resume_from_no_checkpoint_fails_before_data_are_generated(tmp_path: Path) -> None:
    """A mistyped --resume path failed after the synthetic data were written (250,000 rows
    for the default job) and the checkpoint folder made."""
    from dist_train.driver import run_job
    from tests.conftest import small_config

    cfg = small_config(tmp_path, ["launcher=processes", f"checkpoint.resume={tmp_path / 'nope'}"])
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}: no such checkpoint folder"):
        run_job(cfg)
    assert not (tmp_path / "default" / "data").exists()


def test_a_checkpoints_meta_json_validates_as_its_checkpoint(
    one_rank: None, tmp_path: Path
) -> None:
    """`dist-train validate .../step-N/meta.json` read it as a job config: "invalid job
    config (12 problem(s))", position and files unknown keys."""
    from dist_train.validate import validate_files

    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    report = validate_files([str(root / "step-00000004" / META)])
    assert not report.problems
    (line,) = report.ok
    assert line.startswith(f"{root / 'step-00000004'}: checkpoint step 4: ")


def test_a_users_copy_named_otherwise_is_no_checkpoint_of_the_run(
    one_rank: None, tmp_path: Path
) -> None:
    """docs/checkpoint.md: a user's `step-1/` in the checkpoint folder stays. Holding a copy
    of a checkpoint (meta.json included) it counted as committed: `latest` could pick it and
    retention deleted it."""
    root = tmp_path / "checkpoints"
    _saver(root).save(TrainPosition(step=4))
    shutil.copytree(root / "step-00000004", root / "step-1")
    shutil.copytree(root / "step-00000004", root / "step-0000000009")
    saver = _saver(root)
    for step in (8, 12, 16):
        saver.save(TrainPosition(step=step))
    assert [p.name for p in committed(root)] == ["step-00000012", "step-00000016"]
    assert (root / "step-1" / META).is_file() and (root / "step-0000000009" / META).is_file()


def test_a_renamed_checkpoint_and_a_forged_config_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A helper's audit: step-00000016 renamed step-00000099 was `latest`, and a resume
    said it was newer than itself; a meta.json whose config.data was no map failed with a
    bare AttributeError; a pipe for meta.json read as no checkpoint at all."""
    from dist_train.checkpoint.meta import read_meta
    from dist_train.cli.main import main

    root = tmp_path / "default" / "checkpoints"
    config = _job(tmp_path).model_dump(mode="json")
    _checkpoint(root, 8, config)
    (_checkpoint(root, 16, config)).rename(root / "step-00000099")
    renamed = (
        r"step-00000099: named as the checkpoint of step 99, but its meta.json records step "
        r"16: it was renamed\. Give it its name back \(step-00000016\)"
    )
    with pytest.raises(CheckpointError, match=renamed):
        resume_point(_job(tmp_path, "checkpoint.resume=latest"))

    forged = _checkpoint(tmp_path / "forged", 8, {**config, "data": "x"}, batches=5)
    with pytest.raises(CheckpointError, match=r"08/meta.json: config.data is not a map: 'x'"):
        read_meta(forged)

    piped = _checkpoint(tmp_path / "piped", 8, config)
    (piped / META).unlink()
    os.mkfifo(piped / META)
    capsys.readouterr()
    assert main(["validate", str(piped)]) == 1
    assert f"PROBLEM  {piped / META}: not a regular file" in capsys.readouterr().err
    no_saves = _job(tmp_path, f"checkpoint.resume={piped}", "checkpoint.save_at_end=false")
    with pytest.raises(CheckpointError, match=r"08/meta.json: not a regular file"):
        resume_point(no_saves)


def test_a_refused_resume_leaves_the_runs_generated_data_as_they_were(tmp_path: Path) -> None:
    """The driver prepared the job's inputs before it checked the resume: a resume refused
    (here mid-epoch under another batch size) had first regenerated the run's synthetic
    data for its own settings (another test split), and `evaluate` of the run's real
    settings then found no data of them (a review's finding)."""
    from dist_train.data.synthetic import generate, generated
    from dist_train.driver import run_job

    small = ["data.synthetic.num_train_rows=20000", "data.synthetic.num_test_rows=100"]
    saved = _job(tmp_path, "train.batch_size=256", "launcher=processes", *small)
    generate(saved.data.synthetic, saved.run_dir / "data", progress=False)
    mid_epoch = _checkpoint(saved.run_dir / "checkpoints", 5, saved.model_dump(mode="json"), 5)
    other = [*small[:1], "data.synthetic.num_test_rows=4096", "train.batch_size=512"]
    resumed = _job(tmp_path, f"checkpoint.resume={mid_epoch}", "launcher=processes", *other)
    with pytest.raises(CheckpointError, match=r"mid-epoch with train\.batch_size=256"):
        run_job(resumed)
    assert generated(saved.data.synthetic, saved.run_dir / "data") is not None


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


def _refusal(obj: object = None, raw: bytes | None = None) -> str | None:
    """What the safe unpickler refused, loading ``obj`` as torch saved it (or ``raw``)."""
    import io
    import warnings

    from dist_train.checkpoint.errors import safe_load_refusal

    data = io.BytesIO()
    if raw is None:
        torch.save(obj, data)
    else:
        data.write(raw)
    data.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a protocol-4 pickle's note
            torch.load(data, weights_only=True)
    except Exception as err:  # noqa: BLE001 - what it raised is the subject
        return safe_load_refusal(err)
    return None


def test_what_the_safe_unpickler_refused_is_named_without_torchs_advice() -> None:
    """torch's refusal opens with advice to reload the file with weights_only=False, which
    runs the code a crafted file holds; a first version kept it for globals torch does not
    block (a review)."""
    import fractions
    import pickle

    said = {
        "a blocked module's": _refusal({"a": _RunsCode()}),
        "an unlisted global": _refusal({"a": fractions.Fraction(1, 3)}),
        "an opcode": _refusal(raw=pickle.dumps(_RunsCode())),
    }
    assert said == {
        "a blocked module's": "refused by the safe (weights-only) unpickler: GLOBAL "
        "posix.system whose module posix is blocked",
        "an unlisted global": "refused by the safe (weights-only) unpickler: GLOBAL "
        "fractions.Fraction, not among the types a checkpoint holds",
        "an opcode": "refused by the safe (weights-only) unpickler: Unsupported operand 149",
    }
    assert _refusal({"a": torch.ones(2)}) is None  # loaded

"""Checkpoints: an interrupted run resumed from its checkpoint ends bitwise equal to an
uninterrupted one; partial checkpoints are never used; corrupt ones fail naming the file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from dist_train import export as export_module
from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.folders import committed, remove_partials
from dist_train.checkpoint.load import verify
from dist_train.checkpoint.meta import META_DIGEST, check_compatible, meta_digest
from dist_train.cli.main import main
from dist_train.config.load import load_config
from dist_train.driver import run_job
from dist_train.train.ledger import read_run

TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
BASE = ["launcher=processes", "train.epochs=2", "data.shuffle_buffer_rows=3000"]


def _tensors(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    out = tmp / f"{ckpt.parent.parent.name}-{ckpt.name}.pt"
    dcp_to_torch_save(str(ckpt), str(out))
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, torch.Tensor):
            flat[prefix] = node

    walk("", torch.load(out, weights_only=True))
    return flat


def test_resume_mid_epoch_matches_uninterrupted_run_bitwise(tmp_path: Path) -> None:
    full = run_job(load_config(TINY, [*BASE, f"output_dir={tmp_path / 'a'}"]))
    part = [*BASE, f"output_dir={tmp_path / 'b'}", "checkpoint.every_steps=4"]
    first = run_job(load_config(TINY, [*part, "train.max_steps=11"]))  # "fails" at step 11
    assert first["steps"] == 11
    rest = run_job(load_config(TINY, [*part, "checkpoint.resume=latest"]))
    assert rest["steps"] == full["steps"] == 32
    assert rest["test_auc"] == full["test_auc"] and rest["test_log_loss"] == full["test_log_loss"]
    # every step's loss is in one train record (log_every=4): the stopped launch logs its
    # last window (steps 9-11), the resumed one goes on from there
    for run, steps in (("a", [*range(4, 33, 4)]), ("b", [4, 8, 11, 12, *range(16, 33, 4)])):
        log = tmp_path / run / "tiny" / "metrics.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert [r["step"] for r in records if r["event"] == "train"] == steps, run
    a = committed(tmp_path / "a" / "tiny" / "checkpoints")[-1]
    b = committed(tmp_path / "b" / "tiny" / "checkpoints")[-1]
    assert a.name == b.name == "step-00000032"
    ta, tb = _tensors(a, tmp_path), _tensors(b, tmp_path)
    assert ta.keys() == tb.keys()
    assert any("embedding_bags" in k for k in ta) and any(
        "momentum" in k or "state" in k for k in ta
    )
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    # Retention: num_to_keep=2 committed checkpoints remain.
    assert [p.name for p in committed(b.parent)] == ["step-00000028", "step-00000032"]
    meta = json.loads((b / "meta.json").read_text())
    assert meta["position"] == {
        "step": 32,
        "epoch": 2,
        "batches": 0,
        "bad_input_rows": {},
        "bad_input_row_groups": 0,
        "plan": None,  # at an epoch boundary
    }
    assert len(meta["torch_rng_states"]) == 2  # one per rank


def test_resume_on_three_ranks_matches_uninterrupted_run_bitwise(tmp_path: Path) -> None:
    """At 3 ranks a resumed run's test log loss was 1e-8 off the uninterrupted run's and
    its weights 1-2 ulp: TorchRec's DDP summed the first step's dense gradients in another
    bucket layout than the later steps', and a resumed run's first step is a first step (a
    helper's audit; 2 ranks add two numbers, the same in any order)."""
    three = [*BASE, "ray.num_workers=3", "checkpoint.every_steps=4"]
    full = run_job(load_config(TINY, [*three, f"output_dir={tmp_path / 'a'}"]))
    part = [*three, f"output_dir={tmp_path / 'b'}"]
    run_job(load_config(TINY, [*part, "train.max_steps=9"]))  # resumes at step 8
    rest = run_job(load_config(TINY, [*part, "checkpoint.resume=latest"]))
    assert rest["steps"] == full["steps"] and rest["test_log_loss"] == full["test_log_loss"]
    a = committed(tmp_path / "a" / "tiny" / "checkpoints")[-1]
    b = committed(tmp_path / "b" / "tiny" / "checkpoints")[-1]
    ta, tb = _tensors(a, tmp_path), _tensors(b, tmp_path)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize(
    ("optimizer", "holder"),
    [
        ("train.dense_optimizer=adam", "dense_arch"),
        ("embedding.optimizer.type=adam ray.num_workers=1", "embedding_bags"),
        # row_wise at 2 ranks: each rank's moments are of its rows (TorchRec's dense kernel)
        ("embedding.optimizer.type=adam", "embedding_bags"),
    ],
)
def test_a_resumed_adam_keeps_its_moments(tmp_path: Path, optimizer: str, holder: str) -> None:
    """torch's Adam makes its moments at its first step: a fresh trainer had none, DCP loads
    only what the target holds, so a resume restarted Adam beside the restored weights (the
    dense network's, and on CPU ranks the tables')."""
    adam = ["launcher=processes", *optimizer.split(), "train.epochs=1"]
    full = run_job(load_config(TINY, [*adam, f"output_dir={tmp_path / 'a'}"]))
    part = [*adam, f"output_dir={tmp_path / 'b'}", "checkpoint.every_steps=4"]
    run_job(load_config(TINY, [*part, "train.max_steps=8"]))
    rest = run_job(load_config(TINY, [*part, "checkpoint.resume=latest"]))
    assert rest["steps"] == full["steps"] > 8
    a = committed(tmp_path / "a" / "tiny" / "checkpoints")[-1]
    b = committed(tmp_path / "b" / "tiny" / "checkpoints")[-1]
    ta, tb = _tensors(a, tmp_path), _tensors(b, tmp_path)
    moments = [k for k in ta if k.endswith(".exp_avg_sq") and holder in k]
    assert moments and ta.keys() == tb.keys()
    for key in moments:  # the whole table's, not one rank's rows
        weight = key.replace("optim.state.", "model.").removesuffix(".exp_avg_sq")
        assert ta[key].shape == ta[weight].shape, key
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_a_tables_adam_moments_reshard_with_it(tmp_path: Path) -> None:
    """Embedding Adam on CPU ranks (TorchRec's dense kernel, each rank's moments a plain
    tensor of its shard): row_wise on 2 ranks -> column_wise on 4 -> table_wise on 1 ->
    row_wise on 2, each loading the previous one's epoch-boundary checkpoint (training no
    further): the moments come through whole, as the weights do. Saved as plain tensors,
    a checkpoint held rank 0's rows alone, and a resume at another world size dropped them."""
    base = [*BASE, f"output_dir={tmp_path}", "train.epochs=1", "embedding.optimizer.type=adam"]
    run_job(load_config(TINY, base))
    saved = committed(tmp_path / "tiny" / "checkpoints")[-1]
    before = _tensors(saved, tmp_path)
    moments = [k for k in before if k.endswith(("exp_avg", "exp_avg_sq")) and "sparse" in k]
    assert len(moments) == 4
    for hop, (kind, world) in enumerate([("column_wise", 4), ("table_wise", 1), ("row_wise", 2)]):
        summary = run_job(
            load_config(
                TINY,
                [
                    *base,
                    f"sharding.type={kind}",
                    f"ray.num_workers={world}",
                    "train.max_steps=16",
                    f"checkpoint.resume={saved}",
                    f"checkpoint.dir={tmp_path / f'hop{hop}'}",
                ],
            )
        )
        assert {p["type"] for p in summary["sharding"].values()} == {kind}
        saved = committed(tmp_path / f"hop{hop}")[-1]
        after = _tensors(saved, tmp_path)
        assert after.keys() == before.keys()
        for key in moments:
            assert torch.count_nonzero(before[key]) > before[key].numel() // 2, key
            assert torch.equal(after[key], before[key]), (kind, key)


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adam"])
def test_saving_sharded_optimizer_state_warns_of_nothing(tmp_path: Path, optimizer: str) -> None:
    """FBGEMM's fused state comes sharded and torch Adam's is placed as the weight: neither
    is a rank's part that a checkpoint cannot place. (A review found every save of the
    default optimizer warning so, the fused state taken for a plain tensor.) The job runs in
    a process of its own: its ranks print through its own rank server, where ranks forked
    from this session's server print to the stream it had when an earlier test started it
    (a test-suite audit: in the suite this test passed with the warning back)."""
    over = [
        *BASE,
        f"output_dir={tmp_path}",
        "sharding.type=table_wise",
        f"embedding.optimizer.type={optimizer}",
        "train.max_steps=4",
        "checkpoint.every_steps=2",
    ]
    sets = [arg for item in over for arg in ("--set", item)]
    job = subprocess.run(
        [sys.executable, "-m", "dist_train.cli", "train", "--config", str(TINY), *sets],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    out = job.stdout + job.stderr
    assert "step 4/" in out  # the ranks' own lines reach it
    assert "WARNING" not in out


def test_a_resume_that_changes_the_optimizer_starts_its_state_afresh(tmp_path: Path) -> None:
    """Adagrad's saved state is not Adam's: a slot for every saved key a fresh optimizer
    lacked handed Adam Adagrad's `sum` and `step`, and its first step failed (KeyError
    'exp_avg'); row-wise Adagrad kept a stale `momentum1` slot beside its `sum`."""
    base = ["launcher=processes", f"output_dir={tmp_path}", "checkpoint.every_steps=4"]
    run_job(load_config(TINY, [*base, "train.max_steps=8"]))
    rest = run_job(
        load_config(TINY, [*base, "checkpoint.resume=latest", "train.dense_optimizer=adam"])
    )
    assert rest["steps"] == 16
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    keys = _tensors(ckpt, tmp_path).keys()
    dense = {k.rsplit(".", 1)[-1] for k in keys if k.startswith("optim.state.dense_arch.0.weight")}
    assert dense == {"exp_avg", "exp_avg_sq", "step"}  # Adam's own, none of Adagrad's


def test_a_periodic_save_at_the_last_step_is_the_final_save(tmp_path: Path) -> None:
    """Left to the final save (off the training clock), it is still made without
    checkpoint.save_at_end, and once."""
    over = [*BASE, f"output_dir={tmp_path}", "checkpoint.save_at_end=false"]
    summary = run_job(load_config(TINY, [*over, "checkpoint.every_steps=8", "train.epochs=1"]))
    root = tmp_path / "tiny" / "checkpoints"
    assert summary["steps"] == 16 and [p.name for p in committed(root)] == [
        "step-00000008",
        "step-00000016",
    ]
    events = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").open()]
    assert [e["step"] for e in events if e.get("event") == "checkpoint"] == [8, 16]


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path: Path) -> None:
    """It exited 0 with "examples/s 0 (0 steps, to step 4)", unexplained."""
    import logging

    from dist_train.logs import LOG

    over = [*BASE, f"output_dir={tmp_path}", "train.max_steps=4"]
    run_job(load_config(TINY, over))
    said: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "nothing left to train" in record.getMessage():
                said.append(record.getMessage())

    handler = Collect(logging.WARNING)
    LOG.addHandler(handler)
    try:
        summary = run_job(load_config(TINY, [*over, "checkpoint.resume=latest"]))
    finally:
        LOG.removeHandler(handler)
    assert summary["steps"] == 4 and summary["steps_this_launch"] == 0
    assert len(said) == 1 and "step-00000004 is at step 4" in said[0], said
    # max_steps is what stops it: raising the epochs (as "either" said) would not help
    assert said[0].endswith("Raise train.max_steps to train on"), said
    said.clear()  # the epochs ended it (and max_steps at that step too): both are said
    LOG.addHandler(handler)
    try:
        ended = [*BASE, f"output_dir={tmp_path / 'e'}", "train.epochs=1"]
        run_job(load_config(TINY, ended))
        run_job(load_config(TINY, [*ended, "checkpoint.resume=latest"]))
        run_job(load_config(TINY, [*ended, "checkpoint.resume=latest", "train.max_steps=16"]))
    finally:
        LOG.removeHandler(handler)
    assert said[0].endswith("Raise train.epochs to train on"), said
    assert said[1].endswith("Raise train.epochs and train.max_steps to train on"), said


def test_partial_checkpoint_is_ignored_and_removed(tmp_path: Path) -> None:
    over = [*BASE, f"output_dir={tmp_path}", "train.max_steps=4"]
    run_job(load_config(TINY, over))
    root = tmp_path / "tiny" / "checkpoints"
    good = committed(root)[-1]
    partial = root / ".partial-step-00000009"  # a save killed before its commit
    shutil.copytree(good, partial)
    (partial / "meta.json").unlink()
    summary = run_job(load_config(TINY, [*over, "train.max_steps=6", "checkpoint.resume=latest"]))
    assert summary["steps"] == 6  # resumed from step 4, not from the partial one
    assert not partial.exists()


def test_a_second_run_in_a_checkpoint_folder_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `train --resume latest` on a run's folder took the first run's save in
    progress for a crashed one and deleted it; the first run then failed, and the two runs'
    checkpoints mixed (a helper's audit). The running job holds the folders' locks here:
    the checkpoint folder's, then the run folder's (a second run with a checkpoint.dir of
    its own regenerated the running job's data)."""
    from dist_train.checkpoint.lock import one_run_in

    over = [*BASE, f"output_dir={tmp_path}", "train.max_steps=4"]
    run_job(load_config(TINY, over))
    root = tmp_path / "tiny" / "checkpoints"
    in_progress = root / ".partial-step-00000006"  # the running job's save
    shutil.copytree(committed(root)[-1], in_progress)
    (in_progress / "meta.json").unlink()
    again = load_config(TINY, [*over, "train.max_steps=6", "checkpoint.resume=latest"])
    data = sorted((tmp_path / "tiny" / "data").rglob("*.parquet"))
    before = [f.read_bytes() for f in data]
    # a second run of other generated data regenerated the running job's under it first
    other_data = load_config(TINY, [*over, "data.synthetic.seed=7", "checkpoint.resume=latest"])
    elsewhere = load_config(TINY, [*over, "data.synthetic.seed=7", f"checkpoint.dir={tmp_path}/c"])
    with one_run_in(root, "checkpoint folder"):
        for second in (again, other_data):
            with pytest.raises(
                CheckpointError,
                match=rf"another run uses this checkpoint folder \(process {os.getpid()}: ",
            ):
                run_job(second)
        assert [f.read_bytes() for f in data] == before
    with one_run_in(tmp_path / "tiny", "run folder"):
        for second in (again, elsewhere):
            with pytest.raises(CheckpointError, match=r"another run uses this run folder"):
                run_job(second)
        # said without the hint to resume: the command refused was that resume
        cli = ["train", "--config", str(TINY), *(a for o in over for a in ("--set", o))]
        assert main([*cli, "--resume", "latest"]) == 1
        assert "continues from it" not in capsys.readouterr().err
        assert in_progress.is_dir() and [p.name for p in committed(root)] == ["step-00000004"]
        assert [f.read_bytes() for f in data] == before
    # a fresh run over the finished job's folder, of other data: refused, its data as they were
    with pytest.raises(CheckpointError, match=r"already holds checkpoints of an earlier run"):
        run_job(load_config(TINY, [*over, "data.synthetic.seed=7"]))
    assert [f.read_bytes() for f in data] == before
    # and one that saves nothing: it replaced the finished run's summary, metrics and config
    # (a helper's audit)
    records = {p: p.read_bytes() for p in (tmp_path / "tiny").glob("*.json*")}
    assert {p.name for p in records} >= {"summary.json", "metrics.jsonl", "config.json"}
    unsaved = load_config(TINY, [*over, "checkpoint.save_at_end=false"])
    with pytest.raises(CheckpointError, match=r"would replace that run's summary, metrics"):
        run_job(unsaved)
    assert {p: p.read_bytes() for p in records} == records
    assert run_job(again)["steps"] == 6  # the first run over: the lock is free
    # a finished run that saved no checkpoint: its records were replaced by the next one's
    nothing_saved = [*over, f"output_dir={tmp_path / 'nock'}", "checkpoint.save_at_end=false"]
    run_job(load_config(TINY, nothing_saved))
    kept = {p: p.read_bytes() for p in (tmp_path / "nock" / "tiny").glob("*.json*")}
    assert "summary.json" in {p.name for p in kept}
    with pytest.raises(CheckpointError, match=r"holds the records of an earlier run"):
        run_job(load_config(TINY, nothing_saved))
    assert {p: p.read_bytes() for p in kept} == kept
    assert not in_progress.exists()
    # the run folder as its own checkpoint.dir: one folder, locked once (not refused by itself)
    at_run = [
        *over,
        f"output_dir={tmp_path / 'own'}",
        f"checkpoint.dir={tmp_path / 'own' / 'tiny'}",
    ]
    assert run_job(load_config(TINY, at_run))["steps"] == 4


def test_corrupt_checkpoint_fails_naming_the_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    over = [f"output_dir={tmp_path}", "launcher=processes", "train.max_steps=2"]
    run_job(load_config(TINY, over))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    (ckpt / "meta.json").write_text("{not json")
    args = ["train", "--config", str(TINY), "--resume", str(ckpt)]
    for item in over:
        args += ["--set", item]
    assert main(args) == 1
    assert f"{ckpt / 'meta.json'}: unreadable checkpoint metadata" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"a folder without meta\.json: not a committed"):
        run_job(load_config(TINY, [*over, f"checkpoint.resume={tmp_path}"]))


def test_epoch_boundary_checkpoint_reshards_to_another_world_size(tmp_path: Path) -> None:
    """2 ranks save row_wise tables + fused and dense optimizer state; 1 rank loads them and
    (training no further) writes back exactly the same values, into a run folder of its own
    (resumed in its own folder at its end, a run does not save again)."""
    over = [*BASE, f"output_dir={tmp_path}", "train.epochs=1"]
    run_job(load_config(TINY, over))
    saved = committed(tmp_path / "tiny" / "checkpoints")[-1]
    assert json.loads((saved / "meta.json").read_text())["world_size"] == 2
    before = _tensors(saved, tmp_path)
    one = tmp_path / "one"
    elsewhere = [f"output_dir={one}", f"checkpoint.resume={saved}"]
    summary = run_job(
        load_config(TINY, [*over, *elsewhere, "ray.num_workers=1", "train.max_steps=16"])
    )
    assert summary["world_size"] == 1 and summary["steps"] == 16
    rewritten = committed(one / "tiny" / "checkpoints")[-1]
    assert json.loads((rewritten / "meta.json").read_text())["world_size"] == 1
    after = _tensors(rewritten, tmp_path)
    assert before.keys() == after.keys()
    assert any("momentum1" in k for k in before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_mid_epoch_world_size_changes_train_every_row_once(tmp_path: Path) -> None:
    """2 ranks stop mid-epoch, 1 rank continues and stops mid-epoch again, 3 ranks finish
    the epoch: the untrained batches are re-dealt each time (the row ledger shows every row
    of the epoch trained exactly once), and the model comes through the resharding."""
    over = [*BASE, f"output_dir={tmp_path}", "train.epochs=1", "data.row_id_column=row_id"]
    run_job(load_config(TINY, [*over, "train.max_steps=5"]))  # 2 x 5 batches of 16 x 2
    one = run_job(
        load_config(
            TINY, [*over, "ray.num_workers=1", "train.max_steps=15", "checkpoint.resume=latest"]
        )
    )
    assert one["steps"] == 15  # 10 of the 22 batches left, on 1 rank
    three = run_job(load_config(TINY, [*over, "ray.num_workers=3", "checkpoint.resume=latest"]))
    assert three["steps"] == 19  # the other 12, 4 per rank
    run = tmp_path / "tiny"
    # the run's steps, every rank's attempts together (a rank's own ledger keeps steps that
    # another rank's later attempt rolled back)
    ids = [i for steps in read_run(run).values() for entry in steps.values() for i in entry.ids]
    assert sorted(ids) == list(range(16384))
    assert 0.5 < three["test_auc"] < 1.0
    meta = json.loads((committed(run / "checkpoints")[-1] / "meta.json").read_text())
    assert meta["position"]["epoch"] == 1 and meta["position"]["plan"] is None


def test_mid_epoch_checkpoint_without_a_plan_keeps_its_world_size(tmp_path: Path) -> None:
    meta = {"position": {"step": 5, "epoch": 0, "batches": 5}, "world_size": 2}
    assert check_compatible(meta, tmp_path, 2).batches == 5
    with pytest.raises(CheckpointError, match="saved mid-epoch by 2 ranks without an epoch plan"):
        check_compatible(meta, tmp_path, 1)


def test_export_writes_whole_tables_as_safetensors(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    over = [f"output_dir={tmp_path}", "launcher=processes", "train.max_steps=2"]
    over.append("checkpoint.every_steps=1")  # an older checkpoint beside the exported one
    run_job(load_config(TINY, over))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out), "--optimizer"]) == 0
    printed = capsys.readouterr().out
    exported = load_file(str(out / "model.safetensors"))
    saved = _tensors(ckpt, tmp_path)
    tables = [k for k in exported if ".embedding_bags." in k]
    # tiny.yaml: 4,096 rows x 8 split round-robin into 2 sub-tables, each written whole.
    assert len(tables) == 2 and sum(exported[k].shape[0] for k in tables) == 4096
    assert all(exported[k].shape[1] == 8 for k in tables)
    assert f"{tables[0]}: {exported[tables[0]].shape[0]:,} x 8" in printed
    for key, value in exported.items():
        assert torch.equal(value, saved[f"model.{key}"]), key
    assert load_file(str(out / "optimizer.safetensors"))
    assert json.loads((out / "meta.json").read_text())["position"]["step"] == 2
    # readable by whoever the umask lets read: safetensors wrote them 0600, which a
    # serving process of another user could not open
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    # which sub-table each (feature, chunk) reads, with its salt: the rows can be looked up
    keys = json.loads((out / "export.json").read_text())["keys"]
    assert {k["table"] for k in keys} == {t.split(".")[-2] for t in tables}
    assert all(isinstance(k["salt"], int) for k in keys)
    assert safe_open(str(out / "optimizer.safetensors"), "pt").metadata() == {"step": "2"}
    # Again without --optimizer: the first export's optimizer state, of a step this model
    # file may not be, is not left beside it
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    assert not (out / "optimizer.safetensors").exists()
    # Not into the checkpoint (its own file check would then fail), nor over a file: a
    # refused --out exits 2, as evaluate's does (a bad argument; 1 is a failure)
    assert main(["export", str(ckpt), "--out", str(ckpt / "export")]) == 2
    assert f"{ckpt / 'export'}: inside the checkpoint {ckpt}" in capsys.readouterr().err
    assert not (ckpt / "export").exists()
    (older,) = committed(tmp_path / "tiny" / "checkpoints")[:-1]  # nor into another one
    assert main(["export", str(ckpt), "--out", str(older)]) == 2
    assert f"{older}: holds a checkpoint" in capsys.readouterr().err
    # nor into a folder inside another checkpoint, nor inside this one named by a URL: the
    # checkpoint's file check then failed on the export's files
    assert main(["export", str(ckpt), "--out", str(older / "exported")]) == 2
    assert f"{older / 'exported'}: inside the checkpoint {older}" in capsys.readouterr().err
    assert main(["export", f"file://{ckpt}", "--out", str(ckpt / "exported")]) == 2
    assert "inside the checkpoint" in capsys.readouterr().err
    # nor into a folder named as a save names its own: as step-00000099 in the run's
    # checkpoint folder its meta.json broke `latest` ("it was renamed") for evaluate and
    # resume; beside checkpoints under another name it is harmless
    beside = ckpt.parent / "step-00000099"
    assert main(["export", str(ckpt), "--out", str(beside)]) == 2
    assert f"{beside}: named as a checkpoint's save is (step-00000099)" in capsys.readouterr().err
    assert not beside.exists()
    assert main(["export", str(ckpt), "--out", str(ckpt.parent / "exported")]) == 0
    shutil.rmtree(ckpt.parent / "exported")
    # nor into the run's checkpoint folder itself: a --resume of it failed far from the
    # cause (a helper's audit)
    assert main(["export", str(ckpt), "--out", str(ckpt.parent)]) == 2
    assert f"{ckpt.parent}: a run's checkpoint folder (it holds {ckpt.name})" in (
        capsys.readouterr().err
    )
    assert not (ckpt.parent / "model.safetensors").exists()
    # the files it lists are where it wrote them, whatever folder the command ran in
    listed = json.loads((out / "export.json").read_text())["files"]
    assert listed == [str(out / "model.safetensors")]
    verify(older)
    verify(ckpt)
    # --out is a local folder: a URL was written to ./file:/... and reported as written
    with pytest.raises(SystemExit) as usage:
        main(["export", str(ckpt), "--out", f"file://{tmp_path / 'url'}"])
    assert usage.value.code == 2
    assert "a folder on this machine, not a URL" in capsys.readouterr().err
    assert not Path("file:").exists()
    # a checkpoint URL of no known scheme: an error line, not a traceback
    assert main(["export", "nosuch://x/y", "--out", str(tmp_path / "x")]) == 1
    assert "error: checkpoint: nosuch://x/y: cannot open this URL" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as exit_:  # a usage error, before the checkpoint is read
        main(["export", str(ckpt), "--out", str(tmp_path / "a-file")])
    assert exit_.value.code == 2
    assert f"{tmp_path / 'a-file'}: a file, not a folder" in capsys.readouterr().err
    # nor over a user's own files of an export's names: they stay as they were
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("model.safetensors", "optimizer.safetensors"):
        (mine / name).write_text("the user's")
    assert main(["export", str(ckpt), "--out", str(mine)]) == 2
    assert "optimizer.safetensors, which no export wrote" in capsys.readouterr().err
    assert {p.read_text() for p in mine.iterdir()} == {"the user's"}
    # any export.json passed for proof that the rest were an export's (a helper's audit): a
    # user's own beside their model, or an optimizer added to an export made without one
    (mine / "optimizer.safetensors").unlink()
    (mine / "export.json").write_text("the user's")
    assert main(["export", str(ckpt), "--out", str(mine)]) == 2
    assert "holds export.json, model.safetensors, which no" in capsys.readouterr().err
    assert {p.read_text() for p in mine.iterdir()} == {"the user's"}
    ours = tmp_path / "ours"
    assert main(["export", str(ckpt), "--out", str(ours)]) == 0
    (ours / "optimizer.safetensors").write_text("the user's")
    assert main(["export", str(ckpt), "--out", str(ours), "--optimizer"]) == 2
    assert "holds optimizer.safetensors, which no export" in capsys.readouterr().err
    assert (ours / "optimizer.safetensors").read_text() == "the user's"
    (ours / "optimizer.safetensors").unlink()
    assert main(["export", str(ckpt), "--out", str(ours), "--optimizer"]) == 0  # its own again
    capsys.readouterr()
    # a loop of links: a traceback (RuntimeError), where evaluate's --out names it
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "loop-a")]) == 2
    said = capsys.readouterr().err  # Python 3.13's resolve() passes over a loop quietly
    assert (
        "loop-a: cannot resolve it (Symlink loop" in said or "loop-a: a link to no folder" in said
    )
    # another checkpoint's export replaced: said (a folder kept for the newest is a use)
    again = tmp_path / "again"
    assert main(["export", str(ckpt), "--out", str(again)]) == 0
    assert main(["export", str(ckpt), "--out", str(again)]) == 0
    assert "replaced the export" not in capsys.readouterr().err
    assert main(["export", str(older), "--out", str(again)]) == 0
    assert "replaced the export of another checkpoint (step 2) with step 1's" in (
        capsys.readouterr().err
    )
    # an export that fails while writing leaves the earlier export whole, of its step
    real_save = export_module.save_file

    def full_disk(tensors: Any, filename: str, metadata: Any = None) -> None:
        if filename.endswith("optimizer.safetensors"):
            raise OSError(28, "No space left on device")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(export_module, "save_file", full_disk)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["export", str(older), "--out", str(out), "--optimizer"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
    monkeypatch.undo()
    # an existing --out on another filesystem (here a link into /dev/shm, a tmpfs): the
    # files are staged inside it, where renames reach; staged beside it, they could not move
    if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            (tmp_path / "linked").symlink_to(elsewhere)
            assert main(["export", str(ckpt), "--out", str(tmp_path / "linked")]) == 0
            assert (elsewhere / "model.safetensors").is_file()
            assert sorted(p.name for p in elsewhere.iterdir()) == [
                "export.json", "meta.json", "model.safetensors"
            ]  # fmt: skip
        finally:
            shutil.rmtree(elsewhere)
    # A checkpoint missing a shard file: a clear error naming it, nothing half-written used.
    next(ckpt.glob("*.distcp")).unlink()
    assert main(["export", str(ckpt), "--out", str(tmp_path / "again")]) == 1
    assert f"{ckpt}: cannot read checkpoint shards" in capsys.readouterr().err
    # a cut .metadata: named in a line (DCP logged two tracebacks first)
    cut = ckpt / ".metadata"
    cut.write_bytes(cut.read_bytes()[:100])
    assert main(["export", str(ckpt), "--out", str(tmp_path / "again")]) == 1
    said = capsys.readouterr()
    assert f"error: checkpoint: {cut}: " in said.err and "the file is corrupt" in said.err
    assert "Traceback" not in said.err + said.out
    cut.unlink()  # and none at all
    assert main(["export", str(ckpt), "--out", str(tmp_path / "again")]) == 1
    said = capsys.readouterr()
    assert f"error: checkpoint: {ckpt}: cannot read checkpoint shards" in said.err
    assert "Traceback" not in said.err + said.out


def test_missing_shard_file_fails_resume_naming_the_checkpoint(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    over = [f"output_dir={tmp_path}", "launcher=processes", "train.max_steps=2"]
    run_job(load_config(TINY, over))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    next(ckpt.glob("*.distcp")).unlink()  # a truncated copy of the checkpoint
    args = ["train", "--config", str(TINY), "--resume", str(ckpt)]
    for item in [*over[:-1], "train.max_steps=4"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{ckpt}: cannot load checkpoint shards" in err and "No such file" in err


def test_a_checkpoint_of_another_model_is_refused_naming_the_tensor(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Tables of other rows (a config edited, or hashing_trick tables of a dist_train that
    rounded their rows down): every rank refuses before loading, naming both shapes."""
    over = [f"output_dir={tmp_path}", "launcher=processes", "embedding.kind=hashing_trick"]
    run_job(load_config(TINY, [*over, "train.max_steps=2"]))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    args = ["train", "--config", str(TINY), "--resume", str(ckpt)]
    for item in [*over, "train.max_steps=4", "embedding.num_rows=4160"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    table = "sparse_arch.embedding_bags.hashing_trick_C1.weight"
    saved = f"{ckpt}: {table} was saved as 683 x 8, but this job's model holds 694 x 8"
    # refused by the driver, before any rank starts (each rank refused it, after Ray had
    # started: "RankError: rank 1 failed: CheckpointError: ...")
    assert f"error: checkpoint: {saved}" in err
    assert "Traceback" not in err
    # no hint to resume the checkpoint that was just refused
    assert "the newest committed checkpoint" not in err


def test_a_checkpoint_of_another_model_kind_is_refused_naming_the_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys the checkpoint lacks (another model.kind, or a DLRM without dense columns saved
    before its dense vector was learned): every rank failed mid-load with DCP's "Missing
    key in checkpoint state_dict"; the driver now refuses it, naming the keys."""
    over = [f"output_dir={tmp_path}", "launcher=processes"]
    run_job(load_config(TINY, [*over, "model.kind=dcn_v2", "train.max_steps=2"]))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    args = ["train", "--config", str(TINY), "--resume", str(ckpt)]
    for item in [*over, "train.max_steps=4"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: checkpoint: {ckpt}: this job's model holds dense_arch.0.weight, " in err
    assert "which the checkpoint does not (it holds cross." in err and "Traceback" not in err
    assert "it was saved with model.kind='dcn_v2', now 'dlrm'" in err


@pytest.mark.parametrize(
    ("kind", "fewer", "dropped"),
    [
        ("dcn_v2", "model.cross_layers=2", "cross.2."),
        ("autoint", "model.attention_layers=1", "attention.1."),
    ],
)
def test_a_checkpoint_of_more_layers_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, fewer: str, dropped: str
) -> None:
    """A model of fewer layers, every shape it holds the same: the load dropped the
    checkpoint's last trained layers with no word, and the next save had none."""
    over = [f"output_dir={tmp_path}", "launcher=processes", f"model.kind={kind}"]
    run_job(load_config(TINY, [*over, "train.max_steps=2"]))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    for command in (["train", "--resume", str(ckpt)], ["evaluate", str(ckpt)]):
        args = [*command, "--config", str(TINY)]
        for item in [*over, "train.max_steps=4", fewer]:
            args += ["--set", item]
        assert main(args) == 1, command
        err = capsys.readouterr().err
        assert f"{ckpt}: the checkpoint holds {dropped}" in err, err
        setting, now = fewer.split("=")
        assert f"it was saved with {setting}={int(now) + 1}, now {now}" in err, err
        assert "Traceback" not in err
    assert committed(tmp_path / "tiny" / "checkpoints")[-1] == ckpt  # nothing saved over it


def _momenta(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in t.items() if k.endswith("momentum1")}


def test_resharding_matrix_row_column_grid_2_4_1_ranks(tmp_path: Path) -> None:
    """row_wise on 2 ranks -> column_wise on 4 -> grid_shard on 4 (2 nodes) ->
    table_row_wise on 4 (2 nodes) -> table_wise on 1 -> row_wise on 2, each loading the
    previous one's epoch-boundary checkpoint (training no further): same model outputs, and
    weights and optimizer state carried over exactly."""
    base = [*BASE, f"output_dir={tmp_path}", "train.epochs=1"]
    root = tmp_path / "tiny" / "checkpoints"
    first = run_job(load_config(TINY, [*base, "sharding.type=row_wise"]))
    saved = committed(root)[-1]
    before = _tensors(saved, tmp_path)
    hops = [
        ("column_wise", 4, 1),
        ("grid_shard", 4, 2),
        ("table_row_wise", 4, 2),
        ("table_wise", 1, 1),
        ("row_wise", 2, 1),
    ]
    for hop, (kind, world, nodes) in enumerate(hops):
        summary = run_job(
            load_config(
                TINY,
                [
                    *base,
                    f"sharding.type={kind}",
                    f"ray.num_workers={world}",
                    f"ray.num_nodes={nodes}",
                    "train.max_steps=16",
                    f"checkpoint.resume={saved}",
                    f"checkpoint.dir={tmp_path / f'hop{hop}'}",
                ],
            )
        )
        assert summary["world_size"] == world and summary["steps"] == 16
        assert {p["type"] for p in summary["sharding"].values()} == {kind}
        assert summary["test_log_loss"] == pytest.approx(first["test_log_loss"], rel=1e-6)
        assert summary["test_auc"] == pytest.approx(first["test_auc"], abs=1e-6)
        saved = committed(tmp_path / f"hop{hop}")[-1]
        after = _tensors(saved, tmp_path)
        assert after.keys() == before.keys()
        for key, value in before.items():
            if kind in ("column_wise", "grid_shard") and key.endswith("momentum1"):
                # one accumulator per row per column block
                assert torch.equal(after[key], value.repeat(2)), key
            else:
                assert torch.equal(after[key], value), key


def test_column_wise_row_states_average_into_row_wise(tmp_path: Path) -> None:
    """Trained column-wise, each column block has its own row-wise Adagrad accumulator; a
    row_wise plan gets their width-weighted mean, the accumulator of the whole row."""
    base = [*BASE, f"output_dir={tmp_path}", "train.epochs=1"]
    run_job(load_config(TINY, [*base, "sharding.type=column_wise"]))
    saved = committed(tmp_path / "tiny" / "checkpoints")[-1]
    blocks = _momenta(_tensors(saved, tmp_path))
    run_job(
        load_config(
            TINY,
            [
                *base,
                "sharding.type=row_wise",
                "train.max_steps=16",
                f"checkpoint.resume={saved}",
                f"checkpoint.dir={tmp_path / 'rw'}",
            ],
        )
    )
    rows = _momenta(_tensors(committed(tmp_path / "rw")[-1], tmp_path))
    assert rows.keys() == blocks.keys()
    for key, value in blocks.items():
        halves = value.view(2, -1)
        assert not torch.equal(halves[0], halves[1])  # the blocks did differ
        assert torch.equal(rows[key], halves.double().mean(0).float()), key


def test_resharding_with_unevenly_placed_blocks(tmp_path: Path) -> None:
    """3 tables x 2 column blocks on 4 ranks: ranks convert different numbers of optimizer
    states (2, 2, 1, 1), which must not desynchronize the ranks' collectives."""
    base = [*BASE, f"output_dir={tmp_path}", "train.epochs=1", "embedding.num_tables=3"]
    first = run_job(load_config(TINY, [*base, "sharding.type=row_wise"]))
    summary = run_job(
        load_config(
            TINY,
            [
                *base,
                "sharding.type=column_wise",
                "ray.num_workers=4",
                "train.max_steps=16",
                "checkpoint.resume=latest",
            ],
        )
    )
    assert summary["world_size"] == 4 and len(summary["sharding"]) == 3
    assert summary["test_log_loss"] == pytest.approx(first["test_log_loss"], rel=1e-6)


def test_commit_rule_and_cleanup_at_a_url() -> None:
    """At an fsspec URL (here memory://) a checkpoint counts once its meta.json exists; a
    step directory without it, or a partial one, is removed at the next start."""
    from dist_train.storage import location, rmtree

    root = location("memory://dist-train-test/checkpoints")
    rmtree(root)
    for name, meta in (
        ("step-00000004", True),
        ("step-00000008", False),
        (".partial-step-9", False),
    ):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__0_0.distcp").write_text("shard")
        if meta:
            (root / name / "meta.json").write_text("{}")
    assert [p.name for p in committed(root)] == ["step-00000004"]
    removed = sorted(p.name for p in remove_partials(root))
    assert removed == [".partial-step-9", "step-00000008"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]


def test_checkpoints_at_an_fsspec_url_resume_and_export(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """checkpoint.dir as a URL (file://, through fsspec and DCP's fsspec backend): saves,
    commits, resumes and exports like a local path."""
    url = f"file://{tmp_path}/remote-checkpoints"
    over = [*BASE, f"output_dir={tmp_path}", f"checkpoint.dir={url}", "checkpoint.every_steps=2"]
    run_job(load_config(TINY, [*over, "train.max_steps=5"]))
    root = tmp_path / "remote-checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004", "step-00000005"]
    (root / "step-00000009").mkdir()  # a rename that never got its meta.json: not committed
    summary = run_job(load_config(TINY, [*over, "train.max_steps=7", "checkpoint.resume=latest"]))
    assert summary["steps"] == 7
    assert not (root / "step-00000009").exists()
    out = tmp_path / "exported"
    assert main(["export", f"{url}/step-00000007", "--out", str(out)]) == 0
    tables = load_file(str(out / "model.safetensors"))
    assert tables["sparse_arch.embedding_bags.unified_0.weight"].shape == (2048, 8)


def test_row_wise_adagrad_state_moves_between_replicated_and_sharded_tables(
    tmp_path: Path,
) -> None:
    """row_wise -> data_parallel -> row_wise: the fused accumulator (``momentum1``, [rows])
    becomes RowWiseAdagrad's ``sum`` ([rows, 1]) and back, exactly; the model is unchanged."""
    base = [*BASE, f"output_dir={tmp_path}", "train.epochs=1"]
    first = run_job(load_config(TINY, [*base, "sharding.type=row_wise"]))
    saved = committed(tmp_path / "tiny" / "checkpoints")[-1]
    before = _tensors(saved, tmp_path)
    for hop, kind in enumerate(["data_parallel", "row_wise"]):
        summary = run_job(
            load_config(
                TINY,
                [
                    *base,
                    f"sharding.type={kind}",
                    "train.max_steps=16",
                    f"checkpoint.resume={saved}",
                    f"checkpoint.dir={tmp_path / f'hop{hop}'}",
                ],
            )
        )
        assert {p["type"] for p in summary["sharding"].values()} == {kind}
        assert summary["test_log_loss"] == pytest.approx(first["test_log_loss"], rel=1e-6)
        saved = committed(tmp_path / f"hop{hop}")[-1]
        after = _tensors(saved, tmp_path)
        for key, value in before.items():
            if key.startswith("model."):
                assert torch.equal(after[key], value), key
        if kind == "data_parallel":
            sums = {k: v for k, v in after.items() if k.endswith(".sum") and "embedding" in k}
            assert len(sums) == 2
            # only RowWiseAdagrad's own state: a stale fused `momentum1` beside it (c3e5625)
            # was later taken over its `sum` when the table went back to row_wise
            assert not [k for k in after if k.startswith("optim.") and k.endswith("momentum1")]
            for key, value in _momenta(before).items():
                param = key.rsplit(".", 2)[0]
                assert torch.equal(sums[f"{param}.sum"][:, 0], value), key
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_a_run_resumed_at_its_end_does_not_save_again(tmp_path: Path) -> None:
    """Resumed at its last step, a run trains nothing; its final save wrote the same state
    again (all of it: gigabytes for a large table). The checkpoint it resumed from is its
    newest, unwritten; resumed from another run's, it still saves into its own folder."""
    over = [*BASE, f"output_dir={tmp_path}", "train.epochs=1"]
    run_job(load_config(TINY, over))
    (ckpt,) = committed(tmp_path / "tiny" / "checkpoints")
    before = {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()}
    again = run_job(load_config(TINY, [*over, "checkpoint.resume=latest"]))
    assert again["steps"] == 16 and again["checkpoint"] == str(ckpt)
    assert {f.name: f.stat().st_mtime_ns for f in ckpt.iterdir()} == before
    other = run_job(
        load_config(TINY, [*over, f"output_dir={tmp_path / 'b'}", f"checkpoint.resume={ckpt}"])
    )
    (copied,) = committed(tmp_path / "b" / "tiny" / "checkpoints")
    assert other["checkpoint"] == str(copied) and copied.name == ckpt.name


def test_an_older_mid_epoch_checkpoint_evaluates_on_any_world_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saved mid-epoch without an epoch plan (a dist_train before plans were saved), it
    resumes only at its world size; evaluating it resumes nothing, and was refused the same
    way, with a hint to resume it."""
    over = [f"output_dir={tmp_path}", "launcher=processes", "train.max_steps=3"]
    run_job(load_config(TINY, over))
    ckpt = committed(tmp_path / "tiny" / "checkpoints")[-1]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["position"]["batches"] and meta["world_size"] == 2  # mid-epoch, 2 ranks
    meta.pop(META_DIGEST)
    meta["position"]["plan"] = None
    meta[META_DIGEST] = meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    args = ["evaluate", str(ckpt), "--config", str(TINY), "--out", str(tmp_path / "ev")]
    for item in [*over, "ray.num_workers=1"]:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["world_size"] == 1
    # resuming it on 1 rank is still refused: its batches' deal is unknown
    resume = ["train", "--resume", str(ckpt), "--config", str(TINY)]
    for item in [*over, "ray.num_workers=1", "train.max_steps=6"]:
        resume += ["--set", item]
    assert main(resume) == 1
    assert "saved mid-epoch by 2 ranks without an epoch plan" in capsys.readouterr().err

"""``train.pipeline``: TorchRec's ``TrainPipelineSparseDist`` in the training loop trains
the same steps as one batch at a time, and checkpoints only what it trained."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_train.checkpoint.folders import committed
from dist_train.config.load import load_config
from dist_train.data.synthetic import generate
from dist_train.driver import run_job
from dist_train.launchers.processes import run_processes
from dist_train.train.ledger import ledger_path, read
from tests.integration.test_checkpoint import BASE, TINY, _tensors
from tests.workers import pipelined_and_plain_losses


def test_pipeline_trains_the_same_steps_for_every_model(tmp_path: Path) -> None:
    """Each model kind on the unified table's own plan at 2 ranks (row_wise_unpooled: its
    input dist runs a batch ahead of its output dist)."""
    cfg = load_config(TINY, [f"output_dir={tmp_path}", "sharding.type=row_wise_unpooled"])
    data = str(generate(cfg.data.synthetic, tmp_path / "data", progress=False).train_dir)
    kinds = ["dlrm", "dcn_v2", "autoint"]
    out = run_processes(
        pipelined_and_plain_losses, (cfg.model_dump(mode="json"), data, kinds, 5), world_size=2
    )
    for rank in out:
        for kind in kinds:
            runs = rank[kind]
            assert runs["pipeline"] == runs["plain"], kind  # bit for bit
            assert runs["pipeline_eval"] == runs["plain_eval"], kind
            first, second = runs["eval_after_early_close"]
            assert first == second, kind  # no routing of an untrained batch was left queued


def test_pipelined_run_resumes_exactly_once(tmp_path: Path) -> None:
    """A pipelined run stopped mid-epoch, then resumed from its checkpoint, ends bitwise
    where an uninterrupted unpipelined run does, with the same rows at every step: its
    checkpoints hold the batches it trained, not the two it had read ahead."""
    common = [
        *BASE,
        "data.row_id_column=row_id",
        "sharding.type=row_wise_unpooled",
        "sharding.group_size=2",
    ]
    clean = run_job(
        load_config(TINY, [*common, "train.pipeline=false", f"output_dir={tmp_path / 'a'}"])
    )
    part = [*common, "train.pipeline=true", f"output_dir={tmp_path / 'b'}"]
    stop = ["checkpoint.every_steps=4", "checkpoint.save_at_end=false", "train.max_steps=10"]
    first = run_job(load_config(TINY, [*part, *stop]))
    assert first["steps"] == 10
    rest = run_job(load_config(TINY, [*part, "checkpoint.resume=latest"]))
    assert rest["steps"] == clean["steps"] == 32
    assert (rest["test_auc"], rest["test_log_loss"]) == (clean["test_auc"], clean["test_log_loss"])
    for rank in (0, 1):
        attempts, steps = read(ledger_path(tmp_path / "b" / "tiny", rank))
        _, clean_steps = read(ledger_path(tmp_path / "a" / "tiny", rank))
        assert [a.resume_step for a in attempts] == [0, 8]  # the step-8 save, not step 10
        assert sorted(steps) == list(range(1, 33))
        for k, entry in steps.items():
            assert (entry.epoch, entry.ids) == (clean_steps[k].epoch, clean_steps[k].ids), k
    a = committed(tmp_path / "a" / "tiny" / "checkpoints")[-1]
    b = committed(tmp_path / "b" / "tiny" / "checkpoints")[-1]
    ta, tb = _tensors(a, tmp_path), _tensors(b, tmp_path)
    assert ta.keys() == tb.keys() and any("momentum" in k for k in ta)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key

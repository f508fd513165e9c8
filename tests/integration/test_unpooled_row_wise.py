"""Unpooled row-wise lookups (``row_wise_unpooled``, dist_train/train/unpooled_row_wise.py)
train exactly like TorchRec's pooled row_wise on the same shards, in 1D, on an uneven split
and in 2D groups, and their checkpoints are row_wise checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dist_train.checkpoint.folders import committed
from dist_train.config.load import load_config
from dist_train.data.synthetic import generate
from dist_train.driver import run_job
from dist_train.launchers.processes import run_processes
from tests.conftest import small_config
from tests.integration.test_checkpoint import _tensors
from tests.workers import assemble_tables, train_fixed_batches, unpooled_refusals

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "launch" / "configs" / "tiny.yaml"
NUM_STEPS, GLOBAL_BATCH = 16, 256
# The same updates, summed in another order (per id on the holder instead of per bag):
# measured at most 3.1e-6 on tables and 1.2e-7 on losses after 24 steps of row-wise Adagrad.
TABLE_ATOL, LOSS_ATOL = 1e-5, 1e-6


def _assert_same(pooled: list[dict[str, Any]], unpooled: list[dict[str, Any]]) -> None:
    a, b = np.array(pooled[0]["losses"]), np.array(unpooled[0]["losses"])
    assert len(a) == NUM_STEPS and a[-4:].mean() < a[:4].mean()  # it learned
    np.testing.assert_allclose(b, a, rtol=0, atol=LOSS_ATOL)
    ta, tb = assemble_tables(pooled), assemble_tables(unpooled)
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        np.testing.assert_allclose(tb[key], ta[key], rtol=0, atol=TABLE_ATOL)


def _run(cfg_raw: dict[str, Any], data: str, world: int, **extra: Any) -> list[dict[str, Any]]:
    args = (
        cfg_raw,
        data,
        NUM_STEPS,
        GLOBAL_BATCH,
        extra.get("per_node"),
        extra.get("row_sizes"),
        "cpu",
        extra.get("unpooled", False),
    )
    return run_processes(train_fixed_batches, args, world_size=world)


@pytest.mark.parametrize(
    ("optimizer", "overrides", "world", "row_sizes"),
    [
        # a table per feature: rows 10 to 5,000 (distinct splits), dims 8 and 16 (two groups)
        (
            "rowwise_adagrad",
            ["embedding.kind=collisionless", "data.synthetic.string_columns=[]"],
            2,
            None,
        ),
        ("sgd", ["embedding.pooling=mean"], 2, None),  # TorchRec divides after the dist
        ("rowwise_adagrad", [], 2, [1000, 3000]),  # uneven: the even split is 2000 + 2000
        ("rowwise_adagrad", ["sharding.group_size=2"], 4, None),  # 2D: 2 groups of 2
    ],
    ids=["collisionless", "sgd_mean_pooling", "uneven", "groups_of_2"],
)
def test_unpooled_trains_like_pooled_row_wise(
    tmp_path: Path,
    optimizer: str,
    overrides: list[str],
    world: int,
    row_sizes: list[int] | None,
) -> None:
    cfg = small_config(
        tmp_path,
        [
            "sharding.type=row_wise",
            f"embedding.optimizer.type={optimizer}",
            "embedding.optimizer.learning_rate=0.05",
            *overrides,
        ],
    )
    data = str(generate(cfg.data.synthetic, tmp_path / "data", progress=False).train_dir)
    raw = cfg.model_dump(mode="json")
    pooled = _run(raw, data, world, row_sizes=row_sizes)
    unpooled = _run(raw, data, world, row_sizes=row_sizes, unpooled=True)
    assert {p["type"] for p in pooled[0]["placements"].values()} == {"row_wise"}
    assert {p["type"] for p in unpooled[0]["placements"].values()} == {"row_wise_unpooled"}
    _assert_same(pooled, unpooled)


def test_planned_unpooled_job_checkpoint_loads_as_row_wise(tmp_path: Path) -> None:
    """A job planned as row_wise_unpooled by the driver trains, and its checkpoint resumes
    under pooled row_wise with the same weights, optimizer state and test metrics."""
    base = [
        "launcher=processes",
        "ray.num_workers=2",
        "embedding.optimizer.type=rowwise_adagrad",
        "checkpoint.every_steps=4",
    ]
    unpooled = run_job(
        load_config(
            TINY, [*base, "sharding.type=row_wise_unpooled", f"output_dir={tmp_path / 'a'}"]
        )
    )
    assert unpooled["sharding"]["unified_0"]["type"] == "row_wise_unpooled"
    saved = committed(tmp_path / "a" / "tiny" / "checkpoints")[-1]
    pooled = run_job(
        load_config(
            TINY,
            [
                *base,
                "sharding.type=row_wise",
                f"output_dir={tmp_path / 'b'}",
                f"train.max_steps={unpooled['steps']}",
                f"checkpoint.resume={saved}",
            ],
        )
    )
    assert pooled["sharding"]["unified_0"]["type"] == "row_wise"
    assert pooled["test_log_loss"] == pytest.approx(unpooled["test_log_loss"], rel=1e-6)
    before = _tensors(saved, tmp_path)
    after = _tensors(committed(tmp_path / "b" / "tiny" / "checkpoints")[-1], tmp_path)
    assert after.keys() == before.keys() and any(k.endswith("momentum1") for k in before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_bad_ids_variable_batches_and_abandoned_input_dists_are_refused(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, ["sharding.type=row_wise_unpooled"])
    data = str(generate(cfg.data.synthetic, tmp_path / "data", progress=False).train_dir)
    errors = run_processes(unpooled_refusals, (cfg.model_dump(mode="json"), data), world_size=2)
    assert errors[0] == errors[1]
    assert "ids outside their tables' rows in features" in errors[0]["ids"]
    assert "C1" in errors[0]["ids"]  # names the features
    assert "ids outside their tables' rows" in errors[0]["past_the_end"]
    assert "one batch size for every feature" in errors[0]["stride"]
    assert "2 batches passed their input dist" in errors[0]["in_flight"]
    assert errors[0]["empty_batch"] == "(0,)"

"""GPU tier: the CUDA path trains like the CPU path (marked ``gpu``; ``make test-gpu``).

Needs a CUDA build of torch *and* of fbgemm-gpu (docker/Dockerfile.cuda). The tolerances are
the CPU suite's bounds widened for a different kernel and summation order; they are not yet
calibrated on a GPU: no GPU run of this file has been recorded by the project.
"""

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
from tests.workers import assemble_tables, pipelined_and_plain_losses, train_fixed_batches

pytestmark = pytest.mark.gpu

TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"

NUM_STEPS = 12
GLOBAL_BATCH = 256
# SGD: fused TBE and dense-kernel updates follow the same rule, so every type has one reference
OVERRIDES = ["embedding.optimizer.type=sgd", "embedding.optimizer.learning_rate=0.05"]
# CUDA TBE sums a row's gradients in another order than the CPU kernel (float32)
CPU_GPU_ATOL = 1e-4
GPU_GPU_ATOL = 1e-5  # the CPU suite's bound between world sizes


def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("cuda")
    cfg = small_config(tmp, [*OVERRIDES, "sharding.type=row_wise"])
    data = generate(cfg.data.synthetic, tmp / "data", progress=False)
    args = (cfg.model_dump(mode="json"), str(data.train_dir), NUM_STEPS, GLOBAL_BATCH, None, None)
    return {
        "tmp": tmp,
        "data": str(data.train_dir),
        "cpu": run_processes(train_fixed_batches, args, 1),
        "gpu": run_processes(train_fixed_batches, (*args, "cuda"), 1, device_type="cuda"),
    }


def _assert_same(reference: list[dict[str, Any]], run: list[dict[str, Any]], atol: float) -> None:
    ref_losses, losses = np.array(reference[0]["losses"]), np.array(run[0]["losses"])
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=atol)
    assert ref_losses[-3:].mean() < ref_losses[:3].mean()  # it learned
    ref_tables, tables = assemble_tables(reference), assemble_tables(run)
    assert ref_tables.keys() == tables.keys()
    for key in ref_tables:
        np.testing.assert_allclose(tables[key], ref_tables[key], rtol=0, atol=atol)


def test_one_gpu_matches_the_cpu(setup: dict[str, Any]) -> None:
    _assert_same(setup["cpu"], setup["gpu"], CPU_GPU_ATOL)


@pytest.mark.parametrize(
    ("overrides", "per_node"),
    [
        (["sharding.type=row_wise"], 2),
        (["sharding.type=column_wise"], 2),
        (["sharding.type=table_wise"], 2),
        (["sharding.type=data_parallel"], 2),
        (["sharding.type=table_row_wise"], 1),  # hierarchical: 2 simulated nodes of 1 GPU
        (["sharding.type=grid_shard"], 1),
        (["sharding.type=row_wise", "sharding.group_size=1"], 2),  # 2D: 2 replicas of 1 rank
    ],
    ids=lambda v: "+".join(v) if isinstance(v, list) else f"{v}-per-node",
)
def test_two_gpus_match_one_under_nccl(
    setup: dict[str, Any], overrides: list[str], per_node: int
) -> None:
    _two_gpus()
    cfg = small_config(setup["tmp"], [*OVERRIDES, *overrides])
    args = (cfg.model_dump(mode="json"), setup["data"], NUM_STEPS, GLOBAL_BATCH, per_node)
    run = run_processes(train_fixed_batches, (*args, None, "cuda"), 2, device_type="cuda")
    kind = overrides[0].split("=")[1]
    assert {p["type"] for p in run[0]["placements"].values()} == {kind}
    _assert_same(setup["gpu"], run, GPU_GPU_ATOL)


def test_checkpoint_moves_between_gpu_and_cpu(tmp_path: Path) -> None:
    """Saved on a GPU (chosen by train.device=auto), resumed on the CPU, then on the GPU
    again: each resume continues from the saved step, and the run ends where a CPU-only run
    does (within float noise)."""
    base = [
        f"output_dir={tmp_path / 'moved'}",
        "launcher=processes",
        "ray.num_workers=1",
        "checkpoint.every_steps=4",
    ]
    gpu = run_job(load_config(TINY, [*base, "train.device=auto", "train.max_steps=4"]))
    assert gpu["device"] == "cuda" and gpu["steps"] == 4
    resume = "checkpoint.resume=latest"
    cpu = run_job(load_config(TINY, [*base, "train.device=cpu", "train.max_steps=8", resume]))
    assert cpu["device"] == "cpu" and cpu["steps"] == 8
    back = run_job(load_config(TINY, [*base, "train.device=cuda", "train.max_steps=12", resume]))
    assert back["device"] == "cuda" and back["steps"] == 12
    assert committed(tmp_path / "moved" / "tiny" / "checkpoints")[-1].name == "step-00000012"

    only_cpu = [
        f"output_dir={tmp_path / 'cpu'}",
        "launcher=processes",
        "ray.num_workers=1",
        "train.device=cpu",
        "train.max_steps=12",
    ]
    reference = run_job(load_config(TINY, only_cpu))
    assert abs(back["test_auc"] - reference["test_auc"]) < 2e-3
    assert abs(back["test_log_loss"] - reference["test_log_loss"]) < 2e-3


@pytest.mark.parametrize("ranks", [1, 2])
def test_train_pipeline_trains_the_same_steps_on_gpus(setup: dict[str, Any], ranks: int) -> None:
    """``train.pipeline`` (on by default on GPUs: side-stream copies, the next batch's input
    dist early) against one batch at a time, on the unified table's unpooled plan."""
    if ranks == 2:
        _two_gpus()
    cfg = small_config(setup["tmp"], [*OVERRIDES, "sharding.type=row_wise_unpooled"])
    args = (cfg.model_dump(mode="json"), setup["data"], ["dlrm"], 6, "cuda")
    out = run_processes(pipelined_and_plain_losses, args, ranks, device_type="cuda")
    for rank in out:
        runs = rank["dlrm"]
        np.testing.assert_allclose(runs["pipeline"], runs["plain"], rtol=0, atol=GPU_GPU_ATOL)

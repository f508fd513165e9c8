"""Embedding weight decay: FBGEMM gets the L2 mode it needs (it applies none without one),
CPU jobs refuse it (the CPU kernel ignores it), and 2D refuses it."""

from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

from dist_train.config.load import load_config
from dist_train.train.sharding import plan_job, planner_for_config
from planners.sharders import fused_params
from planners.types import PlanningError


def test_fused_params_set_the_l2_mode_only_with_weight_decay() -> None:
    assert "weight_decay_mode" not in fused_params("rowwise_adagrad", 0.01, 1e-8, 0.0)
    params = fused_params("rowwise_adagrad", 0.01, 1e-8, 1e-3)
    assert params["weight_decay_mode"] == WeightDecayMode.L2


def _tbe_after_steps(weight_decay: float, mode: WeightDecayMode) -> torch.Tensor:
    """A CPU TBE's rows after 3 fused row-wise Adagrad steps on fixed ids and gradients."""
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(16, 8, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.05,
        weight_decay=weight_decay,
        weight_decay_mode=mode,
    )
    tbe.split_embedding_weights()[0].copy_(
        torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    )
    for step in range(3):
        ids = torch.arange(16)
        grad = torch.randn(16, 8, generator=torch.Generator().manual_seed(step + 1))
        tbe(ids, torch.arange(17)).backward(grad)
    return tbe.split_embedding_weights()[0].clone()


def test_cpu_kernel_ignores_weight_decay_so_cpu_jobs_refuse_it() -> None:
    """The fact behind the refusal: if a later fbgemm-gpu-cpu applies weight decay, this
    fails, and the refusal in ``job_fused_params`` can go."""
    plain = _tbe_after_steps(0.0, WeightDecayMode.NONE)
    start = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert (plain - start).abs().min() > 0  # the steps updated every row: not vacuous
    for mode in (WeightDecayMode.L2, WeightDecayMode.DECOUPLE):
        torch.testing.assert_close(_tbe_after_steps(0.1, mode), plain, rtol=0, atol=0)
    cfg = load_config(overrides=["embedding.optimizer.weight_decay=0.001"])
    with pytest.raises(PlanningError, match=r"CPU kernel ignores weight decay"):
        plan_job(cfg, 2, 2)


def test_2d_refuses_weight_decay_and_auto_stays_1d() -> None:
    wd = "embedding.optimizer.weight_decay=0.001"
    cfg = load_config(overrides=[wd, "sharding.group_size=1"])
    with pytest.raises(PlanningError, match=r"does not support embedding\.optimizer\.weight_decay"):
        planner_for_config(cfg, 2, 2, "cuda")
    planner, _ = planner_for_config(load_config(overrides=[wd]), 64, 8, "cuda")
    assert planner.choice().group_size == 64  # auto: 1D


def test_2d_refuses_optimizers_it_cannot_merge_and_auto_stays_1d() -> None:
    """adam on CUDA runs on the fused kernel, so the planner offered it 2D (a review's
    512-rank job chose groups of 8), and every rank then failed building the replicas."""
    adam = ["embedding.optimizer.type=adam", "sharding.memory_per_rank=80GiB"]
    cfg = load_config(overrides=[*adam, "sharding.group_size=8"])
    with pytest.raises(PlanningError, match=r"does not support embedding\.optimizer\.type=adam"):
        planner_for_config(cfg, 512, 8, "cuda")
    cfg = load_config(overrides=[*adam, "sharding.type=row_wise"])
    assert not plan_job(cfg, 512, 8, "cuda").is_2d  # auto: 1D

"""GPU tier (marked ``gpu``: skipped without CUDA; ``make test-gpu`` runs it).

The dense side of the model on a CUDA device against the same weights on the CPU. The sparse
side needs FBGEMM's CUDA kernels, which this project's CPU machines do not have."""

from __future__ import annotations

import pytest
import torch

from dist_train.models.base import mlp
from dist_train.models.dlrm import DotInteraction

pytestmark = pytest.mark.gpu


def test_bottom_mlp_and_dot_interaction_match_the_cpu() -> None:
    torch.manual_seed(0)
    bottom = mlp([13, 64, 16], final_activation=True)
    interaction = DotInteraction()
    dense = torch.randn(512, 13)
    vectors = torch.randn(512, 26, 16)
    cpu = interaction(bottom(dense), vectors)
    cuda = interaction.to("cuda")(bottom.to("cuda")(dense.cuda()), vectors.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)

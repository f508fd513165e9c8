"""DLRM (Naumov et al., 2019): dense tower, pairwise dot interaction, top MLP.

dense [B, n] -> bottom MLP -> d-vector (without dense columns, a learned d-vector); ``dot``:
pairwise dot products of all chunk vectors and the dense vector, ``concat``: everything
flattened; then the top MLP -> one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config.schema import ModelConfig
from dist_train.embedding.layout import EmbeddingLayout
from dist_train.models.base import CTRModel, mlp
from dist_train.models.dot_interaction import dot_interaction

# a leaf of torch.fx traces of the model (see dot_interaction)
torch.fx.wrap("dot_interaction")


class DotInteraction(nn.Module):
    """The dense vector, then the pairwise dot products of it and every chunk vector."""

    def forward(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        return dot_interaction(dense, vectors)


class LearnedVector(nn.Module):
    """The dense vector of a job without dense columns: a learned d-vector, the same for
    every example. A bottom MLP of no inputs outputs its first bias (zeros at start),
    whose ReLU passes back no gradient: it never trained."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.vector.expand(dense.shape[0], -1)


class DLRM(CTRModel):
    """Bottom MLP + embeddings + interaction + top MLP -> logits ``[B]``."""

    def __init__(
        self,
        layout: EmbeddingLayout,
        num_dense: int,
        config: ModelConfig,
        embedding_device: torch.device | str = "meta",
    ) -> None:
        super().__init__(layout, embedding_device)
        d, n = layout.dim, layout.num_vectors
        self.dense_arch: nn.Module = (
            mlp([num_dense, *config.bottom_mlp, d], final_activation=True)
            if num_dense
            else LearnedVector(d)  # model.bottom_mlp unused
        )
        if config.interaction == "dot":
            self.interaction: DotInteraction | None = DotInteraction()
            top_in = d + n * (n + 1) // 2
        else:
            self.interaction = None
            top_in = d * (n + 1)
        self.over_arch = mlp([top_in, *config.top_mlp, 1], final_activation=False)

    @property
    def interaction_elements_per_sample(self) -> int:
        vectors = self.num_vectors + 1  # every chunk and the dense vector
        return vectors * vectors * self.dim if self.interaction is not None else 0

    @property
    def interaction_least_elements_per_sample(self) -> int:
        """Only the distinct pairs' products: the output holds n (n - 1) / 2 of them."""
        vectors = self.num_vectors + 1
        return vectors * (vectors - 1) // 2 * self.dim if self.interaction is not None else 0

    def network(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        dense_vec = self.dense_arch(dense)
        if self.interaction is not None:
            features = self.interaction(dense_vec, vectors)
        else:
            features = torch.cat([dense_vec, vectors.flatten(1)], dim=1)
        return self.over_arch(features).squeeze(1)

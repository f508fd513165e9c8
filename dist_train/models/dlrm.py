"""A DLRM-style CTR model over the embedding layout's chunk vectors.

dense [B, n] -> bottom MLP -> d-vector; sparse KJT -> EmbeddingBagCollection -> one d-vector
per (feature, chunk) (a feature's embedding is the concatenation of its chunk vectors);
``dot``: pairwise dot products of all d-vectors plus the dense vector, ``concat``: everything
flattened; then the top MLP -> one logit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from dist_train.config import ModelConfig
from dist_train.embedding.layout import EmbeddingLayout


def mlp(sizes: list[int], final_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]`` with ReLU between (and after, if asked)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DotInteraction(nn.Module):
    """Upper-triangle pairwise dot products of ``[B, n, d]`` vectors, plus the dense vector."""

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([dense.unsqueeze(1), vectors], dim=1)
        gram = torch.bmm(stacked, stacked.transpose(1, 2))
        return torch.cat([dense, gram[:, self.rows, self.cols]], dim=1)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class DLRM(nn.Module):
    """Bottom MLP + embeddings + interaction + top MLP -> logits ``[B]``."""

    def __init__(
        self,
        layout: EmbeddingLayout,
        num_dense: int,
        config: ModelConfig,
        embedding_device: torch.device | str = "meta",
    ) -> None:
        super().__init__()
        d = layout.dim
        self.layout_keys = layout.key_names
        self.dim = d
        self.sparse_arch = EmbeddingBagCollection(
            tables=layout.embedding_bag_configs(), device=torch.device(embedding_device)
        )
        self.dense_arch = mlp([num_dense, *config.bottom_mlp, d], final_activation=True)
        self.interaction_type = config.interaction
        num_vectors = layout.num_vectors
        if config.interaction == "dot":
            self.interaction: nn.Module | None = DotInteraction(num_vectors + 1)
            top_in = d + num_vectors * (num_vectors + 1) // 2
        else:
            self.interaction = None
            top_in = d * (num_vectors + 1)
        self.over_arch = mlp([top_in, *config.top_mlp, 1], final_activation=False)
        # 2D: TorchRec divides embedding gradients by the sharding group's size; 1 / replicas
        # makes that the world size, as in 1D (dist_train.train.replicas)
        self.embedding_grad_scale = 1.0

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        dense_vec = self.dense_arch(dense)
        pooled = self.sparse_arch(sparse).to_dict()
        # Tables group keys by table; put them back in feature/chunk order.
        emb = torch.cat([pooled[k] for k in self.layout_keys], dim=1)
        if self.embedding_grad_scale != 1.0:
            emb = _ScaleGrad.apply(emb, self.embedding_grad_scale)
        if self.interaction is not None:
            vectors = emb.view(emb.shape[0], -1, self.dim)
            features = self.interaction(dense_vec, vectors)
        else:
            features = torch.cat([dense_vec, emb], dim=1)
        return self.over_arch(features).squeeze(1)

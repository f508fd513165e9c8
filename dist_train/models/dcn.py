"""DCN-v2 (Wang et al., 2021), the model of the Unified Embedding paper's experiments.

x0 = [dense features, every chunk vector] flattened; cross layers
``x_{l+1} = x0 * (W x_l + b) + x_l`` (``W = U V^T`` of rank ``cross_rank`` when set, the
paper's low-rank variant); then the deep network (``top_mlp``) on the cross output, stacked,
-> one logit.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_train.config.errors import ConfigError
from dist_train.config.schema import JobConfig, ModelConfig
from dist_train.embedding.layout import EmbeddingLayout, build_layout
from dist_train.models.base import CTRModel, mlp
from dist_train.models.linear import Linear


def cross_width(num_dense: int, layout: EmbeddingLayout) -> int:
    """The cross network's width: the dense features and every chunk vector, flattened."""
    return num_dense + layout.num_vectors * layout.dim


def wide_rank_note(cfg: JobConfig) -> str | None:
    """Why a ``model.cross_rank`` of at least half the cross network's width defeats
    itself; None where it does not (or the model is not DCN-v2). ConfigError where it is the
    width or more: ``U V^T`` holds no more than a full-rank layer, and its first Adagrad
    steps grow with the rank (each of U's and V's entries moves by about the learning rate,
    the product by ``rank`` such terms): far above the width the loss jumps in the first
    steps at the default learning rate."""
    rank = cfg.model.cross_rank
    if cfg.model.kind != "dcn_v2" or rank is None:
        return None
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    width = cross_width(len(cfg.data.resolved_dense_columns()), layout)
    if rank >= width:
        raise ConfigError(
            f"model.cross_rank={rank} is not below the cross network's width ({width}: the "
            f"dense features and {layout.num_vectors} vectors of {layout.dim}): a low-rank "
            f"layer of that rank is no smaller than a full-rank one and its steps are larger "
            f"(training diverges at the default learning rate); leave cross_rank unset for "
            f"full rank, or take one below {(width + 1) // 2}"
        )
    if 2 * rank < width:
        return None
    return (
        f"model.cross_rank={rank} is at least half the cross network's width ({width}): its "
        f"low-rank layers (2 x {width} x {rank} weights each) are no smaller than full-rank "
        f"ones ({width} x {width}) and slower, and their steps grow with the rank; leave "
        f"cross_rank unset for full rank, or take one below {(width + 1) // 2}"
    )


class CrossLayer(nn.Module):
    """One explicit feature-crossing layer: ``x0 * (W x + b) + x``."""

    def __init__(self, width: int, rank: int | None) -> None:
        super().__init__()
        if rank is None:
            self.project: nn.Module = Linear(width, width)
        else:  # U (V^T x) + b: 2 * width * rank weights instead of width^2
            self.project = nn.Sequential(Linear(width, rank, bias=False), Linear(rank, width))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.project(x) + x


class DCNv2(CTRModel):
    """Cross network over the concatenated embeddings and dense features, then a deep network."""

    def __init__(
        self,
        layout: EmbeddingLayout,
        num_dense: int,
        config: ModelConfig,
        embedding_device: torch.device | str = "meta",
    ) -> None:
        super().__init__(layout, embedding_device)
        self.width = cross_width(num_dense, layout)
        self.cross = nn.ModuleList(
            CrossLayer(self.width, config.cross_rank) for _ in range(config.cross_layers)
        )
        self.over_arch = mlp([self.width, *config.top_mlp, 1], final_activation=False)

    @property
    def interaction_elements_per_sample(self) -> int:
        return len(self.cross) * self.width  # the elementwise x0 * (.) + x

    def network(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense, vectors.flatten(1)], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.over_arch(x).squeeze(1)

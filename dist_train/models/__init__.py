"""CTR models over the embedding layout, chosen by ``model.kind``."""

from __future__ import annotations

import torch

from dist_train.config.schema import ModelConfig
from dist_train.embedding.layout import EmbeddingLayout
from dist_train.models.autoint import AutoInt
from dist_train.models.base import CTRModel
from dist_train.models.dcn import DCNv2
from dist_train.models.dlrm import DLRM

MODELS: dict[str, type[DLRM] | type[DCNv2] | type[AutoInt]] = {
    "dlrm": DLRM,
    "dcn_v2": DCNv2,
    "autoint": AutoInt,
}


def create_model(
    layout: EmbeddingLayout,
    num_dense: int,
    config: ModelConfig,
    embedding_device: torch.device | str = "meta",
) -> CTRModel:
    """The ``config.kind`` model (tables on ``embedding_device``; meta allocates nothing)."""
    return MODELS[config.kind](layout, num_dense, config, embedding_device)


__all__ = ["MODELS", "CTRModel", "create_model"]

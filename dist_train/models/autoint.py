"""AutoInt (Song et al., 2019): multi-head self-attention over the feature embeddings.

Tokens: every chunk vector, and one per dense feature (its value times a learned d-vector,
as in the paper). ``attention_layers`` layers of multi-head self-attention, each with a
projected residual and ReLU; the tokens are flattened into ``attention_mlp`` -> one logit
(empty, the default: the paper's linear output layer).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from dist_train.config.schema import ModelConfig
from dist_train.embedding.layout import EmbeddingLayout
from dist_train.models.base import CTRModel, mlp


class SelfAttentionLayer(nn.Module):
    """``ReLU(MultiHeadAttention(x) + W_res x)`` over ``[B, tokens, width_in]``."""

    def __init__(self, width_in: int, width_out: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width_in, 3 * width_out, bias=False)
        self.residual = nn.Linear(width_in, width_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        width = self.residual.out_features  # sized, not -1: which sizes no batch of 0 examples
        per_head = self.qkv(x).view(b, n, 3, self.heads, width // self.heads)
        q, k, v = per_head.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, heads, n, width/heads]
        return F.relu(attended.transpose(1, 2).reshape(b, n, width) + self.residual(x))


class AutoInt(CTRModel):
    """Self-attention over feature tokens, flattened into an MLP -> logits ``[B]``."""

    def __init__(
        self,
        layout: EmbeddingLayout,
        num_dense: int,
        config: ModelConfig,
        embedding_device: torch.device | str = "meta",
    ) -> None:
        super().__init__(layout, embedding_device)
        d = layout.dim
        self.dense_tokens = nn.Parameter(torch.randn(num_dense, d) / d**0.5)
        widths = [d] + [config.attention_dim] * config.attention_layers
        self.attention = nn.Sequential(
            *(
                SelfAttentionLayer(w_in, w_out, config.attention_heads)
                for w_in, w_out in itertools.pairwise(widths)
            )
        )
        self.num_tokens = num_dense + layout.num_vectors
        self.attention_dim = config.attention_dim
        self.over_arch = mlp(
            [self.num_tokens * widths[-1], *config.attention_mlp, 1], final_activation=False
        )

    @property
    def interaction_elements_per_sample(self) -> int:
        # scores q k^T and their use on v: 2 n^2 x width per layer
        return 2 * len(self.attention) * self.num_tokens**2 * self.attention_dim

    def network(self, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        dense_tokens = dense.unsqueeze(2) * self.dense_tokens  # [B, num_dense, d]
        tokens = torch.cat([dense_tokens, vectors], dim=1)
        return self.over_arch(self.attention(tokens).flatten(1)).squeeze(1)

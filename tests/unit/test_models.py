"""The model kinds: shapes, the options' parameter counts, config checks, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchrec import KeyedJaggedTensor

from dist_train.config import ModelConfig
from dist_train.embedding.layout import build_layout
from dist_train.models import MODELS, CTRModel, create_model
from dist_train.models.dcn import DCNv2
from dist_train.models.dlrm import DotInteraction
from tests.conftest import small_config


def _model_and_batch(
    tmp_path: Path, model: ModelConfig, overrides: list[str] | None = None
) -> tuple[CTRModel, torch.Tensor, KeyedJaggedTensor]:
    """A small job's model (tables on the CPU) and 4 examples, one id per key."""
    cfg = small_config(tmp_path, overrides)
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    torch.manual_seed(0)
    net = create_model(layout, 3, model, embedding_device="cpu")
    ids = torch.randint(0, 50, (4 * len(layout.key_names),))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=layout.key_names, values=ids, lengths=torch.ones(ids.numel(), dtype=torch.int64)
    )
    return net, torch.rand(4, 3), kjt


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kind_gives_one_logit_per_example_and_gradients_everywhere(
    tmp_path: Path, kind: str
) -> None:
    net, dense, kjt = _model_and_batch(tmp_path, ModelConfig(kind=kind))
    logits = net(dense, kjt)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.interaction_elements_per_sample > 0


@pytest.mark.parametrize(
    "overrides",
    [
        ["embedding.kind=unified"],  # one table: its output is already in layout order
        ["embedding.kind=unified", "embedding.num_tables=2"],  # keys alternate tables
        ["embedding.kind=hashing_trick"],
    ],
    ids=["one_table", "two_tables", "per_feature"],
)
def test_embed_puts_each_key_vector_at_its_layout_place(
    tmp_path: Path, overrides: list[str]
) -> None:
    net, _, kjt = _model_and_batch(tmp_path, ModelConfig(), overrides)
    by_key = net.sparse_arch(kjt).to_dict()
    vectors = net.embed(kjt)
    assert vectors.shape == (4, net.num_vectors, net.dim)
    # a key holds its feature's chunks (a multiple of dim wide in per-feature tables)
    expected = torch.cat([by_key[key] for key in net.layout_keys], dim=1)
    torch.testing.assert_close(vectors.flatten(1), expected, rtol=0, atol=0)
    vectors.sum().backward()
    weights = [p for n, p in net.named_parameters() if n.startswith("sparse_arch")]
    assert weights and all(p.grad is not None for p in weights)


def test_low_rank_cross_layers_hold_fewer_weights(tmp_path: Path) -> None:
    full, _, _ = _model_and_batch(tmp_path, ModelConfig(kind="dcn_v2", cross_layers=2))
    low, _, _ = _model_and_batch(tmp_path, ModelConfig(kind="dcn_v2", cross_layers=2, cross_rank=4))
    assert isinstance(full, DCNv2) and isinstance(low, DCNv2)
    width = full.width
    assert sum(p.numel() for p in full.cross.parameters()) == 2 * (width * width + width)
    assert sum(p.numel() for p in low.cross.parameters()) == 2 * (2 * width * 4 + width)


def test_attention_width_must_split_over_the_heads() -> None:
    with pytest.raises(ValidationError, match=r"attention_dim .* divisible by attention_heads"):
        ModelConfig(kind="autoint", attention_dim=10, attention_heads=3)


def test_dot_interaction_is_the_dense_vector_then_every_pair_once() -> None:
    torch.manual_seed(0)
    dense, vectors = torch.randn(3, 4), torch.randn(3, 5, 4)
    out = DotInteraction()(dense, vectors)
    stacked = torch.cat([dense[:, None], vectors], dim=1)
    pairs = [(stacked[:, i] * stacked[:, j]).sum(-1) for i in range(6) for j in range(i + 1, 6)]
    torch.testing.assert_close(out, torch.cat([dense, torch.stack(pairs, dim=1)], dim=1))


def test_dot_interaction_gradient_is_autograds_of_the_plain_gram_matrix() -> None:
    # the interaction's own backward (one matmul with the symmetrized gradient) against
    # autograd through bmm and the upper-triangle gather, in double precision
    torch.manual_seed(0)
    dense = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 4 + 15, dtype=torch.float64)
    (DotInteraction()(dense, vectors) * weights).sum().backward()
    ours = dense.grad, vectors.grad
    stacked = torch.cat([dense[:, None], vectors], dim=1)
    rows, cols = torch.triu_indices(6, 6, offset=1)
    plain = torch.cat([dense, torch.bmm(stacked, stacked.transpose(1, 2))[:, rows, cols]], 1)
    torch.testing.assert_close(ours, torch.autograd.grad((plain * weights).sum(), (dense, vectors)))

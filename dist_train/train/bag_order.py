"""Bags example by example: a KJT's bags, feature after feature, put in the order of a pooled
``[batch, features x dim]`` output's rows of ``dim``.

A KeyedJaggedTensor lists its bags feature-major (bag ``f x B + b`` is feature ``f``'s bag of
example ``b``). Pooled in that order, ``F x B`` bags give ``[F x B, dim]``, which the model
reads transposed, ``[B, F x dim]``: a copy each way. Pooled example-major (bag ``b x F + f``),
the same bags give ``[B x F, dim]``, which *is* ``[B, F x dim]`` in memory.
"""

from __future__ import annotations

import torch


def example_major_order(features: int, batch: int, device: torch.device) -> torch.Tensor:
    """For each example-major bag ``b x F + f``, its feature-major index ``f x B + b`` (int32,
    as FBGEMM's permutation takes it)."""
    bags = torch.arange(features * batch, dtype=torch.int32, device=device)
    return bags.view(features, batch).t().reshape(-1)


def example_major_bags(
    order: torch.Tensor,
    lengths: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Feature-major bags (their ``lengths``, ids and per-id weights) put in ``order``
    (:func:`example_major_order`): the bags' int64 offsets (one more than the bags), ids and
    weights. Weights come out without gradients: FBGEMM's permutation has no backward."""
    if lengths.numel() != order.numel():
        raise ValueError(f"{lengths.numel()} bags for an order of {order.numel()}")
    lengths, values, weights = torch.ops.fbgemm.permute_1D_sparse_data(
        order, lengths.to(torch.int32), values, weights, values.numel()
    )
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths.to(torch.int64))
    return offsets, values, weights

"""Bags example by example: a KJT's bags, feature after feature, put in the order of a pooled
``[batch, features x dim]`` output's rows of ``dim``.

A KeyedJaggedTensor lists its bags feature-major (bag ``f x B + b`` is feature ``f``'s bag of
example ``b``). Pooled in that order, ``F x B`` bags give ``[F x B, dim]``, which the model
reads transposed, ``[B, F x dim]``: a copy each way. Pooled example-major (bag ``b x F + f``),
the same bags give ``[B x F, dim]``, which *is* ``[B, F x dim]`` in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import numpy as np
import torch

from dist_train.kernels import example_major_into


@dataclass(frozen=True)
class ExampleMajorBags:
    """Bags put example-major: their int64 ``offsets`` (one more than the bags), ``values``
    and ``weights`` in bag order, and ``bag_of_value``: each input value's new bag, in the
    input's order."""

    offsets: torch.Tensor
    values: torch.Tensor
    weights: torch.Tensor | None
    bag_of_value: torch.Tensor


def lengths_not_counting(lengths: torch.Tensor, values: int) -> ValueError:
    """The error for bag ``lengths`` that do not count their ``values`` (a caller-built
    KJT's: the batch builder's always do)."""
    each = [int(n) for n in lengths.flatten().tolist()]  # summed unbounded: no wrap
    return ValueError(
        f"bag lengths do not count their {values} id(s): they sum to {sum(each)}, the least "
        f"is {min(each, default=0)}, the largest {max(each, default=0)}"
    )


def refuse_lengths_not_counting(lengths: torch.Tensor, values: int) -> None:
    """Raise :func:`lengths_not_counting`'s error unless every bag length is 0 or more and
    they sum to ``values``: FBGEMM's ops read and write past the ids for ones that do not."""
    if lengths.numel() == 0:
        counted = values == 0
    else:
        low, high = (int(v) for v in torch.aminmax(lengths))
        # no length over the count first: a sum of huge ones could wrap around to it
        counted = low >= 0 and high <= values and int(lengths.sum()) == values
    if not counted:
        raise lengths_not_counting(lengths, values)


def refuse_offsets_not_counting(offsets: torch.Tensor, values: int) -> None:
    """:func:`refuse_lengths_not_counting` for bag ``offsets`` (one more than the bags),
    which must also start at 0."""
    if offsets.numel() == 0 or int(offsets[0]) != 0:
        raise ValueError(f"bag offsets do not start at 0 for their {values} id(s)")
    refuse_lengths_not_counting(offsets.diff(), values)


def example_major_bags(
    lengths: torch.Tensor,
    values: torch.Tensor,
    batch: int,
    weights: torch.Tensor | None = None,
) -> ExampleMajorBags:
    """Feature-major bags (their ``lengths``, ``batch`` bags a feature; their values and
    per-id weights) put example-major. On CPU without weights one compiled pass
    (:func:`~dist_train.kernels.example_major_into`: the ids read in input order, each
    written at its example's cursor; for bags of one value each, as single-valued features
    give, a transpose); else
    FBGEMM's ``permute_1D_sparse_data``, whose weights come out without gradients (it has no
    backward)."""
    bags = lengths.numel()
    features = bags // batch if batch else 0
    if features * batch != bags:
        raise ValueError(f"{bags} bags are not {batch} a feature")
    if values.device.type == "cpu" and weights is None:
        offsets = torch.empty(bags + 1, dtype=torch.int64)
        in_order = torch.empty_like(values)
        bag_of_value = torch.empty(values.numel(), dtype=torch.int64)
        if not example_major_into(
            lengths.contiguous().numpy().reshape(features, batch),
            values.contiguous().numpy(),
            np.empty(batch, dtype=np.int64),
            offsets.numpy(),
            in_order.numpy(),
            bag_of_value.numpy(),
        ):
            raise lengths_not_counting(lengths, values.numel())
        return ExampleMajorBags(offsets, in_order, None, bag_of_value)
    refuse_lengths_not_counting(lengths, values.numel())
    device = lengths.device
    feature_major = torch.arange(bags, dtype=torch.int32, device=device)
    order = feature_major.view(features, batch).t().reshape(-1)  # new bag -> old bag
    permuted_lengths, in_order, weights = torch.ops.fbgemm.permute_1D_sparse_data(
        order, lengths.to(torch.int32), values, weights, values.numel()
    )
    new_bag = torch.empty(bags, dtype=torch.int64, device=device)
    new_bag[order.long()] = torch.arange(bags, device=device)
    old_bag = torch.repeat_interleave(
        torch.arange(bags, device=device), lengths.long(), output_size=values.numel()
    )
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(permuted_lengths.to(torch.int64))
    return ExampleMajorBags(offsets, in_order, weights, new_bag[old_bag])

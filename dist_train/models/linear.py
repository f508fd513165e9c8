"""``nn.Linear`` with its input gradient computed at a cache-line row stride.

MKL's sgemm writes rows that are a whole number of cache lines faster than others: DLRM's
top MLP reads 796 values an example at the default job's 40 vectors, and its input gradient
(``grad W``, 2,048 x 796) is much faster to compute 800 wide (docs/benchmarks.md, "The top
MLP's input gradient at a cache-line stride"). Its weight gradient is computed as
``(x^T grad)^T``: on two threads MKL runs that product (796 x 2,048 x 128) about 6% faster
than ``grad^T x`` (128 x 2,048 x 796), and on one thread as fast (docs/benchmarks.md, "The
top MLP's weight gradient as a transpose").
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

GEMM_ROW_FLOATS = 16  # float32: 64 bytes, a cache line


class _LinearWithAlignedGradInput(torch.autograd.Function):
    """``x W^T + b`` with ``nn.functional.linear``'s forward, and two gradients computed
    otherwise: the input's as ``grad`` times W padded with zero columns to whole cache
    lines, its first columns returned as a view (column j of a product reads only column j
    of W); the weight's as the transpose of ``x^T grad``. The sums are the same; MKL's
    choice of kernel could still change their order, so a test holds both gradients equal
    to the bit on the machine it runs on."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            width = weight.shape[1]
            padded = weight.new_zeros(
                weight.shape[0], -(-width // GEMM_ROW_FLOATS) * GEMM_ROW_FLOATS
            )
            padded[:, :width] = weight
            grad_x = grad.mm(padded)[:, :width]
        if ctx.needs_input_grad[1]:
            grad_weight = x.t().mm(grad).t()
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


# a leaf of torch.fx traces: the choice looks at the tensors, which a trace does not have
@torch.fx.wrap
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.functional.linear``; where the input needs a gradient and its rows (2-D, CPU,
    float32) are not whole cache lines, through :class:`_LinearWithAlignedGradInput`."""
    if (
        bias is not None
        and x.requires_grad
        and x.dim() == 2
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.shape[1] % GEMM_ROW_FLOATS != 0
    ):
        return cast(torch.Tensor, _LinearWithAlignedGradInput.apply(x, weight, bias))
    return nn.functional.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) through :func:`linear`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)

"""``nn.Linear`` through the faster of the CPU's two matmul libraries for each layer.

Layers of at least ``ONEDNN_MIN_WEIGHTS`` weights run their forward and both gradients
through oneDNN where this CPU has AVX-512 and is not Intel's (:mod:`planners.gemm`: MKL
runs AVX-512 on Intel's; docs/performance_log.md, "The dense layers through oneDNN"). Its sums run
in another order than MKL's: outputs differ from ``nn.Linear``'s in the last bits, within a
few times ``nn.Linear``'s own error against a float64 reference (the tests check it).

A layer a ReLU follows (``Linear(..., relu=True)``; :func:`~dist_train.models.base.mlp`)
applies it itself. Through oneDNN it is the inner product's post-op, and the backward masks
the gradient and writes it transposed in one compiled pass
(:func:`~dist_train.kernels.relu_gradient_into`): the weight gradient's product reads the
transpose, which oneDNN otherwise copied from a transposed view. The results are the bits of
the layer and ``nn.ReLU`` apart (docs/performance_log.md, "The ReLU inside the largest layer").

Elsewhere (smaller layers, where oneDNN gained little or nothing; Intel's CPUs; CPUs without
AVX-512) the layers are MKL's, with two changes where the input needs a gradient and its rows are
not whole cache lines. MKL's sgemm writes rows of whole cache lines faster: at the default job's 40
vectors DLRM's top MLP reads 796 values an example, and MKL computed its input gradient
(``grad W``, 2,048 x 796) much faster 800 wide (docs/performance_log.md, "The top MLP's input
gradient at a cache-line stride"). The weight gradient is ``(x^T grad)^T``: on two threads MKL
ran that product (796 x 2,048 x 128) about 6% faster than ``grad^T x``, and on one thread as
fast (docs/performance_log.md, "The top MLP's weight gradient as a transpose").
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from dist_train.kernels import relu_gradient_into
from planners.gemm import ONEDNN_GEMM, onednn_linear

GEMM_ROW_FLOATS = 16  # float32: 64 bytes, a cache line
# the three products summed, through oneDNN against MKL. Zen 4: 128 x 64 as fast, 256 x 128
# 2-8% faster, 512 x 256 and 796 x 128 clearly faster. Zen 5 (AVX-512 at full width, MKL
# still on AVX2): 1.2-2.2x faster from 6,144 weights up, 0.94-1.33x at 4,096
# (docs/performance_log.md, "The dense layers through oneDNN")
ONEDNN_MIN_WEIGHTS = 8_192


class _LinearThroughOneDNN(torch.autograd.Function):
    """``x W^T + b`` and its three gradients, each product one oneDNN inner product (the
    gradients' operands as transposed views: oneDNN reads them in place)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return onednn_linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable  # oneDNN's op has no derivative of its own
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        return _onednn_gradients(ctx.needs_input_grad, x, weight, grad, grad.t())


def _onednn_gradients(
    needs: tuple[bool, ...],
    x: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    grad_t: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients of ``x W^T + b`` that ``needs`` asks for (input, weight, bias) from the
    output's ``grad``, each product one oneDNN inner product; ``grad_t``: ``grad``'s
    transpose, a view or a copy."""
    grad_x = grad_weight = grad_bias = None
    if needs[0]:
        grad_x = onednn_linear(grad, weight.t())
    if needs[1]:
        grad_weight = onednn_linear(grad_t, x.t())
    if needs[2]:
        grad_bias = grad.sum(0)
    return grad_x, grad_weight, grad_bias


class _LinearReLUThroughOneDNN(torch.autograd.Function):
    """``relu(x W^T + b)`` through oneDNN, the ReLU its post-op; the backward masks the
    gradient and writes it transposed in one pass, for the weight gradient's product."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        out = onednn_linear(x, weight, bias, relu=True)
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        x, weight, out = ctx.saved_tensors
        grad = grad.contiguous()
        masked = torch.empty_like(grad)
        masked_t = grad.new_empty(grad.shape[1], grad.shape[0])
        relu_gradient_into(grad.numpy(), out.numpy(), masked.numpy(), masked_t.numpy())
        return _onednn_gradients(ctx.needs_input_grad, x, weight, masked, masked_t)


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
def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False
) -> torch.Tensor:
    """``nn.functional.linear`` (then ``relu`` if asked); for a 2-D CPU float32 input outside
    autocast, through :class:`_LinearThroughOneDNN` (:class:`_LinearReLUThroughOneDNN`)
    where the layer is large and :mod:`planners.gemm` takes oneDNN here (AVX-512, not Intel),
    else where the input needs a gradient and its rows are not whole cache lines through
    :class:`_LinearWithAlignedGradInput`."""
    if (
        x.dim() == 2
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        # nn.Linear runs in autocast's lower precision there, and its gradients come back in it
        and not torch.is_autocast_enabled("cpu")
    ):
        if (
            ONEDNN_GEMM
            and weight.numel() >= ONEDNN_MIN_WEIGHTS
            and x.shape[0] > 0
            and weight.dtype == torch.float32
        ):
            if relu:
                return cast(torch.Tensor, _LinearReLUThroughOneDNN.apply(x, weight, bias))
            return cast(torch.Tensor, _LinearThroughOneDNN.apply(x, weight, bias))
        if bias is not None and x.requires_grad and weight.shape[1] % GEMM_ROW_FLOATS != 0:
            out = cast(torch.Tensor, _LinearWithAlignedGradInput.apply(x, weight, bias))
            return torch.relu(out) if relu else out
    out = nn.functional.linear(x, weight, bias)
    return torch.relu(out) if relu else out


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) through :func:`linear`; with ``relu``,
    ``nn.ReLU`` after it too."""

    def __init__(self, *args: Any, relu: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias, self.relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

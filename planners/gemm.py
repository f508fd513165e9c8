"""The CPU matmul the dense network runs, and whether this machine runs it through oneDNN.

torch's ``x @ w`` on the CPU is MKL's sgemm, which on AMD CPUs takes its AVX2 path even where
the CPU has AVX-512. oneDNN (``torch.ops.mkldnn``, shipped inside torch) picks its kernels by
the CPU's instruction set alone. On this project's AMD EPYC (Zen 4) it ran the default job's
largest layer, 2,048 x 796 x 128, 1.2-1.7x faster than MKL forward and for the input
gradient, and a 2,048 x 512 x 512 product 1.2-1.4x faster (docs/benchmarks.md, "The dense
layers through oneDNN"). Where the CPU lacks AVX-512 nothing here was measured, so MKL stays.
"""

from __future__ import annotations

from typing import cast

import torch

# oneDNN's inner product (what torch.compile's CPU backend emits for a linear layer)
_inner_product = torch.ops.mkldnn._linear_pointwise

ONEDNN_GEMM = torch.backends.mkldnn.is_available() and (
    torch.backends.cpu.get_cpu_capability().startswith("AVX512")
)
"""The dense network's large CPU layers run through :func:`onednn_linear`."""


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight^T + bias`` for 2-D float32 CPU tensors with at least one row each (oneDNN
    refuses an empty reduction), through oneDNN; either argument may be a transposed view."""
    return cast(torch.Tensor, _inner_product(x, weight, bias, "none", [], ""))

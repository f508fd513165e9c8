"""The CPU matmul the dense network's large layers run, and whether it is oneDNN's here.

torch's ``x @ w`` on the CPU is MKL's sgemm, which on AMD CPUs takes its AVX2 path even where
the CPU has AVX-512. oneDNN (``torch.ops.mkldnn``, shipped inside torch) picks its kernels by
the CPU's instruction set alone, and on this project's AMD EPYCs it ran the default job's
largest layer and the roofline's probe faster: 1.2-1.7x on Zen 4, about 2.3x on Zen 5, whose
AVX-512 units are full width (docs/benchmarks.md, "The dense layers through oneDNN"). Only
AMD CPUs were measured: Intel CPUs with AVX-512, where MKL has an
AVX-512 path of its own, take oneDNN too by this rule; CPUs without AVX-512 keep MKL.
"""

from __future__ import annotations

from typing import cast

import torch

ONEDNN_GEMM = torch.backends.mkldnn.is_available() and (
    torch.backends.cpu.get_cpu_capability().startswith("AVX512")
)
"""The dense network's large CPU layers run through :func:`onednn_linear`."""


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False
) -> torch.Tensor:
    """``x @ weight^T + bias`` (then ``relu``, as oneDNN's post-op) for 2-D float32 CPU tensors
    with at least one row each (oneDNN refuses an empty reduction), through oneDNN; either
    argument may be a transposed view."""
    # oneDNN's inner product, what torch.compile's CPU backend emits for a linear layer; looked
    # up here, not at import: a torch built without oneDNN has no such op
    inner_product = torch.ops.mkldnn._linear_pointwise
    return cast(torch.Tensor, inner_product(x, weight, bias, "relu" if relu else "none", [], ""))

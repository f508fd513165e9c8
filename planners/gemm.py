"""The CPU matmul the dense network's large layers run, and whether it is oneDNN's here.

torch's ``x @ w`` on the CPU is MKL's sgemm, which on AMD CPUs takes its AVX2 path even where
the CPU has AVX-512. oneDNN (``torch.ops.mkldnn``, shipped inside torch) picks its kernels by
the CPU's instruction set alone, and on this project's AMD EPYCs it ran the default job's
largest layer and the roofline's probe faster: 1.2-1.7x on Zen 4, about 2.3x on Zen 5, whose
AVX-512 units are full width (docs/performance_log.md, "The dense layers through oneDNN"). On Intel
CPUs MKL has AVX-512 kernels of its own: on a Xeon (family 6, model 207) the products alone
ran as fast either way, and the default job's step about 10% faster through MKL
(docs/performance_log.md, "On Intel, MKL"). So oneDNN runs them on AVX-512 CPUs that are not
Intel's; elsewhere MKL does.
"""

from __future__ import annotations

from typing import cast

import torch


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor as Linux's ``cpuinfo`` names it (``GenuineIntel``, ``AuthenticAMD``),
    or "" where there is no such file (other systems)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return ""


# MKL dispatches its AVX-512 kernels on Intel CPUs only
MKL_HAS_AVX512 = cpu_vendor() == "GenuineIntel"

ONEDNN_GEMM = (
    torch.backends.mkldnn.is_available()
    and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    and not MKL_HAS_AVX512
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

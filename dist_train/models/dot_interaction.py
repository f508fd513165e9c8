"""DLRM's dot interaction: the dense vector, then the dot product of every pair of vectors.

Two implementations of one function, held to each other by the tests:

- **native** (``_dot_interaction.c``, a C extension built at install): CPU float32, forward
  and backward fused, no Gram matrix. The default wherever it is built and the CPU has
  AVX-512 or AVX2 + FMA (:func:`native_variant`).
- **torch**: a batched matmul and a gather of its upper triangle, with a backward of its
  own; any device and dtype, and the fallback where the extension is not built.

``dist-train bench interaction`` times them side by side (docs/performance_log.md, "The dot
interaction in C").
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, cast

import torch

_native: ModuleType | None
try:  # built by `pip install` (setup.py) where a C compiler is at hand; optional
    from dist_train.models import _dot_interaction as _native
except ImportError:  # pragma: no cover - a build without the extension
    _native = None


def native_variant() -> str | None:
    """The instruction set the native kernels run with here (``avx512``, ``avx2``), or None
    where the extension is not built or the CPU has neither."""
    return None if _native is None else _native.variant()


def implementation_on(device: torch.device) -> str:
    """Which implementation float32 inputs on ``device`` run: ``C (avx512)``, ``C (avx2)``
    or ``torch`` (what a run's start line says)."""
    variant = native_variant()
    return f"C ({variant})" if device.type == "cpu" and variant is not None else "torch"


_VARIANTS = ("avx512", "avx2")  # widest first
_WIDEST = native_variant()  # what the extension picked at import


def native_variants() -> list[str]:
    """Every instruction set the native kernels can run with on this CPU, widest first."""
    return [] if _WIDEST is None else list(_VARIANTS[_VARIANTS.index(_WIDEST) :])


def select_native_variant(name: str) -> None:
    """Run the native kernels with ``name`` (one of :func:`native_variants`) from now on:
    for tests and comparisons of a narrower set than this CPU's widest."""
    if _native is None or not _native.select(name):
        raise ValueError(
            f"native dot interaction variant {name!r}: this CPU runs {native_variants()}"
        )


class _TorchPairwiseDots(torch.autograd.Function):
    """``[B, n, d]`` -> the upper triangle of each Gram matrix, ``[B, len(pairs)]``.

    Autograd's backward of ``bmm(x, x^T)`` runs two batched matmuls, one through a transposed
    view; the Gram matrix is symmetric, so one matmul with the symmetrized gradient gives the
    same: ``(G + G^T) x``, G + G^T gathered from the pairs' gradients in one pass. Measured at
    the default job's shapes (40 vectors, batch 2,048, one thread): 18.7 -> 10.4 ms per
    forward + backward of the interaction with a first version that scattered G + G^T into
    zeros; the gather took its backward from 3.3 to 2.5 ms more.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, pairs: torch.Tensor, pair_at: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, pair_at)
        # One flat index_select, not gram[:, rows, cols]: two-tensor indexing gathers (and its
        # backward scatters) several times slower
        return torch.bmm(x, x.transpose(1, 2)).flatten(1).index_select(1, pairs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, pair_at = ctx.saved_tensors
        b, n, _ = x.shape
        # a gather, not a scatter into zeros: 2.5 against 3.3 ms with the matmul
        sym = grad.index_select(1, pair_at).view(b, n, n)
        sym.diagonal(dim1=1, dim2=2).zero_()
        # in x's dtype: under autocast the forward's product (so ``grad``) is bf16 or fp16
        return torch.bmm(sym.to(x.dtype), x), None, None


@functools.lru_cache(maxsize=8)
def _pair_indices(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the pairs (i, j), i < j, in an n x n matrix; and for each of its n x n
    places the pair there, (i, j) or (j, i) (0 on the diagonal, which has none)."""
    rows, cols = torch.triu_indices(n, n, offset=1, device=device)
    pairs = rows * n + cols
    pair_at = torch.zeros(n * n, dtype=torch.int64, device=device)
    order = torch.arange(len(pairs), device=device)
    pair_at[pairs] = order
    pair_at[cols * n + rows] = order
    return pairs, pair_at


def _torch_dot_interaction(dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    stacked = torch.cat([dense.unsqueeze(1), vectors], dim=1)
    pairs, pair_at = _pair_indices(stacked.shape[1], stacked.device)
    dots = cast(torch.Tensor, _TorchPairwiseDots.apply(stacked, pairs, pair_at))
    return torch.cat([dense, dots], dim=1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[B, width]`` rows the kernels can read: each row's values contiguous (any
    row stride, so a slice of a wider tensor needs no copy)."""
    flat = t.flatten(1) if t.dim() > 2 else t
    return flat if flat.stride(-1) == 1 or flat.shape[1] <= 1 else flat.contiguous()


class _NativeDotInteraction(torch.autograd.Function):
    """``dense [B, d]``, ``vectors [B, n - 1, d]`` -> ``[B, d + n (n - 1) / 2]`` in the C
    kernels, split over torch's intra-op thread count."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, dense: torch.Tensor, vectors: torch.Tensor
    ) -> torch.Tensor:
        assert _native is not None
        b, d = dense.shape
        n = vectors.shape[1] + 1
        dense_rows, vector_rows = _rows(dense), _rows(vectors)
        out = dense.new_empty(b, d + n * (n - 1) // 2)
        _native.forward(
            dense_rows.data_ptr(), dense_rows.stride(0),
            vector_rows.data_ptr(), vector_rows.stride(0),
            out.data_ptr(), out.stride(0),
            b, n, d, torch.get_num_threads(),
        )  # fmt: skip
        ctx.save_for_backward(dense_rows, vector_rows)
        ctx.vector_shape = vectors.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert _native is not None
        if torch.is_grad_enabled():  # create_graph: autograd would miss the kernels' part
            raise RuntimeError(
                "the C dot interaction's backward is not differentiable (create_graph=True); "
                "torch's path is: dot_interaction(dense, vectors, native=False)"
            )
        dense_rows, vector_rows = ctx.saved_tensors
        b, d = dense_rows.shape
        n = ctx.vector_shape[1] + 1
        grad_rows = _rows(grad)
        d_dense = grad.new_empty(b, d)
        d_vectors = grad.new_empty(b, (n - 1) * d)
        _native.backward(
            dense_rows.data_ptr(), dense_rows.stride(0),
            vector_rows.data_ptr(), vector_rows.stride(0),
            grad_rows.data_ptr(), grad_rows.stride(0),
            d_dense.data_ptr(), d_dense.stride(0),
            d_vectors.data_ptr(), d_vectors.stride(0),
            b, n, d, torch.get_num_threads(),
        )  # fmt: skip
        return d_dense, d_vectors.view(ctx.vector_shape)


def _native_applies(dense: torch.Tensor, vectors: torch.Tensor) -> bool:
    return (
        native_variant() is not None
        and dense.device.type == "cpu"
        and vectors.device.type == "cpu"
        and dense.dtype == torch.float32
        and vectors.dtype == torch.float32
        and dense.shape[0] > 0
        and vectors.shape[1] > 0
    )


def _check_shapes(dense: torch.Tensor, vectors: torch.Tensor) -> None:
    if (
        dense.dim() != 2
        or vectors.dim() != 3
        or vectors.shape[0] != dense.shape[0]
        or vectors.shape[2] != dense.shape[1]
        or vectors.shape[1] == 0  # no pairs: the torch path's backward failed on it
    ):
        raise ValueError(
            "dot interaction: dense must be [B, d] and vectors [B, n - 1, d], n - 1 >= 1; "
            f"got dense {list(dense.shape)} and vectors {list(vectors.shape)}"
        )


def dot_interaction(
    dense: torch.Tensor, vectors: torch.Tensor, native: bool | None = None
) -> torch.Tensor:
    """``dense [B, d]`` and ``vectors [B, n - 1, d]`` -> ``[B, d + n (n - 1) / 2]``: the dense
    vector, then the dot product of every pair of the n vectors (the dense one first) once,
    pairs (i, j), i < j, in row-major upper-triangle order.

    ``native``: None takes the C kernels where they apply (CPU float32, extension built, an
    AVX2 or AVX-512 CPU); False always torch's path; True the kernels or an error.

    Callers that torch.fx traces (TorchRec's train pipeline traces the model) wrap it as a
    leaf, ``torch.fx.wrap("dot_interaction")`` in their module: the choice of implementation
    looks at the tensors, which a trace does not have."""
    _check_shapes(dense, vectors)
    if native is None:
        native = _native_applies(dense, vectors)
    elif native and not _native_applies(dense, vectors):
        raise RuntimeError(
            "the native dot interaction needs CPU float32 tensors, at least one example and "
            f"one vector, and the extension built for this CPU (variant: {native_variant()})"
        )
    if native:
        return cast(torch.Tensor, _NativeDotInteraction.apply(dense, vectors))
    return _torch_dot_interaction(dense, vectors)


def pairwise_dots(x: torch.Tensor) -> torch.Tensor:
    """Each example's dot products of every pair of its vectors once: ``[B, n, d]`` ->
    ``[B, n (n - 1) / 2]``, as the model computes them (what calibration times)."""
    d = x.shape[2]
    return dot_interaction(x[:, 0], x[:, 1:])[:, d:]

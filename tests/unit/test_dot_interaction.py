"""The native dot interaction kernels against torch's implementation, forward and backward."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from dist_train.models import dot_interaction as dot_module
from dist_train.models.dlrm import DotInteraction
from dist_train.models.dot_interaction import (
    dot_interaction,
    native_variant,
    native_variants,
    pairwise_dots,
    select_native_variant,
)

VARIANTS = native_variants()


@pytest.fixture(params=VARIANTS or [None])
def variant(request: pytest.FixtureRequest) -> object:
    if request.param is None:
        pytest.skip("the native kernels do not run on this CPU")
    select_native_variant(request.param)
    yield request.param
    select_native_variant(VARIANTS[0])


def _inputs(batch: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, d, generator=g, requires_grad=True)
    vectors = torch.randn(batch, n - 1, d, generator=g, requires_grad=True)
    grad = torch.randn(batch, d + n * (n - 1) // 2, generator=g)
    return dense, vectors, grad


def _both(
    dense: torch.Tensor, vectors: torch.Tensor, grad: torch.Tensor, native: bool
) -> tuple[torch.Tensor, ...]:
    out = dot_interaction(dense, vectors, native=native)
    return (out, *torch.autograd.grad(out, (dense, vectors), grad))


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    return {
        f
        for line in cpuinfo.read_text().splitlines()
        if line.startswith("flags")
        for f in line.split(":", 1)[1].split()
    }


def _assert_native_matches_torch(
    dense: torch.Tensor, vectors: torch.Tensor, grad: torch.Tensor
) -> None:
    """Output and both gradients of the C kernels against torch's path."""
    for ours, theirs in zip(
        _both(dense, vectors, grad, native=True),
        _both(dense, vectors, grad, native=False),
        strict=True,
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_the_native_kernels_are_built_and_run_on_x86() -> None:
    # CI builds the extension (make setup); a silent fallback would leave it untested
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the kernels are x86-only")
    assert dot_module._native is not None, "the C extension was not built (gcc >= 12?)"
    if not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU has no AVX2 + FMA")
    assert native_variant() in ("avx512", "avx2")


# batch not a multiple of the tile, d not a multiple of the register block, one pair only,
# two register blocks, vectors past the last 4 x 4 block, and the default job's shapes
@pytest.mark.parametrize(
    ("batch", "n", "d"),
    [
        (37, 6, 5),
        (33, 3, 20),
        (17, 2, 16),
        (40, 9, 32),
        (2048, 40, 16),
        (1, 4, 16),
        (5, 3, 1),
        (19, 13, 12),
    ],
)
def test_native_equals_torch_forward_and_backward(variant: str, batch: int, n: int, d: int) -> None:
    dense, vectors, grad = _inputs(batch, n, d)
    _assert_native_matches_torch(dense, vectors, grad)


def test_native_reads_strided_rows_and_a_strided_gradient(variant: str) -> None:
    # the dense vector a slice of a wider tensor, the vectors a slice of the stacked ones,
    # the gradient a slice of a wider one: the kernels take row strides, no copies needed
    dense_wide, stacked, grad_wide = _inputs(21, 9, 24)  # stacked: [21, 8, 24]
    dense = dense_wide[:, 3:11]
    vectors = stacked[:, 1:, :8]  # not row-contiguous inside: copied once
    grad = grad_wide[:, 2:]
    grad = grad[:, : 8 + 8 * 7 // 2]
    _assert_native_matches_torch(dense, vectors, grad)


def test_native_results_do_not_depend_on_the_thread_count(variant: str) -> None:
    dense, vectors, grad = _inputs(100, 7, 16)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append(_both(dense, vectors, grad, native=True))
    finally:
        torch.set_num_threads(previous)
    for one, three in zip(*runs, strict=True):
        assert torch.equal(one, three)


def test_pairwise_dots_is_the_upper_triangle_of_the_gram_matrix() -> None:
    x = torch.randn(5, 7, 4)
    rows, cols = torch.triu_indices(7, 7, offset=1)
    torch.testing.assert_close(pairwise_dots(x), torch.bmm(x, x.transpose(1, 2))[:, rows, cols])


def test_other_dtypes_take_torchs_path_and_asking_native_for_them_is_an_error() -> None:
    dense, vectors = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, 3).double()
    assert dot_interaction(dense, vectors).dtype == torch.float64
    with pytest.raises(RuntimeError, match="CPU float32"):
        dot_interaction(dense, vectors, native=True)


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="'sse9'"):
        select_native_variant("sse9")


def _padded(rows: int, cols: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[rows, cols]`` view inside a buffer two rows and eight columns larger, ``fill``
    around it: a kernel reading past the view meets ``fill``; one writing past it changes
    it."""
    buffer = torch.full((rows + 2, cols + 8), fill)
    return buffer, buffer[1 : rows + 1, 4 : cols + 4]


@pytest.mark.parametrize(("batch", "n", "d"), [(21, 5, 16), (3, 7, 9), (35, 2, 24)])
def test_native_kernels_stay_inside_their_rows(variant: str, batch: int, n: int, d: int) -> None:
    # NaN around the inputs (a stray read turns a result NaN), a sentinel around the outputs
    # (a stray write changes it)
    assert dot_module._native is not None
    pairs = n * (n - 1) // 2
    dense_in, vectors_in, grad_in = _inputs(batch, n, d)
    _, dense = _padded(batch, d, float("nan"))
    _, vectors = _padded(batch, (n - 1) * d, float("nan"))
    _, grad = _padded(batch, d + pairs, float("nan"))
    dense.copy_(dense_in.detach())
    vectors.copy_(vectors_in.detach().flatten(1))
    grad.copy_(grad_in)
    outs = [_padded(batch, w, -7.0) for w in (d + pairs, d, (n - 1) * d)]
    out, d_dense, d_vectors = (view for _, view in outs)
    k, threads = dot_module._native, 2
    k.forward(dense.data_ptr(), dense.stride(0), vectors.data_ptr(), vectors.stride(0),
              out.data_ptr(), out.stride(0), batch, n, d, threads)  # fmt: skip
    k.backward(dense.data_ptr(), dense.stride(0), vectors.data_ptr(), vectors.stride(0),
               grad.data_ptr(), grad.stride(0), d_dense.data_ptr(), d_dense.stride(0),
               d_vectors.data_ptr(), d_vectors.stride(0), batch, n, d, threads)  # fmt: skip
    ref_out, ref_dense, ref_vectors = _both(dense_in, vectors_in, grad_in, native=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_dense, ref_dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_vectors, ref_vectors.flatten(1), rtol=1e-5, atol=1e-5)
    for buf, view in outs:
        outside = torch.ones_like(buf, dtype=torch.bool)
        outside[1 : batch + 1, 4 : view.shape[1] + 4] = False
        assert torch.all(buf[outside] == -7.0)


def test_the_kernels_refuse_shapes_they_cannot_index() -> None:
    if dot_module._native is None or native_variant() is None:
        pytest.skip("the native kernels do not run on this CPU")
    with pytest.raises(ValueError, match="n >= 2"):
        dot_module._native.forward(0, 0, 0, 0, 0, 0, 4, 1, 16, 1)


@pytest.mark.parametrize("native", [None, False])
def test_mismatched_shapes_are_an_error_naming_them(native: bool | None) -> None:
    for dense, vectors in [
        (torch.randn(4, 16), torch.randn(4, 3, 8)),  # widths differ
        (torch.randn(40, 16), torch.randn(3, 3, 16)),  # batches differ
        (torch.randn(4, 16), torch.randn(4, 48)),  # vectors not [B, n - 1, d]
        (torch.randn(4, 16), torch.randn(4, 0, 16)),  # no vectors: no pairs
    ]:
        with pytest.raises(ValueError, match=r"dense must be \[B, d\]"):
            dot_interaction(dense, vectors, native=native)


def test_the_model_traces_with_the_interaction_as_one_call() -> None:
    # TorchRec's train pipeline traces the model with torch.fx: the interaction is a leaf
    graph = torch.fx.symbolic_trace(DotInteraction()).graph
    calls = [n.target for n in graph.nodes if n.op == "call_function"]
    assert [getattr(c, "__name__", c) for c in calls] == ["dot_interaction"]


def test_the_native_backward_is_not_differentiated_twice(variant: str) -> None:
    dense, vectors, grad = _inputs(8, 4, 16)
    out = dot_interaction(dense, vectors, native=True)
    # its result would silently lack the kernels' own dependence on the inputs
    with pytest.raises(RuntimeError, match=r"not differentiable \(create_graph=True\)"):
        torch.autograd.grad(out, dense, grad, create_graph=True)


def test_torchs_path_trains_under_autocast() -> None:
    """Under bf16 autocast the dense vector comes out of the bottom MLP as bf16, so torch's
    path runs; its backward multiplied the bf16 gradient by the fp32 vectors it saved and
    failed ("expected scalar type BFloat16 but found Float"). Found by a review."""
    dense = torch.randn(4, 3, requires_grad=True)
    vectors = torch.randn(4, 2, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dot_interaction(dense.bfloat16(), vectors)
    out.float().sum().backward()
    assert dense.grad is not None and vectors.grad is not None
    assert vectors.grad.dtype == torch.float32

"""The native dot interaction kernels against torch's implementation, forward and backward."""

from __future__ import annotations

import platform

import pytest
import torch

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


def test_the_native_kernels_are_built_on_x86() -> None:
    # CI builds the extension (make setup); a silent fallback would leave it untested
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the kernels are x86-only")
    assert native_variant() in ("avx512", "avx2")


# batch not a multiple of the tile, d not a multiple of the register block, one pair only,
# two register blocks, and the default job's shapes
@pytest.mark.parametrize(
    ("batch", "n", "d"), [(37, 6, 5), (33, 3, 20), (17, 2, 16), (40, 9, 32), (2048, 40, 16)]
)
def test_native_equals_torch_forward_and_backward(variant: str, batch: int, n: int, d: int) -> None:
    dense, vectors, grad = _inputs(batch, n, d)
    for ours, theirs in zip(
        _both(dense, vectors, grad, native=True),
        _both(dense, vectors, grad, native=False),
        strict=True,
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_native_reads_strided_rows_and_a_strided_gradient(variant: str) -> None:
    # the dense vector a slice of a wider tensor, the vectors a slice of the stacked ones,
    # the gradient a slice of a wider one: the kernels take row strides, no copies needed
    dense_wide, stacked, grad_wide = _inputs(21, 9, 24)  # stacked: [21, 8, 24]
    dense = dense_wide[:, 3:11]
    vectors = stacked[:, 1:, :8]  # not row-contiguous inside: copied once
    grad = grad_wide[:, 2:]
    grad = grad[:, : 8 + 8 * 7 // 2]
    for ours, theirs in zip(
        _both(dense, vectors, grad, native=True),
        _both(dense, vectors, grad, native=False),
        strict=True,
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


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

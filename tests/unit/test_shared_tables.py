"""The FBGEMM kernel a shared table is re-declared into is the kernel FBGEMM builds for one
feature, and it computes what the shared-table kernel computes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
    BoundsCheckMode,
    EmbeddingLocation,
)
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torch.nn import ModuleList
from torchrec.distributed.batched_embedding_kernel import BatchedFusedEmbeddingBag
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.train import table_rows
from dist_train.train.bag_order import example_major_bags
from dist_train.train.shared_tables import (
    OneFeatureFusedEmbeddingBag,
    _as_one_feature,
    read_shared_tables_as_one_feature,
)
from tests.fused_kernels import fused_cpu_kernel, one_rank_group  # noqa: F401 (a fixture)

ROWS, DIM, FEATURES, BATCH = 1000, 8, 5, 16


def _kernel(features: int, optimizer: EmbOptimType) -> SplitTableBatchedEmbeddingBagsCodegen:
    return SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        feature_table_map=[0] * features,
        optimizer=optimizer,
        learning_rate=0.1,
    )


OPTIMIZERS = [
    EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    EmbOptimType.EXACT_SGD,
    EmbOptimType.EXACT_ADAGRAD,
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o.name)
def test_re_declared_kernel_equals_a_one_feature_kernel(optimizer: EmbOptimType) -> None:
    cut, fresh = _kernel(FEATURES, optimizer), _kernel(1, optimizer)
    _as_one_feature(cut)
    ours, theirs = dict(cut.named_buffers()), dict(fresh.named_buffers())
    assert ours.keys() == theirs.keys()
    for name, buffer in theirs.items():
        assert ours[name].shape == buffer.shape, name
        assert ours[name].dtype == buffer.dtype, name
        if buffer.numel() < ROWS:  # bookkeeping, not the weights or state themselves
            assert torch.equal(ours[name], buffer), name
    for name, value in vars(fresh).items():
        if name.startswith("_") or isinstance(value, torch.Tensor) or name == "uuid":
            continue
        assert vars(cut)[name] == value, name


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: o.name)
def test_example_major_bags_of_one_feature_train_as_the_shared_kernel(
    optimizer: EmbOptimType,
) -> None:
    shared, one = _kernel(FEATURES, optimizer), _kernel(FEATURES, optimizer)
    _as_one_feature(one)
    one.weights_host.data.copy_(shared.weights_host.data)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        lengths = torch.randint(0, 4, (FEATURES, BATCH), generator=gen)  # empty bags too
        ids = torch.randint(0, ROWS // 10, (int(lengths.sum()),), generator=gen)  # repeats
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.view(-1).cumsum(0)])
        grad = torch.randn(BATCH, FEATURES * DIM, generator=gen)
        expected = shared(ids, offsets)
        expected.backward(grad)
        bags = example_major_bags(lengths.view(-1), ids, BATCH)
        got = one(bags.values, bags.offsets)
        assert got.shape == (FEATURES * BATCH, DIM)
        torch.testing.assert_close(got.view(BATCH, FEATURES * DIM), expected)
        got.backward(grad.view(FEATURES * BATCH, DIM))
    torch.testing.assert_close(one.weights_host, shared.weights_host, rtol=0, atol=1e-6)
    for ours, theirs in zip(
        one.split_optimizer_states(), shared.split_optimizer_states(), strict=True
    ):
        torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-7)


def test_a_kernel_of_several_tables_is_refused() -> None:
    kernel = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(ROWS, DIM, EmbeddingLocation.HOST, ComputeDevice.CPU)] * 2,
        feature_table_map=[0, 0, 1],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    )
    with pytest.raises(ValueError, match="one table"):
        _as_one_feature(kernel)


def _one_value_a_bag_but_two(gen: torch.Generator) -> torch.Tensor:
    # as many values as bags, but not one each: the transpose must not apply
    lengths = torch.ones(FEATURES, BATCH, dtype=torch.int64)
    lengths[FEATURES - 1, 3], lengths[FEATURES - 1, 4] = 2, 0
    return lengths


BAG_LENGTHS = {
    "0-3": lambda gen: torch.randint(0, 4, (FEATURES, BATCH), generator=gen),
    "one value a bag": lambda gen: torch.ones(FEATURES, BATCH, dtype=torch.int64),
    "one a bag but two": _one_value_a_bag_but_two,
}


@pytest.mark.parametrize("lengths_of", BAG_LENGTHS.values(), ids=BAG_LENGTHS.keys())
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_example_major_bags_compiled_and_fbgemm_agree(
    dtype: torch.dtype, lengths_of: Callable[[torch.Generator], torch.Tensor]
) -> None:
    gen = torch.Generator().manual_seed(1)
    lengths = lengths_of(gen).to(dtype)
    ids = torch.randint(0, ROWS, (int(lengths.sum()),), generator=gen)
    compiled = example_major_bags(lengths.view(-1), ids, BATCH)  # CPU, no weights
    weights = torch.rand(ids.numel(), generator=gen)
    theirs = example_major_bags(lengths.view(-1), ids, BATCH, weights)  # FBGEMM's op
    assert torch.equal(compiled.offsets, theirs.offsets)
    assert torch.equal(compiled.values, theirs.values)
    assert torch.equal(compiled.bag_of_value, theirs.bag_of_value)
    # by definition: bag b x F + f holds feature f's ids of example b, in their order
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.view(-1).long().cumsum(0)])
    for f, b in ((0, 0), (FEATURES - 1, BATCH - 1), (2, 7)):
        bag = b * FEATURES + f
        got = compiled.values[compiled.offsets[bag] : compiled.offsets[bag + 1]]
        assert torch.equal(got, ids[starts[f * BATCH + b] : starts[f * BATCH + b + 1]])
        assert (
            compiled.bag_of_value[starts[f * BATCH + b] : starts[f * BATCH + b + 1]] == bag
        ).all()
    assert theirs.weights is not None
    assert torch.equal(theirs.weights.sort().values, weights.sort().values)


def test_example_major_bags_refuses_a_ragged_batch() -> None:
    with pytest.raises(ValueError, match="not 16 a feature"):
        example_major_bags(
            torch.ones(FEATURES * BATCH + 1, dtype=torch.int64), torch.arange(1), BATCH
        )


@pytest.mark.parametrize(
    "lengths", [[2, 1] + [1] * (FEATURES * BATCH - 2), [1] * (FEATURES * BATCH - 1) + [-1]]
)
def test_example_major_bags_refuse_lengths_that_do_not_count_the_ids(lengths: list[int]) -> None:
    """The compiled pass writes each id at its example's cursor: lengths summing past the ids,
    or a negative one, would read and write outside the arrays (numba checks no bounds)."""
    ids = torch.arange(FEATURES * BATCH - 2)  # fewer than the lengths count
    with pytest.raises(ValueError, match=r"bag lengths do not count their \d+ id\(s\)"):
        example_major_bags(torch.tensor(lengths), ids, BATCH)


@pytest.mark.parametrize("weighted", [False, True])
def test_example_major_bags_refuse_lengths_whose_sum_wraps_to_the_ids(weighted: bool) -> None:
    """Two lengths of 2^63 - 1 and a 3 sum to 1 at 64 bits: the count's check passed, and the
    pass wrote past its arrays; with weights FBGEMM's permute read past them (a helper's
    audit)."""
    lengths = torch.tensor([2**63 - 1, 2**63 - 1, 3])
    weights = torch.ones(1) if weighted else None
    with pytest.raises(ValueError, match=r"their 1 id\(s\): they sum to 18446744073709551617,"):
        example_major_bags(lengths, torch.arange(1), 3, weights)


def test_weighted_bags_whose_lengths_do_not_count_the_ids_are_refused() -> None:
    lengths = torch.ones(FEATURES * BATCH, dtype=torch.int64)
    lengths[-1] = 100_000
    ids = torch.arange(FEATURES * BATCH)
    with pytest.raises(ValueError, match=r"bag lengths do not count their \d+ id\(s\)"):
        example_major_bags(lengths, ids, BATCH, torch.ones(ids.numel()))


def _torchrec_kernel(features: list[str]) -> BatchedFusedEmbeddingBag:
    """TorchRec's fused CPU kernel of one ``ROWS x DIM`` table the ``features`` share."""
    return fused_cpu_kernel([("unified_0", ROWS, DIM, features)])


@pytest.mark.parametrize("bad_id", [ROWS, -1])
@pytest.mark.usefixtures("one_rank_group")
def test_the_converted_kernel_refuses_an_id_outside_its_rows(bad_id: int) -> None:
    features = ["a", "b", "c"]
    kernel = _torchrec_kernel(features)
    # TorchRec's default check (unless FBGEMM_TBE_BOUNDS_CHECK_MODE says otherwise) would
    # read and update row 0 in an outside id's place
    assert kernel.emb_module.bounds_check_mode_int != BoundsCheckMode.NONE.value
    assert read_shared_tables_as_one_feature(ModuleList([kernel])) == ["unified_0"]
    assert kernel.emb_module.bounds_check_mode_int == BoundsCheckMode.NONE.value
    # TorchRec's default kernel of a shared table runs the C lookup and update, where built
    assert isinstance(kernel, OneFeatureFusedEmbeddingBag)
    assert (kernel.table_rows is None) == (table_rows._native is None)

    good = torch.tensor([1, 2, ROWS - 1, 0, 5, 9])
    pooled = kernel(
        KeyedJaggedTensor.from_lengths_sync(features, good, torch.ones(6, dtype=torch.int64))
    )
    assert pooled.shape == (2, len(features) * DIM)
    pooled.sum().backward()
    weights = kernel.emb_module.weights_host.detach().clone()
    step = kernel.emb_module.step

    bad = good.clone()
    bad[4] = bad_id
    with pytest.raises(ValueError, match=rf"table unified_0: 1 id\(s\) .*\(first: {bad_id}\)"):
        kernel(KeyedJaggedTensor.from_lengths_sync(features, bad, torch.ones(6, dtype=torch.int64)))
    assert torch.equal(kernel.emb_module.weights_host, weights)  # nothing changed
    assert kernel.emb_module.step == step

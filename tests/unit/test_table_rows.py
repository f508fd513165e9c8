"""The C lookup and fused row-wise Adagrad update of a shared table (TableRows) compute what
FBGEMM's kernel of that table computes, on the same weights and state."""

from __future__ import annotations

import pytest
import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.train import table_rows
from dist_train.train.table_rows import TableRows, applies
from tests.fused_kernels import updated_at

ROWS, DIM, FEATURES, BATCH = 1000, 8, 5, 300

pytestmark = pytest.mark.skipif(
    table_rows._native is None, reason="the C extension was not built (no C compiler)"
)


def _kernel(
    features: int, dim: int = DIM, rows: int = ROWS, **options: object
) -> SplitTableBatchedEmbeddingBagsCodegen:
    kwargs: dict[str, object] = {"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD}
    kwargs.update(options)
    return SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        feature_table_map=[0] * features,
        learning_rate=0.1,
        **kwargs,  # type: ignore[arg-type]
    )


def _batch(
    gen: torch.Generator, batch: int = BATCH, rows: int = ROWS, max_length: int = 4
) -> KeyedJaggedTensor:
    lengths = torch.randint(0, max_length, (FEATURES * batch,), generator=gen)  # empty bags
    # a tenth of the rows, spread over the table (every thread's range of rows): repeats
    ids = torch.randint(0, max(1, rows // 10), (int(lengths.sum()),), generator=gen)
    ids = ids * 10 % rows
    keys = [f"f{i}" for i in range(FEATURES)]
    return KeyedJaggedTensor.from_lengths_sync(keys, ids, lengths)


@pytest.mark.parametrize(
    ("dim", "rows", "batch", "max_length"),
    [
        (DIM, ROWS, BATCH, 4),
        (20, ROWS, BATCH, 4),  # FBGEMM needs multiples of 4: not of 8 or 16 floats
        (DIM, 2, BATCH, 4),  # fewer rows than threads
        (DIM, ROWS, BATCH, 1),  # every bag empty
        (DIM, ROWS, 0, 4),  # no examples
        (DIM, ROWS, BATCH, 40),  # reads enough to be dealt to the rows' owners
    ],
    ids=["default", "dim_20", "two_rows", "empty_bags", "no_examples", "dealt"],
)
def test_lookup_and_update_are_fbgemms(dim: int, rows: int, batch: int, max_length: int) -> None:
    """Three steps of each on the same batches, at 3 threads: the pooled vectors of the same
    rows bit for bit, the rows and their Adagrad state up to the order and fusion of float
    operations."""
    theirs, ours = _kernel(FEATURES, dim, rows), _kernel(1, dim, rows)
    ours.weights_host.data.copy_(theirs.weights_host.data)
    table = TableRows(ours, ["t"], [FEATURES])
    gen = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for step in range(3):
            _one_step(theirs, table, gen, dim, rows, batch, max_length, step)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(ours.weights_host, theirs.weights_host, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.momentum1_host, theirs.momentum1_host, rtol=1e-5, atol=1e-7)
    assert ours.step == theirs.step == 3
    if batch and max_length > 1:
        assert not torch.equal(ours.weights_host, _kernel(1, dim, rows).weights_host)  # trained


def _one_step(
    theirs: SplitTableBatchedEmbeddingBagsCodegen,
    rows: TableRows,
    gen: torch.Generator,
    dim: int,
    num_rows: int,
    batch_size: int,
    max_length: int,
    step: int,
) -> None:
    batch = _batch(gen, batch_size, num_rows, max_length)
    grad = torch.randn(batch_size, FEATURES * dim, generator=gen)
    expected = theirs(batch.values(), batch.offsets())
    got = rows(batch)
    assert got.shape == (batch_size, FEATURES * dim)
    if step == 0:  # the same rows: the same sums
        assert torch.equal(got, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    expected.backward(grad)
    got.backward(grad)


def _rows() -> TableRows:
    return TableRows(_kernel(1), ["t"], [FEATURES])


@pytest.mark.parametrize("max_length", [4, 40], ids=["scanned", "dealt"])
def test_threads_do_not_change_the_result(max_length: int) -> None:
    gen = torch.Generator().manual_seed(1)
    batch = _batch(gen, max_length=max_length)
    assert table_rows._native is not None
    dealt = batch.values().numel() >= table_rows._native.DEAL_MIN_READS
    assert dealt == (max_length == 40)
    grad = torch.randn(BATCH, FEATURES * DIM, generator=gen)
    results = updated_at((1, 2, 3), _rows, batch, grad)
    for weights, state in results[1:]:
        assert torch.equal(weights, results[0][0]) and torch.equal(state, results[0][1])


def test_reads_dealt_to_one_owner_update_as_on_one_thread() -> None:
    """Every read in the first thread's rows (the other threads are dealt none), and a batch
    whose last bags hold most reads: the rows come out as on one thread."""
    gen = torch.Generator().manual_seed(3)
    lengths = torch.cat(
        [torch.ones(FEATURES * BATCH - 4, dtype=torch.int64), torch.full((4,), 5000)]
    )
    ids = torch.randint(0, ROWS // 8, (int(lengths.sum()),), generator=gen)
    batch = KeyedJaggedTensor.from_lengths_sync([f"f{i}" for i in range(FEATURES)], ids, lengths)
    grad = torch.randn(BATCH, FEATURES * DIM, generator=gen)
    assert table_rows._native is not None and ids.numel() >= table_rows._native.DEAL_MIN_READS
    (w1, s1), (w4, s4) = updated_at((1, 4), _rows, batch, grad)
    assert torch.equal(w1, w4) and torch.equal(s1, s4)
    assert int((s1 != 0).sum()) == int(ids.unique().numel())  # every row read was updated


def test_the_learning_rate_is_read_at_each_update() -> None:
    kernel = _kernel(1)
    rows = TableRows(kernel, ["t"], [FEATURES])
    batch = _batch(torch.Generator().manual_seed(2))
    kernel.set_learning_rate(0.0)
    before = kernel.weights_host.clone()
    rows(batch).sum().backward()
    assert torch.equal(kernel.weights_host, before)
    assert kernel.momentum1_host.sum() > 0  # the state still counts the gradients


@pytest.mark.parametrize("bad_id", [ROWS, -1])
def test_an_id_outside_the_table_is_refused_before_any_read(bad_id: int) -> None:
    kernel = _kernel(1)
    rows = TableRows(kernel, ["unified_0"], [FEATURES])
    batch = _batch(torch.Generator().manual_seed(3))
    values = batch.values().clone()
    values[7] = bad_id
    bad = KeyedJaggedTensor.from_lengths_sync(batch.keys(), values, batch.lengths())
    with pytest.raises(ValueError, match=rf"table unified_0: 1 id\(s\) .*\(first: {bad_id}\)"):
        rows(bad)
    assert kernel.step == 0


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": EmbOptimType.EXACT_SGD},
        {"optimizer": EmbOptimType.EXACT_ADAGRAD},
        {"weight_decay": 0.01},
        {"pooling_mode": PoolingMode.MEAN},
        {"gradient_clipping": True},
        {"max_norm": 1.0},
    ],
    ids=["sgd", "adagrad", "weight_decay", "mean", "clipping", "max_norm"],
)
def test_options_it_does_not_implement_keep_fbgemms_kernel(options: dict[str, object]) -> None:
    kernel = _kernel(1, **options)
    assert not applies(kernel)
    with pytest.raises(ValueError, match="does not implement"):
        TableRows(kernel, ["t"], [FEATURES])


def test_the_default_kernel_applies_up_to_max_rows_and_dim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert applies(_kernel(1))
    with monkeypatch.context() as m:
        m.setattr(table_rows, "MAX_ROWS", ROWS - 1)
        assert not applies(_kernel(1))
    monkeypatch.setattr(table_rows, "MAX_DIM", DIM - 1)
    assert not applies(_kernel(1))

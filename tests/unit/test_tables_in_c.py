"""A kernel of several tables (a rank's per-feature tables) run by the C lookup and update
(TableRows, run_tables_in_c) computes what FBGEMM's kernel of those tables computes."""

from __future__ import annotations

from pathlib import Path

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
from dist_train.train.lookups import lookup_modules
from dist_train.train.table_rows import TableRows
from dist_train.train.tables_in_c import TablesInCFusedEmbeddingBag, run_tables_in_c
from dist_train.train.trainer import Trainer
from tests.conftest import small_config
from tests.fused_kernels import (  # noqa: F401 (one_rank_group: a fixture)
    fused_cpu_kernel,
    one_rank_group,
    updated_at,
)

# rows x dim per table, and the table each feature reads (table b by two features); dims of
# 16 and 32 floats, as a hashing_trick job's features of one and two chunks, and one of 8
TABLES = [(500, 16), (1000, 32), (3, 8)]
NAMES = ["a", "b", "c"]
FEATURE_TABLE = [0, 1, 1, 2]
BATCH = 200

pytestmark = pytest.mark.skipif(
    table_rows._native is None, reason="the C extension was not built (no C compiler)"
)


def _fbgemm_kernel() -> SplitTableBatchedEmbeddingBagsCodegen:
    return SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(r, d, EmbeddingLocation.HOST, ComputeDevice.CPU) for r, d in TABLES],
        feature_table_map=FEATURE_TABLE,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1,
    )


def _batch(gen: torch.Generator, batch: int = BATCH) -> KeyedJaggedTensor:
    """Bags of 0-3 ids per feature, repeats among them, each id within its feature's table."""
    lengths = torch.randint(0, 4, (len(FEATURE_TABLE), batch), generator=gen)
    ids = []
    for f, table in enumerate(FEATURE_TABLE):
        rows = TABLES[table][0]
        n = int(lengths[f].sum())
        ids.append(torch.randint(0, max(1, rows // 4), (n,), generator=gen) * 4 % rows)
    keys = [f"f{f}" for f in range(len(FEATURE_TABLE))]
    return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(ids), lengths.view(-1))


def _width() -> int:
    return sum(TABLES[t][1] for t in FEATURE_TABLE)


@pytest.mark.parametrize("threads", [1, 3])
def test_several_tables_train_as_fbgemms_kernel(threads: int) -> None:
    """Three steps on the same batches: the pooled vectors of the same rows bit for bit, the
    rows and their Adagrad state up to the order and fusion of float operations."""
    theirs, ours = _fbgemm_kernel(), _fbgemm_kernel()
    ours.weights_host.data.copy_(theirs.weights_host.data)
    rows = TableRows(ours, NAMES)
    assert rows.width == _width() and rows.num_features == len(FEATURE_TABLE)
    gen = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(3):
            batch = _batch(gen)
            grad = torch.randn(BATCH, _width(), generator=gen)
            expected = theirs(batch.values(), batch.offsets())
            got = rows(batch)
            if step == 0:
                assert torch.equal(got, expected)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
            expected.backward(grad)
            got.backward(grad)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(ours.weights_host, theirs.weights_host, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.momentum1_host, theirs.momentum1_host, rtol=1e-5, atol=1e-7)
    assert not torch.equal(ours.weights_host, _fbgemm_kernel().weights_host)  # trained
    assert ours.step == theirs.step == 3


def test_tables_of_many_reads_update_alike_on_any_thread_count() -> None:
    """Every table dealt (thousands of reads a bag), of other dims and columns, one of fewer
    rows than threads: the rows and state come out the same to the bit on 1, 2 and 4 threads."""
    gen = torch.Generator().manual_seed(4)
    lengths = torch.randint(80, 120, (len(FEATURE_TABLE), BATCH), generator=gen)
    ids = [
        torch.randint(0, TABLES[t][0], (int(lengths[f].sum()),), generator=gen)
        for f, t in enumerate(FEATURE_TABLE)
    ]
    keys = [f"f{f}" for f in range(len(FEATURE_TABLE))]
    batch = KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(ids), lengths.view(-1))
    assert table_rows._native is not None
    reads = [
        int(lengths[[f for f, t in enumerate(FEATURE_TABLE) if t == table]].sum())
        for table in range(3)
    ]
    assert min(reads) >= table_rows._native.DEAL_MIN_READS
    grad = torch.randn(BATCH, _width(), generator=gen)
    # table c has 3 rows: at 4 threads, 3 of them own one each
    results = updated_at((1, 2, 4), lambda: TableRows(_fbgemm_kernel(), NAMES), batch, grad)
    for weights, state in results[1:]:
        assert torch.equal(weights, results[0][0]) and torch.equal(state, results[0][1])
    assert bool((results[0][1] != 0).all())  # every row of every table was read and updated


def test_names_and_feature_counts_must_match_the_tables() -> None:
    with pytest.raises(ValueError, match="3 tables in the kernel, 2 names"):
        TableRows(_fbgemm_kernel(), NAMES[:2])


def _torchrec_kernel() -> BatchedFusedEmbeddingBag:
    """TorchRec's fused CPU kernel of TABLES, table t read by its features of FEATURE_TABLE."""
    features = [
        [f"f{f}" for f, table in enumerate(FEATURE_TABLE) if table == t] for t in range(len(TABLES))
    ]
    return fused_cpu_kernel(
        [(name, rows, dim, f) for name, (rows, dim), f in zip(NAMES, TABLES, features, strict=True)]
    )


@pytest.mark.parametrize("bad_id", [1000, -1])
@pytest.mark.usefixtures("one_rank_group")
def test_the_converted_kernel_trains_as_torchrecs_and_refuses_an_id_outside(
    bad_id: int,
) -> None:
    theirs, kernel = _torchrec_kernel(), _torchrec_kernel()
    kernel.emb_module.weights_host.data.copy_(theirs.emb_module.weights_host.data)
    assert kernel.emb_module.bounds_check_mode_int != BoundsCheckMode.NONE.value
    assert run_tables_in_c(ModuleList([kernel])) == NAMES
    assert isinstance(kernel, TablesInCFusedEmbeddingBag)
    assert kernel.emb_module.bounds_check_mode_int == BoundsCheckMode.NONE.value
    assert run_tables_in_c(ModuleList([kernel])) == []  # converted once

    gen = torch.Generator().manual_seed(1)
    batch = _batch(gen)
    grad = torch.randn(BATCH, _width(), generator=gen)
    expected, got = theirs(batch), kernel(batch)
    assert torch.equal(got, expected)
    expected.backward(grad)
    got.backward(grad)
    weights = kernel.emb_module.weights_host
    torch.testing.assert_close(weights, theirs.emb_module.weights_host, rtol=0, atol=1e-6)

    # per-id weights, which TorchRec hands a kernel of unweighted tables too: FBGEMM's kernel
    # takes them, as in the unconverted kernel
    weighted = KeyedJaggedTensor.from_lengths_sync(
        batch.keys(), batch.values(), batch.lengths(), torch.rand(batch.values().numel())
    )
    with torch.no_grad():
        torch.testing.assert_close(kernel(weighted), theirs(weighted), rtol=0, atol=1e-6)

    # an id outside table b (1,000 rows), read by feature f2: refused, naming b, before any
    # read or write
    values = batch.values().clone()
    offsets = batch.offsets()
    values[int(offsets[2 * BATCH])] = bad_id  # the first id of feature f2
    bad = KeyedJaggedTensor.from_lengths_sync(batch.keys(), values, batch.lengths())
    before, step = weights.detach().clone(), kernel.emb_module.step
    with pytest.raises(ValueError, match=rf"table b: 1 id\(s\) .*\(first: {bad_id}\)"):
        kernel(bad)
    assert torch.equal(weights, before) and kernel.emb_module.step == step


@pytest.mark.parametrize(("kernels", "in_c"), [("auto", True), ("fbgemm", False)])
@pytest.mark.usefixtures("one_rank_group")
def test_sharding_kernels_chooses_the_per_feature_tables_kernel(
    tmp_path: Path, kernels: str, in_c: bool
) -> None:
    overrides = ["embedding.kind=hashing_trick", "sharding.type=table_wise"]
    cfg = small_config(tmp_path, [*overrides, f"sharding.kernels={kernels}"])
    trainer = Trainer.build(cfg)
    fused = [m for m in lookup_modules(trainer.model) if isinstance(m, BatchedFusedEmbeddingBag)]
    assert fused
    assert all(isinstance(m, TablesInCFusedEmbeddingBag) == in_c for m in fused)


@pytest.mark.parametrize(
    "offsets",
    [
        [1, 1, 2, 2, 2, 2, 2, 2, 2],  # not from 0
        [0, 2, 1, 2, 2, 2, 2, 2, 2],  # falling
        [0, 1, 1, 1, 1, 1, 1, 1, 1 << 26],  # past the ids
        [0, 1, 1, 1, 1, 1, 1, 1, 1],  # short of them
    ],
)
def test_bags_whose_offsets_do_not_span_the_ids_are_refused_before_any_read(
    offsets: list[int],
) -> None:
    """A caller-built KJT may hold any offsets; the C lookup and update read ids between
    them, so offsets that fall or run past the ids would read outside the ids' memory."""
    rows = TableRows(_fbgemm_kernel(), NAMES)
    ids = torch.tensor([1, 2])
    bad = torch.tensor(offsets)
    assert bad.numel() == len(FEATURE_TABLE) * 2 + 1  # 2 examples
    features = KeyedJaggedTensor(
        keys=[f"f{f}" for f in range(len(FEATURE_TABLE))], values=ids, offsets=bad
    )
    with pytest.raises(ValueError, match=r"_table_rows\.pool: the bags' offsets"):
        rows(features)
    assert table_rows._native is not None
    grad = torch.zeros(2, _width())
    with pytest.raises(ValueError, match=r"_table_rows\.update: the bags' offsets"):
        table_rows._native.update(
            ids.data_ptr(), ids.numel(), bad.data_ptr(), rows.tables.data_ptr(), len(NAMES),
            rows.num_features, 2, grad.data_ptr(), rows.width,
            rows.tbe.weights_host.data_ptr(), rows.tbe.momentum1_host.data_ptr(), 0.1, 1e-8,
            rows.slot.data_ptr(), rows.slot.numel(), rows.scratch.data_ptr(), 0, 1,
        )  # fmt: skip


@pytest.mark.parametrize(
    "offsets",
    [
        [1, 1, 2, 2, 2, 2, 2, 2, 2],  # not from 0
        [0, 2, 1, 2, 2, 2, 2, 2, 2],  # falling
        [0, 1, 1, 1, 1, 1, 1, 1, 100_000],  # past the ids
    ],
)
@pytest.mark.usefixtures("one_rank_group")
def test_weighted_bags_whose_offsets_do_not_span_the_ids_are_refused(offsets: list[int]) -> None:
    """Per-id weights go to FBGEMM's kernel, whose bounds check is off in a converted
    kernel: it read the memory past the ids as ids (a helper's audit)."""
    kernel = _torchrec_kernel()
    run_tables_in_c(ModuleList([kernel]))
    features = KeyedJaggedTensor(
        keys=[f"f{f}" for f in range(len(FEATURE_TABLE))],
        values=torch.tensor([1, 2]),
        offsets=torch.tensor(offsets),
        weights=torch.ones(2),
    )
    with pytest.raises(ValueError, match=r"bag (offsets|lengths) do not"):
        kernel(features)

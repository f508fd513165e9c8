"""The roofline: its collective term (the fewer bytes of pooled and unpooled lookups) and
its dense terms."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from dist_train.bench.roofline import (
    MIN_COPY_BYTES,
    MachineRates,
    all_to_all_bytes,
    dense_floor,
    embedding_bytes,
    step_floor,
    working_set_bytes,
)
from dist_train.data.listing import resolve_files
from planners.cost_model import distinct_rows
from planners.types import OptimizerState, TableLoad, Workload


def _workload(table: TableLoad, skew: float) -> Workload:
    state = OptimizerState.of("rowwise_adagrad", "cpu")
    return Workload((table,), 1000, state, 0, 0, id_skew=skew)


def test_a_table_of_few_hot_rows_sends_each_distinct_row_once() -> None:
    # 1000 examples x 20 ids over 100 rows: at most 100 rows cross, not 1000 x 20 ids and
    # 1000 pooled vectors each way
    table = TableLoad("t", rows=100, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    workload = _workload(table, 1.1)
    distinct = distinct_rows(table, workload)
    assert distinct <= 100
    assert all_to_all_bytes(table, workload, distinct) == pytest.approx(distinct * (8 + 2 * 16 * 4))


def test_a_table_of_cold_multi_hot_bags_sends_ids_and_pooled_vectors() -> None:
    # 20 uniform ids a bag over 10^9 rows: nearly every id is its own row, so one pooled
    # vector and its gradient a bag beat 20 rows each way
    table = TableLoad("t", rows=10**9, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    workload = _workload(table, 0.0)
    assert all_to_all_bytes(table, workload, distinct_rows(table, workload)) == pytest.approx(
        1000 * (20 * 8 + 2 * 16 * 4)
    )


def test_the_dense_floor_is_the_terms_a_step_without_embeddings_pays() -> None:
    table = TableLoad("t", rows=10**6, dim=16, bags_per_sample=26, ids_per_sample=26.0)
    workload = Workload(
        (table,),
        2048,
        OptimizerState.of("rowwise_adagrad", "cpu"),
        dense_parameters=100_000,
        dense_optimizer_slots=1,
        interaction_elements_per_sample=27 * 27 * 16,
    )
    rates = MachineRates(20e9, 100e9, 2e9, 2e9)
    terms = step_floor(workload, 2, rates)
    dense = dense_floor(terms)
    # the flops (matmuls and the interaction), the optimizer's bytes and DDP's all-reduce
    flops = 6.0 * 100_000 * 2048 + 6.0 * 2048 * 27 * 27 * 16
    assert terms["dense_flops"] == pytest.approx(flops / 100e9)
    # Adagrad reads the weight, its gradient and state and writes the weight and state: 20
    # bytes a parameter at copy bandwidth; DDP's ring all-reduce moves 2 (n - 1) / n of
    # the fp32 gradients, at 2 ranks half
    assert terms["dense_update"] == pytest.approx(100_000 * 20 / 20e9)
    assert terms["all_reduce"] == pytest.approx(2 * 100_000 * 4 * 0.5 / 2e9)
    assert dense == pytest.approx(
        terms["dense_flops"] + terms["dense_update"] + terms["all_reduce"]
    )
    assert 0 < dense < terms["floor"]  # the embeddings' bytes and exchanges are the rest
    assert terms["floor"] - dense == pytest.approx(terms["embedding_bytes"] + terms["all_to_all"])


def test_the_floor_charges_the_dot_interaction_its_distinct_pairs_only() -> None:
    """DLRM's dot outputs n (n - 1) / 2 products of n vectors: the floor charges those, the
    planner's estimate the n^2 its batched product computes."""
    from dist_train.config.load import load_config
    from dist_train.embedding.layout import build_layout
    from dist_train.models import create_model

    cfg = load_config()
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    model = create_model(layout, len(cfg.data.resolved_dense_columns()), cfg.model)
    n, d = model.num_vectors + 1, model.dim
    assert model.interaction_elements_per_sample == n * n * d
    assert model.interaction_least_elements_per_sample == n * (n - 1) // 2 * d
    table = TableLoad("t", rows=10**6, dim=16, bags_per_sample=26, ids_per_sample=26.0)
    state = OptimizerState.of("rowwise_adagrad", "cpu")
    least = n * (n - 1) // 2 * d
    workload = Workload(
        (table,), 2048, state, 100_000, 1, n * n * d, interaction_least_elements_per_sample=least
    )
    rates = MachineRates(20e9, 100e9, 2e9, 2e9)
    flops = 6.0 * 100_000 * 2048 + 6.0 * 2048 * n * (n - 1) // 2 * d
    assert step_floor(workload, 1, rates)["dense_flops"] == pytest.approx(flops / 100e9)


def test_the_floor_reads_every_id_of_multi_hot_features(small_cfg, small_data) -> None:  # type: ignore[no-untyped-def]
    from dist_train.bench.train import ids_per_feature

    ids = ids_per_feature(small_cfg, str(small_data.train_dir))
    assert set(ids) == {"C1", "C2", "C3", "C4"}
    assert ids["C4"] > 2.0  # the multi-hot column: 3 a row on average (Poisson + 1)
    assert all(0.9 < ids[f] <= 1.0 for f in ("C1", "C2", "C3"))  # scalars, some null


def test_a_feature_null_in_every_row_is_charged_under_one_id(
    small_cfg, small_data, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Left out, a feature takes the pooling factors' default of one id a row."""
    import pyarrow as pa

    from dist_train.bench.train import ids_per_feature

    file = resolve_files(str(small_data.train_dir))[0]
    table = pq.read_table(file)
    at = table.schema.get_field_index("C1")
    nulls = pa.nulls(table.num_rows, table.schema.field("C1").type)
    (tmp_path / "nulls").mkdir()
    pq.write_table(table.set_column(at, "C1", nulls), tmp_path / "nulls" / "part.parquet")
    ids = ids_per_feature(small_cfg, str(tmp_path / "nulls"))
    assert 0 < ids["C1"] <= 1 / table.num_rows
    assert 0.9 < ids["C2"] <= 1.0


def test_the_update_moves_each_distinct_row_once_and_reads_every_id_forward() -> None:
    """Row-wise Adagrad sums a row's gradients, then reads and writes the row and its
    accumulator once: 1000 ids over 10 distinct rows update 10 rows, not 1000."""
    forward, backward = embedding_bytes(ids=1000, bags=100, dim=16, distinct=10)
    assert forward == (1000 + 100) * 16 * 4  # every id's row read, every bag written
    assert backward == 100 * 16 * 4 + 10 * (2 * 16 + 2) * 4  # bags' gradients, rows once


@pytest.mark.parametrize(("dense", "slots", "per_parameter"), [("sgd", 0, 12), ("adam", 2, 28)])
def test_the_dense_update_moves_its_optimizers_state(
    dense: str, slots: int, per_parameter: int
) -> None:
    """SGD reads a weight and its gradient and writes the weight; Adam reads and writes
    two moments besides: not Adagrad's 20 bytes a parameter."""
    table = TableLoad("t", rows=10**6, dim=16, bags_per_sample=1, ids_per_sample=1.0)
    workload = Workload((table,), 2048, OptimizerState.of("rowwise_adagrad", "cpu"), 100_000, slots)
    terms = step_floor(workload, 1, MachineRates(20e9, 100e9, 2e9, 2e9))
    assert terms["dense_update"] == pytest.approx(100_000 * per_parameter / 20e9), dense


@pytest.mark.parametrize(("optimizer", "state"), [("sgd", 0), ("adam", 2 * 16 * 4)])
def test_the_tables_update_moves_its_optimizers_state(optimizer: str, state: int) -> None:
    """A distinct row's update reads and writes its state: SGD has none, Adam two moments
    an element, where row-wise Adagrad has one float a row."""
    table = TableLoad("t", rows=10**6, dim=16, bags_per_sample=1, ids_per_sample=1.0)
    rates = MachineRates(20e9, 100e9, 2e9, 2e9)
    workload = Workload((table,), 1000, OptimizerState.of(optimizer, "cuda"), 0, 0)
    terms = step_floor(workload, 1, rates, {"t": 500.0})
    forward, backward = embedding_bytes(1000, 1000, 16, 500.0, state)
    assert backward == 1000 * 16 * 4 + 500 * 2 * (16 * 4 + state)
    assert terms["embedding_bytes"] == pytest.approx((forward + backward) / 20e9)


def test_the_floor_takes_measured_distinct_rows_over_the_planners_estimate() -> None:
    table = TableLoad("t", rows=10**6, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    workload = _workload(table, 1.1)
    rates = MachineRates(20e9, 100e9, 2e9, 2e9)
    estimated = step_floor(workload, 2, rates)
    assert step_floor(workload, 2, rates, {"other": 5.0}) == estimated  # not this table's
    few = step_floor(workload, 2, rates, {"t": 5.0})
    _, backward = embedding_bytes(1000 * 20, 1000, 16, 5.0)
    forward, _ = embedding_bytes(1000 * 20, 1000, 16, 5.0)
    assert few["embedding_bytes"] == pytest.approx((forward + backward) / 20e9)
    assert few["all_to_all"] == pytest.approx(5.0 * (8 + 2 * 16 * 4) / 2 / 2e9)
    assert few["floor"] < estimated["floor"]
    # at 2 ranks a rank updates its share of the rows both batches read, fewer than its
    # batch's own; the all-to-all still carries its batch's distinct rows
    shared = step_floor(workload, 2, rates, {"t": 5.0}, {"t": 3.0})
    _, fewer = embedding_bytes(1000 * 20, 1000, 16, 3.0)
    assert shared["embedding_bytes"] == pytest.approx((forward + fewer) / 20e9)
    assert shared["all_to_all"] == few["all_to_all"]


def test_the_copy_rate_is_measured_over_a_ranks_share_of_the_tables() -> None:
    """A 19 MB table copies about twice as fast as 256 MiB (cache): at memory's rate the
    floor's lookups took longer than a plain embedding_bag of the batch."""
    table = TableLoad("t", rows=300_000, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    workload = _workload(table, 1.1)
    held = table.weight_bytes + workload.optimizer.bytes_for(table.rows, table.dim)
    assert working_set_bytes(workload, 1) == held
    assert working_set_bytes(workload, 4) == held // 4
    tiny = _workload(TableLoad("t", 10, 4, 1, 1.0), 1.1)
    assert working_set_bytes(tiny, 1) == 2 * MIN_COPY_BYTES


def test_distinct_rows_per_batch_counts_a_batchs_distinct_rows_per_table(
    small_cfg, small_data
) -> None:  # type: ignore[no-untyped-def]
    from dist_train.bench.train import FLOOR_SAMPLE_ROWS, _floor_sample, distinct_rows_per_batch

    cfg = small_cfg.model_copy(
        update={"train": small_cfg.train.model_copy(update={"batch_size": 64})}
    )
    got = distinct_rows_per_batch(cfg, str(small_data.train_dir))
    builder, table = _floor_sample(cfg, str(small_data.train_dir))
    # the sample's first rows span the files (it read only the first)
    total = sum(
        pq.ParquetFile(f).metadata.num_rows for f in resolve_files(str(small_data.train_dir))
    )
    first = pq.ParquetFile(resolve_files(str(small_data.train_dir))[0]).metadata.num_rows
    assert first < total and table.num_rows == min(FLOOR_SAMPLE_ROWS, total)
    # two ranks' batches together: each rank's share of their distinct rows, fewer than
    # one batch's own and at least half of them
    pair = distinct_rows_per_batch(cfg, str(small_data.train_dir), world=2)
    assert all(got[name] / 2 <= pair[name] < got[name] for name in got)
    # more ranks' batches than the data holds: its rows over the batches they make (the
    # window's distinct rows were divided by every rank asked)
    many = distinct_rows_per_batch(cfg, str(small_data.train_dir), world=10_000)
    _, everything = _floor_sample(cfg, str(small_data.train_dir), 10_000 * 64)
    sparse = builder.build(everything).sparse
    for name in got:
        keys = [k.key for k in builder.layout.keys if k.table == name]
        seen = torch.cat([sparse[k].values() for k in keys]).unique().numel()
        assert many[name] == pytest.approx(seen / (everything.num_rows / 64))
    assert set(got) == {t.name for t in builder.layout.tables}
    per_batch: dict[str, list[int]] = {name: [] for name in got}
    for start in range(0, table.num_rows - 63, 64):  # whole batches only
        sparse = builder.build(table.slice(start, 64)).sparse
        rows: dict[str, set[int]] = {name: set() for name in got}
        for key in builder.layout.keys:
            rows[key.table].update(sparse[key.key].values().tolist())
        for name, seen in rows.items():
            per_batch[name].append(len(seen))
    for name, counts in per_batch.items():
        assert got[name] == pytest.approx(sum(counts) / len(counts))
        ids = sum(
            len(builder.build(table.slice(0, 64)).sparse[k.key].values())
            for k in builder.layout.keys
            if k.table == name
        )
        assert 0 < got[name] <= ids


@pytest.mark.usefixtures("one_rank")
def test_the_peers_pipeline_decodes_each_row_group_once(small_cfg, small_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The peers' batches are the file's rows in order, cut into batches across row groups
    as ours are, each row group checked and decoded once (it was once a batch, 2-7% of the
    peers' end-to-end step in conversion granularity)."""
    from dist_train.bench.peers import plain_parquet_batches
    from dist_train.bench.train import _builder

    builder = _builder(small_cfg)
    path = str(small_data.train_dir)
    decoded = []
    monkeypatch.setattr(
        builder, "decode", lambda t, s="": decoded.append(t) or type(builder).decode(builder, t, s)
    )
    batches = list(plain_parquet_batches(path, builder, 300))
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in resolve_files(path))
    assert len(decoded) == groups
    whole = pq.ParquetDataset(path).read(columns=builder.columns)
    assert len(batches) == whole.num_rows // 300
    for i in (0, len(batches) // 2, len(batches) - 1):
        expected = builder.build(whole.slice(i * 300, 300))
        assert torch.equal(batches[i].labels, expected.labels)
        assert torch.equal(batches[i].sparse.values(), expected.sparse.values())

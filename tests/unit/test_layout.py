"""Layout: KJT keys/lengths/values for scalar, multi-hot and null inputs; output dimensions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torchrec import EmbeddingBagCollection

from dist_train.config.schema import EmbeddingConfig, FeatureConfig, ModelConfig
from dist_train.data.batch import BadInputError, BatchBuilder
from dist_train.embedding.hashing import fingerprint_ints, fingerprint_strings, salted_rows
from dist_train.embedding.layout import build_layout
from dist_train.models.dlrm import DLRM

FEATURES = [
    FeatureConfig(name="user", chunks=2, cardinality=50),  # scalar int with a null
    FeatureConfig(name="tags", chunks=3, cardinality=50),  # multi-hot int list
    FeatureConfig(name="city", chunks=1, cardinality=50),  # scalar string
]


def _table() -> pa.Table:
    return pa.table(
        {
            "label": pa.array([1, 0, 1], pa.int8()),
            "I1": pa.array([1.0, None, float("nan")], pa.float32()),
            "user": pa.array([7, None, 42], pa.int64()),
            "tags": pa.array([[1, 2, 3], None, [4, None, 5]], pa.list_(pa.int64())),
            "city": pa.array(["paris", "rome", None]),
        }
    )


def _builder(kind: str = "unified", num_tables: int = 1) -> BatchBuilder:
    emb = EmbeddingConfig(kind=kind, num_rows=997, dim=4, num_tables=num_tables)
    layout = build_layout(emb, FEATURES, seed=0)
    return BatchBuilder(layout, FEATURES, ["I1"], "label", "none")


def test_keys_lengths_values_scalar_multihot_null() -> None:
    b = _builder()
    kjt = b.build(_table()).sparse
    assert kjt.keys() == ["user__0", "user__1", "tags__0", "tags__1", "tags__2", "city__0"]
    per_key = kjt.to_dict()
    for j in range(2):
        assert per_key[f"user__{j}"].lengths().tolist() == [1, 0, 1]  # null scalar: empty bag
    for j in range(3):
        # null list: empty bag; null element inside a list: dropped
        assert per_key[f"tags__{j}"].lengths().tolist() == [3, 0, 2]
    assert per_key["city__0"].lengths().tolist() == [1, 1, 0]

    user_keys = b.layout.keys_of("user")
    expect = salted_rows(fingerprint_ints(np.array([7, 42])), user_keys[1].salt, 997)
    assert per_key["user__1"].values().tolist() == expect.tolist()
    tags_keys = b.layout.keys_of("tags")
    expect = salted_rows(fingerprint_ints(np.array([1, 2, 3, 4, 5])), tags_keys[2].salt, 997)
    assert per_key["tags__2"].values().tolist() == expect.tolist()
    city = b.layout.keys_of("city")[0]
    expect = salted_rows(fingerprint_strings(pa.array(["paris", "rome"])), city.salt, 997)
    assert per_key["city__0"].values().tolist() == expect.tolist()
    # Chunks of one feature use different salts, so usually different rows.
    assert per_key["tags__0"].values().tolist() != per_key["tags__1"].values().tolist()


def test_dense_nulls_and_nan_become_zero_labels_float() -> None:
    batch = _builder().build(_table())
    assert batch.dense[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("kind", ["unified", "collisionless", "hashing_trick"])
def test_output_dims_are_chunks_times_dim(kind: str) -> None:
    b = _builder(kind)
    layout = b.layout
    table = _table().set_column(4, "city", pa.array([3, 4, None], pa.int64()))
    ebc = EmbeddingBagCollection(tables=layout.embedding_bag_configs())
    pooled = ebc(b.build(table).sparse).to_dict()
    per_feature = {
        f.name: sum(pooled[k.key].shape[1] for k in layout.keys_of(f.name)) for f in FEATURES
    }
    assert per_feature == {"user": 2 * 4, "tags": 3 * 4, "city": 1 * 4}
    assert layout.num_vectors == 6
    model = DLRM(layout, 1, ModelConfig(), embedding_device="cpu")
    batch = b.build(table)
    assert model(batch.dense, batch.sparse).shape == (3,)


def test_collisionless_rejects_string_ids() -> None:
    with pytest.raises(BadInputError, match="'city' holds string; the collisionless"):
        _builder("collisionless").build(_table(), "f.parquet")


def test_unified_one_table_and_round_robin_subtables() -> None:
    one = _builder("unified", 1).layout
    assert [t.name for t in one.tables] == ["unified_0"]
    assert one.tables[0].num_rows == 997 and len(one.tables[0].keys) == 6
    three = _builder("unified", 3).layout
    assert [t.num_rows for t in three.tables] == [333, 332, 332]  # 997 rows split
    assert [k.table for k in three.keys] == ["unified_0", "unified_1", "unified_2"] * 2
    assert three.num_parameters == one.num_parameters


def test_baseline_parameter_budgets() -> None:
    hashing = _builder("hashing_trick").layout
    assert [t.dim for t in hashing.tables] == [8, 12, 4]
    # 997 rows over 6 chunks: 166 each, and the row left over to the first table of one
    # chunk; the unified table's 997 x 4 parameters, as the budget says
    assert [t.num_rows for t in hashing.tables] == [166, 166, 167]
    assert hashing.num_parameters == _builder("unified").layout.num_parameters == 997 * 4
    exact = _builder("collisionless").layout
    assert [(t.num_rows, t.dim) for t in exact.tables] == [(50, 8), (50, 12), (50, 4)]


def test_collisionless_out_of_range_id_names_column() -> None:
    table = _table().set_column(2, "user", pa.array([7, None, 50], pa.int64()))
    table = table.set_column(4, "city", pa.array([3, 4, None], pa.int64()))
    with pytest.raises(BadInputError, match=r"'user'.*id 50 outside"):
        _builder("collisionless").build(table, "file.parquet (row group 0)")


def test_float_categorical_column_is_rejected_with_its_name() -> None:
    table = _table().set_column(2, "user", pa.array([7.0, None, 4.0], pa.float64()))
    with pytest.raises(BadInputError, match=r"'user'.*integers or strings"):
        _builder().build(table)


def test_a_fixed_size_list_column_is_refused_with_the_cast_that_reads_it() -> None:
    fixed = pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.int64(), 2))
    table = _table().set_column(2, "user", fixed)
    with pytest.raises(BadInputError, match=r"'user'.*large_list of them\), got fixed_size_list"):
        _builder().build(table)
    with pytest.raises(BadInputError, match=r"cast the column to list"):
        _builder().build(table)
    cast = _table().set_column(2, "user", fixed.cast(pa.list_(pa.int64())))
    assert _builder().build(cast).labels.shape == (3,)


def test_missing_column_is_named() -> None:
    with pytest.raises(BadInputError, match=r"missing column 'city' \(the ids of feature city;"):
        _builder().build(_table().drop_columns(["city"]), "part-0.parquet (row group 3)")


@pytest.mark.parametrize("interaction", ["dot", "concat"])
def test_dlrm_interactions_shapes_and_gradients(interaction: str) -> None:
    b = _builder("unified", 2)
    table = _table()
    model = DLRM(b.layout, 1, ModelConfig(interaction=interaction), embedding_device="cpu")
    batch = b.build(table)
    logits = model(batch.dense, batch.sparse)
    assert logits.shape == (3,)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

"""Decoded rows and the compiled kernels: the same batches as plain per-row Python.

- the hash/range-reduction kernel against Python integer arithmetic (incl. huge tables);
- ``BatchBuilder.to_batch(decode(...))`` against a per-row reference on awkward Arrow input
  (nulls, null lists owning values, null list elements, sliced arrays, dictionary strings);
- ``BatchBuilder.stream`` (decoded rows sliced, concatenated and shuffled) against building
  each batch of ``iter_tables`` (arrow) directly, over files with several row groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.config.schema import EmbeddingConfig, FeatureConfig
from dist_train.data.batch import Batch, BatchBuilder, categorical_ids
from dist_train.data.listing import list_row_groups
from dist_train.data.rows import Rows
from dist_train.data.stream import iter_tables
from dist_train.embedding.hashing import make_salt, salted_hash, salted_rows
from dist_train.embedding.layout import build_layout

_MASK = (1 << 64) - 1


def _fmix(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK
    x ^= x >> 33
    x = (x * 0xC4CEB93FE53E4A53) & _MASK
    return x ^ (x >> 33)


def _py_hash(fp: int, salt: int) -> int:
    rot = ((salt << 31) | (salt >> 33)) & _MASK
    return _fmix((_fmix(fp ^ salt) + rot) & _MASK)


@pytest.mark.parametrize("num_rows", [1, 2, 3, 997, 1 << 20, (1 << 32) + 15, (1 << 62) + 1])
def test_kernel_matches_python_integers(num_rows: int) -> None:
    rng = np.random.default_rng(num_rows % 1000)
    fps = np.concatenate(
        [
            np.array([0, 1, _MASK, _MASK - 1, 1 << 63], dtype=np.uint64),
            rng.integers(0, 1 << 64, 2000, dtype=np.uint64, endpoint=False),
        ]
    )
    salt = make_salt("C9", 2, seed=7)
    hashed = salted_hash(fps, salt)
    rows = salted_rows(fps, salt, num_rows)
    for fp, h, r in zip(fps.tolist(), hashed.tolist(), rows.tolist(), strict=True):
        assert h == _py_hash(fp, salt)
        assert r == _py_hash(fp, salt) % num_rows


FEATURES = [
    FeatureConfig(name="user", chunks=2),  # scalar int with nulls
    FeatureConfig(name="tags", chunks=3),  # int lists: null lists, null elements
    FeatureConfig(name="city", chunks=1),  # strings (plain or dictionary) with nulls
]


def _builder() -> BatchBuilder:
    layout = build_layout(EmbeddingConfig(num_rows=1009, dim=4), FEATURES, seed=5)
    return BatchBuilder(layout, FEATURES, ["I1", "I2"], "label", "log1p")


def _awkward_table(dictionary: bool) -> pa.Table:
    # A null list that owns values (offsets 3..5 under a null slot) is valid Arrow.
    tags = pa.ListArray.from_arrays(
        pa.array([0, 3, 5, 5, 7, 8], pa.int32()),
        pa.array([1, 2, 3, 9, 9, 4, None, 5], pa.int64()),
        mask=pa.array([False, True, False, False, False]),
    )
    city = pa.array(["paris", "rome", None, "paris", "oslo"])
    if dictionary:
        city = city.dictionary_encode()
    table = pa.table(
        {
            "label": pa.array([1, 0, 1, 1, 0], pa.int8()),
            "I1": pa.array([1.0, None, float("inf"), 3.0, -2.0], pa.float32()),
            "I2": pa.array([5, 6, None, 8, 9], pa.int32()),
            "user": pa.array([7, None, 42, -3, None], pa.int64()),
            "tags": tags,
            "city": city,
        }
    )
    return pa.concat_tables([table, table.slice(1, 3)])  # two chunks, the second sliced


def _reference(b: BatchBuilder, table: pa.Table) -> tuple[list[list[int]], list[int]]:
    """Per-key values and lengths, computed row by row in Python."""
    data = table.to_pylist()
    values: list[list[int]] = []
    lengths: list[int] = []
    for key in b.layout.keys:
        column = next(f.source_column for f in FEATURES if f.name == key.feature)
        out: list[int] = []
        for row in data:
            raw = row[column]
            items = raw if isinstance(raw, list) else [] if raw is None else [raw]
            items = [v for v in items if v is not None]
            lengths.append(len(items))
            for v in items:
                fp = xxhash.xxh3_64_intdigest(v.encode()) if isinstance(v, str) else v & _MASK
                assert key.salt is not None
                out.append(_py_hash(fp, key.salt) % key.num_rows)
        values.append(out)
    return values, lengths


@pytest.mark.parametrize("dictionary", [False, True])
def test_batch_matches_row_by_row_reference(dictionary: bool) -> None:
    b = _builder()
    table = _awkward_table(dictionary)
    batch = b.build(table, "t.parquet")
    values, lengths = _reference(b, table)
    assert batch.sparse.lengths().tolist() == lengths
    assert batch.sparse.values().tolist() == [v for per_key in values for v in per_key]
    i1 = [1.0, 0.0, 0.0, 3.0, 0.0]  # null, inf -> 0; negative -> 0 before log1p
    i2 = [5.0, 6.0, 0.0, 8.0, 9.0]
    expect = np.log1p(np.array([i1 + i1[1:4], i2 + i2[1:4]], dtype=np.float32).T)
    np.testing.assert_allclose(batch.dense.numpy(), expect, rtol=1e-6)
    assert batch.labels.tolist() == [1, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("nulls", ["some", "none", "all"])
def test_int64_ids_decode_in_place_at_any_offset(nulls: str) -> None:
    """Int64 ids are decoded from Arrow's buffers directly: a sliced column starts anywhere
    in its validity bitmap's bytes."""
    rng = np.random.default_rng(2)
    n = 37
    mask = {"some": rng.random(n) < 0.3, "none": None, "all": np.ones(n, dtype=bool)}[nulls]
    table = pa.table(
        {
            "label": rng.integers(0, 2, n).astype(np.int8),
            "I1": rng.exponential(3, n).astype(np.float32),
            "I2": rng.integers(0, 9, n),
            "user": pa.array(rng.integers(-(10**12), 10**12, n), mask=mask),
            "tags": pa.array([[int(v)] for v in rng.integers(0, 99, n)], pa.list_(pa.int64())),
            "city": pa.array([f"c{v}" for v in rng.integers(0, 5, n)]),
        }
    )
    b = _builder()
    for offset in range(10):
        part = table.slice(offset)
        assert part.column("user").num_chunks == 1
        assert part.column("user").chunk(0).offset == offset
        batch = b.build(part, "t.parquet")
        values, lengths = _reference(b, part)
        assert batch.sparse.lengths().tolist() == lengths
        assert batch.sparse.values().tolist() == [v for per_key in values for v in per_key]


def test_int64_ids_write_only_their_own_slots() -> None:
    """The in-place decode writes exactly ``count`` fingerprints, even when the last example
    is null: numba does not check bounds, and the next feature's slots follow."""
    column = pa.array([5, None, -1, 7, None, 9, None], pa.int64()).slice(2)  # ends on a null
    ids = categorical_ids(column, "user")
    assert ids.count == 3
    lengths = np.full(len(column) + 2, -7, dtype=np.int64)
    out = np.full(ids.count + 4, 123, dtype=np.uint64)
    ids.write(lengths[: len(column)], out[: ids.count])
    assert lengths.tolist() == [1, 1, 0, 1, 0, -7, -7]
    assert out.tolist() == [(1 << 64) - 1, 7, 9, 123, 123, 123, 123]
    empty = categorical_ids(column.slice(5), "user")
    assert empty.count == 0
    empty.write(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64))


def test_batch_carries_what_torchrec_would_derive_from_its_lengths() -> None:
    """The builder fills the KJT's offsets, stride and per-key split; TorchRec, given only
    the keys, values and lengths, derives the same."""
    batch = _builder().build(_awkward_table(False), "t.parquet")
    ours = batch.sparse
    derived = KeyedJaggedTensor(keys=ours.keys(), values=ours.values(), lengths=ours.lengths())
    assert ours.offsets_or_none() is not None and ours.length_per_key_or_none() is not None
    assert ours.offsets().tolist() == derived.offsets().tolist()
    assert ours.stride() == derived.stride() == 8
    assert ours.length_per_key() == derived.length_per_key()
    assert ours.offset_per_key() == derived.offset_per_key()
    sizes = [1, len(ours.keys()) - 1]
    for a, b in zip(ours.split(sizes), derived.split(sizes), strict=True):
        assert a.keys() == b.keys() and a.values().tolist() == b.values().tolist()
        assert a.offsets().tolist() == b.offsets().tolist()


def _same(a: Batch, b: Batch) -> None:
    assert a.sparse.keys() == b.sparse.keys()
    assert a.sparse.lengths().tolist() == b.sparse.lengths().tolist()
    assert a.sparse.values().tolist() == b.sparse.values().tolist()
    assert a.dense.tolist() == b.dense.tolist() and a.labels.tolist() == b.labels.tolist()


@pytest.mark.parametrize("shuffle_rows", [0, 700])
def test_stream_equals_building_arrow_batches(tmp_path: Path, shuffle_rows: int) -> None:
    rng = np.random.default_rng(0)
    for part in range(2):
        n = 1300
        lists = [None if i % 11 == 0 else rng.integers(0, 99, i % 4).tolist() for i in range(n)]
        table = pa.table(
            {
                "label": rng.integers(0, 2, n).astype(np.int8),
                "I1": rng.exponential(3, n).astype(np.float32),
                "I2": pa.array(rng.integers(0, 9, n), mask=rng.random(n) < 0.1),
                "user": pa.array(rng.integers(-5, 10**9, n), mask=rng.random(n) < 0.2),
                "tags": pa.array(lists, pa.list_(pa.int64())),
                "city": pa.array(
                    [f"c{v}" for v in rng.integers(0, 50, n)], mask=rng.random(n) < 0.1
                ),
            }
        )
        pq.write_table(table, tmp_path / f"part-{part}.parquet", row_group_size=300)
    b = _builder()
    groups = list_row_groups(str(tmp_path))
    seed = (3, 1, 0)
    ours = list(b.stream(groups, 128, shuffle_rows=shuffle_rows, shuffle_seed=seed))
    arrow = list(iter_tables(groups, b.columns, 128, shuffle_rows=shuffle_rows, shuffle_seed=seed))
    assert len(ours) == len(arrow) == 2600 // 128
    for (rows, _), (table, source) in zip(ours, arrow, strict=True):
        _same(b.to_batch(rows), b.build(table, source))
    resumed = list(
        b.stream(groups, 128, shuffle_rows=shuffle_rows, shuffle_seed=seed, start_batch=7)
    )
    for (rows, _), (full, _) in zip(resumed, ours[7:], strict=True):
        _same(b.to_batch(rows), b.to_batch(full))


def test_rows_slice_take_concat() -> None:
    b = _builder()
    rows = b.decode(_awkward_table(False))
    n = rows.num_rows
    order = np.random.default_rng(1).permutation(n)
    parts = [rows.slice(0, 3), rows.slice(3, 2), rows.slice(5)]
    _same(b.to_batch(Rows.concat(parts)), b.to_batch(rows))
    _same(b.to_batch(rows.take(order).take(np.argsort(order))), b.to_batch(rows))
    _same(
        b.to_batch(Rows.concat([rows.take(order[:4]), rows.take(order[4:])])),
        b.to_batch(rows.take(order)),
    )
    assert rows.slice(n).num_rows == 0 and b.to_batch(rows.slice(n)).sparse.values().numel() == 0


@pytest.mark.parametrize("in_lists", [False, True])
def test_a_null_in_a_dictionarys_values_is_a_missing_id(in_lists: bool) -> None:
    """In-memory Arrow may hold a null in a dictionary itself (Parquet keeps nulls in the
    indices): hashing it failed with a TypeError (a helper's audit). It reads as a null."""
    values = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), ["a", None])
    plain = pa.array(["a", None, "a"])
    if in_lists:
        values = pa.ListArray.from_arrays(pa.array([0, 2, 3]), values)
        plain = pa.ListArray.from_arrays(pa.array([0, 2, 3]), plain)
    got, expected = categorical_ids(values, "c"), categorical_ids(plain, "c")
    assert got.lengths.tolist() == expected.lengths.tolist() == ([1, 1] if in_lists else [1, 0, 1])
    assert got.fingerprints.tolist() == expected.fingerprints.tolist()

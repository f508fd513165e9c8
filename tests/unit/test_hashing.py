"""Hashing: pinned values, independent salts, uniform buckets (across processes:
tests/integration/test_hashing_processes.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from scipy import stats

from dist_train.embedding.hashing import (
    fingerprint_ints,
    fingerprint_strings,
    make_salt,
    salted_rows,
)


def test_known_values_are_stable() -> None:
    # Pinned outputs: a change here remaps every trained table, so it must be deliberate.
    rows = salted_rows(fingerprint_ints(np.array([0, 1, 2**40])), make_salt("f", 0), 1 << 20)
    assert rows.tolist() == [971434, 430030, 90135]
    srows = salted_rows(fingerprint_strings(pa.array(["a", "b"])), make_salt("f", 0), 1 << 20)
    assert srows.tolist() == [632554, 541049]


def test_rows_in_range_and_int64() -> None:
    rows = salted_rows(fingerprint_ints(np.arange(-(10**6), 10**6, 7)), make_salt("x", 0), 97)
    assert rows.dtype == np.int64
    assert rows.min() >= 0 and rows.max() < 97


@pytest.mark.parametrize("kind", ["int", "string"])
def test_bucket_occupancy_is_uniform(kind: str) -> None:
    num_rows, n = 1000, 200_000
    if kind == "int":
        fps = fingerprint_ints(np.arange(n) * 1000)  # structured ids: multiples of 1000
    else:
        fps = fingerprint_strings(pa.array([f"user_{i}" for i in range(n)]))
    counts = np.bincount(salted_rows(fps, make_salt("C3", 0), num_rows), minlength=num_rows)
    _, p = stats.chisquare(counts)
    assert p > 1e-3, f"chi-square p={p:.2e}: bucket occupancy not uniform"


def test_different_salts_are_independent() -> None:
    """Rows under (f, 0), (f, 1), (g, 0) look like independent uniform draws."""
    fps = fingerprint_ints(np.arange(100_000))
    buckets = 20
    a = salted_rows(fps, make_salt("C1", 0), buckets)
    for other in (make_salt("C1", 1), make_salt("C2", 0), make_salt("C1", 0, seed=1)):
        b = salted_rows(fps, other, buckets)
        table = np.zeros((buckets, buckets))
        np.add.at(table, (a, b), 1)
        _, p, _, _ = stats.chi2_contingency(table)
        assert p > 1e-3, f"salts correlated (p={p:.2e})"
        assert (a == b).mean() < 2.0 / buckets


def test_strings_hash_once_per_distinct_value_and_match_scalar_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = pa.array(["x", "y", "x", "z", "y", "x"])
    calls: list[bytes] = []
    real = xxhash.xxh3_64_intdigest

    def counted(data: bytes, seed: int = 0) -> int:
        calls.append(data)
        return real(data, seed=seed)

    monkeypatch.setattr(xxhash, "xxh3_64_intdigest", counted)
    fps = fingerprint_strings(values)
    assert sorted(calls) == [b"x", b"y", b"z"]  # each distinct value hashed once
    monkeypatch.undo()
    # the same as hashing each value on its own, and as the dictionary-encoded column
    assert fps.tolist() == [real(v.encode()) for v in values.to_pylist()]
    np.testing.assert_array_equal(fps, fingerprint_strings(values.dictionary_encode()))


def test_ints_and_their_strings_differ() -> None:
    salt = make_salt("C1", 0)
    ints = salted_rows(fingerprint_ints(np.arange(1000)), salt, 1 << 30)
    strs = salted_rows(fingerprint_strings(pa.array([str(i) for i in range(1000)])), salt, 1 << 30)
    assert (ints == strs).mean() < 0.01

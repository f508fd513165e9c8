"""Deterministic 64-bit hashing of categorical values into embedding rows.

Two stages, both identical on every process, platform and run:

1. ``fingerprint_*``: each raw value (integer or string) becomes a uint64 fingerprint.
   Integers are reinterpreted bit-for-bit; strings are hashed with xxHash3-64, once per
   distinct value in the batch.
2. ``salted_rows``: a fingerprint is mixed with a salt that names (feature, chunk) and reduced
   modulo the table's row count. Different salts give independent row assignments.

Python's ``hash()`` is never used: it is randomized per process for strings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dist_train import kernels

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def fmix64(x: int) -> int:
    """MurmurHash3's 64-bit finalizer: a bijection of 64-bit ints that mixes every bit."""
    x &= _MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB93FE53E4A53) & _MASK64
    return x ^ (x >> 33)


def name_fingerprint(name: str) -> int:
    """Stable 64-bit fingerprint of a feature name (used in salts)."""
    return xxhash.xxh3_64_intdigest(name.encode("utf-8"), seed=0)


def make_salt(feature_name: str, chunk: int, seed: int = 0) -> int:
    """The 64-bit salt of chunk ``chunk`` of ``feature_name`` under a global ``seed``.

    The salt depends on the feature's name, not its position in the config, so reordering
    features never remaps rows within a table (with ``embedding.num_tables`` > 1 the chunks
    are dealt to sub-tables by position, which reordering does change).
    """
    s = fmix64(name_fingerprint(feature_name) ^ (seed * _GOLDEN))
    return fmix64(s + (chunk + 1) * _GOLDEN)


def fingerprint_ints(values: np.ndarray) -> np.ndarray:
    """Integer ids as uint64 fingerprints (two's-complement reinterpretation, no copy if int64)."""
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def fingerprint_strings(values: pa.Array) -> np.ndarray:
    """xxHash3-64 of each UTF-8/binary value; each distinct value is hashed once.

    ``values`` (plain or dictionary-encoded) must hold no nulls (the batch builder drops
    them first).
    """
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    uniques = encoded.dictionary.to_pylist()
    digest = xxhash.xxh3_64_intdigest
    table = np.fromiter(
        (digest(u.encode("utf-8") if isinstance(u, str) else u) for u in uniques),
        dtype=np.uint64,
        count=len(uniques),
    )
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    return table[codes]


def key_params(salt: int, num_rows: int) -> np.ndarray:
    """The kernel constants of one (salt, table rows), uint64: salt, rotated salt, rows,
    floor((2**64 - 1) / rows)."""
    if num_rows <= 0:
        raise ValueError(f"num_rows must be positive, got {num_rows}")
    salt &= _MASK64
    rot = ((salt << 31) | (salt >> 33)) & _MASK64
    return np.array([salt, rot, num_rows, _MASK64 // num_rows], dtype=np.uint64)


def salted_hash(fingerprints: np.ndarray, salt: int) -> np.ndarray:
    """64-bit salted hash of uint64 fingerprints (two rounds of fmix64 keyed by the salt)."""
    s, rot, _, _ = key_params(salt, 1)
    out = np.empty(fingerprints.shape[0], dtype=np.uint64)
    kernels.salted_hash_into(np.ascontiguousarray(fingerprints, np.uint64), s, rot, out)
    return out


def salted_rows(fingerprints: np.ndarray, salt: int, num_rows: int) -> np.ndarray:
    """Row ids in ``[0, num_rows)`` for ``fingerprints`` under ``salt``, as int64.

    Exactly ``salted_hash(fingerprints, salt) % num_rows``, computed without a division.
    """
    fps = np.ascontiguousarray(fingerprints, np.uint64)
    out = np.empty(fps.shape[0], dtype=np.int64)
    # The batch path's loop, with one key spanning all of ``fps``.
    kernels.key_values_into(
        fps,
        np.zeros(1, np.int64),
        np.full(1, fps.shape[0], np.int64),
        key_params(salt, num_rows)[None],
        np.zeros(1, np.bool_),
        out,
    )
    return out

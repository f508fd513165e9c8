"""Decoded rows: a row group's labels, dense features and categorical fingerprints as numpy.

Each row group is decoded once into :class:`Rows`. Categorical values are stored
feature-major: feature f's values of all examples are contiguous, in example order, which is
the order a KeyedJaggedTensor wants them in. Between reading and batching:

- cutting a batch (:meth:`Rows.slice`) is a view, no copy;
- merging row groups (:meth:`Rows.concat`) and shuffling (:meth:`Rows.take`) copy each
  feature's values once;

and :func:`kjt_parts` hashes each key's contiguous run of fingerprints into its table rows
in one compiled pass that writes the KJT's lengths and offsets too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dist_train.kernels import fill_offsets, gather_rows, int_ids_into, kjt_into


class FeatureIds(Protocol):
    """One categorical feature's ids of a block of examples, written into :class:`Rows`
    by :meth:`Rows.of`."""

    @property
    def count(self) -> int:
        """How many fingerprints it has, over all examples."""
        ...

    def write(self, lengths: np.ndarray, out: np.ndarray) -> None:
        """Each example's bag length into ``lengths`` [n], and the ``count`` fingerprints, in
        example order, into ``out``."""
        ...


@dataclass(frozen=True)
class DecodedIds:
    """Bag lengths (int64 [n]) and fingerprints (uint64) already decoded."""

    lengths: np.ndarray
    fingerprints: np.ndarray

    @property
    def count(self) -> int:
        return int(self.fingerprints.shape[0])

    def write(self, lengths: np.ndarray, out: np.ndarray) -> None:
        lengths[:] = self.lengths
        out[:] = self.fingerprints


@dataclass(frozen=True)
class ScalarIntIds:
    """One int64 id an example (its bits are its fingerprint), null where ``validity``'s bit
    is 0: Arrow's buffers as they are, decoded in one compiled pass straight into place."""

    values: np.ndarray  # int64 [n], unspecified at nulls
    validity: np.ndarray  # uint8: Arrow's validity bitmap; empty when no id is null
    bit_offset: int  # the first example's bit in ``validity``
    count: int  # non-null ids

    def write(self, lengths: np.ndarray, out: np.ndarray) -> None:
        int_ids_into(self.validity, self.bit_offset, self.values, lengths, out)


@dataclass(frozen=True)
class Rows:
    """``n`` decoded examples. Feature f of example i has the values
    ``fingerprints[offsets[f, i] : offsets[f, i + 1]]``; slices share ``fingerprints``."""

    labels: np.ndarray  # float32 [n]
    dense: np.ndarray  # float32 [n, num_dense], transformed
    lengths: np.ndarray  # int64 [num_features, n]: bag length of each example's feature
    offsets: np.ndarray  # int64 [num_features, n + 1]
    fingerprints: np.ndarray  # uint64
    ids: np.ndarray | None = None  # int64 [n]: row ids, when the job audits its input

    @staticmethod
    def of(
        labels: np.ndarray,
        dense: np.ndarray,
        per_feature: Sequence[FeatureIds],
        ids: np.ndarray | None = None,
    ) -> Rows:
        """Rows of each feature's ids, each written once into its place."""
        lengths = np.empty((len(per_feature), len(labels)), dtype=np.int64)
        fingerprints = np.empty(sum(f.count for f in per_feature), dtype=np.uint64)
        start = 0
        for f, feature in enumerate(per_feature):
            feature.write(lengths[f], fingerprints[start : start + feature.count])
            start += feature.count
        return Rows(labels, dense, lengths, _packed_offsets(lengths), fingerprints, ids)

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    def slice(self, offset: int = 0, length: int | None = None) -> Rows:
        """Examples ``offset .. offset + length`` (to the end if ``length`` is None), as views."""
        stop = self.num_rows if length is None else min(offset + length, self.num_rows)
        return Rows(
            self.labels[offset:stop],
            self.dense[offset:stop],
            self.lengths[:, offset:stop],
            self.offsets[:, offset : stop + 1],
            self.fingerprints,
            None if self.ids is None else self.ids[offset:stop],
        )

    def take(self, indices: np.ndarray) -> Rows:
        """The examples at ``indices``, in that order (copies)."""
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[:, indices]
        offsets = _packed_offsets(lengths)
        out = np.empty(int(offsets[-1, -1]) if offsets.size else 0, dtype=np.uint64)
        gather_rows(self.fingerprints, np.ascontiguousarray(self.offsets), indices, offsets, out)
        ids = None if self.ids is None else self.ids[indices]
        return Rows(self.labels[indices], self.dense[indices], lengths, offsets, out, ids)

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        """The examples of ``parts``, one after another."""
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([p.lengths for p in parts], axis=1)
        offsets = _packed_offsets(lengths)
        out = np.empty(int(offsets[-1, -1]) if offsets.size else 0, dtype=np.uint64)
        row = 0
        for p in parts:
            for f in range(lengths.shape[0]):
                src = p.fingerprints[p.offsets[f, 0] : p.offsets[f, -1]]
                out[offsets[f, row] : offsets[f, row] + len(src)] = src
            row += p.num_rows
        return Rows(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.dense for p in parts]),
            lengths,
            offsets,
            out,
            None if parts[0].ids is None else np.concatenate([p.ids for p in parts]),  # type: ignore[misc]
        )


def _packed_offsets(lengths: np.ndarray) -> np.ndarray:
    """Offsets [F, n + 1] of ``lengths`` [F, n] with features packed one after another."""
    offsets = np.empty((lengths.shape[0], lengths.shape[1] + 1), dtype=np.int64)
    fill_offsets(lengths, offsets)
    return offsets


def kjt_parts(
    rows: Rows, key_feature: np.ndarray, key_params: np.ndarray, key_exact: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A KeyedJaggedTensor's ``values``, ``lengths``, ``offsets`` and per-key value counts
    (int64, key-major) of ``rows``, in one compiled pass.

    Key k looks up feature ``key_feature[k]``: ids as rows when ``key_exact[k]``, else
    ``salted_hash(fp, salt) mod num_rows`` with ``key_params[k]`` from
    :func:`dist_train.embedding.hashing.key_params`.
    """
    keys, n = key_feature.shape[0], rows.num_rows
    starts = rows.offsets[key_feature, 0]
    values = np.empty(int((rows.offsets[key_feature, -1] - starts).sum()), dtype=np.int64)
    lengths = np.empty(keys * n, dtype=np.int64)
    offsets = np.empty(keys * n + 1, dtype=np.int64)
    per_key = np.empty(keys, dtype=np.int64)
    kjt_into(
        rows.fingerprints,
        rows.offsets,
        rows.lengths,
        key_feature,
        key_params,
        key_exact,
        values,
        lengths,
        offsets,
        per_key,
    )
    return values, lengths, offsets, per_key

"""Decoded rows: a row group's labels, dense features and categorical fingerprints as numpy.

Each row group is decoded once into :class:`Rows`. Categorical values are stored
feature-major: feature f's values of all examples are contiguous, in example order, which is
the order a KeyedJaggedTensor wants them in. Between reading and batching:

- cutting a batch (:meth:`Rows.slice`) is a view, no copy;
- merging row groups (:meth:`Rows.concat`) and shuffling (:meth:`Rows.take`) copy each
  feature's values once;

and :func:`key_values` hashes each key's contiguous run of fingerprints into its table rows
in one tight compiled loop per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dist_train.kernels import fill_offsets, gather_rows, key_values_into


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
        per_feature: Sequence[tuple[np.ndarray, np.ndarray]],
        ids: np.ndarray | None = None,
    ) -> Rows:
        """Rows of per-feature (bag lengths [n], fingerprints in example order)."""
        n = len(labels)
        lengths = np.zeros((len(per_feature), n), dtype=np.int64)
        for f, (lens, _) in enumerate(per_feature):
            lengths[f] = lens
        flat = [fps for _, fps in per_feature]
        fingerprints = np.concatenate(flat) if flat else np.zeros(0, dtype=np.uint64)
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


def key_values(
    rows: Rows, key_feature: np.ndarray, key_params: np.ndarray, key_exact: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """KJT ``values`` and ``lengths`` (int64, key-major) of ``rows``.

    Key k looks up feature ``key_feature[k]``: ids as rows when ``key_exact[k]``, else
    ``salted_hash(fp, salt) mod num_rows`` with ``key_params[k]`` from
    :func:`dist_train.embedding.hashing.key_params`.
    """
    starts = rows.offsets[key_feature, 0]
    ends = rows.offsets[key_feature, -1]
    values = np.empty(int((ends - starts).sum()), dtype=np.int64)
    key_values_into(rows.fingerprints, starts, ends, key_params, key_exact, values)
    return values, rows.lengths[key_feature].reshape(-1)

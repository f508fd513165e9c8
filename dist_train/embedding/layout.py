"""Which embedding tables exist and which KJT keys look up which rows.

An :class:`EmbeddingLayout` is built once from the config and shared by the batch builder
(fingerprints -> per-key row ids) and the model (the TorchRec tables and the order in which
key outputs are concatenated back into per-feature embeddings).

Kinds:
- ``unified``: one M x d table (optionally ``num_tables`` round-robin sub-tables of ~M/T rows);
  chunk j of feature f is key ``f__j`` and looks up ``hash64(value, salt(f, j)) mod rows``.
  The feature's embedding is the concatenation of its chunk vectors (k_f * d).
- ``collisionless``: one exact table per feature, ``cardinality`` rows x (k_f * d) columns,
  ids used as row numbers (must lie in ``[0, cardinality)``).
- ``hashing_trick``: one hashed table per feature with the unified parameter budget:
  M / sum(k) rows x (k_f * d) columns each.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchrec import EmbeddingBagConfig, PoolingType

from dist_train.config.schema import EmbeddingConfig, FeatureConfig
from dist_train.embedding.hashing import make_salt


@dataclass(frozen=True)
class KeySpec:
    """One KJT key: a (feature, chunk) and the table rows it addresses."""

    key: str
    feature: str
    chunk: int
    table: str
    num_rows: int
    dim: int
    salt: int | None  # None: ids are rows (collisionless)


@dataclass(frozen=True)
class TableSpec:
    name: str
    num_rows: int
    dim: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class EmbeddingLayout:
    """Tables, keys, and the feature-ordered key sequence of one embedding config."""

    kind: str
    dim: int
    pooling: str
    tables: tuple[TableSpec, ...]
    keys: tuple[KeySpec, ...]  # feature order, then chunk order
    features: tuple[str, ...]

    def keys_of(self, feature: str) -> list[KeySpec]:
        return [k for k in self.keys if k.feature == feature]

    @property
    def key_names(self) -> list[str]:
        return [k.key for k in self.keys]

    @property
    def num_vectors(self) -> int:
        """d-vectors per example from the embeddings (sum of k_f)."""
        return sum(k.dim for k in self.keys) // self.dim

    @property
    def num_parameters(self) -> int:
        return sum(t.num_rows * t.dim for t in self.tables)

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        pooling = PoolingType.SUM if self.pooling == "sum" else PoolingType.MEAN
        return [
            EmbeddingBagConfig(
                name=t.name,
                num_embeddings=t.num_rows,
                embedding_dim=t.dim,
                feature_names=list(t.keys),
                pooling=pooling,
            )
            for t in self.tables
        ]


def _rows_per_feature(num_rows: int, features: list[FeatureConfig]) -> dict[str, int]:
    """The hashing trick's rows per feature: ``num_rows`` shared out in chunk units (a
    feature of ``k`` chunks has ``k`` times the columns, so a row of it costs ``k``), the
    remainder a row each to the first features whose chunks it still covers; at least one row
    each. The tables then hold at most the unified table's ``num_rows x dim`` parameters,
    exactly that where every feature has one chunk (as in ``dist-train sweep``). With mixed
    chunk counts the first-fit can leave a few rows out that another split would use: kept,
    since a change of split changes the tables' shapes, and older checkpoints would no
    longer load."""
    total_chunks = sum(f.chunks for f in features)
    base, left = divmod(num_rows, total_chunks)
    out = {}
    for f in features:
        extra = int(left >= f.chunks)
        left -= extra * f.chunks
        out[f.name] = max(1, base + extra)
    return out


def build_layout(
    embedding: EmbeddingConfig, features: list[FeatureConfig], seed: int
) -> EmbeddingLayout:
    """The layout of ``embedding.kind`` over ``features``."""
    d = embedding.dim
    keys: list[KeySpec] = []
    tables: list[TableSpec] = []
    if embedding.kind == "unified":
        t_count = embedding.num_tables
        names = [f"unified_{t}" for t in range(t_count)]
        # M rows split into T sub-tables of about M / T rows, the keys dealt round-robin;
        # each key hashes into its own sub-table's rows (no interleaving back into one table)
        rows = [len(range(t, embedding.num_rows, t_count)) for t in range(t_count)]
        slot = 0
        for f in features:
            for j in range(f.chunks):
                t = slot % t_count
                slot += 1
                keys.append(
                    KeySpec(
                        f"{f.name}__{j}",
                        f.name,
                        j,
                        names[t],
                        rows[t],
                        d,
                        make_salt(f.name, j, seed),
                    )
                )
        for t, name in enumerate(names):
            table_keys = tuple(k.key for k in keys if k.table == name)
            if table_keys:
                tables.append(TableSpec(name, rows[t], d, table_keys))
    elif embedding.kind in ("collisionless", "hashing_trick"):
        hashed_rows = _rows_per_feature(embedding.num_rows, features)
        for f in features:
            dim = f.chunks * d
            if embedding.kind == "collisionless":
                assert f.cardinality is not None  # checked by JobConfig
                num_rows, salt = f.cardinality, None
            else:
                num_rows = hashed_rows[f.name]
                salt = make_salt(f.name, 0, seed)
            table = f"{embedding.kind}_{f.name}"
            keys.append(KeySpec(f.name, f.name, 0, table, num_rows, dim, salt))
            tables.append(TableSpec(table, num_rows, dim, (f.name,)))
    else:  # pragma: no cover - the config's Literal rules this out
        raise ValueError(f"unknown embedding kind {embedding.kind!r}")
    return EmbeddingLayout(
        kind=embedding.kind,
        dim=d,
        pooling=embedding.pooling,
        tables=tuple(tables),
        keys=tuple(keys),
        features=tuple(f.name for f in features),
    )

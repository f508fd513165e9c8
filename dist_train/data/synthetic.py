"""A Criteo-shaped synthetic dataset with a planted model, written as Parquet.

Columns: ``row_id`` (unique across both splits), ``label`` (0/1), dense ``I1..In``
(non-negative, count-like, some nulls), categorical ``C1..Cm`` (Zipf-distributed ids; some as
hex strings, some as multi-hot lists, some nulls), and ``oracle_p``, the true click
probability (never a model input: it gives the best achievable AUC, against which learned AUCs
are judged).

The planted logit is ``bias + sum_i w_i * log1p(I_i) + sum_c s_c(id)`` where ``s_c(id)`` is a
per-(column, id) Gaussian drawn from a hash, so it needs no stored tables; list columns
contribute the mean over their ids. Everything is a function of the seed alone.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dist_train.config.load import parse_config
from dist_train.config.schema import JobConfig, SyntheticDataConfig
from dist_train.data.listing import GENERATION_RECORD, DataSourceError, RowGroup, read_record
from dist_train.data.output_folder import clear_splits, refuse_foreign
from dist_train.embedding.hashing import make_salt, salted_hash
from dist_train.storage import write_atomically
from planners.cores import usable_memory_bytes

SPEC_FILE = GENERATION_RECORD
_FORMAT = 3  # bumped when the files' layout changes, so older generated data is rewritten
_BIAS = -1.0
_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class GeneratedData:
    """Where a generated dataset lies."""

    train_dir: Path
    test_dir: Path


def _gaussian_from_hash(ids: np.ndarray, salt: int) -> np.ndarray:
    """A fixed N(0, 1) draw per id (Box-Muller over two salted 64-bit hashes)."""
    fp = ids.astype(np.int64).view(np.uint64)
    u1 = (salted_hash(fp, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    u2 = (salted_hash(fp, salt ^ 0x5555) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


class _Column:
    """Zipf sampler over a permuted vocabulary of one categorical column."""

    def __init__(self, name: str, cardinality: int, exponent: float, rng: np.random.Generator):
        self.name = name
        weights = 1.0 / np.arange(1, cardinality + 1, dtype=np.float64) ** exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.perm = rng.permutation(cardinality)
        self.salt = make_salt(name, 0, seed=0x5EED)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, rng.random(n), side="right")
        return self.perm[np.minimum(ranks, len(self.perm) - 1)].astype(np.int64)

    def score(self, ids: np.ndarray) -> np.ndarray:
        return _gaussian_from_hash(ids, self.salt)


def _schema(cfg: SyntheticDataConfig) -> pa.Schema:
    fields = [pa.field("row_id", pa.int64(), nullable=False)]
    fields.append(pa.field("label", pa.int8(), nullable=False))
    fields += [pa.field(f"I{i + 1}", pa.float32()) for i in range(cfg.num_dense)]
    for i in range(cfg.num_categorical):
        name = f"C{i + 1}"
        base = pa.string() if name in cfg.string_columns else pa.int64()
        fields.append(pa.field(name, pa.list_(base) if name in cfg.multi_hot_columns else base))
    fields.append(pa.field("oracle_p", pa.float32()))
    return pa.schema(fields)


@dataclass
class _Rows:
    """What the rows are drawn from: the spec, each categorical column's sampler, the dense
    columns' weights in the label's logit, and the one random stream every file draws on."""

    cfg: SyntheticDataConfig
    columns: list[_Column]
    dense_w: np.ndarray
    rng: np.random.Generator

    def chunk(self, n: int, first_id: int, schema: pa.Schema) -> pa.Table:
        """The next ``n`` rows, ``row_id`` counted from ``first_id``."""
        return _chunk(self.cfg, self.columns, self.dense_w, n, self.rng, schema, first_id)


def _chunk(
    cfg: SyntheticDataConfig,
    columns: list[_Column],
    dense_w: np.ndarray,
    n: int,
    rng: np.random.Generator,
    schema: pa.Schema,
    first_id: int,
) -> pa.Table:
    arrays: dict[str, pa.Array] = {"row_id": pa.array(np.arange(first_id, first_id + n))}
    # sqrt(#terms) keeps the logit's spread comparable whatever the column counts.
    cat_scale = cfg.signal_scale / np.sqrt(max(1, len(columns)) / 4.0)
    logit = np.full(n, _BIAS)
    for i in range(cfg.num_dense):
        x = np.floor(np.exp(rng.normal(1.0, 1.2, n))).astype(np.float32)
        logit += dense_w[i] * (np.log1p(x) - 1.3)
        null = rng.random(n) < cfg.null_fraction
        arrays[f"I{i + 1}"] = pa.array(x, mask=null)
    for col in columns:
        as_str = col.name in cfg.string_columns
        null = rng.random(n) < cfg.null_fraction
        if col.name in cfg.multi_hot_columns:
            lengths = rng.poisson(cfg.mean_multi_hot_length - 1.0, n) + 1
            lengths[null] = 0
            ids = col.sample(int(lengths.sum()), rng)
            parent = np.repeat(np.arange(n), lengths)
            contrib = np.bincount(parent, col.score(ids), minlength=n) / np.maximum(lengths, 1)
            logit += cat_scale * contrib
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            values = pa.array(np.char.mod("%08x", ids) if as_str else ids)
            if isinstance(values, pa.ChunkedArray):  # over 2^21 strings: pyarrow's chunks
                values = values.combine_chunks()
            arrays[col.name] = pa.ListArray.from_arrays(
                pa.array(offsets), values, mask=pa.array(null)
            )
        else:
            ids = col.sample(n, rng)
            logit += cat_scale * np.where(null, 0.0, col.score(ids))
            values = np.char.mod("%08x", ids) if as_str else ids
            arrays[col.name] = pa.array(values, mask=null)
    p = 1.0 / (1.0 + np.exp(-logit))
    arrays["label"] = pa.array((rng.random(n) < p).astype(np.int8))
    arrays["oracle_p"] = pa.array(p.astype(np.float32))
    return pa.table({f.name: arrays[f.name] for f in schema}, schema=schema)


def _write_split(path: Path, num_rows: int, first_id: int, rows: _Rows, progress: bool) -> None:
    # written under a hidden name, which the reader passes over, and named when whole: a
    # writer closed by a Ctrl-C writes its footer, and the rows so far read as the file
    writing = path.with_name(f".{path.name}")
    try:
        # Page checksums let readers detect corrupted pages (see docs/data.md).
        with pq.ParquetWriter(
            writing, _schema(rows.cfg), compression="zstd", write_page_checksum=True
        ) as writer:
            _write_rows(writer, path, num_rows, first_id, rows, progress)
    except BaseException:
        writing.unlink(missing_ok=True)
        raise
    writing.replace(path)
    if progress:
        print(f"  wrote {path} ({num_rows:,} rows)", file=sys.stderr, flush=True)


def _write_rows(
    writer: pq.ParquetWriter, path: Path, num_rows: int, first_id: int, rows: _Rows, progress: bool
) -> None:
    per_group = rows.cfg.rows_per_group
    # whole row groups a chunk: a write ends a row group, so chunks of another size cut the
    # groups at their edges (65,536-row groups asked 131,072; 50,000 gave 50,000 + 15,536)
    chunk = per_group * max(1, _CHUNK_ROWS // per_group)
    written, said = 0, time.perf_counter()
    while written < num_rows:
        n = min(chunk, num_rows - written)
        writer.write_table(
            rows.chunk(n, first_id + written, writer.schema), row_group_size=per_group
        )
        written += n
        if progress and time.perf_counter() - said > PROGRESS_SECONDS and written < num_rows:
            print(f"  {path}: {written:,} of {num_rows:,} rows", file=sys.stderr, flush=True)
            said = time.perf_counter()


def _whole(data: GeneratedData, cfg: SyntheticDataConfig) -> bool:
    """Whether ``data`` holds the rows ``cfg`` asks, in its row groups, by the files'
    footers: a file deleted or cut since is not whole, nor one whose groups are not
    ``rows_per_group`` rows (but for each file's last), as the generator wrote them before
    it wrote whole groups a chunk."""
    splits = ((data.train_dir, cfg.num_train_rows), (data.test_dir, cfg.num_test_rows))
    try:
        for split, rows in splits:
            found = 0
            for f in split.glob("*.parquet"):
                meta = pq.ParquetFile(f).metadata
                groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                if any(n != cfg.rows_per_group for n in groups[:-1]):
                    return False
                found += meta.num_rows
            if found != rows:
                return False
    except (OSError, pa.ArrowException):
        return False
    return True


PROGRESS_SECONDS = 10.0  # a line at least this often while one file is written
_RECORD_START = b'{"format": '  # how the record written first begins


def _cut(spec_path: Path) -> bool:
    """Whether ``spec_path`` holds the start of the generator's first record, cut short (a
    crash as an older dist_train wrote it in place; it is written whole now). An empty file
    is anyone's: taken as the generator's, a user's files beside it were deleted."""
    if not spec_path.is_file():
        return False
    try:
        raw = spec_path.read_bytes()
    except OSError:
        return False
    return bool(raw) and (raw.startswith(_RECORD_START) or _RECORD_START.startswith(raw))


def _check_memory(cardinalities: list[int]) -> None:
    """DataSourceError, naming the keys, for vocabularies whose samplers outgrow the memory
    this process may use (16 bytes an id kept, and about 32 more for the largest while its
    weights are summed): numpy raised a MemoryError's traceback, or the kernel killed the
    process."""
    need = 16 * sum(cardinalities) + 32 * max(cardinalities, default=0)
    ram = usable_memory_bytes()
    if need > ram:
        raise DataSourceError(
            f"data.synthetic: vocabularies of {sum(cardinalities):,} ids in all need "
            f"{need / 2**30:,.1f} GiB to sample from, and this machine has {ram / 2**30:,.1f} "
            "GiB; lower data.synthetic.max_cardinality (or cardinalities)"
        )


def _spec(cfg: SyntheticDataConfig) -> dict[str, Any]:
    """What a generation records of ``cfg`` in its dataset.json, and reuses data for."""
    return {**cfg.model_dump(mode="json"), "format": _FORMAT}


def generated(cfg: SyntheticDataConfig, out_dir: str | Path) -> GeneratedData | None:
    """The dataset :func:`generate` wrote under ``out_dir`` for ``cfg``, whole; None where it
    is not there, not whole, or of another spec."""
    out = Path(out_dir)
    data = GeneratedData(out / "train", out / "test")
    whole = read_record(out / SPEC_FILE) == _spec(cfg)
    if not (whole and _whole(data, cfg)):
        return None
    refuse_foreign(out, [data.train_dir, data.test_dir], owned=True)  # read with its own
    return data


def train_file_rows(cfg: SyntheticDataConfig) -> list[int]:
    """The rows of each training file the generator writes: as even as rows allow (a
    ceiling's share a file wrote 3 files of 3 rows for 9 rows in 4)."""
    base, extra = divmod(cfg.num_train_rows, cfg.num_train_files)
    return [base + (i < extra) for i in range(cfg.num_train_files)]


def train_row_groups(cfg: SyntheticDataConfig, folder: str = "<generated>") -> list[RowGroup]:
    """The training split's row groups as the generator will write them (``rows_per_group``
    rows each, but for each file's last) and the reader will list them (files by name:
    part-10 before part-2), for checks before the data exist."""
    groups = []
    for i, n in enumerate(train_file_rows(cfg)):
        sizes = [cfg.rows_per_group] * (n // cfg.rows_per_group)
        sizes += [n % cfg.rows_per_group] if n % cfg.rows_per_group else []
        groups += [RowGroup(f"{folder}/part-{i}.parquet", j, s) for j, s in enumerate(sizes)]
    return sorted(groups, key=lambda g: (g.path, g.index))


def generate(cfg: SyntheticDataConfig, out_dir: str | Path, progress: bool = True) -> GeneratedData:
    """Write ``train/part-*.parquet`` and ``test/part-0.parquet`` under ``out_dir``.

    Reuses an existing dataset when its recorded spec equals ``cfg``.
    """
    out = Path(out_dir)
    spec = _spec(cfg)
    result = GeneratedData(out / "train", out / "test")
    spec_path = out / SPEC_FILE
    found = read_record(spec_path)  # unreadable (a run cut short): generated again
    if found == spec:
        if _whole(result, cfg):
            # another Parquet file in its folders, at any depth, would be trained on with it
            refuse_foreign(out, [result.train_dir, result.test_dir], owned=True)
            if progress:
                print(f"reusing synthetic data in {out}", file=sys.stderr, flush=True)
            return result
        if progress:
            print(
                f"{out}: its files are missing, cut or of other row groups: generating again",
                file=sys.stderr,
            )
    _check_memory(cfg.column_cardinalities())  # before any file is replaced
    # the generator's folder where it holds the generator's record (or one a crash cut as
    # an older dist_train wrote it), not a user's dataset.json of other contents
    owned = (isinstance(found, dict) and isinstance(found.get("format"), int)) or (
        found is None and _cut(spec_path)
    )
    clear_splits(out, [result.train_dir, result.test_dir], spec_path, owned=owned)
    # the record that the folder is the generator's, written first: a run cut short leaves
    # it, so the next run may replace the files; complete, it lists the spec (below)
    write_atomically(spec_path, json.dumps({"format": _FORMAT, "complete": False}))
    start = time.perf_counter()
    if progress:
        total = cfg.num_train_rows + cfg.num_test_rows
        print(f"generating {total:,} synthetic rows into {out}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(cfg.seed)
    columns = [
        _Column(f"C{i + 1}", c, cfg.zipf_exponent, rng)
        for i, c in enumerate(cfg.column_cardinalities())
    ]
    rows = _Rows(cfg, columns, rng.normal(0.0, 0.3, cfg.num_dense), rng)
    first = 0
    for i, n in enumerate(train_file_rows(cfg)):
        _write_split(result.train_dir / f"part-{i}.parquet", n, first, rows, progress)
        first += n
    test_path = result.test_dir / "part-0.parquet"
    _write_split(test_path, cfg.num_test_rows, cfg.num_train_rows, rows, progress)
    write_atomically(spec_path, json.dumps(spec, indent=2))  # whole, or the record before
    if progress:
        print(f"generated in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    return result


def generated_cardinalities(cfg: JobConfig) -> tuple[JobConfig, list[str]]:
    """``cfg`` with each feature's cardinality the generated column's, and the features
    changed: a sweep's budgets and a collisionless table are sized by it, and one left over
    from other ``data.synthetic`` settings made a "3% budget" hold 165% of the values."""
    made = cfg.data.synthetic.column_cardinalities()
    raw = cfg.model_dump(mode="json")
    changed = []
    for feature in raw["features"]:
        column = feature["column"] or feature["name"]
        values = made[int(column[1:]) - 1]  # (validated: the generator's C1..Cn)
        if feature["cardinality"] != values:
            changed.append(f"{feature['name']} {feature['cardinality']} -> {values:,}")
            feature["cardinality"] = values
    return parse_config(raw, "the job on its generated data"), changed


def said_of_cardinalities(changed: list[str]) -> str:
    """A line naming the features :func:`generated_cardinalities` changed (the first four)."""
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    return f"the features' cardinalities, as the data are generated: {', '.join(changed[:4])}{more}"

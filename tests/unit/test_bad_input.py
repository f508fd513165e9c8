"""One test per bad input, under both policies: `error` names file (+ row group) and column;
`skip` drops exactly the bad files/rows and counts them."""

from __future__ import annotations

import errno
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.listing import DataSourceError, list_row_groups
from dist_train.data.stream import iter_tables, row_group_tables
from dist_train.data.synthetic import GeneratedData
from dist_train.data.validation import BadInputError, BadInputPolicy, FooterRowsError
from dist_train.driver import prepare_inputs

ROWS_PER_FILE = 4096  # small_config: 2 train files of 4 row groups x 1024 rows


def _with(cfg: JobConfig, data_dir: Path, test_dir: Path, policy: str) -> JobConfig:
    raw = apply_overrides(
        cfg.model_dump(mode="json"),
        [
            f"data.train_path={data_dir}",
            f"data.test_path={test_dir}",
            f"data.on_bad_input={policy}",
        ],
    )
    return parse_config(raw)


def _copy_train(data: GeneratedData, tmp_path: Path) -> Path:
    out = tmp_path / "train_copy"
    shutil.copytree(data.train_dir, out)
    return out


def _rewrite(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path, row_group_size=1024)


# ---------------------------------------------------------------- file-level problems


def _truncated(path: Path) -> str:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return "not a readable Parquet file"


def _empty(path: Path) -> str:
    _rewrite(path, pq.read_table(path).slice(0, 0))
    return "empty file (no rows)"


def _cast_to_string(path: Path, column: str) -> None:
    t = pq.read_table(path)
    i = t.schema.get_field_index(column)
    _rewrite(path, t.set_column(i, column, pc.cast(t[column], pa.string())))


def _schema_mismatch(path: Path) -> str:
    _cast_to_string(path, "C2")
    return "schema mismatch: column 'C2' is string here but int64 in "


def _missing_column(path: Path) -> str:
    _rewrite(path, pq.read_table(path).drop_columns(["C3"]))
    return "missing column 'C3' (the ids of feature C3; features.C3.column unset: its name)"


def _missing_label(path: Path) -> str:
    _rewrite(path, pq.read_table(path).drop_columns(["label"]))
    return "missing column 'label' (the label, data.label_column)"  # it named no key


def _wrong_type(path: Path) -> str:
    _cast_to_string(path, "I1")
    return "dense column 'I1' has type string"


def _decimal_dense(path: Path) -> str:
    t = pq.read_table(path)
    decimals = pc.cast(pc.round(t["I2"], 2), pa.decimal128(18, 2))
    _rewrite(path, t.set_column(t.schema.get_field_index("I2"), "I2", decimals))
    return "dense column 'I2' has type decimal128(18, 2): cast it to float"


def _duplicate_column(path: Path) -> str:
    t = pq.read_table(path)
    _rewrite(path, t.append_column("I1", t["I1"]))
    return "2 columns named 'I1'"  # was "missing column 'I1'"


def _patched_footer(path: Path, patch: Callable[[bytearray], None]) -> None:
    """``path`` rewritten with its Thrift footer bytes patched in place (same length)."""
    raw = path.read_bytes()
    start = len(raw) - 8 - struct.unpack("<I", raw[-8:-4])[0]
    footer = bytearray(raw[start:-8])
    patch(footer)
    path.write_bytes(raw[:start] + bytes(footer) + raw[-8:])


def _codec_marked(path: Path, compression: str, codec: int, marked_as: int) -> set[str]:
    """``path`` rewritten with ``compression`` (Parquet's codec number ``codec``), every
    column chunk's codec then marked ``marked_as``; the codec names its footer now gives."""
    pq.write_table(pq.read_table(path), path, row_group_size=1024, compression=compression)
    meta = pq.ParquetFile(path).metadata

    def patch(footer: bytearray) -> None:
        for c in range(meta.num_columns):
            parts = meta.schema.column(c).path.split(".")
            # ColumnMetaData: path_in_schema (a list of strings), then codec (an i32, zigzag)
            names = b"".join(bytes([len(p)]) + p.encode() for p in parts)
            marked = bytes([0x19, (len(parts) << 4) | 8]) + names + bytes([0x15, codec * 2])
            at = footer.find(marked)
            while at >= 0:
                footer[at + len(marked) - 1] = marked_as * 2
                at = footer.find(marked, at + len(marked))

    _patched_footer(path, patch)
    first = pq.ParquetFile(path).metadata.row_group(0)
    return {first.column(c).compression for c in range(meta.num_columns)}


def _lzo_codec(path: Path) -> str:
    """Every column chunk marked LZO (older Hive and Hadoop data), which pyarrow cannot read:
    the file passed every check and failed at its first read, hours in (a helper's audit)."""
    assert _codec_marked(path, "snappy", 1, 3) == {"LZO"}  # SNAPPY = 1, LZO = 3
    return "column 'label' is compressed with LZO, which this pyarrow cannot read"


def _lowered_row_count(path: Path) -> str:
    """A damaged footer lowering a row group's rows and the file's alike: readers trust
    both and read a row less, and the file total agreed (a helper's audit)."""
    _rewrite(path, pq.read_table(path))
    raw = path.read_bytes()
    start = len(raw) - 8 - struct.unpack("<I", raw[-8:-4])[0]
    footer = raw[start:-8]
    total = footer.find(b"\x16\x80\x40")  # the file's 4,096 rows (i64, zigzag varint)
    # an i64 field of 1,024 made 1,023: the one that is the first row group's num_rows (the
    # others are columns' value counts)
    for at in (i for i in range(len(footer)) if footer.startswith(b"\x16\x80\x10", i)):
        patched = bytearray(footer)
        patched[at + 1 : at + 3] = b"\xfe\x0f"
        patched[total + 1 : total + 3] = b"\xfe\x3f"
        path.write_bytes(raw[:start] + bytes(patched) + raw[-8:])
        first = pq.ParquetFile(path).metadata.row_group(0)
        if first.num_rows == 1023 and first.column(0).num_values == 1024:
            break
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == ROWS_PER_FILE - 1 and meta.row_group(0).num_rows == 1023
    return "(row group 0): corrupt footer: column 'label' holds 1024 values but the row group"


FILE_PROBLEMS = [
    _truncated,
    _empty,
    _schema_mismatch,
    _missing_column,
    _missing_label,
    _wrong_type,
    _decimal_dense,
    _duplicate_column,
    _lzo_codec,
    _lowered_row_count,
]


@pytest.mark.parametrize("damage", FILE_PROBLEMS, ids=lambda f: f.__name__.strip("_"))
def test_file_problem_error_names_the_file(
    damage,
    small_cfg: JobConfig,
    small_data: GeneratedData,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    train = _copy_train(small_data, tmp_path)
    bad = train / "part-1.parquet"
    expected = damage(bad)
    with pytest.raises(BadInputError) as err:
        prepare_inputs(_with(small_cfg, train, small_data.test_dir, "error"))
    assert str(bad) in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("damage", FILE_PROBLEMS, ids=lambda f: f.__name__.strip("_"))
def test_file_problem_skip_drops_and_counts_the_file(
    damage,
    small_cfg: JobConfig,
    small_data: GeneratedData,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    train = _copy_train(small_data, tmp_path)
    damage(train / "part-1.parquet")
    inputs = prepare_inputs(_with(small_cfg, train, small_data.test_dir, "skip"))
    assert {g.path for g in inputs.train_groups} == {str(train / "part-0.parquet")}
    assert sum(g.num_rows for g in inputs.train_groups) == ROWS_PER_FILE
    assert inputs.file_counts is not None and inputs.file_counts.files == 1


def test_files_whose_columns_read_alike_train_together(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """What a review's files held, each refused as a schema mismatch or a wrong type (under
    `skip` the whole file dropped): a column all null, of Arrow's null type, as pandas
    writes a feature not logged that day (its values are missing: empty bags, dense 0);
    int32 ids beside int64, large_string beside string, a list's other child name; a float
    label beside an int8 one, an int64 dense column beside float32. Ids that would hash
    otherwise (string beside int64) stay refused: _schema_mismatch above."""
    train = _copy_train(small_data, tmp_path)
    t = pq.read_table(train / "part-1.parquet")
    n = t.num_rows
    for name, column in {
        "C2": pa.nulls(n),  # categorical, all null
        "I1": pa.nulls(n),  # dense, all null
        "C3": pc.cast(t["C3"], pa.int32()),
        "C1": pc.cast(t["C1"], pa.large_string()),  # strings in small_config
        "label": pc.cast(t["label"], pa.float64()),  # numbers, whatever their type
        "I2": pc.cast(pc.round(t["I2"]), pa.int64()),
    }.items():
        t = t.set_column(t.schema.get_field_index(name), name, column)
    _rewrite(train / "part-1.parquet", t)
    cfg = _with(small_cfg, train, small_data.test_dir, "error")
    inputs = prepare_inputs(cfg)
    assert sum(g.num_rows for g in inputs.train_groups) == 2 * ROWS_PER_FILE
    from dist_train.data.validation import read_alike
    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder

    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    rows = [r for r, _ in builder.stream(inputs.train_groups, 1024)]
    assert sum(r.num_rows for r in rows) == 2 * ROWS_PER_FILE
    nulls = [r for r in rows if not r.lengths[1].any()]  # C2, the second feature: no ids
    assert len(nulls) == 4 and all(not r.dense[:, 0].any() for r in nulls)
    assert read_alike(pa.list_(pa.field("item", pa.int64()))) == read_alike(
        pa.list_(pa.field("element", pa.int32()))
    )


def test_a_multi_hot_column_of_empty_lists_in_the_first_file_is_missing_values(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """Arrow types a list column whose lists are all empty `list<null>`: first, it became
    the type every later file was held to, and each good file was a schema mismatch (under
    `skip`, all dropped and the stream failed on the empty one)."""
    train = _copy_train(small_data, tmp_path)
    first = train / "part-0.parquet"
    t = pq.read_table(first)
    empty = pa.array([[]] * t.num_rows, pa.list_(pa.null()))
    _rewrite(first, t.set_column(t.schema.get_field_index("C4"), "C4", empty))
    cfg = _with(small_cfg, train, small_data.test_dir, "error")
    inputs = prepare_inputs(cfg)
    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder

    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    rows = [r for r, _ in builder.stream(inputs.train_groups, 1024)]
    empty_bags = [not r.lengths[3].any() for r in rows]  # C4, the fourth feature
    assert empty_bags == [True] * 4 + [False] * 4


def test_every_file_bad_is_an_error_even_when_skipping(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    train = _copy_train(small_data, tmp_path)
    for f in train.glob("*.parquet"):
        _missing_column(f)
    with pytest.raises(ValueError, match="no usable Parquet files"):
        prepare_inputs(_with(small_cfg, train, small_data.test_dir, "skip"))


# ---------------------------------------------------------------- row-level problems


def _set(t: pa.Table, name: str, rows: list[int], value: object) -> pa.Table:
    col = t[name].to_pylist()
    for r in rows:
        col[r] = value
    i = t.schema.get_field_index(name)
    return t.set_column(i, name, pa.array(col, type=t.schema.field(name).type))


ROW_PROBLEMS = {
    # name: (column, bad rows, replacement, reason, message fragment)
    "label_null": ("label", [3, 1500], None, "label_null", "null label"),
    "label_outside_0_1": ("label", [5], 2, "label_out_of_range", "label 2, expected 0 or 1"),
    "dense_nan": ("I2", [7, 8], float("nan"), "dense_not_finite", "value nan"),
    "dense_inf": ("I3", [9], float("inf"), "dense_not_finite", "value inf"),
    "negative_id": ("C3", [11], -5, "id_out_of_range", "id -5 outside [0, 1000)"),
    "id_too_large": ("C2", [12, 2049], 100, "id_out_of_range", "id 100 outside [0, 100)"),
    "list_id_out_of_range": ("C4", [13], [1, 5000], "id_out_of_range", "id 5000 outside [0, 5000)"),
}


def _damaged_rows(small_data: GeneratedData, tmp_path: Path, name: str) -> Path:
    column, rows, value, _, _ = ROW_PROBLEMS[name]
    path = tmp_path / "rows.parquet"
    t = pq.read_table(small_data.train_dir / "part-0.parquet")
    if column == "label":  # labels are non-nullable int8 in the generated schema
        i = t.schema.get_field_index("label")
        t = t.set_column(i, "label", pc.cast(t["label"], pa.int64()))
        t = pa.table(t.columns, schema=t.schema.set(i, pa.field("label", pa.int64())))
    _rewrite(path, _set(t, column, rows, value))
    return path


def _stream(cfg: JobConfig, path: Path, policy: BadInputPolicy) -> int:
    return len(_streamed_ids(cfg, path, policy))


def _streamed_ids(cfg: JobConfig, path: Path, policy: BadInputPolicy) -> list[int]:
    """The generator's row ids of the rows ``path`` delivers under ``policy``, in order."""
    cols = [
        "row_id",
        cfg.data.label_column,
        *cfg.data.resolved_dense_columns(),
        *(f.source_column for f in cfg.features),
    ]
    groups = list_row_groups(str(path))
    tables = iter_tables(groups, cols, 256, False, policy)
    return [i for t, _ in tables for i in t["row_id"].to_pylist()]


@pytest.mark.parametrize("name", list(ROW_PROBLEMS))
def test_row_problem_error_names_file_row_group_and_column(
    name: str, small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    column, rows, _, _, fragment = ROW_PROBLEMS[name]
    path = _damaged_rows(small_data, tmp_path, name)
    with pytest.raises(BadInputError) as err:
        _stream(small_cfg, path, BadInputPolicy.for_job(small_cfg))
    msg = str(err.value)
    assert f"{path} (row group 0): column {column!r}: {fragment}" in msg, msg
    assert f"(row {rows[0]} of the row group" in msg


@pytest.mark.parametrize("name", list(ROW_PROBLEMS))
def test_row_problem_skip_drops_exactly_the_bad_rows(
    name: str, small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    _, rows, _, reason, _ = ROW_PROBLEMS[name]
    path = _damaged_rows(small_data, tmp_path, name)
    policy = BadInputPolicy(
        "skip", "label", small_cfg.data.resolved_dense_columns(), small_cfg.features
    )
    ids = pq.read_table(path, columns=["row_id"])["row_id"].to_pylist()
    kept = [i for position, i in enumerate(ids) if position not in rows]  # the file's order
    assert len(ids) == ROWS_PER_FILE and _streamed_ids(small_cfg, path, policy) == kept
    assert policy.counts.rows == {reason: len(rows)}


# what a footer's statistics show of each row problem (the first bad row group's)
FOOTER_SHOWS = {
    "label_null": "1 null label(s)",
    "label_outside_0_1": "labels from 0 to 2, expected 0 or 1",
    "negative_id": "ids from -5 to ",
    "id_too_large": "ids from 0 to 100, outside [0, 100)",
    "list_id_out_of_range": "ids from 1 to 5000, outside [0, 5000)",
    # it trained to the end and failed at a test file's inf (a walk-through of awkward data)
    "dense_inf": "values from -0.0 to inf, not all finite",
}


@pytest.mark.parametrize("name", list(ROW_PROBLEMS))
def test_error_stops_before_training_where_the_footer_shows_a_bad_row(
    name: str, small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """Under `error`, ids outside a cardinality, bad labels and infinite dense values are
    found in the footer's statistics as the files are listed, before any training (a test
    file's, after the whole of training): the error names file, row group and column. NaN,
    which statistics leave out, and files without statistics, are found as their rows are
    read."""
    column = ROW_PROBLEMS[name][0]
    path = _damaged_rows(small_data, tmp_path, name)
    error = BadInputPolicy.for_job(small_cfg)
    if name not in FOOTER_SHOWS:
        assert len(list_row_groups(str(path), error)) == 4
        return
    with pytest.raises(BadInputError) as err:
        list_row_groups(str(path), error)
    msg = str(err.value)
    assert f"{path} (row group 0): column {column!r}: {FOOTER_SHOWS[name]}" in msg, msg
    assert "footer statistics (set data.on_bad_input: skip" in msg
    skip = BadInputPolicy(
        "skip", "label", small_cfg.data.resolved_dense_columns(), small_cfg.features
    )
    assert len(list_row_groups(str(path), skip)) == 4  # its rows dropped as they are read
    pq.write_table(pq.read_table(path), path, row_group_size=1024, write_statistics=False)
    assert len(list_row_groups(str(path), error)) == 4


def test_the_footer_check_reads_only_numbers_of_labels(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """A float16 label column's statistics are bytes (Parquet's fixed-length binary): the
    footer check compared them with 0 and crashed a job that trains (TypeError)."""
    path = tmp_path / "f16.parquet"
    t = pq.read_table(small_data.train_dir / "part-0.parquet")
    i = t.schema.get_field_index("label")
    half = pa.array(np.asarray(t["label"].to_numpy(), dtype=np.float16))
    _rewrite(path, t.set_column(i, "label", half))
    assert len(list_row_groups(str(path), BadInputPolicy.for_job(small_cfg))) == 4


def test_a_bad_test_id_stops_the_job_before_training(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """A test file's id beyond its feature's cardinality (collisionless: a row no table
    has) stopped the job at evaluation, after training; now the driver names it first."""
    test = tmp_path / "test_copy"
    shutil.copytree(small_data.test_dir, test)
    first = sorted(test.glob("*.parquet"))[0]
    _rewrite(first, _set(pq.read_table(first), "C3", [1500], 10**6))
    with pytest.raises(BadInputError, match=rf"{first} \(row group 1\): column 'C3': ids"):
        prepare_inputs(_with(small_cfg, small_data.train_dir, test, "error"))


def test_clean_data_has_no_problems(small_cfg: JobConfig, small_data: GeneratedData) -> None:
    policy = BadInputPolicy.for_job(small_cfg)
    assert _stream(small_cfg, small_data.train_dir / "part-0.parquet", policy) == ROWS_PER_FILE
    assert policy.counts.as_dict()["rows_skipped_total"] == 0


def test_dense_beyond_float32_is_bad_without_a_transform(small_cfg: JobConfig) -> None:
    """Untransformed, a finite float64 beyond float32's range would be inf in the batch (and
    was silently 0); under log1p it is a good value (its log1p fits)."""
    t = pa.table({"label": pa.array([0, 1, 0], pa.int8()), "d": [1.0, 1e39, -1e39]})
    log1p = BadInputPolicy("error", "label", ["d"], [])
    assert log1p.clean(t, "f.parquet").num_rows == 3
    with pytest.raises(BadInputError, match=r"f.parquet: column 'd': value 1e\+39 \(beyond"):
        BadInputPolicy("error", "label", ["d"], [], "none").clean(t, "f.parquet")
    skip = BadInputPolicy("skip", "label", ["d"], [], "none")
    assert skip.clean(t, "f.parquet")["d"].to_pylist() == [1.0]
    assert skip.counts.rows == {"dense_not_finite": 2}
    cfg = parse_config(
        apply_overrides(small_cfg.model_dump(mode="json"), ["data.dense_transform=none"])
    )
    assert BadInputPolicy.for_job(cfg).dense_transform == "none"


def test_test_split_schema_must_match_training(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """Test ids of another type than training's would hash to other rows: an error naming
    both files and the column."""
    test = tmp_path / "test_copy"
    shutil.copytree(small_data.test_dir, test)
    bad = sorted(test.glob("*.parquet"))[0]
    _cast_to_string(bad, "C2")
    with pytest.raises(BadInputError) as err:
        prepare_inputs(_with(small_cfg, small_data.train_dir, test, "error"))
    first = small_data.train_dir / "part-0.parquet"
    assert str(err.value).startswith(f"{bad}: schema mismatch: column 'C2' is string here")
    assert f"int64 in {first}, the first file with values in it" in str(err.value)


def test_a_read_that_fails_for_a_moment_is_no_repeat(
    small_cfg: JobConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row group whose read failed as storage fails for a moment (a connection reset) is
    read again (data.stream.READ_RETRY_SECONDS), then InputReadError, under skip too in
    training's streams, left out of the errors a Ray restart would meet again. A corrupt
    page (pyarrow's OSError of a failed checksum, no errno) and a file gone stay
    BadInputError, recorded: a restart would meet them again."""
    from dist_train.data import stream
    from dist_train.data.validation import InputReadError

    path = tmp_path / "c.parquet"
    table = pa.table({"label": np.random.default_rng(0).integers(0, 2, 100_000)})
    pq.write_table(table, path, row_group_size=50_000, write_page_checksum=True)
    groups = list_row_groups(str(path))
    cfg = _with(small_cfg, tmp_path, tmp_path, "error")
    policy = BadInputPolicy.for_job(cfg)

    calls = []
    real_read = pq.ParquetFile.read_row_group

    def read(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) % 4:  # three tries of a row group fail; a fourth read succeeds
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return real_read(*args, **kwargs)  # type: ignore[arg-type]

    skip = _with(small_cfg, tmp_path, tmp_path, "skip")
    training = BadInputPolicy.for_job(skip, replayed=True)
    testing = BadInputPolicy.for_job(skip)
    with monkeypatch.context() as patch:
        patch.setattr(pq.ParquetFile, "read_row_group", read)
        patch.setattr(stream, "READ_RETRY_SECONDS", (0.0, 0.0))
        # read again twice before the job is stopped for it
        with pytest.raises(InputReadError, match="cannot read"):
            next(stream.row_group_tables(groups, ["label"], policy))
        assert len(calls) == 3
        # under skip too where the stream is training's: dropped, a resumed run's replay
        # would read the group and shift every batch after it, rows trained twice and
        # others never (a review's finding)
        calls.clear()
        with pytest.raises(InputReadError, match="cannot read"):
            next(stream.row_group_tables(groups, ["label"], training))
        assert training.counts.row_groups == 0
        calls[:] = [1, 1]  # a read that fails once: read again, nothing skipped
        (table, _), *_ = stream.row_group_tables(groups[:1], ["label"], None)
        assert table.num_rows == 50_000
    # the test rows are read once, whole: such a group is skipped and counted there
    testing.row_group_problem("part-0.parquet (row group 1): cannot read", io_error=True)
    assert testing.counts.row_groups == 1
    data = bytearray(path.read_bytes())
    page = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data[page + 200] ^= 0xFF  # inside the first data page's values
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="CRC") as err:
        next(stream.row_group_tables(groups, ["label"], policy))
    assert type(err.value) is BadInputError
    path.unlink()
    with pytest.raises(BadInputError, match="cannot read") as err:
        next(stream.row_group_tables(groups, ["label"], policy))
    assert type(err.value) is BadInputError


def test_ids_that_are_no_utf8_text_name_their_column(tmp_path: Path) -> None:
    """A string column holding bytes that are no UTF-8 (Spark and Hive logs hold such ids):
    Arrow's validation named the column by its position among those read ("Column 1")."""
    path = tmp_path / "bytes.parquet"
    ids = pa.array([b"ok", b"\xff\xfe", b"x"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"label": pa.array([0, 1, 0], pa.int8()), "user": ids}), path)
    groups = list_row_groups(str(path))
    with pytest.raises(DataSourceError) as err:
        next(row_group_tables(groups, ["label", "user"], None))
    msg = str(err.value)
    assert "cannot read (column 'user': In chunk 0: Invalid: Invalid UTF8 sequence" in msg, msg
    assert "ids that are no UTF-8 text go in a binary column" in msg


def test_a_pipe_named_parquet_is_a_bad_file_not_a_wait(tmp_path: Path) -> None:
    """Opening a pipe waits for a writer: train and validate hung for good on one, SIGTERM
    or not (a review's finding). A thread writes to it after 10 s, so that code which opens
    it fails this test rather than hanging the suite."""
    import os
    import threading

    folder = tmp_path / "train"
    folder.mkdir()
    pq.write_table(pa.table({"label": [0, 1]}), folder / "part-0.parquet")
    fifo = folder / "part-1.parquet"
    os.mkfifo(fifo)

    def unblock() -> None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass  # nobody is reading it: nothing to unblock

    timer = threading.Timer(10.0, unblock)
    timer.start()
    try:
        with pytest.raises(DataSourceError, match=r"part-1\.parquet: not a readable Parquet file "
                           r"\(not a regular file"):  # fmt: skip
            list_row_groups(str(folder))
        policy = BadInputPolicy("skip", "label", [], [])
        assert len(list_row_groups(str(folder), policy)) == 1 and policy.counts.files == 1
        with pytest.raises(DataSourceError, match="not a regular file"):  # a file:// URL too
            list_row_groups(f"file://{fifo}")
    finally:
        timer.cancel()


def test_a_skipped_file_sets_no_columns_type(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """Under `skip`, a file refused for one column had already set the type of a column
    the files before it left null: every good file after it was then a schema mismatch
    against the file just dropped (a helper's audit)."""
    train = _copy_train(small_data, tmp_path)
    shutil.copy(train / "part-1.parquet", train / "part-2.parquet")  # a good file after
    files = sorted(train.glob("*.parquet"))
    t = pq.read_table(files[0])  # C2 not logged in the first file
    nulls = pa.nulls(t.num_rows, pa.null())
    _rewrite(files[0], t.set_column(t.schema.get_field_index("C2"), "C2", nulls))
    _cast_to_string(files[1], "C2")  # the second: C2 as text, and C3 too, a mismatch
    _cast_to_string(files[1], "C3")
    policy = BadInputPolicy.for_job(_with(small_cfg, train, small_data.test_dir, "skip"))
    from dist_train.data.validation import SchemaCheck
    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder

    cfg = small_cfg
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    groups = list_row_groups(str(train), policy, SchemaCheck(builder))
    assert {g.path for g in groups} == {str(f) for f in files if f != files[1]}
    assert policy.counts.files == 1


def test_a_label_column_of_nulls_alone_is_refused_before_training(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """A label column of Arrow's null type (pandas writes one for a column of None) has no
    footer statistics: `validate` passed it, and a test file failed only after all of
    training (a helper's audit)."""
    test = tmp_path / "test_copy"
    shutil.copytree(small_data.test_dir, test)
    bad = sorted(test.glob("*.parquet"))[0]
    t = pq.read_table(bad)
    nulls = pa.nulls(t.num_rows)
    _rewrite(bad, t.set_column(t.schema.get_field_index("label"), "label", nulls))
    with pytest.raises(FooterRowsError, match=rf"{bad}: column 'label': every label is null"):
        prepare_inputs(_with(small_cfg, small_data.train_dir, test, "error"))


def _with_row_ids(cfg: JobConfig, column: str) -> JobConfig:
    return parse_config(
        apply_overrides(cfg.model_dump(mode="json"), [f"data.row_id_column={column}"])
    )


def test_a_row_id_column_of_other_than_integers_is_refused_before_training(
    small_cfg: JobConfig, small_data: GeneratedData
) -> None:
    """It passed `validate` and failed the workers' first read, under `skip` too."""
    cfg = _with(small_cfg, small_data.train_dir, small_data.test_dir, "error")
    with pytest.raises(BadInputError, match=r"row id column 'oracle_p' has type float: row ids"):
        prepare_inputs(_with_row_ids(cfg, "oracle_p"))


def test_row_ids_from_2_63_on_are_refused_not_wrapped(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """uint64 row ids of 2**63 and more reached the batches and the ledger as negative
    numbers (a helper's audit)."""
    train, test = _copy_train(small_data, tmp_path), tmp_path / "test_copy"
    shutil.copytree(small_data.test_dir, test)
    files = [*sorted(train.glob("*.parquet")), *test.glob("*.parquet")]
    for path in files:
        t = pq.read_table(path)
        first = 2**63 if path.name == "part-1.parquet" and path.parent == train else 0
        ids = np.arange(t.num_rows, dtype=np.uint64) + np.uint64(first)
        _rewrite(path, t.append_column("rid", pa.array(ids)))
    cfg = _with_row_ids(_with(small_cfg, train, test, "error"), "rid")
    inputs = prepare_inputs(cfg)
    from dist_train.embedding.layout import build_layout
    from dist_train.train.trainer import make_batch_builder

    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    with pytest.raises(BadInputError, match=r"part-1.parquet .*'rid' holds ids from 2\*\*63 on"):
        list(builder.stream(inputs.train_groups, 1024))


def _c2_as_text(t: pa.Table) -> pa.Table:
    return t.set_column(t.schema.get_field_index("C2"), "C2", pc.cast(t["C2"], pa.string()))


@pytest.mark.parametrize(
    ("rewrite", "expected", "changed"),
    [
        (_c2_as_text, "its columns or their types differ from those checked before training", 4),
        (lambda t: t.slice(0, t.num_rows - 1), "1023 rows here, not 1024", 1),
    ],
    ids=["types", "rows"],
)
def test_a_file_rewritten_after_it_was_listed_is_refused_at_its_read(
    small_cfg: JobConfig,
    small_data: GeneratedData,
    tmp_path: Path,
    rewrite: Callable[[pa.Table], pa.Table],
    expected: str,
    changed: int,
) -> None:
    """A file overwritten while a job ran (an upstream job's output) was read by its old
    listing: C2 rewritten as text trained on, its ids hashed as strings where every other
    file's hash as integers; a label rewritten as text failed with a bare Arrow error (a
    helper's audit)."""
    train = _copy_train(small_data, tmp_path)
    groups = list_row_groups(str(train))
    bad = train / "part-1.parquet"
    _rewrite(bad, rewrite(pq.read_table(bad)))
    columns = pq.read_schema(bad).names
    error = BadInputPolicy.for_job(_with(small_cfg, train, small_data.test_dir, "error"))
    changed_since = rf"{bad} \(row group \d\): the file changed since the job listed it: "
    with pytest.raises(BadInputError, match=changed_since + re.escape(expected)):
        list(row_group_tables(groups, columns, error))
    skip = BadInputPolicy.for_job(_with(small_cfg, train, small_data.test_dir, "skip"))
    read = [source for _, source in row_group_tables(groups, columns, skip)]
    assert len(read) == 8 - changed and skip.counts.row_groups == changed


def test_a_file_of_hadoops_lz4_which_pyarrow_reads_is_taken(
    small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    """Spark and parquet-mr write LZ4 as Hadoop's framing (Parquet's codec 5), which pyarrow
    reads and names UNKNOWN: the codec check first refused such files (a review)."""
    train = _copy_train(small_data, tmp_path)
    # LZ4_RAW = 7, as pyarrow writes lz4, marked LZ4 = 5
    assert _codec_marked(train / "part-1.parquet", "lz4", 7, 5) == {"UNKNOWN"}
    inputs = prepare_inputs(_with(small_cfg, train, small_data.test_dir, "error"))
    assert sum(g.num_rows for g in inputs.train_groups) == 2 * ROWS_PER_FILE
    read = list(row_group_tables(inputs.train_groups, ["label"]))
    assert sum(t.num_rows for t, _ in read) == 2 * ROWS_PER_FILE

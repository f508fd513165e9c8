"""Synthetic generator and Parquet reading: schema, determinism, row-group sharding."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_train.config.schema import EmbeddingConfig, FeatureConfig, JobConfig, SyntheticDataConfig
from dist_train.data.batch import BatchBuilder
from dist_train.data.listing import (
    DataSourceError,
    assign_row_groups,
    eval_steps,
    list_row_groups,
    steps_per_epoch,
)
from dist_train.data.stream import iter_tables, padded
from dist_train.data.synthetic import GeneratedData, generate
from dist_train.embedding.layout import build_layout
from dist_train.train.metrics import roc_auc


def test_generator_schema_and_planted_signal(
    small_cfg: JobConfig, small_data: GeneratedData
) -> None:
    train = pq.read_table(small_data.train_dir)
    test = pq.read_table(small_data.test_dir)
    assert train.num_rows == 8192 and test.num_rows == 4096
    ids = np.concatenate([train["row_id"].to_numpy(), test["row_id"].to_numpy()])
    assert np.array_equal(np.sort(ids), np.arange(8192 + 4096))  # unique across both splits
    assert train.column_names == [
        "row_id",
        "label",
        "I1",
        "I2",
        "I3",
        "I4",
        "C1",
        "C2",
        "C3",
        "C4",
        "oracle_p",
    ]
    assert str(train.schema.field("C1").type) == "string"
    assert str(train.schema.field("C4").type) == "list<element: int64>"
    assert set(np.unique(train["label"].to_numpy())) == {0, 1}
    assert 0 < train["C2"].null_count < 0.05 * train.num_rows
    ids = train["C3"].drop_null().to_numpy()
    assert ids.min() >= 0 and ids.max() < 1000
    counts = np.sort(np.bincount(ids))[::-1]
    assert counts[0] > 20 * np.median(counts[counts > 0])  # Zipf: a heavy head
    # The planted model is learnable: the oracle ranks far above chance.
    assert roc_auc(test["label"].to_numpy(), test["oracle_p"].to_numpy()) > 0.75
    files = list(small_data.train_dir.glob("*.parquet"))
    assert len(files) == 2 and pq.ParquetFile(files[0]).metadata.num_row_groups == 4


def test_generator_is_deterministic_and_reuses(tmp_path: Path, small_cfg: JobConfig) -> None:
    a = generate(small_cfg.data.synthetic, tmp_path / "a", progress=False)
    b = generate(small_cfg.data.synthetic, tmp_path / "b", progress=False)
    assert pq.read_table(a.train_dir).equals(pq.read_table(b.train_dir))
    mtime = (a.train_dir / "part-0.parquet").stat().st_mtime_ns
    generate(small_cfg.data.synthetic, tmp_path / "a", progress=False)  # same spec: reused
    assert (a.train_dir / "part-0.parquet").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("world", [1, 2, 3])
def test_assignment_covers_every_row_group_once(small_data: GeneratedData, world: int) -> None:
    groups = list_row_groups(str(small_data.train_dir))
    assert len(groups) == 8
    for epoch in range(3):
        split = assign_row_groups(groups, world, seed=7, epoch=epoch)
        flat = [g for rank in split for g in rank]
        assert sorted(flat, key=lambda g: (g.path, g.index)) == groups
        loads = [sum(g.num_rows for g in r) for r in split]
        assert max(loads) - min(loads) <= max(g.num_rows for g in groups)
    e0 = assign_row_groups(groups, world, seed=7, epoch=0)
    assert e0 == assign_row_groups(groups, world, seed=7, epoch=0)
    if world > 1:
        assert e0 != assign_row_groups(groups, world, seed=7, epoch=1)


def test_batches_are_exact_and_steps_equal_across_ranks(small_data: GeneratedData) -> None:
    groups = list_row_groups(str(small_data.train_dir))
    split = assign_row_groups(groups, 3, seed=0, epoch=0)
    steps = steps_per_epoch(split, 500)
    rows = [sum(g.num_rows for g in rank_groups) for rank_groups in split]
    assert steps == min(rows) // 500 > 0  # every rank runs this many: the smallest share's
    for rank_groups, n in zip(split, rows, strict=True):
        tables = list(iter_tables(rank_groups, ["label"], 500))
        assert len(tables) == n // 500 >= steps and all(t.num_rows == 500 for t, _ in tables)


def test_padded_eval_covers_each_row_once(small_data: GeneratedData) -> None:
    groups = list_row_groups(str(small_data.test_dir))
    split = assign_row_groups(groups, 3, seed=0, epoch=0, shuffle=False)
    n = eval_steps(split, 300)
    filler = pq.read_table(small_data.test_dir).slice(0, 10)
    counted: list[int] = []
    for rank_groups in split:
        tables = iter_tables(rank_groups, ["row_id", "label"], 300, drop_last=False)
        out = list(padded(tables, 300, n, filler))
        assert len(out) == n and all(t.num_rows == 300 for t, _ in out)
        for table, valid in out:
            ids = table.column("row_id").to_numpy()
            counted += ids[:valid].tolist()  # what evaluation counts: the first `valid`
            assert set(ids[valid:]) <= set(ids[:valid]) or valid == 0  # padding repeats them
    # every test row counted once: padding that put its repeats first kept the total
    everything = pq.read_table(small_data.test_dir, columns=["row_id"]).column(0).to_pylist()
    assert sorted(counted) == sorted(everything) and len(counted) == 4096


def test_bad_paths_name_the_file(tmp_path: Path) -> None:
    # a mistyped path was "no Parquet files found", as an empty folder is (a helper's audit)
    with pytest.raises(DataSourceError, match=r"missing: no such file or folder"):
        list_row_groups(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    for nothing in ("empty", "missing-*"):  # a folder without Parquet, a glob matching none
        with pytest.raises(DataSourceError, match=rf"{re.escape(nothing)}: no Parquet files found"):
            list_row_groups(str(tmp_path / nothing))
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataSourceError, match=r"broken\.parquet: not a readable Parquet file"):
        list_row_groups(str(bad))


@pytest.mark.parametrize("transform", ["log1p", "none"])
def test_dense_transform_of_wide_values(transform: str) -> None:
    """log1p of a float64 beyond float32's range is its log1p (1e39 was 0: inf in float32);
    nulls, NaN and inf are 0, and narrower columns keep their values."""
    wide = [1e39, 1e30, 3.0, -1e39, float("nan"), float("inf"), None]
    table = pa.table(
        {
            "wide": pa.array(wide, pa.float64()),
            "narrow": pa.array([2.0, None, -1.0, 5.0, float("nan"), 7.0, 0.0], pa.float32()),
            "ints": pa.array([1, 2, None, -4, 5, 2**62, 7], pa.int64()),
        }
    )
    features = [FeatureConfig(name="c")]
    layout = build_layout(EmbeddingConfig(num_rows=100, dim=4), features, seed=0)
    builder = BatchBuilder(layout, features, ["wide", "narrow", "ints"], "label", transform)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning on every batch: handled
        got = builder.dense(table)
    assert got.dtype == np.float32 and got.shape == (7, 3)
    for i, name in enumerate(["wide", "narrow", "ints"]):
        x = np.array([np.nan if v is None else v for v in table[name].to_pylist()], np.float64)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if transform == "log1p":
            want = np.log1p(np.maximum(x, 0.0)).astype(np.float32)
        else:  # beyond float32 is a bad value under a job's policy; here inf, so 0
            want = np.where(np.abs(x) > np.finfo(np.float32).max, 0.0, x).astype(np.float32)
        np.testing.assert_array_equal(got[:, i], want, err_msg=name)
    if transform == "log1p":
        assert got[0, 0] == pytest.approx(89.8008, abs=1e-3)


@pytest.mark.parametrize(
    ("per_group", "want"), [(100_000, [100_000, 50_000]), (50_000, [50_000] * 3)]
)
def test_generated_row_groups_hold_the_rows_asked(
    tmp_path: Path, per_group: int, want: list[int]
) -> None:
    # a write ends a row group: 65,536-row chunks cut 100,000-row groups at 65,536
    synth = SyntheticDataConfig(
        num_train_rows=150_000, num_test_rows=1024, num_train_files=1, rows_per_group=per_group
    )
    train = generate(synth, tmp_path, progress=False).train_dir
    meta = pq.ParquetFile(next(train.glob("*.parquet"))).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == want


def test_string_lists_of_over_two_million_ids_in_a_chunk_are_generated(tmp_path: Path) -> None:
    """pyarrow makes a chunked array of more than 2^21 strings, which a list column's
    values refused: gen-data (and train) failed with a TypeError (a helper's audit)."""
    synth = SyntheticDataConfig(
        num_train_rows=30_000,
        num_test_rows=100,
        num_train_files=1,
        string_columns=["C24"],
        mean_multi_hot_length=80,
    )
    train = generate(synth, tmp_path, progress=False).train_dir
    column = pq.read_table(next(train.glob("*.parquet")), columns=["C24"]).column("C24")
    assert pa.compute.sum(pa.compute.list_value_length(column)).as_py() > 2**21


def test_the_training_rows_are_dealt_evenly_over_the_files_asked(tmp_path: Path) -> None:
    """9 rows in 4 files were written as 3 files of 3 rows (each a ceiling's share), one
    file fewer than asked, unsaid (a review's finding); more files than rows is refused."""
    synth = SyntheticDataConfig(num_train_rows=9, num_test_rows=8, num_train_files=4)
    files = sorted(generate(synth, tmp_path, progress=False).train_dir.glob("*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [3, 2, 2, 2]
    ids = pa.concat_tables([pq.read_table(f, columns=["row_id"]) for f in files])
    assert ids.column("row_id").to_pylist() == list(range(9))  # each row once, in order
    with pytest.raises(ValueError, match=r"num_train_files \(4\) exceeds num_train_rows \(3\)"):
        SyntheticDataConfig(num_train_rows=3, num_train_files=4)


def test_a_dataset_missing_a_file_is_generated_again(tmp_path: Path) -> None:
    # reuse looked at dataset.json alone: 3,000 of 4,000 rows trained, unsaid
    synth = SyntheticDataConfig(num_train_rows=4000, num_test_rows=1024, rows_per_group=1000)
    data = generate(synth, tmp_path, progress=False)
    first = sorted(data.train_dir.glob("*.parquet"))
    before = [f.read_bytes() for f in first]
    first[-1].unlink()
    generate(synth, tmp_path, progress=False)
    assert [f.read_bytes() for f in sorted(data.train_dir.glob("*.parquet"))] == before


@pytest.mark.parametrize("record", [b'{"form', b'{"format": 2, "compl'])
def test_a_dataset_whose_record_was_cut_is_generated_again(tmp_path: Path, record: bytes) -> None:
    """A run cut short as it wrote dataset.json left it cut: the next gen-data or training
    run on generated data failed with a JSONDecodeError traceback. (A dataset.json of
    anything else, an empty one too, is a user's:
    test_the_generator_replaces_its_own_files_and_never_a_users)"""
    synth = SyntheticDataConfig(num_train_rows=2000, num_test_rows=1024, rows_per_group=1000)
    data = generate(synth, tmp_path, progress=False)
    before = [f.read_bytes() for f in sorted(data.train_dir.glob("*.parquet"))]
    (tmp_path / "dataset.json").write_bytes(record)
    generate(synth, tmp_path, progress=False)
    assert [f.read_bytes() for f in sorted(data.train_dir.glob("*.parquet"))] == before
    assert generate(synth, tmp_path, progress=False) == data  # recorded whole again: reused


def test_the_generators_seed_is_not_negative() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        SyntheticDataConfig(seed=-1)


def test_a_dataset_of_other_row_groups_is_generated_again(tmp_path: Path) -> None:
    # written before the generator wrote whole groups a chunk: its groups were cut at 65,536
    synth = SyntheticDataConfig(
        num_train_rows=3000, num_test_rows=1024, num_train_files=1, rows_per_group=1000
    )
    data = generate(synth, tmp_path, progress=False)
    part = next(data.train_dir.glob("*.parquet"))
    pq.write_table(pq.read_table(part), part, row_group_size=700)  # same rows, other groups
    generate(synth, tmp_path, progress=False)
    meta = pq.ParquetFile(part).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 3


def test_the_generator_replaces_its_own_files_and_never_a_users(tmp_path: Path) -> None:
    """`gen-data --out D` deleted every Parquet file at the top of D/train and D/test, a
    user's included, and wrote beside nested ones, which the reader then trained on too."""
    from dist_train.data.listing import DataSourceError

    synth = SyntheticDataConfig(num_train_rows=2000, num_test_rows=1024, rows_per_group=1000)
    users = tmp_path / "users"
    (users / "train" / "2024").mkdir(parents=True)
    mine = users / "train" / "my_precious.parquet"
    nested = users / "train" / "2024" / "part-0.parquet"  # the generator's name, not its file
    for f in (mine, nested):
        pq.write_table(pa.table({"x": [1]}), f)
    with pytest.raises(DataSourceError, match=r"2024/part-0.parquet: .* 2 Parquet file\(s\)"):
        generate(synth, users, progress=False)
    assert mine.is_file() and nested.is_file()
    assert sorted(p.name for p in users.iterdir()) == ["train"]  # nothing written

    # a user's own dataset.json does not make their files the generator's: a file of the
    # generator's name beside it was deleted (an empty one too), and the record replaced
    other = tmp_path / "another_users"
    (other / "train").mkdir(parents=True)
    theirs = other / "train" / "part-0.parquet"
    pq.write_table(pa.table({"x": [1]}), theirs)
    users_records = (b'{"name": "my data"}', b"name: my data\n", b"\xff\xfe", b"")
    for record in (*users_records, b'{"format": "parquet", "source": "my export"}'):
        (other / "dataset.json").write_bytes(record)
        with pytest.raises(DataSourceError, match=r"dataset.json: not a record this command"):
            generate(synth, other, progress=False)
        assert theirs.is_file() and (other / "dataset.json").read_bytes() == record
    (other / "dataset.json").unlink()
    with pytest.raises(DataSourceError, match=r"part-0.parquet: .* did not write"):
        generate(synth, other, progress=False)
    # a refused --out is a bad argument, as export's and sweep's are: gen-data exited 1
    from dist_train.cli.main import main

    assert main(["gen-data", "--out", str(other)]) == 2
    assert main(["convert", "adult", "--out", str(other)]) == 2
    assert theirs.is_file()
    # nor is a user's record alone: it was replaced
    (tmp_path / "empty" / "dataset.json").parent.mkdir()
    (tmp_path / "empty" / "dataset.json").write_text('{"my": "precious"}')
    with pytest.raises(DataSourceError, match=r"dataset.json: not a record this command"):
        generate(synth, tmp_path / "empty", progress=False)
    assert (tmp_path / "empty" / "dataset.json").read_text() == '{"my": "precious"}'

    ours = generate(synth, tmp_path / "ours", progress=False)
    bigger = synth.model_copy(update={"num_train_rows": 3000})
    generate(bigger, tmp_path / "ours", progress=False)  # its own files: replaced
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in ours.train_dir.glob("*")) == 3000
    (ours.train_dir / "extra.parquet").write_bytes(mine.read_bytes())
    with pytest.raises(DataSourceError, match=r"extra.parquet: .* other than the ones it wrote"):
        generate(synth, tmp_path / "ours", progress=False)


def test_a_generation_stopped_midway_leaves_no_file_that_reads_as_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C closed the file being written, footer and all: 1,245,184 of its 1,500,000
    rows read as the whole file, and a job given the folder trained on them, unsaid (a
    helper's audit). The file is written under a hidden name, and the folders of a
    generation that did not end are refused by name; the next run generates them again."""
    from dist_train.data import synthetic
    from dist_train.data.listing import resolve_files

    synth = SyntheticDataConfig(
        num_train_rows=4000, num_test_rows=1024, num_train_files=2, rows_per_group=500
    )
    chunks = {"left": 3}  # the second file's second chunk is interrupted
    real_chunk = synthetic._chunk

    def interrupted(*args: object, **kwargs: object) -> pa.Table:
        chunks["left"] -= 1
        if chunks["left"] < 0:
            raise KeyboardInterrupt
        return real_chunk(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_CHUNK_ROWS", 1000)
    monkeypatch.setattr(synthetic, "_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(synth, tmp_path, progress=False)
    train = tmp_path / "train"
    assert sorted(f.name for f in train.iterdir()) == ["part-0.parquet"]  # whole, no other
    for folder in (train, tmp_path):
        with pytest.raises(DataSourceError, match="gen-data` that stopped before it ended"):
            resolve_files(str(folder))
    monkeypatch.setattr(synthetic, "_chunk", real_chunk)
    data = generate(synth, tmp_path, progress=False)
    assert (
        sum(pq.ParquetFile(f).metadata.num_rows for f in resolve_files(str(data.train_dir))) == 4000
    )

    # a file being written when the process was killed (no clean-up ran) is the generator's
    pq.write_table(pa.table({"x": [1]}), train / ".part-1.parquet")
    (tmp_path / "dataset.json").write_text('{"format": 3, "complete": false}')
    generate(synth, tmp_path, progress=False)
    assert not (train / ".part-1.parquet").exists()


def test_reused_data_with_another_parquet_file_in_its_folders_is_refused(tmp_path: Path) -> None:
    """A whole dataset was reused while a user's Parquet file sat in a subfolder of train/,
    which jobs reading the folder then trained on (a helper's audit)."""
    synth = SyntheticDataConfig(num_train_rows=2000, num_test_rows=1024, rows_per_group=1000)
    data = generate(synth, tmp_path, progress=False)
    (data.train_dir / "extra").mkdir()
    pq.write_table(
        pq.read_table(next(data.test_dir.glob("*.parquet"))),
        data.train_dir / "extra" / "mine.parquet",
    )
    with pytest.raises(
        DataSourceError, match=r"extra/mine.parquet: .* other than the ones it wrote"
    ):
        generate(synth, tmp_path, progress=False)
    from dist_train.data.synthetic import generated

    with pytest.raises(DataSourceError, match=r"extra/mine.parquet"):
        generated(synth, tmp_path)


def test_vocabularies_past_this_machines_memory_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MemoryError's traceback (or the kernel's kill) once the generator allocated."""
    import os

    sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**18}  # a 1 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: sizes[name])
    cfg = SyntheticDataConfig(
        num_categorical=2, cardinalities=[2**26, 2**26], multi_hot_columns=[], string_columns=[]
    )
    with pytest.raises(DataSourceError, match=r"4\.0 GiB to sample from, .* has 1\.0 GiB"):
        generate(cfg, tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="less than or equal to 268435456"):
        SyntheticDataConfig(max_cardinality=10**10)

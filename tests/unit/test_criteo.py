"""`dist-train convert criteo` on small TSV files written here (never downloaded)."""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_train.cli.main import main
from dist_train.config.schema import EmbeddingConfig, FeatureConfig
from dist_train.data import criteo
from dist_train.data.batch import BatchBuilder
from dist_train.data.criteo import CATEGORICAL, DENSE, convert_criteo
from dist_train.data.listing import DataSourceError, list_row_groups
from dist_train.data.output_folder import FolderRefused
from dist_train.data.stream import row_group_tables
from dist_train.data.validation import BadInputError
from dist_train.embedding.layout import build_layout


def _line(rng: np.random.Generator, blanks: bool) -> str:
    label = str(rng.integers(0, 2))
    dense = [str(rng.integers(-1, 500)) for _ in DENSE]
    cats = [f"{rng.integers(0, 2**32):08x}" for _ in CATEGORICAL]
    if blanks:
        dense[rng.integers(0, 13)] = ""
        cats[rng.integers(0, 26)] = ""
    return "\t".join([label, *dense, *cats])


def _write(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()


def _each_line_once(out: Path, lines: list[bytes]) -> None:
    """The conversion in ``out`` holds every line of ``lines``, in order, once (by C1)."""
    ids = pq.read_table(out)["C1"].to_pylist()
    assert ids == [line.split(b"\t")[14].decode() for line in lines]


@pytest.fixture
def good_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    a = _write(tmp_path / "day_0.tsv", [_line(rng, i % 3 == 0) for i in range(700)])
    b = _write(tmp_path / "day_1.tsv.gz", [_line(rng, i % 5 == 0) for i in range(300)])
    return [a, b]


def test_converts_plain_and_gzip_with_blanks(good_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "parquet"
    result = convert_criteo(
        [str(f) for f in good_files], out, rows_per_group=128, rows_per_file=600, progress=False
    )
    assert result.rows == 1000 and result.bad_lines == {}
    assert [Path(f).name for f in result.files] == ["part-00000.parquet", "part-00001.parquet"]
    t = pq.read_table(out)
    assert t.num_rows == 1000 and t.column_names[:3] == ["label", "I1", "I2"]
    assert str(t.schema.field("I1").type) == "int64" and str(t.schema.field("C1").type) == "string"
    assert t["I1"].null_count + sum(t[c].null_count for c in DENSE[1:]) > 0  # blanks -> null
    # every field of every line, in order: labels, integers, hex strings, blanks as nulls
    lines = [line.split("\t") for f in good_files for line in _text(f).splitlines()]
    want = {
        "label": [int(f[0]) for f in lines],
        **{c: [int(f[1 + i]) if f[1 + i] else None for f in lines] for i, c in enumerate(DENSE)},
        **{c: [f[14 + i] or None for f in lines] for i, c in enumerate(CATEGORICAL)},
    }
    assert t.select(list(want)).to_pydict() == want
    assert pq.ParquetFile(result.files[0]).metadata.num_row_groups == 5  # 600 rows / 128
    # The output trains as-is: hashed string features, integer dense features.
    features = [FeatureConfig(name=c, chunks=1) for c in CATEGORICAL]
    layout = build_layout(EmbeddingConfig(num_rows=1000, dim=4), features, seed=0)
    batch = BatchBuilder(layout, features, DENSE, "label").build(t.slice(0, 64))
    assert batch.dense.shape == (64, 13) and len(batch.sparse.keys()) == 26


def test_pages_carry_checksums(good_files: list[Path], tmp_path: Path) -> None:
    """A byte flipped in a converted file's page data fails its page checksum, naming the
    file and row group (without checksums this file reads without an error)."""
    path = Path(convert_criteo([str(good_files[0])], tmp_path / "o", progress=False).files[0])
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)  # label
    raw = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    raw[start + chunk.total_compressed_size - 1] ^= 0x01  # in the last page's data
    path.write_bytes(bytes(raw))
    groups = list_row_groups(str(path))
    with pytest.raises(DataSourceError, match=rf"{path} \(row group 0\): cannot read .*CRC"):
        list(row_group_tables(groups, ["label"]))


BAD_LINES = {
    "wrong_field_count": "1\t2\t3",
    "dense_not_integer": "\t".join(["0", "abc", *[""] * 12, *["deadbeef"] * 26]),
    "label_not_0_or_1": "\t".join(["2", *["1"] * 13, *["deadbeef"] * 26]),
}


@pytest.mark.parametrize("reason", list(BAD_LINES))
def test_bad_lines_error_or_skip(reason: str, good_files: list[Path], tmp_path: Path) -> None:
    lines = good_files[0].read_text().splitlines()
    lines.insert(10, BAD_LINES[reason])
    bad = _write(tmp_path / "bad.tsv", lines)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("saved earlier")
    # the line itself (a wrong field count read "a line": no number, from a threaded read)
    with pytest.raises(BadInputError, match=rf"{bad}: line ~?11: "):
        convert_criteo([str(bad)], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # no partial dataset left
    result = convert_criteo([str(bad)], out, on_bad_input="skip", progress=False)
    assert result.rows == 700 and result.bad_lines == {reason: 1}


def test_blank_lines_are_passed_over(good_files: list[Path], tmp_path: Path) -> None:
    # they hold no example: a file ending in a blank line, or with one inside, converts whole
    lines = good_files[0].read_text().splitlines()
    lines.insert(1, "")
    bad = _write(tmp_path / "blank.tsv", [*lines, ""])
    result = convert_criteo([str(bad)], tmp_path / "out", progress=False)
    assert result.rows == 700 and result.bad_lines == {}


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(("field", "name"), [(20, "C7"), (2, "I2"), (0, "label")])
def test_a_field_that_is_no_utf8_is_a_bad_line(
    policy: str, field: int, name: str, tmp_path: Path
) -> None:
    # it stopped the whole conversion with Arrow's "invalid UTF8 data", skip or not, no line
    rng = np.random.default_rng(1)
    good = [_line(rng, False).encode() for _ in range(20)]
    broken = good[5].split(b"\t")
    broken[field] = b"1\xff\xfe"
    path = tmp_path / "bytes.tsv"
    path.write_bytes(b"\n".join([*good[:5], b"\t".join(broken), *good[5:]]) + b"\n")
    if policy == "error":
        with pytest.raises(BadInputError, match=rf"{path}: line ~6: column '{name}': .* UTF-8"):
            convert_criteo([str(path)], tmp_path / "out", progress=False)
        return
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    # counted once, under its first reason (a label that is no text is no 0 or 1 either)
    assert result.rows == 20 and result.bad_lines == {"not_utf8": 1}
    assert pq.read_table(tmp_path / "out").schema.field("C7").type == "string"


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_line_of_the_wrong_field_count_that_is_no_utf8(
    policy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """pyarrow decodes such a line before its invalid-row handler sees it: the conversion
    stopped under skip too (a traceback printed, at times an abort). Blocks of a few lines,
    so that rows were given before the line was met: none is given twice."""
    monkeypatch.setattr(criteo, "BLOCK_BYTES", 4096)
    rng = np.random.default_rng(2)
    good = [_line(rng, False).encode() for _ in range(300)]
    short = [*good[:100], b"", b"1\tcaf\xe9", b"1\t2\t3", *good[100:]]  # a blank, 2 bad
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"\n".join(short) + b"\n")
    if policy == "error":
        with pytest.raises(BadInputError, match=rf"{path}: line 102: 2 fields, .* not UTF-8"):
            convert_criteo([str(path)], tmp_path / "out", progress=False)
        # a bad value above it, in the same block, is named first, as the lines come (the
        # filter named the later line)
        monkeypatch.setattr(criteo, "BLOCK_BYTES", 1 << 20)
        label = short[40].split(b"\t")
        short[40] = b"\t".join([b"7", *label[1:]])
        path.write_bytes(b"\n".join(short) + b"\n")
        with pytest.raises(BadInputError, match=rf"{path}: line ~41: column 'label'"):
            convert_criteo([str(path)], tmp_path / "out", progress=False)
        return
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    assert result.rows == 300 and result.bad_lines == {"wrong_field_count": 2}
    _each_line_once(tmp_path / "out", good)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("filler", [b"\0", b"x"])
def test_a_line_longer_than_a_block_is_a_bad_line(
    policy: str, filler: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stretch of zeros without a line end (a damaged disk's) ended the conversion under
    skip too, naming no line: "straddling object straddles two block boundaries (try to
    increase block size?)" (a helper's audit)."""
    monkeypatch.setattr(criteo, "BLOCK_BYTES", 4096)
    rng = np.random.default_rng(3)
    good = [_line(rng, False).encode() for _ in range(200)]
    path = tmp_path / "damaged.tsv"
    path.write_bytes(b"\n".join([*good[:100], filler * 40_000, *good[100:]]) + b"\n")
    if policy == "error":
        with pytest.raises(BadInputError, match=rf"{path}: line 101: 8,192 bytes or more"):
            convert_criteo([str(path)], tmp_path / "out", progress=False)
        return
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    assert result.rows == 200 and result.bad_lines == {"line_too_long": 1}
    _each_line_once(tmp_path / "out", good)


def test_a_long_good_line_the_first_read_took_is_not_lost_by_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow takes a line of one to two blocks or not, as it falls on the blocks: the
    second read dropped every line over a block, so a long line the first read had given
    was dropped, and the rows given were passed over one too many: a good row lost (a
    review)."""
    monkeypatch.setattr(criteo, "BLOCK_BYTES", 4096)
    rng = np.random.default_rng(4)
    good = [_line(rng, False).encode() for _ in range(120)]
    fields = good[5].split(b"\t")
    good[5] = b"\t".join([*fields[:14], b"c" * 6000, *fields[15:]])  # 1.5 blocks, 40 fields
    for shift in range(0, 4096, 512):  # where the long line falls on the blocks
        lines = [b"x" * shift, *good[:100], b"\0" * 40_000, *good[100:]]
        path = tmp_path / f"long-{shift}.tsv"
        path.write_bytes(b"\n".join(lines) + b"\n")
        out = tmp_path / f"out-{shift}"
        result = convert_criteo([str(path)], out, on_bad_input="skip", progress=False)
        wrong = {"wrong_field_count": 1} if shift else {}  # the first line, x's
        assert result.bad_lines == {"line_too_long": 1, **wrong}, shift
        _each_line_once(out, good)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_a_long_lines_end_at_any_chunk_edge_ends_it_and_no_more(
    end: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second read's filter, fed in chunks of every size: a \r\n split after a long
    line made a blank line (the line numbers after it one too high), and with lone \r
    line ends a long line's \r at a chunk's end swallowed the next line (a review)."""
    import io

    monkeypatch.setattr(criteo, "BLOCK_BYTES", 16)  # lines of 32 bytes or more dropped
    good = [f"line{i:02d}".encode() for i in range(12)]
    for long in (40, 31, 32, 90):
        text = end.join([*good[:5], b"z" * long, *good[5:]]) + end
        for chunk in range(1, len(text) + 2):
            monkeypatch.setattr(criteo._DropUndecodable, "CHUNK_BYTES", chunk)
            result = criteo.ConvertResult()
            stream = criteo._DropUndecodable(io.BytesIO(text), "f", "skip", result)
            kept = stream.read().split(b"\n")[:-1]
            dropped = long >= 32
            assert kept == [*good[:5], *([] if dropped else [b"z" * long]), *good[5:]], chunk
            assert result.bad_lines == ({"line_too_long": 1} if dropped else {}), chunk
            named = criteo._DropUndecodable(
                io.BytesIO(text + b"\xff\t\xfe\n"), "f", "error", result
            )
            named.read()
            line = 6 if dropped else 14  # the long line, else the last (2 fields, no UTF-8)
            assert str(named.error).startswith(f"f: line {line}: "), (chunk, named.error)


@pytest.mark.parametrize("end", [b"\r", b"\r\n"])
def test_the_reread_ends_lines_as_pyarrow_does(end: bytes, tmp_path: Path) -> None:
    """The re-read's filter split lines at \\n only: a file of \\r line ends was one bad
    line, dropped whole (0 rows, no error), and a \\r inside a bad line's bytes left it to
    stop the conversion again."""
    rng = np.random.default_rng(3)
    good = [_line(rng, False).encode() for _ in range(50)]
    lines = [*good[:20], b"1\tcaf\xe9", *good[20:30], b"\xe9\r\xe9" + b"\t" * 39, *good[30:]]
    path = tmp_path / "cr.tsv"
    path.write_bytes(end.join(lines) + end)
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    # the \r splits the last bad line in two, as pyarrow reads it: 2 short lines, and one
    # of 40 fields whose first is no UTF-8
    assert result.rows == 50
    assert result.bad_lines == {"wrong_field_count": 2, "not_utf8": 1}


def test_text_whose_first_bytes_look_compressed_is_text(tmp_path: Path) -> None:
    """A first line that begins "BZh" (bzip2's magic) failed the whole file as a bzip2
    stream that is not one."""
    rng = np.random.default_rng(4)
    path = tmp_path / "bzh.tsv"
    path.write_bytes(b"BZh garbage\n" + b"\n".join(_line(rng, False).encode() for _ in range(50)))
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    assert result.rows == 50 and result.bad_lines == {"wrong_field_count": 1}
    # while a damaged compressed file is an error of its codec, not one bad line of text
    # (a first fix read it as text: 0 rows, exit 0, under skip)
    text = b"\n".join(_line(rng, False).encode() for _ in range(50))
    for name, data in (("gz", gzip.compress(text)), ("bz2", bz2.compress(text))):
        broken = bytearray(data)
        broken[10:40] = b"\xff" * 30
        damaged = tmp_path / f"damaged.{name}"
        damaged.write_bytes(bytes(broken))
        with pytest.raises(BadInputError, match=rf"damaged\.{name}: .*(inflate|bz2)"):
            convert_criteo([str(damaged)], tmp_path / f"o_{name}", on_bad_input="skip")


def test_compressed_by_content_empty_files_and_missing_inputs(
    good_files: list[Path], tmp_path: Path
) -> None:
    """A gzip file not named .gz was read as text (every line bad); an empty file stopped
    the whole conversion ("Empty CSV file") where one of blank lines converts to nothing;
    a missing input was found only once the inputs before it were converted."""
    plain = good_files[0]
    unnamed = tmp_path / "day_0_gzipped"
    unnamed.write_bytes(gzip.compress(plain.read_bytes()))
    lz4 = tmp_path / "day_0.lz4"  # by its name before: kept, by its frame's first bytes
    with pa.output_stream(str(lz4), compression="lz4") as out:
        out.write(plain.read_bytes())
    empty, empty_gz = tmp_path / "empty.tsv", tmp_path / "empty.tsv.gz"
    empty.write_bytes(b"")
    empty_gz.write_bytes(gzip.compress(b""))
    # zstd that opens with a skippable frame (pzstd writes one) was read as text
    skippable = tmp_path / "day_0.pzst"
    with pa.output_stream(str(tmp_path / "plain.zst"), compression="zstd") as out:
        out.write(plain.read_bytes())
    frame = (tmp_path / "plain.zst").read_bytes()
    skippable.write_bytes(b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"\0" * 4 + frame)
    inputs = [str(p) for p in (unnamed, empty, empty_gz, lz4, skippable)]
    result = convert_criteo(inputs, tmp_path / "out", progress=False)
    assert result.rows == 2100 and result.bad_lines == {}
    # LZ4's legacy format, which pyarrow cannot read, was partly converted as text
    legacy = tmp_path / "legacy.lz4"
    legacy.write_bytes(b"\x02\x21\x4c\x18" + b"\0" * 64)
    with pytest.raises(BadInputError, match=r"legacy\.lz4: LZ4's legacy format"):
        convert_criteo([str(legacy)], tmp_path / "o3", on_bad_input="skip", progress=False)
    with pytest.raises(BadInputError, match=r"nosuch\.tsv: no such file"):
        convert_criteo([str(plain), str(tmp_path / "nosuch.tsv")], tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())
    # nothing to convert: said, not "wrote 0 rows to 0 file(s)" and an empty folder
    with pytest.raises(
        BadInputError, match=r"empty\.tsv, .*empty\.tsv\.gz: no rows to convert: empty"
    ):
        convert_criteo([str(empty), str(empty_gz)], tmp_path / "o4", progress=False)
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\n")
    with pytest.raises(BadInputError, match=r"no rows to convert: every line bad \(\{'wrong"):
        convert_criteo([str(bad)], tmp_path / "o5", on_bad_input="skip", progress=False)


def test_parts_are_written_hidden_and_moved_in_at_the_end(
    good_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts went straight to out/part-N.parquet: a conversion killed midway (SIGKILL, where
    no clean-up runs) left whole-looking files of part of the rows (a helper's audit). Now
    each is written in a hidden folder, which readers pass over, and a later conversion
    into the folder removes what a killed one left."""
    from dist_train.data import criteo

    out = tmp_path / "parquet"
    # a running conversion's folder (its process alive), its parts written or not yet, and
    # another host's (a shared folder): both would write part-00000 on, so refused
    here = socket.gethostname()
    for name in (f"{os.getppid()}@{here}", f"{2**22 + 1}@another-host"):
        running = out / f"{criteo.STAGING_PREFIX}{name}"
        running.mkdir(parents=True)
        with pytest.raises(FolderRefused, match=r"another conversion is writing into this"):
            convert_criteo([str(good_files[0])], out, progress=False)
        assert running.is_dir()
        shutil.rmtree(running)
    # an older dist_train's folder of a running pid: kept, and not refused (as before)
    older = out / f"{criteo.STAGING_PREFIX}{os.getppid()}"
    older.mkdir(parents=True)
    convert_criteo([str(good_files[0])], tmp_path / "y", progress=False)  # (another folder)
    result = convert_criteo([str(good_files[0])], out, progress=False)
    assert older.is_dir()
    for f in result.files:
        Path(f).unlink()
    shutil.rmtree(older)
    # this process's pid (a container's pid 1 finds its killed predecessor's): stale
    own = out / f"{criteo.STAGING_PREFIX}{os.getpid()}@{here}"
    own.mkdir(parents=True)
    (own / "part-00000.parquet").write_bytes(b"cut")
    convert_criteo([str(good_files[0])], tmp_path / "x", progress=False)  # (another folder)
    assert own.is_dir()
    result = convert_criteo([str(good_files[0])], out, progress=False)
    assert not own.exists() and pq.read_table(out).num_rows == result.rows
    for f in result.files:
        Path(f).unlink()
    killed = out / f"{criteo.STAGING_PREFIX}{2**22 + 1}"  # past Linux's largest pid: none
    killed.mkdir(parents=True)
    (killed / "part-00000.parquet").write_bytes(b"cut")
    opened: list[Path] = []
    real = criteo.pq.ParquetWriter

    def writer(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(path))
        assert not (out / "part-00000.parquet").exists()  # nothing moved in before the end
        return real(path, *args, **kwargs)

    monkeypatch.setattr(criteo.pq, "ParquetWriter", writer)
    result = convert_criteo([str(f) for f in good_files], out, rows_per_file=400, progress=False)
    assert len(opened) == 3 and all(p.parent.name.startswith(".converting-") for p in opened)
    assert sorted(p.name for p in out.iterdir()) == [Path(f).name for f in result.files]
    assert pq.read_table(out).num_rows == 1000


def test_a_file_another_process_wrote_meanwhile_is_neither_replaced_nor_removed(
    good_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion moved its parts in over whatever was there, and one that failed removed
    every part-N.parquet of its list, another conversion's too (a helper's audit)."""
    from dist_train.data import criteo

    out = tmp_path / "parquet"
    real = criteo.pq.ParquetWriter
    theirs = out / "part-00001.parquet"

    def writer(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "part-00002.parquet":  # another process's file lands meanwhile
            theirs.write_bytes(b"another conversion's")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(criteo.pq, "ParquetWriter", writer)
    with pytest.raises(FolderRefused, match=r"part-00001.parquet: another process wrote it"):
        convert_criteo([str(f) for f in good_files], out, rows_per_file=400, progress=False)
    assert theirs.read_bytes() == b"another conversion's"
    assert sorted(p.name for p in out.iterdir()) == ["part-00001.parquet"]  # ours: gone


def test_a_file_given_twice_is_refused(good_files: list[Path], tmp_path: Path) -> None:
    """`convert criteo day_*.tsv day_0.tsv` converted day 0 twice: every row twice (a
    helper's audit). By name, by another spelling and through a link."""
    plain = good_files[0]
    link, hard = tmp_path / "link.tsv", tmp_path / "hard.tsv"
    link.symlink_to(plain)
    os.link(plain, hard)  # a path of its own: compared by path, it was converted twice
    for again in (str(plain), f"{plain.parent}/./{plain.name}", str(link), str(hard)):
        with pytest.raises(BadInputError, match=rf"{again}: the same file as {plain}, given"):
            convert_criteo([str(plain), again], tmp_path / "o", progress=False)
        assert not (tmp_path / "o").exists()
    # a pipe (`<(zcat day_0.gz)`) was 'no such file'
    fifo = tmp_path / "fifo.tsv"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match=rf"{fifo}: a pipe or a device, not a file"):
        convert_criteo([str(fifo)], tmp_path / "o", progress=False)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_dense_beyond_int64_is_a_bad_line(policy: str, tmp_path: Path) -> None:
    """An integer too large for int64 is that line's bad value, not an Arrow error."""
    cats = ["deadbeef"] * 26
    fits = "\t".join(["1", "-9223372036854775808", "0009223372036854775807", *[""] * 11, *cats])
    big = "\t".join(["0", "9223372036854775808", *[""] * 12, *cats])
    huge = "\t".join(["0", "", "9" * 5000, *[""] * 11, *cats])  # past int()'s digit limit
    path = _write(tmp_path / "big.tsv", [fits, big, fits, huge])
    if policy == "error":
        with pytest.raises(
            BadInputError, match=rf"{path}: line ~2: column 'I1': '9223372036854775808'"
        ):
            convert_criteo([str(path)], tmp_path / "out", progress=False)
        return
    result = convert_criteo([str(path)], tmp_path / "out", on_bad_input="skip", progress=False)
    assert result.rows == 2 and result.bad_lines == {"dense_not_integer": 2}
    t = pq.read_table(tmp_path / "out")  # the int64 extremes (leading zeros too) still fit
    assert t["I1"].to_pylist() == [-(2**63)] * 2 and t["I2"].to_pylist() == [2**63 - 1] * 2


def test_output_dir_with_parquet_files_is_refused(good_files: list[Path], tmp_path: Path) -> None:
    """An earlier conversion's parts are neither overwritten, removed nor mixed into the new
    dataset: the output directory must hold no Parquet files."""
    out = tmp_path / "out"
    convert_criteo([str(f) for f in good_files], out, rows_per_file=300, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 4
    with pytest.raises(FolderRefused, match=rf"{out}: .*Parquet files \({out}/part-00000"):
        convert_criteo([str(good_files[0])], out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_convert(good_files: list[Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["convert", "criteo", *map(str, good_files), "--out", str(tmp_path / "o")]) == 0
    said = capsys.readouterr()
    assert "wrote 1,000 rows to 1 file(s)" in said.out and "[convert] " in said.err
    # -q: its progress too was printed (a helper's audit)
    assert main(["-q", "convert", "criteo", str(good_files[0]), "--out", str(tmp_path / "q")]) == 0
    assert "[convert]" not in capsys.readouterr().err
    assert (
        main(["convert", "criteo", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "n")]) == 1
    )
    assert "nope.tsv: no such file" in capsys.readouterr().err
    again = ["convert", "criteo", str(good_files[0]), "--out", str(tmp_path / "o")]
    assert main(again) == 2  # a refused --out, as gen-data's and convert adult's (it was 1)
    assert "already holds Parquet files" in capsys.readouterr().err


SLOW_INPUT = """
import io, sys, time
import pyarrow as pa
from dist_train.cli.main import main

real = pa.input_stream


class Slow(io.RawIOBase):  # each read after the first slow: one is still in flight at exit
    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def readable(self):
        return True

    def readinto(self, b):
        self.reads += 1
        if self.reads > 1:
            time.sleep(0.5)
        data = self.inner.read(len(b))
        b[: len(data)] = data
        return len(data)


pa.input_stream = lambda *args, **kwargs: Slow(real(*args, **kwargs))
sys.argv = ["dist-train", *sys.argv[1:]]
sys.exit(main())
"""


def test_the_command_ends_untouched_by_a_read_ahead_in_flight(
    good_files: list[Path], tmp_path: Path
) -> None:
    """pyarrow's CSV reader reads ahead on its own threads: a read still in flight as the
    interpreter tore down aborted the process (status 134, "terminate called without an
    active exception"), after a bad line's error (every run here, the input slow) or after
    a whole conversion (1 run in 3 of a small file on a busy machine)."""
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    line = _line(rng, blanks=False)
    # over two of the reader's 16 MiB blocks: the next is being read as the first fails
    bad_first = _write(tmp_path / "bad.tsv", ["x" + line[1:]] + [line] * 200_000)
    for tsv, code, said in (
        (good_files[0], 0, "wrote 700 rows to 1 file(s)"),
        (bad_first, 1, "line ~1: column 'label': 'x' is not 0 or 1"),
    ):
        argv = ["convert", "criteo", str(tsv), "--out", str(tmp_path / tsv.stem)]
        done = subprocess.run(
            [sys.executable, "-c", SLOW_INPUT, *argv], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == code, done.stderr
        assert said in done.stdout + done.stderr


def test_row_groups_are_whole_across_the_parsers_blocks(
    good_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each 16 MiB block of text ended a row group: 65,536 then 1,434 rows, in turn. Rows
    short of a group now go with the next block's; a file's last group may be short."""
    monkeypatch.setattr(criteo, "BLOCK_BYTES", 20_000)  # blocks of about 60 lines
    result = convert_criteo(
        [str(f) for f in good_files], tmp_path / "out", 128, rows_per_file=600, progress=False
    )
    groups = [
        [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]
        for f in map(pq.ParquetFile, result.files)
    ]
    assert groups == [[128, 128, 128, 128, 88], [128, 128, 128, 16]]
    order = pq.read_table(tmp_path / "out")["C1"].to_pylist()
    lines = [ln.split("\t")[14] or None for f in good_files for ln in _text(f).splitlines()]
    assert order == lines  # every row once, in the input's order


def test_parquet_files_in_a_linked_folder_refuse_the_output(
    good_files: list[Path], tmp_path: Path
) -> None:
    """The "no Parquet files at any depth" check passed over linked folders, which the
    reader follows: it would then read their files beside the conversion's (a helper's
    audit). gen-data's and convert adult's check likewise."""
    from dist_train.data.output_folder import refuse_foreign

    old = tmp_path / "old" / "sub"
    old.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), old / "x.parquet")
    out = tmp_path / "parquet"
    out.mkdir()
    (out / "old").symlink_to(tmp_path / "old")
    with pytest.raises(FolderRefused, match=r"old/sub/x.parquet"):
        convert_criteo([str(good_files[0])], out, progress=False)
    split = tmp_path / "gen" / "train"
    split.mkdir(parents=True)
    (split / "old").symlink_to(tmp_path / "old")
    with pytest.raises(FolderRefused, match=r"old/sub/x.parquet"):
        refuse_foreign(tmp_path / "gen", [split], owned=True)

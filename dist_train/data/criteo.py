"""``dist-train convert criteo``: the public Criteo TSV layout to Parquet.

Each line: ``label \\t I1..I13 \\t C1..C26`` (integer counts, 8-hex-digit categorical values;
any field may be blank = null). Plain or compressed (gzip, bzip2, zstd: told by the first
bytes, not the name) files are streamed in blocks; the output is ``part-NNNNN.parquet``
files of ``rows_per_file`` rows in row groups of ``rows_per_group`` rows, with ``label``
int8, ``I*`` int64, ``C*`` string.

Bad lines (wrong field count, a field that is not UTF-8, a count that is not an integer in
int64's range, a label other than 0/1, a line of two 16 MiB parsing blocks or more) are an error
naming file, line and column, or with
``on_bad_input="skip"`` dropped and counted; blank lines are passed over. The output
directory must hold no Parquet files yet: nothing in it is touched.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from dist_train.data.listing import parquet_files_under
from dist_train.data.output_folder import FolderRefused
from dist_train.data.validation import BadInputError
from dist_train.storage import clear_stale_staging, move_new, new_staging

NUM_DENSE, NUM_CATEGORICAL = 13, 26
DENSE = [f"I{i + 1}" for i in range(NUM_DENSE)]
CATEGORICAL = [f"C{i + 1}" for i in range(NUM_CATEGORICAL)]
COLUMNS = ["label", *DENSE, *CATEGORICAL]
SCHEMA = pa.schema(
    [pa.field("label", pa.int8(), nullable=False)]
    + [pa.field(c, pa.int64()) for c in DENSE]
    + [pa.field(c, pa.string()) for c in CATEGORICAL]
)
_INT = r"^-?[0-9]+$"
BLOCK_BYTES = 16 << 20  # of text a block of rows is parsed from
STAGING_PREFIX = ".converting-"  # the hidden folder a conversion writes its parts in
_INT64 = range(-(2**63), 2**63)


@dataclass
class ConvertResult:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    bad_lines: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str, n: int = 1) -> None:
        self.bad_lines[reason] = self.bad_lines.get(reason, 0) + n


# a compressed file is read as its content says, whatever its name ends with. bzip2's "BZh"
# could begin a line of text: its header is taken with the block size digit and the first
# block's (or the empty stream's end) magic after it
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x04\x22\x4d\x18": "lz4",  # the LZ4 frame format (pyarrow's "lz4")
}
_BZIP2 = re.compile(rb"BZh[1-9](\x31\x41\x59\x26\x53\x59|\x17\x72\x45\x38\x50\x90)")
_ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18")  # a frame pzstd writes first
_LZ4_LEGACY = b"\x02\x21\x4c\x18"  # `lz4 -l`: pyarrow reads the frame format only


def _compression(path: str) -> str | None:
    """The codec ``path``'s first bytes name, None for plain text. A file that names one
    and does not decode is an error of that codec, not text (a damaged .gz was read as one
    bad line)."""
    with open(path, "rb") as f:
        head = f.read(10)
    if _BZIP2.match(head):
        return "bz2"
    if _ZSTD_SKIPPABLE.match(head):
        return "zstd"
    if head.startswith(_LZ4_LEGACY):
        raise BadInputError(
            f"{path}: LZ4's legacy format (lz4 -l), which pyarrow does not read; compress it "
            "in LZ4's frame format (lz4 without -l), or with gzip or zstd"
        )
    return next((codec for magic, codec in _MAGIC.items() if head.startswith(magic)), None)


def _blocks(path: str, policy: str, result: ConvertResult) -> Iterator[tuple[pa.RecordBatch, int]]:
    """(all-string record batch, line number of its first row) for one TSV file.

    pyarrow decodes a line of the wrong field count as UTF-8 before its invalid-row handler
    sees it: one that is not UTF-8 stopped the whole file, skip or not. Where that happens
    the file is read again through :class:`_DropUndecodable`, which drops (or names) such
    lines, the rows already given passed over."""
    codec = _compression(path)
    counted = result.bad_lines.get("wrong_field_count", 0)
    undecodable: list[BaseException] = []
    given = 0
    try:
        for batch, line in _read(
            pa.input_stream(path, compression=codec), path, policy, result, undecodable
        ):
            given += batch.num_rows
            yield batch, line
        return
    except BadInputError:
        if not undecodable:
            raise
    result.bad_lines["wrong_field_count"] = counted  # the second read counts them all again
    if not counted:
        del result.bad_lines["wrong_field_count"]
    stream = _DropUndecodable(pa.input_stream(path, compression=codec), path, policy, result)
    # lines of up to two blocks are kept, and read in blocks twice that size, so that every
    # line the first read took (under a block, or up to two where it fell well) is taken
    # again: the rows it gave are this read's first rows
    for batch, line in _read(stream, path, policy, result, undecodable, 2 * stream.limit):
        if given >= batch.num_rows:
            given -= batch.num_rows
            continue
        yield batch.slice(given), line + given
        given = 0
    if stream.error is not None:
        raise stream.error


def _read(
    source: Any,
    path: str,
    policy: str,
    result: ConvertResult,
    undecodable: list[BaseException],
    block_bytes: int | None = None,
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """:func:`_blocks`' reading of ``source``: the line handler's exceptions that are no
    UTF-8 (pyarrow reports them as unraisable), and a line over a block, collected in
    ``undecodable``: the file is read again through :class:`_DropUndecodable`."""
    first_error: list[str] = []

    def on_invalid_row(row: pcsv.InvalidRow) -> str:
        if policy == "error":
            where = f"line {row.number}" if row.number is not None else "a line"
            first_error.append(
                f"{path}: {where}: {row.actual_columns} fields, expected {row.expected_columns}: "
                f"{row.text[:100]!r}"
            )
            return "error"  # pyarrow then raises; the message above replaces its own
        result.count("wrong_field_count")
        return "skip"

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, UnicodeDecodeError):
            undecodable.append(info.exc_value)
        else:
            previous(info)

    previous = sys.unraisablehook
    sys.unraisablehook = unraisable
    reader: pcsv.CSVStreamingReader | None = None
    try:
        reader = pcsv.open_csv(
            source,
            # one thread: the invalid-row handler is then told the line's number (None
            # with threads), and the reader streams serially anyway
            read_options=pcsv.ReadOptions(
                column_names=COLUMNS, block_size=block_bytes or BLOCK_BYTES, use_threads=False
            ),
            # blank lines are passed over (they hold no example): like skipped lines, they
            # shift the "~" line numbers of value errors after them
            parse_options=pcsv.ParseOptions(
                delimiter="\t", quote_char=False, invalid_row_handler=on_invalid_row
            ),
            convert_options=pcsv.ConvertOptions(
                # fields as bytes: one that is no UTF-8 is its line's bad value (_typed),
                # not an error of the whole block
                column_types={c: pa.binary() for c in COLUMNS},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
        line = 1
        for batch in reader:
            yield batch, line
            line += batch.num_rows  # skipped lines shift this; errors name lines exactly
    except pa.ArrowInvalid as err:
        if reader is None and "Empty CSV file" in str(err):
            return  # an empty file (or one of only blank lines) holds no example
        if "straddles" in str(err):  # a line over a block: read again, the line dropped
            undecodable.append(err)
        raise BadInputError(first_error[0] if first_error else f"{path}: {err}") from None
    except OSError as err:
        raise BadInputError(f"{path}: {err}") from None
    finally:
        sys.unraisablehook = previous
        # closed now: left to a reference cycle, its threads met interpreter exit and the
        # process aborted ("terminate called without an active exception", exit 134)
        if reader is not None:
            reader.close()


class _DropUndecodable(io.RawIOBase):
    """The lines of ``source`` less those pyarrow's reader cannot take: of the wrong field
    count and not UTF-8 (counted as ``wrong_field_count``), or of two blocks of
    :data:`BLOCK_BYTES` or more (``line_too_long``: a damaged stretch of the file, say,
    zeros without a line end); under ``policy="error"``, an error naming the first."""

    CHUNK_BYTES = 1 << 20  # read at a time

    def __init__(self, source: Any, path: str, policy: str, result: ConvertResult) -> None:
        super().__init__()
        self.source, self.path, self.policy, self.result = source, path, policy, result
        self.limit = 2 * BLOCK_BYTES  # a line this long or longer is dropped
        self.rest = b""  # a line not yet ended
        self.out = bytearray()
        self.line = 0
        self.done = False
        self.in_long_line = False  # dropping the rest of a line too long to keep
        self.after_cr = False  # a line ended at a chunk's last byte, \r: a \n may follow
        self.error: BadInputError | None = None  # the line that ended the text

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.out and not self.done:
            chunk = self.source.read(self.CHUNK_BYTES)
            self.done = not chunk
            if self.after_cr:
                self.after_cr, chunk = False, chunk.removeprefix(b"\n")
            if self.in_long_line:
                end = _LINE_END.search(chunk)
                if end is None and not self.done:
                    continue  # still in it
                self.in_long_line = False
                if end is not None:
                    self.after_cr = end.group() == b"\r" and end.end() == len(chunk)
                chunk = chunk[end.end() :] if end else b""
            text = self.rest + chunk
            # lines end as pyarrow ends them: at \n, \r\n or a lone \r (a \r at the end
            # waits for the next chunk, which may begin with its \n)
            last_r = text.rfind(b"\r", 0, len(text) - 1)
            cut = len(text) if self.done else max(text.rfind(b"\n"), last_r) + 1
            lines, self.rest = _LINE_END.split(text[:cut]), text[cut:]
            if lines and not lines[-1]:
                lines.pop()  # after the last line's end
            if len(self.rest) >= self.limit:  # a line not ended yet (or at a \r), too long
                if self.rest.endswith(b"\r"):
                    lines.append(self.rest[:-1])
                    self.after_cr = True
                else:
                    lines.append(self.rest)
                    self.in_long_line = True
                self.rest = b""
            for text in lines:
                self.line += 1
                fields = text.count(b"\t") + 1
                if len(text) >= self.limit:
                    problem = f"{self.limit:,} bytes or more (no Criteo line is)"
                    reason = "line_too_long"
                elif text.strip() and fields != len(COLUMNS) and not _utf8(text):
                    problem = f"{fields} fields, expected {len(COLUMNS)}, and not UTF-8 text"
                    reason = "wrong_field_count"
                else:
                    self.out += text + b"\n"
                    continue
                if self.policy == "error":
                    # the text ends here, and the error is raised once pyarrow has read it:
                    # raised through pyarrow, it was at times an abort at exit, and it came
                    # before the bad values of the lines above it
                    self.done, self.rest = True, b""
                    self.error = BadInputError(
                        f"{self.path}: line {self.line}: {problem}: {text[:100]!r}"
                    )
                    break
                self.result.count(reason)
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        del self.out[:n]
        return n


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _utf8(text: bytes) -> bool:
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _typed(
    batch: pa.RecordBatch, path: str, first_line: int, policy: str, result: ConvertResult
) -> pa.Table:
    """Cast one block of raw fields to the Criteo schema, dropping or rejecting bad rows."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    checks: list[tuple[str, str, np.ndarray]] = []
    # every field as text first: one that is no UTF-8 is its line's bad value (it stopped
    # the whole conversion, skip or not, naming no line)
    text: list[pa.Array] = []
    for name, column in zip(COLUMNS, batch.columns, strict=True):
        try:
            text.append(pc.cast(column, pa.string()))  # all valid, as a rule: one pass
        except pa.ArrowInvalid:
            broken = _not_utf8(column)
            checks.append((name, "not_utf8", broken))
            fixed = pc.if_else(pa.array(broken), pa.scalar(None, pa.binary()), column)
            text.append(pc.cast(fixed, pa.string()))
    label_ok = pc.is_in(text[0], pa.array(["0", "1"])).fill_null(False)
    checks.append(("label", "label_not_0_or_1", ~label_ok.to_numpy(zero_copy_only=False)))
    for i, name in enumerate(DENSE, start=1):
        col = text[i]
        bad_int = ~pc.match_substring_regex(col, _INT).fill_null(True).to_numpy(False)
        # Up to 18 characters always fit int64; longer integers (rare) are checked one by one,
        # so that one too large for the cast is this line's bad value, not an Arrow error.
        long = (pc.binary_length(col).fill_null(0).to_numpy(False) > 18) & ~bad_int
        for r in np.flatnonzero(long):
            digits = str(col[r].as_py()).lstrip("-").lstrip("0")
            # past 19 digits no int64 (and int() refuses thousands of digits): bad unread
            bad_int[r] = len(digits) > 19 or int(col[r].as_py()) not in _INT64
        checks.append((name, "dense_not_integer", bad_int))
    for name, reason, mask in checks:
        if not mask.any():
            continue
        row = int(np.flatnonzero(mask)[0])
        if policy == "error":
            column = COLUMNS.index(name)
            # a field that is no UTF-8 shown as its bytes, as read
            shown = batch.column(column) if reason == "not_utf8" else text[column]
            value = shown[row].as_py()
            what = {
                "not_utf8": "UTF-8 text",
                "label_not_0_or_1": "0 or 1",
                "dense_not_integer": "an integer in int64's range",
            }[reason]
            raise BadInputError(
                f"{path}: line ~{first_line + row}: column {name!r}: {value!r} is not {what}"
            )
        newly = int((mask & ~bad).sum())  # a line is counted under its first reason
        if newly:
            result.count(reason, newly)
        bad |= mask
    table = pa.table(dict(zip(COLUMNS, text, strict=True)))
    if bad.any():
        table = table.filter(pa.array(~bad))
    arrays = [pc.cast(table.column(0), pa.int8())]
    arrays += [pc.cast(table.column(c), pa.int64()) for c in DENSE]
    arrays += [table.column(c) for c in CATEGORICAL]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _not_utf8(column: pa.Array) -> np.ndarray:
    """Which values of a binary ``column`` are not UTF-8."""
    out = np.zeros(len(column), dtype=bool)
    for r, value in enumerate(column.to_pylist()):
        try:
            if value is not None:
                value.decode("utf-8")
        except UnicodeDecodeError:
            out[r] = True
    return out


def convert_criteo(
    inputs: list[str],
    out_dir: str | Path,
    rows_per_group: int = 65_536,
    rows_per_file: int = 4_194_304,
    on_bad_input: str = "error",
    progress: bool = True,
) -> ConvertResult:
    """Convert Criteo TSV files to Parquet under ``out_dir``; returns files, rows, bad lines."""
    if on_bad_input not in ("error", "skip"):
        raise ValueError(f"on_bad_input must be 'error' or 'skip', got {on_bad_input!r}")
    if rows_per_group < 1 or rows_per_file < 1:  # 0 rows a file would open files forever
        raise ValueError(
            f"rows per group and file must be positive: {rows_per_group}, {rows_per_file}"
        )
    out = Path(out_dir)
    # a conversion killed before its end left its parts in a hidden folder (below); a
    # running one's stay, and refuse the folder: both would write part-00000 on
    running = clear_stale_staging(out, STAGING_PREFIX)
    if running:
        raise FolderRefused(
            f"{out}: another conversion is writing into this directory ({running[0].name}: "
            "pid@host); convert into another directory, or, where that process is gone (a "
            "lost machine), remove its folder"
        )
    # Outputs are named from part-00000: they would overwrite (or, on an error, remove) an
    # earlier conversion's files, or leave its later parts to be read with the new ones.
    existing = parquet_files_under(out)  # (a linked folder's too: the reader reads them)
    if existing:
        raise FolderRefused(
            f"{out}: output directory already holds Parquet files ({existing[0]}); convert "
            "into another (new or empty) directory"
        )
    missing = next((path for path in inputs if not Path(path).is_file()), None)
    if missing is not None:  # before anything is written: a day's conversion lost to a typo
        kind = (
            "a folder"
            if Path(missing).is_dir()
            else "a pipe or a device, not a file"
            if Path(missing).exists()
            else "no such file"
        )
        raise BadInputError(f"{missing}: {kind}")
    seen: dict[tuple[int, int], str] = {}
    for path in inputs:  # a file named twice (a glob and a name, a link) was converted twice
        st = os.stat(path)
        file = (st.st_dev, st.st_ino)  # a hard link has a path of its own
        if file in seen:
            raise BadInputError(
                f"{path}: the same file as {seen[file]}, given before: each input is "
                "converted once; name it once"
            )
        seen[file] = path
    out.mkdir(parents=True, exist_ok=True)
    # The parts are written in a hidden folder (readers pass over hidden paths) and moved in
    # at the end: a conversion killed midway (SIGKILL, a lost machine) leaves no whole-looking
    # files of part of the rows.
    staging = new_staging(out, STAGING_PREFIX)
    result = ConvertResult()
    writer: pq.ParquetWriter | None = None
    in_file = 0
    start = time.perf_counter()

    def next_writer() -> pq.ParquetWriter:
        name = f"part-{len(result.files):05d}.parquet"
        result.files.append(str(out / name))
        path = staging / name
        # Page checksums let readers detect corrupted pages (see docs/data.md).
        return pq.ParquetWriter(path, SCHEMA, compression="zstd", write_page_checksum=True)

    def write(table: pa.Table, last: bool) -> pa.Table:
        """Write ``table`` in whole row groups (a file's last may be short); the rows short
        of a group, unless ``last``, come back to go with the next block's."""
        nonlocal writer, in_file
        while table.num_rows:
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                writer, in_file = next_writer(), 0
            take = min(rows_per_file - in_file, table.num_rows)
            if take < rows_per_file - in_file and not last:  # the file goes on: whole groups
                take -= take % rows_per_group
                if not take:
                    break
            writer.write_table(table.slice(0, take), row_group_size=rows_per_group)
            in_file += take
            result.rows += take
            table = table.slice(take)
        return table

    # a block's rows end where its text does: carried over, not written as a short group
    carry = SCHEMA.empty_table()
    moved: list[Path] = []
    try:
        for path in inputs:
            for batch, first_line in _blocks(path, on_bad_input, result):
                block = _typed(batch, path, first_line, on_bad_input, result)
                carry = write(pa.concat_tables([carry, block]), last=False)
                if progress:
                    rate = result.rows / max(time.perf_counter() - start, 1e-9)
                    print(
                        f"[convert] {result.rows:,} rows ({rate:,.0f} rows/s)",
                        file=sys.stderr,
                        flush=True,
                    )
        write(carry, last=True)
        if not result.rows:  # an empty dataset folder, said to be written, trained on nothing
            why = f"every line bad ({result.bad_lines})" if result.bad_lines else "empty"
            raise BadInputError(f"{', '.join(inputs)}: no rows to convert: {why}")
        if writer is not None:
            writer.close()
            writer = None
        for f in result.files:
            moved.append(Path(f))  # before the move: a stop inside it leaves it ours to remove
            try:
                move_new(staging / Path(f).name, Path(f))
            except FileExistsError:
                moved.pop()
                raise FolderRefused(
                    f"{f}: another process wrote it during this conversion; convert into "
                    "another (new or empty) directory"
                ) from None
    except BaseException:
        # Never leave half a dataset behind that could be mistaken for a whole one; files
        # this conversion did not move in (an earlier one's, another process's) are not touched
        if writer is not None:
            writer.close()
            writer = None
        for done in moved:
            staged = staging / done.name
            if staged.exists() and not (done.exists() and os.path.samefile(done, staged)):
                continue  # stopped before its link: the name is free, or another's
            done.unlink(missing_ok=True)
        raise
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
    return result

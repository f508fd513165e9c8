"""Parquet input, listed: the files a data path names (local folders and globs, or URLs;
hidden and unfinished files passed over), their row groups from the footers (the driver, once),
and each epoch's deal of the row groups to ranks.

The deal is a pure function of (row groups, world size, seed, epoch), so every worker computes
the same split without talking to the others. Every rank runs the same number of steps
(collectives need it): ``steps_per_epoch`` is the smallest rank's row count divided by the
batch size.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import xxhash

from dist_train.data.arrow_numpy import is_string_type
from dist_train.data.validation import BadInputError, BadInputPolicy
from dist_train.storage import StorageError, url_filesystem


class DataSourceError(ValueError):
    """A data path that cannot be read; the message names the file."""


# What reading a corrupt or unreadable Parquet file raises: any pyarrow error (a bad footer,
# a page whose checksum fails, a corrupt page header or encoding, a decoded row group that
# fails validation), an I/O error, a column missing from a damaged footer (KeyError) or a
# column name in it that is not UTF-8.
READ_ERRORS = (pa.ArrowException, OSError, KeyError, UnicodeDecodeError)
# The machine's limits, not the file's fault: raised as they are, never counted as bad input.
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def bad_input(err: Exception) -> Exception:
    """``err`` (one of ``READ_ERRORS``) itself where the machine ran out of something (open
    files, memory): re-raised, not blamed on the file."""
    if isinstance(err, OSError) and err.errno in _OUT_OF_RESOURCES:
        raise err
    return err


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group: the unit of sharding."""

    path: str
    index: int
    num_rows: int
    # its columns' bytes as the footer records them, uncompressed (0: unknown): they move
    # with the contents of dictionary-encoded and variable-length columns (not of plain
    # fixed-width ones), known at no read of the data
    byte_size: int = 0
    # a digest of its file's columns and types when listed (:func:`schema_digest`; "":
    # unknown): a file rewritten since, read by it, is refused (not hashed as other types)
    schema: str = ""

    @property
    def source(self) -> str:
        return f"{self.path} (row group {self.index})"


def resolve_files(path: str) -> list[str]:
    """Parquet files of a file, a directory (``*.parquet`` inside, recursively), a glob (a
    folder it matches read as a directory), or a URL of any of those (``s3://``, ``gs://``,
    ``file://``, fsspec protocols)."""
    try:
        files = _resolve_url(path) if "://" in path else _resolve_local(path)
    except OSError as err:  # a store that cannot be listed (its region, its keys, a folder's
        if is_transient(err):  # permissions); a dropped connection is raised as it is
            raise
        raise DataSourceError(f"{path}: cannot list ({bad_input(err)})") from None
    if not files:
        if "://" not in path and _nothing_at(path):
            raise DataSourceError(f"{path}: no such file or folder")
        raise DataSourceError(f"{path}: no Parquet files found")
    return files


GENERATION_RECORD = "dataset.json"
"""What `dist-train gen-data` records beside its ``train/`` and ``test/`` folders: its spec
once whole, ``"complete": false`` while it writes."""


def read_record(path: Path) -> Any:
    """A data command's JSON record at ``path`` (``dataset.json``, ``adult.json``); None
    where there is none, it is no regular file (a pipe of that name is not read: it would
    wait for a writer) or it does not parse (a run cut short as it wrote it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _refuse_unfinished(folder: Path) -> None:
    """DataSourceError where ``folder`` is (or holds) the splits of a generation that stopped
    before it ended (a Ctrl-C, a kill): its files hold some of the rows, and read as all."""
    for record in (folder.parent / GENERATION_RECORD, folder / GENERATION_RECORD):
        found = read_record(record)
        if isinstance(found, dict) and found.get("complete") is False:
            raise DataSourceError(
                f"{folder}: data of a `dist-train gen-data` that stopped before it ended "
                f"({record} records it unfinished): its files hold only some of the rows. "
                "Run it again"
            )


def _resolve_local(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        _refuse_unfinished(p)
        return _files_under(path, set(), set())
    if p.exists():
        return [path]
    folders: set[str] = set()
    files: set[str] = set()  # real paths: a file reached twice (a link) is listed once
    found: list[str] = []
    for match in sorted(glob.glob(path, recursive=True)):
        if _hidden_in_glob(match, path):
            continue
        if os.path.isdir(match):
            found.extend(_files_under(match, folders, files))
        elif os.path.realpath(match) not in files:
            files.add(os.path.realpath(match))
            found.append(match)
    return sorted(found)


def _hidden_in_glob(match: str, pattern: str) -> bool:
    """Whether ``match`` of a glob ``pattern`` passes through a hidden name (``_hidden``) that
    a wildcard matched: Spark's ``_temporary/`` under ``dir/**``, not ``_daily_*`` that the
    pattern names itself."""
    names, parts = PurePosixPath(match).parts, PurePosixPath(pattern).parts
    if "**" in parts:  # the parts before it match one to one, those after it from the end
        star = parts.index("**")
        head, tail = parts[:star], parts[star + 1 :]
        middle = names[len(head) : len(names) - len(tail)]
        pairs = [
            *zip(names[: len(head)], head, strict=False),
            *zip(names[len(names) - len(tail) :], tail, strict=False),
        ]
    else:
        middle, pairs = (), list(zip(names, parts, strict=False))
    hidden = _hidden_name
    return any(map(hidden, middle)) or any(hidden(n) and not hidden(p) for n, p in pairs)


def _hidden_name(name: str) -> bool:
    return name.startswith((".", "_"))


def parquet_files_under(folder: Path) -> list[Path]:
    """The Parquet files the reader reads under ``folder``, at any depth: linked folders
    followed, hidden names passed over."""
    return [Path(f) for f in _files_under(str(folder), set(), set())] if folder.is_dir() else []


def _files_under(root: str, folders: set[str], files: set[str]) -> list[str]:
    """The ``*.parquet`` files below ``root`` that are not folders (a Spark ``x.parquet/``
    folder is read as a directory), passing over hidden names (``_hidden``). Linked folders
    are followed; each real folder and file is listed once (``folders`` and ``files``: the
    real paths seen so far): a link back up, or a second link to one folder or file, would
    list its files again."""
    found: list[str] = []
    for folder, dirs, names in os.walk(root, onerror=_unlisted, followlinks=True):
        real = os.path.realpath(folder)
        if real in folders:
            dirs.clear()
            continue
        folders.add(real)
        # the first link wins; a volume's lost+found (root's alone) holds no data
        dirs[:] = sorted(d for d in dirs if not _hidden_name(d) and d != "lost+found")
        for name in sorted(names):
            f = os.path.join(folder, name)
            if name.endswith(".parquet") and not _hidden_name(name):
                if os.path.realpath(f) not in files:
                    files.add(os.path.realpath(f))
                    found.append(f)
    return sorted(found)


def _unlisted(err: OSError) -> None:
    """A folder of the data that cannot be listed fails the job, naming it: ``os.walk``
    passed over it, and its files were left out without a word."""
    raise DataSourceError(
        f"{err.filename}: cannot list this folder of the data ({err.strerror or err})"
    )


def _hidden(relative: str) -> bool:
    """A file under a directory that readers of datasets pass over, as pyarrow's dataset
    discovery does: a name or folder starting with ``.`` or ``_`` (Spark's ``_temporary/``
    of an unfinished write, ``.`` copies), whose rows would otherwise be read twice."""
    return any(map(_hidden_name, relative.split("/")))


def list_row_groups(
    path: str,
    policy: BadInputPolicy | None = None,
    check_schema: Callable[[str, pa.Schema, pq.FileMetaData], None] | None = None,
) -> list[RowGroup]:
    """All non-empty row groups under ``path``, in file order.

    An unreadable (e.g. truncated) or empty file, one whose footer's row counts disagree, or
    one whose schema or footer ``check_schema`` rejects (with :class:`BadInputError`), is bad
    input: an error, or with a ``skip`` policy a counted, skipped file. Each footer is read
    once.
    """
    groups: list[RowGroup] = []
    for f in resolve_files(path):
        try:
            meta = open_parquet(f).metadata
            schema = meta.schema.to_arrow_schema()
        except READ_ERRORS as err:
            report_bad_input(policy, f"{f}: not a readable Parquet file ({bad_input(err)})")
            continue
        # The footer has no checksum. Readers trust a row group's row count and silently
        # return fewer rows when a damaged footer lowers it; the file's total catches that.
        listed = [meta.row_group(i) for i in range(meta.num_row_groups)]
        group_rows = [g.num_rows for g in listed]
        if sum(group_rows) != meta.num_rows or any(n < 0 for n in group_rows):
            report_bad_input(
                policy,
                f"{f}: corrupt footer: its row groups hold {sum(group_rows)} rows in all "
                f"but it records {meta.num_rows} rows for the file",
            )
            continue
        if meta.num_rows == 0:
            report_bad_input(policy, f"{f}: empty file (no rows)")
            continue
        if check_schema is not None:
            try:
                check_schema(f, schema, meta)
            except BadInputError as err:
                if policy is None:
                    raise
                policy.file_problem(str(err))
                continue
        if policy is not None:
            policy.check_footer(f, meta, schema)
        digest = schema_digest(meta)
        groups += [
            RowGroup(f, i, g.num_rows, g.total_byte_size, digest)
            for i, g in enumerate(listed)
            if g.num_rows > 0
        ]
    if not groups:
        raise DataSourceError(
            f"{path}: no usable Parquet files (every file was empty or bad input)"
        )
    return groups


# errnos of a read that the network or the storage failed for a moment; pyarrow raises its
# decoding failures (a page's checksum, a footer) as OSErrors without an errno
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EPIPE,
        errno.ESTALE,
        errno.EIO,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)


def is_transient(err: BaseException) -> bool:
    """Whether a read's error may be the storage's for a moment, not the file's: a dropped
    connection or a time-out, not a corrupt page or a missing file."""
    return isinstance(err, (ConnectionError, TimeoutError)) or (
        isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS
    )


def report_bad_input(
    policy: BadInputPolicy | None, message: str, whole_file: bool = True, io_error: bool = False
) -> None:
    """Bad input that ``message`` names: raise :class:`DataSourceError` without a policy, else
    the policy raises :class:`BadInputError` (``error``) or counts a skipped file or row
    group (``skip``); a row group whose read failed for a moment (``io_error``) raises
    :class:`InputReadError` under either."""
    if policy is None:
        raise DataSourceError(message)
    if whole_file:
        policy.file_problem(message)
    else:
        policy.row_group_problem(message, io_error)


def assign_row_groups(
    groups: list[RowGroup], world_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[RowGroup]]:
    """Split ``groups`` over ranks, balanced by row count, deterministic per (seed, epoch)."""
    order = list(range(len(groups)))
    if shuffle:
        order = list(np.random.default_rng([seed, epoch]).permutation(len(groups)))
    loads = [0] * world_size
    out: list[list[RowGroup]] = [[] for _ in range(world_size)]
    # Greedy: next group to the least-loaded rank (lowest rank on ties) keeps it deterministic.
    for i in order:
        r = min(range(world_size), key=lambda k: (loads[k], k))
        out[r].append(groups[i])
        loads[r] += groups[i].num_rows
    return out


def steps_per_epoch(assignment: list[list[RowGroup]], batch_size: int) -> int:
    """Steps every rank can run: the smallest rank's rows // batch_size."""
    return min(sum(g.num_rows for g in groups) for groups in assignment) // batch_size


def eval_steps(assignment: list[list[RowGroup]], batch_size: int) -> int:
    """Steps that cover every rank's rows: the largest rank's ceil(rows / batch_size)."""
    return max(-(-sum(g.num_rows for g in groups) // batch_size) for groups in assignment)


def open_parquet(
    path: str, read_dictionary: Sequence[str] = (), footer: pq.FileMetaData | None = None
) -> pq.ParquetFile:
    """A Parquet file by local path or URL (``file://``, ``s3://``, ``gs://``, ``hdfs://``, or
    any fsspec protocol such as ``memory://``). The string columns among ``read_dictionary``
    are read dictionary-encoded, as Parquet stores them (no per-value string decoding).
    ``footer``: its metadata, read before (not read again)."""

    def source() -> str | pa.NativeFile:
        if "://" not in path:
            _refuse_irregular(path)
            return path
        fs, inner = _filesystem(path)
        if isinstance(fs, pafs.LocalFileSystem):  # file://
            _refuse_irregular(inner)
        return fs.open_input_file(inner)

    # Pages written with CRC32 checksums (our generator and converter write them) are
    # verified; pages without one are read unverified.
    pf = pq.ParquetFile(source(), metadata=footer, page_checksum_verification=True)
    schema = pf.schema_arrow
    strings = [
        name
        for name in read_dictionary
        if schema.get_field_index(name) >= 0 and is_string_type(schema.field(name).type)
    ]
    if not strings:
        return pf
    # read_dictionary is fixed when a reader opens: reopen with the string columns named.
    pf.close(force=True)
    return pq.ParquetFile(
        source(), metadata=footer, read_dictionary=strings, page_checksum_verification=True
    )


def _refuse_irregular(path: str) -> None:
    """An OSError (a bad file) for a local path that is no regular file: opening a pipe
    named ``*.parquet`` waits for a writer, for good, and a signal does not end the wait."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError("not a regular file (a pipe or a device)")


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """``url``'s filesystem, through pyarrow, else fsspec; DataSourceError naming it where
    neither opens it (an unknown scheme, or its package missing: a bare "Protocol not
    known: foo" named neither the URL nor the setting)."""
    try:
        return pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, ValueError):
        fs, inner = _fsspec_filesystem(url)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), inner


def _fsspec_filesystem(url: str) -> tuple[Any, str]:
    """:func:`~dist_train.storage.url_filesystem`, its error a data source's, as the job's
    data errors are."""
    try:
        return url_filesystem(url)
    except StorageError as err:
        raise DataSourceError(str(err)) from None


def _nothing_at(local: str) -> bool:
    """Whether a local path that is no glob names nothing (not even a dangling link)."""
    return not glob.has_magic(local) and not os.path.lexists(local)


def _resolve_url(url: str) -> list[str]:
    fs, inner = _filesystem(url)
    if isinstance(fs, pafs.LocalFileSystem):  # file://: read as its path is (linked folders)
        if _nothing_at(inner):
            raise DataSourceError(f"{url}: no such file or folder")
        return file_urls(url, inner, _resolve_local(inner))
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        inner_files = _url_files_under(fs, inner)
    elif info.type == pafs.FileType.File:
        inner_files = [inner]
    elif not glob.has_magic(inner):
        raise DataSourceError(f"{url}: no such file or folder")
    else:
        # a glob: pyarrow's filesystems do not expand one, fsspec's do (a scheme pyarrow
        # opens may still be one fsspec does not)
        ffs, inner = _fsspec_filesystem(url)
        inner_files = []
        for match in sorted(ffs.glob(inner)):
            if _hidden_in_glob(match, inner):
                continue
            inner_files.extend(_url_files_under(fs, match) if ffs.isdir(match) else [match])
    return file_urls(url, inner, inner_files)


def _url_files_under(fs: pafs.FileSystem, inner: str) -> list[str]:
    """``_files_under`` on a filesystem of URLs (no links there)."""
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    base = inner.rstrip("/") + "/"
    return sorted(
        i.path
        for i in infos
        if i.type != pafs.FileType.Directory
        and i.path.endswith(".parquet")
        and not _hidden(i.path.removeprefix(base))
    )


def file_urls(url: str, inner: str, files: list[str]) -> list[str]:
    """The URLs of ``files``, the filesystem's own paths of what it found at ``url``, whose
    path it names ``inner``: each keeps what ``url`` holds before that path (scheme, and a
    host and port, as ``hdfs://namenode:8020/dir`` has, which a filesystem's paths lack)
    and after it (a query of options)."""
    # a query holds the filesystem's options (s3's endpoint_override=..., hdfs' user=...):
    # every file's URL keeps it
    url, mark, query = url.partition("?")
    url, inner = url.rstrip("/"), inner.rstrip("/")
    if inner and url.endswith(inner):
        root = url[: len(url) - len(inner)]
        return [root + f + mark + query for f in files]
    scheme = url.split("://", 1)[0]
    if scheme == "file":
        return [f"file://{f}{mark}{query}" for f in files]
    return [f"{scheme}://{f.lstrip('/')}{mark}{query}" for f in files]


def schema_digest(meta: pq.FileMetaData) -> str:
    """A digest of a file's columns and their types as its footer (``meta``) records them:
    Parquet's own descriptors, not Arrow's text of them, which a driver and workers of other
    pyarrow versions could write otherwise."""
    columns = (meta.schema.column(i) for i in range(meta.num_columns))
    described = [
        (
            c.path,
            c.physical_type,
            c.logical_type.type,
            c.converted_type,
            c.max_definition_level,
            c.max_repetition_level,
        )
        for c in columns
    ]
    return xxhash.xxh3_64_hexdigest(json.dumps(described).encode())

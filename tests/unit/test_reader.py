"""Reader: exactly-once row coverage per epoch over 1/2/3 ranks, seeded shuffles, exact
resume from a saved position, and URLs (file://, fsspec memory://)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_train.data.listing import assign_row_groups, file_urls, list_row_groups, resolve_files
from dist_train.data.stream import PREFETCH_THREAD, batches, iter_tables, prefetch

NUM_ROWS = 10_000


@pytest.fixture(scope="module")
def id_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 files of uneven sizes and row groups; ``row_id`` numbers every row."""
    out = tmp_path_factory.mktemp("ids")
    sizes, start = [3000, 2500, 1700, 1800, 1000], 0
    for i, n in enumerate(sizes):
        t = pa.table({"row_id": np.arange(start, start + n), "label": np.zeros(n, np.int8)})
        pq.write_table(t, out / f"part-{i}.parquet", row_group_size=300 + 100 * i)
        start += n
    assert start == NUM_ROWS
    return out


def _epoch_ids(groups, world: int, epoch: int, seed: int = 3, shuffle: int = 0) -> list[list[int]]:  # type: ignore[no-untyped-def]
    out = []
    for rank, rank_groups in enumerate(assign_row_groups(groups, world, seed, epoch)):
        tables = iter_tables(
            rank_groups,
            ["row_id"],
            128,
            drop_last=False,
            shuffle_rows=shuffle,
            shuffle_seed=(seed, epoch, rank),
        )
        out.append([i for t, _ in tables for i in t["row_id"].to_pylist()])
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [0, 2000])
def test_every_row_exactly_once_per_epoch(id_data: Path, world: int, shuffle: int) -> None:
    groups = list_row_groups(str(id_data))
    for epoch in range(2):
        per_rank = _epoch_ids(groups, world, epoch, shuffle=shuffle)
        flat = [i for ids in per_rank for i in ids]
        assert len(flat) == NUM_ROWS and sorted(flat) == list(range(NUM_ROWS))
        sizes = [len(ids) for ids in per_rank]
        assert max(sizes) - min(sizes) <= 800  # balanced within one row group


def test_shuffles_differ_by_epoch_and_repeat_by_seed(id_data: Path) -> None:
    groups = list_row_groups(str(id_data))
    e0 = _epoch_ids(groups, 2, 0, shuffle=2000)
    assert e0 == _epoch_ids(groups, 2, 0, shuffle=2000)  # same seed, same order
    assert e0 != _epoch_ids(groups, 2, 1, shuffle=2000)  # new epoch, new order
    assert e0 != _epoch_ids(groups, 2, 0, seed=4, shuffle=2000)
    unshuffled = _epoch_ids(groups, 2, 0, shuffle=0)
    assert e0 != unshuffled and sorted(e0[0]) == sorted(unshuffled[0])  # rows mixed in windows


def test_resume_from_saved_position_continues_exactly(id_data: Path) -> None:
    groups = assign_row_groups(list_row_groups(str(id_data)), 2, 3, 5)[1]

    def stream(start: int) -> list[list[int]]:
        tables = iter_tables(
            groups, ["row_id"], 256, shuffle_rows=1500, shuffle_seed=(3, 5, 1), start_batch=start
        )
        return [t["row_id"].to_pylist() for t, _ in tables]

    full = stream(0)
    resumed = stream(7)  # a checkpoint saved after 7 batches of the epoch
    assert resumed == full[7:] and len(full) > 10


def test_file_url_and_fsspec_memory_url(id_data: Path) -> None:
    import fsspec

    file_groups = list_row_groups(f"file://{id_data}")
    assert len(file_groups) == len(list_row_groups(str(id_data)))
    assert file_groups[0].path.startswith("file://")
    mem = fsspec.filesystem("memory")
    for f in sorted(id_data.glob("*.parquet")):
        mem.pipe(f"/ids/{f.name}", f.read_bytes())
    files = resolve_files("memory://ids")
    assert len(files) == 5 and all(f.startswith("memory://") for f in files)
    groups = list_row_groups("memory://ids")
    ids = [
        i
        for t, _ in iter_tables(groups, ["row_id"], 1000, drop_last=False)
        for i in t["row_id"].to_pylist()
    ]
    assert sorted(ids) == list(range(NUM_ROWS))


@pytest.mark.parametrize(
    ("url", "inner", "found", "want"),
    [
        # a namenode's host and port are not in HDFS paths: they used to be dropped
        (
            "hdfs://namenode:8020/data/train",
            "/data/train",
            ["/data/train/a.parquet"],
            ["hdfs://namenode:8020/data/train/a.parquet"],
        ),
        (
            "s3://bucket/train/",
            "bucket/train",
            ["bucket/train/a.parquet"],
            ["s3://bucket/train/a.parquet"],
        ),
        (
            "file:///tmp/train",
            "/tmp/train",
            ["/tmp/train/a.parquet"],
            ["file:///tmp/train/a.parquet"],
        ),
        # a query's options go with every file (a MinIO endpoint, an HDFS user)
        (
            "s3://bucket/train?endpoint_override=localhost:9000&scheme=http",
            "bucket/train",
            ["bucket/train/a.parquet"],
            ["s3://bucket/train/a.parquet?endpoint_override=localhost:9000&scheme=http"],
        ),
        (
            "hdfs://nn:8020/data/train?user=alice",
            "/data/train",
            ["/data/train/a.parquet"],
            ["hdfs://nn:8020/data/train/a.parquet?user=alice"],
        ),
        (
            "gs://bucket/t/*.parquet",
            "bucket/t/*.parquet",
            ["bucket/t/a.parquet"],
            ["gs://bucket/t/a.parquet"],
        ),
    ],
)
def test_found_files_keep_the_urls_scheme_host_and_port(
    url: str, inner: str, found: list[str], want: list[str]
) -> None:
    assert file_urls(url, inner, found) == want


def test_a_url_glob_names_files_that_open(id_data: Path) -> None:
    import fsspec

    mem = fsspec.filesystem("memory")
    for f in sorted(id_data.glob("*.parquet")):
        mem.pipe(f"/globbed/{f.name}", f.read_bytes())
    files = resolve_files("memory://globbed/*.parquet")
    assert len(files) == 5
    assert sum(g.num_rows for g in list_row_groups(files[0])) > 0


def test_a_directory_passes_over_hidden_and_underscore_files(id_data: Path, tmp_path: Path) -> None:
    """As pyarrow's dataset discovery: Spark's ``_temporary/`` of an unfinished write and
    ``.`` copies are not the dataset's rows (they would be read twice)."""
    import fsspec

    data = tmp_path / "data"
    shutil.copytree(id_data, data)
    first = sorted(data.glob("*.parquet"))[0]
    (data / "_temporary" / "0").mkdir(parents=True)
    shutil.copy(first, data / "_temporary" / "0" / "part-0.parquet")
    shutil.copy(first, data / ".part-0.parquet")
    (data / "sub").mkdir()
    shutil.copy(first, data / "sub" / "part-0.parquet")  # an ordinary folder counts
    want = sorted([*map(str, id_data.glob("*.parquet"))])
    assert [Path(f).name for f in resolve_files(str(data))] == [
        *[Path(f).name for f in want],
        "part-0.parquet",
    ]
    mem = fsspec.filesystem("memory")
    for f in data.rglob("*.parquet"):
        mem.pipe(f"/hidden/{f.relative_to(data).as_posix()}", f.read_bytes())
    assert len(resolve_files("memory://hidden")) == len(want) + 1


LOWEST = 19  # the default train.prefetch_niceness


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority: Linux")
@pytest.mark.skipif(
    sys.platform.startswith("linux") and _priority() >= LOWEST,
    reason="already at the lowest priority",
)
def test_prefetch_builds_at_its_niceness_and_leaves_the_caller_alone() -> None:
    def priorities() -> Iterator[int]:
        for _ in range(3):
            yield _priority()

    caller = _priority()
    assert list(prefetch(priorities(), depth=2, niceness=LOWEST)) == [LOWEST] * 3
    assert _priority() == caller
    # never above the caller's priority; without a thread the caller builds the items
    assert list(prefetch(priorities(), depth=2, niceness=0)) == [caller] * 3
    assert list(prefetch(priorities(), depth=0, niceness=LOWEST)) == [caller] * 3
    # the training loop's batches pass their niceness on
    blocks = [(0, "group")] * 3
    built = batches(iter(blocks), 3, lambda _: _priority(), prefetch_depth=2, niceness=LOWEST)
    assert list(built) == [LOWEST] * 3


def test_a_consumer_that_stops_early_ends_the_prefetch_thread() -> None:
    def prefetch_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD]

    before = set(prefetch_threads())
    stream = prefetch(iter(range(100)), depth=2, niceness=0)
    assert next(stream) == 0
    started = set(prefetch_threads()) - before
    assert len(started) == 1  # (the check below holds only while it names the thread)
    time.sleep(0.05)  # the thread fills the queue and blocks on it
    stream.close()
    for thread in started:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_a_read_tried_again_opens_its_file_anew_and_stops_with_its_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed read is tried again on a file opened anew (a stale NFS handle or a dropped
    connection stays broken), an open that fails for a moment too; and a prefetch thread
    pausing before a retry ends as soon as its consumer leaves: a Ctrl-C waited out the
    pauses on the thread's join (a review)."""
    import errno

    from dist_train.data import stream

    for i in range(2):
        pq.write_table(pa.table({"row_id": [i]}), tmp_path / f"part-{i}.parquet")
    groups = list_row_groups(str(tmp_path))
    opened: list[str] = []
    real_open = stream.open_parquet

    def flaky_open(path: str, *args: object) -> pq.ParquetFile:
        opened.append(path)
        if len(opened) == 1:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_open(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(stream, "open_parquet", flaky_open)
    monkeypatch.setattr(stream, "READ_RETRY_SECONDS", (0.0, 0.0))
    read = [t["row_id"][0].as_py() for t, _ in stream.row_group_tables(groups, ["row_id"])]
    assert read == [0, 1] and len(opened) == 3  # the first file opened twice
    # the second group's reads fail for a moment, with a pause of 10 minutes before each
    real_read = pq.ParquetFile.read_row_group

    def second_fails(self: pq.ParquetFile, index: int, **kwargs: object) -> pa.Table:
        if opened[-1].endswith("part-1.parquet"):  # (opened last: the group read now)
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return real_read(self, index, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", second_fails)
    monkeypatch.setattr(stream, "READ_RETRY_SECONDS", (600.0,))
    tables = prefetch(stream.row_group_tables(groups, ["row_id"]), depth=1, niceness=0)
    assert next(tables)[0]["row_id"][0].as_py() == 0
    time.sleep(0.2)  # the thread is in its pause before the second group's retry
    started = time.monotonic()
    tables.close()
    assert time.monotonic() - started < 60  # not the pause's 600 s


def test_a_stream_of_many_files_keeps_few_open(tmp_path: Path) -> None:
    """Every file a stream read stayed open: under an open-file limit of 64, a review's rank
    of 200 one-group files skipped 140 good row groups as unreadable (and under `error`
    blamed a good file). A stream keeps an eighth of the limit open, at least 8."""
    import resource

    for i in range(60):
        pq.write_table(pa.table({"row_id": [i]}), tmp_path / f"part-{i:02d}.parquet")
    groups = list_row_groups(str(tmp_path))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 16, hard))
    try:
        read = [t["row_id"][0].as_py() for t, _ in iter_tables(groups, ["row_id"], 1)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert read == list(range(60))


def test_running_out_of_open_files_is_not_bad_input(tmp_path: Path) -> None:
    """The machine's limit is raised as it is, under `skip` too: not a file or row group
    skipped. The process really runs out (a low limit, every descriptor under it taken):
    pyarrow's error is an OSError that carries EMFILE."""
    import errno
    import resource

    from dist_train.data import stream
    from dist_train.data.validation import BadInputPolicy

    pq.write_table(pa.table({"row_id": [1], "label": [0]}), tmp_path / "part-0.parquet")
    groups = list_row_groups(str(tmp_path))
    policy = BadInputPolicy("skip", "label", [], [])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[object] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    try:
        with pytest.raises(OSError) as full:
            while True:
                held.append(open(os.devnull))  # closed below
        assert full.value.errno == errno.EMFILE
        with pytest.raises(OSError, match="Too many open files") as listing:
            list_row_groups(str(tmp_path / "part-0.parquet"), policy=policy)
        with pytest.raises(OSError, match="Too many open files") as reading:
            list(stream.row_group_tables(groups, ["row_id", "label"], policy))
    finally:
        for f in held:
            f.close()  # type: ignore[attr-defined]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert listing.value.errno == reading.value.errno == errno.EMFILE
    assert policy.counts.files == policy.counts.row_groups == 0


def test_linked_folders_are_read_once_by_path_and_by_url(tmp_path: Path) -> None:
    """A review's folder with `day1 -> elsewhere` and `latest -> .`: by path one of its two
    files was listed (Path.rglob does not follow links), by file:// URL 81 (pyarrow followed
    the loop until its depth limit)."""
    elsewhere, train = tmp_path / "elsewhere" / "day1", tmp_path / "train"
    elsewhere.mkdir(parents=True)
    train.mkdir()
    pq.write_table(pa.table({"row_id": [0]}), train / "day0.parquet")
    pq.write_table(pa.table({"row_id": [1]}), elsewhere / "part-0.parquet")
    (train / "day1").symlink_to(elsewhere)
    (train / "later").symlink_to(elsewhere)  # a second link to it: listed once, by name order
    (train / "latest").symlink_to(train)  # a link back up
    want = [str(train / "day0.parquet"), str(train / "day1" / "part-0.parquet")]
    assert resolve_files(str(train)) == want
    assert resolve_files(f"file://{train}") == [f"file://{f}" for f in want]


def test_a_glob_passes_over_hidden_folders_and_reads_the_folders_it_matches(
    tmp_path: Path,
) -> None:
    """`dir/**/*.parquet` read Spark's unfinished `_temporary/` write beside the data (rows
    twice), which the same folder given as a directory passes over; a glob of partition
    folders (`day=2024-01-*`), and a Spark `events.parquet/` folder, were taken for files."""
    for rel in ("part-0.parquet", "_temporary/0/part-0.parquet", "events.parquet/part-1.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"row_id": [0]}), tmp_path / rel)
    for day in ("day=2024-01-01", "day=2024-01-02"):
        (tmp_path / "hive" / day).mkdir(parents=True)
        pq.write_table(pa.table({"row_id": [0]}), tmp_path / "hive" / day / "p.parquet")
    data = [str(tmp_path / "events.parquet" / "part-1.parquet"), str(tmp_path / "part-0.parquet")]
    assert resolve_files(str(tmp_path / "*.parquet")) == data
    days = resolve_files(str(tmp_path / "hive" / "day=2024-01-*"))
    assert [Path(f).parent.name for f in days] == ["day=2024-01-01", "day=2024-01-02"]
    everything = resolve_files(str(tmp_path / "**" / "*.parquet"))
    assert not [f for f in everything if "_temporary" in f]
    assert resolve_files(str(tmp_path)) == everything


def test_a_glob_lists_each_real_file_once_and_the_hidden_names_it_asks_for(
    tmp_path: Path,
) -> None:
    """Dated folders and `latest -> 2024-06-02`: `R/*` read that day's rows twice (each
    matched folder was walked with its own record of the folders seen). A hidden name the
    pattern itself gives (`_daily_*`) is read, as the old listing read it."""
    for day in ("2024-06-01", "2024-06-02", "_daily_1"):
        (tmp_path / day).mkdir()
        pq.write_table(pa.table({"row_id": [0]}), tmp_path / day / "part-0.parquet")
    (tmp_path / "latest").symlink_to(tmp_path / "2024-06-02")
    days = ["2024-06-01", "2024-06-02"]
    for pattern in (str(tmp_path / "*"), f"file://{tmp_path}/*"):
        listed = resolve_files(pattern)
        assert [Path(f).parent.name for f in listed] == days, pattern
    assert resolve_files(str(tmp_path)) == [str(tmp_path / d / "part-0.parquet") for d in days]
    daily = resolve_files(str(tmp_path / "_daily_*" / "*.parquet"))
    assert daily == [str(tmp_path / "_daily_1" / "part-0.parquet")]


def _as_a_user(command: list[str]) -> list[str]:
    """``command`` without root's right to read any folder (``setpriv`` drops it); skips
    the test where root cannot drop it."""
    if os.geteuid() != 0:
        return command
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*drop, "true"]).returncode != 0:
        pytest.skip("root here cannot drop its right to read any folder")
    return [*drop, *command]


def test_a_data_folder_that_cannot_be_listed_is_named(tmp_path: Path) -> None:
    """A subfolder of the data that could not be listed was passed over: its files were
    left out of training without a word (a helper's audit)."""
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        pq.write_table(pa.table({"x": [1]}), data / name / "part.parquet")
    locked = data / "b"
    (data / "lost+found").mkdir(mode=0)  # a volume's, root's alone: passed over, as before
    locked.chmod(0)
    code = (
        "import sys; from dist_train.data.listing import resolve_files; resolve_files(sys.argv[1])"
    )
    try:
        ran = subprocess.run(
            _as_a_user([sys.executable, "-c", code, str(data)]), capture_output=True, text=True
        )
    finally:
        locked.chmod(0o755)
    assert ran.returncode == 1
    assert "lost+found" not in ran.stderr
    assert (
        f"DataSourceError: {locked}: cannot list this folder of the data (Permission denied)"
        in ran.stderr
    )


def test_a_pipe_named_as_the_generators_record_is_not_read(tmp_path: Path) -> None:
    """A pipe named dataset.json beside the data (or in it) was read for the generator's
    record: the job waited for a writer without end (a helper's audit)."""
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), train / "part-0.parquet")
    os.mkfifo(tmp_path / "data" / "dataset.json")
    os.mkfifo(train / "dataset.json")
    code = (
        "import sys; from dist_train.data.listing import resolve_files; resolve_files(sys.argv[1])"
    )
    ran = subprocess.run([sys.executable, "-c", code, str(train)], timeout=60)
    assert ran.returncode == 0


def test_a_store_that_cannot_be_listed_is_named_not_a_bare_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`s3://` in a region this machine cannot resolve ended the run with "error: OSError:
    When resolving region for bucket ...", naming neither the path nor the setting (a
    helper's audit). HDFS whose JVM does not load fails the same way, at once (an S3
    endpoint that refuses takes the SDK's retries, seconds)."""
    from dist_train.data.listing import DataSourceError

    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no libjvm there
    with pytest.raises(DataSourceError, match=r"^hdfs://127.0.0.1:1/x: cannot list \(.*libjvm"):
        resolve_files("hdfs://127.0.0.1:1/x")


def test_a_url_no_filesystem_opens_is_named_with_what_to_install() -> None:
    """`data.test_path=foo://x` failed as `ValueError: Protocol not known: foo`, naming
    neither the URL nor the setting (a helper's audit)."""
    from dist_train.data.listing import DataSourceError, resolve_files

    with pytest.raises(DataSourceError, match=r"foo://x/train: cannot open this URL .*foo"):
        resolve_files("foo://x/train")


def test_a_glob_at_a_scheme_only_pyarrow_opens_is_named_with_what_to_install() -> None:
    """A glob at a URL pyarrow opens (its test filesystem here, as s3:// without s3fs) went
    to fsspec to expand, which raised a bare `ValueError: Protocol not known` (a review)."""
    from dist_train.data.listing import DataSourceError, resolve_files

    with pytest.raises(DataSourceError, match=r"mock:///x/part-\*: cannot open this URL"):
        resolve_files("mock:///x/part-*")


def test_a_missing_path_at_such_a_scheme_is_not_blamed_on_a_package() -> None:
    """Not a glob: nothing there, as for a local path (a review: it went to fsspec too)."""
    from dist_train.data.listing import DataSourceError, resolve_files

    with pytest.raises(DataSourceError, match=r"^mock:///x/train/part-0.parquet: no such file"):
        resolve_files("mock:///x/train/part-0.parquet")


def test_a_missing_path_at_a_url_is_named_as_a_local_one_is(tmp_path: Path) -> None:
    """By path "no such file or folder", by file:// URL "no Parquet files found" (a review);
    a folder without Parquet files, or a glob that matches none, is the latter by either."""
    from dist_train.data.listing import DataSourceError

    (tmp_path / "empty").mkdir()
    for name, said in [
        ("missing", "no such file or folder"),
        ("empty", "no Parquet files"),
        ("missing-*", "no Parquet files"),
    ]:
        for path in (str(tmp_path / name), f"file://{tmp_path / name}"):
            with pytest.raises(DataSourceError, match=rf"^{re.escape(path)}: {said}"):
                resolve_files(path)

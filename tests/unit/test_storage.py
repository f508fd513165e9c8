"""Files written whole: a write that fails leaves the file that was there, and no litter."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dist_train import storage


def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --json written in place was cut at the disk's limit: the last run's figures gone,
    and the new ones unreadable."""
    out = tmp_path / "bench.json"
    out.write_text('{"old": 1}')
    link = tmp_path / "latest.json"
    link.symlink_to(out)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        storage.replace_file(out, '{"new": 2}')
    assert out.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "latest.json"]
    monkeypatch.undo()
    storage.replace_file(link, '{"new": 2}')  # through the link: the link stays one
    assert link.is_symlink() and out.read_text() == '{"new": 2}'


def test_a_path_that_is_no_regular_file_is_written_as_it_is(tmp_path: Path) -> None:
    """/dev/stdout or a pipe: a rename over it would replace the device with a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        storage.replace_file(fifo, "figures\n")
        assert os.read(reader, 100) == b"figures\n"
    finally:
        os.close(reader)
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_a_replaced_file_keeps_its_mode_and_a_hard_linked_one_is_written_in_place(
    tmp_path: Path,
) -> None:
    """The rename made a 0600 file 0644, and left a hard link's other name the old text."""
    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o600)
    storage.replace_file(private, "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other-name.json"
    os.link(private, other)
    storage.replace_file(private, "newer")
    assert other.read_text() == "newer" and os.path.samefile(private, other)


def test_this_processes_own_output_is_written_where_it_goes() -> None:
    """``--json /dev/stdout`` into a pipe resolved to /proc/<pid>/fd/pipe:[N] and failed
    after the measuring; into a redirected file, the rename swapped the log away."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path\n"
        "from dist_train import storage\n"
        "storage.replace_file(Path('/dev/stdout'), '{\"figures\": 1}\\n')\n"
        "print('after')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == '{"figures": 1}\nafter\n', done


def test_a_write_over_a_folder_names_the_file_and_leaves_no_copy(tmp_path: Path) -> None:
    """`gen-data` over a folder with a folder named dataset.json said
    'dataset.json.tmp: cannot write (Is a directory)' and left the copy beside it."""
    target = tmp_path / "dataset.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        storage.write_atomically(target, "{}")
    assert raised.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]

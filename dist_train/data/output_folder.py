"""The folders a data command writes its splits into (``gen-data``, ``convert adult``): it
replaces the files it wrote there before, and refuses to delete, or write beside, a user's."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from dist_train.data.listing import DataSourceError, parquet_files_under


class FolderRefused(DataSourceError):
    """An output folder the command will not write into: a bad ``--out`` (exit status 2)."""


OWN_FILE = re.compile(r"\.?part-\d+\.parquet")
"""The names a data command gives its files, at the top of each split's folder (hidden:
one being written, which the reader passes over)."""


def refuse_foreign(out: Path, splits: Sequence[Path], owned: bool) -> list[Path]:
    """The Parquet files under ``splits`` (folders under ``out``), which an earlier run of
    the command wrote there (``owned``: ``out`` holds its record); DataSourceError if they
    hold any other, at any depth: the reader would train on it beside the command's files,
    or it is a user's."""
    # a linked folder's too (the reader follows links), and hidden ones (a run's cut short)
    found = sorted(
        {f for s in splits if s.is_dir() for f in [*s.rglob("*.parquet"), *parquet_files_under(s)]}
    )
    foreign = [
        f for f in found if not (owned and f.parent in splits and OWN_FILE.fullmatch(f.name))
    ]
    if foreign:
        whose = "other than the ones it wrote" if owned else "that this command did not write"
        raise FolderRefused(
            f"{foreign[0]}: {out} holds {len(foreign)} Parquet file(s) {whose}; writing there "
            "would delete them, and reading it would train on them beside its data. Give an "
            "empty or new folder, or move them out; nothing was changed"
        )
    return found


def clear_splits(out: Path, splits: Sequence[Path], record: Path, owned: bool) -> None:
    """Create ``splits`` (folders under ``out``) and delete the Parquet files an earlier run
    of the command wrote there (``owned``: ``record``, which the command writes next, is
    its own). Before deleting anything, refuse if they hold any other Parquet file
    (:func:`refuse_foreign`), or if ``record`` is there and not the command's: it would be
    replaced."""
    if not owned and (record.exists() or record.is_symlink()):
        raise FolderRefused(
            f"{record}: not a record this command wrote, and it writes its own there; move "
            "it, or give an empty or new folder; nothing was changed"
        )
    found = refuse_foreign(out, splits, owned)
    for split in splits:
        split.mkdir(parents=True, exist_ok=True)
    for f in found:
        f.unlink()

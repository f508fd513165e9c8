"""The command line's values checked as argparse reads them: counts, lists of numbers, folders
and files to write, each refused with a usage error naming the flag.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_train.config.schema import FILE_SCHEME


def number_list(
    kind: type[int] | type[float], zero: bool = False, most: float | None = None
) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated positive ``kind`` values (or >= 0 with ``zero``),
    e.g. ``2,4``, none above ``most`` nor given twice; anything else is a usage error naming
    the value."""
    sign = "non-negative" if zero else "positive"

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(x) for x in text.split(",")]
        except ValueError:
            values = []
        bad = (not math.isfinite(v) or v < 0 or (v == 0 and not zero) for v in values)
        if not values or any(bad):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {sign} {kind.__name__}s, e.g. 2,4; got {text!r}"
            )
        if most is not None and max(values) > most:
            raise argparse.ArgumentTypeError(f"at most {most:,}; got {max(values):,}")
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:  # bench train timed 1 rank twice, its rows and ratios doubled
            raise argparse.ArgumentTypeError(f"{twice:g} given twice in {text!r}")
        return values

    return parse


def row_widths(text: str) -> list[int]:
    """An argparse type: positive row widths, each a multiple of 4 (FBGEMM asserts it), up
    to :data:`MAX_ROW_WIDTH`."""
    widths = [int(w) for w in number_list(int)(text)]
    odd = [w for w in widths if w % 4]
    if odd:
        raise argparse.ArgumentTypeError(f"row widths must be multiples of 4; got {odd[0]}")
    return _at_most(widths, MAX_ROW_WIDTH, "row widths")


def kernel_batches(text: str) -> list[int]:
    """An argparse type: batch sizes of ``bench kernel``, up to :data:`MAX_KERNEL_BATCH`."""
    return _at_most(number_list(int)(text), MAX_KERNEL_BATCH, "batch sizes")


def _at_most(values: list[int], most: int, what: str) -> list[int]:
    if max(values) > most:  # past it, numpy's allocation of hundreds of GiB, or FBGEMM's int32
        raise argparse.ArgumentTypeError(f"{what} go up to {most:,}; got {max(values):,}")
    return values


# bench kernel's shapes: wider than any table's rows, a batch past any rank's
MAX_ROW_WIDTH = 4096
MAX_KERNEL_BATCH = 2**20


MAX_COUNT = 2**31  # past any node count, row count a file or benchmark round count
# processes and threads a command starts on this machine: 100,000 calibration ranks were
# taken, and would have been forked
MAX_LOCAL_RANKS = 1024
MAX_THREADS = 4096
MAX_SEED = 2**63 - 1  # a job's seed (config/schema.py)


def count(zero: bool = False, most: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: one positive int (or >= 0 with ``zero``) up to ``most``; anything
    else is a usage error naming the value (a 0 the command would take as "not given", or
    loop on)."""
    sign = "non-negative" if zero else "positive"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0 or (value == 0 and not zero) or value > most:
            raise argparse.ArgumentTypeError(
                f"expected one {sign} whole number up to {most:,}; got {text!r}"
            )
        return value

    return parse


def folder_to_write(text: str) -> str:
    """An argparse type: an output folder's path on this machine, not empty (``--out ''``
    wrote into the working directory), not a URL (no command writes to one: a Path of
    s3://b/x is ./s3:/b/x, where sweep, gen-data and convert wrote)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a folder")
    if "://" in text or text.startswith(FILE_SCHEME):
        raise argparse.ArgumentTypeError(f"{text}: a folder on this machine, not a URL")
    expanded = os.path.expanduser(text)  # as checked, so written (a quoted '~/x' wrote ./~/x)
    path = Path(expanded)
    if path.exists() and not path.is_dir():  # said of a subfolder, or late
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder")
    above = path.absolute().parent
    while not os.path.lexists(above):  # the nearest that exists: the command makes the rest
        above = above.parent
    if not above.is_dir():  # `afile/sub`: 'File exists' (exit 1) from export, late
        kind = "a file" if above.is_file() else "a link to no folder"
        raise argparse.ArgumentTypeError(f"{text}: under {above}, {kind}, not a folder")
    return expanded


def output_file(text: str) -> str:
    """An argparse type: a file this command may write at its end, checked now (a command
    that measures for minutes must not fail at its last line): not a folder, under a folder
    this user may write (the nearest that exists; the writer makes the rest). Returns the
    path with ``~`` expanded, as checked."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file")
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} is a link to nothing; name a file")
    folder = path.absolute().parent
    while not os.path.lexists(folder):  # a dangling link is no folder to write under
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write under {str(folder)!r}")
    try:  # root passes every access check: a file made there says (/proc, a read-only mount)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: cannot write under {str(folder)!r} ({err.strerror})"
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: a file this user cannot write")
    if path.is_file() and not _holds_json(path):
        raise argparse.ArgumentTypeError(
            f"{text!r} holds something other than JSON, which this command would replace (a "
            "file of yours, a config?): name a new file, or remove it first"
        )
    return str(path)


def _holds_json(path: Path) -> bool:
    """Whether ``path`` is empty or holds a JSON document (an earlier run's report: a
    command may replace it); a file over 64 MiB by its first character."""
    try:
        if path.stat().st_size > 64 << 20:
            with path.open("rb") as f:
                return f.read(4096).lstrip()[:1] in (b"{", b"[")
        text = path.read_bytes()
        if text.strip():
            json.loads(text)
    except (OSError, ValueError):
        return False
    return True

"""A folder of this user's alone under the temporary folder (``$TMPDIR/dist-train-<uid>``),
for files another user of the machine must not plant, replace or read: ``local_cluster``'s
records, and numba's compiled kernels where the install cannot hold them."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


class NotPrivateError(OSError):
    """The folder exists but is not this user's alone."""


def private_temp_folder() -> Path:
    """The folder, made (0700) if missing; NotPrivateError naming it if it is a link,
    another user's, or open to others."""
    folder = Path(tempfile.gettempdir()) / f"dist-train-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    made = os.lstat(folder)
    if not stat.S_ISDIR(made.st_mode) or made.st_uid != os.getuid() or made.st_mode & 0o077:
        raise NotPrivateError(
            f"{folder}: not a folder of this user's alone (a link, another user's, or open to "
            "others); remove it, or set TMPDIR to another temporary folder"
        )
    return folder

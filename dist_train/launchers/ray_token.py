"""Ray's token file, readable by its owner alone.

Ray turns token authentication on for a new local cluster and writes its token to
``~/.ray/auth_token`` where none is set, with the process's umask: commonly 0644, in a
folder of 0755, so that any user of the machine could read the token that guards the
cluster's ports. The embedded instance and ``launch/local_cluster.sh`` write it here first,
0600 in a folder of 0700, and make an earlier one of Ray's its owner's alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from dist_train.logs import LOG

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    """Where Ray reads and writes its token when no variable names one."""
    return Path.home() / ".ray" / "auth_token"


def keep_token_private(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Make Ray's own token file (``~/.ray/auth_token``) readable by its owner alone,
    writing one there (256 random bits, as Ray's) where it is missing and authentication
    is not ``RAY_AUTH_MODE=disabled``; the file, or None where there is none, or the token
    is set elsewhere (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``: the user's own, left as
    they are)."""
    if environ.get(TOKEN_ENV) or environ.get(TOKEN_PATH_ENV):
        return None
    path = default_token_path()
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        if path.is_file():
            _owners_alone(path)
            return path
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _owners_alone(path)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _owners_alone(path: Path) -> None:
    """Take the group's and others' permissions off ``path``, a file of this user's."""
    found = path.stat()
    mode = found.st_mode
    if not stat.S_ISREG(mode) or not mode & 0o077 or found.st_uid != os.getuid():
        return
    os.chmod(path, stat.S_IMODE(mode) & 0o700)
    LOG.warning(
        f"{path}: made readable by its owner alone (it was {stat.filemode(mode)}: any user "
        "of this machine could read the token that guards the Ray cluster's ports)"
    )


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m dist_train.launchers.ray_token",
        description="Write Ray's token file (~/.ray/auth_token) readable by its owner alone, "
        "or make one there so; before a `ray start` of your own (docs/operations.md).",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    path = keep_token_private()
    print(f"{path}: readable by its owner alone" if path else "the token is not in Ray's file")
    return 0


if __name__ == "__main__":
    sys.exit(main())

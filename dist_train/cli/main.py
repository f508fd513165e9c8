"""``dist-train``'s entry point: the line parsed, logging set, the command run, and the
process ended as the command's outcome asks.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from dist_train.cli import stdout
from dist_train.cli.commands import run_command
from dist_train.cli.parser import parse_args
from dist_train.logs import setup_logging
from dist_train.stopping import exit_quickly, stopped_by_sigterm


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(getattr(args, "verbosity", "normal"))
    try:
        code = stopped_by_sigterm(lambda: run_command(args))
    except BrokenPipeError:
        if not stdout.reader_gone():
            raise  # another pipe than stdout's: not the reader's doing
        # `dist-train show-config | head`: the reader has its lines. Python's flush of stdout
        # at exit would fail again, with a traceback of its own.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if argv is None:  # the command, not a caller's main(): its process ends here
        if args.command == "convert":
            _exit_before_teardown(code)
        return exit_quickly(code)
    return code


def _exit_before_teardown(code: int) -> NoReturn:
    """End the process with ``code``, its output flushed, without the interpreter's
    teardown. pyarrow's CSV reader reads ahead on its I/O threads: a read still in flight at
    exit (the input's next block, after the conversion ended or failed) meets Python's
    teardown, which ends the thread as it takes the GIL, and std::terminate aborts the
    process (status 134, "terminate called without an active exception") after the files
    were written: about 1 run in 3 of a small file on a busy machine."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

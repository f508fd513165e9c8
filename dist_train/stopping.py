"""SIGTERM as a clean stop for the command-line entry points, and their exit (light: no torch
import)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

EXIT_CODE = 128 + signal.SIGTERM  # 143, as a process the signal ended reports
INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so that whatever handles Ctrl-C handles it:
    Ray's wait for its workers ends on it (a SystemExit there ended the process with 1),
    though Ray raises it again as a plain KeyboardInterrupt."""


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Ctrl-C held for the block, then raised as the KeyboardInterrupt it would have been.
    For the imports of torch and the libraries over it: a KeyboardInterrupt raised inside
    their C++ module set-up (pybind11) aborts the process ("terminate called after throwing
    an instance of 'pybind11::error_already_set'", killed by SIGABRT, maybe a core file)."""
    if (
        threading.current_thread() is not threading.main_thread()  # only it handles signals
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job's: ignored
        # installed from C (an embedding host's): Python could not put it back
        or signal.getsignal(signal.SIGINT) is None
    ):
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def _end_by_sigint() -> None:
    """End this process as Ctrl-C ends one: a shell running commands in a loop stops on a
    command that SIGINT ended, and goes on after one that exited 130."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def stopped_by_sigterm(main: Callable[[], int]) -> int:
    """``main()``'s exit code, SIGTERM (``kill``, ``docker stop``, a scheduler's stop)
    meanwhile ending it as Ctrl-C does, through its ``finally`` blocks: the ranks it started
    stopped, its temporary files removed (the default action ended it on the spot, its
    ranks left training); then 143. Ctrl-C ends it the same way and ends the process by
    SIGINT (130 to a shell). SIGHUP (a closed terminal, a dropped SSH session) stops it as
    SIGTERM does, 129, unless it is ignored (``nohup``): its default action left the
    ranks' temporary files behind, and Ray's workers training on past the driver's lock.
    Each prints a line saying which, then the interrupt's notes. The caller's handlers are
    back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        return main()  # only the main thread may handle signals
    received: list[int] = []

    def terminated(signum: int, frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGHUP:
            _quiet_a_hung_up_terminal()
        raise Terminated

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # (nohup's ignore is kept)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, terminated)
    try:
        return main()
    except KeyboardInterrupt as err:
        # a Terminated raised for a SIGTERM that another handler took (Ray's, in ray.init)
        stopped_by = received[0] if received else signal.SIGTERM
        by_signal = bool(received) or isinstance(err, Terminated)
        name = signal.Signals(stopped_by).name
        print(f"stopped ({name})" if by_signal else "interrupted (Ctrl-C)", file=sys.stderr)
        for note in getattr(err, "__notes__", ()):  # where to resume, say
            print(note, file=sys.stderr)
        if by_signal:
            return 128 + stopped_by
        _end_by_sigint()
        return INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _quiet_a_hung_up_terminal() -> None:
    """Point standard output and error at /dev/null where a write to them fails: after a
    hang-up a terminal's does (EIO; it no longer even says it is a terminal), and a print
    in the clean-up would end it there. An empty write tells, and writes nothing."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
            except OSError:
                pass  # (nothing more to do: the clean-up's prints may fail)


def exit_quickly(code: int) -> int:
    """``code``, for an entry point's ``sys.exit``, with every object frozen first: the
    interpreter's teardown ends with a garbage collection that walks every object torch,
    TorchRec and Ray made, 1 to 2 s of one core after a run, for memory the exit frees
    anyway. Frozen objects are outside its reach; atexit handlers and flushes still run."""
    gc.freeze()
    return code

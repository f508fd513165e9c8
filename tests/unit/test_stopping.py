"""SIGTERM ends a command as Ctrl-C does, with exit 143, and leaves no trace after it."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

from dist_train.stopping import EXIT_CODE, stopped_by_sigterm


def _terminated() -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")


def _interrupted() -> int:
    raise KeyboardInterrupt


def test_sigterm_is_exit_143_and_the_callers_handler_is_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert stopped_by_sigterm(_terminated) == EXIT_CODE == 143
    assert signal.getsignal(signal.SIGTERM) == before
    assert stopped_by_sigterm(lambda: 0) == 0


def test_sighup_stops_as_sigterm_does_unless_it_is_ignored() -> None:
    """A closed terminal's SIGHUP ended the driver on the spot (its ranks' temporary files
    left, Ray's workers training on; a helper's audit): now a stop, 129. Under nohup,
    which ignores it, it stays ignored."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "from dist_train.stopping import stopped_by_sigterm\n"
        "if sys.argv[1] == 'nohup':\n"
        "    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "def hung_up():\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    return 0\n"
        "print(stopped_by_sigterm(hung_up))\n"
        "print(signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN))\n"
    )
    hung = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True)
    assert (hung.stdout, hung.stderr) == ("129\nTrue\n", "stopped (SIGHUP)\n"), hung
    kept = subprocess.run([sys.executable, "-c", script, "nohup"], capture_output=True, text=True)
    assert (kept.stdout, kept.stderr) == ("0\nTrue\n", ""), kept


def test_a_hung_up_terminal_does_not_cut_the_stop_short() -> None:
    """After a hang-up, a write to the terminal fails (EIO): the stop's line raised out of
    its handler, a traceback and exit 1, and a print in a clean-up cut it short (a
    review). Output to a terminal goes to /dev/null once SIGHUP arrives."""
    import pty
    import subprocess
    import sys

    script = (
        "import os, signal, sys, time\n"
        "from dist_train.stopping import stopped_by_sigterm\n"
        "def hung_up():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "        time.sleep(5)\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "        open(sys.argv[1], 'w').write('done')\n"
        "    return 0\n"
        "sys.exit(stopped_by_sigterm(hung_up))\n"
    )
    leader, follower = pty.openpty()
    os.close(leader)  # the terminal hung up: writes to it fail
    marker = Path(tempfile.mkdtemp()) / "cleaned"
    done = subprocess.run(
        [sys.executable, "-c", script, str(marker)],
        stdout=follower,
        stderr=follower,
        timeout=60,
    )
    os.close(follower)
    assert done.returncode == 129
    assert marker.read_text() == "done"  # the clean-up ran past its print


def test_ctrl_c_ends_the_process_by_sigint_with_one_line() -> None:
    """A Ctrl-C after a SIGTERM is a Ctrl-C (once, any KeyboardInterrupt after a SIGTERM
    read 143). It printed a traceback of every frame it passed (and under Ray, whose Ctrl-C
    handler ends with sys.exit, exited 1 and printed nothing); now one line, and the process
    ends by SIGINT, as a shell loop needs to stop on it (an exit of 130 let it go on)."""
    import subprocess
    import sys

    script = (
        "import os, signal\n"
        "from dist_train.stopping import stopped_by_sigterm\n"
        "def terminated():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "def interrupted():\n"
        "    err = KeyboardInterrupt()\n"
        "    err.add_note('the newest committed checkpoint is ...')\n"
        "    raise err\n"
        "assert stopped_by_sigterm(terminated) == 143\n"
        "stopped_by_sigterm(interrupted)\n"
        "print('still running')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGINT, done
    # a line for each stop (SIGTERM printed none), then the interrupt's notes
    said = "stopped (SIGTERM)\ninterrupted (Ctrl-C)\nthe newest committed checkpoint is ...\n"
    assert done.stderr == said and not done.stdout


def test_a_sigterm_that_rays_handler_took_during_ray_init_is_a_stop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ray.init installs its own SIGTERM handler, sys.exit(15), while it starts the cluster:
    a SIGTERM then exited 15, without a line."""
    import ray

    from dist_train.launchers import ray_train

    def init_meets_sigterm(**kwargs: object) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # as Ray does
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ray, "init", init_meets_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert stopped_by_sigterm(lambda: ray_train._init_keeping_sigterm() or 0) == EXIT_CODE
    assert capsys.readouterr().err == "stopped (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) == before


def test_embedded_rays_daemons_start_out_of_the_drivers_process_group(tmp_path: Path) -> None:
    """A SIGTERM to the driver's process group (`kill -- -PGID`) reached embedded Ray's
    daemons too: the raylet, exiting at once where it beat the GCS's shutdown, took the
    plasma store with it and the driver's core worker ended the process with exit 1 and no
    line. Started in sessions of their own, they leave the signal to the driver."""
    import ray
    import ray._private.services as services

    from dist_train.launchers import ray_train

    if not ray._private.utils.detect_fate_sharing_support():
        pytest.skip("no kernel fate-sharing: Ray's reaper needs its daemons in its group")
    popen = services.ConsolePopen
    said = tmp_path / "ids"
    with ray_train._daemons_in_own_sessions(), said.open("w") as out:
        # as Ray starts each daemon
        started = services.start_ray_process(
            [sys.executable, "-c", "import os; print(os.getsid(0), os.getpgrp())"],
            "dist_train_test",
            fate_share=True,
            stdout_file=out,
        )
        assert started.process.wait(timeout=60) == 0
    assert services.ConsolePopen is popen  # Ray's own again after the start
    pid = str(started.process.pid)
    assert said.read_text().split() == [pid, pid]  # a session, and so a group, of its own
    assert os.getsid(0) != started.process.pid


def test_a_ctrl_c_during_a_held_block_is_raised_after_it() -> None:
    """torch's import, interrupted inside its C++ set-up, aborted the process (SIGABRT:
    "terminate called after throwing an instance of 'pybind11::error_already_set'"): the
    interrupt now waits for the block to end, then stops the command as before."""
    from dist_train.stopping import sigint_held

    before = signal.getsignal(signal.SIGINT)
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
            finished = True  # not interrupted here
    assert finished and signal.getsignal(signal.SIGINT) == before
    with sigint_held():  # no Ctrl-C: nothing raised
        pass


def test_a_sigint_handler_installed_from_c_is_left_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python reports a handler it did not install (an embedding host's) as None, and
    cannot install None back: the held block raised TypeError on the way out."""
    from dist_train.stopping import sigint_held

    monkeypatch.setattr(signal, "getsignal", lambda signum: None)
    installed: list[object] = []
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.append(handler))
    with sigint_held():
        pass
    assert installed == []


def test_an_ignored_sigint_stays_ignored_in_a_held_block() -> None:
    """A background job of a script ignores SIGINT: a Ctrl-C to its group during the
    imports stopped it (the held block installed a handler), while one later did not."""
    from dist_train.stopping import sigint_held

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigint_held():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)

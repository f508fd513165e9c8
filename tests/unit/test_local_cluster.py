"""launch/local_cluster.sh's start (dist_train/launchers/local_cluster.py) before it runs
``ray start``."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from dist_train.launchers import local_cluster


def test_a_taken_job_server_port_is_refused_before_ray_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ray start logs a failed bind of its job server and goes on: start said the cluster was
    up and printed RAY_ADDRESS for a port another process held (another cluster, another
    user's embedded Ray), where submits would then go (an operator's walk-through)."""
    started: list[list[str]] = []
    monkeypatch.setattr(local_cluster, "start_head", lambda args, env=None: started.append(args))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for args in (
            ["--dashboard-host=127.0.0.1", f"--dashboard-port={port}"],
            ["--dashboard-port", str(port)],
        ):
            assert local_cluster.start(0, args) == 1
            out = capsys.readouterr().out
            assert f"port {port}, for this cluster's job server, is taken" in out
        # the last --dashboard-port given, as ray start takes it
        assert (
            local_cluster._option(
                ["--dashboard-port=1", "--dashboard-port", "2"], "--dashboard-port"
            )
            == "2"
        )
    assert not started
    assert not local_cluster._taken("127.0.0.1", str(port))  # free again once closed
    # localhost resolving to ::1 first (Debian, Fedora, macOS): every address is tried, as
    # Ray's server binds them all (it tried the first only, and said free)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", held))
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", held, 0, 0))
        real = socket.getaddrinfo

        def v6_first(host: str, port: int, *args: object, **kw: object) -> list[object]:
            return [v6, v4] if host == "localhost" else real(host, port, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "getaddrinfo", v6_first)
        assert local_cluster._taken("localhost", str(held))
        monkeypatch.undo()
    # not an address of this machine, or IPv6: not taken by another process (it said so)
    assert not local_cluster._taken("::1", str(port)) and not local_cluster._taken(
        "192.0.2.1", str(port)
    )


def test_an_address_family_the_machine_lacks_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """localhost as ::1 and 127.0.0.1 on a machine without IPv6: the ::1 socket fails at
    creation, which escaped the check (a review)."""
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real_socket(family, *args)  # type: ignore[arg-type]

    with real_socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", held))
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", held, 0, 0))
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [v6, v4])
        monkeypatch.setattr(socket, "socket", no_ipv6)
        assert local_cluster._taken("localhost", str(held))


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("--dashboard-port=8300", "set DASHBOARD_PORT for the job server's port"),
        ("--dashboard-port", "set DASHBOARD_PORT for the job server's port"),
        ("--node-ip-address=10.0.0.1", "--node-ip-address: this cluster listens on 127.0.0.1"),
        ("--dashboard-host=0.0.0.0", "--dashboard-host: this cluster listens on 127.0.0.1"),
    ],
)
def test_start_refuses_the_options_its_printed_address_would_not_match(
    extra: str, said: str
) -> None:
    """A --dashboard-port after start's own was the one ray start took, while the script
    printed RAY_ADDRESS for DASHBOARD_PORT's (8265): submits went to whatever listened
    there (a review's finding). Refused before anything starts."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "launch" / "local_cluster.sh"
    run = subprocess.run(
        ["bash", str(script), "start", extra], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and said in run.stderr, run.stderr


def test_sigterm_while_ray_starts_ends_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a CI's cancel, kill) ended start on the spot: ray start's daemons, in a
    session of their own, went on running with no record for stop to find them by (a
    helper's audit). A stand-in `ray` leaves a daemon in its session and waits."""
    import os
    import signal
    import sys
    import threading
    import time

    daemon = tmp_path / "daemon.pid"
    ray = tmp_path / "ray"
    ray.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {daemon}\nwait\n")
    ray.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # `ray` beside it
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (cached: TMPDIR is read once)

    def terminate_once_started() -> None:
        deadline = time.monotonic() + 30
        while not daemon.exists() or not daemon.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_once_started)
    killer.start()
    assert local_cluster.main(["start", "--port=0"]) == 143
    killer.join()
    pid = int(daemon.read_text())
    deadline = time.monotonic() + 10
    while local_cluster.proc_stat(pid) is not None and not local_cluster._gone(pid):
        assert time.monotonic() < deadline, "ray start's daemon outlived the command"
        time.sleep(0.05)


def test_records_go_in_a_folder_of_this_users_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records lay in the temporary folder itself, everyone's, where another user could put
    one first, naming a process group for `stop` to signal, or a link where `start` writes
    (a helper's audit)."""
    import os

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    record = local_cluster.state_file(6379)
    folder = tmp_path / f"dist-train-{os.getuid()}"
    assert record == folder / "local-cluster-6379.json"
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)  # open to others: another's records could be put there
    with pytest.raises(SystemExit, match=r"not a folder of this user's alone"):
        local_cluster.state_file(6379)
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match=r"not a folder of this user's alone"):
        local_cluster.state_file(6379)


def test_stop_finds_a_record_an_earlier_version_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import os

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    earlier = tmp_path / f"dist-train-local-cluster-{os.getuid()}-6379.json"
    dead = {"port": 6379, "process_group": 2**22 + 7, "boot_id": "x", "daemons": {"1": 1}}
    earlier.write_text(json.dumps(dead))
    assert local_cluster.stop(6379) == 0
    assert "has ended already (record removed)" in capsys.readouterr().out
    assert not earlier.exists()

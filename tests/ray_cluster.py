"""A real ``ray start --head`` cluster for tests, on 127.0.0.1 with token authentication, and
its scoped stop: only this cluster's processes end (``ray stop`` would end every Ray instance
of the machine, other tests' and other users' included)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dist_train.launchers.processes import free_port

BIN = Path(sys.executable).parent


def ray_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The venv's ``ray`` CLI."""
    return subprocess.run(
        [str(BIN / "ray"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class RayHead:
    address: str  # the job server (dashboard), http://127.0.0.1:<port>
    env: dict[str, str]  # for CLI calls to it: its token, its RAY_TMPDIR
    tmpdir: Path  # RAY_TMPDIR of the cluster: Ray's files are under <tmpdir>/ray


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group), from Linux /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid, pgid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):  # gone meanwhile
                continue
            if state != "Z":
                found[int(entry.name)] = (int(ppid), int(pgid))
    return found


def _cluster_processes(pgid: int) -> set[int]:
    """Process group ``pgid`` and every process below its members."""
    procs = _processes()
    found = frontier = {pid for pid, (_, group) in procs.items() if group == pgid}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found = found | frontier
    return found


def stop_cluster(pgid: int, grace_s: float = 10.0) -> None:
    """End one ``ray start`` cluster: its daemons (process group ``pgid``, the session
    ``ray start`` ran in) and the workers and drivers below them. As ``ray stop`` does it: the
    raylet first, then the others, the GCS last; SIGTERM, then SIGKILL after ``grace_s``."""
    pids = _cluster_processes(pgid)
    names = {pid: _name(pid) for pid in pids}
    raylet = {p for p in pids if names[p] == "raylet"}
    gcs = {p for p in pids if names[p] == "gcs_server"}
    for bucket in (raylet, pids - raylet - gcs, gcs):
        _terminate(bucket, grace_s)


def _terminate(pids: set[int], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            pids = {p for p in pids if not _gone(p)}
            if not pids:
                return
            time.sleep(0.1)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    """Exited (a zombie waits only for its parent to read its status)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@contextmanager
def ray_head(tmp_path: Path, num_cpus: int = 2) -> Iterator[RayHead]:
    """``ray start --head`` on 127.0.0.1 with free ports and this cluster's own auth token;
    Ray's files go under a short private RAY_TMPDIR (Ray's socket paths must stay short),
    so its ``ray_current_cluster`` file names it only to processes given that RAY_TMPDIR."""
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    tmpdir = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_TMPDIR": str(tmpdir),
    }
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        # Free ports for those with fixed defaults, so that clusters can run side by side.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
    ]
    # Its own session: the daemons ray start leaves behind share its process group.
    start = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield RayHead(f"http://127.0.0.1:{dash}", env, tmpdir)
    finally:
        start.kill()
        stop_cluster(start.pid)
        shutil.rmtree(tmpdir, ignore_errors=True)

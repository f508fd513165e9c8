"""A real ``ray start --head`` cluster for tests, on 127.0.0.1 with token authentication, and
its scoped stop (:mod:`dist_train.launchers.local_cluster`): only this cluster's processes
end (``ray stop`` would end every Ray instance of the machine, other tests' and other users'
included)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dist_train.launchers.local_cluster import start_head, stop_cluster
from dist_train.launchers.processes import free_ports

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
    dash, gcs, client, agent = free_ports(4)  # four different ones
    args = [
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        # Free ports for those with fixed defaults, so that clusters can run side by side.
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
    ]
    group, status, out = start_head(args, env)
    try:
        assert status == 0, out
        yield RayHead(f"http://127.0.0.1:{dash}", env, tmpdir)
    finally:
        stop_cluster(group)
        shutil.rmtree(tmpdir, ignore_errors=True)

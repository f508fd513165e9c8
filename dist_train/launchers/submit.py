"""``dist-train submit``: ``ray job submit`` with the driver as entrypoint.

    ray job submit --address A [--working-dir . --runtime-env-json {...excludes...}] \\
        -- python -m dist_train.driver --config C [--set K=V ...]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Never upload these with the working dir (Ray's upload limit is 100 MiB).
EXCLUDES = [".venv", ".git", "outputs", "**/__pycache__", ".pytest_cache", ".ruff_cache"]


def ray_cli() -> str:
    """The ``ray`` executable next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def submit_command(
    config: str,
    overrides: list[str],
    address: str | None,
    working_dir: str | None,
    wait: bool,
    submission_id: str | None = None,
) -> list[str]:
    """The ``ray job submit`` argv for a job config."""
    cmd = [ray_cli(), "job", "submit"]
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    cmd += ["--address", address]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if working_dir:
        cmd += ["--working-dir", working_dir]
        cmd += ["--runtime-env-json", json.dumps({"excludes": EXCLUDES})]
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", "python", "-m", "dist_train.driver", "--config", config]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def submit(
    config: str,
    overrides: list[str],
    address: str | None,
    working_dir: str | None,
    wait: bool,
    dry_run: bool,
    submission_id: str | None = None,
) -> int:
    """Run (or, with ``dry_run``, print) the submission; ``ray job submit``'s exit code."""
    cmd = submit_command(config, overrides, address, working_dir, wait, submission_id)
    print(" ".join(cmd), flush=True)
    if dry_run:
        return 0
    return subprocess.run(cmd, check=False).returncode

"""`make setup` against a .venv set up for another FBGEMM build (the README's GPU recipe
after the CPU one): refused before pip runs, naming what the venv holds."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def test_a_setup_for_another_fbgemm_build_is_refused_before_it_installs() -> None:
    """`make setup FBGEMM_PACKAGE=fbgemm-gpu==1.8.0` on a CPU .venv printed "Nothing to be
    done": the venv kept its CPU torch and fbgemm-gpu-cpu, and CUDA jobs trained on CPU."""
    held = {d: _installed(d) for d in ("fbgemm-gpu", "fbgemm-gpu-cpu")}
    ours = next(d for d, v in held.items() if v)  # this venv's build
    other = "fbgemm-gpu" if ours == "fbgemm-gpu-cpu" else "fbgemm-gpu-cpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    # PIP and PYTHON=false: were the refusal gone, the recipe's installs fail, not run (the
    # old Makefile's installed the other build beside this venv's)
    make = ["make", "-s", "-C", str(REPO), "PIP=false", "PYTHON=false"]
    done = subprocess.run(
        [*make, "setup", f"FBGEMM_PACKAGE={other}==1.8.0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done.stdout + done.stderr
    said = f".venv holds {ours} {held[ours]}, not {other}==1.8.0 (FBGEMM_PACKAGE)"
    assert said in done.stderr and "rm -rf .venv" in done.stderr, done.stderr
    assert {d: _installed(d) for d in held} == held

"""`make setup` against a .venv set up for the other FBGEMM build (the README's GPU recipe
after the CPU one): refused before pip runs, naming what the venv holds."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# PIP and PYTHON=false: were a refusal gone, the recipe's installs fail, not run (the old
# Makefile's installed the other build beside this venv's)
MAKE = ["make", "-s", "-C", str(REPO), "PIP=false", "PYTHON=false"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


HELD = {d: _installed(d) for d in ("fbgemm-gpu", "fbgemm-gpu-cpu")}
OURS = next(d for d, v in HELD.items() if v)  # this venv's build
OTHER = "fbgemm-gpu" if OURS == "fbgemm-gpu-cpu" else "fbgemm-gpu-cpu"


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MAKE, *args], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )


def test_a_setup_for_the_other_fbgemm_build_is_refused_before_it_installs() -> None:
    """`make setup FBGEMM_PACKAGE=fbgemm-gpu==1.8.0` on a CPU .venv printed "Nothing to be
    done": the venv kept its CPU torch and fbgemm-gpu-cpu, and CUDA jobs trained on CPU."""
    done = _make("setup", f"FBGEMM_PACKAGE={OTHER}==1.8.0")
    assert done.returncode != 0, done.stdout + done.stderr
    said = f".venv holds {OURS} {HELD[OURS]}, not {OTHER} (FBGEMM_PACKAGE={OTHER}==1.8.0)"
    assert said in done.stderr and "rm -rf .venv" in done.stderr, done.stderr
    assert {d: _installed(d) for d in HELD} == HELD


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        (f"{OTHER}==1.8.0", True),
        (f"{OURS}==1.8.0", False),
        # the same build by any spelling or version: pip moves it to the pin (a first
        # version compared the strings: a local version, 1.8.0+cu130, was refused)
        (f"{OURS.replace('-', '_').upper()}==1.8.0+cu130", False),
        (f"{OURS}>=1.8", False),
        (OURS, False),
    ],
)
def test_the_check_compares_the_build_by_name(spec: str, refused: bool) -> None:
    """The Makefile's own check, run on this venv without the set-up around it."""
    check = 'check: ; @$(PY) -c "$$SAME_FBGEMM" "$(WANT)" $(VENV)'
    done = _make("--eval", check, "check", f"WANT={spec}")
    assert (done.returncode != 0) == refused, done.stderr


def test_the_default_build_is_the_venvs_own() -> None:
    """A CUDA venv's `make test-gpu` was refused: the check took the CPU default."""
    show = "show: ; @echo $(FBGEMM_PACKAGE)"
    assert _make("--eval", show, "show").stdout.split("==")[0] == OURS

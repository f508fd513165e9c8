"""Where numba caches the compiled kernels (dist_train/kernels.py): numba refuses to compile
with ``cache=True`` where it can write no cache folder, which made the module, and so the
batch builder and the trainer, fail to import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# numba's locators, the ones that stay: the user-provided folder (NUMBA_CACHE_DIR) alone,
# as for a read-only install run by a user with no home; or none at all
_IMPORT = """
import sys
import numba.core.caching as caching
caching.CacheImpl._locator_classes = {locators}
import numba
from dist_train import kernels
kernels.load()  # compiled, and cached if it can be
# where the kernels cache, and what the process's other numba functions are left with
print(kernels._CACHE, kernels.fill_offsets._cache.cache_path, repr(numba.config.CACHE_DIR))
"""


def _import_kernels(tmp_path: Path, locators: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    code = _IMPORT.format(locators=locators)
    ran = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    return ran.stdout.split()


def test_the_kernels_cache_in_a_private_folder_where_no_other_is_writable(tmp_path: Path) -> None:
    cached, folder, left = _import_kernels(tmp_path, "[caching.UserProvidedCacheLocator]")
    assert cached == "True" and left == "''"
    private = tmp_path / f"dist-train-{os.getuid()}"
    assert folder.startswith(str(private / "numba"))
    assert private.stat().st_mode & 0o777 == 0o700
    assert list(Path(folder).glob("kernels.fill_offsets-*.nbi"))  # cached there


def test_the_kernels_compile_uncached_where_no_folder_is_private(tmp_path: Path) -> None:
    (tmp_path / f"dist-train-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmp_path / f"dist-train-{os.getuid()}", 0o777)  # open to others: refused
    cached, _, left = _import_kernels(tmp_path, "[caching.UserProvidedCacheLocator]")
    assert cached == "False" and left == "''"


def test_the_kernels_import_with_no_cache_locator_at_all(tmp_path: Path) -> None:
    assert _import_kernels(tmp_path, "[]")[0] == "False"


@pytest.mark.skipif(os.getuid() != 0, reason="runs the import as another user: needs root")
def test_the_kernels_import_for_a_user_who_can_write_neither_the_install_nor_a_home() -> None:
    """What a pod's ``runAsUser`` does to a root-owned install (the helper's reproduction)."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    # pytest's tmp_path lies in a folder of root's alone, which the other user cannot enter
    tmp_path = Path(tempfile.mkdtemp(prefix="kernels-cache-"))
    try:
        _import_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _import_as_nobody(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME="/nonexistent", TMPDIR=str(tmp_path))
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*as_nobody, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )

    if run("import dist_train.private_folder").returncode != 0:
        pytest.skip("this checkout is not readable by another user")
    ran = run("from dist_train import kernels; print(kernels._CACHE)")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["True"]
    assert (tmp_path / "dist-train-65534" / "numba").is_dir()

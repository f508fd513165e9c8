"""The cores a process may use: affinity and cgroup CPU quotas (files laid out as Linux does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from planners.cores import cpu_quota, usable_cores, usable_memory_bytes


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path: Path, own: str | None, parent: str | None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    if parent is not None:
        _write(root / "kubepods" / "cpu.max", parent)
    if own is not None:
        _write(root / "kubepods" / "pod1" / "cpu.max", own)
    _write(tmp_path / "proc_cgroup", "0::/kubepods/pod1\n")
    return root, tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    assert cpu_quota(*_v2(tmp_path, "250000 100000", "max 100000")) == 2.5
    assert cpu_quota(*_v2(tmp_path, "max 100000", "150000 100000")) == 1.5
    assert cpu_quota(*_v2(tmp_path, "400000 100000", "200000 100000")) == 2.0
    assert cpu_quota(*_v2(tmp_path, "max 100000", "max 100000")) is None


def test_a_cgroup_v1_quota_of_the_cpu_controller(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup" / "cpu,cpuacct"
    _write(tmp_path / "proc_cgroup", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n2:cpuset:/\n")
    # a container's cgroup namespace: /docker/abc is not under the mount, its files are
    _write(mount / "cpu.cfs_quota_us", "300000\n")
    _write(mount / "cpu.cfs_period_us", "100000\n")
    assert cpu_quota(tmp_path / "cgroup", tmp_path / "proc_cgroup") == 3.0
    _write(mount / "cpu.cfs_quota_us", "-1\n")
    assert cpu_quota(tmp_path / "cgroup", tmp_path / "proc_cgroup") is None


def test_no_readable_cgroup_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "cgroup", tmp_path / "missing") is None
    root, proc = _v2(tmp_path, "garbage", None)
    assert cpu_quota(root, proc) is None


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert usable_cores(tmp_path / "none", tmp_path / "none") == 8
    assert usable_cores(*_v2(tmp_path, "250000 100000", None)) == 2
    assert usable_cores(*_v2(tmp_path, "50000 100000", None)) == 1  # half a core: 1
    assert usable_cores(*_v2(tmp_path, "1600000 100000", None)) == 8  # the affinity is less


def test_a_cgroup_v1_quota_on_the_hosts_path_and_under_a_renamed_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    # the process's cgroup as the host names it, under the mount; its parent has no quota
    _write(root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "150000\n")
    _write(root / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu" / "docker" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "docker" / "cpu.cfs_period_us", "100000\n")
    # listed as cpuacct,cpu with no mount of that name: the cpu mount holds it
    _write(tmp_path / "proc_cgroup", "0::/\n3:cpuacct,cpu:/docker/abc\n")
    assert cpu_quota(root, tmp_path / "proc_cgroup") == 1.5


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux affinity and 2 cores",
)
def test_usable_cores_follow_this_threads_affinity(tmp_path: Path) -> None:
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})  # this thread only (Linux: pid 0 is the caller)
        assert usable_cores(tmp_path / "none", tmp_path / "none") == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert usable_cores(tmp_path / "none", tmp_path / "none") == len(cores)


def test_usable_memory_is_the_machines_capped_by_the_tightest_cgroup_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 2**20}  # a 4 GiB machine
    monkeypatch.setattr(os, "sysconf", lambda name: sizes[name])
    root = tmp_path / "cgroup"
    _write(tmp_path / "proc_cgroup", "0::/kubepods/pod1\n")
    assert usable_memory_bytes(root, tmp_path / "proc_cgroup") == 2**32  # no limit
    _write(root / "kubepods" / "memory.max", f"{2**30}\n")
    _write(root / "kubepods" / "pod1" / "memory.max", "max\n")
    assert usable_memory_bytes(root, tmp_path / "proc_cgroup") == 2**30
    # v1: the memory controller's hierarchy; "no limit" is a number near 2^63
    v1 = tmp_path / "v1"
    _write(tmp_path / "proc_v1", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(v1 / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert usable_memory_bytes(v1, tmp_path / "proc_v1") == 2**32
    _write(v1 / "memory" / "memory.limit_in_bytes", f"{2**31}\n")
    assert usable_memory_bytes(v1, tmp_path / "proc_v1") == 2**31
    assert usable_memory_bytes(v1, tmp_path / "missing") == 2**32

"""How many cores this process may use: its CPU affinity, capped by its cgroup's CPU quota;
and how much memory: the machine's, capped by its cgroup's memory limit.

``os.cpu_count()`` counts the host's cores. In a container or a Kubernetes pod a process may
use fewer: a cpuset (its affinity) or a CPU quota (cgroup v2 ``cpu.max``; v1
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), the tightest of its cgroup and the cgroups
above it. Ranks and threads sized from the host's count oversubscribe the cores the process
has, and a quota stalls them all for the rest of each period once they spend it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def process_cores() -> list[int]:
    """The cores this process may run on, its affinity (empty where the OS has none)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process may use: its affinity's CPUs (the host's count where the OS has no
    affinity), at most its CPU quota rounded down, at least 1."""
    cores = len(process_cores()) or os.cpu_count() or 1  # no affinity: macOS, Windows
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def cpu_list(cores: list[int]) -> str:
    """``cores`` as Linux writes CPU lists (``0-3,8``; empty: ``""``)."""
    runs: list[str] = []
    ordered = sorted(set(cores))
    start = 0
    for i, core in enumerate(ordered):
        if i + 1 == len(ordered) or ordered[i + 1] != core + 1:
            first = ordered[start]
            runs.append(str(first) if first == core else f"{first}-{core}")
            start = i + 1
    return ",".join(runs)


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs' worth of time per period this process's cgroups allow (the tightest of its own
    and its ancestors'), or None without a quota (or where cgroups cannot be read)."""
    quotas = _cgroup_limits(cgroup_root, proc_cgroup, "cpu", _v2_quota, _v1_quota)
    return min(quotas) if quotas else None


def usable_memory_bytes(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """This machine's memory, capped by the tightest memory limit of this process's cgroup
    and its ancestors (v2 ``memory.max``, v1 ``memory.limit_in_bytes``): in a container,
    past the limit the kernel kills the process, whatever the host has."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = _memory_limit("memory.max"), _memory_limit("memory.limit_in_bytes")
    return int(min([ram, *_cgroup_limits(cgroup_root, proc_cgroup, "memory", v2, v1)]))


Limit = Callable[[Path], float | None]  # a cgroup folder's limit, None without one


def _cgroup_limits(
    cgroup_root: Path, proc_cgroup: Path, controller: str, v2: Limit, v1: Limit
) -> list[float]:
    """The limits of ``controller`` set on this process's cgroups and their ancestors, read
    by ``v2`` (the unified hierarchy) or ``v1`` (the controller's own hierarchy); none where
    cgroups cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # cgroup v2
            limits += _limits_up(cgroup_root, path, v2)
        elif controller in controllers.split(","):  # cgroup v1, the controller's hierarchy
            limits += _limits_up(_v1_mount(cgroup_root, controllers, controller), path, v1)
    return limits


def _memory_limit(name: str) -> Limit:
    """A reader of a cgroup's memory limit file: bytes, None for "max" or an unreadable file
    (v1 writes a number near 2^63 for none, which the machine's memory undercuts)."""

    def read(cgroup: Path) -> float | None:
        try:
            text = (cgroup / name).read_text().strip()
            return None if text == "max" else float(int(text))
        except (OSError, ValueError):
            return None

    return read


def _limits_up(mount: Path, path: str, limit_of: Limit) -> list[float]:
    """The limits of ``path``'s cgroup and its ancestors under ``mount`` (the mount itself
    last: in a container the process's own cgroup is often mounted there, under another
    path)."""
    directory = mount / path.strip("/")
    found = []
    for d in [directory, *directory.parents]:
        if d != mount and mount not in d.parents:
            break
        limit = limit_of(d)
        if limit is not None:
            found.append(limit)
    return found


def _v1_mount(cgroup_root: Path, controllers: str, controller: str) -> Path:
    """Where the v1 hierarchy of ``controllers`` is mounted: named as listed, else after
    ``controller`` (systemd and Docker link it to the controller's mount whatever its name:
    ``cpu,cpuacct`` at ``cpu``)."""
    listed = cgroup_root / controllers
    return listed if listed.is_dir() else cgroup_root / controller


def _v2_quota(cgroup: Path) -> float | None:
    """``cpu.max``: "max PERIOD" (no quota) or "QUOTA PERIOD" in microseconds."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        if quota == "max" or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(cgroup: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1: no quota) over ``cpu.cfs_period_us``."""
    try:
        quota = int((cgroup / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period

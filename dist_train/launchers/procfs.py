"""Processes as Linux's ``/proc`` shows them: one parser of ``/proc/<pid>/stat`` for the
launchers (a rank watching its driver), the benchmarks (CPU time of a process tree) and the
local cluster's scoped stop. Imports nothing heavy: ``launch/local_cluster.sh`` runs it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcStat:
    """A process as Linux's ``/proc/<pid>/stat`` shows it."""

    state: str  # R, S, ..., Z for exited but not yet reaped
    parent: int  # its parent's pid
    group: int  # its process group's id
    started: int  # clock ticks after boot: with the pid, which process this is
    cpu_seconds: float  # its own user and system time, not its reaped children's

    @property
    def gone(self) -> bool:
        """Exited: a zombie waits only for its parent to read its status."""
        return self.state in ("Z", "X")


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s :class:`ProcStat`; None once it is gone (or without ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the fields after the command's name, which may hold spaces and parentheses
    fields = text.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcStat(
        fields[0],
        int(fields[1]),
        int(fields[2]),
        int(fields[19]),
        (int(fields[11]) + int(fields[12])) / ticks,
    )

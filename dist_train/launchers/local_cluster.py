"""A one-node ``ray start --head`` cluster on this machine, and its scoped stop.

``ray stop`` ends every Ray instance of yours on the machine: another cluster, and the
embedded instance of any ``dist-train train`` running there. A cluster started here runs in
a session of its own (its daemons share the process group of the ``ray start`` that made
them), which is recorded in a state file per GCS port; :func:`stop` ends that process group and the
workers below it, nothing else. ``launch/local_cluster.sh`` is the command line:
``python -m dist_train.launchers.local_cluster start|stop [--port P] [ray start args]``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dist_train.launchers.procfs import proc_stat
from dist_train.launchers.ray_token import keep_token_private
from dist_train.private_folder import NotPrivateError, private_temp_folder
from dist_train.stopping import stopped_by_sigterm

GRACE_S = 10.0
START_TIMEOUT_S = 120.0


def _option(args: list[str], name: str) -> str | None:
    """The value of ``ray start`` option ``name`` in ``args`` (``--x=v`` or ``--x v``; the
    last given, as ``ray start`` takes it)."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            found = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(args):
            found = args[i + 1]
    return found


def _taken(host: str, port: str) -> bool:
    """Whether a process listens on ``host``:``port`` already (a closed connection's
    TIME_WAIT does not count: Ray's server binds through it)."""
    if not port.isdigit():
        return False  # ray start names it
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False  # a host this machine cannot resolve: ray start names it
    # every address the host names (localhost: ::1 and 127.0.0.1), as Ray's server binds
    for family, _, _, _, where in found:
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # a family this machine lacks (IPv6 off)
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:  # else not an address here: not ours
                    return True
    return False


def state_file(port: int) -> Path:
    """Where :func:`start` records the cluster whose GCS listens on ``port``: in a folder of
    this user's alone under the temporary folder. Its records lay in the temporary folder
    itself, where another user could put one first (a record whose process group ``stop``
    then signals) or a link in place of the file ``start`` writes."""
    try:
        folder = private_temp_folder()
    except NotPrivateError as err:
        raise SystemExit(f"{err} (the cluster's records go there)") from None
    return folder / f"local-cluster-{port}.json"


def _earlier_state_file(port: int) -> Path:
    """Where dist_train recorded clusters before :func:`state_file`'s folder, for a ``stop``
    of one that an earlier version started."""
    return Path(tempfile.gettempdir()) / f"dist-train-local-cluster-{os.getuid()}-{port}.json"


def start_head(args: list[str], env: dict[str, str] | None = None) -> tuple[int, int, str]:
    """``ray start --head *args`` in a session of its own, waited for: its process group
    (which :func:`stop_cluster` ends: the daemons it leaves behind stay in it), its exit
    status and its output. Interrupted (a time-out, Ctrl-C: the session does not get the
    terminal's SIGINT), what it started is stopped."""
    ray = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen(
        [str(ray), "start", "--head", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=START_TIMEOUT_S)
    except BaseException:
        proc.kill()
        stop_cluster(proc.pid)
        raise
    return proc.pid, proc.returncode, out


def start(port: int, args: list[str]) -> int:
    """Start a head whose GCS listens on ``port`` and record it; 1 if one recorded there is
    still up, or ``ray start`` failed (its output printed)."""
    recorded = state_file(port)
    if _live_group(recorded) is not None:
        print(f"a cluster started here already listens on port {port}: stop it first")
        return 1
    dashboard = _option(args, "--dashboard-port")
    if dashboard is not None and _taken(
        _option(args, "--dashboard-host") or "127.0.0.1", dashboard
    ):
        # ray start logs a failed bind and goes on: jobs submitted to that port would go to
        # whatever holds it (another cluster, another user's embedded Ray)
        print(
            f"port {dashboard}, for this cluster's job server, is taken by another process: "
            "set DASHBOARD_PORT to a free one (and RAY_ADDRESS to match)"
        )
        return 1
    keep_token_private()  # ray start turns token authentication on where it finds one
    group, status, out = start_head([f"--port={port}", *args])
    print(out, end="")
    try:
        if status != 0:
            return 1
        daemons = {pid: _started(pid) for pid in processes_of(group)}
        record = {"port": port, "process_group": group, "boot_id": _boot_id(), "daemons": daemons}
        # whole or not at all: a reader never meets half a record
        partial = recorded.with_name(f"{recorded.name}.{os.getpid()}")
        partial.write_text(json.dumps(record))
        partial.replace(recorded)
        group = 0
        return 0
    finally:
        if group:  # ray start failed, or no record was written: what it started ends
            stop_cluster(group)


def stop(port: int) -> int:
    """Stop the cluster :func:`start` recorded for ``port``; 1 if none was recorded."""
    recorded = state_file(port)
    earlier = _earlier_state_file(port)
    if not recorded.exists() and earlier.is_file() and not earlier.is_symlink():
        recorded = earlier  # (_live_group refuses another user's)
    if not recorded.exists():
        print(
            f"no cluster started by launch/local_cluster.sh listens on port {port} "
            f"({recorded} is missing); `ray stop` would end every Ray instance of yours on "
            "this machine"
        )
        return 1
    group = _live_group(recorded)
    if group is None:
        print(f"the cluster recorded on port {port} has ended already (record removed)")
        return 0
    ended = stop_cluster(group)
    recorded.unlink(missing_ok=True)  # a stop beside this one may have removed it
    print(f"stopped the cluster on port {port} ({ended} processes)")
    return 0


def _live_group(recorded: Path) -> int | None:
    """The process group ``recorded`` names, if one of the daemons it recorded still runs
    in it (the same process: its start time since this boot), else None, the stale record
    removed. A process group's id is not reused while a process is in it, so a live daemon
    proves the group is the cluster's: a crashed or rebooted cluster's id may since name
    another program's group, which must not be signalled."""
    if not recorded.exists():
        return None
    if recorded.stat().st_uid != os.getuid():  # the temporary folder is everyone's
        raise SystemExit(f"{recorded}: another user's file, not this user's record; remove it")
    try:
        record = json.loads(recorded.read_text())
        group, boot = int(record["process_group"]), str(record["boot_id"])
        daemons = {int(pid): int(start) for pid, start in record["daemons"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(
            f"{recorded}: not a cluster record of this version ({err}): remove it, after "
            "ending the cluster it names, if one runs (`ps -o pid,pgid,comm -e | grep -E "
            "'raylet|gcs_server'`, then `kill -- -<its process group>`)"
        ) from None
    members = processes_of(group) if boot == _boot_id() else set()
    if any(pid in members and _started(pid) == start for pid, start in daemons.items()):
        return group
    recorded.unlink(missing_ok=True)
    return None


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _started(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot; -1 if gone."""
    stat = proc_stat(pid)
    return -1 if stat is None else stat.started


def stop_cluster(pgid: int, grace_s: float = GRACE_S) -> int:
    """End one ``ray start`` cluster: its daemons (process group ``pgid``) and the workers and
    drivers below them; how many processes that was. As ``ray stop`` does it: the raylet
    first, then the others, the GCS last; SIGTERM, then SIGKILL after ``grace_s``."""
    pids = processes_of(pgid)
    names = {pid: _name(pid) for pid in pids}
    raylet = {p for p in pids if names[p] == "raylet"}
    gcs = {p for p in pids if names[p] == "gcs_server"}
    for bucket in (raylet, pids - raylet - gcs, gcs):
        _terminate(bucket, grace_s)
    return len(pids)


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, process group), from Linux /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and not stat.gone:  # None: gone meanwhile
                found[int(entry.name)] = (stat.parent, stat.group)
    return found


def processes_of(pgid: int) -> set[int]:
    """Process group ``pgid`` and every process below its members."""
    procs = _processes()
    found = frontier = {pid for pid, (_, group) in procs.items() if group == pgid}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found = found | frontier
    return found


def _terminate(pids: set[int], grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):  # gone, or another user's
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
    stat = proc_stat(pid)
    return stat is None or stat.gone


def main(argv: list[str] | None = None) -> int:
    if not Path("/proc/self/stat").exists():
        raise SystemExit(
            "launch/local_cluster.sh reads Linux's /proc to stop its cluster and no other, "
            "which this system lacks: run `ray start --head` and `ray stop` (which ends every "
            "Ray instance of the machine) yourself"
        )
    parser = argparse.ArgumentParser(
        prog="python -m dist_train.launchers.local_cluster",
        description=__doc__,
        allow_abbrev=False,  # the rest goes to ray start: no prefix of ours may take it
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--port", type=int, default=6379, help="the head's GCS port")
    known, ray_args = parser.parse_known_args(argv)
    if known.action == "stop":
        if ray_args:
            parser.error(f"stop takes no ray start arguments: {' '.join(ray_args)}")
        return stop(known.port)
    # SIGTERM too (a CI's cancel, kill) ends it through start's clean-up: its default
    # action left the daemons of ray start's session running, and no record to stop them by
    return stopped_by_sigterm(lambda: start(known.port, ray_args))


if __name__ == "__main__":
    sys.exit(main())

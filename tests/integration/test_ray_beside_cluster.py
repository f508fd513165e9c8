"""``ray.address: null`` is a private embedded Ray instance whatever runs beside it.

A real ``ray start --head`` cluster runs on this machine, as ``launch/local_cluster.sh`` makes
one: Ray's files under the same RAY_TMPDIR as the test's (so its ``ray_current_cluster`` file
names it, as /tmp/ray/ray_current_cluster does for a plain ``ray start``), and RAY_ADDRESS
exported as its job server URL, as docs/launch.md has it for ``dist-train submit``. The tiny
job (with relative paths, resumed from a checkpoint there) and the ingest bench start their own
instance and never touch that cluster. That a ``ray job submit`` entrypoint joins its cluster
is tests/integration/test_ray_submit.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_train.config.load import load_config
from dist_train.launchers.affinity import rank_cores
from dist_train.launchers.ray_train import ray_address
from planners.cores import cpu_list, process_cores
from tests.ray_cluster import RayHead, ray_cli, ray_head

TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"


def test_the_address_rule() -> None:
    assert ray_address(None, {}) is None
    beside = {"RAY_ADDRESS": "http://127.0.0.1:8265"}
    assert ray_address(None, beside) is None  # an exported address is not the job's
    assert ray_address("auto", beside) == "auto"
    assert ray_address("10.0.0.1:6379", beside) == "10.0.0.1:6379"
    submitted = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}", "RAY_ADDRESS": "10.0.0.1:6379"}
    assert ray_address(None, submitted) == "10.0.0.1:6379"  # a `ray job submit` entrypoint
    assert ray_address("10.0.0.2:6379", submitted) == "10.0.0.2:6379"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    with ray_head(tmp_path_factory.mktemp("outside")) as head:
        yield head


@pytest.fixture
def beside(outside: RayHead, monkeypatch: pytest.MonkeyPatch) -> RayHead:
    """The environment of a shell that started ``outside`` and exported its address."""
    monkeypatch.setenv("RAY_ADDRESS", outside.address)
    monkeypatch.setenv("RAY_TMPDIR", str(outside.tmpdir))
    assert (outside.tmpdir / "ray" / "ray_current_cluster").is_file()
    return outside


def _listed(head: RayHead, kind: str) -> list[dict[str, object]]:
    listed = ray_cli("list", kind, "--address", head.address, "--format", "json", env=head.env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    if listed.stdout.strip() == "No resource in the cluster":  # what it prints for none
        return []
    return list(json.loads(listed.stdout))


@pytest.mark.ray
def test_tiny_job_with_relative_paths_runs_on_its_own_instance_beside_a_cluster(
    beside: RayHead,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Beside the outside cluster, a tiny job with a relative ``output_dir`` resumes with
    ``resume=latest`` from a checkpoint in that directory and saves its own there. Ray Train
    runs workers in its session directory, so the driver resolves every path against the
    directory the user ran from before any worker starts: the resumed run finds the
    checkpoint, and its own lands where the summary says. (The first 8 steps run on plain
    processes, whose ranks run where the user did: each Ray run costs the suite about
    half a minute.)"""
    from dist_train.driver import run_job

    outside_nodes = {str(n["node_id"]) for n in _listed(beside, "nodes")}
    monkeypatch.chdir(tmp_path)
    over = ["output_dir=rel-out", "checkpoint.every_steps=8"]
    first = run_job(load_config(TINY, [*over, "launcher=processes", "train.max_steps=8"]))
    saved = tmp_path / "rel-out" / "tiny" / "checkpoints" / "step-00000008"
    assert first["checkpoint"] == str(saved) and (saved / "meta.json").is_file()

    cfg = load_config(TINY, [*over, "launcher=ray", "checkpoint.resume=latest"])
    assert cfg.ray.address is None
    rest = run_job(cfg)
    assert rest["steps"] == 16 and rest["test_examples"] == 4096
    assert rest["run_dir"] == str(tmp_path / "rel-out" / "tiny")
    final = tmp_path / "rel-out" / "tiny" / "checkpoints" / "step-00000016"
    assert rest["checkpoint"] == str(final) and (final / "meta.json").is_file()
    log = [json.loads(line) for line in (tmp_path / "rel-out" / "tiny" / "metrics.jsonl").open()]
    assert [e["checkpoint"] for e in log if e["event"] == "resume"] == [str(saved)]

    # the job owns its private instance: each worker runs on cores of its own
    cores = process_cores()
    assert rest["rank_cores"] == [cpu_list(rank_cores(cores, r, 2)) for r in range(2)]
    assert len(outside_nodes) == 1
    assert not outside_nodes & set(rest["node_ids"])
    assert _listed(beside, "jobs") == []  # no driver ever connected to the outside cluster
    out = capfd.readouterr()
    assert out.out.count("starting an embedded Ray instance") == 1
    # Ray Train's placement-group cleaner looks its cluster up with no address: it must
    # find the embedded instance, not the outside cluster.
    assert "Found multiple active Ray instances" not in out.out + out.err
    assert "PlacementGroupCleanerMonitor" not in out.out + out.err
    assert os.environ["RAY_ADDRESS"] == beside.address  # the caller's, back after the run


@pytest.mark.ray
def test_bench_ingest_runs_on_its_own_instance_beside_a_cluster(
    beside: RayHead, tmp_path: Path
) -> None:
    from dist_train.bench.ingest import run_ingest_bench

    # (also the ingest benchmark's test: one Ray start serves both)
    cfg = load_config(TINY, [f"output_dir={tmp_path}"])
    out = tmp_path / "ingest.json"
    result = run_ingest_bench(cfg, str(out), min_seconds=0.5)
    assert json.loads(out.read_text()) == result
    for key in (
        "rows_per_second_per_core",
        "ray_data_rows_per_second_per_core",
        "train_rows_per_second",
    ):
        assert result[key] > 0, key
    assert _listed(beside, "jobs") == []


@pytest.mark.ray
def test_joining_a_token_cluster_without_token_auth_names_the_setting(
    outside: RayHead, tmp_path: Path
) -> None:
    """A client without ``RAY_AUTH_MODE=token`` is refused by a token cluster's GCS: Ray
    logged a warning a second, then ended in a bare ConnectionError. The error now names the
    address and the setting."""
    import subprocess
    import sys

    gcs = (outside.tmpdir / "ray" / "ray_current_cluster").read_text().split()[0]
    address = f"127.0.0.1:{gcs.rpartition(':')[2]}"
    env = {k: v for k, v in outside.env.items() if k != "RAY_AUTH_MODE"}
    env["RAY_NUM_REDIS_GET_RETRIES"] = "2"  # Ray's tries at the GCS: 20, one a second
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "dist-train"),
            *("train", "--config", str(TINY)),
            *("--set", f"ray.address={address}", "--set", f"output_dir={tmp_path}"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"error: LaunchError: cannot join the Ray cluster at {address}" in run.stderr
    assert "InvalidAuthToken" in run.stderr and "set RAY_AUTH_MODE=token here" in run.stderr


@pytest.mark.ray
def test_local_cluster_script_stops_its_own_cluster_and_no_other(
    outside: RayHead, tmp_path: Path
) -> None:
    """``launch/local_cluster.sh stop`` ran ``ray stop``, which ends every Ray instance of the
    machine: another user's cluster, a ``dist-train train``'s embedded instance. It now ends
    the cluster its ``start`` made, recorded by port, and the outside cluster keeps running."""
    import subprocess

    from dist_train.launchers.local_cluster import processes_of, state_file
    from dist_train.launchers.processes import free_ports

    script = Path(__file__).resolve().parents[2] / "launch" / "local_cluster.sh"
    port, dashboard, client, agent = free_ports(4)  # four different ones
    tmpdir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # Ray's socket paths: short
    env = {
        **outside.env,
        "RAY_TMPDIR": str(tmpdir),
        "RAY_PORT": str(port),
        "DASHBOARD_PORT": str(dashboard),
        "NUM_CPUS": "1",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, env=env, timeout=300
        )

    def cluster_up(address: str) -> bool:
        return ray_cli("status", "--address", address, env=env, timeout=60).returncode == 0

    spare = (
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
    )
    try:
        started = run("start", *spare)
        assert started.returncode == 0, started.stdout + started.stderr
        assert state_file(port).is_file()
        assert cluster_up(f"127.0.0.1:{port}")
        again = run("start", *spare)
        assert again.returncode == 1 and "stop it first" in again.stdout
        record_text = state_file(port).read_text()
        group = json.loads(record_text)["process_group"]
        assert len(processes_of(group)) > 2  # ray start's daemons: GCS, raylet, ...
        stopped = run("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped the cluster on port" in stopped.stdout
        assert not state_file(port).exists()
        assert not processes_of(group)
        assert _listed(outside, "nodes")  # the outside cluster still answers
        missing = run("stop")
        assert missing.returncode == 1 and "`ray stop` would end every" in missing.stdout
        # A record left by a cluster that died unstopped, whose process group id now names
        # another program's group: that group is not signalled.
        other = subprocess.Popen(["sleep", "60"], start_new_session=True)
        record = json.loads(record_text)
        state_file(port).write_text(json.dumps({**record, "process_group": other.pid}))
        stale = run("stop")
        assert stale.returncode == 0 and "has ended already" in stale.stdout
        assert other.poll() is None and not state_file(port).exists()
        other.kill()
    finally:
        run("stop")
        shutil.rmtree(tmpdir, ignore_errors=True)

"""Ray launch against real Ray clusters started by the tests (no mocks).

- `ray start --head` on 127.0.0.1 (tests/ray_cluster.py), a tiny job through `ray job submit`
  (its driver, with ray.address null, joins that cluster), SUCCEEDED, outputs.
- A 2-node cluster on one machine (ray.cluster_utils.Cluster): 4 workers spread 2 + 2 and a
  table_row_wise plan that keeps each table inside one node.
- Fail fast: a cluster too small for the workers, a bad config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_train.config import load_config
from dist_train.driver import run_job
from dist_train.launchers import ray_train
from dist_train.launchers.cluster import ClusterTooSmallError
from dist_train.launchers.processes import free_port
from dist_train.launchers.submit import submit_command
from dist_train.train import faults
from planners.cores import cpu_list, process_cores
from tests.ray_cluster import BIN, ray_cli, ray_head

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.ray


def test_ray_job_submit_runs_the_driver(tmp_path: Path) -> None:
    # Token authentication on, with this test's own token: the job server refuses anyone else.
    # Ray's job supervisor runs the entrypoint through a shell: quotes, $ and backticks in a
    # --set value must arrive as typed
    out = tmp_path / "o'neil $HOME `id`"
    with ray_head(tmp_path) as head:
        address, env = head.address, head.env
        cmd = submit_command(
            str(TINY),
            [f"output_dir={out}"],
            address,
            working_dir=None,
            wait=True,
            submission_id="dist-train-test-job",
        )
        assert cmd[:3] == [str(BIN / "ray"), "job", "submit"]
        # Waiting, `ray job submit` tails the job's logs until it ends (exit 1 if it failed):
        # no status polls, each a Python start-up of the ray CLI taking a core from the job.
        # The logs are read once more from the job server: the tail may miss the last lines.
        sub = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
        job = ("--address", address, "dist-train-test-job")
        status = ray_cli("job", "status", *job, env=env).stdout
        logs = ray_cli("job", "logs", *job, env=env).stdout
        # Without the token the job server answers nobody.
        anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        denied = ray_cli("job", "list", "--address", address, env=anonymous)
        assert denied.returncode != 0 and "token" in (denied.stdout + denied.stderr).lower()
    assert "succeeded" in status.lower(), status + logs[-4000:] + sub.stderr[-2000:]
    # ray.address is null: the entrypoint joins the cluster it was submitted to.
    assert "joining Ray cluster at" in logs and "(the cluster this job was submitted to)" in logs
    assert "== dist-train summary ==" in logs
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 0
    # a joined cluster may run other jobs' workers: ray.pin_cores=auto leaves ours unpinned
    assert summary["rank_cores"] == [cpu_list(process_cores())] * 2
    assert summary["test_examples"] == 4096
    lines = (out / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "eval"


def test_a_submitted_job_stopped_before_it_finished_is_no_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Waiting, `ray job submit` exits 0 for a job `ray job stop` ended, as for one that
    succeeded: a script's `submit && export` went on. `submit` asks for the job's end by
    the name it gave it and exits 143, as a stopped `dist-train train` does. Also (an
    operator's walk-through): --address is the address used, RAY_ADDRESS exported or not
    (Ray's CLI took RAY_ADDRESS over it); no job server, a refused token and a submission id
    the server holds are one error line each, not Ray's traceback; a job whose end cannot
    be asked is no success either."""
    import threading

    from dist_train.launchers.submit import _ended_code, submit
    from dist_train.stopping import EXIT_CODE

    with ray_head(tmp_path) as head:
        for key, value in head.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")  # not the head
        ended: list[int] = []
        over = [f"output_dir={tmp_path / 'out'}", "train.epochs=300"]
        job = threading.Thread(
            target=lambda: ended.append(
                submit(str(TINY), over, head.address, None, True, False, "dist-train-stopped")
            )
        )
        job.start()
        deadline = time.monotonic() + 120
        # until it trains: its metrics file, not `ray job logs`, a start-up of Ray's CLI
        # (a core-second) every poll while the job starts on the same 2 cores
        metrics = tmp_path / "out" / "tiny" / "metrics.jsonl"
        while time.monotonic() < deadline:
            if metrics.is_file() and '"event": "train"' in metrics.read_text():
                break
            time.sleep(0.2)
        ray_cli("job", "stop", "--address", head.address, "dist-train-stopped", env=head.env)
        job.join(timeout=120)
        assert ended == [EXIT_CODE]
        capsys.readouterr()
        again = submit(str(TINY), over, head.address, None, True, False, "dist-train-stopped")
        assert again == 1
        assert "already holds a job 'dist-train-stopped'" in capsys.readouterr().err
        bad_token = tmp_path / "bad_token"
        bad_token.write_text("0" * 64)
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(bad_token))
        assert submit(str(TINY), over, head.address, None, True, False) == 1
        assert "refused this machine's token" in capsys.readouterr().err
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", head.env["RAY_AUTH_TOKEN_PATH"])
    # the cluster gone: nothing answers, and a job's end cannot be asked
    assert submit(str(TINY), over, head.address, None, True, False) == 1
    assert f"no Ray job server answers at {head.address}" in capsys.readouterr().err
    assert _ended_code(head.address, "dist-train-stopped", dict(os.environ)) == 1
    assert "its end is unknown" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[str]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            # Not Ray's default 8265 (no retry here): another cluster may hold it.
            "dashboard_port": free_port(),
        },
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_two_nodes_spread_workers_and_keep_tables_inside_nodes(
    two_node_cluster: str, tmp_path: Path
) -> None:
    import ray

    cfg = load_config(
        TINY,
        [
            f"output_dir={tmp_path}",
            f"ray.address={two_node_cluster}",
            "ray.num_workers=4",
            "ray.num_nodes=2",
            "sharding.type=table_row_wise",
        ],
    )
    ours = (ray_train.HEALTH_CHECK_ENV, ray_train.COLOR_PREFIX_ENV)
    before = {k: os.environ.get(k) for k in ours}
    summary = run_job(cfg)
    # a library caller's environment as it was: Ray's settings for the run did not outlive it
    assert {k: os.environ.get(k) for k in ours} == before
    nodes = summary["node_ids"]
    cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2 and set(nodes) == cluster_nodes
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]  # ranks 0,1 | 2,3
    assert summary["num_nodes"] == 2 and summary["ranks_per_node"] == 2
    assert summary["sharding"] == {
        "unified_0": {"type": "table_row_wise", "ranks": [0, 1]},
        "unified_1": {"type": "table_row_wise", "ranks": [2, 3]},
    }
    assert summary["test_examples"] == 4096 and summary["test_auc"] > 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ray.num_workers=6"], "the cluster is too small: 6 workers x 1 CPU"),
        (["ray.num_workers=3", "ray.num_nodes=3"], "the job needs 3 nodes"),
        # a group Ray cannot place was retried without end: the job hung
        (["ray.num_workers=3", "ray.placement_strategy=STRICT_SPREAD"], "STRICT_SPREAD puts"),
    ],
)
def test_cluster_too_small_fails_fast(
    two_node_cluster: str, tmp_path: Path, overrides: list[str], message: str
) -> None:
    cfg = load_config(
        TINY, [f"output_dir={tmp_path}", f"ray.address={two_node_cluster}", *overrides]
    )
    start = time.monotonic()
    with pytest.raises(ClusterTooSmallError, match=message):
        run_job(cfg)
    assert time.monotonic() - start < 30


def test_a_kill_drill_reaches_the_workers_of_a_joined_cluster(
    two_node_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster's workers have its raylets' environment, not the driver's: the drill
    set for `dist-train train` never fired there, and the run 'passed' untested."""
    monkeypatch.setenv(faults.ENV, "1:8")
    over = [f"output_dir={tmp_path}", f"ray.address={two_node_cluster}", "ray.max_failures=1"]
    summary = run_job(load_config(TINY, [*over, "checkpoint.every_steps=4"]))
    assert summary["steps"] == 16
    assert [m.name for m in (tmp_path / "tiny" / "faults").iterdir()] == ["killed-rank1-step8-step"]


def test_driver_bad_config_fails_fast_with_the_key(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dist_train.driver",
            "--config",
            str(TINY),
            "--set",
            "ray.num_nodes=3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "ray: Value error, num_workers (2) must be a multiple of num_nodes (3)" in proc.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("headers", ["{bad", '["x"]', ""])
def test_headers_ray_cannot_send_are_named_before_a_submit(
    headers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAY_JOB_HEADERS, sent by Ray's job CLI, are sent by submit's own questions too; ones
    that are no JSON object were reported as a job server out of reach (a review)."""
    from dist_train.launchers.submit import _job_server_problem

    monkeypatch.setenv("RAY_JOB_HEADERS", headers)
    problem = _job_server_problem(f"http://127.0.0.1:{free_port()}", None, dict(os.environ))
    assert problem.startswith(f"RAY_JOB_HEADERS={headers!r} is not a JSON object"), problem

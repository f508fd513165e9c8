"""Ray launch against real Ray clusters started by the tests (no mocks).

(`ray job submit` against a `ray start --head` cluster: tests/integration/test_ray_submit.py.)

- A 2-node cluster on one machine (ray.cluster_utils.Cluster): 4 workers spread 2 + 2 and a
  table_row_wise plan that keeps each table inside one node.
- Fail fast: a cluster too small for the workers, a bad config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_train.config.load import load_config
from dist_train.driver import run_job
from dist_train.launchers import ray_train
from dist_train.launchers.cluster import ClusterTooSmallError
from dist_train.launchers.processes import free_port
from dist_train.train import faults

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.ray


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


@pytest.mark.parametrize("headers", ["{bad", '["x"]', "", '{"Authorization": "Bearer s3cr3t"'])
def test_headers_ray_cannot_send_are_named_before_a_submit(
    headers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RAY_JOB_HEADERS, sent by Ray's job CLI, are sent by submit's own questions too; ones
    that are no JSON object were reported as a job server out of reach (a review)."""
    from dist_train.launchers.submit import _job_server_problem

    monkeypatch.setenv("RAY_JOB_HEADERS", headers)
    problem = _job_server_problem(f"http://127.0.0.1:{free_port()}", None, dict(os.environ))
    assert problem.startswith("RAY_JOB_HEADERS is not a JSON object"), problem
    assert "s3cr3t" not in problem  # unsaid: headers carry credentials (a helper's audit)

"""``ray job submit`` against a real ``ray start --head`` cluster on 127.0.0.1 with token
authentication (tests/ray_cluster.py), started by the tests (no mocks): a tiny job through
``ray job submit`` (its driver, with ray.address null, joins that cluster) SUCCEEDED, with its
outputs; a submitted job stopped before it finished is no success. One cluster serves the
module; it stops when the module ends (a module of its own, so that it does not idle beside
the other Ray tests' clusters).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dist_train.launchers.processes import free_port
from dist_train.launchers.submit import _ended_code, submit, submit_command
from dist_train.stopping import EXIT_CODE
from planners.cores import cpu_list, process_cores
from tests.ray_cluster import BIN, RayHead, ray_cli, ray_head

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def token_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """One ``ray start --head`` cluster with its own token for the module's submits (a
    head's start and stop cost about 10 s of the suite's 2 cores); each submit names its
    own job."""
    with ray_head(tmp_path_factory.mktemp("head")) as head:
        yield head


def test_ray_job_submit_runs_the_driver(token_head: RayHead, tmp_path: Path) -> None:
    # Token authentication on, with this cluster's own token: the job server refuses anyone
    # else. Ray's job supervisor runs the entrypoint through a shell: quotes, $ and backticks
    # in a --set value must arrive as typed
    out = tmp_path / "o'neil $HOME `id`"
    address, env = token_head.address, token_head.env
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
    job = ("--address", address, "dist-train-test-job")
    try:
        sub = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    except subprocess.TimeoutExpired:
        # not left running in the module's cluster, beside the next test's job
        ray_cli("job", "stop", *job, env=env)
        raise
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
    token_head: RayHead,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Waiting, `ray job submit` exits 0 for a job `ray job stop` ended, as for one that
    succeeded: a script's `submit && export` went on. `submit` asks for the job's end by
    the name it gave it and exits 143, as a stopped `dist-train train` does. Also (an
    operator's walk-through): --address is the address used, RAY_ADDRESS exported or not
    (Ray's CLI took RAY_ADDRESS over it); no job server, a refused token and a submission id
    the server holds are one error line each, not Ray's traceback; a job whose end cannot
    be asked is no success either."""
    head = token_head
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
    # no cluster there (as where one went away): nothing answers, and a job's end cannot
    # be asked
    gone = f"http://127.0.0.1:{free_port()}"
    assert submit(str(TINY), over, gone, None, True, False) == 1
    assert f"no Ray job server answers at {gone}" in capsys.readouterr().err
    assert _ended_code(gone, "dist-train-stopped", dict(os.environ)) == 1
    assert "its end is unknown" in capsys.readouterr().err

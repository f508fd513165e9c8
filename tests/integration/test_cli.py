"""The dist-train command line: gen-data, show-config, and bad input failing clearly."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from dist_train.checkpoint.folders import committed
from dist_train.cli.main import main
from dist_train.launchers.processes import DRIVER_CHECK_SECONDS
from tests.conftest import small_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dist_train.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_gen_data_writes_parquet(tmp_path: Path) -> None:
    proc = _cli(
        "gen-data",
        "--out",
        str(tmp_path / "d"),
        "--set",
        "data.synthetic.num_train_rows=3000",
        "--set",
        "data.synthetic.num_test_rows=500",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "d" / "train").num_rows == 3000
    assert pq.read_table(tmp_path / "d" / "test").num_rows == 500
    assert "generating 3,500 synthetic rows" in proc.stderr


def test_show_config_prints_validated_json(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["show-config", "--set", "train.epochs=2"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 2


def test_missing_column_fails_before_training_naming_file_and_column(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    from dist_train.data.synthetic import generate

    data = generate(cfg.data.synthetic, tmp_path / "data", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    table = pq.read_table(data.train_dir / "part-1.parquet").drop_columns(["C3"])
    pq.write_table(table, broken / "part-1.parquet")
    cfg_path = tmp_path / "job.yaml"
    raw = cfg.model_dump(mode="json")
    raw["data"].update(train_path=str(broken), test_path=str(data.test_dir))
    raw["launcher"] = "processes"
    cfg_path.write_text(json.dumps(raw))  # JSON is YAML
    proc = _cli("train", "--config", str(cfg_path), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{broken / 'part-1.parquet'}: missing column 'C3'" in proc.stderr
    assert not (tmp_path / "default" / "summary.json").exists()


def test_cli_bad_config_exits_2_before_starting_anything(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dist_train.cli",
            "train",
            "--set",
            "ray.num_workers=-1",
            "--set",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "ray.num_workers: Input should be greater than 0" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was generated or started


def test_quiet_and_verbose_set_what_the_console_shows(tmp_path: Path) -> None:
    tiny = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    run = ["train", "--config", tiny, "--set", "launcher=processes", "--set", "train.max_steps=4"]
    normal = _cli(*run, "--set", f"output_dir={tmp_path / 'n'}", cwd=tmp_path)
    quiet = _cli(*run, "--quiet", "--set", f"output_dir={tmp_path / 'q'}", cwd=tmp_path)
    assert normal.returncode == quiet.returncode == 0, normal.stderr + quiet.stderr
    assert "[dist-train] epoch 0 step 4/" in normal.stdout
    assert "[dist-train] plan: " in normal.stdout
    assert "[dist-train]" not in quiet.stdout + quiet.stderr  # warnings and errors only
    assert "== dist-train summary ==" in quiet.stdout  # the command's result still prints
    for out in ("n", "q"):  # metrics.jsonl is written in full either way
        events = [
            json.loads(x)["event"] for x in (tmp_path / out / "tiny" / "metrics.jsonl").open()
        ]
        assert events[0] == "start" and "train" in events and events[-1] == "eval"
    # the start line says which dot interaction runs (the C one is an optional build)
    from dist_train.models.dot_interaction import implementation_on

    expected = implementation_on(torch.device("cpu"))
    assert f"{expected} dot interaction" in normal.stdout
    start = json.loads((tmp_path / "n" / "tiny" / "metrics.jsonl").open().readline())
    assert start["dot_interaction"] == expected
    verbose = _cli(*run, "-v", "-q", cwd=tmp_path)
    assert verbose.returncode == 2 and "not allowed with" in verbose.stderr


@pytest.mark.parametrize(
    ("launcher", "stop", "code", "group"),
    [
        ("processes", signal.SIGTERM, 143, False),
        ("processes", signal.SIGKILL, -9, False),
        # (Ray's one case signals the whole group: the driver gets the same SIGTERM as from
        # `kill PID`, Ray's daemons run in sessions of their own, and a Ray run costs the
        # suite about 30 s)
        pytest.param("ray", signal.SIGTERM, 143, True, marks=pytest.mark.ray),
    ],
)
def test_a_stopped_driver_stops_its_ranks(
    tmp_path: Path, launcher: str, stop: int, code: int, group: bool
) -> None:
    """`kill PID` (or docker stop) of the driver alone: its plain-process ranks, which are
    the forkserver's children, trained on to the end before, unseen, and its temporary
    results directory stayed behind. After a SIGKILL, which it cannot handle, the ranks
    notice it is gone. With embedded Ray, Ray's own SIGTERM handler exited 1, as a failed
    run does. A SIGTERM to the driver's process group (`kill -- -PGID`) also reached
    embedded Ray's daemons: the workers trained on for about 7 s while they shut down, or,
    where the raylet exited first, the driver exited 1 with no line (its core worker lost
    the plasma store); they now run in sessions of their own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    metrics = tmp_path / "tiny" / "metrics.jsonl"
    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
    sets = [
        f"launcher={launcher}",
        f"output_dir={tmp_path}",
        # about 1,200 steps, far past the stop, over tiny's 16,384 rows (400,000 rows for 3
        # epochs took seconds to generate)
        "train.epochs=75",
        "train.log_every=10",
        "checkpoint.every_steps=10",
    ]
    said = tmp_path / "stderr.txt"
    driver = subprocess.Popen(
        [sys.executable, "-m", "dist_train.driver", "--config", str(config)]
        + [arg for s in sets for arg in ("--set", s)],
        stdout=subprocess.DEVNULL,
        stderr=said.open("w"),
        # (not for Ray: its sockets under a test's long TMPDIR exceed Unix's path limit)
        env={**os.environ, **({"TMPDIR": str(tmp)} if launcher == "processes" else {})},
        start_new_session=group,  # a process group of its own, to signal as a whole
    )
    try:
        deadline = time.monotonic() + 300
        while not (metrics.exists() and '"step": 20' in metrics.read_text()) or not committed(
            tmp_path / "tiny" / "checkpoints"
        ):
            assert driver.poll() is None and time.monotonic() < deadline, "no step 20"
            time.sleep(0.2)
        if group:
            os.killpg(driver.pid, stop)
            time.sleep(2)  # the ranks stop within it, not after Ray's daemons' shutdown
            stopped = metrics.stat().st_size
        else:
            driver.send_signal(stop)
        if stop == signal.SIGTERM:
            assert driver.wait(timeout=60) == code
        if group:
            assert metrics.stat().st_size == stopped, "the ranks trained on after the stop"
        # a SIGKILLed driver is left unreaped meanwhile (a zombie): gone all the same
        time.sleep(2 * DRIVER_CHECK_SECONDS)  # after a SIGKILL, the ranks' next check
        size = metrics.stat().st_size
        time.sleep(3)
        assert metrics.stat().st_size == size, "the ranks trained on"
        assert driver.wait(timeout=60) == code
    finally:
        driver.kill()
    if stop == signal.SIGTERM:  # it says so, and where to go on from (it said nothing)
        err = said.read_text()
        assert "stopped (SIGTERM)\nthe newest committed checkpoint is " in err, err
        assert "`--resume latest` continues from it" in err
    if launcher == "processes" and stop == signal.SIGTERM:
        assert list(tmp.glob("dist-train-results-*")) == []


@pytest.mark.ray
def test_a_ray_run_says_its_own_error_in_one_line(tmp_path: Path) -> None:
    """An error of ours in a Ray worker (a divergence here; bad input, a checkpoint's) is
    worded for the user, and the driver prints it in a line: Ray Train's workers also
    logged its traceback, a rank at a time, before that line.

    Under `ray.max_failures`, Ray Train restarted the group from the newest checkpoint,
    where it diverged again at the same step, until the restarts were spent (without end
    at -1), then failed with Ray's wrapping. The diverging rank records the divergence; the
    restarted group finds it and ends, and the job raises the error. (One Ray run for both:
    each costs the suite about 25 s.)"""
    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
    # diverges at step 4 (docs/operations.md), after checkpoints a restart would resume
    diverge = ["train.dense_optimizer=sgd", "train.dense_learning_rate=10000"]
    restarts = ["ray.max_failures=3", "checkpoint.every_steps=1"]
    sets = [f"output_dir={tmp_path}", "launcher=ray", *diverge, *restarts]
    run = _cli(
        "train", "--config", str(config), *(a for s in sets for a in ("--set", s)), cwd=tmp_path
    )
    assert run.returncode == 1, run.stderr
    assert re.search(
        r"error: TrainingDiverged: step \d+: the training loss is (nan|inf)", run.stderr
    ), run.stderr
    # Ray Train restarted the group, which had a checkpoint to resume, and trained nothing
    assert "worker group restarted; resuming from " in run.stdout, run.stdout
    events = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    assert '"event": "checkpoint"' in events and '"event": "resume"' not in events
    assert "Traceback" not in run.stderr and "Error in training function" not in run.stderr
    # nor Ray's warning, at every start of the embedded instance, that it uses a token
    assert "Token authentication is enabled" not in run.stderr
    # the workers' lines, into a pipe, without Ray's colour codes
    assert "(RayTrainWorker pid=" in run.stdout and "\x1b[" not in run.stdout + run.stderr
    # nor FBGEMM's line for each library it loads, at INFO, as a worker imports it
    assert "Successfully loaded" not in run.stdout + run.stderr


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0, 1.5, 2.0])
def test_a_ctrl_c_while_the_rank_server_imports_prints_no_traceback(
    tmp_path: Path, delay: float
) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) in the seconds the processes
    launcher's rank server imports torch and TorchRec: the server printed the interrupted
    import's traceback below the command's own line (here at some of these delays after
    the server started, not all: the import's stages differ)."""
    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
    # training that outlasts the latest interrupt on a fast machine (it ends by the signal)
    sets = ["launcher=processes", f"output_dir={tmp_path}", "train.epochs=100"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "dist_train.cli", "train", "--config", str(config)]
        + [arg for s in sets for arg in ("--set", s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's job
    )

    def server_started() -> bool:
        children = Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()
        for child in children:
            with contextlib.suppress(OSError):
                if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return True
        return False

    try:
        deadline = time.monotonic() + 60
        while not server_started():
            assert driver.poll() is None and time.monotonic() < deadline, "no rank server"
            time.sleep(0.05)
        time.sleep(delay)  # inside its imports, which take seconds
        assert driver.poll() is None, "the command ended before its interrupt"
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == -signal.SIGINT, err
    assert "Traceback" not in err and "interrupted (Ctrl-C)" in err, err

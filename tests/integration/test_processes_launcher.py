"""The plain-process launcher: ranks fork from a long-lived forkserver, yet each call's ranks
see the caller's directory (multiprocessing moves them there) and environment (the launcher
hands it over) as they are at that call, the thread count asked, and cores of their own."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from dist_train.launchers.affinity import rank_cores
from dist_train.launchers.processes import RankError, run_processes
from planners.cores import process_cores
from tests.workers import (
    config_error_on_rank_1,
    every_rank_interrupted,
    fails_on_rank_1_midway,
    interrupted_on_rank_1,
    killed_on_rank_1_midway,
    tensors_sharing_memory,
    where_the_rank_runs,
)

VAR = "DIST_TRAIN_TEST_LAUNCHER_VALUE"


def test_ranks_see_the_callers_directory_and_environment_of_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_processes(where_the_rank_runs, (VAR,), 2)  # the forkserver is up after this
    assert [r["rank"] for r in first] == [0, 1]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(VAR, "second call")
    second = run_processes(where_the_rank_runs, (VAR,), 2, threads_per_rank=2)
    assert [r["cwd"] for r in second] == [str(tmp_path)] * 2
    assert [r["value"] for r in second] == ["second call"] * 2
    assert [r["threads"] for r in second] == [2, 2]


def test_each_rank_runs_on_cores_of_its_own_unless_told_not_to() -> None:
    cores = process_cores()
    pinned = run_processes(where_the_rank_runs, (VAR,), 2)
    assert [r["cores"] for r in pinned] == [rank_cores(cores, r, 2) for r in range(2)]
    if len(cores) > 1:  # one core each: no rank runs on the other's
        assert not set(pinned[0]["cores"]) & set(pinned[1]["cores"])
    free = run_processes(where_the_rank_runs, (VAR,), 2, pin_cores=False)
    assert [r["cores"] for r in free] == [cores, cores]


def test_a_result_may_hold_tensors_that_share_memory() -> None:
    # safetensors refuses shared memory: a tensor returned twice failed the rank
    out = run_processes(tensors_sharing_memory, (), 2)
    for rank, result in enumerate(out):
        t = torch.arange(6.0) + rank
        assert [x.tolist() for x in result["same"]] == [t.tolist()] * 2
        assert result["view"].tolist() == t[2:].tolist() and result["own"].tolist() == [1.0, 1.0]


def test_the_rank_that_failed_first_is_the_one_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reports the first rank to exit, often a peer whose collective failed after the
    culprit left (2 of 3 runs named rank 0's 'Connection closed by peer'). torch's file of
    the failed rank's traceback, in the temporary folder and readable by every user, stayed
    there after each failure."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for _ in range(3):
        with pytest.raises(RankError, match=r"^rank 1 failed: MemoryError: rank 1 ran out"):
            run_processes(fails_on_rank_1_midway, (), 2)
    assert list(tmp_path.glob("pytorch-errorfile-*")) == []


def test_a_bugs_traceback_is_printed_and_our_errors_stay_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in a rank printed its last line alone ("IndexError: list index out of range"),
    which does not say where it was raised: its traceback is printed now. An error of ours
    says what it needs to in its line."""
    with caplog.at_level("ERROR", logger="dist_train"), pytest.raises(RankError) as bug:
        run_processes(fails_on_rank_1_midway, (), 2)
    assert "in fails_on_rank_1_midway" in bug.value.trace
    printed = caplog.text
    assert "rank 1 failed: MemoryError" in printed and "in fails_on_rank_1_midway" in printed
    caplog.clear()
    with (
        caplog.at_level("ERROR", logger="dist_train"),
        pytest.raises(RankError, match=r"^rank 1 failed: ConfigError: rank 1's config") as ours,
    ):
        run_processes(config_error_on_rank_1, (), 2)
    assert ours.value.trace == "" and "Traceback" not in caplog.text


def test_a_killed_rank_is_named_with_its_signal() -> None:
    """torch's ProcessExitedException ('process 1 terminated with signal SIGKILL') was
    printed as it was: no rank, no cause."""
    with pytest.raises(RankError, match=r"^rank 1 was killed by SIGKILL \(out of memory\?"):
        run_processes(killed_on_rank_1_midway, (), 2)


@pytest.mark.parametrize("at", [25, 50])
def test_a_rank_interrupted_alone_is_named(at: int) -> None:
    """A SIGINT to one rank: torch's spawn ends it with status 0 and no result. Midway its
    peer's 'Connection reset' was named instead; at the end the driver failed reading the
    result file it never wrote (FileNotFoundError)."""
    with pytest.raises(
        RankError, match=r"^rank 1 failed: KeyboardInterrupt: interrupted \(SIGINT\)"
    ):
        run_processes(interrupted_on_rank_1, (at,), 2)


def test_ranks_ignore_sigint_where_their_driver_does() -> None:
    """A background job of a script ignores SIGINT (POSIX), and a Ctrl-C to the script's
    process group stopped its ranks, not it: the driver failed (FileNotFoundError)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        results = run_processes(every_rank_interrupted, (), 2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert [r["sum"] for r in results] == [20.0, 20.0]


def test_a_taken_rendezvous_port_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process took the port between free_port() and the join: a torch traceback
    (EADDRINUSE) ended the run. The ranks start again on another port; where every port
    tried is taken, the error says so in a line."""
    import socket

    from dist_train.launchers import processes

    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    real, handed = processes.free_port, iter([port])
    monkeypatch.setattr(processes, "free_port", lambda: next(handed, None) or real())
    assert len(run_processes(where_the_rank_runs, (VAR,), 2)) == 2
    monkeypatch.setattr(processes, "free_port", lambda: port)
    with pytest.raises(RankError, match=r"failed: while joining the process group: .*EADDRINUSE"):
        run_processes(where_the_rank_runs, (VAR,), 2)
    taken.close()


def test_a_rank_forked_after_its_driver_died_ends() -> None:
    """A Ctrl-C while the rank server still imported: the rank it forked afterwards read
    its driver's start as "gone" and waited on, for good, beside the server (900 MB). It
    now compares with the start the driver read."""
    import subprocess
    import sys
    import time

    from dist_train.launchers.processes import DRIVER_CHECK_SECONDS, _running_since

    driver = subprocess.Popen(["sleep", "30"])
    started = _running_since(driver.pid)
    driver.kill()
    driver.wait()
    rank = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from dist_train.launchers.processes import _end_with\n"
            f"_end_with({driver.pid}, {started!r})\n"
            "time.sleep(60)\n",
        ]
    )
    begun = time.monotonic()
    assert rank.wait(timeout=30) == 1
    assert time.monotonic() - begun < 10 + 2 * DRIVER_CHECK_SECONDS


@pytest.mark.parametrize("world", [1, 2])
def test_an_error_in_a_step_ends_the_epochs_prefetch_thread(tmp_path: Path, world: int) -> None:
    """The epoch closed its batch stream only when its steps ran out: on 2 ranks a step's
    error left the prefetch thread reading until the stream was collected (a helper's
    audit; 1 rank's stream was closed by its generator's teardown)."""
    from dist_train.config.load import load_config
    from tests.conftest import ONE_FEATURE_JOB, write_one_feature_parquet
    from tests.workers import prefetch_threads_after_a_failed_step

    write_one_feature_parquet(tmp_path / "a.parquet", 800, 4)
    over = [
        *ONE_FEATURE_JOB,
        "train.prefetch_batches=2",
        f"ray.num_workers={world}",
    ]
    cfg = load_config("launch/configs/tiny.yaml", over).model_dump(mode="json")
    alive = run_processes(
        prefetch_threads_after_a_failed_step, (cfg, str(tmp_path / "a.parquet")), world
    )
    assert alive == [[1, 0]] * world  # one thread as the step failed, none after

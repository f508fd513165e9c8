"""Checks the driver makes before any worker starts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.synthetic import GeneratedData
from dist_train.data.validation import BadInputError
from dist_train.driver import prepare_inputs, print_summary
from dist_train.logs import LOG


def _cfg(cfg: JobConfig, data: GeneratedData, overrides: list[str]) -> JobConfig:
    paths = [f"data.train_path={data.train_dir}", f"data.test_path={data.test_dir}"]
    return parse_config(apply_overrides(cfg.model_dump(mode="json"), paths + overrides))


@pytest.mark.parametrize(
    ("overrides", "share"),
    [
        (["train.batch_size=8192"], "4,096 training rows"),  # 8 groups of 1,024 rows, 2 ranks
        (["ray.num_workers=9"], "0 training rows"),  # a rank with none
    ],
)
def test_zero_training_steps_is_refused(
    small_cfg: JobConfig, small_data: GeneratedData, overrides: list[str], share: str
) -> None:
    cfg = _cfg(small_cfg, small_data, overrides)
    with pytest.raises(BadInputError, match="would train 0 steps") as err:
        prepare_inputs(cfg)
    msg = str(err.value)
    assert f"train.batch_size={cfg.train.batch_size} " in msg and share in msg
    assert f"ray.num_workers={cfg.ray.num_workers} " in msg and "rows_per_group" in msg


def test_one_step_is_enough(small_cfg: JobConfig, small_data: GeneratedData) -> None:
    inputs = prepare_inputs(_cfg(small_cfg, small_data, ["train.batch_size=4096"]))
    assert sum(g.num_rows for g in inputs.train_groups) == 8192


def _warnings(cfg: JobConfig) -> list[str]:
    """The driver's warnings while it prepares ``cfg``'s inputs."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler = Collect()
    LOG.addHandler(handler)
    try:
        prepare_inputs(cfg)
    finally:
        LOG.removeHandler(handler)
    return seen


def test_an_epoch_that_leaves_many_rows_untrained_is_named(
    small_cfg: JobConfig, small_data: GeneratedData
) -> None:
    """8 row groups of 1,024 rows dealt whole to 3 ranks (3, 3 and 2 groups): each runs the
    smallest share's 8 batches of 256, 6,144 of the 8,192 rows. Before, the run said only
    "8,192 training rows"."""
    warned = _warnings(_cfg(small_cfg, small_data, ["ray.num_workers=3"]))
    assert any(
        "the first epoch trains 6,144 of the 8,192 training rows (25% unused)" in w
        and "smallest share (2,048 rows: 8 batches of train.batch_size=256)" in w
        for w in warned
    ), warned
    assert not _warnings(_cfg(small_cfg, small_data, ["train.batch_size=4096"]))  # all used


def test_max_steps_past_the_epochs_steps_is_named(
    small_cfg: JobConfig, small_data: GeneratedData, caplog: pytest.LogCaptureFixture
) -> None:
    """train.max_steps=100 with 1 epoch of 31 steps trained 31 and said nothing (a review's
    walk-through: other trainers' max_steps overrides the epochs). 2 ranks, 8 groups of
    1,024 rows, batches of 256: 16 steps an epoch."""
    from dist_train.input_checks import SavedAt, note_steps_short_of_max

    groups = prepare_inputs(_cfg(small_cfg, small_data, [])).train_groups

    def noted(*overrides: str, saved: SavedAt | None = None) -> str:
        caplog.clear()
        with caplog.at_level("WARNING", logger="dist_train"):
            note_steps_short_of_max(_cfg(small_cfg, small_data, list(overrides)), groups, saved)
        return caplog.text

    past = "train.max_steps=100 is past the 32 steps of train.epochs=2: training ends at step 32"
    assert past in noted("train.epochs=2", "train.max_steps=100")
    assert not noted("train.epochs=2", "train.max_steps=32")
    assert "past the 80,000 steps of train.epochs=5000" in noted(
        "train.epochs=5000", "train.max_steps=100000"
    )
    # past the deals it makes: the bound
    assert "train.max_steps=1000000 is past the at most 480,000 steps" in noted(
        "train.epochs=30000", "train.max_steps=1000000"
    )
    # a resume at the same world: the same deals, counted (resumes extend max_steps); on
    # other ranks the saved epochs were dealt otherwise: not counted
    assert past in noted("train.epochs=2", "train.max_steps=100", saved=SavedAt(20, 2, 1, 4, 256))
    assert not noted("train.epochs=2", "train.max_steps=100", saved=SavedAt(20, 1, 1, 4, 256))
    # 2 epochs of 8 steps at batch 512, resumed at their end at 256: 16 + 2 x 16 steps, not
    # 4 x 16 as if every epoch had run at 256 (a review's finding)
    other_batch = SavedAt(16, 2, 2, 0, 512)
    ends = "train.max_steps=100 is past the 48 steps of train.epochs=4: training ends at step 48"
    assert ends in noted("train.epochs=4", "train.max_steps=100", saved=other_batch)


def test_a_large_share_of_rows_skipped_is_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """Labels written 0/2 under on_bad_input=skip dropped every positive, a third of the
    rows: the job trained on negatives only (test AUC 0.48) and said so only in the summary
    line's counts (a review's walk-through)."""
    from dist_train.input_checks import warn_of_skipped_share

    def warned(skipped: int, of_test: int, test_examples: int = 1000) -> str:
        summary = {
            "test_examples": test_examples,
            "bad_input": {"rows_skipped_total": skipped, "rows_skipped": {"label": skipped}},
            "bad_input_test": {"rows_skipped_total": of_test},
        }
        caplog.clear()
        with caplog.at_level("WARNING", logger="dist_train"):
            warn_of_skipped_share(summary, trained=10_000)
        return caplog.text

    text = warned(5_232, 0)
    assert "34% of the training rows read were skipped as bad input (5,232 rows" in text
    assert "{'label': 5232}" in text and "data.on_bad_input=error" in text
    assert "test rows" not in text
    assert not warned(100, 0)  # 1.0%: not over the line
    assert "14% of the test rows read were skipped" in warned(160, 160)
    assert not warned(0, 0)


def test_the_examples_trained_count_every_launchs_world() -> None:
    """A resume on other ranks: the steps before it were of the saving run's world (a
    review: 6,000 rows skipped in 1,000 steps of 4 ranks read as 2% of 1,010 steps of 1)."""
    from dist_train.input_checks import SavedAt, examples_trained

    summary = {"steps": 1_010, "world_size": 1}
    assert examples_trained(summary, 256, SavedAt(1_000, 4)) == (10 * 1 + 1_000 * 4) * 256
    assert examples_trained(summary, 256, None) == 1_010 * 256
    # and its batch size: the steps before the resume were of the saving run's batches
    saved = SavedAt(1_000, 4, batch_size=512)
    assert examples_trained(summary, 256, saved) == 10 * 256 + 1_000 * 4 * 512


def test_test_files_that_are_also_training_files_are_named(
    small_cfg: JobConfig, small_data: GeneratedData
) -> None:
    """data.train_path at the folder above train/ and test/ trained on the test rows too,
    and the test AUC rose from 0.79 to 0.87 with no word (a review's walk-through)."""
    both = f"data.train_path={small_data.train_dir.parent}"
    warned = [w for w in _warnings(_cfg(small_cfg, small_data, [both])) if "also training" in w]
    assert len(warned) == 1, warned
    assert warned[0].startswith("1 of the 1 test file(s) are also training files (first: ")
    assert str(small_data.test_dir) in warned[0]
    assert not [w for w in _warnings(_cfg(small_cfg, small_data, [])) if "also training" in w]


def test_the_summary_names_a_resumed_launchs_steps_apart_from_the_step_reached(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """After a resume from step 20 to 40, the rates cover 20 steps: the line used to read
    "40 steps" beside them."""
    summary = {
        "test_auc": 0.8, "test_log_loss": 0.5, "test_ne": 0.9, "examples_per_second": 1000.0,
        "world_size": 2, "steps": 40, "steps_this_launch": 20, "wall_seconds": 3.0,
    }  # fmt: skip
    print_summary(summary, tmp_path)
    assert "1,000 (2 CPU ranks, 20 steps, to step 40)" in capsys.readouterr().out
    print_summary({**summary, "steps_this_launch": 40}, tmp_path)
    assert "(2 CPU ranks, 40 steps)" in capsys.readouterr().out
    # after Ray restarted the worker group: the rates are the restarted group's (they read
    # as the whole launch's, a helper's audit)
    print_summary({**summary, "steps_this_launch": 34, "restarted_at_step": 6}, tmp_path)
    assert "(2 CPU ranks, 34 steps since the restart at step 6, to step 40)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("key", ["output_dir", "checkpoint.dir"])
def test_an_output_path_that_is_a_file_stops_the_job_before_it_starts(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint.dir that is a file failed only at the first save, after training, with a
    message that called the file's checkpoints intact."""
    from dist_train.cli.main import main

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = ["--set", f"output_dir={tmp_path / 'out'}"] if key != "output_dir" else []
    assert main(["train", "--set", f"{key}={a_file}", *out]) == 2
    assert f"error: {key}={a_file}: a file, not a folder" in capsys.readouterr().err
    # under the file: a bare NotADirectoryError naming no key (a helper's audit)
    below = a_file / "sub"
    assert main(["train", "--set", f"{key}={below}", *out]) == 2
    assert f"error: {key}={below}: under the file {a_file}, not a folder" in capsys.readouterr().err
    # validate says so too (it passed either)
    job = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "default.yaml")
    assert main(["validate", job, "--set", f"{key}={below}", *out]) == 1
    assert f"PROBLEM  {job}: {key}={below}: under the file" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_checked_names_the_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A name too long raised a bare OSError from validate, which had not checked output_dir
    before (a review)."""
    from dist_train.cli.main import main

    job = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    long = f"/tmp/{'a' * 300}/out"
    assert main(["validate", job, "--set", f"output_dir={long}"]) == 1
    assert f"output_dir={long}: cannot check this path (File name too long)" in (
        capsys.readouterr().err
    )


def test_an_output_dir_that_cannot_be_made_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dist_train.cli.main import main

    # saving or not: the checkpoints' check came first, and said exit 1 (a helper's audit)
    for saves in (["--set", "checkpoint.save_at_end=false"], []):
        assert main(["train", "--set", "output_dir=/proc/dist-train-audit", *saves]) == 2
        assert "error: output_dir=/proc/dist-train-audit: cannot make the run's folder" in (
            capsys.readouterr().err
        )


@pytest.mark.parametrize(
    "argv",
    [
        ["gen-data", "--config", "launch/configs/tiny.yaml", "--out", "{file}"],
        ["convert", "criteo", "{tsv}", "--out", "{file}"],
    ],
)
def test_writing_data_into_a_file_is_an_error_not_a_traceback(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from dist_train.cli.main import main

    a_file, tsv = tmp_path / "a-file", tmp_path / "in.tsv"
    a_file.write_text("")
    tsv.write_text("\t".join(["1"] * 40) + "\n")
    repo = Path(__file__).resolve().parents[2]
    args = [a.format(file=a_file, tsv=tsv) for a in argv]
    args = [str(repo / a) if a.startswith("launch/") else a for a in args]
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any work
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: {a_file}: a file, not a folder" in err and "Traceback" not in err


def test_a_divergence_reaches_the_driver_whole_through_pickle() -> None:
    """Ray pickles a worker's error to the driver: a three-argument constructor came back as
    "TrainingDiverged.__init__() missing 2 required positional arguments"."""
    import pickle

    from dist_train.train.loop import TrainingDiverged

    sent = TrainingDiverged.at(4, float("nan"), 1)
    got = pickle.loads(pickle.dumps(sent))
    assert type(got) is TrainingDiverged and str(got) == str(sent)
    assert str(got).startswith("step 4: the training loss is nan on rank 1;")


def test_an_unreachable_ray_address_fails_at_once() -> None:
    """`ray.address=127.0.0.1:1` waited at "joining Ray cluster" for good: ray.init retries
    an address nothing answers without end."""
    import time

    from dist_train.launchers.processes import free_port
    from dist_train.launchers.ray_train import LaunchError, _check_reachable

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(LaunchError, match=rf"cannot reach the Ray cluster at {address}"):
        _check_reachable(address)
    assert time.perf_counter() - start < 5
    _check_reachable("auto")  # Ray's own lookup: not checked here


def test_auto_is_checked_as_the_ray_address_ray_init_takes_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ray.address: auto` with RAY_ADDRESS naming a head that is down (the documented way
    to point a job at a cluster) skipped the check: ray.init takes RAY_ADDRESS for auto and
    retried it without end."""
    from dist_train.launchers.processes import free_port
    from dist_train.launchers.ray_train import LaunchError, _check_reachable

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(LaunchError, match=rf"at {address} \(RAY_ADDRESS, for ray.address=auto\)"):
        _check_reachable("auto")
    monkeypatch.setenv("RAY_ADDRESS", "")  # unset or empty: Ray's own lookup, not checked
    _check_reachable("auto")


@pytest.mark.parametrize(
    ("reply", "heard"),
    [(b"HTTP/1.1 400 Bad Request\r\n\r\n", "answered b'HTTP/1.1"), (None, "did not answer")],
)
def test_a_ray_address_that_is_no_gcs_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, reply: bytes | None, heard: str
) -> None:
    """The dashboard's port, or any service that takes connections: ray.init retried it
    without end, and a SIGTERM then exited 15. A real GCS passes (the Ray integration
    tests join clusters through this check)."""
    import socket
    import threading

    from dist_train.launchers import ray_train

    server = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{server.getsockname()[1]}"

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            else:
                threading.Event().wait(3)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(ray_train, "REACH_SECONDS", 0.5)
    with pytest.raises(
        ray_train.LaunchError, match=rf"{address} takes connections but is no Ray GCS \(it {heard}"
    ):
        ray_train._check_reachable(address)
    server.close()


def test_ray_settings_the_processes_launcher_ignores_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`launcher=processes` with ray.max_failures, min_workers or address took no effect,
    unsaid."""
    from dist_train.config.load import load_config
    from dist_train.driver import _warn_ray_only

    cfg = load_config(overrides=["launcher=processes", "ray.max_failures=3"])
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_ray_only(cfg)
    assert "ray.max_failures=3 take no effect" in caplog.text
    caplog.clear()
    spread = load_config(overrides=["launcher=processes", "ray.placement_strategy=SPREAD"])
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_ray_only(spread)
    assert "ray.placement_strategy=SPREAD take no effect" in caplog.text  # (it was unsaid)
    caplog.clear()
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_ray_only(load_config(overrides=["launcher=processes"]))
    assert not caplog.text


def test_a_failed_ray_worker_group_is_told_rank_by_rank_the_dead_first() -> None:
    """A review's SIGKILL of rank 1 read "[Rank 0 Error Snippet]: Traceback ... Connection
    closed by peer", rank 1 nowhere; a divergence without restarts read as Ray's
    WorkerGroupError, where a restarted group's (and the processes launcher's) read
    TrainingDiverged."""
    from dist_train.launchers.ray_train import _raise_divergence, worker_failures
    from dist_train.train.loop import TrainingDiverged

    class GroupError(Exception):  # the attribute Ray Train's WorkerGroupError carries
        def __init__(self, failures: dict[int, BaseException]) -> None:
            super().__init__("Training failed due to worker errors: [Rank 0 Error Snippet]")
            self.worker_failures = failures

    health = "A worker health check failed.\nactor=...\n    hostname='vm',\n    pid=6143,\n"
    killed = GroupError(
        {0: RuntimeError("Connection closed by peer\nmore"), 1: RuntimeError(health)}
    )
    assert worker_failures(killed) == (
        "rank 1: its worker failed Ray's health check (pid 6143 on vm); "
        "rank 0: RuntimeError: Connection closed by peer | more"
    )
    traceback = "\x1b[36mTraceback (most recent call last):\n  File x\nValueError: the cause"
    assert worker_failures(GroupError({0: RuntimeError(traceback)})) == (
        "rank 0: RuntimeError: ValueError: the cause"
    )
    _raise_divergence(killed)  # not a divergence: nothing raised
    diverged = GroupError({1: TrainingDiverged.at(4, float("nan"), 1), 0: RuntimeError("x")})
    with pytest.raises(TrainingDiverged, match="step 4: the training loss is nan on rank 1"):
        _raise_divergence(diverged)
    assert worker_failures(ValueError("plain")) == "plain"


def test_later_epochs_that_train_no_step_are_named(small_cfg: JobConfig) -> None:
    """Row groups of 4,096, 256 and 256 rows on 2 ranks: each epoch deals them anew, and
    some deals leave a rank under a batch. Those epochs trained nothing, without a word."""
    from dist_train.data.listing import RowGroup, assign_row_groups, steps_per_epoch
    from dist_train.input_checks import check_steps

    over = ["train.epochs=8", "train.batch_size=512", "ray.num_workers=2"]
    cfg = parse_config(apply_overrides(small_cfg.model_dump(mode="json"), over))
    groups = [RowGroup("a.parquet", i, n) for i, n in enumerate([4096, 256, 256])]
    empty = [
        e for e in range(8) if not steps_per_epoch(assign_row_groups(groups, 2, cfg.seed, e), 512)
    ]
    assert empty and 0 not in empty  # the deal of this seed: the first epoch trains
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    LOG.addHandler(handler)
    try:
        check_steps(cfg, groups)
    finally:
        LOG.removeHandler(handler)
    named = [m for m in seen if "train 0 steps" in m]
    assert len(named) == 1 and f"epoch(s) {', '.join(map(str, empty))} of 8" in named[0]
    # epochs train.max_steps ends training before are not named
    seen.clear()
    stopped = parse_config(apply_overrides(cfg.model_dump(mode="json"), ["train.max_steps=1"]))
    LOG.addHandler(handler)
    try:
        check_steps(stopped, groups)
    finally:
        LOG.removeHandler(handler)
    assert not [m for m in seen if "train 0 steps" in m]


def test_the_first_failure_is_named_by_time_and_ties_go_to_the_first_exit(
    tmp_path: Path,
) -> None:
    """Files' times may tie (coarse clocks); the ranks' own clocks decide, and on a tie the
    rank torch saw exit first."""
    import json

    from dist_train.launchers.processes import _first_error

    def named(exited: int) -> tuple[str, str, str]:
        err = _first_error(tmp_path, exited)
        assert err is not None
        return str(err), err.kind, err.detail

    assert _first_error(tmp_path, 0) is None
    for rank, ns in ((0, 200), (1, 100), (2, 100)):
        record = {"ns": ns, "stage": "", "type": f"E{rank}", "message": f"m{rank}"}
        (tmp_path / f"rank{rank}.error").write_text(json.dumps(record))
    assert named(0) == ("rank 1 failed: E1: m1", "E1", "m1")
    assert named(2) == ("rank 2 failed: E2: m2", "E2", "m2")
    (tmp_path / "rank3.error").write_text("")  # a rank stopped as it wrote: passed over
    assert named(0) == ("rank 1 failed: E1: m1", "E1", "m1")


def test_a_join_that_fails_says_why_and_hints_at_tokens_only_for_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ray.init``'s ConnectionError names the address alone; its cause says what failed.
    The token hint follows an authentication refusal only (tested against a real token
    cluster in tests/integration/test_ray_beside_cluster.py); another failure keeps its
    reason, unhinted."""
    from dist_train.config.load import load_config
    from dist_train.launchers import ray_train

    def refuse(reason: str) -> Callable[..., None]:
        def init(**_: object) -> None:
            try:
                raise RuntimeError(f"Traceback (most recent call last):\n  ...\n{reason}\n")
            except RuntimeError as cause:
                raise ConnectionError(
                    "Failed to connect to Ray cluster at 10.0.0.1:6379"
                ) from cause

        return init

    cfg = load_config(overrides=["ray.address=10.0.0.1:6379"])
    monkeypatch.setattr(ray_train, "_check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(ray_train, "_init_keeping_sigterm", refuse("No node info found"))
    with pytest.raises(ray_train.LaunchError) as err:
        ray_train._join(cfg, "oauth-gw.internal:6379")  # "auth" in the address: no refusal
    assert str(err.value) == (
        "cannot join the Ray cluster at oauth-gw.internal:6379 (Failed to connect to Ray "
        "cluster at 10.0.0.1:6379: No node info found)"
    )
    assert isinstance(err.value.__cause__, ConnectionError)
    monkeypatch.setattr(
        ray_train, "_init_keeping_sigterm", refuse("AuthenticationError: InvalidAuthToken")
    )
    with pytest.raises(ray_train.LaunchError, match="InvalidAuthToken\\): if the cluster uses"):
        ray_train._join(cfg, "10.0.0.1:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(ray_train.LaunchError, match="is this client's token the cluster's"):
        ray_train._join(cfg, "10.0.0.1:6379")


def test_a_checkpoint_folder_that_cannot_be_made_is_named_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint folder's lock made the folder first, and a folder it could not make
    failed as a bare NotADirectoryError or PermissionError (a review's finding)."""
    from dist_train.cli.main import main

    (tmp_path / "a-file").write_text("")
    tiny = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    argv = ["train", "--config", tiny, "--set", f"output_dir={tmp_path / 'out'}"]
    assert main([*argv, "--set", f"checkpoint.dir={tmp_path / 'a-file' / 'ckpt'}"]) == 2
    assert (
        f"error: checkpoint.dir={tmp_path / 'a-file' / 'ckpt'}: under the file "
        f"{tmp_path / 'a-file'}, not a folder" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()  # no data generated, no run folder


def test_a_resume_is_held_to_the_deal_of_the_epoch_it_goes_on_in(
    small_cfg: JobConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume onto 3 ranks at epoch 2 was refused ("the job would train 0 steps") for
    epoch 0's deal on 3 ranks, where epoch 2's trains a step (a helper's audit). A resume
    is refused for no deal: the saved epoch goes on by its saved plan, and the epochs dealt
    anew after it that train nothing are warned of (a review: a mid-epoch resume was
    refused for the next epoch's deal)."""
    from dist_train.data.listing import RowGroup, assign_row_groups, steps_per_epoch
    from dist_train.input_checks import SavedAt, check_steps

    over = ["train.epochs=3", "train.batch_size=3500", "ray.num_workers=3"]
    cfg = parse_config(apply_overrides(small_cfg.model_dump(mode="json"), over))
    sizes = [5000, 1, 1, 1, 3000, 7000, 1381]
    groups = [RowGroup("a.parquet", i, n) for i, n in enumerate(sizes)]
    steps = [steps_per_epoch(assign_row_groups(groups, 3, cfg.seed, e), 3500) for e in range(3)]
    assert steps[0] == 0 and steps[2] > 0  # this seed's deals
    with pytest.raises(BadInputError, match=r"the job would train 0 steps: train.batch_size"):
        check_steps(cfg, groups)
    with caplog.at_level("WARNING", logger="dist_train"):
        check_steps(cfg, groups, SavedAt(step=3, world=2, epoch=2))  # refused before
        assert "train 0 steps" not in caplog.text
        check_steps(cfg, groups, SavedAt(step=3, world=3, epoch=3))  # a finished run
        check_steps(cfg, groups, SavedAt(step=1, world=3, epoch=0, batches=1))  # mid-epoch
    assert "epoch(s) 1 of 3 train 0 steps" in caplog.text and steps[1] == 0


def test_a_resume_counts_its_epochs_rest_against_max_steps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A resume 1 step into epoch 1, whose max_steps ends inside that epoch, warned of epoch
    2 training 0 steps: the steps left of the saved epoch were not counted (a review)."""
    from dist_train.config.load import load_config
    from dist_train.data.listing import RowGroup, assign_row_groups, steps_per_epoch
    from dist_train.input_checks import SavedAt, check_steps

    sizes = [10, 80, 20, 150, 10, 20, 80, 20]
    groups = [RowGroup("x.parquet", i, n) for i, n in enumerate(sizes)]
    seed = load_config().seed
    per = [steps_per_epoch(assign_row_groups(groups, 4, seed, e), 40) for e in range(3)]
    assert per == [1, 2, 0]  # this seed's deals
    over = ["ray.num_workers=4", "train.batch_size=40", "train.epochs=3", "train.max_steps=3"]
    cfg = load_config(overrides=over)
    with caplog.at_level("WARNING", logger="dist_train"):
        check_steps(cfg, groups, SavedAt(step=2, world=4, epoch=1, batches=1))
    assert "train 0 steps" not in caplog.text
    with caplog.at_level("WARNING", logger="dist_train"):  # without the limit: said
        check_steps(load_config(overrides=over[:3]), groups, SavedAt(2, 4, epoch=1, batches=1))
    assert "epoch(s) 2 of 3 train 0 steps" in caplog.text


def test_a_private_ray_off_the_main_thread_ends_with_its_own_error_and_restores_the_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library caller's thread: the SIGTERM handler's restore (signal.signal, main thread
    only) raised ValueError over ray.init's own error, and RAY_ADDRESS kept naming the
    instance's GCS. ray.init refuses the unknown option before it starts anything."""
    import os
    import threading

    from dist_train.launchers.ray_train import private_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token file written
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    raised: list[BaseException] = []

    def start() -> None:
        try:
            with private_ray(no_such_option=1):
                pass
        except BaseException as err:  # noqa: BLE001 - checked below
            raised.append(err)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert len(raised) == 1 and "Unknown keyword argument(s): no_such_option" in str(raised[0])
    assert "RAY_ADDRESS" not in os.environ

"""Comma-separated number flags: parsed once by argparse, bad values are usage errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from dist_train.cli.main import main
from dist_train.cli.parser import build_parser


def test_lists_parse_into_numbers_defaults_included() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "train", "--ranks", "1,2,4"])
    assert args.ranks == [1, 2, 4]
    assert parser.parse_args(["bench", "kernel"]).dims == [16, 32, 64, 128]  # the default
    sweep = parser.parse_args(["sweep", "--budgets", "1,0.25", "--seeds", "0,7"])
    assert (sweep.budgets, sweep.seeds) == ([1.0, 0.25], [0, 7])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "train", "--ranks", "2,x"], "positive ints, e.g. 2,4; got '2,x'"),
        (["bench", "pipeline", "--ranks", "0"], "positive ints"),
        (["bench", "kernel", "--batches", ""], "positive ints"),
        (["bench", "embeddings", "--lrs", "0.1,-1"], "positive floats"),
        (["sweep", "--seeds", "-1"], "non-negative ints"),
        # each value once: bench train measured 1 rank twice (a helper's audit)
        (["bench", "train", "--ranks", "1,2,1"], "1 given twice in '1,2,1'"),
        (["bench", "kernel", "--dims", "16,16"], "16 given twice"),
        (["sweep", "--budgets", "0.5,.5"], "0.5 given twice"),
        # not finite: they failed only after the collisionless runs had trained
        (["sweep", "--budgets", "1,inf"], "positive floats"),
        (["sweep", "--budgets", "nan"], "positive floats"),
        # single counts: a 0 looped forever (convert wrote empty files until the disk was
        # full) or read as "not given" (plan's batch, nodes and ranks)
        (
            ["convert", "criteo", "x.tsv", "--out", "o", "--rows-per-file", "0"],
            "one positive whole number",
        ),
        (
            ["convert", "criteo", "x.tsv", "--out", "o", "--rows-per-group", "0"],
            "one positive whole number",
        ),
        (["plan", "--batch-size", "0"], "one positive whole number up to 2,147,483,648; got '0'"),
        (["plan", "--nodes", "0"], "one positive whole number"),
        (["plan", "--ranks-per-node", "-1"], "one positive whole number"),
        (["calibrate", "--ranks", "0"], "one positive whole number"),
        (["calibrate", "--threads", "0"], "one positive whole number"),
        (["bench", "train", "--rounds", "0"], "one positive whole number"),
        # the message for a single count asks for one (it asked for a list, then refused one)
        (
            ["plan", "--nodes", "2,4"],
            "expected one positive whole number up to 2,147,483,648; got '2,4'",
        ),
        (["plan", "--nodes", "1" + "0" * 23], "up to 2,147,483,648"),  # numpy's error
        (["bench", "checkpoint", "--rows", "4,000,000"], "one positive whole number"),
        (["convert", "adult", "--out", "o", "--seed", "-1"], "one non-negative whole number"),
        # an empty --out wrote into the working directory
        (["export", "ckpt", "--out", ""], "--out: an empty path; name a folder"),
        (["gen-data", "--out", " "], "--out: an empty path; name a folder"),
        # a URL: sweep, gen-data and convert adult wrote into ./s3:/bucket/x, then failed
        # (a traceback from convert adult and gen-data; a helper's audit)
        *(
            ([*command, "--out", "s3://bucket/x"], "s3://bucket/x: a folder on this machine")
            for command in (["sweep"], ["gen-data"], ["convert", "adult"], ["evaluate", "1"])
        ),
        (["export", "x", "--out", "file:/tmp/x"], "file:/tmp/x: a folder on this machine"),
        # submit read these as not given: the default config was submitted, to the
        # environment's job server, under an id Ray picked (a helper's audit)
        (["submit", "--config", ""], "--config: an empty path; name a config file"),
        (["train", "--config", " "], "--config: an empty path; name a config file"),
        (["submit", "--address", ""], "--address: empty; give a job server's address"),
        (["submit", "--submission-id", ""], "--submission-id: empty; give a job id"),
        (["validate", "job.yaml", ""], "files: empty; give a file or folder"),
        # read as the working directory (a helper's audit)
        (["export", "", "--out", "o"], "checkpoint: empty; give a checkpoint"),
        (["evaluate", " "], "PATH|latest: empty; give a checkpoint"),
    ],
)
def test_bad_lists_are_usage_errors_naming_the_value(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err


def test_files_written_at_the_end_are_checked_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate measured for its minutes, then failed writing --out into a folder."""
    (tmp_path / "a-file").write_text("")
    for argv, message in [
        (["calibrate", "--out", str(tmp_path)], "is a folder; name a file"),
        (["plan", "--json", str(tmp_path)], "is a folder; name a file"),
        (["bench", "train", "--json", f"{tmp_path}/a-file/x.json"], "cannot write under"),
        # root passes the access check there: it measured, then failed at its last line
        (["bench", "kernel", "--json", "/proc/x.json"], "cannot write under '/proc'"),
        # output folders that are files: named after the work as a subfolder ("a-file/train:
        # Not a directory") or as "File exists"
        *(
            ([*command, "--out", f"{tmp_path}/a-file"], "a-file: a file, not a folder")
            for command in (["gen-data"], ["convert", "adult"], ["sweep"], ["export", "x"])
        ),
        # and folders under one: export said 'File exists' and exited 1 after reading the
        # checkpoint, evaluate 'Not a directory' (a helper's audit)
        *(
            ([*command, "--out", f"{tmp_path}/a-file/x/y"], "a-file, a file, not a folder")
            for command in (["gen-data"], ["sweep"], ["export", "x"], ["evaluate", "latest"])
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    # a folder still to make is the writer's to make (plan made it; parsing makes nothing)
    new = build_parser().parse_args(["plan", "--json", f"{tmp_path}/new/plan.json"]).json
    assert new == f"{tmp_path}/new/plan.json" and not (tmp_path / "new").exists()
    assert not build_parser().parse_args(["plan", "--json", "~/x.json"]).json.startswith("~")


def test_a_report_is_written_over_an_earlier_report_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --config mine.yaml --json mine.yaml` replaced the config it read with the plan's
    JSON, and `--json notes.txt` a user's notes (a helper's audit)."""
    from dist_train.cli.parser import parse_args

    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "job.yaml"
    config.write_text((repo / "launch" / "configs" / "tiny.yaml").read_text())
    notes, old, empty = tmp_path / "notes.txt", tmp_path / "old.json", tmp_path / "empty.json"
    notes.write_text("not a report\n")
    old.write_text('{"plan": "an earlier run\'s"}\n')
    empty.write_text("")
    for path, said in [
        (notes, "holds something other than JSON, which this command would replace"),
        (config, "holds something other than JSON"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            parse_args(["plan", "--config", str(config), "--json", str(path)])
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    as_json = tmp_path / "job.json"  # a config in JSON (YAML reads it) is JSON too
    as_json.write_text(json.dumps(yaml.safe_load(config.read_text())))
    with pytest.raises(SystemExit) as exit_:
        parse_args(["plan", "--config", str(as_json), "--json", str(as_json)])
    assert exit_.value.code == 2 and "the config this command reads" in capsys.readouterr().err
    assert notes.read_text() == "not a report\n" and json.loads(as_json.read_text())["name"]
    for path in (old, empty):  # an earlier report, or nothing, is replaced
        argv = ["plan", "--config", str(config), "--no-torchrec", "--no-weak-scaling"]
        assert main([*argv, "--json", str(path)]) == 0
        assert "placements" in json.loads(path.read_text())


def test_a_read_only_file_to_write_at_the_end_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """calibrate measured, then printed PermissionError's traceback."""
    done = tmp_path / "topology.json"
    done.write_text("{}")
    done.chmod(0o444)
    if os.geteuid() == 0:  # root may write any file: the file as another user sees it
        access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == done else access(p, mode)
        )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["calibrate", "--out", str(done)])
    assert "a file this user cannot write" in capsys.readouterr().err


def test_an_output_that_fails_to_write_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan --json to a full disk, sweep with its results file a folder: tracebacks
    (PermissionError, IsADirectoryError)."""
    tiny = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    assert main(["plan", "--config", tiny, "--no-torchrec", "--json", "/dev/full"]) == 1
    assert "error: /dev/full: cannot write (No space left on device)" in capsys.readouterr().err
    sweep = ["sweep", "--config", tiny, "--budgets", "1", "--seeds", "0", "--out"]
    (tmp_path / "sw" / "results.jsonl").mkdir(parents=True)
    assert main([*sweep, str(tmp_path / "sw")]) == 1
    said = capsys.readouterr().err
    assert f"error: {tmp_path / 'sw' / 'results.jsonl'}: Is a directory" in said


def test_a_folder_given_as_an_input_file_is_named_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was 'no such config file' and 'no such file'."""
    assert main(["show-config", "--config", str(tmp_path)]) == 2
    assert f"error: {tmp_path}: a folder, not a config file" in capsys.readouterr().err
    assert main(["convert", "criteo", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert f"error: bad input: {tmp_path}: a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before it made its folder


def test_a_memory_that_leaves_a_rank_none_is_refused_before_calibrating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate measured, then wrote a topology file that every plan refused."""
    out = tmp_path / "topology.json"
    assert main(["calibrate", "--memory-per-rank", "1B", "--out", str(out)]) == 2
    assert "--memory-per-rank: inconsistent topology: memory per rank 1 bytes leaves none" in (
        capsys.readouterr().err
    )
    assert not out.exists()
    # nor one a step's own working memory fills (the CPU preset's 75 MiB and the activations)
    assert main(["calibrate", "--memory-per-rank", "64MiB", "--out", str(out)]) == 2
    assert "no more than a training step's own working memory" in capsys.readouterr().err
    assert not out.exists()


def test_plan_reads_a_topology_file_as_training_does_and_a_bad_one_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan` read `sharding.topology=~/t.json` as given ('no such topology file') where
    training expands `~`; a bad topology file exited 1, as a plan that does not fit does,
    where a bad config exits 2 (a helper's audit)."""
    from planners.topology import CPU_PRESET, topology_json

    tiny = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    plan = ["plan", "--config", tiny, "--no-torchrec", "--no-weak-scaling"]
    (tmp_path / "t.json").write_text(topology_json(CPU_PRESET))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main([*plan, "--set", "sharding.topology=~/t.json"]) == 0
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"num_nodes": 1, "num_nodes": 2}')
    assert main([*plan, "--topology", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: key 'num_nodes' given twice" in capsys.readouterr().err
    assert main([*plan, "--set", "sharding.memory_per_rank=1MiB"]) == 1  # no plan fits
    assert "error: " in capsys.readouterr().err


def test_a_broken_pipe_is_no_fault_of_an_output_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sweep ... | head` said `error: sw1: Broken pipe`, naming its --out, and exited 1 at
    once: each command's OSError handler took it before main's handling of the reader's
    leaving (a helper's audit). Another pipe's (`--json >(head -c1)`) is that path's."""
    from dist_train.cli import commands, stdout

    broken = BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(stdout, "reader_gone", lambda: True)
    with pytest.raises(BrokenPipeError):
        commands._os_error(broken, "sw1")
    monkeypatch.setattr(stdout, "reader_gone", lambda: False)
    assert commands._os_error(broken, "/dev/fd/63", "cannot write") == 1
    assert "error: /dev/fd/63: cannot write (Broken pipe)" in capsys.readouterr().err


def test_quiet_and_verbose_go_before_the_command_too() -> None:
    """`dist-train -q train` failed as `dist-train train: error: unrecognized arguments: -q`
    (a helper's audit); the command's own flag wins."""
    from dist_train.cli.parser import parse_args

    for argv, level in (
        (["-q", "train"], "quiet"),
        (["-v", "show-config"], "verbose"),
        (["train", "-q"], "quiet"),
        (["-q", "train", "-v"], "verbose"),
        (["train"], "normal"),
    ):
        assert parse_args(argv).verbosity == level, argv

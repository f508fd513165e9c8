"""`dist-train evaluate`: a committed checkpoint's test metrics, training nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from dist_train.cli.main import main
from dist_train.config.schema import JobConfig
from dist_train.data.synthetic import GeneratedData
from dist_train.driver import run_job

CONFIG = "job.yaml"


@pytest.fixture
def trained(small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path) -> dict[str, object]:
    """A 2-rank job trained to its end (its checkpoint saved) and its config file."""
    raw = small_cfg.model_dump(mode="json")
    raw["launcher"] = "processes"
    raw["data"].update(train_path=str(small_data.train_dir), test_path=str(small_data.test_dir))
    (tmp_path / CONFIG).write_text(yaml.safe_dump(raw))
    summary = run_job(JobConfig.model_validate(raw))
    assert summary["checkpoint"]
    return summary


def _with_string_ids(source: Path, out: Path) -> Path:
    """``out``: ``source``'s Parquet files with column C3's integer ids written as strings."""
    out.mkdir()
    for f in source.glob("*.parquet"):
        t = pq.read_table(f)
        column = pa.array([str(v) for v in t["C3"].to_pylist()])
        pq.write_table(t.set_column(t.schema.get_field_index("C3"), "C3", column), out / f.name)
    return out


def _evaluate(tmp_path: Path, *args: str) -> int:
    try:
        return main(["evaluate", *args, "--config", str(tmp_path / CONFIG)])
    except SystemExit as exit_:  # a usage error
        return int(exit_.code or 0)


def test_a_checkpoint_evaluates_as_training_did_and_leaves_its_run_alone(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The final checkpoint's metrics are the run's own (the same weights, the same test
    rows), on its 2 ranks and resharded to 1; the run's summary and log are untouched; other
    data (--set data.test_path) is evaluated as asked."""
    run_dir = Path(str(trained["run_dir"]))
    before = {f: (run_dir / f).read_bytes() for f in ("summary.json", "metrics.jsonl")}
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest") == 0
    out = capsys.readouterr().out
    folder = run_dir / "evaluations" / Path(str(trained["checkpoint"])).name
    summary = json.loads((folder / "evaluation.json").read_text())
    assert summary["checkpoint"] == trained["checkpoint"] and summary["step"] == trained["steps"]
    for key in ("test_auc", "test_log_loss", "test_ne", "test_examples"):
        assert summary[key] == trained[key], key
    assert f"test AUC          {trained['test_auc']:.4f}\n" in out
    assert f"outputs           {folder}  (evaluation.json, metrics.jsonl)" in out
    assert "plan: unified_0 " in out and "ms/step" not in out  # placements, no step estimate
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["event"] == "eval" and record["test_auc"] == trained["test_auc"]
    assert {f: (run_dir / f).read_bytes() for f in before} == before

    one = tmp_path / "one-rank"
    assert (
        _evaluate(
            tmp_path, str(trained["checkpoint"]), "--set", "ray.num_workers=1", "--out", str(one)
        )
        == 0
    )
    resharded = json.loads((one / "evaluation.json").read_text())
    assert resharded["world_size"] == 1
    assert resharded["test_auc"] == pytest.approx(trained["test_auc"], abs=1e-6)

    other = ["--set", f"data.test_path={small_data.train_dir}", "--out", str(tmp_path / "o")]
    assert _evaluate(tmp_path, "latest", *other) == 0
    on_train = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert on_train["test_examples"] == 8192 != trained["test_examples"]


def test_what_cannot_be_evaluated_is_named_before_any_worker_starts(
    trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    cases = [
        (["latest", "--set", "name=other"], "no committed checkpoint under "),
        ([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such checkpoint folder"),
        (["latest", "--set", "model.top_mlp=[32]"], "the checkpoint is of another model"),
        (["latest", "--set", "seed=5"], "was trained with other hashing of the features"),
    ]
    for args, why in cases:
        assert _evaluate(tmp_path, *args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: checkpoint: ") and why in err, err
        assert "hint: no --config" not in err
        assert not (tmp_path / "default" / "evaluations").exists()
    # no --config: the default job's, which this checkpoint does not fit; say so (a review's
    # walk-through read only "other hashing", the checkpoint's config unmentioned)
    assert main(["evaluate", str(trained["checkpoint"]), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint: ")
    assert "hint: no --config was given, so this is the default job" in err
    assert not (tmp_path / "d").exists()
    # not a checkpoint at all: no config would do, no hint
    assert main(["evaluate", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "no such checkpoint folder" in err and "hint:" not in err
    # an export's folder (its meta.json a checkpoint's): refused here, where the ranks had
    # started before one found no .metadata
    assert main(["export", str(trained["checkpoint"]), "--out", str(tmp_path / "exp")]) == 0
    assert _evaluate(tmp_path, str(tmp_path / "exp"), "--out", str(tmp_path / "d")) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'exp'}: no .metadata, which its meta.json lists" in err
    assert "Traceback" not in err and not (tmp_path / "d").exists()


@pytest.mark.ray
def test_evaluate_under_ray(
    trained: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same evaluation from Ray Train's workers, of a checkpoint named by a relative
    path (Ray runs its workers in a folder of its own, where the path named nothing)."""
    monkeypatch.chdir(tmp_path)
    relative = Path(str(trained["checkpoint"])).relative_to(tmp_path)
    out = tmp_path / "ray-eval"
    args = ["--set", "launcher=ray", "--out", str(out)]
    assert _evaluate(tmp_path, str(relative), *args) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["test_auc"] == pytest.approx(trained["test_auc"], abs=1e-6)
    assert summary["world_size"] == 2 and summary["checkpoint"] == trained["checkpoint"]


def test_an_out_folder_that_would_clobber_the_run_is_refused(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--out the run's folder emptied its metrics.jsonl; inside a checkpoint it broke the
    checkpoint's file check; a file failed after planning; links into either got past a
    check of the paths as written."""
    run_dir = Path(str(trained["run_dir"]))
    log = (run_dir / "metrics.jsonl").read_bytes()
    checkpoint = Path(str(trained["checkpoint"]))
    (tmp_path / "a-file").write_text("")
    (tmp_path / "to-run").symlink_to(run_dir)
    (tmp_path / "to-checkpoint").symlink_to(checkpoint)
    other_run = tmp_path / "elsewhere" / "other"
    other_run.mkdir(parents=True)
    (other_run / "metrics.jsonl").write_text('{"event": "start"}\n')
    # a user's evaluation.json: called "the evaluation of None on None", or replaced (a
    # helper's audit)
    users = [tmp_path / "users" / str(i) for i in range(3)]
    for folder, text in zip(users, ('{"auc": 0.8}', "[]", "not json"), strict=True):
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text(text)
    for out, why in [
        (run_dir, "holds config.json, summary.json, a training run's metrics.jsonl"),
        (tmp_path / "to-run", "holds config.json, summary.json"),
        (other_run, "holds a training run's metrics.jsonl"),
        (small_data.test_dir, "holds Parquet files: a run's or a dataset's folder"),
        (checkpoint / "eval", "inside the job's checkpoint folder"),
        (tmp_path / "to-checkpoint" / "eval", "inside the job's checkpoint folder"),
        (tmp_path / "a-file", "a file, not a folder"),
        ("s3://bucket/eval", "a folder on this machine, not a URL"),
        (f"file:{tmp_path}/eval", "a folder on this machine, not a URL"),  # not ./file:/...
        *((folder, "evaluation.json: not an evaluation's record") for folder in users),
    ]:
        capsys.readouterr()
        assert _evaluate(tmp_path, "latest", "--out", str(out)) == 2, out
        assert why in capsys.readouterr().err, out
    assert (run_dir / "metrics.jsonl").read_bytes() == log
    assert (other_run / "metrics.jsonl").read_text() == '{"event": "start"}\n'
    assert (users[0] / "evaluation.json").read_text() == '{"auc": 0.8}'
    assert not (checkpoint / "eval").exists()


def test_an_evaluation_of_other_data_or_another_checkpoint_keeps_the_earlier_one(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default folder is named by the checkpoint's folder alone: another run's step-N,
    or the same one on other data, replaced the earlier evaluation silently."""
    assert _evaluate(tmp_path, "latest") == 0
    folder = Path(str(trained["run_dir"])) / "evaluations" / Path(str(trained["checkpoint"])).name
    first = (folder / "evaluation.json").read_text()
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest", "--set", f"data.test_path={small_data.train_dir}") == 2
    assert "would replace it: give it a folder of its own (--out)" in capsys.readouterr().err
    assert (folder / "evaluation.json").read_text() == first
    assert _evaluate(tmp_path, "latest") == 0  # the same again: replaced


def test_a_failed_evaluation_leaves_the_earlier_one_whole(
    trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same checkpoint evaluated again, its shard damaged since: the failure had deleted
    the earlier evaluation.json and emptied its metrics.jsonl before any worker started (a
    helper's audit)."""
    ckpt = tmp_path / "copy"
    shutil.copytree(str(trained["checkpoint"]), ckpt)
    out = tmp_path / "evaluation"
    assert _evaluate(tmp_path, str(ckpt), "--out", str(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"evaluation.json", "metrics.jsonl"}
    shard = next(ckpt.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    # what a killed evaluation left (its process gone) is cleared; the run stages inside
    # the existing folder (its filesystem, where its parent may not be writable)
    killed = out / f".evaluation.evaluating-{2**22 + 1}"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text("cut")
    capsys.readouterr()
    assert _evaluate(tmp_path, str(ckpt), "--out", str(out)) == 1
    assert "differ from the digest" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if "evaluating" in p.name) == []


def test_test_ids_of_another_type_than_trainings_are_refused(
    trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Test ids cast to strings hash to other rows than training's integers: evaluate gave
    a lower AUC, silently (validate and training refuse such files)."""

    raw = yaml.safe_load((tmp_path / CONFIG).read_text())
    test = _with_string_ids(Path(raw["data"]["test_path"]), tmp_path / "string-ids")
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest", "--set", f"data.test_path={test}") == 1
    err = capsys.readouterr().err
    assert "schema mismatch: column 'C3' is string here but int64 in " in err, err
    assert "train" in err.split("int64 in ")[1]


def test_evaluate_never_writes_synthetic_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job on generated data evaluates the data its run generated; with other
    data.synthetic settings it regenerated them in the run's folder, under the run."""
    from tests.conftest import small_config

    cfg = small_config(tmp_path, ["launcher=processes"])
    raw = cfg.model_dump(mode="json")
    (tmp_path / CONFIG).write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest") == 1  # nothing trained, nothing generated
    assert not (tmp_path / "default" / "data").exists()
    summary = run_job(cfg)
    data = tmp_path / "default" / "data"
    files = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    assert _evaluate(tmp_path, "latest") == 0
    assert (
        json.loads(
            (
                Path(str(summary["run_dir"]))
                / "evaluations"
                / Path(str(summary["checkpoint"])).name
                / "evaluation.json"
            ).read_text()
        )["test_auc"]
        == summary["test_auc"]
    )
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest", "--set", "data.synthetic.num_test_rows=2048") == 2
    assert "no synthetic data of this job's data.synthetic settings" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == files


def test_the_id_types_come_from_the_first_usable_training_file(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under skip a job trains past a bad first file, and evaluate read only that file's
    types; training files rotated away stopped it without a way on."""

    train = tmp_path / "train-with-junk"
    shutil.copytree(small_data.train_dir, train)
    (train / "a-junk.parquet").write_text("junk")
    with_junk = ["--set", f"data.train_path={train}", "--out", str(tmp_path / "junk")]
    assert _evaluate(tmp_path, "latest", *with_junk, "--set", "data.on_bad_input=skip") == 0
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest", *with_junk) == 1
    assert "a-junk.parquet: not a readable Parquet file" in capsys.readouterr().err
    gone = ["--set", f"data.train_path={tmp_path / 'gone'}", "--out", str(tmp_path / "g")]
    assert _evaluate(tmp_path, "latest", *gone) == 1
    assert "set data.train_path to the test files" in capsys.readouterr().err


def test_the_default_folder_and_the_same_checkpoint_by_another_path(
    trained: dict[str, object], tmp_path: Path
) -> None:
    """With checkpoint.dir at the run's folder, the default folder (under it) was refused
    as inside the checkpoint folder; the same checkpoint named through `..` was refused as
    another's evaluation."""
    run_dir = Path(str(trained["run_dir"]))
    checkpoint = Path(str(trained["checkpoint"]))
    at_run = ["--set", f"checkpoint.dir={run_dir}"]
    assert _evaluate(tmp_path, str(checkpoint), *at_run) == 0
    roundabout = checkpoint.parent / ".." / "checkpoints" / checkpoint.name
    assert _evaluate(tmp_path, str(roundabout), *at_run) == 0
    # and by a file:// URL (refused as another checkpoint's evaluation)
    assert _evaluate(tmp_path, f"file://{checkpoint}", *at_run) == 0


def test_a_large_share_of_skipped_test_rows_is_warned_of(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Test labels written 0/2 under on_bad_input=skip: every positive skipped, and the
    metrics, over the negatives, printed with only the counts to say so (train warned)."""
    bad = tmp_path / "labels-0-2"
    bad.mkdir()
    for f in small_data.test_dir.glob("*.parquet"):
        t = pq.read_table(f)
        doubled = pc.multiply(t["label"], pa.scalar(2, t.schema.field("label").type))
        pq.write_table(
            t.set_column(t.schema.get_field_index("label"), "label", doubled), bad / f.name
        )
    args = ["--set", f"data.test_path={bad}", "--set", "data.on_bad_input=skip"]
    assert _evaluate(tmp_path, "latest", *args, "--out", str(tmp_path / "ev")) == 0
    err = capsys.readouterr().err
    assert "of the test rows read were skipped as bad input" in err, err
    # the job's own test data: nothing skipped, nothing said
    assert _evaluate(tmp_path, "latest", "--out", str(tmp_path / "ev2")) == 0
    assert "skipped as bad input" not in capsys.readouterr().err


def test_id_types_are_read_past_training_files_of_only_nulls(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A first training file whose id column holds only nulls (Arrow's null type) sets no
    type: the test files then set it themselves, and string ids passed."""

    train = tmp_path / "train-nulls-first"
    shutil.copytree(small_data.train_dir, train)
    first = pq.read_table(sorted(train.glob("*.parquet"))[0])
    i = first.schema.get_field_index("C3")
    pq.write_table(first.set_column(i, "C3", pa.nulls(first.num_rows)), train / "a-nulls.parquet")
    test = _with_string_ids(small_data.test_dir, tmp_path / "string-ids")
    capsys.readouterr()
    paths = ["--set", f"data.train_path={train}", "--set", f"data.test_path={test}"]
    assert _evaluate(tmp_path, "latest", *paths, "--out", str(tmp_path / "n")) == 1
    assert "schema mismatch: column 'C3' is string here but int64 in " in capsys.readouterr().err

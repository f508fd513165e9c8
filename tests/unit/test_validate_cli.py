"""`dist-train validate` and `plan` name what training would refuse, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dist_train.cli.main import main
from dist_train.validate import validate_files

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
RAYJOB = REPO / "launch" / "kuberay" / "rayjob.yaml"


def _job(tmp_path: Path, name: str, **sections: dict) -> Path:  # type: ignore[type-arg]
    doc = yaml.safe_load(TINY.read_text())
    for section, values in sections.items():
        doc[section] = {**doc.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_reports_planning_errors_as_problems_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = {
        "decay": ({"embedding": {"optimizer": {"weight_decay": 0.1}}}, "weight_decay=0.1"),
        "groups": (
            {"sharding": {"group_size": 3}, "ray": {"num_workers": 4}},
            "sharding.group_size=3: groups of 3 do not tile",
        ),
        "topo": (
            {"sharding": {"topology": str(tmp_path / "missing.json")}},
            "missing.json: no such topology file",
        ),
        "memory": ({"sharding": {"memory_per_rank": "lots"}}, "cannot read 'lots' as a size"),
    }
    files = [str(_job(tmp_path, name, **change)) for name, (change, _) in jobs.items()]
    assert main(["validate", *files]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name, (_, why) in jobs.items():
        assert any(f"{name}.yaml" in line and why in line for line in err.split("PROBLEM")), name
    assert "sharding.memory_per_rank: Value error, cannot read 'lots'" in err


def test_validate_reads_a_topology_under_home_as_training_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sharding.topology: ~/t.json` was 'no such topology file' here, where the driver
    expands `~` before it plans (a helper's audit)."""
    from planners.topology import CPU_PRESET, topology_json

    (tmp_path / "t.json").write_text(topology_json(CPU_PRESET))
    monkeypatch.setenv("HOME", str(tmp_path))
    report = validate_files([str(_job(tmp_path, "home", sharding={"topology": "~/t.json"}))])
    assert report.problems == [] and report.ok, report


def _rayjob(tmp_path: Path, entrypoint: str) -> Path:
    doc = yaml.safe_load(RAYJOB.read_text())
    doc["spec"]["entrypoint"] = entrypoint
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_validate_rayjob_applies_the_entrypoints_overrides(tmp_path: Path) -> None:
    # the shipped RayJob's 2 CPU worker pods hold 4 one-CPU workers, not 64
    entry = "python -m dist_train.driver --config launch/configs/two_nodes.yaml"
    report = validate_files([str(_rayjob(tmp_path, f"{entry} --set ray.num_workers=64"))])
    assert any("'two_nodes'" in p and "64 workers" in p for p in report.problems), report
    report = validate_files([str(_rayjob(tmp_path, f"{entry} --set=ray.num_workres=4"))])
    assert any("ray.num_workres: unknown key" in p for p in report.problems), report
    # as the driver's argparse reads them, abbreviated (the default job was checked), and a
    # --config with no value (the driver exits 2 on it; the default job was checked)
    short = (
        "python -m dist_train.driver --conf launch/configs/two_nodes.yaml --se ray.num_workers=64"
    )
    report = validate_files([str(_rayjob(tmp_path, short))])
    assert any("'two_nodes'" in p and "64 workers" in p for p in report.problems), report
    path = _rayjob(tmp_path, "python -m dist_train.driver --set output_dir=/x --config")
    report = validate_files([str(path)])
    assert f"{path}: spec.entrypoint: argument --config: expected one argument" in report.problems


def test_an_entrypoints_argument_its_command_refuses_is_named(tmp_path: Path) -> None:
    """Arguments after the entrypoint's command were read with --config and --set alone and
    the rest passed over: `--resume latest` to the driver (which has no such option) or a
    misspelt `--sett` were said to fit, and the job exited 2 at its start (a review's
    finding). `dist-train train` takes --resume; the driver does not."""
    config = "--config launch/configs/two_nodes.yaml"
    for entry, refused in (
        (f"python -m dist_train.driver {config} --resume latest", "the driver refuses --resume"),
        (f"dist-train train {config} --sett seed=1", "dist-train train refuses --sett"),
    ):
        path = _rayjob(tmp_path, entry)
        problems = validate_files([str(path)]).problems
        assert any(p.startswith(f"{path}: spec.entrypoint: {refused}") for p in problems), problems
    resumed = _rayjob(tmp_path, f"dist-train train {config} --resume latest")
    report = validate_files([str(resumed)])
    assert report.problems == [] and any("'two_nodes' fits" in ok for ok in report.ok), report


def test_validate_rayjob_names_an_entrypoint_config_it_cannot_find(tmp_path: Path) -> None:
    path = _rayjob(tmp_path, "python -m dist_train.driver --config launch/configs/nope.yaml")
    report = validate_files([str(path)])
    assert any(
        p.startswith(f"{path}: spec.entrypoint's --config:") and "nope.yaml: no such" in p
        for p in report.problems
    ), report


def test_plan_without_torchrec_refuses_what_training_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, "decay", embedding={"optimizer": {"weight_decay": 0.1}})
    assert main(["plan", "--config", str(job), "--no-torchrec"]) == 1
    assert "weight_decay=0.1: FBGEMM's CPU kernel ignores weight decay" in capsys.readouterr().err


def test_validate_plans_a_gpu_job_with_gpu_memory_rules(tmp_path: Path) -> None:
    # 24 GiB of tables a rank: over the CPU preset's 8 GiB a rank, well inside an H100's 80
    big = {"num_rows": 200_000_000, "dim": 64, "num_tables": 1}
    gpu = str(REPO / "launch" / "clusters" / "aws-gpu.yaml")
    cuda = _job(tmp_path, "cuda", embedding=big, train={"device": "cuda"})
    report = validate_files([str(cuda), gpu])
    assert report.problems == [] and any("cuda ranks, row_wise" in line for line in report.ok)
    auto = _job(tmp_path, "auto", embedding=big, train={"device": "auto"})
    report = validate_files([str(auto), gpu])  # a GPU per worker there: planned for cuda
    assert report.problems == [] and any(
        "fits" in line and "cuda ranks" in line for line in report.ok
    )
    assert "7.20 GiB usable" in validate_files([str(auto)]).problems[0]  # alone: CPU ranks
    report = validate_files([str(auto), str(RAYJOB)])  # CPU pods: too big for them
    assert any(p.startswith(f"{auto} on {RAYJOB}: sharding plan") for p in report.problems)


def test_sizes_that_cannot_be_read_name_the_flag_or_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = str(tmp_path / "topology.json")  # never written: refused before measuring
    assert main(["calibrate", "--out", out, "--memory-per-rank", "1.5.2G"]) == 2
    assert not (tmp_path / "topology.json").exists()
    assert "error: --memory-per-rank: cannot read '1.5.2G' as a size" in capsys.readouterr().err
    assert main(["show-config", "--set", "sharding.memory_per_rank=1e400"]) == 2
    err = capsys.readouterr().err
    assert "sharding.memory_per_rank: Value error, '1e400' is not a size" in err
    assert "Traceback" not in err


def test_a_jobs_plan_that_fails_is_reported_once_with_clusters(tmp_path: Path) -> None:
    big = {"num_rows": 200_000_000, "dim": 64, "num_tables": 1}  # over CPU ranks' 8 GiB
    job = _job(tmp_path, "cpu", embedding=big, train={"device": "cpu"})
    gpu = str(REPO / "launch" / "clusters" / "aws-gpu.yaml")
    report = validate_files([str(job), str(RAYJOB), gpu])
    # once with the job, not again for each cluster it was checked against
    assert [p for p in report.problems if "sharding plan" in p] == [
        p for p in report.problems if p.startswith(f"{job}: sharding plan")
    ]
    assert len(report.problems) == 1


def test_validate_names_a_folder_that_is_no_checkpoint(tmp_path: Path) -> None:
    """An interrupted save (a step folder without meta.json) or a run's checkpoints/ folder:
    'no such file' named a folder that is there."""
    partial = tmp_path / "checkpoints" / "step-00000004"
    partial.mkdir(parents=True)
    for folder in (partial, partial.parent):
        report = validate_files([str(folder)])
        (problem,) = report.problems
        assert problem.startswith(f"{folder}: a folder without meta.json: not a committed")


def test_validate_checks_the_jobs_data_as_training_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate said ok to a job whose data lacked a column; the run then stopped on it."""
    from dist_train.data.synthetic import generate
    from tests.conftest import small_config

    cfg = small_config(tmp_path)
    data = generate(cfg.data.synthetic, tmp_path / "data", progress=False)
    raw = cfg.model_dump(mode="json")
    raw["data"].update(train_path=str(data.train_dir), test_path=str(data.test_dir))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(job)]) == 0
    assert "job.yaml: data: 8 training and 4 test row groups" in capsys.readouterr().out
    for change, why in [
        (
            "data.dense_columns=[I1,I99]",
            "part-0.parquet: missing column 'I99' (a dense column of data.dense_columns) "
            "(the first found: `--set data.on_bad_input=skip` lists every bad file)",
        ),
        (  # one's own data without dense_columns: the generator's names, said so
            "data.synthetic.num_dense=5",
            "part-0.parquet: missing column 'I5' (data.dense_columns is unset: it stands for "
            "the generator's I1..I5",
        ),
        ("train.batch_size=8192", "the job would train 0 steps"),
        ("data.test_path=" + str(tmp_path / "none"), "data.test_path: "),
    ]:
        assert main(["validate", str(job), "--set", change]) == 1, change
        err = capsys.readouterr().err
        assert f"PROBLEM  {job}: data" in err and why in err, err
    # a test file's id beyond its cardinality, from its footer: before, the run found it
    # at evaluation, after training; skip drops such rows, not files (no hint of files)
    first = sorted(data.test_dir.glob("*.parquet"))[0]
    table = pq.read_table(first)
    ids = table["C3"].to_pylist()
    ids[3] = 10**6
    column = pa.array(ids, type=table.schema.field("C3").type)
    bad = table.set_column(table.schema.get_field_index("C3"), "C3", column)
    pq.write_table(bad, first, row_group_size=1024)
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert re.search(
        re.escape(f"PROBLEM  {job}: data: {first} (row group 0): column 'C3': ids from ")
        + r"\d+"
        + re.escape(
            " to 1000000, outside [0, 1000), by the file's footer statistics (set "
            "data.on_bad_input: skip to drop such rows)\n"
        ),
        err,
    ), err
    pq.write_table(table, first, row_group_size=1024)
    # ~ is the home folder, as the driver reads it (unexpanded: "no such file or folder")
    monkeypatch.setenv("HOME", str(tmp_path))
    home = ["--set", "data.train_path=~/data/train", "--set", "data.test_path=~/data/test"]
    assert main(["validate", str(job), *home]) == 0
    assert "job.yaml: data: 8 training and 4 test row groups" in capsys.readouterr().out
    # --set with no job config among the files names itself
    aws = str(REPO / "launch" / "clusters" / "aws-gpu.yaml")
    assert main(["validate", aws, "--set", "train.epochs=2"]) == 1
    assert "--set train.epochs=2: --set applies to job configs" in capsys.readouterr().err


def test_validate_holds_a_resumed_job_to_its_checkpoint_not_a_fresh_deal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate held a job that resumes (a RayJob's `train --resume`, checkpoint.resume) to
    a fresh run's first epoch, and refused one that the run goes on with; it names a
    checkpoint the run cannot resume."""
    import json

    from dist_train.checkpoint.folders import META
    from dist_train.data.synthetic import generate
    from tests.conftest import small_config

    cfg = small_config(tmp_path)
    data = generate(cfg.data.synthetic, tmp_path / "data", progress=False)
    raw = cfg.model_dump(mode="json")
    raw["data"].update(train_path=str(data.train_dir), test_path=str(data.test_dir))
    raw["train"].update(batch_size=8192)  # a fresh run's first epoch trains 0 steps
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(job)]) == 1
    err = capsys.readouterr().err
    assert "the job would train 0 steps" in err
    assert "on_bad_input=skip" not in err  # no file's problem: skip would say the same
    # a checkpoint of the run's end, on 2 ranks: the resume trains nothing more, refused by
    # no deal of a fresh run's
    done = tmp_path / "saved" / "step-00000040"
    done.mkdir(parents=True)
    position = {"step": 40, "epoch": raw["train"]["epochs"], "batches": 0}
    (done / META).write_text(json.dumps({"position": position, "world_size": 2, "config": raw}))
    assert main(["validate", str(job), "--set", f"checkpoint.resume={done}"]) == 0, (
        capsys.readouterr().err
    )
    assert "job.yaml: data: 8 training and 4 test row groups" in capsys.readouterr().out
    gone = tmp_path / "saved" / "step-00000099"
    missing = ["--set", "data.dense_columns=[I1,I99]"]  # and the data's problem said too
    assert main(["validate", str(job), "--set", f"checkpoint.resume={gone}", *missing]) == 1
    err = capsys.readouterr().err
    assert f"PROBLEM  {job}: checkpoint.resume: {gone}: no such checkpoint folder" in err, err
    assert "missing column 'I99'" in err, err
    # `latest` of a checkpoint.dir at a URL is left to the run, as a URL named is (a review:
    # it was listed from here, and failed for want of s3fs)
    remote = ["--set", "checkpoint.dir=s3://bucket/ckpts", "--set", "checkpoint.resume=latest"]
    assert main(["validate", str(job), *remote]) == 0, capsys.readouterr().err


def test_plan_prints_no_torchrec_warning_for_a_table_it_replicates(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """TorchRec logs "Sharding spec not found" on the root logger for every replicated
    table: `plan` printed WARNING:root:... beside its own output, as if it had failed."""
    argv = ["plan", "--nodes", "64", "--ranks-per-node", "8", "--memory-per-rank", "80GiB"]
    assert main([*argv, "--device", "cuda"]) == 0
    out, err = capfd.readouterr()
    assert "TorchRec's planner: data_parallel" in out  # it replicates the table
    assert "Sharding spec not found" not in err
    assert not [r for r in caplog.records if "Sharding spec" in r.getMessage()]


def test_validate_names_a_file_of_another_kind_in_one_line(tmp_path: Path) -> None:
    """plan's JSON handed to validate: 22 'unknown key' lines of a job config."""
    other = tmp_path / "plan.json"
    other.write_text('{"label": "row_wise", "placements": [], "notes": []}')
    (problem,) = validate_files([str(other)]).problems
    assert problem == (
        f"{other}: not a job config, Ray cluster config, RayJob or checkpoint: it has none of a "
        "job config's keys (its keys: label, placements, notes)"
    )
    # a job config whose keys are all misspelt is one still, with the keys meant suggested
    typo = tmp_path / "typo.yaml"
    typo.write_text("trian:\n  epochs: 2\n")
    (problem,) = validate_files([str(typo)]).problems
    assert "trian: unknown key (did you mean train?" in problem


def test_a_dense_network_past_a_ranks_memory_is_named(tmp_path: Path) -> None:
    """Its layers were allocated to plan it: validate and plan died allocating 4 TiB."""
    job = _job(tmp_path, "wide", model={"bottom_mlp": [1_048_576, 1_048_576]})
    (problem,) = validate_files([str(job)]).problems
    assert "sharding plan: the dense network (1,099,526,308,841 parameters" in problem
    assert "fewer or smaller layers (the model.* settings its model.kind reads" in problem


def test_a_node_too_small_for_the_dense_side_is_named(tmp_path: Path) -> None:
    """The node-memory check counted each worker's tables and their optimizer state alone: a
    job of small tables and a dense network whose step needs about 1 GiB a rank was said to
    fit pods of 1 GiB for 2 workers. It now counts the plan's peak per rank."""
    doc = yaml.safe_load(RAYJOB.read_text())
    for group in [
        doc["spec"]["rayClusterSpec"]["headGroupSpec"],
        *doc["spec"]["rayClusterSpec"]["workerGroupSpecs"],
    ]:
        group["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    small = tmp_path / "small-pods.yaml"
    small.write_text(yaml.safe_dump(doc))
    wide = _job(tmp_path, "wide", model={"top_mlp": [4096, 2048]}, train={"batch_size": 16384})
    problems = validate_files([str(wide), str(small)]).problems
    assert any(
        f"{wide} on {small}: node type" in p and "by its plan (tables, optimizer state" in p
        for p in problems
    ), problems
    # the same job with the tiny config's dense side fits those pods
    assert (
        validate_files(
            [str(_job(tmp_path, "tiny", train={"batch_size": 512})), str(small)]
        ).problems
        == []
    )


def test_an_elastic_job_fits_a_cluster_holding_its_minimum(tmp_path: Path) -> None:
    """ray.min_workers=2 of num_workers=6 on the RayJob's room for 4: training runs it (its
    own check needs the minimum), but validate asked for all 6 and said too small (a
    review's finding)."""
    job = _job(tmp_path, "elastic", ray={"num_workers": 6, "min_workers": 2})
    report = validate_files([str(job), str(RAYJOB)])
    assert not any(str(job) in p for p in report.problems), report.problems
    assert any("fewer than its 6 workers (ray.min_workers=2" in ok for ok in report.ok)
    job = _job(tmp_path, "elastic5", ray={"num_workers": 6, "min_workers": 5})
    problems = validate_files([str(job), str(RAYJOB)]).problems
    assert any("5 workers x 1 CPU do not fit" in p and "(ray.min_workers=5" in p for p in problems)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["calibrate", "--out", "t.json", "--ranks", "100000"], "--ranks: expected one positive"),
        (["calibrate", "--out", "t.json", "--threads", "2147483648"], "--threads: expected"),
        (["bench", "train", "--ranks", "1000000"], "--ranks: at most 1,024"),
        (["bench", "interaction", "--threads", "99999999999"], "--threads: at most 4,096"),
        (["sweep", "--seeds", "99999999999999999999999"], "--seeds: at most 9,223,372,036"),
    ],
)
def test_counts_a_command_would_start_or_a_job_refuse_are_bounded(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Taken before: calibrate would fork 100,000 ranks, bench train size its data for a
    million; a seed past a job's range was refused only after the sweep generated its data,
    naming an arm, not --seeds (a review's findings)."""
    with pytest.raises(SystemExit) as usage:
        main([*argv[:3], *[a.replace("t.json", str(tmp_path / "t.json")) for a in argv[3:]]])
    assert usage.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_empty_options_and_ignored_ones_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`plan --topology ''` planned with the preset and `--memory-per-rank ''` with the
    topology's memory; `show-config --reference --config X --set Y` printed the reference,
    the two passed over (a review's findings)."""
    assert main(["plan", "--no-torchrec", "--topology", ""]) == 2
    assert "error: --topology: an empty path" in capsys.readouterr().err
    assert main(["plan", "--no-torchrec", "--memory-per-rank", ""]) == 2
    assert "error: --memory-per-rank: cannot read '' as a size" in capsys.readouterr().err
    out = str(tmp_path / "t.json")
    assert main(["calibrate", "--out", out, "--memory-per-rank", ""]) == 2
    assert "--memory-per-rank: cannot read ''" in capsys.readouterr().err
    assert main(["show-config", "--reference", "--set", "seed=1"]) == 2
    assert "takes no --config or --set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # an empty one too: a usage error
        main(["show-config", "--reference", "--config", ""])
    assert usage.value.code == 2
    assert "--config: an empty path; name a config file" in capsys.readouterr().err


def test_validate_deals_generated_data_as_the_run_will_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without data paths validate checked no steps: 16 ranks over the tiny job's 8 generated
    row groups passed, and the run refused them once it had generated the data (a helper's
    audit)."""
    tiny = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
    out = ["--set", f"output_dir={tmp_path}"]
    assert main(["validate", tiny, *out, "--set", "ray.num_workers=16"]) == 1
    err = capsys.readouterr().err
    assert "data (generated by the run): the job would train 0 steps" in err
    assert main(["validate", tiny, *out]) == 0


def test_the_generated_row_groups_are_known_before_the_data_are_written(tmp_path: Path) -> None:
    from dist_train.config.load import load_config
    from dist_train.data.listing import list_row_groups
    from dist_train.data.synthetic import generate, train_row_groups

    # 11 files: the reader lists part-10 before part-2 (a review: they were dealt in number
    # order, and validate's deal was not the run's)
    for rows, files, per_group in [(9, 4, 2), (10_000, 3, 1024), (4096, 1, 1024), (113, 11, 100)]:
        cfg = load_config(
            overrides=[
                f"data.synthetic.num_train_rows={rows}",
                f"data.synthetic.num_train_files={files}",
                f"data.synthetic.rows_per_group={per_group}",
                "data.synthetic.num_test_rows=10",
            ]
        ).data.synthetic
        data = generate(cfg, tmp_path / f"{rows}", progress=False)
        written = [
            (Path(g.path).name, g.index, g.num_rows) for g in list_row_groups(str(data.train_dir))
        ]
        known = [(Path(g.path).name, g.index, g.num_rows) for g in train_row_groups(cfg)]
        assert known == written

"""The sweep's arms (budgets, chunks, kinds) and its summary; the Adult conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dist_train.config.errors import ConfigError
from dist_train.config.load import load_config
from dist_train.data.adult import CATEGORICAL, DENSE_COLUMNS, convert_adult
from dist_train.embedding.layout import build_layout
from dist_train.sweep import (
    DATASETS,
    Arm,
    _check_plans,
    arm_config,
    arms,
    config_digest,
    dataset_config,
    failed_to_run,
    markdown,
    run_sweep,
    stale_runs,
    summarize,
    to_train_again,
    vocabulary,
)


@pytest.mark.parametrize("dataset", ["synthetic", "adult"])
def test_every_method_at_a_budget_holds_that_many_parameters(dataset: str) -> None:
    # the sweep generates integer ids, which its collisionless arm indexes (sweep.prepare)
    ints = ["data.synthetic.string_columns=[]"] if dataset == "synthetic" else []
    base = load_config(DATASETS[dataset], ints)
    full = vocabulary(base) * base.embedding.dim
    exact = arm_config(base, Arm("collisionless", 1.0, 0))
    assert build_layout(exact.embedding, exact.features, 0).num_parameters == full
    # no arm sets a size its kind does not read (the run would warn of it); the exact
    # tables' initialization bound is 1/sqrt(vocabulary), as the documented runs had it
    assert exact.embedding.unread_settings() == []
    assert exact.embedding.num_rows == vocabulary(base)
    for budget in (1.0, 0.3, 0.1, 0.03):
        # the same rows, so the same parameters, for each shared method: the hashing
        # trick's tables rounded down to a multiple of the features held 96 of Adult's 120
        rows = max(len(base.features), round(budget * vocabulary(base)))
        for method in ("hashing_trick", "multiplexing", "unified"):
            cfg = arm_config(base, Arm(method, budget, 2))
            params = build_layout(cfg.embedding, cfg.features, cfg.seed).num_parameters
            assert params == rows * base.embedding.dim, (method, budget)
            assert cfg.seed == 2 and cfg.name == f"{method}-b{budget:g}-s2"
            assert cfg.embedding.unread_settings() == [], method
    chunks = {
        m: [f.chunks for f in arm_config(base, Arm(m, 0.1, 0)).features]
        for m in ("multiplexing", "unified")
    }
    assert set(chunks["multiplexing"]) == {1}
    assert chunks["unified"] == [f.chunks for f in base.features] and max(chunks["unified"]) > 1
    assert arm_config(base, Arm("multiplexing", 0.1, 0)).embedding.kind == "unified"


def test_arms_cover_methods_budgets_and_seeds_once() -> None:
    runs = arms((1.0, 0.1), (0, 1))
    assert len(runs) == len({a.name for a in runs}) == 2 + 2 * 2 * 3
    assert {a.method for a in runs if a.budget == 0.1} == {
        "hashing_trick",
        "multiplexing",
        "unified",
    }


def test_a_budget_or_seed_given_twice_runs_once() -> None:
    # a repeat trained again and counted as another seed, of spread 0
    assert arms((0.1, 1.0, 0.1), (0, 0, 1)) == arms((0.1, 1.0), (0, 1))


_RUN = {
    "name": "unified-b1-s0",
    "method": "unified",
    "budget": 1.0,
    "seed": 0,
    "parameters": 1000,
    "test_auc": 0.75,
    "test_log_loss": 0.5,
}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not json\n", r"results\.jsonl, line 2: not a sweep run's record"),
        ("[1, 2]\n", r"results\.jsonl, line 2: not a sweep run's record \(a list\)"),
        # a blank line is passed over: the next line's run is read, and refused as before
        ("\n", r"results\.jsonl: 2 synthetic run\(s\) there"),
        # fields the summary reads, checked before any run trains (after all of them, a
        # KeyError's traceback, or "could not convert string to float" naming no file)
        ('{"name": "unified-b1-s0"}\n', r"line 2: not a sweep run's record \(no 'method'\)"),
        (
            json.dumps({**_RUN, "test_auc": "abc"}) + "\n",
            r"line 2: not a sweep run's record \(test_auc='abc'\)",
        ),
        (
            json.dumps({**_RUN, "parameters": True}) + "\n",
            r"line 2: not a sweep run's record \(parameters=True\)",
        ),
    ],
)
def test_a_results_line_that_is_no_run_is_named_before_training(
    tmp_path: Path, text: str, match: str
) -> None:
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    other = config_digest(dataset_config("synthetic", None, [*small, "train.epochs=5"])[0])
    row = json.dumps({**_RUN, "dataset": "synthetic", "config": other})
    (tmp_path / "results.jsonl").write_text(f"{row}\n{text}{row}\n")
    with pytest.raises(ConfigError, match=match):
        run_sweep("synthetic", tmp_path, overrides=small, budgets=(1.0,))
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_a_results_file_that_is_no_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_bytes(b"\xd0\xff\n")
    with pytest.raises(ConfigError, match=r"results\.jsonl: not a sweep's results \(not UTF-8"):
        run_sweep("synthetic", tmp_path, budgets=(1.0,))


def test_runs_of_other_parameters_than_their_arms_are_stale() -> None:
    base = load_config(DATASETS["adult"])
    planned = arms((0.03,), (0,))
    done = [
        {"name": "hashing_trick-b0.03-s0", "parameters": 96},  # rows rounded down, once
        {"name": "unified-b0.03-s0", "parameters": 120},
        {"name": "unified-b0.5-s0", "parameters": 7},  # not planned: not judged
    ]
    assert stale_runs(done, base, planned) == [done[0]]


def test_summary_gives_mean_and_spread_over_seeds() -> None:
    results = [
        {"method": "unified", "budget": 0.1, "parameters": 10, "test_auc": a, "test_log_loss": 0.5}
        for a in (0.70, 0.72, 0.74)
    ]
    (row,) = summarize(results)
    assert row["seeds"] == 3 and row["test_auc_mean"] == pytest.approx(0.72)
    assert row["test_auc_std"] == pytest.approx(0.02)
    assert (row["test_auc_min"], row["test_auc_max"]) == (0.70, 0.74)


def test_adult_converts_to_exact_integer_codes(tmp_path: Path) -> None:
    data = convert_adult(tmp_path)
    assert data.num_train_rows + data.num_test_rows == 48_842
    train, test = pq.read_table(data.train_dir), pq.read_table(data.test_dir)
    assert set(train["row_id"].to_pylist()).isdisjoint(test["row_id"].to_pylist())
    cfg = load_config(DATASETS["adult"])
    assert [f.name for f in cfg.features] == [name for name, _ in CATEGORICAL.values()]
    assert cfg.data.dense_columns == DENSE_COLUMNS
    for feature in cfg.features:  # codes index the collisionless table exactly
        codes = train[feature.name].to_numpy()
        assert codes.min() >= 0 and codes.max() < (feature.cardinality or 0), feature.name
    assert 0.2 < train["label"].to_numpy().mean() < 0.3


def test_the_synthetic_sweep_trains_in_smaller_batches_unless_told_otherwise() -> None:
    assert dataset_config("synthetic", None, [])[0].train.batch_size == 512
    assert dataset_config("synthetic", None, ["train.batch_size=1024"])[0].train.batch_size == 1024
    default = str(DATASETS["synthetic"])  # a config given by the user is taken as it is
    assert dataset_config("synthetic", default, [])[0].train.batch_size == 2048
    assert dataset_config("adult", None, [])[0].train.batch_size == 256


def test_a_rerun_under_another_config_is_refused_before_training(tmp_path: Path) -> None:
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    base = dataset_config("synthetic", None, small)[0]
    row = {**_RUN, "dataset": "synthetic", "name": "unified-1-s0", "config": config_digest(base)}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"results.jsonl: 1 synthetic run\(s\) there"):
        run_sweep("synthetic", tmp_path, overrides=[*small, "train.epochs=5"], budgets=(1.0,))
    assert not (tmp_path / "runs").exists()  # nothing trained


@pytest.mark.parametrize(
    ("budget", "named"),
    [
        (2.0, "--budgets 2: a budget is a fraction of the exact tables' parameters, in (0, 1]"),
        (0.01, "--budgets 0.01: 5 rows of the 494 values, fewer than one for each of the 12"),
        (0.031, "--budgets 0.03 and 0.031 give the same 15 rows of the 494 values"),
    ],
)
def test_a_budget_past_the_exact_tables_or_under_a_row_a_feature_is_refused(
    tmp_path: Path, budget: float, named: str
) -> None:
    """Under one row a feature, arm_config raised the rows to that floor: budgets 0.01 and
    0.02 of Adult trained the same 96-parameter arms and the table showed them as two rows;
    a budget of 2 trained tables twice the exact ones (a researcher's walk-through)."""
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError) as err:
        run_sweep("adult", out, budgets=(1.0, 0.03, budget) if budget > 0.03 else (1.0, budget))
    assert named in str(err.value)
    assert not out.exists()  # refused before its folder, data or runs
    if budget < 0.03:
        assert "a budget of 0.0243 or more gives each a row" in str(err.value)


def test_one_seed_is_given_without_a_spread() -> None:
    """One seed's standard deviation is no 0: its cell said "± 0.0000 (x-x)"."""
    run = {"method": "unified", "budget": 0.1, "parameters": 10, "test_log_loss": 0.5}
    one = markdown(summarize([{**run, "test_auc": 0.7}]), "synthetic", "dlrm", "")
    assert "| 1 | 0.7000 | 0.5000 |" in one and "±" not in one.splitlines()[-1]
    two = markdown(summarize([{**run, "test_auc": a} for a in (0.7, 0.8)]), "synthetic", "", "")
    assert "| 2 | 0.7500 ± 0.0707 (0.7000-0.8000) | 0.5000 ± 0.0000 |" in two


def test_a_failed_run_trains_again_and_a_diverged_one_does_not() -> None:
    assert failed_to_run({"error": "rank 1 was killed by SIGKILL"})
    assert failed_to_run({"error": "rank 0 failed: DataSourceError: part-0.parquet: ..."})
    assert not failed_to_run({"error": "TrainingDiverged: rank 0: loss nan at step 3"})
    assert not failed_to_run({"test_auc": 0.8})
    # as older dist_trains recorded a divergence (a review): within a rank's failure, or
    # TrainingDiverged's message alone
    assert not failed_to_run({"error": "rank 0 failed: TrainingDiverged: step 3: ..."})
    assert not failed_to_run({"error": "step 3: the training loss is nan on rank 0; ..."})


def test_a_failed_run_is_trained_again_twice_then_kept_as_failed() -> None:
    """Only runs whose every record failed, each once with its newest record, and not once
    it trained: every rerun after a retry that trained said it "trained again" (a review);
    and a failure that repeats (out of memory) is not trained again without end."""
    killed = {"error": "rank 1 was killed by SIGKILL"}
    done = [
        {"name": "a", **killed},
        {"name": "b", **killed},
        {"name": "b", "test_auc": 0.8},  # retried, and trained
        {"name": "c", **killed},
        {"name": "c", **killed, "seconds": 2},
        {"name": "d", **killed},
        {"name": "d", **killed},
        {"name": "d", **killed},
        {"name": "e", "error": "TrainingDiverged: step 3"},
        {"name": "other", **killed},  # not an arm of this sweep
    ]
    again, given_up = to_train_again(done, {"a", "b", "c", "d", "e"})
    assert sorted(again) == ["a", "c"] and again["c"]["seconds"] == 2
    assert given_up == ["d"]


def test_a_diverged_seed_makes_its_groups_figures_nan() -> None:
    runs = [
        {
            "method": "unified",
            "budget": 0.1,
            "parameters": 10,
            "test_auc": auc,
            "test_log_loss": 0.5,
        }
        for auc in (0.8, float("nan"), 0.7)
    ]
    (row,) = summarize(runs)
    assert all(math.isnan(row[f"test_auc_{k}"]) for k in ("mean", "std", "min", "max"))
    assert row["test_log_loss_mean"] == 0.5


def test_another_datasets_runs_or_the_users_data_paths_are_refused(tmp_path: Path) -> None:
    """Into an --out of Adult runs, a synthetic sweep replaced their run folders and summary
    files; data paths of the user's were replaced by the dataset's, unsaid."""
    row = {**_RUN, "dataset": "adult", "name": "unified-b1-s0", "config": "x"}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ConfigError, match=r"holds runs of another dataset \(adult\)"):
        run_sweep("synthetic", tmp_path, budgets=(1.0,))
    mine = ["data.train_path=/my/train", "data.test_path=/my/test"]
    with pytest.raises(ConfigError, match=r"data.train_path=/my/train: the sweep trains on"):
        run_sweep("synthetic", tmp_path / "fresh", overrides=mine, budgets=(1.0,))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "fresh" / "data").exists()
    # the value to leave: Adult's config names its data (null, suggested, then failed as
    # generated data its features cannot read; a review's finding)
    with pytest.raises(ConfigError, match=r"leave data.train_path as data/adult/train \(its"):
        run_sweep("adult", tmp_path / "a", overrides=mine, budgets=(1.0,))
    with pytest.raises(ConfigError, match=r"leave data.train_path as null"):
        run_sweep("synthetic", tmp_path / "fresh", overrides=mine, budgets=(1.0,))
    # a config that names no data (generated data's null) is no path of the user's: the
    # adult sweep with default.yaml said "data.train_path=None: ...; drop the path"
    from dist_train.sweep import prepare

    base = prepare("adult", str(DATASETS["synthetic"]), [], tmp_path / "adult")
    assert base.data.train_path == str(tmp_path / "adult" / "data" / "train")


def test_budgets_name_their_runs_apart() -> None:
    """``0.3`` and ``0.3000001`` both named runs ``b0.3`` (one's records taken as the other's);
    ``1e6`` named ``b1e+06``, which names refuse."""
    with pytest.raises(ValueError, match=r"budgets 0.3 and 0.3000001 both name runs b0.3"):
        arms((0.3, 0.3000001), (0,))
    assert {a.name for a in arms((1e6,), (0,)) if a.method == "unified"} == {"unified-b1e06-s0"}


def test_a_run_recorded_without_figures_reads_back_as_nan(tmp_path: Path) -> None:
    """A failed arm (a diverged one) is recorded with null figures, strict JSON's NaN."""
    from dist_train.sweep import _results

    log = tmp_path / "results.jsonl"
    row = {**_RUN, "name": "unified-b1-s0", "test_auc": None, "test_log_loss": None, "error": "x"}
    log.write_text(json.dumps(row) + "\n")
    (got,) = _results(log)
    assert math.isnan(got["test_auc"]) and math.isnan(got["test_log_loss"])


def test_a_record_goes_on_a_line_of_its_own_after_a_hand_edit(tmp_path: Path) -> None:
    """A results file whose last line lost its newline (a run's line removed by hand, as
    the docs say to train it again) took the next record on that line: two runs on one,
    and the line's removal then lost both (a helper's audit)."""
    from dist_train.sweep import _results, append_line

    log = tmp_path / "results.jsonl"
    first = {**_RUN, "name": "unified-b1-s0"}
    log.write_text(json.dumps(first))  # no newline after it
    append_line(log, json.dumps({**_RUN, "name": "unified-b1-s1"}))
    append_line(log, json.dumps({**_RUN, "name": "unified-b1-s2"}))
    assert [r["name"] for r in _results(log)] == ["unified-b1-s0", "unified-b1-s1", "unified-b1-s2"]
    new = tmp_path / "new.jsonl"
    append_line(new, "{}")
    assert new.read_text() == "{}\n"


def test_the_sweeps_folder_is_a_path_as_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sweep --out "'sq"` failed: `--set output_dir='sq/runs: not valid YAML` (the path went
    through an override unquoted); the data's generation printed nothing for seconds."""
    from dist_train.sweep import prepare

    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    out = tmp_path / "'sq: #x"
    base = prepare("synthetic", None, small, out, progress=True)
    assert base.output_dir == str(out / "runs")
    assert base.data.train_path == str(out / "data" / "train")
    assert "generating 3,072 synthetic rows" in capsys.readouterr().err


def test_a_record_without_its_dataset_is_not_taken_for_another_dataset(tmp_path: Path) -> None:
    from dist_train.sweep import _results

    log = tmp_path / "results.jsonl"
    log.write_text(json.dumps({**_RUN, "name": "unified-b1-s0", "config": "another"}) + "\n")
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    # not "runs of another dataset (None)": the record meets the runs' own checks
    with pytest.raises(ConfigError, match="trained under another job config"):
        run_sweep("synthetic", tmp_path, overrides=small, budgets=(1.0,))
    assert _results(log)[0]["name"] == "unified-b1-s0"
    # refused before the data were written: the recorded runs' data stay theirs
    assert not (tmp_path / "data").exists()


def test_the_arms_save_no_checkpoints_whatever_the_job_config_asks(tmp_path: Path) -> None:
    """A job config that saved checkpoints (into one checkpoint.dir, or each arm's own)
    failed the second arm, or an arm trained again after an interruption, with a traceback:
    a fresh run beside checkpoints is refused."""
    from dist_train.sweep import prepare

    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    saves = ["checkpoint.every_steps=2", f"checkpoint.dir={tmp_path / 'shared'}"]
    base = prepare("synthetic", None, [*small, *saves, "checkpoint.resume=latest"], tmp_path)
    ckpt = base.checkpoint
    assert (ckpt.every_steps, ckpt.save_at_end, ckpt.resume, ckpt.dir) == (None, False, None, None)


def test_adult_replaces_its_own_files_and_never_a_users(tmp_path: Path) -> None:
    """`convert adult --out D` deleted a user's Parquet files in D/train and D/test."""
    from dist_train.data.listing import DataSourceError

    (tmp_path / "test").mkdir()
    mine = tmp_path / "test" / "my_holdout.parquet"
    pq.write_table(pa.table({"x": [1]}), mine)
    with pytest.raises(DataSourceError, match=r"my_holdout.parquet: .* did not write"):
        convert_adult(tmp_path)
    assert mine.is_file()
    mine.unlink()
    convert_adult(tmp_path)
    convert_adult(tmp_path, seed=1)  # its own files: replaced
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    # a folder of `convert criteo`'s layout (one part-00000.parquet a split) is a user's,
    # and so is one beside a user's adult.json: the conversion took both for its own
    (tmp_path / "adult.json").unlink()
    with pytest.raises(DataSourceError, match=r"part-00000.parquet: .* did not write"):
        convert_adult(tmp_path, seed=2)
    (tmp_path / "adult.json").write_text('{"mine": true}')
    with pytest.raises(DataSourceError, match=r"adult.json: not a record this command wrote"):
        convert_adult(tmp_path, seed=2)
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    assert (tmp_path / "adult.json").read_text() == '{"mine": true}'  # it was replaced


def test_an_arm_no_plan_fits_is_named_before_any_arm_trains(tmp_path: Path) -> None:
    """--budgets 1e6 (refused since as past the exact tables, check_budgets): the first arm
    trained, then the sweep stopped at the hashing trick's table that fits nowhere,
    recording nothing. Every arm is planned first (run_sweep calls this before training)."""
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    named = r"sweep arm hashing_trick-b1e06-s0: .*fits nowhere.*nothing was trained"
    base = dataset_config("synthetic", None, small)[0]
    with pytest.raises(ConfigError, match=named):
        _check_plans(base, [Arm("hashing_trick", 1e6, 0)], "cpu")


def test_a_device_the_machine_lacks_is_one_line_before_any_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sweep --set train.device=cuda` without GPUs generated the data, then ended in a
    DeviceError's traceback (a review's finding)."""
    import torch

    from dist_train.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has the GPUs")
    out = tmp_path / "sweep"
    args = ["sweep", "--budgets", "1", "--seeds", "0", "--out", str(out)]
    assert main([*args, "--set", "train.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "error: device: train.device=cuda needs one GPU per rank" in err, err
    assert "Traceback" not in err and not (out / "data").exists()


def test_the_budgets_count_the_values_the_generated_data_hold() -> None:
    """The budgets came from the features' declared cardinalities, not the generated data's:
    with data.synthetic.max_cardinality=1000 the columns held 5,893 values against the
    324,475 declared, so a "3% budget" held 165% of them and collisionless 55x its tables
    (a review's finding). On generated data the columns' own counts are taken, and said."""
    from dist_train.sweep import vocabulary

    job, changed = dataset_config("synthetic", None, ["data.synthetic.max_cardinality=1000"])
    made = job.data.synthetic.column_cardinalities()
    assert [f.cardinality for f in job.features] == made and vocabulary(job) == sum(made)
    assert changed[0] == "C2 14 -> 12" and len(changed) == 25  # C1 keeps its 10
    assert dataset_config("synthetic", None, [])[1] == []  # the default job's agree


def test_the_plots_axis_names_each_budgets_parameters(tmp_path: Path) -> None:
    """Labels on decades alone left a sweep of 1.56M to 5.19M parameters with no number on
    its axis (a review's finding)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dist_train.sweep import plot

    shown: list[list[str]] = []
    real = plt.Figure.savefig

    def labels_then_save(fig: plt.Figure, *args: object, **kw: object) -> None:
        shown.append([t.get_text() for t in fig.axes[0].get_xticklabels()])
        real(fig, *args, **kw)  # type: ignore[arg-type]

    rows = [
        {"method": m, "budget": b, "parameters": p, "test_auc_mean": 0.8, "test_auc_std": 0.0}
        for m, b, p in [("collisionless", 1, 5_191_600), ("unified", 0.3, 1_557_472)]
    ]
    patch = pytest.MonkeyPatch()
    patch.setattr(plt.Figure, "savefig", labels_then_save)
    try:
        plot(rows, "synthetic", tmp_path / "sweep.png")
    finally:
        patch.undo()
    assert shown == [["1.56M", "5.19M"]]


def test_a_ticks_label_rounds_into_the_next_unit() -> None:
    from dist_train.sweep import _short

    assert [_short(n) for n in (120, 3_952, 999_600, 155_744, 1_234_567_890)] == [
        "120",
        "3.95k",
        "1M",  # 1e+03k before
        "156k",
        "1.23G",  # 1.23e+03M before
    ]


def test_the_arms_device_is_the_processes_launchers_not_a_ray_clusters() -> None:
    """The device was asked of the job's launcher before prepare set the arms' (processes):
    a job config's launcher=ray with ray.address joined that cluster, and with none there
    failed in a traceback (a helper's audit)."""
    from dist_train.sweep import _device

    job = load_config(overrides=["launcher=ray", "ray.address=127.0.0.1:1"])
    assert _device(job) == "cpu"


def test_a_summary_file_it_cannot_write_is_named_before_training(tmp_path: Path) -> None:
    """A folder named sweep.png was found after every arm had trained (a helper's audit)."""
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    (tmp_path / "sweep.png").mkdir()
    with pytest.raises(ConfigError, match=r"sweep.png: a folder, where the sweep writes its"):
        run_sweep("synthetic", tmp_path, overrides=small, budgets=(1.0,))
    assert not (tmp_path / "runs").exists()  # nothing trained

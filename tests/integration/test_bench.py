"""The benchmarks run end to end on the tiny job and report every figure they promise."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dist_train.bench import synthetic_train_data, variant
from dist_train.bench import train as bench_train
from dist_train.bench.openmp import PROBE_REGIONS, SLEEPING_WAITS_PER_REGION
from dist_train.cli.main import main
from dist_train.config.load import load_config
from dist_train.launchers.processes import run_processes
from dist_train.train import table_rows
from planners.cores import usable_cores
from planners.topology import CPU_PRESET, save_topology
from tests.conftest import small_config
from tests.workers import (
    bench_dense_optimizers,
    openmp_waits_after_each_bench_system,
    peer_steps_by_exchange,
    sparse_means_by_hand_and_by_gloo,
    step_cpu_of_a_busy_and_a_sleeping_rank,
    sustained_rates_with_a_slow_rank,
)

TINY = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml")
DEFAULT = str(Path(__file__).resolve().parents[2] / "launch" / "configs" / "default.yaml")


def test_bench_embeddings_reports_every_kind(tmp_path: Path) -> None:
    out = tmp_path / "emb.json"
    args = [
        "bench",
        "embeddings",
        "--config",
        TINY,
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "data.synthetic.string_columns=[]",
        # other values than the features declare (10, 100, 1,000, 5,000): the
        # collisionless table sized by the declared ones made params/collisionless off
        "--set",
        "data.synthetic.cardinalities=[10,100,500,2000]",
        "--lrs",
        "0.01",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["unified", "hashing_trick", "collisionless"]
    # a row a value and chunk (C3 and C4 in 2 chunks), dim 8
    assert rows[2]["embedding_parameters"] == (10 + 100 + 2 * 500 + 2 * 2000) * 8
    # each kind learned (0.75-0.76 measured on the tiny job; chance is 0.5)
    assert all(0.65 < r["test_auc"] <= 1.0 and r["examples_per_second"] > 0 for r in rows)


def test_bench_planner_reports_ratios_and_fidelity(tmp_path: Path) -> None:
    out = tmp_path / "planner.json"
    # The CPU preset as the topology file: the bench's own calibration (what `dist-train
    # calibrate` does, tested in tests/unit/test_planner.py) would take most of the test.
    topology = tmp_path / "topology.json"
    save_topology(CPU_PRESET, topology)
    args = ["bench", "planner", "--config", TINY, "--set", f"output_dir={tmp_path}"]
    args += ["--set", f"sharding.topology={topology}"]
    assert main([*args, "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["ranks"] for r in result["versus_torchrec"]] == [2, 4]
    for row in result["versus_torchrec"]:
        assert row["step_time_ratio_torchrec_over_ours"] > 0
        assert row["memory_ratio_torchrec_over_ours"] > 0
    types = [(r["ranks"], r["sharding_type"]) for r in result["fidelity"]]
    assert (4, "grid_shard") in types and (2, "data_parallel") in types
    assert all(r["measured_step_seconds"] > 0 for r in result["fidelity"])
    assert (4, "groups of 1") in types and (4, "groups of 2") in types  # 2D plans
    assert result["measured_2d_over_1d_4_ranks"] > 0

    # The reported ranking agreement is the one the fidelity rows imply (Kendall's tau-a: a
    # tied pair counts as neither agreeing nor disagreeing): over the 1D types, and with 2D.
    def tau(rows: list[dict[str, Any]]) -> float:
        est = [r["estimated_step_seconds"] for r in rows]
        meas = [r["measured_step_seconds"] for r in rows]
        pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))]
        agree = sum((est[i] - est[j]) * (meas[i] - meas[j]) > 0 for i, j in pairs)
        disagree = sum((est[i] - est[j]) * (meas[i] - meas[j]) < 0 for i, j in pairs)
        return (agree - disagree) / len(pairs)

    two = [r for r in result["fidelity"] if r["ranks"] == 2]
    one_d = [r for r in two if not r["sharding_type"].startswith("groups of")]
    assert len(one_d) < len(two)
    assert result["ranking_kendall_tau_2_ranks"] == pytest.approx(tau(one_d))
    assert result["ranking_kendall_tau_with_2d_2_ranks"] == pytest.approx(tau(two))
    assert isinstance(result["pick_is_measured_fastest_allowed_4_ranks"], bool)
    for row in result["versus_torchrec"]:  # measured peak memory beside the estimate
        assert row["ours_measured_peak_memory_bytes"] > 0
        assert row["ours_estimated_peak_memory_bytes"] > 0


def test_bench_checkpoint_reports_throughput_against_the_disk(tmp_path: Path) -> None:
    out = tmp_path / "ckpt.json"
    args = ["bench", "checkpoint", "--config", TINY, "--set", f"output_dir={tmp_path}"]
    smoke = ["--rows", "50000", "--rounds", "1", "--stall-rounds", "0", "--no-recovery"]
    assert main([*args, *smoke, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["checkpoint_bytes"] >= 50000 * 8 * 4  # the table alone (tiny: dim 8)
    for ours, disk in (("save", "write"), ("load", "read")):
        ratio = result[f"{ours}_bytes_per_second"] / result[f"disk_{disk}_bytes_per_second"]
        assert result[f"{ours}_over_disk_{disk}"] == pytest.approx(ratio)
        assert result[f"disk_{disk}_bytes_per_second"] > 1e6  # a disk, not a stalled write
        plain = result[f"plain_dcp_{ours}_bytes_per_second"]
        key = "load_verified_over_plain" if ours == "load" else "save_with_digests_over_plain"
        assert result[key] == pytest.approx(result[f"{ours}_bytes_per_second"] / plain)


def test_bench_pipeline_trains_the_same_steps_as_the_plain_loop(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    args = ["bench", "pipeline", "--config", TINY, "--set", f"output_dir={tmp_path}"]
    assert main([*args, "--ranks", "2", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["system"], r["ranks"]) for r in rows] == [("unified", 2), ("hashing_trick", 2)]
    for r in rows:
        # the same batches, the same model: the input dist moved, the numbers did not
        assert r["max_loss_difference"] <= 1e-6
        median, low, high = r["pipeline_speedup"]
        assert 0 < low <= median <= high
        assert r["plain_step_seconds"] > 0 and r["pipeline_step_seconds"] > 0


def test_bench_train_reports_every_system_mode_and_the_roofline(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    args = ["bench", "train", "--config", TINY, "--set", f"output_dir={tmp_path}"]
    assert main([*args, "--ranks", "2", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peer_exchange"] == "ddp"
    rows = result["results"]
    assert {(r["system"], r["mode"], r["ranks"]) for r in rows} == {
        (s, m, n)
        for s in ("unified", "hashing_trick", "torchrec", "pytorch")
        for m in ("step", "end_to_end")
        for n in (2,)
    }
    for r in rows:
        assert r["examples_per_second_min"] <= r["examples_per_second"]
        assert r["examples_per_second"] <= r["examples_per_second_max"]
        assert r["max_rank_memory_bytes"] > 0 and r["embedding_parameters"] > 0
    # equal budgets: the per-feature tables hold the unified table's parameters (to rounding)
    params = {r["system"]: r["embedding_parameters"] for r in rows}
    assert abs(params["hashing_trick"] - params["unified"]) <= 0.01 * params["unified"]
    assert params["torchrec"] == params["pytorch"] == params["hashing_trick"]
    median, low, high = result["ratios"]["unified_over_pytorch_step_2_ranks"]
    assert 0 < low <= median <= high
    median, low, high = result["ratios"]["hashing_trick_over_torchrec_end_to_end_2_ranks"]
    assert 0 < low <= median <= high
    (roofline,) = result["roofline"]
    terms = roofline["floor_seconds"]
    assert terms["floor"] == pytest.approx(sum(v for k, v in terms.items() if k != "floor"))
    assert terms["all_to_all"] > 0 and terms["all_reduce"] > 0
    assert roofline["measured_over_floor"] > 1.0  # a floor is below what runs
    median, low, high = roofline["measured_over_floor_spread"]
    assert low <= median == roofline["measured_over_floor"] <= high
    median, low, high = roofline["busy_cores"]
    assert 0 < low <= median <= high <= 1.05 * roofline["cores"]
    # the dense network alone does part of unified's step's work (all of it but the tables)
    assert 0 < roofline["dense_only_step_seconds"] < roofline["measured_step_seconds"]
    median, low, high = roofline["dense_only_over_dense_floor"]
    assert 1.0 < low <= median <= high  # the dense terms are a floor under the dense network
    median, low, high = roofline["pytorch_over_dense_only"]
    assert 1 < low <= median <= high
    # one thread a rank: no team forms, and no system may leave the workers asleep
    assert roofline["openmp_waits"] <= SLEEPING_WAITS_PER_REGION * PROBE_REGIONS
    assert roofline["openmp_probe_regions"] == PROBE_REGIONS
    # every system's turn started from an idle process (no prefetch refill left running)
    assert roofline["busy_waits"] == 0
    # ours on each rank's own cores; each peer as it ran faster in the warm-up's trials
    (affinity,) = result["affinity"]
    if CORES > 1:
        assert affinity["pinned"]["unified"] and affinity["pinned"]["hashing_trick"]
        trials = affinity["pinned_over_free"]
        assert set(trials) == {"unified", "hashing_trick", "torchrec", "pytorch"}
        for peer in ("torchrec", "pytorch"):
            assert affinity["pinned"][peer] == (trials[peer] <= 1.0)
    assert {r["system"]: r["pinned"] for r in rows} == affinity["pinned"]


# threads the test may run without oversubscribing this process's cores
CORES = usable_cores()


@pytest.mark.skipif(CORES < 2, reason="one core: no OpenMP workers")
@pytest.mark.skipif(
    bool({"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ)),
    reason="the probe assumes libgomp's default spinning",
)
@pytest.mark.parametrize("world", [1, 2])
def test_no_bench_system_stops_the_openmp_workers_spinning(tmp_path: Path, world: int) -> None:
    """Every system shares the bench's processes: none may leave OpenMP teams on threads of
    its own (gloo's sparse all-reduce did, the peer's on more than one rank), which make
    libgomp put every worker to sleep between parallel regions and slow every system's step
    about 1.5x."""
    # the default job's shapes: on the tiny job the old peer opened no team (its gradients
    # too small for ATen to split), and this test passed with it
    cfg = variant(load_config(DEFAULT), [f"output_dir={tmp_path}"], "omp")
    cfgs = bench_train.system_configs(cfg)
    data = synthetic_train_data(cfg, 8 * world * cfg.train.batch_size, "omp-data")
    raw = {s: c.model_dump(mode="json") for s, c in cfgs.items()}
    ranks = run_processes(
        openmp_waits_after_each_bench_system,
        (raw, bench_train.system_plans(cfgs, world), data),
        world_size=world,
        # every rank 2 threads at least: a team needs 2, whatever this machine's cores
        threads_per_rank=max(2, CORES // world),
        pin_cores=False,  # the team's 2 threads on 2 cores, also at 2 ranks
    )
    sleeping = SLEEPING_WAITS_PER_REGION * PROBE_REGIONS
    for waits in ranks:
        assert waits["control"] > 2.5 * sleeping, str(waits)  # the probe sees another thread's team
        assert all(waits[s] <= sleeping for s in ("before", *bench_train.SYSTEMS)), str(waits)


def test_the_peers_batched_exchange_averages_as_gloo_does() -> None:
    # rows repeat within a rank and across ranks; rank 2 has none
    rows = [[1, 4, 4, 9], [0, 4, 9, 9, 9, 6], []]
    ranks = run_processes(sparse_means_by_hand_and_by_gloo, (rows,), world_size=3)
    assert all(r["by_hand"] == ranks[0]["by_hand"] for r in ranks)  # replicas stay equal
    for r in ranks:
        assert r["by_hand"] == pytest.approx(r["by_gloo"], abs=1e-6)
    assert any(v != 0 for v in ranks[0]["by_hand"])


def test_the_peer_trains_alike_with_either_exchange(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    synthetic_train_data(cfg, 4 * cfg.train.batch_size, "data")
    cfg = variant(cfg, [], "peer")  # reads the data just written
    ranks = run_processes(peer_steps_by_exchange, (cfg.model_dump(mode="json"), 3), world_size=2)
    for r in ranks:
        assert r["losses"]["batched"] == pytest.approx(r["losses"]["ddp"], rel=1e-5)
        assert r["table_difference"] < 1e-6
    assert ranks[0]["batched_tables_sum"] == ranks[1]["batched_tables_sum"]  # replicas equal


def test_the_roofline_rates_are_every_ranks_together_at_the_slowest_ranks_pace() -> None:
    # rank 1's calls take 50 ms, rank 0's none: rank 0 shares the window with rank 1, so its
    # rate is at most 20 calls a second, not the thousands its own calls would give
    rates = run_processes(sustained_rates_with_a_slow_rank, ([0.0, 0.05],), world_size=2)
    assert all(0 < r <= 20.0 for r in rates)
    assert rates[0] == rates[1]


def test_the_steps_busy_cores_count_every_ranks_cpu_and_no_waiting() -> None:
    # a thread of rank 0 spins through 3 steps of 0.1 s of its CPU time, rank 1 sleeps
    # through them: 0.3 s of CPU in all, never more than one core's worth
    for wall, cpu in run_processes(step_cpu_of_a_busy_and_a_sleeping_rank, (0.1,), world_size=2):
        assert 0.3 <= cpu <= 0.45
        assert cpu <= 1.1 * wall


@pytest.mark.parametrize(("dense_optimizer", "name"), [("sgd", "SGD"), ("adam", "Adam")])
def test_bench_train_peer_and_dense_alone_use_the_jobs_dense_optimizer(
    tmp_path: Path, dense_optimizer: str, name: str
) -> None:
    """The same dense optimizer for every system: the plain-PyTorch peer's dense network and
    the dense-alone timing take ``train.dense_optimizer``, as ours; the peer's tables keep
    torch's Adagrad (sparse gradients)."""
    cfg = small_config(tmp_path, [f"train.dense_optimizer={dense_optimizer}"])
    raw = cfg.model_dump(mode="json")
    (built,) = run_processes(bench_dense_optimizers, (raw,), world_size=1)
    assert built == {"pytorch": ["Adagrad", name], "dense_only": [name], "pooling": ["sum"]}


@pytest.mark.parametrize(
    ("overrides", "tables", "pooling"),
    [
        (["embedding.optimizer.type=sgd", "embedding.pooling=mean"], "SGD", "mean"),
        (["embedding.optimizer.type=adam"], "SparseAdam", "sum"),
    ],
)
def test_bench_train_peer_takes_the_jobs_pooling_and_embedding_optimizer(
    tmp_path: Path, overrides: list[str], tables: str, pooling: str
) -> None:
    """The plain-PyTorch peer pools and updates its tables as the job's embeddings do; it
    used to sum and run Adagrad whatever the job said."""
    raw = small_config(tmp_path, overrides).model_dump(mode="json")
    (built,) = run_processes(bench_dense_optimizers, (raw,), world_size=1)
    assert built["pytorch"][0] == tables and built["pooling"] == [pooling]


def test_bench_kernel_reports_bandwidth_against_copy(tmp_path: Path) -> None:
    out = tmp_path / "kernel.json"
    args = ["bench", "kernel", "--dims", "16,32", "--batches", "256", "--rounds", "1"]
    assert main([*args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["dim"], r["batch"]) for r in rows] == [(16, 256), (32, 256)]
    for r in rows:
        # no order between the two: one round on a shared machine is one sample each (a
        # fresh-clone run measured the forward at 4.6 ms, its forward + backward at 0.9 ms)
        assert r["forward_backward_seconds"] > 0 and r["forward_seconds"] > 0
        assert 0 < r["forward_over_copy"] and 0 < r["forward_backward_over_copy"]
        assert r["one_feature_forward_backward_seconds"] > 0 and r["shared_over_one_feature"] > 0
        # the C lookup and update beside them, where the extension is built
        if table_rows._native is not None:
            assert r["c_forward_backward_seconds"] > 0 and r["one_feature_over_c"] > 0
        else:
            assert "c_forward_backward_seconds" not in r


def test_bench_interaction_times_torch_and_every_native_variant(tmp_path: Path) -> None:
    from dist_train.models.dot_interaction import native_variant, native_variants

    out = tmp_path / "interaction.json"
    args = ["bench", "interaction", "--config", TINY, "--threads", "1,2", "--rounds", "1"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    impls = ["torch", *native_variants()]
    assert [(r["threads"], r["implementation"]) for r in report["rows"]] == [
        (t, i) for t in (1, 2) for i in impls
    ]
    for r in report["rows"]:
        assert r["forward_seconds"][0] > 0 and r["forward_backward_seconds"][0] > 0
        assert r["forward_torch_over_this"] > 0 and r["forward_backward_torch_over_this"] > 0
    # the bench leaves the widest variant selected, as the import found it
    assert native_variant() == (native_variants() or [None])[0]


def test_sweep_on_adult_writes_table_plot_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--dataset", "adult", "--budgets", "0.1", "--seeds", "0"]
    args += ["--set", "train.epochs=1", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "sweep.json").read_text())
    rows = summary["rows"]
    # which model made the figures (the paper's Table 1 is DCN-v2's): said with the dataset
    assert summary["model"] == "dlrm"
    assert set(summary["model_settings"]) == {"bottom_mlp", "top_mlp", "interaction"}
    # and its settings: a sweep of other layers was told apart only by its runs' configs
    assert (out / "sweep.md").read_text().startswith("Dataset: adult; model: dlrm (bottom_mlp=")
    assert {r["method"] for r in rows} == {
        "collisionless",
        "hashing_trick",
        "multiplexing",
        "unified",
    }
    assert all(0.5 < r["test_auc_mean"] <= 1.0 and r["seeds"] == 1 for r in rows)
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "| unified | 0.1 |" in (out / "sweep.md").read_text()
    # the budget is the tables': unified's second chunks feed DLRM more vectors, a larger
    # network the table said nothing of (a review's finding)
    dense = {r["method"]: r["dense_parameters"] for r in rows}
    assert dense["unified"] == 14_121 and dense["hashing_trick"] == dense["collisionless"] == 8_169
    assert "| embedding parameters | dense parameters |" in (out / "sweep.md").read_text()
    # what the figures were trained on: a 1-epoch sweep's header was the published one's
    assert summary["training"]["train_rows"] == 39_074 and summary["training"]["epochs"] == 1
    assert (
        "Trained on 39,074 rows (1 epoch(s) of 256 examples per rank, 2 ranks)"
        in (out / "sweep.md").read_text()
    )
    runs = (out / "results.jsonl").read_text()
    # every arm is on record: nothing trains again, and no device is asked for (a machine
    # without the sweep's GPUs could not write its summary; a review's finding)
    from dist_train import sweep

    def no_device(*_: object) -> None:
        raise AssertionError("a device was asked for with nothing to train")

    monkeypatch.setattr(sweep, "_device", no_device)
    assert main(args) == 0
    assert (out / "results.jsonl").read_text() == runs
    monkeypatch.undo()
    # a run whose rank was killed (out of memory, a lost machine) trains again on a rerun:
    # recorded as failed, its group read nan for good (a review's finding)
    records = [json.loads(line) for line in runs.splitlines()]
    killed = {**records[0], "test_auc": None, "test_log_loss": None}
    killed["error"] = "rank 1 was killed by SIGKILL"
    (out / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [killed, *records[1:]])
    )
    capsys.readouterr()
    assert main(args) == 0
    assert "failed without diverging (" in capsys.readouterr().out
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == 5 and again[-1]["name"] == killed["name"] and "error" not in again[-1]
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert all(0.5 < r["test_auc_mean"] <= 1.0 for r in rows)


def test_a_sweep_arm_that_fails_is_recorded_and_the_rest_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A diverging arm ended the sweep with a traceback, the arms after it untrained, and a
    rerun tried it first again: it could never finish. Every arm failing (here) exits 1,
    its table written: it exited 0, and a script could not tell (a helper's audit). With
    -q the table is all it prints: each run's line came too."""
    out = tmp_path / "sweep"
    small = ["data.synthetic.num_train_rows=2048", "data.synthetic.num_test_rows=1024"]
    diverge = ["train.dense_optimizer=sgd", "train.dense_learning_rate=1e30"]
    args = ["sweep", "-q", "--dataset", "synthetic", "--budgets", "1", "--seeds", "0"]
    args += ["--out", str(out)]
    for item in [*small, *diverge]:
        args += ["--set", item]
    assert main(args) == 1
    printed = capsys.readouterr()
    said = printed.err
    assert "[sweep]" not in printed.out and "| unified | 1 |" in printed.out, printed.out
    assert "Traceback" not in said
    assert "error: every run of the sweep failed (4, their errors in" in said
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert f"the first, {records[0]['name']}: TrainingDiverged" in said
    assert len(records) == 4  # every arm ran, each recorded
    assert all("TrainingDiverged" in r["error"] and r["test_auc"] is None for r in records)
    rows = json.loads((out / "sweep.json").read_text())["rows"]  # strict JSON: null, no NaN
    assert {r["method"] for r in rows} == {
        "collisionless",
        "hashing_trick",
        "multiplexing",
        "unified",
    }
    assert all(r["test_auc_mean"] is None for r in rows)

"""2D plans: the group layout, the planner's choice of group size, its weak scaling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.distributed import _remote_device
from torchrec.distributed.types import EnumerableShardingSpec

from dist_train.cli.main import main
from dist_train.config.load import load_config
from dist_train.dry_run import dry_run
from dist_train.train.replicas import GroupLayout, place_in_group
from dist_train.train.sharding import planner_for_config
from planners.groups import group_sizes
from planners.types import PlanningError
from tests.conftest import small_config

DEFAULT = Path(__file__).resolve().parents[2] / "launch" / "configs" / "default.yaml"


def test_group_layout_is_consecutive_groups_and_strided_replicas() -> None:
    layout = GroupLayout(world_size=8, group_size=4)
    assert layout.num_groups == 2 and layout.is_2d
    assert layout.sharding_group(1) == [4, 5, 6, 7]
    assert layout.replica_group(1) == [1, 5]
    assert not GroupLayout(4, 4).is_2d
    with pytest.raises(ValueError, match="does not divide the world size 6"):
        GroupLayout(6, 4)


def test_group_sizes_tile_the_nodes() -> None:
    assert group_sizes(1, 8) == [1, 2, 4]
    assert group_sizes(4, 2) == [1, 2, 4]  # divisors of a node, then 2 whole nodes
    assert group_sizes(6, 8)[-2:] == [16, 24]
    assert 8 * 4 not in group_sizes(6, 8)  # 4 nodes do not divide 6


def test_a_group_plan_moves_to_the_ranks_of_each_group(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, ["sharding.type=row_wise", "sharding.group_size=2"])
    planner, model = planner_for_config(cfg, 4, 4)
    plan = planner.plan(model, [])
    moved = place_in_group(plan, GroupLayout(4, 2), rank=3)
    for module_plan in moved.plan.values():
        for ps in module_plan.values():  # type: ignore[attr-defined]
            assert ps.ranks == [2, 3]
            assert isinstance(ps.sharding_spec, EnumerableShardingSpec)
            ranks = [s.placement.rank() for s in ps.sharding_spec.shards]
            assert ranks == [2, 3]
            assert isinstance(ps.sharding_spec.shards[0].placement, _remote_device)
    # the original plan is untouched
    first = next(iter(next(iter(plan.plan.values())).values()))  # type: ignore[attr-defined]
    assert first.ranks == [0, 1]


def test_an_explicit_group_size_must_tile_the_nodes(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, ["sharding.group_size=3"])
    planner, _ = planner_for_config(cfg, 4, 4)
    with pytest.raises(PlanningError, match="groups of 3 do not tile"):
        planner.choice()


def _chosen_ms(nodes: int, overrides: list[str]) -> float:
    cfg = load_config(DEFAULT, ["sharding.memory_per_rank=80GiB", *overrides])
    planner, _ = planner_for_config(cfg, nodes * 8, 8, "cuda")
    return planner.choice().step_seconds * 1e3


def test_the_default_job_weak_scales_in_the_planners_model() -> None:
    """Fixed per-rank batch: the plan chosen at 512 x 8 ranks is estimated at most 1.5x the
    one at 8 x 8. A pooled row_wise 1D plan grows about 50x (every pooled shard serves the
    global batch); the chosen plan is no slower than the best 1D plan (row_wise_unpooled over
    all ranks, which does not grow), and than the best 2D plan."""
    at_8, at_512 = _chosen_ms(8, []), _chosen_ms(512, [])
    assert at_512 <= 1.5 * at_8
    assert _chosen_ms(512, ["sharding.group_size=4096"]) >= at_512
    assert _chosen_ms(512, ["sharding.group_size=8"]) >= at_512
    sharded_1d = ["sharding.group_size=4096", "sharding.type=row_wise"]
    assert _chosen_ms(512, sharded_1d) > 20 * _chosen_ms(8, sharded_1d)


def test_syncing_less_often_costs_less(tmp_path: Path) -> None:
    every_step = _chosen_ms(64, ["sharding.group_size=8"])
    every_8 = _chosen_ms(64, ["sharding.group_size=8", "sharding.sync_every=8"])
    assert every_8 < every_step


def test_plan_json_carries_the_group_size_and_the_weak_scaling_table(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "--config",
            str(DEFAULT),
            "--nodes",
            "64",
            "--ranks-per-node",
            "8",
            "--device",
            "cuda",
            "--memory-per-rank",
            "80GiB",
            "--no-torchrec",
            # pooled row_wise, whose 1D plan grows with the world: the planner picks 2D
            "--set",
            "sharding.type=row_wise",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["group_size"] < 512 and report["num_replicas"] == 512 // report["group_size"]
    assert [r["num_nodes"] for r in report["weak_scaling"]] == [1, 8, 64, 512]
    assert {g["group_size"] for g in report["groups"]} >= {1, 2, 4}


def test_the_weak_scaling_rows_are_said_when_slow_and_can_be_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`plan` computes four more plans for its weak-scaling table, up to 512 nodes: for 200
    features about 4 minutes with nothing printed, and no way to leave them out."""
    from dist_train import dry_run as dry_run_module

    out = tmp_path / "plan.json"
    args = ["plan", "--config", str(DEFAULT), "--no-torchrec", "--json", str(out)]
    assert main([*args, "--no-weak-scaling"]) == 0
    assert "weak_scaling" not in json.loads(out.read_text())
    assert "weak scaling" not in capsys.readouterr().out
    monkeypatch.setattr(dry_run_module, "SLOW_PLAN_S", 0.0)  # every size taken as slow
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "plan: weak scaling at 8 node(s) x 2" in err and "at 512 node(s)" in err
    assert "at 1 node(s)" not in err  # said once a size was slow, before the next


def test_at_512_nodes_our_plan_is_no_slower_than_torchrecs_by_our_model() -> None:
    cfg = load_config(DEFAULT, ["sharding.memory_per_rank=80GiB"])
    report = dry_run(cfg, 512, 8, "cuda", with_torchrec=True, weak_scaling=False)
    theirs = report["torchrec"]["ours"]["estimated_step_seconds"]
    assert report["estimated_step_seconds"] <= theirs


def test_every_shard_names_the_gpu_its_rank_runs_on(tmp_path: Path) -> None:
    """Planned for 2 GPUs a node, a group of 2 moved to ranks 2 and 3 of a 4-GPU node runs on
    cuda:2 and cuda:3, not the cuda:0 and cuda:1 the plan named (torch refuses that)."""
    from dist_train.train.replicas import on_rank_devices

    cfg = small_config(tmp_path, ["sharding.type=row_wise", "sharding.group_size=2"])
    planner, model = planner_for_config(cfg, 4, 2, "cuda")
    moved = place_in_group(planner.plan(model, []), GroupLayout(4, 2), rank=3)
    placed = on_rank_devices(moved, [f"cuda:{r}" for r in range(4)])
    for module_plan in placed.plan.values():
        for ps in module_plan.values():  # type: ignore[attr-defined]
            assert isinstance(ps.sharding_spec, EnumerableShardingSpec)
            names = [str(s.placement) for s in ps.sharding_spec.shards]
            assert names == ["rank:2/cuda:2", "rank:3/cuda:3"]


def test_plan_of_a_job_that_does_not_plan_at_every_size(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A group_size below the world size does not plan at 8 nodes (adam has no 2D merge):
    that row of the weak-scaling table says so, and the job's own plan is printed. The
    re-planning at 8 nodes failed the whole command, suggesting the 8-node world size."""
    out = tmp_path / "plan.json"
    args = ["plan", "--no-torchrec", "--json", str(out), "--set", "sharding.group_size=2"]
    assert main([*args, "--set", "embedding.optimizer.type=adam"]) == 0
    rows = json.loads(out.read_text())["weak_scaling"]
    assert "estimated_step_seconds" in rows[0]
    assert all("does not support embedding.optimizer.type=adam" in r["error"] for r in rows[1:])


def test_plan_is_for_the_jobs_device_and_names_a_bad_option(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Without --device, plan used cpu: a job of train.device=cuda was planned for CPU
    ranks, and with a topology of cuda ranks refused as one that "trains on cpu"."""
    out = tmp_path / "plan.json"
    base = ["plan", "--no-torchrec", "--json", str(out), "--memory-per-rank", "80GiB"]
    assert main([*base, "--set", "train.device=cuda"]) == 0
    assert json.loads(out.read_text())["topology"]["device_type"] == "cuda"
    assert main(base) == 0
    assert json.loads(out.read_text())["topology"]["device_type"] == "cpu"
    assert main(["plan", "--memory-per-rank", "10XB"]) == 2
    assert "error: --memory-per-rank: cannot read '10XB'" in capsys.readouterr().err


def test_a_group_larger_than_the_job_is_refused(tmp_path: Path) -> None:
    """It was planned as 1D, unsaid, where a group that does not tile the ranks is an
    error naming the sizes that do."""
    from dist_train.train.sharding import plan_for_config

    with pytest.raises(PlanningError, match=r"group_size=3 exceeds the job's 2 ranks"):
        plan_for_config(load_config(DEFAULT, ["sharding.group_size=3"]))
    assert not plan_for_config(load_config(DEFAULT, ["sharding.group_size=2"])).is_2d
    # and plan says so, where it printed a 1D plan (for the job's shape or the one given)
    assert main(["plan", "--no-torchrec", "--set", "sharding.group_size=3"]) == 1
    out = tmp_path / "plan.json"
    two = ["plan", "--no-torchrec", "--nodes", "2", "--json", str(out)]
    assert main([*two, "--set", "sharding.group_size=4"]) == 0
    # its weak-scaling row of 1 node (2 ranks) says so too, where it showed a 1D plan
    assert "exceeds the 2 ranks" in json.loads(out.read_text())["weak_scaling"][0]["error"]


def test_groups_are_weighed_where_no_1d_plan_fits(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """At 64 ranks of 300 MiB a pooled row_wise 1D plan fits nowhere (every shard serves the
    global batch) while groups do: `auto` and a fixed group size plan them, and `plan`
    reports the group plan with 1D's reason."""
    over = ["sharding.type=row_wise", "sharding.memory_per_rank=300MiB"]
    cfg = load_config(DEFAULT, over)
    planner, _ = planner_for_config(cfg, 64, 2)
    with pytest.raises(PlanningError, match="fits nowhere") as refused:
        planner.search()
    assert planner.choice().is_2d
    with pytest.raises(PlanningError) as again:  # searched once: the report asks again
        planner.search()
    assert again.value is refused.value
    fixed = load_config(DEFAULT, [*over, "sharding.group_size=2"])
    assert planner_for_config(fixed, 64, 2)[0].choice().group_size == 2
    args = ["--nodes", "32", "--ranks-per-node", "2", "--memory-per-rank", "300MiB"]
    sets = ["--set", "sharding.type=row_wise", "--set", "sharding.group_size=2"]
    code = main(["plan", "--no-torchrec", "--config", str(DEFAULT), *args, *sets])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "why: no 1D plan fits (table unified_0" in out and "groups of 2 do" in out


def test_a_group_size_no_placement_fits_names_why(tmp_path: Path) -> None:
    """column_wise at a dim no power-of-two split cuts into blocks of 4 or more columns: the
    group's reason, not min() of no candidates."""
    cfg = small_config(
        tmp_path, ["sharding.type=column_wise", "sharding.group_size=2", "embedding.dim=4"]
    )
    planner, _ = planner_for_config(cfg, 4, 4)
    with pytest.raises(PlanningError, match="group_size=2: column_wise cannot split table"):
        planner.choice()


def test_a_group_size_too_small_for_the_tables_gives_the_figures(tmp_path: Path) -> None:
    """A group size whose groups cannot hold the tables said `does not fit on 1 ranks`, with
    no figure and none of the leanest placement (the beam keeps the fastest)."""
    cfg = small_config(tmp_path, ["sharding.group_size=1", "embedding.num_rows=400000000"])
    planner, _ = planner_for_config(cfg, 2, 2)
    with pytest.raises(PlanningError) as refused:
        planner.choice()
    said = str(refused.value)
    assert "group_size=1: does not fit: " in said and "GiB usable" in said
    # the replica merge's copy counted and named, and the table: "the tables together need
    # more than the 1 ranks' 921.6 MiB" of a table of 750 MiB needing 1,463 (a planner audit)
    assert "on its fullest rank, holding unified_0 (" in said
    assert "of it the replica merge's copy of the rows and optimizer state it holds" in said
    # where the dense side alone fills a rank, no table is blamed (a review)
    tight = load_config(overrides=["sharding.group_size=2", "sharding.memory_per_rank=90MiB"])
    planner, _ = planner_for_config(tight, 8, 8)
    with pytest.raises(PlanningError, match=r"group_size=2: the dense network \("):
        planner.choice()


def test_a_hierarchical_type_asked_for_on_one_node_is_said_to_be_row_wise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On one node the options list says table_row_wise needs 2 nodes, yet a job that asks
    for it alone got it chosen, with no word of what it is there."""
    args = ["plan", "--config", str(DEFAULT), "--no-torchrec", "--no-weak-scaling"]
    assert main([*args, "--set", "sharding.type=table_row_wise"]) == 0
    out = capsys.readouterr().out
    assert "allows only this type (on one node it places the rows as row_wise does)" in out
    assert "table_row_wise    needs at least 2 nodes" not in out  # (it was chosen)
    assert main([*args, "--set", "sharding.type=row_wise"]) == 0
    assert "on one node it places" not in capsys.readouterr().out


def test_the_weak_scaling_row_of_the_jobs_own_shape_is_its_plan() -> None:
    """Under the processes launcher the job's simulated nodes share this machine's cores,
    as the plan above the table took them; its own row used the topology's cores and said
    another step (2.54 against 4.00 ms; a helper's audit)."""
    adult = DEFAULT.parent / "adult.yaml"
    over = ["launcher=processes", "ray.num_nodes=8", "ray.num_workers=16"]
    report = dry_run(load_config(adult, over), with_torchrec=False)
    (own,) = [r for r in report["weak_scaling"] if r["num_nodes"] == 8]
    assert own["estimated_step_seconds"] == report["estimated_step_seconds"]

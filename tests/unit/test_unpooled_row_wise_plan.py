"""row_wise_unpooled in the planner: its cost does not grow with the world, a plan never mixes
it with row_wise, it becomes TorchRec's row_wise, and it makes the 10^10-row job weak-scale
(docs/planner.md, "row_wise_unpooled")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

from dist_train.config.load import load_config
from dist_train.dry_run import dry_run
from dist_train.train.sharding import planner_for_config
from planners import placement as pl
from planners.cost_model import dense_costs, distinct_rows, latency_costs, table_costs
from planners.enumerator import candidates, uneven_row_wise
from planners.groups import best_group_plans
from planners.planner import (
    Choice,
    CostModelPlanner,
    parameter_sharding,
    plan_from_placements,
)
from planners.report import build_report, format_report
from planners.search import PlanEstimate, beam_search, search
from planners.topology import Topology, preset, resize
from planners.types import (
    SHARDING_TYPES,
    OptimizerState,
    PlanningError,
    RankCosts,
    TableLoad,
    Workload,
    compatible,
)

DEFAULT = Path(__file__).resolve().parents[2] / "launch" / "configs" / "default.yaml"
UNPOOLED, ROW_WISE = "row_wise_unpooled", "row_wise"
BIG = ["embedding.num_rows=10000000000", "embedding.dim=64"]


def _cuda(nodes: int, ranks: int = 8) -> Topology:
    return resize(preset("cuda"), num_nodes=nodes, ranks_per_node=ranks)


def _workload(
    *tables: TableLoad, batch: int = 2048, device: str = "cuda", skew: float = 1.1
) -> Workload:
    opt = OptimizerState.of("rowwise_adagrad", device)
    return Workload(tables, batch, opt, 50_000, 1, id_skew=skew)


TABLE = TableLoad("t", 10**10, 64, bags_per_sample=39, ids_per_sample=39.0)


def test_it_is_a_sharding_type_auto_may_use() -> None:
    assert UNPOOLED in SHARDING_TYPES
    assert not compatible(frozenset({ROW_WISE}), UNPOOLED)
    assert not compatible(frozenset({UNPOOLED, "table_wise"}), ROW_WISE)
    assert compatible(frozenset({UNPOOLED, "table_wise"}), UNPOOLED)
    assert compatible(frozenset({"grid_shard"}), UNPOOLED)


def test_unpooled_bytes_per_rank_do_not_grow_with_the_world() -> None:
    """64 vs 4,096 ranks of the cuda preset: per rank only the counts all-to-all
    (R x 8 bytes each way) grows; pooled row_wise's partial sums grow with R."""
    work = _workload(TABLE)
    small, large = _cuda(8), _cuda(512)

    def per_rank(topo: Topology, kind: str) -> RankCosts:
        return table_costs(pl.row_wise(TABLE, topo, sharding_type=kind), TABLE, work, topo)

    def counts(topo: Topology) -> float:
        return 2.0 * topo.world_size * 8

    at_64, at_world = per_rank(small, UNPOOLED), per_rank(large, UNPOOLED)
    # the distinct rows a rank's B L ids read (Zipf 1.1 over 10^10 rows: most of them)
    d = distinct_rows(TABLE, work)
    assert 0.3 * 2048 * 39 < d < 2048 * 39
    # rows out and in, vectors and their gradients out and in: D (1 - 1/R) x (2 x 8 + 4 x 4w)
    for topo, c in ((small, at_64), (large, at_world)):
        flat = d * (1 - 1 / topo.world_size) * (2 * 8 + 4 * 4 * TABLE.dim)
        # (TorchRec's even split: ceil(rows / R) each, the last rank a little less)
        np.testing.assert_allclose(c.comm_bytes - counts(topo), flat, rtol=1e-3)
    # the off-rank share, 1 - 1/R, is all that grows: 63/64 -> 4095/4096
    flat_64 = at_64.comm_bytes.max() - counts(small)
    assert at_world.comm_bytes.max() - counts(large) <= 1.02 * flat_64
    # time: what grows is the share of peers across the NIC (56/63 -> 4088/4095, 1.12x) and
    # the counts (27 us at 4,096 ranks)
    assert at_world.comm.max() <= 1.2 * at_64.comm.max()
    assert at_world.lookup.max() == pytest.approx(at_64.lookup.max(), rel=1e-3)
    assert at_world.memory.max() < at_64.memory.max()  # fewer rows per rank, same workspace
    pooled_64, pooled = per_rank(small, ROW_WISE), per_rank(large, ROW_WISE)
    assert pooled.comm_bytes.max() > 50 * pooled_64.comm_bytes.max()
    assert pooled.comm_bytes.max() > 1000 * at_world.comm_bytes.max()


def test_pooled_row_wise_wins_where_bags_pool_many_ids() -> None:
    """The model is not biased to unpooled: 2 ranks, 200 uniformly drawn ids per bag (few
    repeats), pooled sends partial sums of bags, unpooled one vector per distinct row."""
    table = TableLoad("t", 1_000_000_000, 64, bags_per_sample=1, ids_per_sample=200.0)
    topo, work = _cuda(1, 2), _workload(table, skew=0.0)
    pooled = table_costs(pl.row_wise(table, topo), table, work, topo)
    unpooled = table_costs(pl.row_wise_unpooled(table, topo), table, work, topo)
    assert pooled.comm_bytes.max() < unpooled.comm_bytes.max()
    assert pooled.step_seconds.max() < unpooled.step_seconds.max()
    assert search(work, topo, (ROW_WISE, UNPOOLED)).best.placements[0].sharding_type == ROW_WISE


def _two_kinds() -> tuple[Workload, Topology]:
    """A table whose bags pool 400 ids (pooled row_wise is cheaper: partial sums of bags) and
    one of single-id bags (unpooled is cheaper: no [R B, F w] partial sums), on 64 CPU-preset
    ranks, ids drawn uniformly (few repeats): the best plan if mixing were allowed would mix."""
    topo = resize(preset("cpu"), num_nodes=8, ranks_per_node=8, cores_per_node=64)
    work = _workload(
        TableLoad("pooling", 400_000, 16, bags_per_sample=1, ids_per_sample=400.0),
        TableLoad("single", 200_000, 16, bags_per_sample=30, ids_per_sample=30.0),
        batch=256,
        device="cpu",
        skew=0.0,
    )
    return work, topo


def test_a_plan_never_mixes_the_two_row_wise_types() -> None:
    work, topo = _two_kinds()
    mixed = [
        pl.row_wise(work.table("pooling"), topo),
        pl.row_wise_unpooled(work.table("single"), topo),
    ]
    cost = dense_costs(work, topo) + latency_costs({ROW_WISE, UNPOOLED}, topo)
    for p in mixed:
        cost = cost + table_costs(p, work.table(p.table), work, topo)
    for kind in (ROW_WISE, UNPOOLED):  # each table prefers its own kind
        name = "pooling" if kind == ROW_WISE else "single"
        t = work.table(name)
        other = UNPOOLED if kind == ROW_WISE else ROW_WISE
        mine = table_costs(pl.row_wise(t, topo, sharding_type=kind), t, work, topo)
        theirs = table_costs(pl.row_wise(t, topo, sharding_type=other), t, work, topo)
        assert mine.step_seconds.max() < theirs.step_seconds.max()
    allowed = frozenset({ROW_WISE, UNPOOLED})
    for plan in beam_search(work, topo, allowed):
        kinds = {p.sharding_type for p in plan.placements}
        assert len(kinds) == 1, kinds
    result = search(work, topo, tuple(allowed))
    assert len({p.sharding_type for p in result.best.placements}) == 1
    # the rule binds: mixed, the plan would be faster
    assert PlanEstimate.of(tuple(mixed), cost, topo, work).step_seconds < result.best.step_seconds
    # every type allowed: the beam, the per-type alternatives and the 2D group plans
    result = search(work, topo)
    plans = [result.best, *(a for a in result.alternatives.values() if not isinstance(a, str))]
    groups = best_group_plans(work, topo, frozenset(SHARDING_TYPES), 1)
    plans += [g.estimate for g in groups.values() if not isinstance(g, str)]
    assert any(UNPOOLED in {p.sharding_type for p in plan.placements} for plan in plans)
    for plan in plans:
        kinds = {p.sharding_type for p in plan.placements}
        assert not {ROW_WISE, UNPOOLED} <= kinds, plan.label
    # and a mixed plan cannot become a TorchRec plan
    with pytest.raises(PlanningError, match="may not mix"):
        plan_from_placements(torch.nn.Module(), mixed, work, topo, "fused")


def _ebc(rows: int, dim: int) -> EmbeddingBagCollection:
    cfg = EmbeddingBagConfig(name="t", embedding_dim=dim, num_embeddings=rows, feature_names=["f"])
    return EmbeddingBagCollection(tables=[cfg], device=torch.device("meta"))


def test_torchrec_sees_row_wise_with_the_same_shards() -> None:
    table = TableLoad("t", 1_000_003, 64, bags_per_sample=4, ids_per_sample=4.0)
    topo, work = _cuda(2, 4), _workload(table)
    sizes = [125_000] * 7 + [1_000_003 - 7 * 125_000]
    sizes[0], sizes[1] = sizes[0] - 1000, sizes[1] + 1000
    for split in (None, sizes):
        pooled, unpooled = pl.row_wise(table, topo, split), pl.row_wise_unpooled(table, topo, split)
        assert unpooled.shards == pooled.shards
        assert unpooled.label == pooled.label.replace(ROW_WISE, UNPOOLED, 1)
        for a, b in (
            (pooled, unpooled),
            (pl.with_cache(pooled, 0.2), pl.with_cache(unpooled, 0.2)),
        ):
            assert parameter_sharding(b, topo, "fused") == parameter_sharding(a, topo, "fused")
            assert parameter_sharding(b, topo, "fused").sharding_type == ROW_WISE
    plan = plan_from_placements(_ebc(table.rows, table.dim), [unpooled], work, topo, "fused")
    assert plan.plan[""]["t"] == parameter_sharding(pl.row_wise(table, topo, sizes), topo, "fused")  # type: ignore[index]


def test_candidates_even_uneven_and_cached_only_when_allowed() -> None:
    table = TableLoad("t", 50_000_000, 64, bags_per_sample=20, ids_per_sample=30.0)
    topo, work = _cuda(1), _workload(table)
    busy = dense_costs(work, topo)
    busy.lookup[0] += 1e-3  # rank 0 busier: an uneven split is offered
    offered = candidates(table, work, topo, busy, frozenset(SHARDING_TYPES))
    labels = {p.label for p in offered if p.sharding_type == UNPOOLED}
    assert {UNPOOLED, f"{UNPOOLED} (uneven)"} <= labels
    assert any(label.startswith(f"{UNPOOLED} + fused_uvm_caching") for label in labels)
    assert any(label.startswith(f"{UNPOOLED} (uneven) + fused_uvm_caching") for label in labels)
    uneven = uneven_row_wise(table, work, topo, busy, sharding_type=UNPOOLED)
    assert uneven is not None and uneven.shards[0].rows < uneven.shards[1].rows
    only_pooled = candidates(table, work, topo, busy, frozenset({ROW_WISE}))
    assert {p.sharding_type for p in only_pooled} == {ROW_WISE}
    assert {
        p.sharding_type for p in candidates(table, work, topo, busy, frozenset({UNPOOLED}))
    } == {UNPOOLED}


def test_uvm_cache_costs_apply_as_for_row_wise() -> None:
    table = TableLoad("t", 50_000_000, 64, bags_per_sample=20, ids_per_sample=30.0)
    topo, work = _cuda(1), _workload(table)
    pooled = pl.with_cache(pl.row_wise(table, topo), 0.2)
    unpooled = pl.with_cache(pl.row_wise_unpooled(table, topo), 0.2)
    a, b = table_costs(pooled, table, work, topo), table_costs(unpooled, table, work, topo)
    # the same kernel and host memory; the unpooled cache sees each distinct row once
    assert (b.cache <= a.cache).all() and (b.cache > 0.5 * a.cache).all()
    np.testing.assert_allclose(b.host_memory, a.host_memory)
    plain = table_costs(pl.row_wise_unpooled(table, topo), table, work, topo)
    pooled_plain = table_costs(pl.row_wise(table, topo), table, work, topo)
    assert (b.cache > 0).all() and b.memory.max() < plain.memory.max()
    # the cache swaps the same weight and state bytes for the same cache bytes in HBM
    np.testing.assert_allclose(b.memory - plain.memory, a.memory - pooled_plain.memory)
    np.testing.assert_allclose(b.cache + b.lookup, plain.cache + plain.lookup + b.cache)


def test_the_report_lists_it_and_what_torchrec_sees() -> None:
    topo, work = _cuda(8), _workload(TABLE)
    planner = CostModelPlanner(topo, work, group_size=topo.world_size)
    report = build_report(planner)
    assert report["placements"][0]["sharding_type"] == UNPOOLED
    assert report["placements"][0]["torchrec_sharding_type"] == ROW_WISE
    assert UNPOOLED in {a["sharding_type"] for a in report["alternatives"]}
    text = format_report(report)
    assert f"chosen: {UNPOOLED}" in text and "TorchRec plan: row_wise" in text
    assert f"  {UNPOOLED} " in text.split("options (every table with one type):")[1]
    assert "runner-up, grid_shard" in text


def _chosen(nodes: int, overrides: list[str]) -> Choice:
    cfg = load_config(DEFAULT, ["sharding.memory_per_rank=80GiB", *overrides])
    planner, _ = planner_for_config(cfg, nodes * 8, 8, "cuda")
    return planner.choice()


def test_the_ten_billion_row_table_weak_scales() -> None:
    """Issue 13: `dist-train plan --config launch/configs/default.yaml --nodes 512
    --ranks-per-node 8 --memory-per-rank 80GiB --device cuda --set
    embedding.num_rows=10000000000 --set embedding.dim=64`: the plan at 512 x 8 is estimated
    at most 1.5x the one at 8 x 8 (it was 25x: grid_shard, 3.42 -> 86.00 ms)."""
    at_8, at_512 = _chosen(8, BIG), _chosen(512, BIG)
    assert {p.sharding_type for p in at_512.placements} == {UNPOOLED}
    assert at_512.estimate.fits and not at_512.is_2d
    assert at_512.step_seconds <= 1.5 * at_8.step_seconds
    # what the trainer reads: the chosen placements name the unpooled tables
    assert [p.table for p in at_512.estimate.placements if p.sharding_type == UNPOOLED] == [
        "unified_0"
    ]


def test_at_512_nodes_the_big_table_plans_where_torchrecs_planner_finds_none() -> None:
    cfg = load_config(DEFAULT, ["sharding.memory_per_rank=80GiB", *BIG])
    report = dry_run(cfg, 512, 8, "cuda", with_torchrec=True, weak_scaling=False)
    # TorchRec's planner finds no plan for 2.4 TiB on 4,096 x 80 GB; ours places it
    assert "PlannerError" in report["torchrec"]["error"]
    assert report["placements"] and report["estimated_step_seconds"] > 0

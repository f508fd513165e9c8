"""The UVM caching kernel (fused_uvm_caching) in the planner: hit rate, when it is offered and
chosen, HBM vs host memory, its cost, and the TorchRec plan it becomes (docs/planner.md)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import CacheAlgorithm
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.distributed.utils import add_params_from_parameter_sharding

from dist_train.cli.main import main
from dist_train.embedding.layout import build_layout
from dist_train.train.sharding import build_model, plan_job, workload_for_config
from planners import groups, zipf
from planners import placement as pl
from planners import uvm_cache as uvm
from planners.cost_model import dense_costs, table_costs
from planners.enumerator import candidates
from planners.planner import parameter_sharding, plan_from_placements
from planners.search import beam_search, search
from planners.topology import (
    CPU_PRESET,
    CUDA_PRESET,
    load_topology,
    preset,
    resize,
    save_topology,
    topology_of,
)
from planners.types import (
    SHARDING_TYPES,
    OptimizerState,
    PlanningError,
    TableLoad,
    Workload,
)
from tests.conftest import small_config

GIB = 2**30


def _workload(
    rows: int, dim: int, optimizer: str = "rowwise_adagrad", skew: float = 1.1, clf: float = 0.2
) -> Workload:
    table = TableLoad("t0", rows, dim, bags_per_sample=20, ids_per_sample=30.0)
    return Workload((table,), 512, OptimizerState.of(optimizer, "cuda"), 50_000, 1, 0, skew, clf)


def _cuda(nodes: int = 1, ranks: int = 8, memory: int | None = None):
    return resize(
        preset("cuda"), num_nodes=nodes, ranks_per_node=ranks, memory_per_rank_bytes=memory
    )


# -- hit rate ------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 7, 1000, 10_000, 10_001, 123_457, 3_000_000])
@pytest.mark.parametrize("s", [0.0, 0.6, 1.0, 1.1, 2.0])
def test_harmonic_numbers_match_their_sums(rows: int, s: float) -> None:
    exact = float(np.sum(np.arange(1, rows + 1, dtype=np.float64) ** -s))
    assert zipf.generalized_harmonic(rows, s) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("rows", [50, 20_000, 2_000_000])
@pytest.mark.parametrize("c", [0.01, 0.2, 0.5])
@pytest.mark.parametrize("s", [0.0, 0.8, 1.1])
def test_hit_rate_is_the_share_of_the_top_rows(rows: int, c: float, s: float) -> None:
    p = np.arange(1, rows + 1, dtype=np.float64) ** -s
    top = math.floor(c * rows)
    assert uvm.zipf_hit_rate(rows, c, s) == pytest.approx(p[:top].sum() / p.sum(), abs=1e-9)
    assert uvm.zipf_hit_rate(rows, 0.0, s) == 0.0 and uvm.zipf_hit_rate(rows, 1.0, s) == 1.0


@pytest.mark.parametrize(("s", "c"), [(1.1, 0.2), (0.8, 0.05), (1.3, 0.01)])
def test_hit_rate_matches_a_simulated_lfu_cache(s: float, c: float) -> None:
    """Zipf(s) ids over 20,000 rows (in a shuffled order); an LFU cache keeps the c N rows
    most often seen in a warm-up stream; its hits on a fresh stream are the formula's."""
    rows, rng = 20_000, np.random.default_rng(0)
    weights = np.arange(1, rows + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights / weights.sum())
    order = rng.permutation(rows)

    def draw(n: int) -> np.ndarray:
        return order[np.minimum(np.searchsorted(cdf, rng.random(n)), rows - 1)]

    counts = np.bincount(draw(2_000_000), minlength=rows)
    cached = np.zeros(rows, dtype=bool)
    cached[np.argsort(-counts, kind="stable")[: math.floor(c * rows)]] = True
    simulated = cached[draw(1_000_000)].mean()
    assert simulated == pytest.approx(uvm.zipf_hit_rate(rows, c, s), abs=0.01)


# -- what is offered, what is chosen -------------------------------------------------------


def test_cached_candidates_only_on_cuda_with_host_memory() -> None:
    work = _workload(1_000_000, 64)
    allowed = frozenset(SHARDING_TYPES)

    def cached(topo) -> list[str]:
        base = dense_costs(work, topo)
        return [c.sharding_type for c in candidates(work.tables[0], work, topo, base, allowed)
                if c.cached]  # fmt: skip

    cpu = resize(preset("cpu"), num_nodes=1, ranks_per_node=4)
    assert cached(cpu) == []
    # even a CPU topology given host memory and a link: no UVM on CPU ranks
    assert cached(dataclasses.replace(cpu, host_memory_per_rank_bytes=10**12,
                                      host_to_device_bytes_per_second=1e10)) == []  # fmt: skip
    no_host = dataclasses.replace(_cuda(), host_memory_per_rank_bytes=None)
    assert cached(no_host) == []
    on_cuda = cached(_cuda())
    assert {"row_wise", "table_wise", "column_wise"} <= set(on_cuda)
    assert "data_parallel" not in on_cuda  # replicas run on the dense kernel
    # SGD and row-wise Adagrad are fused; a dense-kernel optimizer (Adam on CPU) is not
    dense = dataclasses.replace(work, optimizer=OptimizerState.of("adam", "cpu"))
    base = dense_costs(dense, _cuda())
    assert not any(c.cached for c in candidates(dense.tables[0], dense, _cuda(), base, allowed))


def test_a_table_that_fits_hbm_stays_there() -> None:
    topo = _cuda()
    result = search(_workload(50_000_000, 64), topo)  # 12.8 GB: fits 8 x 72 GiB
    assert not any(p.cached for p in result.best.placements)
    # the cached copy of the winner is offered, and slower: it adds the misses
    best = result.best.placements[0]
    work = _workload(50_000_000, 64)
    mine = table_costs(best, work.tables[0], work, topo)
    theirs = table_costs(pl.with_cache(best, 0.2), work.tables[0], work, topo)
    assert theirs.step_seconds.max() > mine.step_seconds.max()
    assert theirs.memory.max() < mine.memory.max()


def test_a_table_larger_than_hbm_plans_on_the_uvm_cache() -> None:
    """2e9 x 128 (954 GiB of weights) on 8 x 80 GB: nothing fits in HBM, so before this kernel
    the search failed; now the best plan caches it and fits both memories."""
    topo, work = _cuda(memory=80 * GIB), _workload(2_000_000_000, 128)
    no_host = dataclasses.replace(topo, host_memory_per_rank_bytes=None)
    with pytest.raises(PlanningError, match="fits nowhere"):
        search(work, no_host)
    best = search(work, topo).best
    assert best.fits and all(p.cached for p in best.placements)
    assert best.costs.memory.max() <= topo.usable_bytes_per_rank
    assert 0 < best.costs.host_memory.max() <= topo.usable_host_bytes_per_rank
    assert best.costs.cache.max() > 0


def test_host_memory_bounds_the_uvm_cache() -> None:
    topo = dataclasses.replace(_cuda(memory=80 * GIB), host_memory_per_rank_bytes=50 * 10**9)
    with pytest.raises(PlanningError, match="host memory"):
        search(_workload(2_000_000_000, 128), topo)


def test_groups_never_use_the_uvm_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """2D groups plan without the UVM kernel (the replica merge rewrites FBGEMM's weights
    directly), although the same search offers it in 1D."""
    work, topo, allowed = (
        _workload(200_000_000, 64),
        _cuda(memory=4 * GIB),
        frozenset(SHARDING_TYPES),
    )
    assert any(p.cached for p in beam_search(work, topo, allowed)[0].placements)
    assert not any(
        p.cached for p in beam_search(work, topo, allowed, offer_cache=False)[0].placements
    )
    seen: list[bool] = []

    def spy(*args: object, **kwargs: bool) -> list[object]:
        seen.append(kwargs.get("offer_cache", True))
        return beam_search(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(groups, "beam_search", spy)
    groups.best_group_plans(work, topo, allowed, 1)
    assert seen and not any(seen)


# -- memory and cost -----------------------------------------------------------------------


@pytest.mark.parametrize(("optimizer", "host_state", "device_state"), [
    ("rowwise_adagrad", 0, 4),  # FBGEMM keeps row-wise momentum on the device
    ("adam", 8 * 64, 0),  # Adam's two moments per element go to UVM (host)
])  # fmt: skip
def test_hbm_holds_the_cache_and_the_host_holds_the_shard(
    optimizer: str, host_state: int, device_state: int
) -> None:
    topo, work = _cuda(), _workload(8_000_000, 64, optimizer)
    table, even = work.tables[0], pl.row_wise(work.tables[0], topo)
    plain = table_costs(even, table, work, topo)
    cached = table_costs(pl.with_cache(even, 0.2), table, work, topo)
    rows = 1_000_000  # per rank
    slots = math.ceil(200_000 / 32) * 32
    cache_hbm = slots * (64 * 4 + 8) + rows * 4 + (rows + 1) * 8 + rows * device_state
    in_hbm = rows * 64 * 4 + work.optimizer.bytes_for(rows, 64)
    np.testing.assert_allclose(cached.memory - plain.memory, cache_hbm - in_hbm)
    np.testing.assert_allclose(cached.host_memory, rows * (64 * 4 + host_state))
    assert not plain.host_memory.any()


def test_misses_cross_the_host_link() -> None:
    topo, work = _cuda(), _workload(8_000_000, 64)
    table, even = work.tables[0], pl.row_wise(work.tables[0], topo)
    lookups = 8 * 512 * 30.0 / 8  # each rank reads its eighth of every sample's 30 ids
    hit = uvm.zipf_hit_rate(8_000_000, math.ceil(200_000 / 32) * 32 / 1_000_000, 1.1)
    misses = lookups * (1 - hit)
    expected = (
        misses * 256 / 5.5e10
        + (2 * misses * 256 + lookups * uvm.INDEX_BYTES_PER_LOOKUP) / 3.35e12
        + uvm.PREFETCH_SECONDS
    )
    cached = table_costs(pl.with_cache(even, 0.2), table, work, topo)
    np.testing.assert_allclose(cached.cache, expected, rtol=1e-9)
    # more skew, fewer misses; a cache of every row never misses
    skewed = dataclasses.replace(work, id_skew=1.5)
    assert table_costs(pl.with_cache(even, 0.2), table, skewed, topo).cache.max() < expected
    full = table_costs(pl.with_cache(even, 1.0), table, work, topo).cache
    np.testing.assert_allclose(
        full, lookups * uvm.INDEX_BYTES_PER_LOOKUP / 3.35e12 + uvm.PREFETCH_SECONDS
    )


# -- the TorchRec plan ---------------------------------------------------------------------


def _ebc(rows: int, dim: int) -> EmbeddingBagCollection:
    cfg = EmbeddingBagConfig(name="t0", num_embeddings=rows, embedding_dim=dim, feature_names=["f"])
    return EmbeddingBagCollection([cfg], device=torch.device("meta"))


def test_the_plan_runs_cached_tables_on_fused_uvm_caching() -> None:
    topo, work = _cuda(), _workload(1_000_000, 64)
    even = pl.row_wise(work.tables[0], topo)
    plan = plan_from_placements(
        _ebc(1_000_000, 64), [pl.with_cache(even, 0.2)], work, topo, "fused"
    )
    ps = plan.plan[""]["t0"]  # type: ignore[index]
    assert ps.compute_kernel == "fused_uvm_caching"
    assert ps.cache_params.load_factor == 0.2
    assert ps.cache_params.algorithm == CacheAlgorithm.LFU
    # TorchRec hands these to FBGEMM's TBE as fused params
    fused = add_params_from_parameter_sharding({"learning_rate": 0.1}, ps)
    assert fused["cache_load_factor"] == 0.2 and fused["cache_algorithm"] == CacheAlgorithm.LFU
    plain = parameter_sharding(even, topo, "fused")
    assert plain.compute_kernel == "fused" and plain.cache_params is None
    cpu = resize(preset("cpu"), num_nodes=1, ranks_per_node=8)
    with pytest.raises(PlanningError, match="needs CUDA"):
        parameter_sharding(pl.with_cache(even, 0.2), cpu, "fused")


def test_the_job_config_reaches_the_planner_and_the_plan(tmp_path: Path) -> None:
    overrides = [
        "embedding.num_rows=80000000",  # 2.56 GB at dim 8
        "sharding.memory_per_rank=512MiB",
        "sharding.cache_load_factor=0.1",
        "sharding.id_skew=0.9",
    ]
    cfg = small_config(tmp_path, overrides)
    plan = plan_job(cfg, 4, 4, "cuda")
    tables = [ps for module in plan.sharding_plan.plan.values() for ps in module.values()]  # type: ignore[attr-defined]
    assert {ps.compute_kernel for ps in tables} == {"fused_uvm_caching"}
    assert {ps.cache_params.load_factor for ps in tables} == {0.1}
    # on CPU ranks the same job has no host offload: it does not fit
    with pytest.raises(PlanningError, match="fits nowhere"):
        plan_job(small_config(tmp_path, overrides), 4, 4, "cpu")
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    work = workload_for_config(cfg, layout, build_model(cfg, layout), "cuda")
    assert (work.id_skew, work.cache_load_factor) == (0.9, 0.1)


def test_the_dry_run_reports_the_kernel_and_its_hit_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    args = ["plan", "--nodes", "1", "--ranks-per-node", "8", "--device", "cuda",
            "--memory-per-rank", "80GiB", "--set", "embedding.num_rows=2000000000",
            "--set", "embedding.dim=128", "--no-torchrec", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fused_uvm_caching" in text and "estimated hit rate" in text
    assert "no plan fits with every table in HBM" in text
    report = json.loads(out.read_text())
    (cache,) = report["uvm_caching"]
    assert cache["compute_kernel"] == "fused_uvm_caching" and 0.5 < cache["hit_rate"] < 1
    # its misses are the cost model's: row_wise_unpooled asks each distinct row once (the
    # report counted every id, as pooled lookups do: 2.7x the misses)
    assert report["placements"][0]["sharding_type"] == "row_wise_unpooled"
    rows_read = cache["misses_per_step"] / (1 - cache["hit_rate"])
    hbm = 2 * cache["miss_bytes_per_step"] + rows_read * uvm.INDEX_BYTES_PER_LOOKUP
    modelled = cache["host_link_seconds"] + hbm / 3.35e12 + uvm.PREFETCH_SECONDS
    assert cache["cache_seconds"] == pytest.approx(modelled, rel=1e-9)
    assert report["placements"][0]["compute_kernel"] == "fused_uvm_caching"
    assert max(report["per_rank_host_memory_bytes"]) > 0


# -- topology files --------------------------------------------------------------------------


def test_topology_files_without_host_memory_still_load(tmp_path: Path) -> None:
    old = CUDA_PRESET.model_dump(mode="json")
    del old["host_memory_per_rank_bytes"], old["host_to_device_bytes_per_second"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    topo = load_topology(path)
    assert topo.device_type == "cuda" and not topo.host_offload
    assert topo.usable_host_bytes_per_rank == 0
    save_topology(CUDA_PRESET, tmp_path / "new.json")
    assert load_topology(tmp_path / "new.json").host_offload
    assert not topology_of(CPU_PRESET).host_offload


def test_the_lfu_cache_limit_counts_every_cached_table_on_a_rank() -> None:
    """One TBE holds a rank's cached shards of a sharding type, and FBGEMM asserts its LFU
    cache under 2^24 - 1 sets. Three row_wise tables of 1.5e9 rows on one 140 GiB rank fit
    the memories with two of them cached at 20%: 600M slots in one TBE, each table alone
    300M. The plan passed, and FBGEMM would have asserted at the model's build."""
    tables = tuple(TableLoad(f"t{i}", 1_500_000_000, 8, 20, 30.0) for i in range(3))
    work = Workload(tables, 512, OptimizerState.of("rowwise_adagrad", "cuda"), 50_000, 1, 0)
    with pytest.raises(PlanningError, match="LFU cache holds in one TBE"):
        search(work, _cuda(ranks=1, memory=140 * GIB), ("row_wise",))
    best = search(work, _cuda(ranks=2, memory=80 * GIB), ("row_wise",)).best
    assert best.fits and any(p.cached for p in best.placements)
    assert 0 < uvm.most_cache_slots(best.placements) <= uvm.LFU_MAX_SLOTS
    # other sharding types are other TBEs: their slots do not add up
    one = pl.with_cache(pl.row_wise(tables[0], _cuda(ranks=1)), 0.2)
    other = dataclasses.replace(one, table="t1", sharding_type="table_wise")
    assert uvm.most_cache_slots([one, other]) == uvm.most_cache_slots([one])

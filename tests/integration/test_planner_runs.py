"""Every sharding type the planner emits trains in a real multi-process gloo run exactly like
one process does, and a two-node topology gets a hierarchical plan that runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dist_train.data.synthetic import generate
from dist_train.launchers.processes import run_processes
from dist_train.train.sharding import plan_job
from planners.topology import CPU_PRESET, save_topology
from tests.conftest import small_config
from tests.workers import assemble_tables, collective_plan_placements, train_fixed_batches

NUM_STEPS = 12
GLOBAL_BATCH = 256
# SGD: the fused TBE update and the dense kernel's torch SGD (data_parallel) are the same
# rule, so every type can be compared with one reference.
OVERRIDES = ["embedding.optimizer.type=sgd", "embedding.optimizer.learning_rate=0.05"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("planner_runs")
    cfg = small_config(tmp, [*OVERRIDES, "sharding.type=row_wise"])
    data = generate(cfg.data.synthetic, tmp / "data", progress=False)
    args = (cfg.model_dump(mode="json"), str(data.train_dir), NUM_STEPS, GLOBAL_BATCH)
    return {
        "tmp": tmp,
        "data": str(data.train_dir),
        "reference": run_processes(train_fixed_batches, args, world_size=1),
    }


def _assert_same(reference: list[dict[str, Any]], run: list[dict[str, Any]]) -> None:
    ref_losses, losses = np.array(reference[0]["losses"]), np.array(run[0]["losses"])
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=1e-5)
    assert ref_losses[-3:].mean() < ref_losses[:3].mean()  # it learned
    ref_tables, tables = assemble_tables(reference), assemble_tables(run)
    assert ref_tables and ref_tables.keys() == tables.keys()
    for key in ref_tables:
        np.testing.assert_allclose(tables[key], ref_tables[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("sharding_type", "world", "per_node"),
    [
        ("row_wise", 2, 2),
        ("column_wise", 2, 2),
        ("table_wise", 2, 2),
        ("data_parallel", 2, 2),
        ("table_row_wise", 4, 2),
        ("grid_shard", 4, 2),
    ],
)
def test_each_type_matches_one_process(
    setup: dict[str, Any], sharding_type: str, world: int, per_node: int
) -> None:
    cfg = small_config(setup["tmp"], [*OVERRIDES, f"sharding.type={sharding_type}"])
    args = (cfg.model_dump(mode="json"), setup["data"], NUM_STEPS, GLOBAL_BATCH, per_node)
    run = run_processes(train_fixed_batches, args, world_size=world)
    assert {p["type"] for p in run[0]["placements"].values()} == {sharding_type}
    _assert_same(setup["reference"], run)


def test_uneven_row_wise_matches_one_process(setup: dict[str, Any]) -> None:
    cfg = small_config(setup["tmp"], OVERRIDES)
    rows = cfg.embedding.num_rows
    sizes = [rows // 4, rows - rows // 4]  # 1000 and 3000: the even split is 2000 + 2000
    args = (cfg.model_dump(mode="json"), setup["data"], NUM_STEPS, GLOBAL_BATCH, None, sizes)
    run = run_processes(train_fixed_batches, args, world_size=2)
    held = sorted((offsets[0], arr.shape[0]) for _, offsets, arr in run[1]["shards"])
    assert held == [(rows // 4, rows - rows // 4)]  # rank 1 really holds the bigger shard
    _assert_same(setup["reference"], run)


def test_two_nodes_on_a_slow_network_get_a_row_split_plan_that_runs(
    setup: dict[str, Any],
) -> None:
    # A network between the two nodes 100x slower than inside one (and a core per rank), for
    # every collective: replicating the table (data_parallel, or 2D groups of one node) would
    # all-reduce it across that link each step. The planner splits rows instead: inside a node
    # (table_row_wise) or, cheaper by the model since only ids and one vector per id cross
    # the link, over all ranks unpooled. Either keeps whole rows, so the run must match one
    # process exactly.
    slow = CPU_PRESET.model_copy(
        update={
            "cores_per_node": 8,
            "inter_node": CPU_PRESET.inter_node.model_copy(
                update={
                    "all_to_all_bytes_per_second": 1.5e7,
                    "reduce_scatter_bytes_per_second": 5e6,
                    "all_gather_bytes_per_second": 5e6,
                    "all_reduce_bytes_per_second": 5e6,
                }
            ),
        }
    )
    topo_file = Path(setup["tmp"]) / "slow_network.json"
    save_topology(slow, topo_file)
    lr = "embedding.optimizer.learning_rate=0.05"
    cfg = small_config(setup["tmp"], [lr, "sharding.type=auto", f"sharding.topology={topo_file}"])
    plan = plan_job(cfg, world_size=4, local_world_size=2)
    assert plan.label in {"table_row_wise", "row_wise_unpooled"}, json.dumps(plan.placements())
    args = (cfg.model_dump(mode="json"), setup["data"], NUM_STEPS, GLOBAL_BATCH, 2)
    run = run_processes(train_fixed_batches, args, world_size=4)
    assert run[0]["placements"] == plan.placements()
    one_rank = small_config(setup["tmp"], [lr, "sharding.type=row_wise"])
    reference = run_processes(
        train_fixed_batches,
        (one_rank.model_dump(mode="json"), setup["data"], NUM_STEPS, GLOBAL_BATCH),
        world_size=1,
    )
    _assert_same(reference, run)


def test_collective_plan_is_made_on_rank_0_and_shared(setup: dict[str, Any]) -> None:
    cfg = small_config(setup["tmp"], OVERRIDES)
    out = run_processes(collective_plan_placements, (cfg.model_dump(mode="json"),), world_size=2)
    assert out[0]["placements"] == out[1]["placements"]
    assert [o["searched_here"] for o in out] == [True, False]

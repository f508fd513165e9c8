"""A 2-process gloo row-wise run equals a 1-process run: same losses and final table rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dist_train.data.synthetic import generate
from dist_train.embedding.init import init_bound, init_rows
from dist_train.launchers.processes import run_processes
from tests.conftest import small_config
from tests.workers import assemble_tables, train_fixed_batches

NUM_STEPS = 24
GLOBAL_BATCH = 256


@pytest.mark.parametrize(
    ("optimizer", "eps"),
    [
        ("rowwise_adagrad", None),  # FBGEMM fused TBE
        ("sgd", None),  # FBGEMM fused TBE
        # Adam runs on the dense kernel on CPU (FBGEMM's CPU TBE lacks it). It divides each
        # element's step by its own gradient history, so an element's first step is about
        # lr / 2 whatever the gradient's size: at eps 1e-8 the sign of a near-zero gradient,
        # which float rounding (sums in another order over 2 ranks) can flip, moves the
        # element by lr, and the runs part. Measured: two 1-rank runs differing only in the
        # float rounding of the DLRM interaction's backward parted from step 12, losses by
        # 7e-4 and tables by 0.3 after 24 steps. eps 1e-4 damps the steps of gradients below
        # it; the runs then agree within 1e-6.
        ("adam", 1e-4),
    ],
)
def test_two_rank_row_wise_matches_one_rank(
    tmp_path: Path, optimizer: str, eps: float | None
) -> None:
    cfg = small_config(
        tmp_path,
        [
            "sharding.type=row_wise",
            f"embedding.optimizer.type={optimizer}",
            "embedding.num_tables=2",
            "embedding.optimizer.learning_rate=0.05",
            *([f"embedding.optimizer.eps={eps}"] if eps else []),
        ],
    )
    data = generate(cfg.data.synthetic, tmp_path / "data", progress=False)
    raw = cfg.model_dump(mode="json")
    args = (raw, str(data.train_dir), NUM_STEPS, GLOBAL_BATCH)
    one = run_processes(train_fixed_batches, args, world_size=1)
    two = run_processes(train_fixed_batches, args, world_size=2)

    # one rank trains its dense network outside DDP (dense_parallel.OneRankDense), two in DDP
    assert one[0]["dense_wrapper"] == "DLRM"
    assert {r["dense_wrapper"] for r in two} == {"DistributedDataParallel"}
    losses_1, losses_2 = np.array(one[0]["losses"]), np.array(two[0]["losses"])
    assert len(losses_1) == NUM_STEPS
    np.testing.assert_allclose(losses_2, losses_1, rtol=0, atol=1e-5)
    assert losses_1[-5:].mean() < losses_1[:5].mean()  # it learned something

    # Each of the 2 ranks holds half the rows of every table.
    assert {len(r["shards"]) for r in two} == {2}
    tables_1, tables_2 = assemble_tables(one), assemble_tables(two)
    assert tables_1.keys() == tables_2.keys() and len(tables_1) == 2
    for key in tables_1:
        np.testing.assert_allclose(tables_2[key], tables_1[key], rtol=0, atol=1e-5)
        # Training moved rows away from their (plan-independent) initial values.
        rows, dim = tables_1[key].shape
        bound = init_bound(cfg.embedding)
        initial = init_rows(key.split(".")[-2], rows, dim, cfg.seed, 0, rows, bound).numpy()
        moved = np.abs(tables_1[key] - initial).max(axis=1) > 1e-4
        assert moved.sum() > 50

"""A hashing_trick job (one table per feature) whose ranks' kernels run the C lookup and
update (dist_train/train/tables_in_c.py) trains as the same job on FBGEMM's kernels
(``sharding.kernels=fbgemm``), table_wise over two ranks and on one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dist_train.data.synthetic import generate
from dist_train.launchers.processes import run_processes
from tests.conftest import small_config
from tests.workers import assemble_tables, train_fixed_batches

NUM_STEPS, GLOBAL_BATCH = 12, 256
# A row's gradients summed in another order than FBGEMM's sorted one: the same bounds as
# tests/integration/test_shared_tables.py's
TABLE_ATOL, LOSS_ATOL = 5e-6, 1e-6


@pytest.mark.parametrize("world", [1, 2])
def test_per_feature_tables_in_c_train_as_fbgemms(tmp_path: Path, world: int) -> None:
    base = ["embedding.kind=hashing_trick", "sharding.type=table_wise"]
    cfg = small_config(tmp_path, ["embedding.optimizer.learning_rate=0.05", *base])
    data = str(generate(cfg.data.synthetic, tmp_path / "data", progress=False).train_dir)
    runs = {}
    for kernels in ("fbgemm", "auto"):
        raw = small_config(tmp_path, [*base, f"sharding.kernels={kernels}"]).model_dump(mode="json")
        raw["embedding"]["optimizer"]["learning_rate"] = 0.05
        args = (raw, data, NUM_STEPS, GLOBAL_BATCH, None, None, "cpu", False, True)
        runs[kernels] = run_processes(train_fixed_batches, args, world_size=world)
    theirs, ours = runs["fbgemm"], runs["auto"]
    assert all("TablesInCFusedEmbeddingBag" in r["kernel_classes"] for r in ours)
    assert all("TablesInCFusedEmbeddingBag" not in r["kernel_classes"] for r in theirs)
    a, b = np.array(theirs[0]["losses"]), np.array(ours[0]["losses"])
    assert len(a) == NUM_STEPS and a[-3:].mean() < a[:3].mean()  # it learned
    np.testing.assert_allclose(b, a, rtol=0, atol=LOSS_ATOL)
    ta, tb = assemble_tables(theirs), assemble_tables(ours)
    assert ta.keys() == tb.keys() and len(ta) == len(cfg.features)
    for key in ta:
        np.testing.assert_allclose(tb[key], ta[key], rtol=0, atol=TABLE_ATOL)


def test_a_row_wise_shard_of_no_rows_trains_on_fbgemms_kernel(tmp_path: Path) -> None:
    """A collisionless feature of one value, row_wise on 2 ranks, left rank 1 a shard of no
    rows, and the C kernel, taken for it, refused it inside the worker (a helper's audit)."""
    from dist_train.config.load import load_config
    from dist_train.driver import run_job

    tiny = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
    one_value = [
        "launcher=processes",
        "train.max_steps=2",
        f"output_dir={tmp_path}",
        "embedding.kind=collisionless",
        "data.synthetic.string_columns=[]",
        "data.synthetic.cardinalities=[1,100,1000,5000]",
        "features.C1.cardinality=1",
    ]
    summary = run_job(load_config(tiny, one_value))
    assert summary["steps"] == 2 and summary["sharding"]["collisionless_C1"]["type"] == "row_wise"

"""Shared fixtures: small configs and generated data (never downloaded)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

from dist_train.config.load import DEFAULT_CONFIG, parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.synthetic import GeneratedData, generate
from dist_train.logs import LOG


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test module is imported, torch, TorchRec and Ray with them: frozen, their
    objects stay out of the collector's passes (in the unit tier, 8.1 s of collections
    before, 6.1 s after, by a gc.callbacks probe)."""
    gc.freeze()


def small_config(tmp_path: Path | str, overrides: list[str] | None = None) -> JobConfig:
    """The default job shrunk to test size (8 features, small table, little data)."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["output_dir"] = str(tmp_path)
    raw["features"] = [
        {"name": "C1", "chunks": 1, "cardinality": 10},
        {"name": "C2", "chunks": 2, "cardinality": 100},
        {"name": "C3", "chunks": 1, "cardinality": 1000},
        {"name": "C4", "chunks": 2, "cardinality": 5000},
    ]
    raw["data"]["synthetic"] = {
        "num_train_rows": 8192,
        "num_test_rows": 4096,
        "num_dense": 4,
        "num_categorical": 4,
        "cardinalities": [10, 100, 1000, 5000],
        "multi_hot_columns": ["C4"],
        "string_columns": ["C1"],
        "num_train_files": 2,
        "rows_per_group": 1024,
    }
    raw["embedding"]["num_rows"] = 4000
    raw["embedding"]["dim"] = 8
    raw["train"].update(batch_size=256, eval_batch_size=1024, log_every=5)
    return parse_config(apply_overrides(raw, overrides or []), "small_config")


@pytest.fixture(autouse=True)
def _restore_log_level() -> Iterator[None]:
    """Put ``dist_train``'s level back after each test: a CLI test run with ``-q`` sets it to
    WARNING, and a later test in the same process would lose its INFO lines (and hand
    ``quiet`` to its workers, which read the level through ``verbosity()``)."""
    level = LOG.level
    yield
    LOG.setLevel(level)


ONE_FEATURE_JOB = [
    "data.dense_columns=[I1]",
    "features=[{name: C1, cardinality: 10}]",
    "embedding.num_tables=1",
    "data.synthetic.string_columns=[]",
    "train.batch_size=4",
]
"""Overrides of the tiny job for :func:`write_one_feature_parquet`'s file."""


def write_one_feature_parquet(path: Path, rows: int, row_group_size: int) -> None:
    """A Parquet file of ``rows`` rows of a label, one dense column (I1) and one categorical
    feature of 10 values (C1), for :data:`ONE_FEATURE_JOB`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "label": pa.array([i % 2 for i in range(rows)], pa.int64()),
            "I1": pa.array([float(i) for i in range(rows)]),
            "C1": pa.array([i % 10 for i in range(rows)], pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def small_cfg(tmp_path: Path) -> JobConfig:
    return small_config(tmp_path)


@pytest.fixture
def small_data(tmp_path: Path, small_cfg: JobConfig) -> GeneratedData:
    return generate(small_cfg.data.synthetic, tmp_path / "data", progress=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-rank gloo group (as a job of one worker has), for code that runs collectives."""
    if dist.is_initialized():
        yield
        return
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()

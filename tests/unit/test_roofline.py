"""The roofline's collective term: the fewer bytes of pooled and unpooled lookups."""

from __future__ import annotations

import pytest

from dist_train.bench.roofline import all_to_all_bytes
from planners.cost_model import distinct_rows
from planners.types import OptimizerState, TableLoad, Workload


def _workload(table: TableLoad, skew: float) -> Workload:
    state = OptimizerState.of("rowwise_adagrad", "cpu")
    return Workload((table,), 1000, state, 0, 0, id_skew=skew)


def test_a_table_of_few_hot_rows_sends_each_distinct_row_once() -> None:
    # 1000 examples x 20 ids over 100 rows: at most 100 rows cross, not 1000 x 20 ids and
    # 1000 pooled vectors each way
    table = TableLoad("t", rows=100, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    workload = _workload(table, 1.1)
    assert distinct_rows(table, workload) <= 100
    expected = distinct_rows(table, workload) * (8 + 2 * 16 * 4)
    assert all_to_all_bytes(table, workload) == pytest.approx(expected)


def test_a_table_of_cold_multi_hot_bags_sends_ids_and_pooled_vectors() -> None:
    # 20 uniform ids a bag over 10^9 rows: nearly every id is its own row, so one pooled
    # vector and its gradient a bag beat 20 rows each way
    table = TableLoad("t", rows=10**9, dim=16, bags_per_sample=1, ids_per_sample=20.0)
    assert all_to_all_bytes(table, _workload(table, 0.0)) == pytest.approx(
        1000 * (20 * 8 + 2 * 16 * 4)
    )

"""The cost model's block costs against values computed by hand (docs/planner.md's formulas):
one node of 2 ranks, links of 1 GB/s, 10 ns per looked-up 8-column row.

Table: 1,000 rows x 8, 2 bags and 2 ids per sample; 100 samples per rank; row-wise Adagrad
(4 bytes of state per row). Per rank: ids bytes = 100 x (2 x 8 + 2 x 4) = 2,400; one rank's
pooled output = 100 x 2 x 8 x 4 = 6,400 bytes; all samples' partial sums = 2 x 6,400.
Unpooled (row_wise_unpooled): one 32-byte vector per distinct row a rank's 200 ids read.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planners.cost_model import block_costs, seconds_per_row, unpooled_block_costs
from planners.topology import Link, Topology
from planners.types import OptimizerState, TableLoad, Workload
from planners.zipf import expected_distinct

LINK = Link(1e9, 1e9, 1e9, 1e9, 0.0)
TOPO = Topology(
    num_nodes=1,
    ranks_per_node=2,
    device_type="cpu",
    memory_per_rank_bytes=2**30,
    memory_bytes_per_second=1e10,
    lookup_seconds_per_row=((8, 1e-8),),
    dense_flops_per_second=1e10,
    interaction_elements_per_second=1e9,
    dense_update_elements_per_second=1e9,
    intra_node=LINK,
    inter_node=LINK,
)
TABLE = TableLoad("t", rows=1000, dim=8, bags_per_sample=2, ids_per_sample=2.0)
WORKLOAD = Workload((TABLE,), 100, OptimizerState.of("rowwise_adagrad", "cpu"), 0, 0)


def test_row_wise_block_on_both_ranks() -> None:
    c = block_costs(TABLE, WORKLOAD, TOPO, holders=[0, 1], row_sizes=[500, 500], cols=8)
    # ids: each rank sends half its 2,400 bytes, each holder receives 1 x 2,400 x 0.5.
    # outputs: reduce-scatter of the 12,800-byte partials among 2 holders (6,400 each) forward
    # and its all-gather backward; no all-to-all (every rank holds rows).
    np.testing.assert_allclose(c.comm, [1.2e-6 + 2 * 6.4e-6] * 2)
    np.testing.assert_allclose(c.comm_bytes, [2400 + 4 * 6400] * 2)
    # lookups: 2 ranks x 100 samples x 2 ids x half the rows = 200 rows x 10 ns.
    np.testing.assert_allclose(c.lookup, [2e-6, 2e-6])
    # memory: 500 x 8 x 4 weights + 500 x 4 state + (12,800 partials + 1,200 ids).
    np.testing.assert_allclose(c.memory, [16000 + 2000 + 14000] * 2)


def test_table_wise_block_on_rank_0() -> None:
    c = block_costs(TABLE, WORKLOAD, TOPO, holders=[0], row_sizes=[1000], cols=8)
    # ids: rank 1 sends all 2,400 bytes, rank 0 receives them. outputs: rank 0 sends rank 1
    # its 6,400 bytes of bags forward and gets their gradients back (2 all-to-alls).
    np.testing.assert_allclose(c.comm, [2.4e-6 + 2 * 6.4e-6] * 2)
    np.testing.assert_allclose(c.comm_bytes, [2400 + 2 * 6400] * 2)
    np.testing.assert_allclose(c.lookup, [4e-6, 0.0])  # 400 rows, all on rank 0
    # rank 0: 32,000 weights + 4,000 state + (12,800 + 2,400); rank 1: 2 x 6,400 buffers.
    np.testing.assert_allclose(c.memory, [51200, 12800])
    assert c.step_seconds[0] == pytest.approx(4e-6 + 15.2e-6)


def test_unpooled_row_wise_block_on_both_ranks() -> None:
    c = unpooled_block_costs(TABLE, WORKLOAD, TOPO, holders=[0, 1], row_sizes=[500, 500], cols=8)
    # a rank's 200 ids read d distinct rows (Zipf(1.1) over 1,000 rows: about 92), each asked
    # of its holder once
    d = expected_distinct(200, 1000, WORKLOAD.id_skew)
    assert 90 < d < 95
    # counts: 2 ranks x 8 bytes out and in; rows (8 bytes, no lengths): each rank sends the
    # d x 0.5 rows held by the other and receives as many; vectors: forward each serves d x 0.5
    # rows x 32 bytes and receives as many, backward the gradients.
    half = d * 0.5
    np.testing.assert_allclose(c.comm, [16e-9 + half * 8e-9 + 2 * half * 32e-9] * 2)
    np.testing.assert_allclose(c.comm_bytes, [2 * 16 + 2 * half * 8 + 2 * (2 * half * 32)] * 2)
    # lookups: 2 ranks x d rows x half the rows, 10 ns each, a bag of one each.
    np.testing.assert_allclose(c.lookup, [d * 1e-8] * 2)
    # local pooling at 10 GB/s: 2 x (200 ids + 200 bags) x 32 bytes.
    np.testing.assert_allclose(c.framework, [2.56e-6] * 2)
    # memory: 16,000 weights + 2,000 state + d rows x 8 received + looked-up vectors and
    # their gradients 2 x d x 32 + the requester's 2 x d x 32 + its pooled bags 2 x 6,400.
    np.testing.assert_allclose(c.memory, [16000 + 2000 + d * 8 + 4 * d * 32 + 12800] * 2)


def test_lookup_time_beyond_the_widest_width_never_falls() -> None:
    # calibration noise: the 128-column row measured faster than the 64-column one
    noisy = dataclasses.replace(TOPO, lookup_seconds_per_row=((64, 1.3e-7), (128, 1.0e-7)))
    assert seconds_per_row(96, noisy) == pytest.approx(1.15e-7)  # interpolated as measured
    assert seconds_per_row(512, noisy) == pytest.approx(1.0e-7)  # was -1.3e-7 a row
    rising = dataclasses.replace(TOPO, lookup_seconds_per_row=((64, 1e-7), (128, 2e-7)))
    assert seconds_per_row(256, rising) == pytest.approx(4e-7)  # along the last segment

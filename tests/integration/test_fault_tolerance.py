"""Fault tolerance in a real Ray run (no mocks): ``kill -9`` one worker mid-epoch, after a
training step or in the middle of saving a checkpoint.

Ray Train restarts the worker group, which resumes from the newest committed checkpoint of
the launch (``ray.train.get_checkpoint()``, or a newer commit Ray had not registered yet); a
checkpoint whose save was killed is never used. The run then ends exactly as an
uninterrupted one does:
- the row-id ledger, replayed across the failure, shows every training row once per epoch,
  step for step the rows of the uninterrupted run;
- the final weights and optimizer state are bitwise equal.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dist_train.config.load import load_config
from dist_train.driver import run_job
from dist_train.launchers.affinity import rank_cores
from dist_train.train.faults import ENV
from dist_train.train.ledger import ledger_path, read, read_run
from planners.cores import cpu_list, process_cores
from tests.integration.test_checkpoint import TINY, _tensors

pytestmark = pytest.mark.ray

COMMON = [
    "train.epochs=2",
    "data.shuffle_buffer_rows=3000",
    "checkpoint.every_steps=4",
    "data.row_id_column=row_id",
]


@pytest.mark.parametrize(
    ("kill_at", "marker", "resume_step", "sharding"),
    [
        ("1:8:save", "killed-rank1-step8-save", 4, "1d"),  # saving step 8: back to step 4
        # after step 11 of 32: back to step 8. 2D on Ray (each rank a group of its own,
        # replicas merged every step) runs the 1D recovery path and the replica merge; a
        # separate 1D case of it cost the suite 40 s for no path of its own
        ("1:11", "killed-rank1-step11-step", 8, "2d"),
    ],
)
def test_kill_9_worker_mid_epoch_resumes_exactly_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kill_at: str,
    marker: str,
    resume_step: int,
    sharding: str,
) -> None:
    common = [*COMMON, f"sharding.group_size={1 if sharding == '2d' else 2}"]
    monkeypatch.setenv(ENV, kill_at)
    killed = run_job(
        load_config(TINY, [*common, "ray.max_failures=1", f"output_dir={tmp_path / 'killed'}"])
    )
    monkeypatch.delenv(ENV)
    pin = "off" if sharding == "2d" else "auto"  # the plain processes' pinning, each way once
    clean = run_job(
        load_config(
            TINY,
            [
                *common,
                "launcher=processes",
                f"ray.pin_cores={pin}",
                f"output_dir={tmp_path / 'clean'}",
            ],
        )
    )
    assert killed["sharding"]["unified_0"]["ranks"] == ([0] if sharding == "2d" else [0, 1])
    cores = process_cores()
    pinned = [cpu_list(rank_cores(cores, r, 2)) for r in range(2)]
    assert killed["rank_cores"] == pinned  # Ray's restarted workers pinned themselves again
    assert clean["rank_cores"] == (pinned if pin == "auto" else [cpu_list(cores)] * 2)
    run_k, run_c = tmp_path / "killed" / "tiny", tmp_path / "clean" / "tiny"
    assert (run_k / "faults" / marker).is_file()
    assert killed["steps"] == clean["steps"] == 32
    # the rates are the restarted group's, and say so
    assert killed["restarted_at_step"] == resume_step and clean["restarted_at_step"] is None
    assert killed["steps_this_launch"] == 32 - resume_step

    epochs: dict[int, list[int]] = {0: [], 1: []}
    for rank in (0, 1):
        attempts, steps = read(ledger_path(run_k, rank))
        _, clean_steps = read(ledger_path(run_c, rank))
        assert len(attempts) == 2 and attempts[0].pid != attempts[1].pid  # a new process
        assert attempts[1].resume_step == resume_step  # the newest commit before the kill
        assert sorted(steps) == list(range(1, 33))
        for k, entry in steps.items():
            assert (entry.epoch, entry.ids) == (clean_steps[k].epoch, clean_steps[k].ids), k
            epochs[entry.epoch] += entry.ids
    for ids in epochs.values():  # 16 steps x 512 rows x 2 ranks: every row, once
        assert sorted(ids) == list(range(16384))

    assert killed["test_auc"] == clean["test_auc"]
    assert not list((run_k / "checkpoints").glob(".partial-*"))  # a killed save is cleaned up
    final_k = run_k / "checkpoints" / "step-00000032"
    final_c = run_c / "checkpoints" / "step-00000032"
    tk, tc = _tensors(final_k, tmp_path), _tensors(final_c, tmp_path)
    assert tk.keys() == tc.keys() and any("momentum" in k or "state" in k for k in tk)
    for key in tk:
        assert tk[key].equal(tc[key]), key


def test_elastic_run_loses_a_node_and_finishes_on_fewer_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ray.min_workers=1, num_workers=2 on a real 2-node cluster; the second node is removed
    mid-epoch. Ray Train restarts the group with the 1 worker that fits; it re-plans, loads
    the last checkpoint resharded, and trains the epoch's untrained batches: every row of the
    epoch exactly once (row ledger, replayed across both ranks' attempts). The run starts
    in 2D (2 groups of 1 rank: replicas) and finishes as one rank, the re-plan dropping the
    configured group size for that world."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray Train's controller polls workers (and registers reports) at this interval (2 s by
    # default); the cluster's processes inherit it. Faster polling, shorter test.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # After the node goes, the controller first asks for the 2 workers again and waits this
    # long for them (60 s by default: most of the test) before settling for the 1 that fits.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    cfg = load_config(
        TINY,
        [
            *COMMON,
            "train.epochs=1",
            "checkpoint.every_steps=4",
            "ray.min_workers=1",
            "ray.max_failures=2",
            "sharding.group_size=1",
            f"ray.address={cluster.address}",
            f"output_dir={tmp_path}",
        ],
    )
    run_dir = tmp_path / "tiny"
    result: dict[str, Any] = {}
    job = threading.Thread(target=lambda: result.update(run_job(cfg)))
    try:
        job.start()
        deadline = time.monotonic() + 300
        rank1 = ledger_path(run_dir, 1)
        # The node goes away mid-epoch with a checkpoint to resume from: after rank 1 trained
        # step 5 and the step-4 checkpoint (saved in the background) is committed.
        step4 = run_dir / "checkpoints" / "step-00000004" / "meta.json"
        while time.monotonic() < deadline and not (
            step4.is_file() and rank1.is_file() and len(read(rank1)[1]) >= 5
        ):
            time.sleep(0.05)
        cluster.remove_node(second)  # rank 1's node goes away mid-epoch
        job.join(timeout=300)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert not job.is_alive() and result, "the elastic run did not finish"
    assert result["world_size"] == 1
    steps = read_run(run_dir)
    ids = [i for per_rank in steps.values() for entry in per_rank.values() for i in entry.ids]
    assert sorted(ids) == list(range(16384))  # 2 x 16 batches of 512 rows, each once
    assert max(steps[1]) < max(steps[0])  # rank 1 stopped; rank 0 trained the rest alone

"""What Ray Train's workers report: rank 0's summary to the driver, and a pointer to each
committed checkpoint for a worker group Ray Train restarts."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import ray.train

SUMMARY_FILE = "summary.json"  # rank 0's summary, attached to its last report
# a summary's key: [type, message] of the error a restarted group found recorded
FAILED = "failed_before_restart"
POINTER_FILE = "dist_train_checkpoint.json"


def report(record: Mapping[str, object], attach: str = SUMMARY_FILE) -> None:
    """Report ``record`` from every rank (Ray Train requires all to report); rank 0 attaches
    it as a tiny checkpoint file named ``attach``, which ``Result`` and
    ``get_checkpoint()`` then carry."""
    metrics = dict(record)
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / attach).write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def checkpoint_reporter(run_id: str) -> Callable[[str, int], None]:
    """Tell Ray Train about each committed checkpoint with a pointer to it (the DCP shards
    stay where every rank wrote them), so a restarted worker group finds it."""

    def pointer(path: str, step: int) -> None:
        report({"step": step, "checkpoint": path, "run_id": run_id}, attach=POINTER_FILE)

    return pointer


def ray_record(run_id: str) -> tuple[int, str] | None:
    """(step, path) of the newest checkpoint Ray Train recorded for this launch, if any.

    Only this launch's pointers count (its ``run_id``): Ray Train also restores its records
    from an earlier launch that used the same storage path."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as path:
        pointer = Path(path) / POINTER_FILE
        record = json.loads(pointer.read_text()) if pointer.is_file() else {}
    if record.get("run_id") != run_id:
        return None
    return int(record["step"]), str(record["checkpoint"])

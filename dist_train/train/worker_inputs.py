"""What the driver hands every worker (:class:`WorkerInputs`), whichever launcher runs it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from dist_train.data.listing import RowGroup
from dist_train.data.validation import BadInputCounts
from dist_train.train.sharding import JobPlan


@dataclass(frozen=True)
class WorkerInputs:
    """What the driver hands every worker: the listed row groups and where to write."""

    train_groups: list[RowGroup]
    test_groups: list[RowGroup]
    run_dir: str
    plan: JobPlan | None = None  # made on the driver; None = each rank plans for itself
    file_counts: BadInputCounts | None = None  # bad files the driver skipped
    test_file_counts: BadInputCounts | None = None  # those of them in the test split
    resume: str | None = None  # a committed checkpoint to continue from
    restarted: bool = False  # ``resume`` is where Ray restarted the worker group from
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this launch's checkpoints
    verbosity: str = "normal"  # of the driver's console messages (quiet, normal, verbose)
    device_type: str = "cpu"  # where the ranks train (train.device, resolved by the driver)
    evaluate_only: bool = False  # `dist-train evaluate`: evaluate ``resume``, train nothing

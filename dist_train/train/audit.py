"""What happens after each training step besides training: the row ledger
(``data.row_id_column``, :mod:`dist_train.train.ledger`) and the kill drill
(``DIST_TRAIN_KILL_AT``, :mod:`dist_train.train.faults`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch
from dist_train.train.faults import maybe_kill
from dist_train.train.ledger import Ledger


class StepAudit:
    """Records each step's rows (if the job asks) and fires the kill drill (if set)."""

    def __init__(
        self, cfg: JobConfig, run_dir: str, rank: int, start_step: int, settle: Callable[[], Any]
    ) -> None:
        self.run_dir, self.rank, self.settle = run_dir, rank, settle
        self.ledger = Ledger(run_dir, rank, start_step) if cfg.data.row_id_column else None

    def after(self, step: int, epoch: int, batch: Batch) -> None:
        if self.ledger is not None:
            self.ledger.record(step, epoch, batch.row_ids)
        # settle: a drill "after step N" finds every earlier save committed.
        maybe_kill(self.run_dir, self.rank, step, settle=self.settle)

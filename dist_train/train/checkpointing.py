"""The run's checkpoints: where it resumes from, when it saves, what it saves.

:class:`Checkpoints` is what the training loop talks to; the files and the commit rule are
:mod:`dist_train.checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from dist_train import checkpoint
from dist_train.checkpoint import CheckpointSaver, TrainPosition
from dist_train.config import JobConfig
from dist_train.data.validation import BadInputPolicy
from dist_train.storage import Location, location
from dist_train.train.faults import maybe_kill
from dist_train.train.progress import Progress
from dist_train.train.trainer import Trainer


class Checkpoints:
    """Resumes ``trainer`` from ``resume`` (a committed checkpoint, or None), then saves
    every ``checkpoint.every_steps`` steps and at the end. ``on_commit(path, step)`` runs on
    every rank after each commit (Ray Train records it for restarts)."""

    def __init__(
        self,
        cfg: JobConfig,
        trainer: Trainer,
        progress: Progress,
        run_dir: str,
        run_id: str,
        resume: str | None,
        rank: int,
        on_commit: Callable[[str, int], None] | None = None,
    ) -> None:
        self.cfg, self.trainer, self.progress = cfg, trainer, progress
        self.resume_from, self.on_commit = resume, on_commit
        extra: dict[str, Any] = {
            "config": cfg.model_dump(mode="json"),
            "sharding": trainer.plan.placements(),
            "run_id": run_id,
        }
        self.saver = CheckpointSaver(
            trainer,
            checkpoint.checkpoint_root(cfg),
            cfg.checkpoint.num_to_keep,
            extra,
            on_commit=self._committed,
            before_commit=lambda step: maybe_kill(run_dir, rank, step, "save"),
            background=cfg.checkpoint.background,
        )

    def resume(self, policy: BadInputPolicy) -> TrainPosition:
        """Load the checkpoint to resume from, if any; the position to train on from."""
        if not self.resume_from:
            return TrainPosition()
        position = checkpoint.load(self.trainer, location(self.resume_from))
        policy.counts.rows = dict(position.bad_input_rows)
        policy.counts.row_groups = position.bad_input_row_groups
        self.progress.log(
            {"event": "resume", "checkpoint": self.resume_from, **asdict(position)},
            f"resumed from {self.resume_from}: step {position.step}, epoch "
            f"{position.epoch}, {position.batches} batches into it",
        )
        return position

    def should_save(self, step: int) -> bool:
        every = self.cfg.checkpoint.every_steps
        return every is not None and step % every == 0

    def save(self, position: TrainPosition) -> None:
        self.saver.save(position)

    def wait(self) -> None:
        """Wait for the save in flight (raising its error)."""
        self.saver.wait()

    def finish(self, position: TrainPosition) -> Location | None:
        """Save ``position`` if the job saves at the end and it is not saved yet; wait for
        the last save; the newest committed checkpoint."""
        if self.cfg.checkpoint.save_at_end and position.step != self.saver.last_step:
            self.saver.save(position)
        self.saver.wait()
        return self.saver.last_path

    def _committed(self, path: Location, position: TrainPosition) -> None:
        if self.on_commit is not None:
            self.on_commit(str(path), position.step)
        self.progress.log(
            {"event": "checkpoint", "path": str(path), **asdict(position)},
            f"checkpoint step {position.step} -> {path}",
        )

"""Progress of a training run: rank 0's lines on stdout and records in ``metrics.jsonl``,
the loss and speed between log lines, and the throughput figures of the summary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.distributed as dist

from dist_train.logs import LOG
from dist_train.storage import write_atomically


class TrainFigures(TypedDict):
    """Throughput and loss of the training part of a run (keys of the summary)."""

    train_examples: int
    train_seconds: float
    examples_per_second: float
    steady_examples_per_second: float
    first_step_unix: float | None
    final_train_loss: float


def strict_json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON that strict parsers read: a NaN or infinite number (an AUC of a
    test set of one class, the loss of a run that trained no step) is ``null``."""

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=indent, allow_nan=False)


def mean_across_ranks(value: float) -> float:
    """The mean of ``value`` over all ranks (a collective: every rank calls it)."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


class Progress:
    """Counts steps and examples, and reports them every ``log_every`` steps.

    Every rank keeps the counts (the loss is averaged across ranks, a collective); only the
    enabled one (rank 0) writes.
    """

    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        log_every: int,
        examples_per_step: int,
        append: bool = False,
    ) -> None:
        self.enabled, self.log_every = enabled, log_every
        self.examples_per_step = examples_per_step
        self.path = Path(run_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:  # a resumed run continues its predecessor's log
                self.path.write_text("")
        self.examples, self.train_seconds = 0, 0.0
        self.first_step_unix: float | None = None
        self._first_step_seconds = 0.0  # train_seconds when the first step ended
        self._window_loss, self._window_steps, self._window_start = 0.0, 0, 0.0
        self._window_seconds = 0.0  # the window's training time in epochs already ended
        self.last_loss = float("nan")
        self._epoch_start = 0.0

    def resumed_at(self, step: int, branch: bool = False) -> None:
        """Take the records of steps after ``step`` out of the log: the resumed run trains
        them again, and its own records of them follow (a line that is no JSON object stays
        as it is). On a ``branch`` (a resume beside newer checkpoints, which a run that
        saves nothing may take) they are the records of those checkpoints' run: kept, in a
        file of their own beside the log, not deleted."""
        if not self.enabled or not self.path.exists():
            return
        kept: list[str] = []
        later: list[str] = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            # a train or checkpoint record's step, an evaluation's steps (the run's last)
            logged = record.get("step", record.get("steps")) if isinstance(record, dict) else None
            after = isinstance(logged, int) and logged > step
            (later if after else kept).append(line + "\n")
        if branch and later:
            aside = self.path.with_name(f"metrics.after-step-{step}.jsonl")
            n = 1
            while aside.exists():  # a second branch from the same step keeps the first's
                n += 1
                aside = self.path.with_name(f"metrics.after-step-{step}.{n}.jsonl")
            write_atomically(aside, "".join(later))
            LOG.warning(
                f"resumed beside newer checkpoints: the log's {len(later)} record(s) of steps "
                f"after {step}, theirs, moved to {aside}"
            )
        write_atomically(self.path, "".join(kept))  # killed meanwhile: the old log stays

    def log(self, record: dict[str, Any], line: str) -> None:
        if not self.enabled:
            return
        LOG.info(line)
        with self.path.open("a") as f:
            f.write(strict_json(record) + "\n")

    def epoch_started(self) -> None:
        self._epoch_start = self._window_start = time.perf_counter()

    def epoch_ended(self) -> None:
        """Stops the training clock: what runs until the next epoch (its set-up; after the
        last, the final save and evaluation) counts in no training rate."""
        now = time.perf_counter()
        self.train_seconds += now - self._epoch_start
        # a log window may span epochs: its steps carry over, and so must their time
        self._window_seconds += now - self._window_start
        self._window_start = now  # a record before the next epoch adds none of the gap

    def step_done(self, loss: float) -> None:
        self._window_loss += loss
        self._window_steps += 1
        self.examples += self.examples_per_step
        if self.first_step_unix is None:
            self.first_step_unix = time.time()
            self._first_step_seconds = self.train_seconds + time.perf_counter() - self._epoch_start

    @property
    def window_steps(self) -> int:
        """Steps trained since the last train record."""
        return self._window_steps

    def should_log(self, step: int) -> bool:
        return step % self.log_every == 0

    def log_train(self, epoch: int, step: int, epoch_last_step: int) -> None:
        """The window's mean loss (across ranks) and examples/s since the last line (over
        training time: not the time between epochs)."""
        loss = mean_across_ranks(self._window_loss / self._window_steps)
        now = time.perf_counter()
        seconds = self._window_seconds + now - self._window_start
        rate = self._window_steps * self.examples_per_step / seconds
        self.log(
            {
                "event": "train",
                "epoch": epoch,
                "step": step,
                "loss": loss,
                "examples_per_second": rate,
            },
            f"epoch {epoch} step {step}/{epoch_last_step} loss {loss:.4f} {rate:,.0f} examples/s",
        )
        self.last_loss, self._window_loss, self._window_steps = loss, 0.0, 0
        self._window_start, self._window_seconds = now, 0.0

    def figures(self) -> TrainFigures:
        """Throughput and the final loss, for the summary (a collective: every rank calls).
        The rates are over the training clock (:meth:`epoch_ended`), stopped at training's end."""
        steady = self.train_seconds - self._first_step_seconds if self.first_step_unix else 0.0
        if self._window_steps:
            self.last_loss = mean_across_ranks(self._window_loss / self._window_steps)
        seconds = self.train_seconds
        return TrainFigures(
            train_examples=self.examples,
            train_seconds=seconds,
            examples_per_second=self.examples / seconds if seconds > 0 else 0.0,
            # After the first step: excludes one-time costs (first batch read, warm-up).
            steady_examples_per_second=(
                (self.examples - self.examples_per_step) / steady if steady > 0 else 0.0
            ),
            first_step_unix=self.first_step_unix,
            final_train_loss=self.last_loss,
        )

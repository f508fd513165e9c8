"""This rank's epochs: which batches it trains in each, from where a checkpoint left off.

Each epoch's row groups are dealt to ranks by an :class:`~dist_train.data.epoch_plan.EpochPlan`
(a pure function of seed, epoch and world size, or the saved plan when resuming mid-epoch on
another world size). :class:`Epochs` yields one :class:`Epoch` at a time; an epoch trains its
batches while every rank still has one, and counts the trained ones.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dist_train.checkpoint.meta import TrainPosition
from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch, BatchBuilder
from dist_train.data.epoch_plan import EpochPlan
from dist_train.data.listing import DataSourceError, RowGroup, assign_row_groups, steps_per_epoch
from dist_train.data.rows import Rows
from dist_train.data.stream import batches
from dist_train.data.validation import BadInputCounts, BadInputPolicy, across_ranks
from dist_train.logs import LOG

T = TypeVar("T")


def while_all_ranks_have(items: Iterator[T]) -> Iterator[T]:
    """Yield while every rank still has an item: skipped bad rows can leave a rank short, and
    the sharded embedding's collectives need all ranks to step together."""
    it = iter(items)
    if dist.get_world_size() == 1:  # no other rank to wait for: no collective a step
        yield from it
        return
    while True:
        item = next(it, None)
        flag = torch.tensor([0 if item is None else 1])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag.item()) == 0:
            return
        yield item  # type: ignore[misc]


def epoch_plan(
    groups: list[RowGroup], world: int, cfg: JobConfig, epoch: int, position: TrainPosition
) -> tuple[EpochPlan, int]:
    """This epoch's plan for ``world`` ranks, and the batches each rank already trained.

    Resuming mid-epoch under another world size re-deals the saved plan's untrained batches.
    """
    done = position.batches if epoch == position.epoch else 0
    if done and position.plan is not None:
        plan = EpochPlan.from_json(position.plan)
        if plan.world != world:
            return plan.replan(done, world), 0
        return plan, done
    # A new epoch, or a checkpoint from before plans were saved (same world size: checked).
    assignment = assign_row_groups(groups, world, cfg.seed, epoch)
    return EpochPlan.fresh(world, steps_per_epoch(assignment, cfg.train.batch_size)), done


def rank_rows(
    builder: BatchBuilder,
    groups: list[RowGroup],
    cfg: JobConfig,
    epoch: int,
    plan: EpochPlan,
    rank: int,
    skip: int,
    policy: BadInputPolicy,
) -> Iterator[tuple[Rows, str]]:
    """``rank``'s batches of the epoch: its plan segments after ``skip`` batches, each a
    replay of one stream (see :mod:`dist_train.data.epoch_plan`)."""
    assignment = assign_row_groups(groups, plan.stream_world, cfg.seed, epoch)
    for stream, first, end in plan.remaining(rank, skip):
        yield from itertools.islice(
            builder.stream(
                assignment[stream],
                cfg.train.batch_size,
                policy=policy,
                shuffle_rows=cfg.data.shuffle_buffer_rows,
                shuffle_seed=(cfg.seed, epoch, stream),
                start_batch=first,
            ),
            end - first,
        )


class CountedRows:
    """``rows`` that record the bad-input counts so far as each batch is read (``per_batch``,
    until trained: not the rows a prefetch reads ahead of training), and once ``rows`` ran
    out (``at_end``: the rows read past the last batch, all bad, count too)."""

    def __init__(self, rows: Iterator[tuple[Rows, str]], policy: BadInputPolicy) -> None:
        self.rows, self.policy = rows, policy
        self.per_batch: deque[BadInputCounts] = deque()
        self.at_end: BadInputCounts | None = None

    def __iter__(self) -> Iterator[tuple[Rows, str]]:
        for item in self.rows:
            self.per_batch.append(self.policy.counts.copy())
            yield item
        self.at_end = self.policy.counts.copy()


class Epoch:
    """One epoch on this rank: its ``plan`` and the batches ``done`` in it (resumed ones
    too); :meth:`trained` trains the rest, each a global step, ``counted`` the bad input."""

    def __init__(
        self,
        epochs: Epochs,
        index: int,
        plan: EpochPlan,
        done: int,
        stream: Iterator[Batch],
        counted: CountedRows,
        redealt: bool = False,
    ):
        self.epochs, self.index, self.plan, self.done = epochs, index, plan, done
        self._stream, self._counted, self._redealt = stream, counted, redealt
        self._exhausted = False

    def batches(self) -> Iterator[Batch]:
        """Its batches while every rank has one (read, not yet trained: not counted)."""
        return while_all_ranks_have(self._stream)

    def trained(
        self, train: Callable[[Iterator[Batch]], Iterator[tuple[Batch, float]]]
    ) -> Iterator[tuple[Batch, float]]:
        """Train its batches with ``train`` (e.g. :meth:`Trainer.train_steps`); yields each
        batch and its loss once trained, counted as a global step. ``train`` may read ahead
        of the batch it trains: only trained batches count (checkpoint positions)."""
        try:
            for batch, loss in train(self.batches()):
                self.done += 1
                self.epochs.step += 1
                self.epochs.bad_input = self._counted.per_batch.popleft()
                yield batch, loss
            self._exhausted = True
        finally:  # an error, or a consumer that stops, too: not when it is collected
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()  # its prefetch thread stops reading (and counting) before the next epoch
        if self._counted.at_end is not None and not self._counted.per_batch:
            # every batch its rows gave was trained: the rows read after the last count too
            # (a resumed run reads them again after its checkpoint's batches, counted)
            self.epochs.bad_input = self._counted.at_end
        if self.done == 0 and self._redealt:
            # its batches left, dealt anew to this world size, past what a rank's stream
            # holds once bad rows are skipped (load warned of it): the next epoch runs
            if dist.get_rank() == 0:
                LOG.warning(
                    f"epoch {self.index}: a rank held none of the batches left of it, dealt "
                    "anew to this world size, once bad rows were skipped; training goes on "
                    "with the next epoch"
                )
        elif self.done == 0:  # every rank agrees: no rank had a batch (a resumed epoch's
            # last batches may all have been trained before its checkpoint: no error)
            skipped = across_ranks(self.epochs.policy.counts).as_dict()
            raise DataSourceError(
                f"epoch {self.index} trained no batch of its {self.plan.steps}: a rank "
                f"had none left once bad input was skipped ({skipped['row_groups_skipped']} "
                f"row groups and {skipped['rows_skipped_total']} rows skipped so far, by "
                f"reason {skipped['rows_skipped']}). Check data.train_path"
            )

    @property
    def last_step(self) -> int:
        """The global step at which this epoch ends (for progress lines): its last batch's,
        or ``train.max_steps`` if that comes first."""
        end = self.epochs.step - self.done + self.plan.steps
        limit = self.epochs.cfg.train.max_steps
        return end if limit is None else min(end, limit)

    @property
    def ends_training(self) -> bool:
        """The step trained now is training's last: this epoch's last in the run's last
        epoch, or ``train.max_steps``."""
        limit = self.epochs.cfg.train.max_steps
        at_limit = limit is not None and self.epochs.step >= limit
        last_epoch = self.index == self.epochs.cfg.train.epochs - 1
        return at_limit or (last_epoch and self.epochs.step >= self.last_step)

    @property
    def stopped_early(self) -> bool:
        """``train.max_steps`` ended training inside this epoch."""
        limit = self.epochs.cfg.train.max_steps
        return limit is not None and self.epochs.step >= limit and self.done < self.plan.steps

    def position(self) -> TrainPosition:
        """Where training stands now: inside this epoch, or at the next one's start once its
        batches are all trained (or the ranks ran out of them before ``max_steps``)."""
        finished = self.done >= self.plan.steps or (self._exhausted and not self.stopped_early)
        epoch, done = (self.index + 1, 0) if finished else (self.index, self.done)
        plan = self.plan.as_json() if done else None
        return _position(self.epochs.step, epoch, done, self.epochs.bad_input, plan)


class Epochs:
    """This rank's epochs from ``start`` on; ``step`` is the global step (batches every rank
    trained, over all epochs and attempts), limited by ``train.max_steps``; ``bad_input``
    counts what ``policy`` dropped of the rows read for the trained batches (the same in a
    run resumed from any checkpoint: rows read ahead of training are not yet counted)."""

    def __init__(
        self,
        cfg: JobConfig,
        groups: list[RowGroup],
        builder: BatchBuilder,
        policy: BadInputPolicy,
        start: TrainPosition,
        pin_memory: bool = False,
        ranks: tuple[int, int] | None = None,
    ) -> None:
        """``ranks``: (this rank, world size); None: the process group's."""
        self.cfg, self.groups, self.builder, self.policy = cfg, groups, builder, policy
        self.ranks = ranks
        self.pin_memory = pin_memory  # pinned by the prefetch thread, for GPU ranks
        self.start, self.step = start, start.step
        self.bad_input = policy.counts.copy()  # a resumed run's: its checkpoint's
        self.current: Epoch | None = None

    def __iter__(self) -> Iterator[Epoch]:
        rank, world = self.ranks or (dist.get_rank(), dist.get_world_size())
        tc = self.cfg.train
        for index in range(self.start.epoch, tc.epochs):
            if tc.max_steps is not None and self.step >= tc.max_steps:
                break
            plan, skip = epoch_plan(self.groups, world, self.cfg, index, self.start)
            num_steps = plan.steps - skip
            if tc.max_steps is not None:
                num_steps = min(num_steps, tc.max_steps - self.step)
            if num_steps <= 0:
                # nothing left of it for these ranks (a resumed epoch whose last batches
                # re-dealt to more ranks than batches): the next epoch still runs
                resumed = index == self.start.epoch and self.start.batches > 0
                if plan.steps == 0 and rank == 0 and resumed:  # (not the batch size's fault)
                    LOG.warning(
                        f"epoch {index}: the batches left of it at the checkpoint of step "
                        f"{self.start.step}, dealt anew to {world} ranks, make no step of "
                        "every rank; training goes on with the next epoch"
                    )
                elif plan.steps == 0 and rank == 0:  # the driver warned of it too
                    LOG.warning(
                        f"epoch {index} trains 0 steps: a rank's share of its deal "
                        f"holds fewer rows than train.batch_size={tc.batch_size}"
                    )
                continue
            self._rewind_counts()
            rows = rank_rows(
                self.builder, self.groups, self.cfg, index, plan, rank, skip, self.policy
            )
            counted = CountedRows(rows, self.policy)
            stream = batches(
                iter(counted),
                num_steps,
                self._to_batch,
                tc.prefetch_batches,
                niceness=tc.prefetch_niceness,
            )
            # resumed mid-epoch on another world size: its batches left were dealt anew
            redealt = index == self.start.epoch and self.start.batches > 0 and skip == 0
            self.current = Epoch(self, index, plan, skip, stream, counted, redealt)
            yield self.current
            if self.current.stopped_early:
                break
        self._rewind_counts()  # what the run reports: its trained batches' (evaluation adds)

    def _rewind_counts(self) -> None:
        """``policy``'s counts back to the trained batches' (``bad_input``): the rows a
        cut-short epoch's prefetch read past its last trained batch are not counted, as a
        run resumed from a checkpoint never reads them."""
        self.policy.counts.row_groups = self.bad_input.row_groups
        self.policy.counts.rows = dict(self.bad_input.rows)

    def _to_batch(self, rows: Rows) -> Batch:
        batch = self.builder.to_batch(rows)
        return batch.pin_memory() if self.pin_memory else batch

    def position(self) -> TrainPosition:
        """Where training stands now (the start, its epoch plan too, if no epoch ran: a
        relaunch already at ``train.max_steps`` saves where it started)."""
        if self.current is not None:
            return self.current.position()
        start = self.start
        return _position(self.step, start.epoch, start.batches, self.bad_input, start.plan)


def _position(
    step: int, epoch: int, batches: int, counts: BadInputCounts, plan: dict[str, Any] | None
) -> TrainPosition:
    """A checkpoint's position, with the bad-input counts of its trained batches."""
    return TrainPosition(step, epoch, batches, dict(counts.rows), counts.row_groups, plan)

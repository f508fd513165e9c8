"""What the driver checks in a job's inputs and says of them: the steps the epochs' deals
of row groups train (a job of 0 steps refused; rows left untrained, empty epochs and a
``train.max_steps`` past the epochs named), test files that are also training files, and,
after training, a share of rows skipped as bad input that says a column was misread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dist_train.config.schema import JobConfig
from dist_train.data.listing import RowGroup, assign_row_groups, steps_per_epoch
from dist_train.data.validation import BadInputError
from dist_train.logs import LOG
from dist_train.storage import same_place_key


def warn_of_shared_files(train: list[RowGroup], test: list[RowGroup]) -> None:
    """Test files that are also training files: their metrics are of rows the model
    trained on (a data.train_path of the folder above train/ and test/ reads both)."""
    trained = {same_place_key(g.path) for g in train}
    shared = sorted({g.path for g in test if same_place_key(g.path) in trained})
    if shared:
        files = len({g.path for g in test})
        LOG.warning(
            f"{len(shared)} of the {files} test file(s) are also training files (first: "
            f"{shared[0]}): the test metrics will be of rows the model trained on. Point "
            "data.train_path and data.test_path at folders or globs that do not overlap"
        )


class NoStepsError(BadInputError):
    """The job's data would train it 0 steps: the whole job's problem, no file's."""


UNUSED_ROWS_WARNING = 0.10
"""The share of an epoch's training rows left untrained above which the driver warns."""


def check_steps(cfg: JobConfig, train: list[RowGroup], saved: SavedAt | None = None) -> None:
    """Refuse a job whose first epoch, dealt as the workers deal it, trains 0 steps; warn
    when it leaves more than :data:`UNUSED_ROWS_WARNING` of the rows untrained, or when a
    later epoch (another deal of the row groups) trains none. A run resumed from ``saved``
    is held to none of epoch 0's deal (on its world size, a resume at epoch 2 was refused
    for it): it is warned of the epochs dealt anew from there that train none."""
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    if saved is not None:  # the saved epoch's rest follows its saved plan
        done = saved.step
        if saved.batches:  # and its steps come first (as this world's deal gives them)
            deal = assign_row_groups(train, world, cfg.seed, saved.epoch)
            done += max(0, steps_per_epoch(deal, batch_size) - saved.batches)
        first = saved.epoch + (1 if saved.batches else 0)
        _warn_of_epochs_without_steps(cfg, train, range(first, cfg.train.epochs), done)
        return
    assignment = assign_row_groups(train, world, cfg.seed, 0)
    steps = steps_per_epoch(assignment, batch_size)
    smallest = min(sum(g.num_rows for g in groups) for groups in assignment)
    if not steps:
        raise NoStepsError(
            f"the job would train 0 steps: train.batch_size={batch_size} is more than the "
            f"{smallest:,} training rows of the smallest rank's share ({len(train)} row "
            f"groups dealt to ray.num_workers={world} ranks); use fewer ranks, a smaller "
            "batch, or more, smaller row groups (data.synthetic.rows_per_group for generated "
            "data)"
        )
    rows, trained = sum(g.num_rows for g in train), steps * batch_size * world
    if trained < (1 - UNUSED_ROWS_WARNING) * rows:
        LOG.warning(
            f"the first epoch trains {trained:,} of the {rows:,} training rows "
            f"({1 - trained / rows:.0%} unused): row groups go to ranks whole, and every "
            f"rank runs the steps of the smallest share ({smallest:,} rows: {steps} "
            f"batches of train.batch_size={batch_size}); more, smaller row groups, or "
            "fewer ranks, train more of them (docs/data.md)"
        )
    _warn_of_epochs_without_steps(cfg, train, range(1, cfg.train.epochs), steps)


def _warn_of_epochs_without_steps(
    cfg: JobConfig, train: list[RowGroup], epochs: range, done: int
) -> None:
    """Warn of the ``epochs`` whose deal trains 0 steps, up to ``train.max_steps`` (``done``
    steps trained before the first)."""
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    if _fewest_rows_a_rank(train, world) >= batch_size:  # none falls under a batch
        return
    empty = []
    limit = cfg.train.max_steps
    for epoch in epochs:
        if limit is not None and done >= limit:
            break
        steps = steps_per_epoch(assign_row_groups(train, world, cfg.seed, epoch), batch_size)
        if not steps:
            empty.append(epoch)
        done += steps
    if empty:
        LOG.warning(
            f"epoch(s) {', '.join(map(str, empty))} of {cfg.train.epochs} train 0 steps: "
            f"each epoch deals the {len(train)} row groups to ranks anew, and there a rank's "
            f"share holds fewer rows than train.batch_size={batch_size}; more, smaller row "
            "groups, or fewer ranks, train every epoch (docs/data.md)"
        )


_DEALS_WORK = 200_000
"""The most work, epochs x (row groups + 10), that the driver spends dealing epochs to
count a job's steps (a deal costs about 12 us an epoch and 1.4 us a row group here)."""


@dataclass(frozen=True)
class SavedAt:
    """Where the checkpoint a run resumes stood: its step, world size, epoch, batches into
    that epoch and batch size."""

    step: int
    world: int
    epoch: int = 0
    batches: int = 0
    batch_size: int = 0

    @classmethod
    def of(cls, meta: dict[str, Any]) -> SavedAt:
        """Where the checkpoint whose ``meta.json`` is ``meta`` (read and checked) stood."""
        position = meta.get("position") or {}
        train = (meta.get("config") or {}).get("train") or {}
        return cls(
            int(position.get("step") or 0),
            int(meta.get("world_size") or 0),
            int(position.get("epoch") or 0),
            int(position.get("batches") or 0),
            int(train.get("batch_size") or 0),
        )

    @property
    def epoch_start_step(self) -> int:
        """The step its epoch began at (its batches into it were that epoch's first)."""
        return self.step - self.batches


def note_steps_short_of_max(cfg: JobConfig, train: list[RowGroup], saved: SavedAt | None) -> None:
    """Say where train.max_steps lies past the steps of train.epochs: training ends with
    the epochs (max_steps only stops it earlier), as a user of trainers whose max_steps
    overrides the epochs would not expect. ``saved``: the resumed checkpoint's position
    (its epochs dealt to its ranks: counted here only at the same world); the epochs
    before its own trained the steps they trained, whatever this job's batch size."""
    most, epochs = cfg.train.max_steps, cfg.train.epochs
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    if most is None or (saved is not None and saved.world != world):
        return
    first, done = (saved.epoch, saved.epoch_start_step) if saved else (0, 0)
    left = max(0, epochs - first)
    rows = sum(g.num_rows for g in train)
    # every deal's smallest share lies between these
    fewest = max(0, int(_fewest_rows_a_rank(train, world)) // batch_size)
    if done + left * fewest >= most:
        return
    if left * (len(train) + 10) > _DEALS_WORK:  # too many deals to make: the bound alone
        bound = done + left * (rows // world // batch_size)
        if bound < most:
            LOG.warning(
                f"train.max_steps={most} is past the at most {bound:,} steps of "
                f"train.epochs={epochs}: training ends with the last epoch (max_steps only "
                "stops it earlier)"
            )
        return
    total = done
    for epoch in range(first, epochs):
        total += steps_per_epoch(assign_row_groups(train, world, cfg.seed, epoch), batch_size)
        if total >= most:
            return
    LOG.warning(
        f"train.max_steps={most} is past the {total:,} steps of train.epochs={epochs}: "
        f"training ends at step {total:,}, with the last epoch "
        "(max_steps only stops it earlier); raise train.epochs to train longer"
    )


def _fewest_rows_a_rank(train: list[RowGroup], world: int) -> float:
    """The fewest rows any deal of ``train`` can give a rank: a deal's shares differ by at
    most the largest row group."""
    largest = max(g.num_rows for g in train)
    return (sum(g.num_rows for g in train) - (world - 1) * largest) / world


SKIPPED_ROWS_WARNING = 0.01
"""The share of a split's rows skipped as bad (data.on_bad_input=skip) above which the
driver warns."""


def examples_trained(summary: dict[str, Any], batch_size: int, saved: SavedAt | None) -> int:
    """The examples of every step to the step reached: this launch's world's and batch's
    since the checkpoint it resumed from, that checkpoint's before it."""
    saved = saved or SavedAt(0, 0)
    since = int(summary.get("steps") or 0) - saved.step
    before = saved.step * saved.world * (saved.batch_size or batch_size)
    return since * int(summary.get("world_size") or 1) * batch_size + before


def warn_of_skipped_share(summary: dict[str, Any], trained: int) -> None:
    """A split that lost more than :data:`SKIPPED_ROWS_WARNING` of its rows to the
    bad-input checks (``trained``: the training examples of every step): most often a
    column's meaning mistaken (labels written 1/2, a skip of every positive), which the
    summary line's counts alone do not say. The counts are of rows as read, the whole
    run's (a resume's start from its checkpoint's), so the share is a rough one."""
    both, test = summary.get("bad_input") or {}, summary.get("bad_input_test") or {}
    test_rows = int(test.get("rows_skipped_total") or 0)
    reasons = f"by reason, both splits: {skipped_by_reason(both)}"
    skipped = int(both.get("rows_skipped_total") or 0) - test_rows
    warn_of_skipped_rows("training", skipped, trained, reasons)
    warn_of_skipped_rows("test", test_rows, int(summary.get("test_examples") or 0), reasons)


def skipped_by_reason(bad_input: dict[str, Any]) -> dict[str, int]:
    """A summary's ``bad_input`` counts of skipped rows, by reason, in order."""
    return dict(sorted((bad_input.get("rows_skipped") or {}).items()))


def warn_of_skipped_rows(split: str, skipped: int, kept: int, reasons: str) -> None:
    """:func:`warn_of_skipped_share`'s warning for one split, ``skipped`` of its rows lost
    and ``kept`` used (``reasons``: the counts by reason, as the warning says them)."""
    if skipped > 0 and skipped > SKIPPED_ROWS_WARNING * (skipped + kept):
        LOG.warning(
            f"{skipped / (skipped + kept):.0%} of the {split} rows read were skipped as "
            f"bad input ({skipped:,} rows; {reasons}): so large a share is most often a "
            "column read as what it is not (labels written 1/2, not 0/1), and the model "
            "trained or was tested without them. With data.on_bad_input=error a run stops "
            "at the first, naming its file and column"
        )

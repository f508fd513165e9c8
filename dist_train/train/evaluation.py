"""Evaluation: metrics over every test row, after training or of a checkpoint alone.

:func:`evaluate_test_rows` is training's last stage (:func:`~dist_train.train.loop.run_worker`);
:func:`run_evaluation` is the worker function of ``dist-train evaluate``: it loads a committed
checkpoint (resharded to this job's ranks and plan, as a resume is), evaluates it, and
trains and saves nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

from dist_train.checkpoint.load import load
from dist_train.config.schema import JobConfig
from dist_train.data.listing import DataSourceError, RowGroup, assign_row_groups, eval_steps
from dist_train.data.memory import reuse_freed_memory
from dist_train.data.rows import Rows
from dist_train.data.stream import padded, prefetch
from dist_train.data.validation import BadInputCounts, BadInputPolicy, across_ranks, skipped_counts
from dist_train.devices import rank_device
from dist_train.logs import setup_logging
from dist_train.storage import Location, location
from dist_train.train.metrics import EvalFigures, EvalMetrics
from dist_train.train.progress import Progress
from dist_train.train.rank_layout import check_landing, discover_rank_layout
from dist_train.train.trainer import Trainer
from dist_train.train.worker_inputs import WorkerInputs


class EvaluationSummary(EvalFigures):
    """What ``dist-train evaluate`` reports: ``evaluation.json``, the ``eval`` record of its
    ``metrics.jsonl``."""

    checkpoint: str
    step: int  # the checkpoint's training step
    eval_seconds: float
    bad_input: dict[str, Any]  # the test files'
    device: str
    world_size: int


def run_evaluation(
    cfg: JobConfig,
    inputs: WorkerInputs,
    node_id: str,
    report: Callable[[EvaluationSummary], None] | None = None,
) -> EvaluationSummary:
    """Evaluate the checkpoint ``inputs.resume`` on ``inputs.test_groups`` on this rank;
    returns (and reports) the summary."""
    if inputs.resume is None:
        raise ValueError("run_evaluation evaluates a checkpoint: inputs.resume is None")
    setup_logging(inputs.verbosity)
    rank, world = dist.get_rank(), dist.get_world_size()
    reuse_freed_memory()
    topo = discover_rank_layout(node_id)
    check_landing(cfg, inputs.plan, topo, world)
    trainer = Trainer.build(
        cfg, inputs.plan, rank_device(inputs.device_type), topo.local_world_size
    )
    progress = Progress(
        inputs.run_dir, enabled=rank == 0, log_every=cfg.train.log_every, examples_per_step=0
    )
    position = load(trainer, location(inputs.resume), resuming=False)
    policy = BadInputPolicy.for_job(cfg)
    start = time.perf_counter()
    metrics = evaluate_test_rows(
        cfg, inputs.test_groups, trainer, policy, rank, world, trained=False
    )
    summary = EvaluationSummary(
        checkpoint=str(inputs.resume),
        step=position.step,
        **metrics.as_summary(),
        eval_seconds=time.perf_counter() - start,
        bad_input=total_counts(policy.counts, inputs.file_counts).as_dict(),
        device=trainer.device.type,
        world_size=world,
    )
    progress.log(
        {"event": "eval", **summary},
        f"{inputs.resume} (step {position.step}): {metrics.describe()}",
    )
    if report is not None:
        report(summary)
    sys.stdout.flush()
    return summary


def total_counts(local: BadInputCounts, driver: BadInputCounts | None) -> BadInputCounts:
    """Every rank's ``local`` counts and the driver's (of files), added up (a collective)."""
    return (driver or BadInputCounts()).merge(across_ranks(local))


def evaluate_test_rows(
    cfg: JobConfig,
    groups: list[RowGroup],
    trainer: Trainer,
    policy: BadInputPolicy,
    rank: int,
    world: int,
    trained: bool = True,
    saved: Location | None = None,
) -> EvalMetrics:
    """Metrics over every test row: ranks read their row groups in order, padded to equal
    step counts (collectives need them) with rows that do not count. ``trained``: after
    training, whose newest checkpoint is ``saved`` (None: none), not a checkpoint's
    evaluation alone."""
    builder = trainer.batch_builder()
    batch_size = cfg.train.eval_batch_size
    assignment = assign_row_groups(groups, world, cfg.seed, 0, shuffle=False)

    def rows(of: list[RowGroup], checks: BadInputPolicy) -> Iterator[tuple[Rows, str]]:
        return builder.stream(of, batch_size, checks, drop_last=False)

    # Rows that pad the ranks with fewer steps: the first batch that reads cleanly, checked
    # like every other (a corrupt one is named, or skipped without counting it twice).
    scan = BadInputPolicy.for_job(cfg)
    filler = next((block for block, _ in rows(groups, scan)), None)
    if filler is None:  # every rank finds none: the same scan of every test file
        files = sorted({g.path for g in groups})
        more = ", ..." if len(files) > 1 else ""
        after = ""
        if trained:
            after = (
                f"Training finished, saved as {saved}; "
                if saved
                else ("Training finished, and saved no checkpoint; ")
            )
        raise DataSourceError(
            f"no test row to evaluate: all of the {sum(g.num_rows for g in groups):,} rows of "
            f"the {len(files)} test file(s) ({files[0]}{more}) were skipped as bad input "
            f"({skipped_counts(scan.counts.as_dict())}). {after}check data.test_path"
        )
    steps = eval_steps(assignment, batch_size)
    eval_batches = prefetch(
        (
            (builder.to_batch(block), valid)
            for block, valid in padded(rows(assignment[rank], policy), batch_size, steps, filler)
        ),
        cfg.train.prefetch_batches,
        niceness=cfg.train.prefetch_niceness,
    )
    return trainer.evaluate(eval_batches)

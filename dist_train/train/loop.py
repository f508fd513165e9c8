"""The per-worker training function: Ray-free, so any launcher can run it.

    build trainer; for each epoch: stream this rank's row groups -> train_step; evaluate.

Rank 0 prints progress and appends it to ``<run_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dist_train import checkpoint
from dist_train.config import JobConfig
from dist_train.data.batch import BatchBuilder
from dist_train.data.epoch_plan import EpochPlan
from dist_train.data.memory import reuse_freed_memory
from dist_train.data.reader import (
    RowGroup,
    assign_row_groups,
    batches,
    eval_steps,
    padded_tables,
    prefetch,
    row_group_tables,
    steps_per_epoch,
)
from dist_train.data.rows import Rows
from dist_train.data.validation import BadInputCounts, BadInputPolicy
from dist_train.storage import Location, location
from dist_train.train.faults import maybe_kill
from dist_train.train.ledger import Ledger
from dist_train.train.metrics import EvalMetrics
from dist_train.train.sharding import JobPlan
from dist_train.train.topology import Topology, TopologyError, discover_topology
from dist_train.train.trainer import Trainer

Report = Callable[[dict[str, Any]], None]
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerInputs:
    """What the driver hands every worker: the listed row groups and where to write."""

    train_groups: list[RowGroup]
    test_groups: list[RowGroup]
    run_dir: str
    plan: JobPlan | None = None  # made on the driver; None = each rank plans for itself
    file_counts: BadInputCounts | None = None  # bad files the driver skipped
    resume: str | None = None  # a committed checkpoint to continue from
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this launch's checkpoints


class _Progress:
    """Rank-0 progress lines on stdout and in metrics.jsonl."""

    def __init__(self, run_dir: str, enabled: bool, append: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:  # a resumed run continues its predecessor's log
                self.path.write_text("")

    def log(self, record: dict[str, Any], line: str) -> None:
        if not self.enabled:
            return
        # Not print(): Ray Train patches print() into its logger, which duplicates lines.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _mean_across_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _while_all_ranks_have(items: Iterator[T]) -> Iterator[T]:
    """Yield while every rank still has an item: skipped bad rows can leave a rank short, and
    the sharded embedding's collectives need all ranks to step together."""
    it = iter(items)
    while True:
        item = next(it, None)
        flag = torch.tensor([0 if item is None else 1])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag.item()) == 0:
            return
        yield item  # type: ignore[misc]


def _total_counts(local: BadInputCounts, driver: BadInputCounts | None) -> BadInputCounts:
    gathered: list[BadInputCounts | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    total = driver or BadInputCounts()
    for counts in gathered:
        if counts is not None:
            total = total.merge(counts)
    return total


def _epoch_plan(
    groups: list[RowGroup],
    world: int,
    cfg: JobConfig,
    epoch: int,
    position: checkpoint.TrainPosition,
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


def _rank_rows(
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


def _check_landing(cfg: JobConfig, plan: JobPlan | None, topo: Topology, world: int) -> None:
    """Fail, saying how the workers landed, if that does not match the config or the plan."""
    if cfg.ray.num_nodes is not None and topo.num_nodes != cfg.ray.num_nodes:
        raise TopologyError(
            f"the job asks for {cfg.ray.num_nodes} nodes but its {world} workers landed on "
            f"{topo.num_nodes} ({topo.local_world_size} ranks each); check ray.num_nodes, "
            "cpus_per_worker and the nodes' CPU counts"
        )
    if plan is not None and plan.hierarchical and plan.local_world_size != topo.local_world_size:
        raise TopologyError(
            f"the plan puts {plan.local_world_size} ranks on a node but the workers landed "
            f"{topo.local_world_size} per node on {topo.num_nodes} node(s); set ray.num_nodes "
            "to match the cluster"
        )


def _evaluate(
    cfg: JobConfig,
    groups: list[RowGroup],
    trainer: Trainer,
    policy: BadInputPolicy,
    rank: int,
    world: int,
) -> EvalMetrics:
    """Metrics over every test row: ranks read their row groups in order, padded to equal
    step counts (collectives need them) with rows that do not count."""
    builder = trainer.batch_builder()
    batch_size = cfg.train.eval_batch_size
    assignment = assign_row_groups(groups, world, cfg.seed, 0, shuffle=False)
    # Rows that pad the ranks with fewer steps: the first row group that reads cleanly, checked
    # like every other (a corrupt one is named, or skipped without counting it twice).
    checked = BadInputPolicy.for_job(cfg)
    filler = next(table for table, _ in row_group_tables(groups, builder.columns, checked))
    padded = padded_tables(
        assignment[rank],
        builder.columns,
        batch_size,
        eval_steps(assignment, batch_size),
        filler,
        policy,
    )
    eval_batches = prefetch(
        ((builder.build(table, source), valid) for table, source, valid in padded),
        cfg.train.prefetch_batches,
    )
    return trainer.evaluate(eval_batches)


def run_worker(
    cfg: JobConfig,
    inputs: WorkerInputs,
    node_id: str,
    report: Report | None = None,
    checkpointed: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate on this rank; returns (and reports) the run summary.

    ``node_id`` names the machine (or simulated node) this rank runs on; ranks sharing it
    form one host for hierarchical sharding. ``checkpointed(path, step)`` runs on every rank
    after each committed checkpoint (Ray Train records it for restarts after a failure).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    reuse_freed_memory()  # row groups decode into MBs of short-lived arrays
    topo = discover_topology(node_id)
    _check_landing(cfg, inputs.plan, topo, world)
    trainer = Trainer.build(cfg, inputs.plan, local_world_size=topo.local_world_size)
    placements = trainer.plan.placements()
    builder = trainer.batch_builder()
    policy = BadInputPolicy.for_job(cfg)
    progress = _Progress(inputs.run_dir, rank == 0, append=inputs.resume is not None)
    tc = cfg.train
    progress.log(
        {
            "event": "start",
            "world_size": world,
            "num_nodes": topo.num_nodes,
            "ranks_per_node": topo.local_world_size,
            "node_ids": list(topo.node_ids),
            "sharding": placements,
            "tables": [t.__dict__ for t in trainer.layout.tables],
        },
        f"[dist-train] {world} rank(s) on {topo.num_nodes} node(s), "
        f"{trainer.layout.kind} embedding: "
        + ", ".join(f"{t.name} {t.num_rows:,}x{t.dim}" for t in trainer.layout.tables[:4])
        + (" ..." if len(trainer.layout.tables) > 4 else "")
        + f", {trainer.plan.label} sharding, batch {tc.batch_size}/rank",
    )

    position = checkpoint.TrainPosition()
    if inputs.resume:
        position = checkpoint.load(trainer, location(inputs.resume))
        policy.counts.rows = dict(position.bad_input_rows)
        policy.counts.row_groups = position.bad_input_row_groups
        progress.log(
            {"event": "resume", "checkpoint": inputs.resume, **asdict(position)},
            f"[dist-train] resumed from {inputs.resume}: step {position.step}, epoch "
            f"{position.epoch}, {position.batches} batches into it",
        )
    ledger = Ledger(inputs.run_dir, rank, position.step) if cfg.data.row_id_column else None

    def committed(path: Location, pos: checkpoint.TrainPosition) -> None:
        if checkpointed is not None:
            checkpointed(str(path), pos.step)
        progress.log(
            {"event": "checkpoint", "path": str(path), **asdict(pos)},
            f"[dist-train] checkpoint step {pos.step} -> {path}",
        )

    saver = checkpoint.CheckpointSaver(
        trainer,
        checkpoint.checkpoint_root(cfg),
        cfg.checkpoint.num_to_keep,
        {"config": cfg.model_dump(mode="json"), "sharding": placements, "run_id": inputs.run_id},
        on_commit=committed,
        before_commit=lambda step: maybe_kill(inputs.run_dir, rank, step, "save"),
        background=cfg.checkpoint.background,
    )

    def save(epoch: int, batches_done: int, plan: EpochPlan | None) -> None:
        saver.save(
            checkpoint.TrainPosition(
                step,
                epoch,
                batches_done,
                dict(policy.counts.rows),
                policy.counts.row_groups,
                plan.as_json() if plan is not None and batches_done else None,
            )
        )

    step, examples, window_loss, window_steps = position.step, 0, 0.0, 0
    train_seconds = 0.0
    first_step_unix: float | None = None
    first_step_clock = 0.0
    last_loss = float("nan")
    end_epoch, end_batches = position.epoch, position.batches
    end_plan: EpochPlan | None = None
    for epoch in range(position.epoch, tc.epochs):
        epoch_plan, skip = _epoch_plan(inputs.train_groups, world, cfg, epoch, position)
        epoch_steps = epoch_plan.steps
        num_steps = epoch_steps - skip
        if tc.max_steps is not None:
            num_steps = min(num_steps, tc.max_steps - step)
        if num_steps <= 0:
            break
        start = time.perf_counter()
        window_start = start
        rows = _rank_rows(builder, inputs.train_groups, cfg, epoch, epoch_plan, rank, skip, policy)
        stream = batches(rows, num_steps, builder.batch, tc.prefetch_batches)
        done = skip
        for batch in _while_all_ranks_have(stream):
            window_loss += trainer.train_step(batch)
            window_steps += 1
            step += 1
            done += 1
            if ledger is not None:
                ledger.record(step, epoch, batch.row_ids)
            maybe_kill(inputs.run_dir, rank, step, settle=saver.wait)
            if first_step_unix is None:
                first_step_unix, first_step_clock = time.time(), time.perf_counter()
            examples += tc.batch_size * world
            if step % tc.log_every == 0:
                loss = _mean_across_ranks(window_loss / window_steps)
                now = time.perf_counter()
                rate = window_steps * tc.batch_size * world / (now - window_start)
                progress.log(
                    {
                        "event": "train",
                        "epoch": epoch,
                        "step": step,
                        "loss": loss,
                        "examples_per_second": rate,
                    },
                    f"[dist-train] epoch {epoch} step {step}/{step - done + epoch_steps} "
                    f"loss {loss:.4f} {rate:,.0f} examples/s",
                )
                last_loss, window_loss, window_steps, window_start = loss, 0.0, 0, now
            every = cfg.checkpoint.every_steps
            if every and step % every == 0:
                save(*((epoch + 1, 0, None) if done >= epoch_steps else (epoch, done, epoch_plan)))
        train_seconds += time.perf_counter() - start
        stopped_early = tc.max_steps is not None and step >= tc.max_steps and done < epoch_steps
        end_epoch, end_batches = (epoch, done) if stopped_early else (epoch + 1, 0)
        end_plan = epoch_plan if stopped_early else None
        if stopped_early:
            break
    if cfg.checkpoint.save_at_end and step != saver.last_step:
        save(end_epoch, end_batches, end_plan)
    saver.wait()
    steady_seconds = time.perf_counter() - first_step_clock if first_step_unix else 0.0
    if window_steps:
        last_loss = _mean_across_ranks(window_loss / window_steps)

    eval_start = time.perf_counter()
    metrics = _evaluate(cfg, inputs.test_groups, trainer, policy, rank, world)
    bad_input = _total_counts(policy.counts, inputs.file_counts).as_dict()
    summary = {
        "steps": step,
        "train_examples": examples,
        "train_seconds": train_seconds,
        "examples_per_second": examples / train_seconds if train_seconds > 0 else 0.0,
        # After the first step: excludes one-time costs (first batch read, kernel warm-up).
        "steady_examples_per_second": (
            (examples - tc.batch_size * world) / steady_seconds if steady_seconds > 0 else 0.0
        ),
        "first_step_unix": first_step_unix,
        "final_train_loss": last_loss,
        "test_auc": metrics.auc,
        "test_log_loss": metrics.log_loss,
        "test_ne": metrics.ne,
        "test_examples": metrics.num_examples,
        "eval_seconds": time.perf_counter() - eval_start,
        "bad_input": bad_input,
        "world_size": world,
        "num_nodes": topo.num_nodes,
        "ranks_per_node": topo.local_world_size,
        "node_ids": list(topo.node_ids),
        "sharding": placements,
        "embedding_kind": trainer.layout.kind,
        "embedding_parameters": trainer.layout.num_parameters,
        "checkpoint": None if saver.last_path is None else str(saver.last_path),
    }
    progress.log(
        {"event": "eval", **summary},
        f"[dist-train] test AUC {metrics.auc:.4f} log loss {metrics.log_loss:.4f} "
        f"NE {metrics.ne:.4f} on {metrics.num_examples:,} examples",
    )
    if report is not None:
        report(summary)
    sys.stdout.flush()
    return summary

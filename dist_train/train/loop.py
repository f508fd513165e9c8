"""The per-worker training function: Ray-free, so any launcher can run it.

    build the trainer; resume; for each epoch, for each batch once trained: audit, log,
    checkpoint; finish the checkpoints; evaluate; summarize.

Each concern is a component with one job: :class:`~dist_train.train.epochs.Epochs` (which
batches, from where), :class:`~dist_train.train.progress.Progress` (counts, progress lines,
``metrics.jsonl``), :class:`~dist_train.train.checkpointing.Checkpoints` (resume, when and
what to save), :class:`~dist_train.train.audit.StepAudit` (row ledger, kill drill).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from dist_train.config.schema import JobConfig
from dist_train.data.memory import reuse_freed_memory
from dist_train.data.validation import BadInputPolicy
from dist_train.devices import rank_device
from dist_train.logs import setup_logging
from dist_train.models.dot_interaction import implementation_on
from dist_train.train.audit import StepAudit
from dist_train.train.checkpointing import Checkpoints
from dist_train.train.epochs import Epochs
from dist_train.train.evaluation import evaluate_test_rows, total_counts
from dist_train.train.metrics import EvalFigures
from dist_train.train.progress import Progress, TrainFigures
from dist_train.train.rank_layout import RankLayout, check_landing, discover_rank_layout
from dist_train.train.trainer import Trainer
from dist_train.train.worker_inputs import WorkerInputs
from planners.cores import cpu_list, process_cores


class TrainingDiverged(RuntimeError):
    """A step's loss was not finite: the weights it leaves are no longer numbers, so the run
    stops before any checkpoint of them. (One message argument: Ray pickles a worker's
    error to the driver, which rebuilds it from its ``args``.)"""

    @classmethod
    def at(cls, step: int, loss: float, rank: int) -> TrainingDiverged:
        return cls(
            f"step {step}: the training loss is {loss} on rank {rank}; training stopped and "
            "saved no checkpoint of this step or later. Lower train.dense_learning_rate or "
            "embedding.optimizer.learning_rate, or look for huge values in the data's dense "
            "columns"
        )


class RunSummary(TrainFigures, EvalFigures):
    """What a run reports: ``summary.json``, the last ``metrics.jsonl`` record, Ray's result
    (the driver adds wall and start-up seconds)."""

    steps: int  # the global step reached (a resumed run's count from its checkpoint's)
    steps_this_launch: int  # the steps this launch trained: the rates' and examples' steps
    # where Ray restarted the worker group (a worker failed), else None: the rates and
    # steps_this_launch are the restarted group's, from this step
    restarted_at_step: int | None
    eval_seconds: float
    bad_input: dict[str, Any]  # both splits'
    bad_input_test: dict[str, Any]  # the test split's share
    device: str
    world_size: int
    num_nodes: int
    ranks_per_node: int
    node_ids: list[str]
    rank_cores: list[str]  # the CPUs each rank may run on, as "0-3,8" (ray.pin_cores)
    sharding: dict[str, dict[str, object]]  # in 2D, the first group's (every group's alike)
    sharding_group_size: int  # ranks a group shards the tables over (the world: 1D)
    sharding_replicas: int  # groups, each a copy of the tables, merged (2D; 1 in 1D)
    embedding_kind: str
    embedding_parameters: int
    checkpoint: str | None


Report = Callable[[RunSummary], None]


def run_worker(
    cfg: JobConfig,
    inputs: WorkerInputs,
    node_id: str,
    report: Report | None = None,
    checkpointed: Callable[[str, int], None] | None = None,
) -> RunSummary:
    """Train and evaluate on this rank; returns (and reports) the run summary.

    ``node_id`` names the machine (or simulated node) this rank runs on; ranks sharing it
    form one host for hierarchical sharding. ``checkpointed(path, step)`` runs on every rank
    after each committed checkpoint (Ray Train records it for restarts after a failure).
    """
    setup_logging(inputs.verbosity)
    rank, world = dist.get_rank(), dist.get_world_size()
    reuse_freed_memory()  # row groups decode into MBs of short-lived arrays
    topo = discover_rank_layout(node_id)
    check_landing(cfg, inputs.plan, topo, world)
    device = rank_device(inputs.device_type)
    trainer = Trainer.build(cfg, inputs.plan, device, topo.local_world_size)
    policy = BadInputPolicy.for_job(cfg, replayed=True)
    progress = Progress(
        inputs.run_dir,
        enabled=rank == 0,
        log_every=cfg.train.log_every,
        examples_per_step=cfg.train.batch_size * world,
        append=inputs.resume is not None,
    )
    rank_cores = _gather_cores()
    _log_start(progress, trainer, topo, cfg, rank_cores)
    checkpoints = Checkpoints(
        cfg,
        trainer,
        progress,
        inputs.run_dir,
        inputs.run_id,
        inputs.resume,
        rank,
        checkpointed,
        inputs.train_groups,
    )
    start = checkpoints.resume(policy)
    audit = StepAudit(cfg, inputs.run_dir, rank, start.step, settle=checkpoints.wait)

    pin = device.type == "cuda"
    epochs = Epochs(cfg, inputs.train_groups, trainer.batch_builder(), policy, start, pin)
    for epoch in epochs:
        progress.epoch_started()
        for batch, loss in epoch.trained(trainer.train_steps):
            checkpoints.step_done(loss)  # the save before it commits if the loss is finite
            if not math.isfinite(loss):  # the other ranks stop when this one ends
                raise TrainingDiverged.at(epochs.step, loss, rank)
            progress.step_done(loss)
            audit.after(epochs.step, epoch.index, batch)
            if progress.should_log(epochs.step):
                progress.log_train(epoch.index, epochs.step, epoch.last_step)
            if checkpoints.should_save(epochs.step, last=epoch.ends_training):
                checkpoints.save(epoch.position())
        progress.epoch_ended()
        trained_last = epoch
    # the steps since the last train record, logged: a launch stopped between log steps
    # (or ending on one) would leave their loss out of metrics.jsonl
    if progress.window_steps:
        progress.log_train(trained_last.index, epochs.step, trained_last.last_step)
    trainer.sync_replicas()  # 2D: evaluate and save the merged replicas
    last_checkpoint = checkpoints.finish(epochs.position())
    trained = progress.figures()  # its clock stopped at the last epoch's end (not the save)

    eval_start = time.perf_counter()
    before_test = policy.counts.copy()
    policy.replayed = False  # the test rows are read once, whole: nothing replays them
    metrics = evaluate_test_rows(
        cfg, inputs.test_groups, trainer, policy, rank, world, saved=last_checkpoint
    )
    test_counts = total_counts(policy.counts.since(before_test), inputs.test_file_counts)
    summary = RunSummary(
        steps=epochs.step,
        steps_this_launch=epochs.step - start.step,
        restarted_at_step=start.step if inputs.restarted else None,
        **trained,
        **metrics.as_summary(),
        eval_seconds=time.perf_counter() - eval_start,
        bad_input=total_counts(policy.counts, inputs.file_counts).as_dict(),
        bad_input_test=test_counts.as_dict(),
        device=trainer.device.type,
        world_size=topo.world_size,
        num_nodes=topo.num_nodes,
        ranks_per_node=topo.local_world_size,
        node_ids=list(topo.node_ids),
        rank_cores=rank_cores,
        sharding=trainer.plan.placements(),
        sharding_group_size=trainer.plan.sharding_group_size,
        sharding_replicas=trainer.plan.replicas,
        embedding_kind=trainer.layout.kind,
        embedding_parameters=trainer.layout.num_parameters,
        checkpoint=None if last_checkpoint is None else str(last_checkpoint),
    )
    progress.log({"event": "eval", **summary}, metrics.describe())
    if report is not None:
        report(summary)
    sys.stdout.flush()
    return summary


def _gather_cores() -> list[str]:
    """Every rank's CPUs, by rank (:func:`~planners.cores.cpu_list`)."""
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, cpu_list(process_cores()))
    return [c or "" for c in gathered]


def _log_start(
    progress: Progress,
    trainer: Trainer,
    topo: RankLayout,
    cfg: JobConfig,
    rank_cores: list[str],
) -> None:
    tables = trainer.layout.tables
    world = dist.get_world_size()
    # which dot interaction runs: the C one is an optional build (setup.py)
    dots = cfg.model.kind == "dlrm" and cfg.model.interaction == "dot"
    interaction = implementation_on(trainer.device) if dots else None
    progress.log(
        {
            "event": "start",
            "device": trainer.device.type,
            "world_size": world,
            "num_nodes": topo.num_nodes,
            "ranks_per_node": topo.local_world_size,
            "node_ids": list(topo.node_ids),
            "rank_cores": rank_cores,
            "sharding": trainer.plan.placements(),
            "sharding_group_size": trainer.plan.sharding_group_size,
            "sharding_replicas": trainer.plan.replicas,
            "tables": [t.__dict__ for t in tables],
            "pipeline": trainer.pipelined,
            "dot_interaction": interaction,
        },
        f"{world} {trainer.device.type.upper()} rank(s) on {topo.num_nodes} node(s), "
        f"{trainer.layout.kind} embedding: "
        + ", ".join(f"{t.name} {t.num_rows:,}x{t.dim}" for t in tables[:4])
        + (" ..." if len(tables) > 4 else "")
        + f", {trainer.plan.label} sharding, batch {cfg.train.batch_size}/rank"
        + (", TorchRec train pipeline" if trainer.pipelined else "")
        + (f", {interaction} dot interaction" if interaction else ""),
    )

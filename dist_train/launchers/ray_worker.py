"""What each Ray Train worker runs: one rank of the job, reporting through
:mod:`dist_train.launchers.ray_reports` (its summary to the driver, its checkpoints to a
worker group Ray Train restarts)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ray
import ray.train
import torch.distributed as dist

from dist_train.config.load import parse_config
from dist_train.data.listing import DataSourceError
from dist_train.data.validation import BadInputError, InputReadError
from dist_train.launchers.affinity import pin_local_rank
from dist_train.launchers.ray_reports import FAILED, checkpoint_reporter, ray_record, report
from dist_train.logs import LOG, drop_message, setup_logging, worded_for_users
from dist_train.train.checkpointing import failed_before, record_failure, restart_point
from dist_train.train.evaluation import run_evaluation
from dist_train.train.loop import TrainingDiverged, run_worker

# where Ray Train's worker logs the traceback of an error its training function raised
RAY_TRAIN_ERROR_LOGGER = "ray.train.v2._internal.util"


def repeats_on_restart(error: BaseException) -> bool:
    """Whether ``error`` is one of the run itself, not of a worker or its machine: a group
    Ray Train restarts resumes the same checkpoint and meets it again (the same loss, the
    same bad row), so the rank records it (``record_failure``) and the restarted group
    ends. Not a read's I/O error (``InputReadError``), which may be the storage's for a
    moment."""
    repeats = (TrainingDiverged, BadInputError, DataSourceError)
    return isinstance(error, repeats) and not isinstance(error, InputReadError)


def run_rank(payload: dict[str, Any]) -> None:
    """One rank of the job: ``payload`` is what the launcher's ``_fit`` sent, through
    :func:`~dist_train.launchers.ray_entry.train_loop_per_worker`."""
    os.environ.update(payload["drills"])
    cfg = parse_config(payload["config"], "<driver>")
    if payload["pin_cores"]:
        context = ray.train.get_context()
        pin_local_rank(
            context.get_local_rank(), context.get_local_world_size(), cfg.ray.threads_per_worker
        )
    inputs = payload["inputs"]  # a WorkerInputs, plan included (the driver pickled it)
    setup_logging(inputs.verbosity)
    recorded = ray_record(inputs.run_id) if dist.get_rank() == 0 else None
    restart = restart_point(cfg, inputs.run_id, recorded)
    if restart is not None:  # Ray Train restarted the group after a worker failed
        LOG.info(f"worker group restarted; resuming from {restart}")
        inputs = dataclasses.replace(inputs, resume=restart, restarted=True)
    failure = failed_before(cfg, inputs.run_id)
    if failure is not None:  # it would fail again: end, so that Ray restarts no more
        report({FAILED: list(failure)})
        return
    world = ray.train.get_context().get_world_size()
    if inputs.plan is not None and inputs.plan.world_size != world:
        # An elastic group of another size: the workers plan for themselves (rank 0 plans
        # and broadcasts), and the resume reshards into that plan.
        LOG.info(f"{world} workers instead of {inputs.plan.world_size}: re-planning")
        inputs = dataclasses.replace(inputs, plan=None)
        if cfg.sharding.group_size != "auto":
            # a 2D group size chosen for the full world may not tile this one
            LOG.info(f"sharding.group_size={cfg.sharding.group_size}: auto for {world} workers")
            sharding = cfg.sharding.model_copy(update={"group_size": "auto"})
            cfg = cfg.model_copy(update={"sharding": sharding})
    node_id = ray.get_runtime_context().get_node_id()
    try:
        if inputs.evaluate_only:
            run_evaluation(cfg, inputs, node_id, report=report)
        else:
            run_worker(
                cfg,
                inputs,
                node_id,
                report=report,
                checkpointed=checkpoint_reporter(inputs.run_id),
            )
    except Exception as error:
        if repeats_on_restart(error):
            record_failure(cfg, inputs.run_id, dist.get_rank(), error)
        if worded_for_users(error) and inputs.verbosity != "verbose":
            # the driver says it in a line; Ray Train's worker would add its traceback from
            # every rank (Ray's error, which -v logs, holds it too)
            drop_message(RAY_TRAIN_ERROR_LOGGER, "Error in training function")
        raise

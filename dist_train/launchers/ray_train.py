"""Launch the worker function as Ray Train ``TorchTrainer`` workers (gloo on CPU)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dist_train.config import JobConfig, parse_config
from dist_train.launchers.cluster import check_fits, describe, live_nodes
from dist_train.logs import quiet_worker_logs

if TYPE_CHECKING:
    from dist_train.train.loop import WorkerInputs


class LaunchError(RuntimeError):
    """The Ray job could not start or did not finish."""


SUMMARY_FILE = "summary.json"
POINTER_FILE = "dist_train_checkpoint.json"


def _report(metrics: dict[str, Any], attach: str = SUMMARY_FILE) -> None:
    """Report ``metrics`` from every rank (Ray Train requires all to report); rank 0 attaches
    them as a tiny checkpoint file named ``attach``, which ``Result`` and
    ``get_checkpoint()`` then carry."""
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / attach).write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _checkpoint_reporter(run_id: str) -> Callable[[str, int], None]:
    """Tell Ray Train about each committed checkpoint with a pointer to it (the DCP shards
    stay where every rank wrote them), so a restarted worker group finds it."""

    def report(path: str, step: int) -> None:
        _report({"step": step, "checkpoint": path, "run_id": run_id}, attach=POINTER_FILE)

    return report


def _restart_point(cfg: JobConfig, inputs: WorkerInputs) -> str | None:
    """The checkpoint a restarted worker group resumes from; None on a first start.

    Only checkpoints of this launch count (its ``run_id``): Ray Train also restores its
    records from an earlier launch that used the same storage path. Ray's record
    (``get_checkpoint()``) lags, because it registers a report when its controller next polls
    the workers, so the newest checkpoint this launch committed is considered too. Rank 0
    decides and tells the others: on a shared filesystem another node may not see the newest
    directory yet.
    """
    import ray.train
    import torch.distributed as dist

    from dist_train import checkpoint  # here: it imports torchrec (see _ray_worker)

    choice: list[str | None] = [None]
    if dist.get_rank() == 0:
        candidates: list[tuple[int, str]] = []
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as path:
                pointer = Path(path) / POINTER_FILE
                record = json.loads(pointer.read_text()) if pointer.is_file() else {}
            if record.get("run_id") == inputs.run_id:
                candidates.append((int(record["step"]), str(record["checkpoint"])))
        for path in reversed(checkpoint.committed(checkpoint.checkpoint_root(cfg))):
            try:
                meta = checkpoint.read_meta(path)
            except checkpoint.CheckpointError:
                continue
            if meta.get("run_id") == inputs.run_id:
                candidates.append((int(meta["position"]["step"]), str(path)))
                break
        choice[0] = max(candidates)[1] if candidates else None
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def _ray_worker(payload: dict[str, Any]) -> None:
    quiet_worker_logs()
    # Imported here, after quieting, so FBGEMM's import-time INFO lines stay out of the output.
    from dist_train.train.loop import run_worker

    cfg = parse_config(payload["config"], "<driver>")
    inputs = payload["inputs"]  # a WorkerInputs, plan included (Ray pickles the config)
    import ray
    import ray.train

    restart = _restart_point(cfg, inputs)
    if restart is not None:  # Ray Train restarted the group after a worker failed
        print(f"[dist-train] worker group restarted; resuming from {restart}", flush=True)
        inputs = dataclasses.replace(inputs, resume=restart)
    world = ray.train.get_context().get_world_size()
    if inputs.plan is not None and inputs.plan.world_size != world:
        # An elastic group of another size: the workers plan for themselves (rank 0 plans
        # and broadcasts), and the resume reshards into that plan.
        print(
            f"[dist-train] {world} workers instead of {inputs.plan.world_size}: re-planning",
            flush=True,
        )
        inputs = dataclasses.replace(inputs, plan=None)
    node_id = ray.get_runtime_context().get_node_id()
    run_worker(
        cfg, inputs, node_id, report=_report, checkpointed=_checkpoint_reporter(inputs.run_id)
    )


def _init_ray(cfg: JobConfig) -> bool:
    """Connect to the configured cluster, or start an embedded one; True if embedded."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        print(f"[dist-train] joining Ray cluster at {address}", flush=True)
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        return False
    needed = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    num_cpus = os.cpu_count() or 1
    if needed > num_cpus:
        print(
            f"[dist-train] {cfg.ray.num_workers} workers x {cfg.ray.cpus_per_worker:g} CPU "
            f"exceed this machine's {num_cpus} cores; oversubscribing the embedded Ray instance",
            file=sys.stderr,
            flush=True,
        )
        num_cpus = math.ceil(needed)
    # A local instance cannot be preempted; its watcher actor only adds start-up noise.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    print(
        f"[dist-train] starting an embedded Ray instance on 127.0.0.1 ({num_cpus} CPUs)", flush=True
    )
    # Everything, the dashboard included, listens on loopback only.
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    return True


def check_cluster(cfg: JobConfig) -> None:
    """Fail fast if the connected cluster cannot host the worker group (unless autoscaling)."""
    import ray

    nodes = live_nodes(ray.nodes())
    print(f"[dist-train] Ray cluster: {describe(nodes)}", flush=True)
    if not cfg.ray.autoscaling:
        needed = cfg.ray.min_workers or cfg.ray.num_workers  # elastic: at least the minimum
        check_fits(nodes, needed, cfg.ray.cpus_per_worker, 0.0, cfg.ray.num_nodes)


def launch_ray(cfg: JobConfig, inputs: WorkerInputs) -> dict[str, Any]:
    """Run the job on Ray Train workers; the rank-0 summary."""
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchConfig, TorchTrainer

    embedded = _init_ray(cfg)
    try:
        check_cluster(cfg)
        storage = cfg.ray.storage_path or str((Path(inputs.run_dir) / "ray").resolve())
        workers: Any = cfg.ray.num_workers
        if cfg.ray.min_workers is not None:  # Ray Train v2's elastic (min, max); the stubs
            workers = (cfg.ray.min_workers, cfg.ray.num_workers)  # show v1's int only
        trainer = TorchTrainer(
            train_loop_per_worker=_ray_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "inputs": inputs},
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=False,
                resources_per_worker={"CPU": cfg.ray.cpus_per_worker},
                placement_strategy=cfg.ray.placement_strategy,
            ),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=storage,
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                # Ray Train v2's RunConfig (the default in Ray 2.60); the stubs show v1's.
                logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
            ),
        )
        try:
            result = trainer.fit()
        except Exception as err:  # Ray wraps worker errors; surface the root cause
            raise LaunchError(f"training failed: {err}") from err
        if result.error is not None:
            raise LaunchError(f"training failed: {result.error}")
        if result.checkpoint is None:
            raise LaunchError("training finished without reporting a summary")
        with result.checkpoint.as_directory() as path:
            return dict(json.loads((Path(path) / SUMMARY_FILE).read_text()))
    finally:
        if embedded:
            ray.shutdown()

"""``dist-train validate FILE...``: check job configs, cluster files and checkpoints before
anything starts.

A checkpoint directory (or URL) is verified file by file against its ``meta.json``
(:func:`dist_train.checkpoint.load.verify`).

Job configs are validated (schema, cross-field rules), their data paths resolved and their
embedding memory per rank estimated. Cluster-launcher YAMLs and KubeRay RayJob manifests are
checked and sized at their maximum; every job given is then checked to fit every cluster (a
RayJob's own ``--config``, with its ``--set`` overrides, is checked against it too).
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import METADATA
from dist_train.checkpoint.folders import META, not_committed, resolve_checkpoint
from dist_train.checkpoint.load import verify
from dist_train.checkpoint.meta import check_compatible, read_meta
from dist_train.config.args import add_config_args, add_train_args, train_overrides
from dist_train.config.errors import ConfigError
from dist_train.config.load import load_config, parse_with_overrides
from dist_train.config.paths import resolve_paths
from dist_train.config.schema import JobConfig
from dist_train.config.yaml_file import read_yaml
from dist_train.data.listing import DataSourceError, resolve_files
from dist_train.data.synthetic import train_row_groups
from dist_train.data.validation import BadInputError, BadInputPolicy, FooterRowsError
from dist_train.devices import DeviceError, DeviceType, resolve_device
from dist_train.driver import check_inputs, check_output_paths
from dist_train.embedding.layout import build_layout
from dist_train.input_checks import NoStepsError, SavedAt, check_steps
from dist_train.launchers.cluster import (
    ClusterLimits,
    ClusterTooSmallError,
    check_fits,
    packing_risk,
)
from dist_train.launchers.cluster_files import (
    ClusterFileError,
    entrypoint_command,
    launcher_limits,
    rayjob_nodes,
)
from dist_train.launchers.submit import local_copy, processes_on_a_cluster
from dist_train.models.dcn import wide_rank_note
from dist_train.storage import StorageError, location
from dist_train.train.sharding import JobPlan, plan_for_config
from planners.topology import TopologyError
from planners.types import WEIGHT_BYTES, OptimizerState, PlanningError


def embedding_bytes_per_rank(
    cfg: JobConfig, job_plan: JobPlan | None = None, device_type: DeviceType = "cpu"
) -> int:
    """Largest per-rank bytes of embedding weights + optimizer state on ``device_type`` ranks,
    read off the very plan the driver would ship (shard sizes and ranks), so no placement rule
    is repeated here."""
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    shapes = {t.name: (t.num_rows, t.dim) for t in layout.tables}
    state = OptimizerState.of(cfg.embedding.optimizer.type, device_type)
    per_rank = (job_plan or plan_for_config(cfg, device_type)).shards_per_rank(shapes)
    return max(
        sum(rows * cols * WEIGHT_BYTES + state.bytes_for(rows, cols) for rows, cols in shards)
        for shards in per_rank.values()
    )


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Planned:
    """A job's plan for ``device`` ranks, as :func:`_check_job` made it; ``plan`` None where
    planning failed (reported with the job, not again for each cluster)."""

    device: DeviceType
    plan: JobPlan | None


def _check_job(
    cfg: JobConfig, source: str, report: Report, clusters: bool = False
) -> _Planned | None:
    """Check a job on its own; returns its plan and the ranks it is for, None where each
    cluster is left to plan it. ``train.device: cuda`` is planned for GPU ranks (GPU memory
    rules), ``cpu`` and ``auto`` for CPU ranks; with ``clusters`` to check against, an
    ``auto`` job that does not fit CPU ranks is left to them (:func:`_check_fit`), since a
    cluster with a GPU per worker runs it on GPUs."""
    cfg = resolve_paths(cfg)  # as the driver reads them: ~ expanded, against this folder
    for check in (wide_rank_note, check_output_paths):  # what the run refuses before it starts
        try:
            check(cfg)
        except ConfigError as err:
            report.problems.append(f"{source}: {err}")
    _check_data(cfg, source, report)
    device: DeviceType = "cuda" if cfg.train.device == "cuda" else "cpu"
    try:
        plan = plan_for_config(cfg, device)
    except (PlanningError, TopologyError) as err:  # what training would refuse, named here
        if clusters and cfg.train.device == "auto":
            return None
        report.problems.append(f"{source}: sharding plan: {err}")
        return _Planned(device, None)
    mb = embedding_bytes_per_rank(cfg, plan, device) / 2**20
    report.ok.append(
        f"{source}: job {cfg.name!r}: {cfg.ray.num_workers} workers x "
        f"{cfg.ray.cpus_per_worker:g} CPU, {device} ranks, {plan.label} sharding, embedding "
        f"{mb:,.1f} MiB per rank (weights + optimizer state)"
    )
    return _Planned(device, plan)


def _check_data(cfg: JobConfig, source: str, report: Report) -> None:
    """The job's local data as training would check it before its first step: both splits'
    files, footers, columns and types, and the first epoch's steps (URLs are left to the
    run: this machine may not reach them; generated data is made by the run). ``cfg``'s
    paths are resolved (:func:`_check_job`)."""
    paths = {"train_path": cfg.data.train_path, "test_path": cfg.data.test_path}
    local = {k: v for k, v in paths.items() if v is not None and "://" not in v}
    found = 0
    for key, value in local.items():
        try:
            resolve_files(value)
            found += 1
        except DataSourceError as err:
            report.problems.append(f"{source}: data.{key}: {err}")
    # a checkpoint at a URL (named, or `latest` of a checkpoint.dir at one) is left to the
    # run, as data at one are, and with it the steps
    resume = cfg.checkpoint.resume
    where = (cfg.checkpoint.dir or "") if resume == "latest" else resume  # (else the run's)
    steps = where is None or "://" not in where
    try:
        saved = _resumed_from(cfg) if steps else None
    except (CheckpointError, StorageError) as err:
        report.problems.append(f"{source}: checkpoint.resume: {err}")
        saved, steps = None, False  # its data are checked all the same
    if cfg.data.train_path is None and steps:  # generated: its row groups are known
        try:
            check_steps(cfg, train_row_groups(cfg.data.synthetic), saved)
        except NoStepsError as err:
            report.problems.append(f"{source}: data (generated by the run): {err}")
    if found < 2:
        return
    policy = BadInputPolicy.for_job(cfg)
    try:
        train, test, _ = check_inputs(
            cfg, local["train_path"], local["test_path"], policy, saved, steps=steps
        )
    except (DataSourceError, BadInputError) as err:
        # one file's problem, where a job stops at the first: skip's check names them all
        more = (
            " (the first found: `--set data.on_bad_input=skip` lists every bad file)"
            if policy.mode == "error"
            and isinstance(err, BadInputError)
            and not isinstance(err, FooterRowsError | NoStepsError)
            else ""
        )
        report.problems.append(f"{source}: data: {err}{more}")
        return
    skipped = policy.counts.files
    report.ok.append(
        f"{source}: data: {len(train):,} training and {len(test):,} test row groups, columns "
        f"and types usable"
        + (f"; {skipped} bad file(s) to skip (data.on_bad_input: skip)" if skipped else "")
    )


def _resumed_from(cfg: JobConfig) -> SavedAt | None:
    """Where the checkpoint the job resumes from (``checkpoint.resume``) stood, as the run
    finds it here, so that the epochs' steps are checked from there, not from a fresh run's
    first epoch; None for a fresh run (``latest`` with no checkpoint is one). Raises
    CheckpointError where the checkpoint cannot be read or resumed on the job's ranks."""
    if cfg.checkpoint.resume is None:
        return None
    path = resolve_checkpoint(cfg, cfg.checkpoint.resume)
    if path is None:
        return None
    meta = read_meta(path)  # once: its digest check reads the file whole
    check_compatible(meta, path, cfg.ray.num_workers)
    return SavedAt.of(meta)


def _check_fit(
    cfg: JobConfig,
    job_source: str,
    cluster: ClusterLimits,
    source: str,
    report: Report,
    planned: _Planned | None = None,
) -> None:
    """Whether ``cfg`` fits ``cluster``; ``planned``: the plan :func:`_check_job` already
    made (None: not planned). Raises :class:`PlanningError` (or :class:`TopologyError`)
    where the job's plan for this cluster's ranks fails."""
    gpus = sum(n.gpus * n.count for n in cluster.largest(lambda n: n.gpus))
    try:
        device = resolve_device(cfg.train.device, cfg.ray.num_workers, gpus, source)
        per_worker = 1.0 if device == "cuda" else 0.0
        nodes = cluster.largest(lambda n: n.worker_slots(cfg.ray.cpus_per_worker, per_worker))

        def fits(workers: int) -> None:
            check_fits(
                nodes,
                workers,
                cfg.ray.cpus_per_worker,
                per_worker,
                cfg.ray.num_nodes,
                cfg.ray.placement_strategy,
            )

        fewer = ""
        try:
            fits(cfg.ray.num_workers)
        except ClusterTooSmallError:
            if not cfg.ray.min_workers:
                raise
            try:  # an elastic job starts with what fits, as training checks
                fits(cfg.ray.min_workers)
            except ClusterTooSmallError as err:
                raise ClusterTooSmallError(
                    f"{err} (ray.min_workers={cfg.ray.min_workers}: the fewest an elastic "
                    "job starts with)"
                ) from None
            fewer = (
                f"; fewer than its {cfg.ray.num_workers} workers (ray.min_workers="
                f"{cfg.ray.min_workers}: Ray Train starts with those that fit once its start "
                "timeout passes)"
            )
    except (ClusterTooSmallError, DeviceError) as err:
        report.problems.append(f"{job_source} on {source}: {err}")
        return
    if planned is not None and planned.device == device:
        if planned.plan is None:  # it failed, and was reported with the job
            return
        plan = planned.plan
    else:  # ranks it was not planned for (GPU memory rules for cuda ranks)
        plan = plan_for_config(cfg, device)
    if device == "cpu":  # (on GPUs the tables live in GPU memory, which the planner checks)
        # the plan's peak per rank: tables, optimizer state, exchange buffers, the dense
        # network's state and a step's working memory (the tables' alone passed a node that
        # could not hold the dense side)
        need = plan.estimated_memory_bytes or embedding_bytes_per_rank(cfg, plan, device)
        for n in cluster.nodes:
            slots = n.worker_slots(cfg.ray.cpus_per_worker)
            if n.memory_bytes and slots and need * min(slots, cfg.ray.num_workers) > n.memory_bytes:
                report.problems.append(
                    f"{job_source} on {source}: node type {n.name} has "
                    f"{n.memory_bytes / 2**30:.1f} GiB for {slots} worker(s), but each needs "
                    f"{need / 2**30:.2f} GiB by its plan (tables, optimizer state, the dense "
                    "network and a step's working memory; the process itself comes on top)"
                )
                return
    ranks = f"{device} ranks"
    if device == "cpu" and gpus and cfg.train.device == "auto":
        ranks += f": its {gpus:g} GPU(s) are fewer than one per worker"
    risk = packing_risk(
        cluster.nodes,
        cfg.ray.num_workers,
        cfg.ray.cpus_per_worker,
        per_worker,
        cfg.ray.num_nodes,
        cfg.ray.placement_strategy,
    )
    if risk:  # the cluster checked at its largest is empty: PACK would do just that
        report.problems.append(f"{job_source} on {source}: {risk}")
        return
    report.ok.append(f"{job_source} fits {source} ({cluster.describe()}; {ranks}{fewer})")


def _rayjob_config(entrypoint: str, source: str, report: Report) -> JobConfig | None:
    """The job a RayJob's entrypoint runs: its ``--config`` (the default one if none; a
    relative path is the pods' working dir's, and a path under the image's checkout its
    copy: both read in this checkout, :func:`~dist_train.launchers.submit.local_copy`) with
    its ``--set`` overrides; None, the problem reported, if it cannot be read."""
    command = entrypoint_command(entrypoint)
    if command is None:  # (rayjob_nodes refused it before)
        report.problems.append(f"{source}: spec.entrypoint: not a dist_train job command")
        return None
    # read by the parser of the command it runs (its abbreviations, such as --conf, and
    # train's --resume included): an argument it refuses fails the job at its start
    kind, args = command
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    (add_train_args if kind == "train" else add_config_args)(parser)
    try:
        known, unknown = parser.parse_known_args(args)
        overrides = train_overrides(known)
    except (argparse.ArgumentError, ConfigError) as err:  # `--config` with no value: exit 2
        report.problems.append(f"{source}: spec.entrypoint: {err}")
        return None
    if unknown:
        report.problems.append(
            f"{source}: spec.entrypoint: {'dist-train train' if kind == 'train' else 'the driver'} "
            f"refuses {' '.join(unknown)} (unrecognized arguments: the job would exit 2)"
        )
        return None
    config = known.config
    local = (local_copy(config, None) or Path(config)) if config else None
    try:
        return load_config(local, overrides)
    except ConfigError as err:
        report.problems.append(f"{source}: spec.entrypoint's --config: {err}")
        return None


def _like_a_job(doc: dict[Any, Any]) -> bool:
    """Whether a mapping has a job config's top-level keys, or keys near them (misspelt:
    their errors suggest the keys meant), not another kind of file's."""
    keys = list(JobConfig.model_fields)
    return any(difflib.get_close_matches(str(k), keys, n=1, cutoff=0.75) for k in doc)


def validate_files(paths: list[str], overrides: list[str] | None = None) -> Report:
    """Check every file, then every job against every cluster; collect all findings.
    ``overrides``: ``--set`` items applied to every job config among ``paths``."""
    report = Report()
    overrides = overrides or []
    job_files = 0
    jobs: list[tuple[JobConfig, str]] = []
    clusters: list[tuple[ClusterLimits, str, JobConfig | None]] = []
    for p in paths:
        path = Path(p)
        if path.name == META and (path.parent / METADATA).is_file():
            # a checkpoint's meta.json (its folder is the checkpoint): it read as a job
            # config of a dozen unknown keys
            p, path = str(path.parent), path.parent
        if "://" in p or os.path.lexists(path / META):  # a pipe there: named as no file
            try:
                report.ok.append(f"{p}: {verify(location(p))}")
            except (CheckpointError, StorageError) as err:
                report.problems.append(str(err))
            continue
        if path.is_dir():  # no meta.json: no committed checkpoint, and no YAML file
            report.problems.append(f"{not_committed(path)}, and no config file")
            continue
        try:
            doc = read_yaml(path)
            if isinstance(doc, dict) and doc.get("kind") == "RayJob":
                nodes, entrypoint = rayjob_nodes(doc, p)
                cluster = ClusterLimits(nodes)
                report.ok.append(f"{p}: KubeRay RayJob, {cluster.describe()}")
                clusters.append((cluster, p, _rayjob_config(entrypoint, p, report)))
            elif isinstance(doc, dict) and "available_node_types" in doc:
                cluster = launcher_limits(doc, p)
                report.ok.append(f"{p}: Ray cluster config, {cluster.describe()}")
                clusters.append((cluster, p, None))
            elif isinstance(doc, dict) and doc and not _like_a_job(doc):
                keys = ", ".join(map(str, list(doc)[:6])) + (" ..." if len(doc) > 6 else "")
                report.problems.append(
                    f"{p}: not a job config, Ray cluster config, RayJob or checkpoint: it has "
                    f"none of a job config's keys (its keys: {keys})"
                )
            else:
                job_files += 1
                jobs.append((parse_with_overrides(doc, p, overrides), p))
        except (ConfigError, ClusterFileError) as err:
            report.problems.append(str(err))
    if overrides and not job_files:
        report.problems.append(
            f"--set {overrides[0]}: --set applies to job configs, and none is among the files"
        )
    # Jobs once every file is read: whether any cluster is given decides how auto is planned.
    devices = [_check_job(cfg, p, report, bool(clusters)) for cfg, p in jobs]
    for cluster, source, own_cfg in clusters:
        targets: list[tuple[JobConfig, str, _Planned | None]] = [
            (cfg, p, device) for (cfg, p), device in zip(jobs, devices, strict=True)
        ]
        if own_cfg is not None and all(own_cfg != j for j, _ in jobs):
            targets.append((own_cfg, f"its entrypoint's config {own_cfg.name!r}", None))
        for cfg, job_source, planned in targets:
            if cfg.launcher != "ray":
                if cfg == own_cfg:  # the RayJob runs it: its ranks all on the head
                    report.problems.append(
                        f"{job_source} on {source}: {processes_on_a_cluster(cfg)}"
                    )
                else:
                    report.ok.append(
                        f"{job_source} is not checked against {source}: launcher={cfg.launcher} "
                        "runs no Ray workers (submitted to a cluster, every rank would run on "
                        "the node of its driver)"
                    )
                continue
            try:
                _check_fit(cfg, job_source, cluster, source, report, planned)
            except (PlanningError, TopologyError) as err:  # its plan for this cluster's ranks
                report.problems.append(f"{job_source} on {source}: sharding plan: {err}")
    return report

"""``dist-train validate FILE...``: check job configs and cluster files before anything starts.

Job configs are validated (schema, cross-field rules), their data paths resolved and their
embedding memory per rank estimated. Cluster-launcher YAMLs and KubeRay RayJob manifests are
checked and sized at their maximum; every job given is then checked to fit every cluster (a
RayJob's own ``--config`` is checked against it too).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_train.config import ConfigError, JobConfig, parse_config
from dist_train.data.reader import DataSourceError, resolve_files
from dist_train.embedding.layout import build_layout
from dist_train.launchers.cluster import ClusterTooSmallError, NodeResources, check_fits, describe
from dist_train.launchers.cluster_files import ClusterFileError, launcher_nodes, rayjob_nodes

_STATE_BYTES_PER_ROW = {
    "rowwise_adagrad": lambda dim: 4,
    "sgd": lambda dim: 0,
    "adam": lambda dim: 8 * dim,
}


def embedding_bytes_per_rank(cfg: JobConfig) -> int:
    """Largest per-rank bytes of embedding weights + optimizer state under the job's plan."""
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    state = _STATE_BYTES_PER_ROW[cfg.embedding.optimizer.type]
    sizes = [t.num_rows * (4 * t.dim + state(t.dim)) for t in layout.tables]
    world = cfg.ray.num_workers
    kind = cfg.sharding.type
    if kind in ("row_wise", "column_wise"):
        return -(-sum(sizes) // world)
    if kind == "table_row_wise":
        per_node = world // (cfg.ray.num_nodes or 1)
        return -(-max(sizes) // per_node) * -(-len(sizes) // (cfg.ray.num_nodes or 1))
    if kind == "table_wise":
        loads = [0] * world
        for i, s in enumerate(sizes):
            loads[i % world] += s
        return max(loads)
    return sum(sizes)  # data_parallel


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def _check_job(cfg: JobConfig, source: str, report: Report) -> None:
    for key in ("train_path", "test_path"):
        value = getattr(cfg.data, key)
        if value is not None and "://" not in value:
            try:
                resolve_files(value)
            except DataSourceError as err:
                report.problems.append(f"{source}: data.{key}: {err}")
    mb = embedding_bytes_per_rank(cfg) / 2**20
    report.ok.append(
        f"{source}: job {cfg.name!r}: {cfg.ray.num_workers} workers x "
        f"{cfg.ray.cpus_per_worker:g} CPU, {cfg.sharding.type}, embedding "
        f"{mb:,.1f} MiB per rank (weights + optimizer state)"
    )


def _check_fit(
    cfg: JobConfig, job_source: str, nodes: list[NodeResources], source: str, report: Report
) -> None:
    try:
        check_fits(nodes, cfg.ray.num_workers, cfg.ray.cpus_per_worker, 0.0, cfg.ray.num_nodes)
    except ClusterTooSmallError as err:
        report.problems.append(f"{job_source} on {source}: {err}")
        return
    need = embedding_bytes_per_rank(cfg)
    for n in nodes:
        slots = n.worker_slots(cfg.ray.cpus_per_worker)
        if n.memory_bytes and slots and need * min(slots, cfg.ray.num_workers) > n.memory_bytes:
            report.problems.append(
                f"{job_source} on {source}: node type {n.name} has {n.memory_bytes / 2**30:.1f} "
                f"GiB for {slots} worker(s), but each needs {need / 2**30:.2f} GiB of embedding "
                "memory"
            )
            return
    report.ok.append(f"{job_source} fits {source} ({describe(nodes)})")


def _rayjob_config(entrypoint: str) -> str | None:
    args = shlex.split(entrypoint)
    return args[args.index("--config") + 1] if "--config" in args[:-1] else None


def validate_files(paths: list[str]) -> Report:
    """Check every file, then every job against every cluster; collect all findings."""
    report = Report()
    jobs: list[tuple[JobConfig, str]] = []
    clusters: list[tuple[list[NodeResources], str, JobConfig | None]] = []
    for p in paths:
        path = Path(p)
        try:
            doc = _load_yaml(path)
            if isinstance(doc, dict) and doc.get("kind") == "RayJob":
                nodes, entrypoint = rayjob_nodes(doc, p)
                own = _rayjob_config(entrypoint)
                own_cfg = None
                if own and Path(own).is_file():
                    own_cfg = parse_config(_load_yaml(Path(own)), own)
                report.ok.append(f"{p}: KubeRay RayJob, at most {describe(nodes)}")
                clusters.append((nodes, p, own_cfg))
            elif isinstance(doc, dict) and "available_node_types" in doc:
                nodes = launcher_nodes(doc, p)
                report.ok.append(f"{p}: Ray cluster config, at most {describe(nodes)}")
                clusters.append((nodes, p, None))
            else:
                cfg = parse_config(doc, p)
                _check_job(cfg, p, report)
                jobs.append((cfg, p))
        except (ConfigError, ClusterFileError) as err:
            report.problems.append(str(err))
    for nodes, source, own_cfg in clusters:
        targets = list(jobs)
        if own_cfg is not None and all(own_cfg != j for j, _ in jobs):
            targets.append((own_cfg, f"its entrypoint's config {own_cfg.name!r}"))
        for cfg, job_source in targets:
            _check_fit(cfg, job_source, nodes, source, report)
    return report

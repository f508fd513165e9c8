"""The job driver: prepare data, list row groups, launch workers, write the summary.

``python -m dist_train.driver --config C`` is the entrypoint of ``ray job submit``;
``dist-train train`` validates the config itself, then runs :func:`train_and_report`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.folders import (
    check_writable,
    checkpoint_root,
    committed,
    resolve_checkpoint,
    step_of,
)
from dist_train.checkpoint.lock import CheckpointFolderInUse, one_run_in, same_folder
from dist_train.checkpoint.meta import read_meta
from dist_train.config.args import add_config_args
from dist_train.config.errors import ConfigError
from dist_train.config.load import load_or_report
from dist_train.config.paths import resolve_paths
from dist_train.config.schema import JobConfig
from dist_train.data.listing import DataSourceError, RowGroup, list_row_groups
from dist_train.data.synthetic import generate
from dist_train.data.validation import (
    BadInputCounts,
    BadInputError,
    BadInputPolicy,
    SchemaCheck,
    skipped_counts,
)
from dist_train.devices import DeviceError, DeviceType, local_gpus, resolve_device
from dist_train.embedding.layout import build_layout
from dist_train.input_checks import (
    SavedAt,
    check_steps,
    examples_trained,
    note_steps_short_of_max,
    warn_of_shared_files,
    warn_of_skipped_share,
)
from dist_train.launchers.processes import RankError, run_processes
from dist_train.logs import LOG, setup_logging, verbosity, worded_for_users
from dist_train.models.dcn import wide_rank_note
from dist_train.stopping import exit_quickly, stopped_by_sigterm
from dist_train.storage import location
from dist_train.train.checkpointing import check_resumed_data, resume_point
from dist_train.train.evaluation import run_evaluation
from dist_train.train.loop import TrainingDiverged, run_worker
from dist_train.train.progress import strict_json
from dist_train.train.sharding import JobPlan, optimizer_notes, plan_for_config
from dist_train.train.trainer import make_batch_builder
from dist_train.train.worker_inputs import WorkerInputs
from planners.topology import TopologyError
from planners.types import PlanningError


def prepare_inputs(cfg: JobConfig, saved: SavedAt | None = None) -> WorkerInputs:
    """Generate synthetic data if no paths are given, then list and check both splits' files
    (and the steps of the epochs to train: ``saved``, where a resumed run goes on from).

    Files that are unreadable, empty, missing a column, of a wrong type, or whose schema
    differs from the first training file's (test files too) are errors, or skipped and
    counted under ``on_bad_input: skip``. A training split too small to give every rank one
    batch is an error.
    """
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = data_paths(cfg)
    policy = BadInputPolicy.for_job(cfg)
    train, test, test_files = check_inputs(cfg, train_path, test_path, policy, saved)
    return WorkerInputs(
        train, test, str(run_dir), file_counts=policy.counts, test_file_counts=test_files
    )


def data_paths(cfg: JobConfig) -> tuple[str, str]:
    """The job's training and test data: ``data.train_path`` and ``data.test_path``, or
    without them the synthetic data in the run's folder, generated there on first use."""
    if cfg.data.train_path is not None and cfg.data.test_path is not None:
        return cfg.data.train_path, cfg.data.test_path
    out = cfg.run_dir.resolve() / "data"
    data = generate(cfg.data.synthetic, out, progress=verbosity() != "quiet")
    return str(data.train_dir), str(data.test_dir)


def check_inputs(
    cfg: JobConfig,
    train_path: str,
    test_path: str,
    policy: BadInputPolicy,
    saved: SavedAt | None = None,
    steps: bool = True,
) -> tuple[list[RowGroup], list[RowGroup], BadInputCounts]:
    """Both splits' row groups, their files' footers and schemas checked under ``policy``
    (the job's ``data.on_bad_input``), and the epochs' steps (:func:`check_steps`; from
    ``saved`` on for a resumed run; not with ``steps`` False, for a run resumed from a
    checkpoint not read here); then what ``policy`` counted in the test split's files."""
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    schema = SchemaCheck(builder)  # one for both splits: their column types must agree
    train = _row_groups("data.train_path", train_path, policy, schema)
    before_test = policy.counts.copy()
    test = _row_groups("data.test_path", test_path, policy, schema)
    warn_of_shared_files(train, test)
    if steps:
        check_steps(cfg, train, saved)
    return train, test, policy.counts.since(before_test)


def _row_groups(key: str, path: str, policy: BadInputPolicy, schema: SchemaCheck) -> list[RowGroup]:
    """:func:`list_row_groups` of ``path``; an error about ``path`` itself (nothing there,
    no Parquet file in it) names ``key``, the setting that gave it."""
    try:
        return list_row_groups(path, policy, schema)
    except DataSourceError as err:
        if str(err).startswith(f"{path}: "):
            raise DataSourceError(f"{key}: {err}") from None
        raise


def saved_position(resume: str | None) -> SavedAt | None:
    """Where the checkpoint a run resumes from stood; None for a fresh run."""
    return None if resume is None else SavedAt.of(read_meta(location(resume)))


def check_output_paths(cfg: JobConfig) -> None:
    """ConfigError for ``output_dir`` or a local ``checkpoint.dir`` that is a file, or lies
    under one: the run would fail at its first write there (with a bare NotADirectoryError
    naming no key), a checkpoint.dir only at the first save, after training."""
    for key, value in (("output_dir", cfg.output_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        if not value or "://" in value:
            continue
        path = Path(value)
        try:
            found = next((p for p in (path, *path.parents) if p.exists()), None)
        except OSError as err:  # (a name too long, a folder it may not search)
            raise ConfigError(
                f"{key}={value}: cannot check this path ({err.strerror or err})"
            ) from None
        if found is not None and not found.is_dir():
            where = "a file" if found == path else f"under the file {found}"
            raise ConfigError(f"{key}={value}: {where}, not a folder; name a folder")


def job_device(cfg: JobConfig) -> DeviceType:
    """Where the job's ranks train (``train.device`` against the GPUs its launcher has)."""
    if cfg.launcher == "ray":
        from dist_train.launchers.ray_train import cluster_gpus

        gpus, where = cluster_gpus(cfg)
    else:
        gpus, where = float(local_gpus()), "this machine"
    # Ray may start as few as min_workers (elastic); the processes launcher starts them all
    workers = (
        cfg.ray.num_workers if cfg.launcher != "ray" else cfg.ray.min_workers or cfg.ray.num_workers
    )
    if cfg.launcher == "ray" and cfg.ray.autoscaling and cfg.train.device == "cuda":
        device: DeviceType = "cuda"  # the GPU nodes may not be up yet
    else:
        device = resolve_device(cfg.train.device, workers, gpus, where)
    if device == "cpu" and cfg.train.device == "auto" and gpus:
        LOG.warning(
            f"train.device=auto: {where} has {gpus:g} GPU(s) for {workers} workers, fewer "
            "than one each; training on CPUs"
        )
    LOG.info(f"device: {device} ({where}: {gpus:g} GPU(s), train.device={cfg.train.device})")
    return device


def plan_on_driver(cfg: JobConfig, device_type: str = "cpu", training: bool = True) -> JobPlan:
    """The job's sharding plan for ``num_workers`` ranks, ``num_workers / num_nodes`` a node,
    said in the log (its step estimate only where ``training``: an evaluation takes none)."""
    job_plan = plan_for_config(cfg, device_type)
    if job_plan.is_2d:
        LOG.info(
            f"plan: 2D: {job_plan.replicas} replicas of {job_plan.sharding_group_size} rank(s) "
            f"(groups of consecutive ranks), merged every {cfg.sharding.sync_every} step(s); "
            "each group places the tables as the first:"
        )
    for table, p in job_plan.placements().items():
        LOG.info(f"plan: {table} {p['type']} on ranks {p['ranks']}")
    types = {str(p["type"]) for p in job_plan.placements().values()}
    for note in optimizer_notes(cfg, types):
        LOG.info(f"plan: note: {note}")
    if training:
        LOG.info(
            f"plan: estimated {job_plan.estimated_step_seconds * 1e3:.1f} ms/step "
            f"(sharding.type={cfg.sharding.type}; `dist-train plan` explains the choice)"
        )
    return job_plan


def _process_worker(cfg: JobConfig, inputs: WorkerInputs) -> dict[str, Any]:
    # Plain processes share this machine; ray.num_nodes splits them into simulated nodes.
    rank = int(os.environ["RANK"])
    per_node = cfg.ray.num_workers // (cfg.ray.num_nodes or 1)
    node = f"local-node-{rank // per_node}"
    if inputs.evaluate_only:
        return dict(run_evaluation(cfg, inputs, node))
    return dict(run_worker(cfg, inputs, node))


RAY_ONLY = (
    "address",
    "min_workers",
    "max_failures",
    "autoscaling",
    "storage_path",
    "placement_strategy",
)


def _warn_ray_only(cfg: JobConfig) -> None:
    """Name the ``ray.*`` settings that the processes launcher does not use."""
    unused = cfg.ray.changed_settings("ray", RAY_ONLY)
    if unused:
        LOG.warning(
            f"launcher=processes runs every rank on this machine without Ray: "
            f"{', '.join(unused)} take no effect (launcher=ray uses them)"
        )


def launch(cfg: JobConfig, inputs: WorkerInputs) -> dict[str, Any]:
    """Run ``inputs`` on the job's workers with its launcher; rank 0's summary."""
    if cfg.launcher == "ray":
        # Ray takes seconds to import; plain-process runs never need it.
        from dist_train.launchers.ray_train import launch_ray

        return launch_ray(cfg, inputs)
    _warn_ray_only(cfg)
    try:
        return run_processes(
            _process_worker,
            (cfg, inputs),
            cfg.ray.num_workers,
            cfg.ray.threads_per_worker,
            inputs.device_type,
            cfg.ray.pins_cores(owns_machine=True),  # the job's processes own this machine
        )[0]
    except RankError as err:  # a divergence is itself under either launcher
        if err.kind == TrainingDiverged.__name__:
            raise TrainingDiverged(err.detail) from None
        raise


def _warn_unread(cfg: JobConfig) -> None:
    """Name the settings given that the job's model, tables and optimizer do not read."""
    optimizer = cfg.embedding.optimizer
    for reader, unread, why in (
        (
            f"model.kind={cfg.model.kind}",
            cfg.model.unread_settings(),
            "docs/models.md says which kind reads which",
        ),
        (
            f"embedding.kind={cfg.embedding.kind}",
            cfg.embedding.unread_settings(),
            "docs/config.md says which kind reads which",
        ),
        (
            "a DLRM without dense columns",
            cfg.model.changed_settings("model", ["bottom_mlp"])
            if cfg.model.kind == "dlrm" and not cfg.data.resolved_dense_columns()
            else [],
            "it learns one vector in the dense network's place",
        ),
        (
            "embedding.optimizer.type=sgd",
            optimizer.changed_settings("embedding.optimizer", ["eps"])
            if optimizer.type == "sgd"
            else [],
            "Adagrad and Adam read it",
        ),
    ):
        if unread:
            LOG.warning(
                f"{reader} does not read {', '.join(unread)}: "
                f"{'they take' if len(unread) > 1 else 'it takes'} no effect ({why})"
            )


def run_job(cfg: JobConfig) -> dict[str, Any]:
    """Run a whole job with its configured launcher; returns the summary (also on disk).

    Relative paths in ``cfg`` mean the directory this process runs in (see
    :func:`~dist_train.config.paths.resolve_paths`)."""
    start = time.perf_counter()
    setup_logging(verbosity())  # the console handler, at the level the command line set
    cfg = resolve_paths(cfg)
    check_output_paths(cfg)
    _warn_unread(cfg)
    wide_rank = wide_rank_note(cfg)
    if wide_rank:
        LOG.warning(wide_rank)
    if cfg.checkpoint.resume not in (None, "latest"):  # before data are generated, say
        resolve_checkpoint(cfg, cfg.checkpoint.resume)
    device = job_device(cfg)
    job_plan = plan_on_driver(cfg, device)
    # the run's folders, made once the checks that write nothing have passed, and held from
    # before anything is written in them (the run's generated data too) to the last prune
    root = checkpoint_root(cfg)
    try:  # first: an output_dir that cannot be written is a config error whatever it saves
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # (a read-only or virtual file system: /proc/...)
        raise ConfigError(
            f"output_dir={cfg.output_dir}: cannot make the run's folder {cfg.run_dir} "
            f"({err.strerror or err})"
        ) from None
    if cfg.checkpoint.saves:
        check_writable(root)  # made, and said in a line where it cannot be
    checkpoints = (
        contextlib.nullcontext()
        if same_folder(root, cfg.run_dir)
        else one_run_in(root, "checkpoint folder")
    )
    with one_run_in(cfg.run_dir, "run folder"), checkpoints:
        # before the data are prepared: a fresh run over an earlier one's, or a resume
        # refused, regenerated the run's synthetic data first
        resume = resume_point(cfg, job_plan)
        saved = saved_position(resume)
        prepared = prepare_inputs(cfg, saved)
        check_resumed_data(resume, prepared.train_groups)
        inputs = dataclasses.replace(
            prepared, plan=job_plan, resume=resume, verbosity=verbosity(), device_type=device
        )
        note_steps_short_of_max(cfg, inputs.train_groups, saved)
        rows = sum(g.num_rows for g in inputs.train_groups)
        LOG.info(
            f"job {cfg.name!r}: {rows:,} training rows in {len(inputs.train_groups)} "
            f"row groups, model {cfg.model.describe()}, {cfg.ray.num_workers} workers via "
            f"{cfg.launcher}"
        )
        launch_unix = time.time()
        summary = launch(cfg, inputs)
    if inputs.resume and not summary.get("steps_this_launch"):
        most = cfg.train.max_steps
        reached = [  # the limits training stopped at: raising another would not help
            key
            for key, at_it in (
                ("train.epochs", saved is not None and saved.epoch >= cfg.train.epochs),
                ("train.max_steps", most is not None and most <= summary["steps"]),
            )
            if at_it
        ]
        raise_which = f"Raise {' and '.join(reached) or 'either'} to train on"
        LOG.warning(
            f"nothing left to train: {inputs.resume} is at step {summary['steps']}, the end "
            f"of training (train.max_steps={most}, train.epochs={cfg.train.epochs}); it was "
            f"evaluated only. {raise_which}"
        )
    warn_of_skipped_share(summary, examples_trained(summary, cfg.train.batch_size, saved))
    summary["wall_seconds"] = time.perf_counter() - start
    summary["run_dir"] = inputs.run_dir
    if summary.get("first_step_unix"):
        # Launch (workers requested) to the first finished training step.
        summary["startup_seconds"] = summary["first_step_unix"] - launch_unix
    out = Path(inputs.run_dir)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    return summary


def _skipped(summary: dict[str, Any]) -> str:
    """Both splits' bad input, and the test split's share where it has any."""
    line, test = skipped_counts(summary.get("bad_input") or {}), summary.get("bad_input_test") or {}
    if any(test.get(k) for k in ("rows_skipped_total", "files_skipped", "row_groups_skipped")):
        line += f"; of them in the test files: {skipped_counts(test)}"
    return line


def _steps(summary: dict[str, Any]) -> str:
    """The steps the rates are over; after a resume, also the global step reached, and
    after a restart of the worker group, where it restarted."""
    steps, launched = summary["steps"], summary.get("steps_this_launch", summary["steps"])
    restarted = summary.get("restarted_at_step")
    if restarted is not None:
        return f"{launched} steps since the restart at step {restarted}, to step {steps}"
    return f"{steps} steps" if launched == steps else f"{launched} steps, to step {steps}"


def _steady(summary: dict[str, Any]) -> str:
    """The rate after the first step: a short run's overall rate is mostly its warm-up."""
    rate = summary.get("steady_examples_per_second") or 0.0
    return f"; {rate:,.0f} after the first" if rate > 0 else ""


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    print(
        "\n== dist-train summary ==\n"
        f"test AUC          {summary['test_auc']:.4f}\n"
        f"test log loss     {summary['test_log_loss']:.4f}\n"
        f"test NE           {summary['test_ne']:.4f}\n"
        f"examples/s        {summary['examples_per_second']:,.0f} "
        f"({summary['world_size']} {summary.get('device', 'cpu').upper()} ranks, "
        f"{_steps(summary)}{_steady(summary)})\n"
        f"wall time         {summary['wall_seconds']:.1f} s\n"
        f"bad input skipped {_skipped(summary)}\n"
        + (f"checkpoint        {summary['checkpoint']}\n" if summary.get("checkpoint") else "")
        + f"outputs           {run_dir.resolve()}  "
        "(summary.json, metrics.jsonl, config.json, checkpoints/)",
        flush=True,
    )


def run_train(config: str | None, overrides: list[str]) -> int:
    """Run a training job; 0 on success, 1 on a training failure, 2 on a bad config."""
    cfg = load_or_report(config, overrides)
    return 2 if cfg is None else train_and_report(cfg)


def train_and_report(cfg: JobConfig) -> int:
    """Run a validated job and print its summary; 0 on success, 1 on a training failure
    (the error, on stderr)."""
    try:
        summary = run_job(cfg)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM: the stop's own line comes first
        hint = where_to_resume(cfg)
        if hint:
            err.add_note(hint)
        raise
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI reports any failure and exits non-zero
        print(f"error: {what_failed(err)}", file=sys.stderr)
        hint = where_to_resume(cfg, err)
        if hint:
            print(hint, file=sys.stderr)
        return 1
    print_summary(summary, Path(summary["run_dir"]))
    return 0


def what_failed(err: Exception) -> str:
    """``err`` as the line the commands print after ``error:``."""
    return describe_failure(err) or f"{type(err).__name__}: {err}"


def describe_failure(err: Exception) -> str | None:
    """``err`` as a line naming what failed, for a job's own kinds of error (a config, its
    data, a checkpoint, its plan, its device, any other of dist_train's); None for any
    other (a bug's, whose traceback says more)."""
    for kinds, what in (
        ((ConfigError,), "config"),
        ((BadInputError, DataSourceError), "bad input"),
        ((CheckpointError,), "checkpoint"),
        ((PlanningError, TopologyError), "sharding plan"),
        ((DeviceError,), "device"),
    ):
        if isinstance(err, kinds):
            return f"{what}: {err}"
    if worded_for_users(err):
        return f"{type(err).__name__}: {err}"  # (a rank's error, Ray's launch, a storage)
    return None


def where_to_resume(cfg: JobConfig, failure: BaseException | None = None) -> str | None:
    """A line naming the job's newest committed checkpoint, after a stop or a ``failure``;
    none where the failure names that checkpoint (it failed to load: resuming it again
    fails again)."""
    try:
        found = committed(checkpoint_root(resolve_paths(cfg)))
    except Exception:  # noqa: BLE001 - a hint: a storage that fails to list gets none
        return None
    if isinstance(failure, CheckpointFolderInUse):  # its run goes on: nothing to resume
        return None
    if not found or (failure is not None and str(found[-1]) in str(failure)):
        return None
    # on a stop, ranks still stopping (Ray's, a second or so on) may commit a save in
    # flight, and retention then delete this one: latest finds whichever is newest
    later = " or a newer one a save still in flight commits" if failure is None else ""
    return (
        f"the newest committed checkpoint is {found[-1]} (step {step_of(found[-1])}); "
        f"`--resume latest` continues from it{later} (`--set checkpoint.resume=latest` in "
        "a submitted job's or a RayJob's command)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dist_train.driver",
        description="The job driver, the entrypoint of `ray job submit` (dist-train submit "
        "prints the command): prepare data, list row groups, launch workers, write the "
        "summary. `dist-train train` runs the same job from a shell.",
    )
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    return stopped_by_sigterm(lambda: run_train(args.config, args.set))


if __name__ == "__main__":
    sys.exit(exit_quickly(main()))

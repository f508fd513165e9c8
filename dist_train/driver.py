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

from dist_train.checkpoint import (
    CheckpointError,
    check_writable,
    checkpoint_root,
    committed,
    read_meta,
    step_of,
)
from dist_train.checkpoint import resolve as resolve_checkpoint
from dist_train.checkpoint_lock import CheckpointFolderInUse, one_run_in, same_folder
from dist_train.config import (
    ConfigError,
    JobConfig,
    add_config_args,
    load_or_report,
    resolve_paths,
)
from dist_train.data.reader import (
    DataSourceError,
    RowGroup,
    assign_row_groups,
    list_row_groups,
    steps_per_epoch,
)
from dist_train.data.synthetic import generate
from dist_train.data.validation import BadInputCounts, BadInputError, BadInputPolicy, SchemaCheck
from dist_train.devices import DeviceError, DeviceType, local_gpus, resolve_device
from dist_train.embedding.layout import build_layout
from dist_train.launchers.processes import RankError, run_processes
from dist_train.logs import LOG, setup_logging, verbosity, worded_for_users
from dist_train.stopping import stopped_by_sigterm
from dist_train.storage import location
from dist_train.train.checkpointing import refuse_to_overwrite, resume_point
from dist_train.train.evaluation import run_evaluation
from dist_train.train.loop import TrainingDiverged, run_worker
from dist_train.train.progress import strict_json
from dist_train.train.sharding import JobPlan, optimizer_notes, plan_for_config
from dist_train.train.trainer import make_batch_builder
from dist_train.train.worker_inputs import WorkerInputs
from planners.topology import TopologyError
from planners.types import PlanningError


def prepare_inputs(cfg: JobConfig) -> WorkerInputs:
    """Generate synthetic data if no paths are given, then list and check both splits' files.

    Files that are unreadable, empty, missing a column, of a wrong type, or whose schema
    differs from the first training file's (test files too) are errors, or skipped and
    counted under ``on_bad_input: skip``. A training split too small to give every rank one
    batch is an error.
    """
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = data_paths(cfg)
    policy = BadInputPolicy.for_job(cfg)
    train, test, test_files = check_inputs(cfg, train_path, test_path, policy)
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
    cfg: JobConfig, train_path: str, test_path: str, policy: BadInputPolicy
) -> tuple[list[RowGroup], list[RowGroup], BadInputCounts]:
    """Both splits' row groups, their files' footers and schemas checked under ``policy``
    (the job's ``data.on_bad_input``), and the first epoch's steps (:func:`check_steps`);
    then what ``policy`` counted in the test split's files."""
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    schema = SchemaCheck(builder)  # one for both splits: their column types must agree
    train = list_row_groups(train_path, policy, schema)
    before_test = policy.counts.copy()
    test = list_row_groups(test_path, policy, schema)
    _warn_of_shared_files(train, test)
    check_steps(cfg, train)
    return train, test, policy.counts.since(before_test)


def _warn_of_shared_files(train: list[RowGroup], test: list[RowGroup]) -> None:
    """Test files that are also training files: their metrics are of rows the model
    trained on (a data.train_path of the folder above train/ and test/ reads both)."""

    def real(path: str) -> str:
        local = path.removeprefix("file://")  # the same file, as a URL
        return os.path.realpath(local) if "://" not in local else path

    trained = {real(g.path) for g in train}
    shared = sorted({g.path for g in test if real(g.path) in trained})
    if shared:
        files = len({g.path for g in test})
        LOG.warning(
            f"{len(shared)} of the {files} test file(s) are also training files (first: "
            f"{shared[0]}): the test metrics will be of rows the model trained on. Point "
            "data.train_path and data.test_path at folders or globs that do not overlap"
        )


UNUSED_ROWS_WARNING = 0.10
"""The share of an epoch's training rows left untrained above which the driver warns."""


def check_steps(cfg: JobConfig, train: list[RowGroup]) -> None:
    """Refuse a job whose first epoch, dealt as the workers deal it, trains 0 steps; warn
    when it leaves more than :data:`UNUSED_ROWS_WARNING` of the rows untrained, or when a
    later epoch (another deal of the row groups) trains none."""
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    assignment = assign_row_groups(train, world, cfg.seed, 0)
    steps = steps_per_epoch(assignment, batch_size)
    smallest = min(sum(g.num_rows for g in groups) for groups in assignment)
    if not steps:
        raise BadInputError(
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
    empty = _epochs_without_steps(cfg, train, steps)
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


def _saved_by(resume: str | None) -> tuple[int, int] | None:
    """The step and world size of the checkpoint a run resumes from; None for a fresh run."""
    if resume is None:
        return None
    meta = read_meta(location(resume))
    position = meta.get("position") or {}
    return int(position.get("step") or 0), int(meta.get("world_size") or 0)


def _note_steps_short_of_max(
    cfg: JobConfig, train: list[RowGroup], saved: tuple[int, int] | None
) -> None:
    """Say where train.max_steps lies past the steps of train.epochs: training ends with
    the epochs (max_steps only stops it earlier), as a user of trainers whose max_steps
    overrides the epochs would not expect. ``saved``: the resumed checkpoint's step and
    world size (its epochs dealt to its ranks: counted here only at the same world)."""
    most, epochs = cfg.train.max_steps, cfg.train.epochs
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    if most is None or (saved is not None and saved[1] != world):
        return
    rows, largest = sum(g.num_rows for g in train), max(g.num_rows for g in train)
    # every deal's smallest share lies between these (shares differ by a row group at most)
    fewest = max(0, (rows - (world - 1) * largest) // world // batch_size)
    if epochs * fewest >= most:
        return
    if epochs * (len(train) + 10) > _DEALS_WORK:  # too many deals to make: the bound alone
        if epochs * (rows // world // batch_size) < most:
            LOG.warning(
                f"train.max_steps={most} is past the at most "
                f"{epochs * (rows // world // batch_size):,} steps of train.epochs={epochs}: "
                "training ends with the last epoch (max_steps only stops it earlier)"
            )
        return
    total = 0
    for epoch in range(epochs):
        total += steps_per_epoch(assign_row_groups(train, world, cfg.seed, epoch), batch_size)
        if total >= most:
            return
    LOG.warning(
        f"train.max_steps={most} is past the {total:,} steps of train.epochs={epochs}: "
        f"training ends at step {total:,}, with the last epoch "
        "(max_steps only stops it earlier); raise train.epochs to train longer"
    )


def _epochs_without_steps(cfg: JobConfig, train: list[RowGroup], first_steps: int) -> list[int]:
    """The epochs after the first, up to ``train.max_steps``, whose deal trains 0 steps."""
    world, batch_size = cfg.ray.num_workers, cfg.train.batch_size
    # a deal's shares differ by at most the largest row group: none falls under a batch
    largest = max(g.num_rows for g in train)
    if (sum(g.num_rows for g in train) - (world - 1) * largest) / world >= batch_size:
        return []
    empty, done = [], first_steps
    limit = cfg.train.max_steps
    for epoch in range(1, cfg.train.epochs):
        if limit is not None and done >= limit:
            break
        steps = steps_per_epoch(assign_row_groups(train, world, cfg.seed, epoch), batch_size)
        if not steps:
            empty.append(epoch)
        done += steps
    return empty


def check_output_paths(cfg: JobConfig) -> None:
    """ConfigError for ``output_dir`` or a local ``checkpoint.dir`` that is a file: the run
    would fail at its first write there, a checkpoint.dir only at the first save, after
    training."""
    for key, value in (("output_dir", cfg.output_dir), ("checkpoint.dir", cfg.checkpoint.dir)):
        if value and "://" not in value and Path(value).exists() and not Path(value).is_dir():
            raise ConfigError(f"{key}={value}: a file, not a folder; name a folder")


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


RAY_ONLY = ("address", "min_workers", "max_failures", "autoscaling", "storage_path")


def _warn_ray_only(cfg: JobConfig) -> None:
    """Name the ``ray.*`` settings that the processes launcher does not use."""
    default = type(cfg.ray)()
    unused = [
        f"ray.{k}={getattr(cfg.ray, k)}"
        for k in RAY_ONLY
        if getattr(cfg.ray, k) != getattr(default, k)
    ]
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


def run_job(cfg: JobConfig) -> dict[str, Any]:
    """Run a whole job with its configured launcher; returns the summary (also on disk).

    Relative paths in ``cfg`` mean the directory this process runs in (see
    :func:`~dist_train.config.resolve_paths`)."""
    start = time.perf_counter()
    setup_logging(verbosity())  # the console handler, at the level the command line set
    cfg = resolve_paths(cfg)
    check_output_paths(cfg)
    if cfg.checkpoint.resume not in (None, "latest"):  # before data are generated, say
        resolve_checkpoint(cfg, cfg.checkpoint.resume)
    device = job_device(cfg)
    job_plan = plan_on_driver(cfg, device)
    # the run's folders, made once the checks that write nothing have passed, and held from
    # before anything is written in them (the run's generated data too) to the last prune
    root = checkpoint_root(cfg)
    if cfg.checkpoint.saves:
        check_writable(root)  # made, and said in a line where it cannot be
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = (
        contextlib.nullcontext()
        if same_folder(root, cfg.run_dir)
        else one_run_in(root, "checkpoint folder")
    )
    with one_run_in(cfg.run_dir, "run folder"), checkpoints:
        if cfg.checkpoint.resume is None:  # a fresh run over an earlier one's regenerated
            refuse_to_overwrite(cfg)  # its data, then refused
        prepared = prepare_inputs(cfg)
        inputs = dataclasses.replace(
            prepared,
            plan=job_plan,
            resume=resume_point(cfg, job_plan, prepared.train_groups),
            verbosity=verbosity(),
            device_type=device,
        )
        saved = _saved_by(inputs.resume)
        _note_steps_short_of_max(cfg, inputs.train_groups, saved)
        rows = sum(g.num_rows for g in inputs.train_groups)
        LOG.info(
            f"job {cfg.name!r}: {rows:,} training rows in {len(inputs.train_groups)} "
            f"row groups, {cfg.ray.num_workers} workers via {cfg.launcher}"
        )
        launch_unix = time.time()
        summary = launch(cfg, inputs)
    if inputs.resume and not summary.get("steps_this_launch"):
        LOG.warning(
            f"nothing left to train: {inputs.resume} is at step {summary['steps']}, the end "
            f"of training (train.max_steps={cfg.train.max_steps}, train.epochs="
            f"{cfg.train.epochs}); it was evaluated only. Raise either to train on"
        )
    _warn_of_skipped_share(summary, _examples_trained(summary, cfg.train.batch_size, saved))
    summary["wall_seconds"] = time.perf_counter() - start
    summary["run_dir"] = inputs.run_dir
    if summary.get("first_step_unix"):
        # Launch (workers requested) to the first finished training step.
        summary["startup_seconds"] = summary["first_step_unix"] - launch_unix
    out = Path(inputs.run_dir)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    (out / "summary.json").write_text(strict_json(summary, indent=2))
    return summary


SKIPPED_ROWS_WARNING = 0.01
"""The share of a split's rows skipped as bad (data.on_bad_input=skip) above which the
driver warns."""


def _examples_trained(
    summary: dict[str, Any], batch_size: int, saved: tuple[int, int] | None
) -> int:
    """The examples of every step to the step reached: this launch's world's since the
    checkpoint it resumed from, that checkpoint's world's before it."""
    step, world = saved or (0, 0)
    since = int(summary.get("steps") or 0) - step
    return (since * int(summary.get("world_size") or 1) + step * world) * batch_size


def _warn_of_skipped_share(summary: dict[str, Any], trained: int) -> None:
    """A split that lost more than :data:`SKIPPED_ROWS_WARNING` of its rows to the
    bad-input checks (``trained``: the training examples of every step): most often a
    column's meaning mistaken (labels written 1/2, a skip of every positive), which the
    summary line's counts alone do not say. The counts are of rows as read, the whole
    run's (a resume's start from its checkpoint's), so the share is a rough one."""
    both, test = summary.get("bad_input") or {}, summary.get("bad_input_test") or {}
    test_rows = int(test.get("rows_skipped_total") or 0)
    splits = [
        ("training", int(both.get("rows_skipped_total") or 0) - test_rows, trained),
        ("test", test_rows, int(summary.get("test_examples") or 0)),
    ]
    for split, skipped, kept in splits:
        if skipped > 0 and skipped > SKIPPED_ROWS_WARNING * (skipped + kept):
            LOG.warning(
                f"{skipped / (skipped + kept):.0%} of the {split} rows read were skipped as "
                f"bad input ({skipped:,} rows; by reason, both splits: "
                f"{dict(sorted((both.get('rows_skipped') or {}).items()))}): so large a share "
                "is most often a column read as what it is not (labels written 1/2, not 0/1), "
                "and the model trained or was tested without them. With "
                "data.on_bad_input=error a run stops at the first, naming its file and column"
            )


def _skipped(summary: dict[str, Any]) -> str:
    """Both splits' bad input, and the test split's share where it has any."""
    line, test = skipped_counts(summary.get("bad_input") or {}), summary.get("bad_input_test") or {}
    if any(test.get(k) for k in ("rows_skipped_total", "files_skipped", "row_groups_skipped")):
        line += f"; of them in the test files: {skipped_counts(test)}"
    return line


def skipped_counts(b: dict[str, Any]) -> str:
    """A summary's ``bad_input`` counts as the summary line prints them."""
    return (
        # rows as read: an epoch that reads a bad row again counts it again (docs/data.md)
        f"{b.get('rows_skipped_total', 0):,} rows, {b.get('files_skipped', 0)} files, "
        f"{b.get('row_groups_skipped', 0)} row groups"
        + (f" ({b['rows_skipped']})" if b.get("rows_skipped") else "")
    )


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
        f"`--resume latest` continues from it{later}"
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
    sys.exit(main())

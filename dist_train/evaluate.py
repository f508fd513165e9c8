"""``dist-train evaluate``: a committed checkpoint's test metrics, training nothing.

The job's config says what to build and where its test data are (``--set
data.test_path=...`` for other data: the next day's, say); the checkpoint is checked as a
resume is (ranks, hashing, model shapes) before any worker starts, then loaded on the job's
ranks with its launcher, resharded to their plan, and evaluated as training's last stage
evaluates. Outputs go to their own folder, ``<run>/evaluations/<checkpoint>/`` by default:
``evaluation.json`` and ``metrics.jsonl``; the training run's files are not touched.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.checkpoint import META, checkpoint_root
from dist_train.config import ConfigError, JobConfig, absolute_path, resolve_paths
from dist_train.data.reader import (
    READ_ERRORS,
    DataSourceError,
    list_row_groups,
    open_parquet,
    resolve_files,
)
from dist_train.data.synthetic import generated
from dist_train.data.validation import BadInputError, BadInputPolicy, SchemaCheck
from dist_train.driver import (
    check_output_paths,
    job_device,
    launch,
    plan_on_driver,
    skipped_counts,
    what_failed,
)
from dist_train.embedding.layout import build_layout
from dist_train.logs import setup_logging, verbosity
from dist_train.storage import Location
from dist_train.train.checkpointing import evaluation_point
from dist_train.train.progress import strict_json
from dist_train.train.trainer import make_batch_builder
from dist_train.train.worker_inputs import WorkerInputs

SUMMARY_FILE = "evaluation.json"


def evaluate_checkpoint(cfg: JobConfig, which: str, out: str | None = None) -> dict[str, Any]:
    """Evaluate ``which`` (a committed checkpoint's path, or ``latest``) on the job's test
    data, on its ranks; the summary, also written to ``out``/evaluation.json (default:
    ``<run>/evaluations/<checkpoint's folder name>``)."""
    start = time.perf_counter()
    setup_logging(verbosity())
    cfg = resolve_paths(cfg)
    check_output_paths(cfg)
    if which != "latest":  # the workers run in another folder (Ray's)
        which = absolute_path(which)
    if out is not None:
        _check_out(cfg, Path(out).expanduser().resolve())
    device = job_device(cfg)
    plan = plan_on_driver(cfg, device)
    path = evaluation_point(cfg, which)
    train_path, test_path = _data_paths(cfg)
    folder = Path(out).expanduser().resolve() if out else cfg.run_dir / "evaluations" / path.name
    _check_out(cfg, folder, path, test_path)
    policy = BadInputPolicy.for_job(cfg)
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    schema = SchemaCheck(builder)
    _read_id_types_of_training(train_path, schema, policy)
    test = list_row_groups(test_path, policy, schema)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SUMMARY_FILE).unlink(missing_ok=True)  # an earlier one, now out of date
    except OSError as err:
        raise ConfigError(f"--out {folder}: cannot write there ({err})") from None
    inputs = WorkerInputs(
        [],
        test,
        str(folder),
        plan=plan,
        file_counts=policy.counts,
        resume=str(path),
        verbosity=verbosity(),
        device_type=device,
        evaluate_only=True,
    )
    summary = launch(cfg, inputs)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["test_path"] = test_path
    summary["output_dir"] = str(folder)
    (folder / SUMMARY_FILE).write_text(strict_json(summary, indent=2))
    return summary


def _check_out(
    cfg: JobConfig, out: Path, path: Location | None = None, test_path: str | None = None
) -> None:
    """ConfigError for an output folder (resolved) that would clobber what is not this
    evaluation's: a file; a run's folder (its metrics.jsonl), a checkpoint or the job's
    checkpoint folder (a committed one's file check would fail, retention would delete it),
    a generated dataset's folder; the evaluation of another checkpoint (``path``) or of
    other test data (``test_path``)."""
    where = f"--out {out}" if path is None else f"{out}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{where}: a file, not a folder; name a folder")
    root = checkpoint_root(cfg)
    if isinstance(root, Path) and out.is_relative_to(root.resolve()):
        raise ConfigError(f"{where}: inside the job's checkpoint folder {root}; name another")
    if any((d / META).is_file() for d in (out, *out.parents)):
        raise ConfigError(f"{where}: inside a checkpoint; name a folder outside it")
    found = sorted(m for m in ("summary.json", "config.json", "dataset.json") if (out / m).exists())
    if _a_runs_log(out / "metrics.jsonl"):
        found.append("a training run's metrics.jsonl")
    if found:
        raise ConfigError(
            f"{where}: holds {', '.join(found)}: a run's or a dataset's folder, not an "
            "evaluation's; name another folder"
        )
    if path is None or not (out / SUMMARY_FILE).is_file():
        return
    try:
        earlier = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return  # unreadable: replaced
    if isinstance(earlier, dict) and (
        earlier.get("checkpoint") != str(path) or earlier.get("test_path") != test_path
    ):
        raise ConfigError(
            f"{where} holds the evaluation of {earlier.get('checkpoint')} on "
            f"{earlier.get('test_path')}; this one ({path} on {test_path}) would replace it: "
            "give it a folder of its own (--out)"
        )


def _a_runs_log(path: Path) -> bool:
    """Whether ``path`` is a training run's metrics.jsonl (its first record is not an
    evaluation's, which is all an evaluation's log holds)."""
    try:
        with path.open() as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return path.exists()  # something else of that name: not ours to replace
    return isinstance(first, dict) and bool(first) and first.get("event") != "eval"


def _data_paths(cfg: JobConfig) -> tuple[str, str]:
    """The job's data; for synthetic data, those its run generated (an evaluation never
    writes data: a changed spec would rewrite the training run's files)."""
    if cfg.data.train_path is not None and cfg.data.test_path is not None:
        return cfg.data.train_path, cfg.data.test_path
    folder = cfg.run_dir / "data"
    data = generated(cfg.data.synthetic, folder)
    if data is None:
        raise ConfigError(
            f"{folder}: no synthetic data of this job's data.synthetic settings: evaluate "
            "reads the data its run generated, and never writes any. Train the job first, or "
            "set data.train_path and data.test_path"
        )
    return str(data.train_dir), str(data.test_dir)


def _read_id_types_of_training(
    train_path: str, schema: SchemaCheck, policy: BadInputPolicy
) -> None:
    """Set ``schema``'s id column types from the first usable training file's footer (under
    ``skip``, bad files passed over): test ids of another type (strings for integers) hash
    to other rows than training's, and would be evaluated silently wrong."""
    try:
        files = resolve_files(train_path)
    except DataSourceError as err:
        raise DataSourceError(
            f"the training files, whose id types the test files' must match: {err}; to "
            "evaluate without them, set data.train_path to the test files (their id types "
            "are then not checked against training's)"
        ) from None
    for file in files:
        try:
            schema(file, open_parquet(file).metadata.schema.to_arrow_schema())
            return
        except READ_ERRORS as err:
            problem = f"{file}: not a readable Parquet file ({err})"
        except BadInputError as err:
            problem = str(err)
        if policy.mode == "error":
            raise BadInputError(problem)
    raise DataSourceError(f"{train_path}: no training file to read the id types from")


def evaluate_and_report(cfg: JobConfig, which: str, out: str | None = None) -> int:
    """Evaluate and print the summary; 0 on success, 1 on a failure, 2 on a bad config (the
    error, on stderr)."""
    try:
        summary = evaluate_checkpoint(cfg, which, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI reports any failure and exits non-zero
        print(f"error: {what_failed(err)}", file=sys.stderr)
        return 1
    print_evaluation(summary)
    return 0


def print_evaluation(summary: dict[str, Any]) -> None:
    print(
        "\n== dist-train evaluation ==\n"
        f"checkpoint        {summary['checkpoint']} (step {summary['step']})\n"
        f"test AUC          {summary['test_auc']:.4f}\n"
        f"test log loss     {summary['test_log_loss']:.4f}\n"
        f"test NE           {summary['test_ne']:.4f}\n"
        f"test examples     {summary['test_examples']:,} ({summary['world_size']} "
        f"{summary['device'].upper()} ranks, {summary['eval_seconds']:.1f} s)\n"
        f"wall time         {summary['wall_seconds']:.1f} s\n"
        f"bad input skipped {skipped_counts(summary['bad_input'])}\n"
        f"outputs           {summary['output_dir']}  ({SUMMARY_FILE}, metrics.jsonl)",
        flush=True,
    )

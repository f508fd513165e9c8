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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from dist_train.checkpoint.folders import META, checkpoint_root
from dist_train.checkpoint.load import CheckpointOfAnotherJob
from dist_train.config.errors import ConfigError
from dist_train.config.paths import absolute_path, resolve_paths
from dist_train.config.schema import FILE_SCHEME, JobConfig
from dist_train.data.listing import (
    READ_ERRORS,
    DataSourceError,
    list_row_groups,
    open_parquet,
    resolve_files,
)
from dist_train.data.synthetic import generated
from dist_train.data.validation import BadInputError, BadInputPolicy, SchemaCheck, skipped_counts
from dist_train.driver import (
    check_output_paths,
    job_device,
    launch,
    plan_on_driver,
    what_failed,
)
from dist_train.embedding.layout import build_layout
from dist_train.input_checks import skipped_by_reason, warn_of_skipped_rows
from dist_train.logs import setup_logging, verbosity
from dist_train.storage import (
    Location,
    clear_stale_staging,
    move_in,
    new_staging,
    same_place_key,
)
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
    chosen = _out_folder(out) if out is not None else None
    if chosen is not None:
        _check_out(cfg, chosen)
    device = job_device(cfg)
    plan = plan_on_driver(cfg, device, training=False)
    path = evaluation_point(cfg, which)
    train_path, test_path = _data_paths(cfg)
    folder = chosen or (cfg.run_dir / "evaluations" / path.name).resolve()
    _check_earlier(folder, path, test_path, given=chosen is not None)
    policy = BadInputPolicy.for_job(cfg)
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    schema = SchemaCheck(builder)
    _read_id_types_of_training(train_path, schema, policy)
    test = list_row_groups(test_path, policy, schema)
    # The workers write into a hidden folder, moved in once all went well: a failed or
    # interrupted evaluation leaves an earlier one's files as they were. Inside ``folder``
    # where it exists (a mount, or a folder whose parent this user cannot write: renames stay
    # on its filesystem), else beside it.
    where = folder if folder.is_dir() else folder.parent
    prefix = f".{folder.name}.evaluating-"
    try:
        where.mkdir(parents=True, exist_ok=True)
        clear_stale_staging(where, prefix)
        staged = new_staging(where, prefix)
    except OSError as err:
        raise ConfigError(f"{folder}: cannot write the evaluation there ({err})") from None
    try:
        inputs = WorkerInputs(
            [],
            test,
            str(staged),
            plan=plan,
            file_counts=policy.counts,
            resume=str(path),
            verbosity=verbosity(),
            device_type=device,
            evaluate_only=True,
        )
        summary = launch(cfg, inputs)
        bad = summary.get("bad_input") or {}
        reasons = f"by reason: {skipped_by_reason(bad)}"
        warn_of_skipped_rows(
            "test", int(bad.get("rows_skipped_total") or 0), int(summary["test_examples"]), reasons
        )
        summary["wall_seconds"] = time.perf_counter() - start
        summary["test_path"] = test_path
        summary["output_dir"] = str(folder)
        (staged / SUMMARY_FILE).write_text(strict_json(summary, indent=2))
        move_in(staged, folder, last=SUMMARY_FILE)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return summary


def _out_folder(out: str) -> Path:
    """``--out`` as a local folder, links resolved."""
    if "://" in out or out.startswith(FILE_SCHEME):
        raise ConfigError(f"--out {out}: a folder on this machine, not a URL")
    try:
        return Path(out).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a loop of links
        raise ConfigError(f"--out {out}: cannot resolve it ({err})") from None


def _check_out(cfg: JobConfig, out: Path) -> None:
    """ConfigError for an ``--out`` (resolved) that would clobber what is not an
    evaluation's: a file; a run's folder (its metrics.jsonl); a dataset's; a checkpoint or
    the job's checkpoint folder (a committed one's file check would fail, retention would
    delete it)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; name a folder")
    root = checkpoint_root(cfg)
    if isinstance(root, Path) and out.is_relative_to(root.resolve()):
        raise ConfigError(f"--out {out}: inside the job's checkpoint folder {root}; name another")
    if any((d / META).is_file() for d in (out, *out.parents)):
        raise ConfigError(f"--out {out}: inside a checkpoint; name a folder outside it")
    found = sorted(m for m in ("summary.json", "config.json", "dataset.json") if (out / m).exists())
    if _a_runs_log(out / "metrics.jsonl"):
        found.append("a training run's metrics.jsonl")
    if out.is_dir() and any(p.suffix == ".parquet" for p in out.iterdir()):
        found.append("Parquet files")  # a user's data: no evaluation's files among them
    if found:
        raise ConfigError(
            f"--out {out}: holds {', '.join(found)}: a run's or a dataset's folder, not an "
            "evaluation's; name another folder"
        )


def _check_earlier(folder: Path, path: Location, test_path: str, given: bool) -> None:
    """ConfigError where ``folder`` holds the evaluation of another checkpoint or of other
    test data (the same again is replaced), or an evaluation.json that is no evaluation's
    (an evaluation writes it whole, last: any other is a user's file, not ours to replace;
    one of ``{"auc": 0.8}`` was called "the evaluation of None on None")."""
    written = folder / SUMMARY_FILE
    if not written.exists() and not written.is_symlink():
        return
    try:
        earlier = json.loads(written.read_text())
    except (OSError, ValueError, RecursionError):
        earlier = None
    if not (
        isinstance(earlier, dict)
        and isinstance(earlier.get("checkpoint"), str)
        and isinstance(earlier.get("test_path"), str)
    ):
        raise ConfigError(
            f"{written}: not an evaluation's record, and this one writes its own there: "
            + ("name another --out" if given else "move it, or give the evaluation --out")
        )
    if _same(earlier["checkpoint"], str(path)) and _same(earlier["test_path"], test_path):
        return
    raise ConfigError(
        f"{folder} holds the evaluation of {earlier.get('checkpoint')} on "
        f"{earlier.get('test_path')}; this one ({path} on {test_path}) would replace it: "
        + ("name another --out" if given else "give it a folder of its own (--out)")
    )


def _same(saved: object, now: str) -> bool:
    """Whether two paths or URLs name the same place (local ones, ``file://`` URLs among
    them, with links resolved)."""
    return isinstance(saved, str) and same_place_key(saved) == same_place_key(now)


def _a_runs_log(path: Path) -> bool:
    """Whether ``path`` is a training run's metrics.jsonl (its first record is not an
    evaluation's, which is all an evaluation's log holds)."""
    try:
        with path.open() as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError, RecursionError):
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
    """Set ``schema``'s id column types from the training files' footers, read until every id
    column has one (a column of only nulls sets none; under ``skip``, bad files passed
    over): test ids of another type (strings for integers) hash to other rows than
    training's, and would be evaluated silently wrong."""
    hint = (
        "evaluate reads the training files' footers for their id types; to evaluate without "
        "them, set data.train_path to the test files (their id types are then not checked "
        "against training's)"
    )
    try:
        files = resolve_files(train_path)
    except DataSourceError as err:
        raise DataSourceError(f"{err} ({hint})") from None
    read = 0
    for file in files:
        try:
            schema(file, open_parquet(file).metadata.schema.to_arrow_schema())
            read += 1
        except (*READ_ERRORS, BadInputError) as err:
            if policy.mode == "error":
                problem = (
                    str(err)
                    if isinstance(err, BadInputError)
                    else f"{file}: not a readable Parquet file ({err})"
                )
                raise BadInputError(
                    f"{problem} ({hint}; data.on_bad_input=skip passes over bad files)"
                ) from None
            continue
        if all(c in schema.reference for c in schema.builder.id_columns):
            return
    if not read:
        raise DataSourceError(f"{train_path}: no usable training file ({hint})")


def evaluate_and_report(
    cfg: JobConfig, which: str, out: str | None = None, config_given: bool = True
) -> int:
    """Evaluate and print the summary; 0 on success, 1 on a failure, 2 on a bad config (the
    error, on stderr). ``config_given``: whether the user named the job's config (else it
    is the default job's, which a checkpoint of another job does not fit)."""
    try:
        summary = evaluate_checkpoint(cfg, which, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI reports any failure and exits non-zero
        print(f"error: {what_failed(err)}", file=sys.stderr)
        if isinstance(err, CheckpointOfAnotherJob) and not config_given:
            print(
                "hint: no --config was given, so this is the default job; evaluate a "
                "checkpoint with the config it was trained with (--config FILE: the run "
                "folder's config.json is one)",
                file=sys.stderr,
            )
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

"""The run's checkpoints: where it resumes from, when it saves, what it saves.

- :func:`resume_point` (the driver, before any worker starts): clean up half-written
  checkpoints, resolve ``checkpoint.resume``, check that it can resume on this many ranks;
  refuse a fresh run whose saves would land among an earlier run's checkpoints.
- :func:`restart_point` (a worker group that Ray Train restarted after a failure): the
  newest checkpoint of this launch.
- :class:`Checkpoints` (the training loop): load it, then when and what to save.

The files and the commit rule are :mod:`dist_train.checkpoint`'s.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError

from dist_train import storage
from dist_train.checkpoint.digests import digest_of
from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import local_path
from dist_train.checkpoint.folders import (
    check_writable,
    checkpoint_root,
    committed,
    foreign_steps,
    remove_partials,
    resolve_checkpoint,
    step_of,
)
from dist_train.checkpoint.load import CheckpointOfAnotherJob, check_model_shapes, load
from dist_train.checkpoint.meta import (
    TrainPosition,
    check_compatible,
    read_meta,
    redeals_skipping,
    skips_rows,
)
from dist_train.checkpoint.save import CheckpointSaver
from dist_train.config.schema import EmbeddingConfig, FeatureConfig, JobConfig, dense_column_names
from dist_train.data.listing import RowGroup
from dist_train.data.validation import BadInputCounts, BadInputPolicy, across_ranks
from dist_train.embedding.layout import build_layout
from dist_train.logs import LOG
from dist_train.storage import Location, location
from dist_train.train.faults import faulty_storage, maybe_kill
from dist_train.train.progress import Progress
from dist_train.train.sharding import JobPlan, build_model
from dist_train.train.trainer import Trainer


def training_data(groups: list[RowGroup]) -> dict[str, Any]:
    """What a mid-epoch position assumes of the training data (``groups``, as listed): its
    files, row groups and rows, and a digest of the listing (paths from their common folder
    on, so that the same files moved elsewhere still match)."""
    paths = [g.path for g in groups]
    common = os.path.commonprefix(paths)  # noqa: RUF071 - cut at its last / below (URLs too)
    common = common[: common.rfind("/") + 1]
    listing = [(g.path[len(common) :], g.index, g.num_rows) for g in groups]
    return {
        "files": len(set(paths)),
        "row_groups": len(groups),
        "rows": sum(g.num_rows for g in groups),
        "digest": digest_of(json.dumps(listing).encode()),
    }


# meta.json's key of :func:`training_contents`: beside ``train_data``, whose comparison
# older versions make whole (an extra key there refused every mid-epoch resume)
CONTENTS_KEY = "train_contents"


def training_contents(groups: list[RowGroup]) -> str:
    """A digest of ``groups``' byte sizes as their footers record them (uncompressed): files
    rewritten with other rows in the same layout mostly record others."""
    return digest_of(json.dumps([g.byte_size for g in groups]).encode())


def resume_point(cfg: JobConfig, job_plan: JobPlan | None = None) -> str | None:
    """Clean up half-written checkpoints, then resolve ``checkpoint.resume`` to a path,
    checked against everything of the job but its data's files (before they are prepared:
    a refused resume regenerated the run's synthetic data first;
    :func:`check_resumed_data` then)."""
    root = checkpoint_root(cfg)
    if cfg.checkpoint.saves:
        check_writable(root)  # before training, not at its first save
    for p in remove_partials(root):
        LOG.info(f"removed partial checkpoint {p} (a save was interrupted)")
    for p in foreign_steps(root):  # a save of its step fails: say so now
        LOG.warning(
            f"{p} is named as the checkpoint of step {step_of(p)}, but no save "
            "wrote it: it is left as it is, and a save of that step would fail; move it out "
            "of the checkpoint folder"
        )
    if root.is_dir():  # earlier launches' failure records: this launch is another
        for p in root.iterdir():
            if _FAILURE_RECORD.fullmatch(p.name) and p.is_file():
                storage.rmtree(p)
    if cfg.checkpoint.resume is None:
        refuse_to_overwrite(cfg)
        return None
    path = resolve_checkpoint(cfg, cfg.checkpoint.resume)
    if path is None:
        LOG.warning(
            f"resume=latest found no committed checkpoint under {root}: training starts "
            "from scratch"
        )
        return None
    # Fail here, before workers start, if it is unreadable or cannot resume on this many ranks.
    meta = read_meta(path)
    position = check_compatible(meta, path, cfg.ray.num_workers)
    if redeals_skipping(meta, cfg.ray.num_workers, cfg.data.on_bad_input == "skip"):
        raise CheckpointError(
            f"{path}: saved mid-epoch by {meta.get('world_size')} ranks, and bad rows are "
            "skipped (data.on_bad_input=skip): a rank's stream may hold fewer batches than "
            f"its plan, so re-dealt to {cfg.ray.num_workers} ranks rows would be lost or a "
            f"rank find none. Resume it with {meta.get('world_size')} ranks, or from a "
            "checkpoint at an epoch boundary"
        )
    if position.batches:
        _check_same_batches(cfg, meta, path)
    _check_same_hashing(cfg, meta, path)
    _refuse_to_branch(cfg, root, path, position.step)
    _check_same_model(cfg, meta, path)
    _warn_of_other_inputs(cfg, meta, path, "resumed")
    LOG.info(f"resuming from {path}")
    plan = job_plan.placements() if job_plan is not None else None
    if meta.get("world_size") != cfg.ray.num_workers or (plan and meta.get("sharding") != plan):
        saved = sorted({str(t["type"]) for t in (meta.get("sharding") or {}).values()})
        now = sorted({str(t["type"]) for t in (plan or {}).values()})
        LOG.info(
            f"resharding it: saved by {meta.get('world_size')} ranks as "
            f"{'/'.join(saved) or '?'}, loading on {cfg.ray.num_workers} as "
            f"{'/'.join(now) or 'the workers plan'}"
        )
    return str(path)


def evaluation_point(cfg: JobConfig, which: str) -> Location:
    """``which`` (a committed checkpoint, or ``latest``: the job's newest) checked to load
    into this job's model on its ranks, as a resume is; nothing in its folder is touched."""
    path = resolve_checkpoint(cfg, which)
    if path is None:
        raise CheckpointError(
            f"no committed checkpoint under {checkpoint_root(cfg)} to evaluate "
            "(`latest` is the job's newest: check --config, --set name=... or "
            "checkpoint.dir, or give a checkpoint's path)"
        )
    meta = read_meta(path)  # its position is not checked: nothing resumes
    _check_same_hashing(cfg, meta, path)
    _check_same_model(cfg, meta, path)
    _warn_of_other_inputs(cfg, meta, path, "evaluated")
    return path


def _check_same_model(cfg: JobConfig, meta: dict[str, Any], path: Location) -> None:
    # another model (a table of other rows, another layer) failed only in the ranks, after
    # Ray had started, once a rank; the planner's model on the meta device holds the shapes
    with torch.device("meta"):
        model = build_model(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    check_model_shapes(path, meta, model.state_dict(), _model_settings_changed(cfg, meta))


def _model_settings_changed(cfg: JobConfig, meta: dict[str, Any]) -> str:
    """``model.KEY=SAVED, now NOW`` for each setting of the saved model's kind (or the kind
    itself) that this job changes; empty where none, or the checkpoint does not say."""
    saved = _setting(meta.get("config") or {}, "model")
    if not isinstance(saved, dict):
        return ""
    now = cfg.model.model_dump(mode="json")
    if saved.get("kind", now["kind"]) != now["kind"]:
        return f"model.kind={saved['kind']!r}, now {now['kind']!r}"
    return "; ".join(
        f"model.{k}={saved[k]!r}, now {now[k]!r}"
        for k in cfg.model.settings_read()
        if k in saved and saved[k] != now[k]
    )


def refuse_to_overwrite(cfg: JobConfig) -> None:
    """A fresh run saves ``step-N`` from step 1 again and keeps only the newest
    ``num_to_keep``: beside an earlier run's checkpoints it would replace theirs at equal steps
    and retention would delete its own (or theirs). One that saves nothing may start beside
    them (a checkpoint.dir shared by runs), but not in that run's folder, where it would
    replace the run's records (its summary, metrics and config). Refuse before anything is
    written."""
    root = checkpoint_root(cfg)
    existing = committed(root)
    if existing and (cfg.checkpoint.saves or _records_of_run_saved_in(existing[-1], cfg)):
        harm = (
            "overwrite or delete them"
            if cfg.checkpoint.saves
            else "replace that run's summary, metrics and config"
        )
        raise CheckpointError(
            f"{root} already holds checkpoints of an earlier run (newest: {existing[-1].name}) "
            f"and this run starts from scratch, which would {harm}. Continue "
            "that run with --resume latest (--set checkpoint.resume=latest in a submitted "
            "job's command), or start a new one under another name "
            "(--set name=...) or checkpoint.dir; nothing was changed"
        )
    summary = cfg.run_dir / "summary.json"
    if summary.is_file():
        # a finished run this one does not continue, which saved no checkpoint
        # (checkpoint.save_at_end=false), or whose are not the newest of a checkpoint.dir
        # that runs share: its records were all it left, and this run's replaced them
        # unsaid (a helper's audit)
        raise CheckpointError(
            f"{cfg.run_dir} holds the records of an earlier run ({summary.name}, metrics.jsonl, "
            "config.json) that this run does not continue: it would replace them. "
            "Start it under another name (--set name=...), or move them out; nothing was "
            "changed"
        )


def _records_of_run_saved_in(newest: storage.Location, cfg: JobConfig) -> bool:
    """Whether this run's folder holds the records (summary, metrics) of the run that saved
    the checkpoint ``newest``: the folder's own checkpoints (under it, or it), or a shared
    checkpoint.dir's whose saving run had this run folder (its meta.json's config; one that
    cannot be read counts as the run's, the cautious way)."""
    run = cfg.run_dir.resolve()
    if not any((run / name).exists() for name in ("summary.json", "metrics.jsonl")):
        return False
    here = local_path(newest)
    if here is not None and here.resolve().is_relative_to(run):
        return True
    try:
        saved = read_meta(newest).get("config") or {}
    except CheckpointError:
        return True
    folder = Path(str(saved.get("output_dir", ""))) / str(saved.get("name", ""))
    return folder.resolve() == run


def _hashing(embedding: EmbeddingConfig, features: list[FeatureConfig], seed: int) -> list[Any]:
    """Each KJT key's table and salt: which row a value looks up."""
    return [(k.key, k.table, k.salt) for k in build_layout(embedding, features, seed).keys]


def check_resumed_data(resume: str | None, train_groups: list[RowGroup]) -> None:
    """CheckpointError where the checkpoint :func:`resume_point` resolved was saved
    mid-epoch over other training files than ``train_groups``."""
    if resume is None:
        return
    path = storage.location(resume)
    meta = read_meta(path)
    if TrainPosition(**meta["position"]).batches:  # (resume_point checked the meta)
        _check_same_data(train_groups, meta, path)


def _check_same_data(groups: list[RowGroup], meta: dict[str, Any], path: Location) -> None:
    """A mid-epoch checkpoint counts the batches its ranks consumed of row groups dealt from
    the listing it was saved over: another listing deals other batches, and other rows in
    the same listing train other examples."""
    now, saved = training_data(groups), meta.get("train_data")
    if not isinstance(saved, dict):
        return  # saved before the data were recorded

    def counts(d: dict[str, Any]) -> str:
        return f"{d.get('files')} file(s), {d.get('row_groups')} row group(s), {d.get('rows')} rows"

    if saved == now:
        contents = meta.get(CONTENTS_KEY)
        if contents is None or contents == training_contents(groups):
            return  # the same, as far as recorded
        same = (
            " (the same files and row groups, but their footers record other byte sizes: "
            "other rows, or another writer)"
        )
    else:
        same = " (as many, but other files or order)" if counts(saved) == counts(now) else ""
    raise CheckpointError(
        f"{path} was saved mid-epoch over training data of {counts(saved)}; the job's "
        f"data.train_path now holds {counts(now)}{same}. The epoch's remaining batches would "
        "differ, so rows would be trained twice or skipped: resume with the data as they "
        "were, or from a checkpoint at an epoch boundary"
    )


def _check_same_hashing(cfg: JobConfig, meta: dict[str, Any], path: Location) -> None:
    """A checkpoint's rows are its values hashed with its salts (from ``seed`` and each
    feature's name and chunk): at any position, a job that hashes otherwise would look its
    values up in rows trained for others, with every table's shape unchanged."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return  # saved before configs were recorded
    try:
        then = _hashing(
            EmbeddingConfig.model_validate(saved.get("embedding")),
            [FeatureConfig.model_validate(f) for f in saved.get("features") or []],
            int(saved.get("seed")),  # type: ignore[arg-type]
        )
    except (ValidationError, TypeError, ValueError, OverflowError):
        LOG.warning(f"{path}: its config is of an older form; the features' hashing unchecked")
        return
    now = _hashing(cfg.embedding, cfg.features, cfg.seed)
    if then == now:
        return
    was, has = _hashing_settings(saved), _hashing_settings(cfg.model_dump(mode="json"))
    changed = [key for key in was if was[key] != has[key]]
    first = next((a, b) for a, b in itertools.zip_longest(then, now) if a != b)
    raise CheckpointOfAnotherJob(
        f"{path} was trained with other hashing of the features ({', '.join(changed)} "
        f"differ; first differing key: saved {first[0]!r}, now {first[1]!r}): its rows would "
        "be looked up for other values. Resume or evaluate it with the saved values, or start a "
        "new run"
    )


def _hashing_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a dumped config that decide which row a value hashes to."""
    embedding = config.get("embedding") or {}
    return {
        "seed": config.get("seed"),
        "features (names, chunks)": [
            (f.get("name"), f.get("chunks")) for f in config.get("features") or []
        ],
        **{f"embedding.{k}": embedding.get(k) for k in ("kind", "num_rows", "num_tables")},
    }


# The settings that cut an epoch's rows into each rank's batches (with, for generated data,
# data.synthetic's): resuming mid-epoch counts the batches already trained, so these must
# not change there.
_BATCH_SETTINGS = ("seed", "train.batch_size", "data.shuffle_buffer_rows", "data.train_path")
# ... and, where bad rows are skipped, the checks that decide which rows are bad
_ROW_CHECK_SETTINGS = (
    "data.on_bad_input",
    "data.label_column",
    "data.dense_columns",
    "data.dense_transform",
    "features",
)


# The settings that change what a model computes from the same weights, every shape the
# same: its tables' pooling, which columns feed it and how, its attention's heads. A
# checkpoint's weights were trained for the saved values; another is most often a config
# mixed up (AUC falls with no error), sometimes meant (fine-tuning).
_INPUT_SETTINGS = ("embedding.pooling", "data.dense_transform", "model.attention_heads")


def _warn_of_other_inputs(cfg: JobConfig, meta: dict[str, Any], path: Location, how: str) -> None:
    """Warn where the job feeds ``path``'s weights otherwise than they were trained, or
    trains or tests them against another label."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return  # saved before configs were recorded
    now = cfg.model_dump(mode="json")
    dense_then, dense_now = _dense_columns(saved), cfg.data.resolved_dense_columns()
    changed = [
        f"{key}={_setting(saved, key)!r}, now {_setting(now, key)!r}"
        for key in _INPUT_SETTINGS
        if _has_setting(saved, key)
        and _setting(saved, key) != _setting(now, key)
        and (key != "model.attention_heads" or cfg.model.kind == "autoint")
        and (key != "data.dense_transform" or dense_now)
    ]
    if dense_then is not None and dense_then != dense_now:
        changed.append(f"data.dense_columns={dense_then}, now {dense_now}")
    columns = {f.name: f.source_column for f in cfg.features}
    for f in saved.get("features") or []:
        if isinstance(f, dict) and f.get("name") in columns:
            then = f.get("column") or f.get("name")
            if then != columns[f["name"]]:
                changed.append(f"features.{f['name']}.column={then!r}, now {columns[f['name']]!r}")
    if changed:
        LOG.warning(
            f"{path} was trained with {'; '.join(changed)}: {how} with these, its weights "
            "see inputs they were not trained on (every shape is the same, so nothing fails, "
            "but its results are not the trained model's). Set the saved values unless this "
            "is meant"
        )
    label = _setting(saved, "data.label_column")
    if label is not None and label != cfg.data.label_column:
        LOG.warning(
            f"{path} was trained to predict data.label_column={label!r}; this job's label "
            f"is {cfg.data.label_column!r}: {how} against another label. Set the saved "
            "value unless this is meant"
        )


def _dense_columns(config: dict[str, Any]) -> list[str] | None:
    """A dumped config's dense columns as its job read them (unset: the generator's I1..In);
    None where it does not say."""
    data = config.get("data")
    if not isinstance(data, dict) or "dense_columns" not in data:
        return None
    n = _setting(config, "data.synthetic.num_dense")
    if data["dense_columns"] is None and not isinstance(n, int):
        return None
    return dense_column_names(data["dense_columns"], n)


def _has_setting(config: dict[str, Any], key: str) -> bool:
    """Whether a dumped config holds ``key`` (an older one may lack a newer key)."""
    *sections, last = key.split(".")
    for part in sections:
        config = config.get(part) if isinstance(config, dict) else None  # type: ignore[assignment]
    return isinstance(config, dict) and last in config


def _setting(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None  # type: ignore[assignment]
    return config


def _check_same_batches(cfg: JobConfig, meta: dict[str, Any], path: Location) -> None:
    """A mid-epoch checkpoint resumes only under the settings that made its batches."""
    saved = meta.get("config")
    if not isinstance(saved, dict):
        return  # saved before configs were recorded
    now = cfg.model_dump(mode="json")
    keys = list(_BATCH_SETTINGS)
    if isinstance(meta.get("train_data"), dict) and None not in (
        _setting(saved, "data.train_path"),
        now["data"]["train_path"],
    ):  # the files themselves are compared (_check_same_data): the same moved still match
        keys.remove("data.train_path")
    if skips_rows(meta, cfg.data.on_bad_input == "skip"):
        keys += _ROW_CHECK_SETTINGS  # a feature's cardinality, say: another row is bad
    if now["data"]["train_path"] is None:  # generated data: what shapes its training rows
        # (they are generated first: the test split's size does not)
        keys += [f"data.synthetic.{k}" for k in now["data"]["synthetic"] if k != "num_test_rows"]
    for key in keys:
        then, this = _setting(saved, key), _setting(now, key)
        if then != this:
            if isinstance(then, list) and isinstance(this, list) and len(then) == len(this):
                # a list (the features): its first item that differs, not the whole list
                i = next(i for i, (a, b) in enumerate(zip(then, this, strict=True)) if a != b)
                key, then, this = f"{key}[{i}]", then[i], this[i]
            raise CheckpointError(
                f"{path} was saved mid-epoch with {key}={then!r}; this job "
                f"has {this!r}. The epoch's batches would differ, so rows "
                "would be trained twice or skipped: resume with the saved value, or from a "
                "checkpoint at an epoch boundary"
            )


def _newer_than(root: Location, step: int) -> list[Location]:
    """The committed checkpoints under ``root`` of steps after ``step``."""
    return [p for p in committed(root) if step_of(p) > step]


def _refuse_to_branch(cfg: JobConfig, root: Location, path: Location, step: int) -> None:
    """Resuming from ``step`` beside newer checkpoints would mix two runs: ``latest`` would
    pick theirs, and keeping the newest ``num_to_keep`` would delete this run's (the
    checkpoint resumed from first). Refuse before anything is written."""
    newer = [p.name for p in _newer_than(root, step)]
    if cfg.checkpoint.saves and newer:
        raise CheckpointError(
            f"{root} holds checkpoints newer than {path} ({', '.join(newer)}): this run's "
            "saves would mix with them, and keeping the newest would delete the older ones. "
            "Move the newer ones out of the directory, or save this run elsewhere "
            "(--set name=... or checkpoint.dir); nothing was changed"
        )


FAILED_PREFIX = "failed-"
OLD_PREFIXES = ("diverged-",)  # the records' name before they covered other errors
# record_failure's files, and no other name: a checkpoint.dir may hold the user's files too
# (a launch's run_id is a uuid4's hex; diverged-<launch>.json before records were a rank's;
# .tmp: a write cut short)
_FAILURE_RECORD = re.compile(
    "(?:" + "|".join(map(re.escape, (FAILED_PREFIX, *OLD_PREFIXES))) + ")"
    r"[0-9a-f]{32}(?:-rank\d+)?\.json(?:\.tmp)?"
)


def record_failure(cfg: JobConfig, run_id: str, rank: int, error: BaseException) -> None:
    """Record that this launch failed on ``rank`` with ``error``, one that a restart would
    meet again (a divergence, bad input: ``repeats_on_restart``,
    :mod:`dist_train.launchers.ray_worker`), where Ray Train restarts the
    group after a failure: the restarted group would resume the newest checkpoint and fail
    again at the same step, until the restarts are spent (without end at
    ``ray.max_failures=-1``). Beside the checkpoints, which every rank reaches; one file a
    rank, as several may fail at once. Best effort: a failure to write is logged, and the
    error is still what the rank raises."""
    if cfg.ray.max_failures == 0:
        return  # no restart to stop
    root = checkpoint_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
        record = root / f"{FAILED_PREFIX}{run_id}-rank{rank}.json"
        storage.write_atomically(
            record, json.dumps({"type": type(error).__name__, "error": str(error)})
        )
    except Exception as err:  # noqa: BLE001 - storage backends raise many types
        LOG.warning(f"could not record the failure under {root} ({err}): a restart may replay it")


def failed_before(cfg: JobConfig, run_id: str) -> tuple[str, str] | None:
    """(the error's type name, its message) of this launch's failure, if a worker group
    before this one recorded one (rank 0 reads, every rank returns it)."""
    found: list[tuple[str, str] | None] = [None]
    if dist.get_rank() == 0:
        root = checkpoint_root(cfg)
        mine = f"{FAILED_PREFIX}{run_id}-"
        records = (
            sorted(
                p for p in root.iterdir() if p.name.startswith(mine) and p.name.endswith(".json")
            )
            if root.is_dir()
            else []
        )
        for record in records[:1]:
            try:
                raw = json.loads(record.read_text())
                found[0] = (str(raw["type"]), str(raw["error"]))
            except (ValueError, KeyError, TypeError, OSError):
                found[0] = ("LaunchError", f"a worker failed (its record {record} is unreadable)")
    dist.broadcast_object_list(found, src=0)
    return found[0]


def restart_point(cfg: JobConfig, run_id: str, recorded: tuple[int, str] | None) -> str | None:
    """The checkpoint a restarted worker group resumes from; None on a first start.

    ``recorded`` is (step, path) of the launcher's own record of this launch's newest commit
    (Ray Train's ``get_checkpoint()``), if it has one. It can lag (Ray registers a report when
    its controller next polls the workers), so the newest checkpoint this launch committed
    (its ``run_id`` in ``meta.json``) is considered too. Rank 0 decides and tells the others:
    on a shared filesystem another node may not see the newest directory yet.
    """
    choice: list[str | None] = [None]
    if dist.get_rank() == 0:
        candidates = [recorded] if recorded is not None else []
        for path in reversed(committed(checkpoint_root(cfg))):
            try:
                meta = read_meta(path)
            except CheckpointError:
                continue
            if meta.get("run_id") == run_id:
                candidates.append((int(meta["position"]["step"]), str(path)))
                break
        choice[0] = max(candidates)[1] if candidates else None
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


class Checkpoints:
    """Resumes ``trainer`` from ``resume`` (a committed checkpoint, or None), then saves
    every ``checkpoint.every_steps`` steps and at the end. ``on_commit(path, step)`` runs on
    every rank after each commit (Ray Train records it for restarts)."""

    def __init__(
        self,
        cfg: JobConfig,
        trainer: Trainer,
        progress: Progress,
        run_dir: str,
        run_id: str,
        resume: str | None,
        rank: int,
        on_commit: Callable[[str, int], None] | None = None,
        train_groups: list[RowGroup] | None = None,
    ) -> None:
        self.cfg, self.trainer, self.progress = cfg, trainer, progress
        self.resume_from, self.on_commit = resume, on_commit
        self._last_due = False  # training's last step was due a save, left to finish()
        extra: dict[str, Any] = {
            "config": cfg.model_dump(mode="json"),
            "sharding": trainer.plan.placements(),
            "run_id": run_id,
        }
        if train_groups is not None:  # what a mid-epoch position's batches were dealt from
            extra["train_data"] = training_data(train_groups)
            extra[CONTENTS_KEY] = training_contents(train_groups)
        self.saver = CheckpointSaver(
            trainer,
            checkpoint_root(cfg),
            cfg.checkpoint.num_to_keep,
            extra,
            on_commit=self._committed,
            before_commit=lambda step: maybe_kill(run_dir, rank, step, "save"),
            background=cfg.checkpoint.background,
            drill=faulty_storage,
        )

    def resume(self, policy: BadInputPolicy) -> TrainPosition:
        """Load the checkpoint to resume from, if any; the position to train on from."""
        if not self.resume_from:
            return TrainPosition()
        position = load(self.trainer, location(self.resume_from))
        self.saver.resumed(location(self.resume_from), position.step)
        self.trainer.resumed_at(position.step)
        # a branch (beside newer checkpoints, which a run that saves nothing may take)
        branch = bool(_newer_than(self.saver.root, position.step))
        self.progress.resumed_at(position.step, branch=branch)
        if dist.get_rank() == 0:  # the saved counts are every rank's (save), held once
            policy.counts.rows = dict(position.bad_input_rows)
            policy.counts.row_groups = position.bad_input_row_groups
        self.progress.log(
            {"event": "resume", "checkpoint": self.resume_from, **asdict(position)},
            f"resumed from {self.resume_from}: step {position.step}, epoch "
            f"{position.epoch}, {position.batches} batches into it",
        )
        return position

    def should_save(self, step: int, last: bool = False) -> bool:
        """Whether ``step`` is saved now; the ``last`` step of training is left to
        :meth:`finish`, off the training clock (its examples/s leaves the final save out)."""
        every = self.cfg.checkpoint.every_steps
        due = every is not None and step % every == 0
        self._last_due = due and last
        return due and not last

    def save(self, position: TrainPosition, hold: bool = True) -> None:
        """Save ``position``; it commits once :meth:`step_done` vouches for its weights
        (unless not ``hold``)."""
        self.trainer.sync_replicas()  # 2D: the replicas agree on what is saved
        self.saver.save(_with_every_ranks_counts(position), hold=hold)

    def step_done(self, loss: float) -> None:
        """The step after a save trained on the saved weights: the save commits if the
        step's ``loss`` is finite and is dropped if not (its weights had diverged, and a
        resume would diverge again at once)."""
        if math.isfinite(loss):
            self.saver.release()
            return
        try:
            self.saver.release(f"the next step's loss was {loss}")
        except CheckpointError:
            pass  # an inline save fails here: the caller reports the divergence itself

    def wait(self) -> None:
        """Wait for the save in flight (raising its error)."""
        self.saver.wait()

    def finish(self, position: TrainPosition) -> Location | None:
        """Save ``position`` if the job saves at the end and it is not saved yet; wait for
        the last save; the newest committed checkpoint."""
        self.saver.release()  # no step follows it (its tensors were checked finite)
        at_end = self.cfg.checkpoint.save_at_end or self._last_due
        if at_end and position.step != self.saver.last_step:
            self.save(position, hold=False)
        self.saver.wait()
        return self.saver.last_path

    def _committed(self, path: Location, position: TrainPosition) -> None:
        if self.on_commit is not None:
            self.on_commit(str(path), position.step)
        self.progress.log(
            {"event": "checkpoint", "path": str(path), **asdict(position)},
            f"checkpoint step {position.step} -> {path}",
        )


def _with_every_ranks_counts(position: TrainPosition) -> TrainPosition:
    """``position`` with the bad-input counts summed over the ranks (each counts what it
    read; the checkpoint holds one position)."""
    local = BadInputCounts(
        row_groups=position.bad_input_row_groups, rows=dict(position.bad_input_rows)
    )
    total = across_ranks(local)
    return replace(position, bad_input_rows=total.rows, bad_input_row_groups=total.row_groups)

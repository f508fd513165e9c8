"""A committed checkpoint's ``meta.json``: where training was (:class:`TrainPosition`), the
config and plan, every file's digest; read checked against its own digest, field by field.
Whether a job can resume from it (:func:`check_compatible`) is decided here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dist_train.checkpoint.digests import FileDigests, digest_of
from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import is_plain_file_name, open_file
from dist_train.checkpoint.folders import (
    META,
    is_a_saves_name,
    not_committed,
    save_folder_name,
    step_of,
)
from dist_train.checkpoint.rng import is_rng_state
from dist_train.logs import LOG
from dist_train.storage import Location
from planners.json_keys import loads_unique_keys

META_DIGEST = "meta_xxh3_128"  # of meta.json's other keys, as canonical JSON
# far above any meta.json: it grows by about 44 bytes a 16 MiB chunk of the shards it lists
# (64 MiB at 23 TiB of shards; this, about 370 TiB) and 6.7 KB a rank's RNG state
META_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class TrainPosition:
    """Where training is: global ``step``, and ``batches`` each rank consumed in ``epoch``
    under ``plan`` (an :class:`~dist_train.data.epoch_plan.EpochPlan` as JSON; None at an
    epoch boundary, and in checkpoints written before plans were saved)."""

    step: int = 0
    epoch: int = 0
    batches: int = 0
    bad_input_rows: dict[str, int] = field(default_factory=dict)
    bad_input_row_groups: int = 0
    plan: dict[str, Any] | None = None


def read_meta(path: Location) -> dict[str, Any]:
    """``meta.json`` of a committed checkpoint, checked against its own digest."""
    meta_path = path / META
    if not meta_path.exists():
        raise CheckpointError(not_committed(path))
    try:
        with open_file(meta_path) as f:  # a link to /dev/zero: refused
            text = f.read(META_MAX_BYTES + 1)
        if len(text) > META_MAX_BYTES:
            raise ValueError(f"larger than {META_MAX_BYTES:,} bytes")
        meta = loads_unique_keys(text.decode("utf-8"))  # an edited key's first value: refused
    except (OSError, ValueError, RecursionError) as err:  # JSON's and UTF-8's errors too
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("position"), dict):
        raise CheckpointError(f"{meta_path}: not dist_train checkpoint metadata")
    if "files" in meta and META_DIGEST not in meta:  # only checkpoints older than both lack both
        raise CheckpointError(
            f"{meta_path}: records file digests but not its own ({META_DIGEST}): the file is "
            "corrupt or was edited"
        )
    if META_DIGEST in meta:
        want = meta.pop(META_DIGEST)
        if want != meta_digest(meta):
            raise CheckpointError(
                f"{meta_path}: its contents differ from the digest it was committed with: "
                "the file is corrupt or was edited"
            )
    files = meta.get("files")
    if files is not None and not (
        isinstance(files, dict) and all(isinstance(v, dict) for v in files.values())
    ):
        raise CheckpointError(f"{meta_path}: 'files' is not a map of file digests")
    for name, want in (files or {}).items():
        if not is_plain_file_name(name):  # read from outside the folder
            raise CheckpointError(f"{meta_path}: files[{name!r}]: not a file of its folder")
        problem = _digest_problem(want)
        if problem:
            raise CheckpointError(f"{meta_path}: files[{name!r}]: {problem}")
    _check_fields(meta, meta_path)
    saved = meta["position"].get("step")
    if is_a_saves_name(path) and saved is not None and saved != step_of(path):
        # `latest` and retention go by the names: a renamed one was taken as the newest
        raise CheckpointError(
            f"{path}: named as the checkpoint of step {step_of(path)}, but its {META} records "
            f"step {saved}: it was renamed. Give it its name back "
            f"({save_folder_name(saved)}), or move it out of the checkpoint folder"
        )
    return meta


def _digest_problem(want: dict[str, Any]) -> str | None:
    """What is wrong with one file's entry in ``files`` (a save writes its byte count, its
    digest and its chunks' digests, chunk_bytes long each), or None."""
    if not _is_count(want.get("bytes")):
        return "'bytes' is not a byte count"
    if not isinstance(want.get("xxh3_128"), str):
        return "'xxh3_128' is not a digest"
    if "chunk_bytes" in want and not (_is_count(want["chunk_bytes"]) and want["chunk_bytes"]):
        return "'chunk_bytes' is not a positive byte count"
    chunks = want.get("chunks")
    if "chunks" in want and not (
        isinstance(chunks, list) and all(isinstance(c, str) for c in chunks)
    ):
        return "'chunks' is not a list of digests"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_plan(plan: Any) -> bool:
    """An :class:`~dist_train.data.epoch_plan.EpochPlan` as JSON: ``stream_world`` and, per
    rank, segments ``(stream, first, end)`` of a stream of those ranks (a forged stream 7 of
    2 failed in an IndexError), ``first`` up to ``end``."""
    if not isinstance(plan, dict) or not _is_count(plan.get("stream_world")):
        return False
    segments, streams = plan.get("segments"), plan["stream_world"]
    return isinstance(segments, list) and all(
        isinstance(rank, list)
        and all(
            isinstance(seg, list)
            and len(seg) == 3
            and all(map(_is_count, seg))
            and seg[0] < streams
            and seg[1] <= seg[2]
            for seg in rank
        )
        for rank in segments
    )


_POSITION_FIELDS: dict[str, Callable[[Any], bool]] = {
    "step": _is_count,
    "epoch": _is_count,
    "batches": _is_count,
    "bad_input_rows": lambda v: isinstance(v, dict) and all(map(_is_count, v.values())),
    "bad_input_row_groups": _is_count,
    "plan": lambda v: v is None or _is_plan(v),
}


def _check_fields(meta: dict[str, Any], meta_path: Location) -> None:
    """The fields resuming reads, each of its type (an edited file fails here, named)."""
    for key, value in meta["position"].items():
        if key not in _POSITION_FIELDS:
            raise CheckpointError(f"{meta_path}: unknown key position.{key}")
        if not _POSITION_FIELDS[key](value):
            raise CheckpointError(f"{meta_path}: position.{key} is not valid: {value!r:.80}")
    if "world_size" in meta and not (_is_count(meta["world_size"]) and meta["world_size"] > 0):
        raise CheckpointError(f"{meta_path}: world_size is not a rank count")
    rng = meta.get("torch_rng_states")
    if rng is not None and not (isinstance(rng, list) and all(map(is_rng_state, rng))):
        raise CheckpointError(f"{meta_path}: torch_rng_states is not a list of CPU RNG states")
    sharding = meta.get("sharding")
    if sharding is not None and not (
        isinstance(sharding, dict)
        and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in sharding.values())
    ):
        raise CheckpointError(f"{meta_path}: sharding is not a map of tables' placements")
    plan = meta["position"].get("plan")
    if plan is not None and not (plan["stream_world"] >= 1 and len(plan["segments"]) >= 1):
        raise CheckpointError(f"{meta_path}: position.plan deals no streams: {plan!r:.80}")
    config = meta.get("config")  # read as maps where present (an older one has none)
    for key, part in (("config", config), *_config_parts(config)):
        if part is not None and not isinstance(part, dict):
            raise CheckpointError(f"{meta_path}: {key} is not a map: {part!r:.80}")
    # read as a count before the config is parsed (where the resume's steps are counted)
    batch = ((config or {}).get("train") or {}).get("batch_size")
    if batch is not None and not (_is_count(batch) and batch > 0):
        raise CheckpointError(f"{meta_path}: config.train.batch_size is not valid: {batch!r:.80}")


def _config_parts(config: Any) -> list[tuple[str, Any]]:
    """The sections of a recorded config that resuming reads as maps."""
    if not isinstance(config, dict):
        return []
    return [(f"config.{k}", config.get(k)) for k in ("data", "embedding", "train", "checkpoint")]


def meta_digest(meta: dict[str, Any]) -> str:
    """The digest ``meta.json`` records of its other keys (as canonical JSON)."""
    return digest_of(json.dumps(meta, sort_keys=True).encode())


def file_digests(meta: dict[str, Any], path: Location) -> FileDigests | None:
    """The digests ``meta.json`` records (None, with a warning, for a checkpoint saved before
    dist_train recorded them: its files load unverified, still without running code)."""
    files = meta.get("files")
    if files is None:
        LOG.warning(
            f"{path / META} lists no file digests (an older "
            "dist_train saved it): its shards load unverified"
        )
    return files


def check_compatible(meta: dict[str, Any], path: Location, world: int) -> TrainPosition:
    """The saved position, if a job of ``world`` ranks can resume it; else CheckpointError.

    Any plan and world size can load a checkpoint
    (:func:`~dist_train.checkpoint.load.load` reshards it). Mid-epoch, the saved epoch plan
    re-deals the batches not yet trained to the new ranks; a checkpoint from before plans
    were saved needs the world size it was saved with.
    """
    position = TrainPosition(**meta["position"])
    saved_world = meta.get("world_size")
    if saved_world != world and position.batches and position.plan is None:
        raise CheckpointError(
            f"{path}: saved mid-epoch by {saved_world} ranks without an epoch plan; resume "
            f"it with {saved_world} ranks (this job has {world}), or from a checkpoint at an "
            "epoch boundary"
        )
    return position


def skips_rows(meta: dict[str, Any], skips_now: bool) -> bool:
    """Whether bad rows are skipped in the run of ``meta``'s checkpoint, or now
    (``skips_now``): which rows make an epoch's batches then depends on the rows' checks."""
    saved = ((meta.get("config") or {}).get("data") or {}).get("on_bad_input")
    return saved == "skip" or skips_now


def redeals_skipping(meta: dict[str, Any], world: int, skips_now: bool) -> bool:
    """Whether resuming ``meta``'s checkpoint on ``world`` ranks re-deals an epoch whose rows
    are (or were) skipped where bad: a rank's stream may then hold fewer batches than its
    plan, which the re-deal cannot know, so that rows are lost or a rank finds none."""
    mid_epoch = bool((meta.get("position") or {}).get("batches"))
    return meta.get("world_size") != world and mid_epoch and skips_rows(meta, skips_now)

"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout under ``<checkpoint dir>`` (a local or shared path, or an fsspec URL):

    step-00000040/           a committed checkpoint: DCP shards + .metadata + meta.json
    .partial-step-00000060/  being written (or left by a crash or a failed save): never
                             loaded, removed
    .replaced-step-00000040/ a committed step-00000040 while that step is saved again: it
                             stays whole until the new one is committed (put back if not)

Every rank writes its shards of the model (sharded tables, dense layers) and of the optimizer
state (fused TBE state included) into the partial directory, hashing each file as it writes
it. Then rank 0 renames the directory to ``step-N`` and writes ``meta.json`` into it (step,
epoch, reader position, bad-input counts, config, plan, and the size and xxh3-128 digest of
every file): a checkpoint counts as committed only once its ``meta.json`` exists, so a crash
or a failed write at any point leaves the previous checkpoint as the latest (on object
stores, where a rename is a copy, too).

:class:`CheckpointSaver` stages the state in memory and writes it in a background thread on a
process group of its own, so training goes on during the write; one save is in flight at most.

Loading verifies every file it reads against ``meta.json`` and never runs code from the
checkpoint (:mod:`dist_train.checkpoint_files`).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from dist_train import checkpoint_files, storage
from dist_train.checkpoint_files import (
    CheckpointError,
    FileDigests,
    SafeDecodePlanner,
    SafeLoadPlanner,
    digest_of,
)
from dist_train.config import JobConfig
from dist_train.logs import LOG
from dist_train.sharded_moments import Wrapped, placeable, shard_like_weights, unwrap
from dist_train.storage import Location, location
from planners.json_keys import loads_unique_keys

PREFIX = "step-"
STEP_DIGITS = 8  # a save's folder: step-00000048
PARTIAL_PREFIX = ".partial-step-"
REPLACED_PREFIX = ".replaced-step-"  # a committed step-N set aside while N is saved again
META = "meta.json"
META_DIGEST = "meta_xxh3_128"  # of meta.json's other keys, as canonical JSON
# far above any meta.json: it grows by about 44 bytes a 16 MiB chunk of the shards it lists
# (64 MiB at 23 TiB of shards; this, about 370 TiB) and 6.7 KB a rank's RNG state
META_MAX_BYTES = 1 << 30

__all__ = ["CheckpointError", "CheckpointOfAnotherJob"]


class CheckpointOfAnotherJob(CheckpointError):
    """A checkpoint that does not fit this job's config: another model, or its values
    hashed into other rows (most often the wrong --config)."""


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


def raise_a_wrapped_stop(err: BaseException) -> None:
    """Raise the Ctrl-C or SIGTERM (a KeyboardInterrupt; :class:`~dist_train.stopping.Terminated`
    stays one) that DCP caught inside a read and wrapped in a CheckpointException: a stop,
    which was reported as an unreadable checkpoint (exit 1, where a stop exits 130 or 143)."""
    if isinstance(err, CheckpointException):
        for failure, _ in err.failures.values():
            if isinstance(failure, KeyboardInterrupt):
                raise failure from None


def reason(err: BaseException) -> str:
    """The last line of a DCP error (a CheckpointException carries every rank's traceback),
    or what the safe unpickler refused in it."""
    refused = checkpoint_files.safe_load_refusal(err)
    if refused:
        return refused
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def checkpoint_root(cfg: JobConfig) -> Location:
    return location(cfg.checkpoint.dir) if cfg.checkpoint.dir else cfg.run_dir / "checkpoints"


def step_of(path: Location) -> int:
    """The step a ``step-N`` directory holds (-1 for another name)."""
    digits = path.name[len(PREFIX) :] if path.name.startswith(PREFIX) else ""
    return int(digits) if _digits(digits) else -1


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` takes ``²`` and ``٣`` too."""
    return text.isascii() and text.isdigit()


def committed(root: Location) -> list[Location]:
    """Committed checkpoints under ``root`` (named as a save names them, with their
    ``meta.json``), oldest step first. A user's ``step-1/`` holding a copy of one is not:
    retention deleted it."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_a_saves_name(p) and (p / META).is_file()]
    return sorted(found, key=step_of)


def remove_partials(root: Location) -> list[Location]:
    """Delete checkpoints a crash left half-written; returns what was removed. A committed
    checkpoint that a crash left set aside while its step was saved again is put back."""
    if not root.is_dir():
        return []
    removed: list[Location] = []

    def ours(p: Location, prefix: str) -> bool:  # only names a save makes: step-<digits>
        return p.name.startswith(prefix) and _digits(p.name[len(prefix) :])

    def a_save(p: Location) -> bool:  # a save's step-%08d, uncommitted, holding a save's files
        return is_a_saves_name(p) and not (p / META).is_file() and _holds_only_a_save(p)

    for aside in [p for p in root.iterdir() if ours(p, REPLACED_PREFIX)]:
        final = root / (PREFIX + aside.name[len(REPLACED_PREFIX) :])
        if (final / META).is_file():  # the new one was committed: the old one goes
            storage.rmtree(aside)
            if not aside.exists():  # a read-only folder keeps it
                removed.append(aside)
        else:
            storage.rmtree(final)
            storage.move(aside, final)
    partial = [p for p in root.iterdir() if ours(p, PARTIAL_PREFIX) or a_save(p)]
    for p in partial:
        storage.rmtree(p)
    return removed + [p for p in partial if not p.exists()]  # a read-only folder keeps them


def check_writable(root: Location) -> None:
    """CheckpointError unless a file can be made and removed in ``root`` (made if missing):
    a folder the job cannot write would otherwise fail its first save, by default after
    all of training."""
    probe = root / f".write-check-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        storage.rmtree(probe)
    except Exception as err:  # noqa: BLE001 - storage backends raise many types
        why = err.strerror if isinstance(err, OSError) and err.strerror else reason(err)
        raise CheckpointError(
            f"{root}: cannot write checkpoints there ({why}); name a writable checkpoint.dir "
            "(or output_dir), or set checkpoint.save_at_end=false and no checkpoint.every_steps "
            "to train without saving"
        ) from None


def _holds_only_a_save(folder: Location) -> bool:
    """Whether ``folder`` holds only what a save writes before its commit (DCP's
    ``.metadata`` and ``*.distcp`` shards, the commit's temporary ``meta.json.tmp``; and
    what filesystems leave beside files, NFS's ``.nfs*`` and macOS's ``.DS_Store``): a
    ``step-N`` folder of the user's, in a ``checkpoint.dir`` that holds other things too,
    is theirs to keep."""
    if not folder.is_dir():
        return False
    return all(_a_saves_file(p.name) for p in folder.iterdir())


def _a_saves_file(name: str) -> bool:
    return (
        name in (".metadata", f"{META}.tmp", ".DS_Store")
        or name.endswith(".distcp")
        or name.startswith(".nfs")
    )


def is_a_saves_name(p: Location) -> bool:
    """Whether ``p`` is named as a save names its folder: ``step-%08d`` exactly."""
    step = step_of(p)
    return step >= 0 and p.name == f"{PREFIX}{step:0{STEP_DIGITS}d}"


def foreign_steps(root: Location) -> list[Location]:
    """Entries of ``root`` named as a save names its folders (``step-%08d``) that no save
    wrote: not committed (no ``meta.json``), and holding what a save does not write (what
    :func:`remove_partials` leaves). A save of that step would replace it."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if is_a_saves_name(p) and _foreign(p))


def _foreign(p: Location) -> bool:
    """Whether ``p`` is there and no save's: not committed, holding what no save writes."""
    return p.exists() and not (p / META).is_file() and not _holds_only_a_save(p)


def refuse_foreign(final: Location) -> None:
    """A CheckpointError if ``final``, the folder a save of its step commits to, is there
    and no save's (see :func:`foreign_steps`)."""
    if _foreign(final):
        what = "a file" if not final.is_dir() else "a folder of files no save writes"
        raise CheckpointError(
            f"{final}: {what}, named as the checkpoint of step {step_of(final)}: a save of "
            f"that step would replace it, and is refused (it is left as it was). Move it out "
            f"of {final.parent}, or give the run a checkpoint.dir of its own"
        )


def resolve(cfg: JobConfig, resume: str) -> Location | None:
    """``latest`` -> the newest committed checkpoint (None if there is none); a path -> it."""
    if resume == "latest":
        found = committed(checkpoint_root(cfg))
        return found[-1] if found else None
    path = location(resume)
    if not (path / META).exists():  # one that is there but no file: read_meta names it
        raise CheckpointError(not_committed(path))
    return path


def not_committed(path: Location) -> str:
    """Why ``path``, which has no ``meta.json``, is no checkpoint, and where they are."""
    if not path.exists():
        return f"{path}: no such checkpoint folder"
    if not path.is_dir():
        return f"{path}: a file, not a checkpoint folder (a step-N folder holding {META})"
    return (
        f"{path}: a folder without {META}: not a committed checkpoint (a save interrupted "
        f"leaves one; a run's checkpoints/ folder holds them, one step-N folder each)"
    )


def read_meta(path: Location) -> dict[str, Any]:
    """``meta.json`` of a committed checkpoint, checked against its own digest."""
    meta_path = path / META
    if not meta_path.exists():
        raise CheckpointError(not_committed(path))
    try:
        with checkpoint_files.open_file(meta_path) as f:  # a link to /dev/zero: refused
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
        if want != _meta_digest(meta):
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
        if not checkpoint_files.is_plain_file_name(name):  # read from outside the folder
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
            f"({PREFIX}{saved:0{STEP_DIGITS}d}), or move it out of the checkpoint folder"
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
    if rng is not None and not (isinstance(rng, list) and all(map(_is_rng_state, rng))):
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


def _is_rng_state(state: Any) -> bool:
    """Base64 of a CPU generator's state, as :func:`_rng_state` writes it: of its length,
    and one a generator takes (its Mersenne Twister's state checked by torch)."""
    try:
        raw = base64.b64decode(state, validate=True) if isinstance(state, str) else b""
        if len(raw) != len(_rng_state_bytes()):
            return False
        torch.Generator().set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        return True
    except (ValueError, RuntimeError):
        return False


def _rng_state_bytes() -> bytes:
    return torch.get_rng_state().numpy().tobytes()


def _meta_digest(meta: dict[str, Any]) -> str:
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

    Any plan and world size can load a checkpoint (:func:`load` reshards it). Mid-epoch, the
    saved epoch plan re-deals the batches not yet trained to the new ranks; a checkpoint
    from before plans were saved needs the world size it was saved with.
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


def verify(path: Location) -> str:
    """Check a committed checkpoint without loading it into a model: every file's size and
    digest, no file missing or unlisted, the metadata and every item decoded as a load decodes
    it, without running code. A one-line description; CheckpointError naming the file if not."""
    meta = read_meta(path)
    digests = meta.get("files")
    if digests is None:
        raise CheckpointError(
            f"{path / META}: lists no file digests (an older dist_train saved it): nothing to "
            "verify against"
        )
    present = {p.name for p in path.iterdir()} - {META}
    for name in sorted(set(digests) | present):
        if name not in digests:
            raise CheckpointError(f"{path / name}: not among the files meta.json lists")
        if name not in present:
            raise CheckpointError(f"{path / name}: missing (meta.json lists it)")
        got = checkpoint_files.file_digest(path / name, int(digests[name].get("bytes", 0)))
        checkpoint_files.check_file(str(path / name), digests[name], got["bytes"], got["xxh3_128"])
    reader = checkpoint_files.reader(path, digests)
    entries = reader.read_metadata().state_dict_metadata
    try:  # every item decoded as a load decodes it (weights_only), none kept
        _load_state_dict({}, storage_reader=reader, planner=SafeDecodePlanner(), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001
        raise_a_wrapped_stop(err)
        raise CheckpointError(f"{path}: unreadable checkpoint items ({reason(err)})") from None
    size = sum(int(d.get("bytes", 0)) for d in digests.values())
    return (
        f"checkpoint step {meta['position'].get('step')}: {len(digests)} files, "
        f"{size / 1e6:,.1f} MB, digests match, {len(entries)} entries"
    )


class Trainer(Protocol):
    """What a checkpoint saves and loads: a model and its optimizer, each with a state dict
    (``dist_train.train.trainer.Trainer``)."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def optimizer(self) -> Any: ...


# A storage fault drill: (rank, step, directory) -> a wrapper of DCP's filesystem, or None.
StorageDrill = Callable[[int, int, Location], Callable[[Any], Any] | None]


def _state(trainer: Trainer) -> tuple[dict[str, Any], Wrapped]:
    """The model's and optimizer's state dicts, a sharded table's torch optimizer state
    placed as its weight (:mod:`dist_train.sharded_moments`); what was so placed."""
    state = {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}
    return state, shard_like_weights(state)


def _rng_state() -> str:
    return base64.b64encode(_rng_state_bytes()).decode()


def agree(problem: str | None, group: dist.ProcessGroup | None = None, cause: bool = False) -> None:
    """Raise CheckpointError on every rank if any rank has a ``problem`` (so no rank waits in
    a collective the others left). Where some rank's problem is the ``cause`` (its own
    storage's error), the others' (what it did to a shared write) are left out."""
    problems: list[tuple[str | None, bool]] = [(None, False)] * dist.get_world_size(group)
    dist.all_gather_object(problems, (problem, cause), group=group)
    causes = [p for p, c in problems if p is not None and c]
    found = list(dict.fromkeys(causes or [p for p, _ in problems if p is not None]))
    if found:
        raise CheckpointError("; ".join(found))


def _attempt(action: Callable[[], None]) -> str | None:
    try:
        action()
    except Exception as err:  # noqa: BLE001 - storage backends raise many types
        return f"{type(err).__name__}: {err}"
    return None


def non_finite(state: Any, key: str = "") -> str | None:
    """The key of the first floating-point tensor in ``state`` holding NaN or inf (of a
    sharded tensor, this rank's shards), or None."""
    if isinstance(state, dict):
        for k, v in state.items():
            found = non_finite(v, f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    if isinstance(state, list | tuple):
        return next((f for i, v in enumerate(state) if (f := non_finite(v, f"{key}.{i}"))), None)
    if not isinstance(state, torch.Tensor):
        return None
    if hasattr(state, "local_shards"):  # ShardedTensor
        parts = [shard.tensor for shard in state.local_shards()]
    elif hasattr(state, "to_local"):  # DTensor: its own ops would be collectives
        parts = [state.to_local()]
    else:
        parts = [state]
    for t in parts:
        if (
            t.is_floating_point()
            and t.numel()
            and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())
        ):
            return key  # NaN propagates into both; one pass, nothing the tensor's size allocated
    return None


@dataclass
class _Save:
    """One save: what it writes, and (once done) where it landed or why it failed.

    A held save writes its shards, then waits for :meth:`CheckpointSaver.release` before its
    commit: the training loop lets it commit once the next step's loss, computed from the
    saved weights, is finite."""

    state: dict[str, Any]
    position: TrainPosition
    rng: str
    held: bool = False
    path: Location | None = None
    error: CheckpointError | None = None
    thread: threading.Thread | None = None
    written: list[Any] | None = None  # every rank's (file digests, RNG state), once written
    verdict: str | None = None  # why a held save must not commit (None: it may)
    released: threading.Event = field(default_factory=threading.Event)


class CheckpointSaver:
    """Writes checkpoints from every rank and commits them.

    ``save`` stages the state (a copy in memory; the only time training waits) and returns;
    the write, the digests, the commit and ``on_commit(path, position)`` run in a background
    thread on a gloo process group of their own. A later ``save`` or :meth:`wait` waits for
    the one in flight and raises its error. ``background=False`` does all of it inline.
    ``before_commit`` runs on every rank once its shards are written, and ``drill`` may wrap
    a save's storage (fault drills, :mod:`dist_train.train.faults`).

    No save commits a state holding NaN or inf. A save made with ``hold=True`` commits only
    once :meth:`release` lets it (inline, without a background thread).
    """

    def __init__(
        self,
        trainer: Trainer,
        root: Location,
        num_to_keep: int,
        extra: dict[str, Any] | None = None,
        on_commit: Callable[[Location, TrainPosition], None] | None = None,
        before_commit: Callable[[int], None] | None = None,
        background: bool = True,
        drill: StorageDrill | None = None,
    ) -> None:
        self.trainer, self.root, self.num_to_keep = trainer, root, num_to_keep
        self.extra = extra or {}
        self.on_commit, self.before_commit, self.drill = on_commit, before_commit, drill
        # Saves in the background run collectives while training runs its own: separate
        # groups keep the two sequences apart.
        self.group = dist.new_group(backend="gloo") if background else None
        self.background = background
        self._staging: dict[str, Any] | None = None
        self._pending: _Save | None = None
        self.last_step = -1  # the step of the newest save started
        self.last_path: Location | None = None  # the newest save committed

    def save(self, position: TrainPosition, hold: bool = False) -> None:
        """Checkpoint ``position`` (the state as it is now); with ``hold``, its commit waits
        for :meth:`release`."""
        self.wait()
        state, _ = _state(self.trainer)
        if self.background:
            if self._staging is None:  # reused: the layout is the same at every save
                self._staging = _create_cpu_state_dict(state)
            state = _copy_state_dict(state, self._staging)
        job = _Save(state, position, _rng_state(), held=hold)
        self.last_step = position.step
        self._pending = job
        if self.background:
            job.thread = threading.Thread(
                target=self._run, args=(job,), name=f"checkpoint-{position.step}", daemon=True
            )
            job.thread.start()
        elif not hold:
            self._run(job)
            self.wait()
        else:
            self._stage(job, self._write)  # the commit waits for release()
            if job.error is not None:
                self._pending = None
                raise job.error

    def resumed(self, path: Location, step: int) -> None:
        """The run resumed from ``path`` at ``step``. Where that is the checkpoint a save of
        ``step`` would write, it is this run's newest save: a run resumed at its end trains
        no step, and its final save would write the same state again."""
        if _same_location(path, self.root / f"{PREFIX}{step:08d}"):
            self.last_step, self.last_path = step, path

    def release(self, problem: str | None = None) -> None:
        """Let the held save in flight commit, or, given a ``problem``, fail with it (its
        files removed); nothing if no save is held."""
        job = self._pending
        if job is None or not job.held or job.released.is_set():
            return
        job.verdict = problem
        job.released.set()
        if not self.background:
            self._stage(job, self._commit)
            self.wait()

    def wait(self) -> Location | None:
        """Wait for the save in flight; its committed path (None if none was in flight). A
        held save must be released first."""
        job = self._pending
        if job is None:
            return None
        if job.held and not job.released.is_set():  # a wait for it would never end
            raise RuntimeError(f"checkpoint step {job.position.step} waits for release()")
        self._pending = None
        if job.thread is not None:
            job.thread.join()
        if job.error is not None:
            raise job.error
        return job.path

    def _run(self, job: _Save) -> None:
        """The whole save: write, wait for the release of a held one, commit."""
        self._stage(job, self._write)
        if job.error is None and job.held:
            job.released.wait()
        self._stage(job, self._commit)

    def _prune(self) -> None:
        """Delete the committed checkpoints past ``num_to_keep``, each uncommitted first: a
        stop mid-delete leaves a save's files, which the next start removes, not a committed
        checkpoint with files missing. One that fails to go is said and left: the save
        before it is committed."""
        for old in committed(self.root)[: -self.num_to_keep]:
            if isinstance(old, Path) and old.is_symlink():
                # a user's link to a checkpoint elsewhere (to resume from it): not this
                # run's to delete; the uncommit below went through it, to the target's meta
                continue
            try:
                storage.rmtree(old / META)
                storage.rmtree(old)
                why = "some of its files would not go" if old.exists() else None
            except Exception as err:  # noqa: BLE001 - storage backends raise many types
                why = str(err)
            if why:  # a local delete skips what it cannot remove: told by what is left
                LOG.warning(f"{old}: not deleted ({why}); the newer checkpoints are whole")

    def _stage(self, job: _Save, stage: Callable[[_Save], None]) -> None:
        """Run one stage of ``job`` (unless an earlier one failed), its error kept in
        ``job.error`` on every rank, its files removed on failure."""
        if job.error is not None:
            return
        step = job.position.step
        try:
            stage(job)
        except CheckpointError as err:
            job.error = CheckpointError(
                f"checkpoint step {step} was not saved ({err}); the checkpoints already "
                f"committed under {self.root} are intact"
            )
        except BaseException as err:  # noqa: BLE001 - DCP's CheckpointException included
            job.error = CheckpointError(
                f"checkpoint step {step} was not saved ({reason(err)}); the checkpoints "
                f"already committed under {self.root} are intact"
            )
        if job.error is not None and dist.get_rank(self.group) == 0:
            storage.rmtree(self.root / f"{PARTIAL_PREFIX}{step:08d}")  # best effort
        if job.error is None and job.path is not None:
            self.last_path = job.path
            if self.on_commit is not None:
                self.on_commit(job.path, job.position)

    def _write(self, job: _Save) -> None:
        """Every rank's shards into the step's partial directory; their digests gathered."""
        group, step = self.group, job.position.step
        rank = dist.get_rank(group)
        partial = self.root / f"{PARTIAL_PREFIX}{step:08d}"
        # A diverged state saved would be resumed into the same divergence.
        bad = non_finite(job.state)
        agree(
            f"rank {rank}: {bad} holds NaN or inf values: training diverged" if bad else None, group
        )

        def prepare() -> None:
            storage.rmtree(partial)
            partial.mkdir(parents=True, exist_ok=True)

        agree(_attempt(prepare) if rank == 0 else None, group)
        wrap = self.drill(dist.get_rank(), step, partial) if self.drill else None
        writer, log = checkpoint_files.writer(partial, wrap)
        problem: str | None = None
        try:
            dcp.save(job.state, storage_writer=writer, process_group=group)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
            # DCP raises on every rank; the rank whose storage failed knows the OS error,
            # the others only what it did to theirs (torch's "unexpected pos", say).
            problem = f"rank {rank}: {log.error}" if log.error else reason(err)
        agree(problem, group, cause=log.error is not None)
        if self.before_commit is not None:
            self.before_commit(step)
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, (log.digests, job.rng), group=group)
        job.written = gathered

    def _commit(self, job: _Save) -> None:
        """Every rank agrees to commit (a held save: its release), then rank 0 commits."""
        group, step = self.group, job.position.step
        rank = dist.get_rank(group)
        agree(f"rank {rank}: {job.verdict}" if job.verdict else None, group)
        written = job.written
        assert written is not None
        final = self.root / f"{PREFIX}{step:08d}"
        partial = self.root / f"{PARTIAL_PREFIX}{step:08d}"

        def commit() -> None:
            files: FileDigests = {}
            for rank_digests, _ in written:
                files.update(rank_digests)
            meta = {
                "position": asdict(job.position),
                "world_size": len(written),
                "torch_rng_states": [rng for _, rng in written],  # per rank
                **self.extra,
                "files": dict(sorted(files.items())),
            }
            meta[META_DIGEST] = _meta_digest(meta)
            # A step saved again (a rerun reaching it): its committed checkpoint stays whole
            # until the new one is committed.
            aside = self.root / f"{REPLACED_PREFIX}{step:08d}"
            refuse_foreign(final)  # checked at start-up too; a user may add one meanwhile
            storage.rmtree(aside)
            if final.exists():
                storage.move(final, aside)
            try:
                storage.move(partial, final)
                storage.write_atomically(final / META, json.dumps(meta, indent=2))  # the commit
            except BaseException:
                storage.rmtree(final)
                if aside.exists():
                    storage.move(aside, final)
                raise
            storage.rmtree(aside)
            self._prune()

        agree(_attempt(commit) if rank == 0 else None, group)
        job.path = final


def _same_location(a: Location, b: Location) -> bool:
    """The same path as written (normalized, not resolved: every rank must decide alike,
    and a symlink may resolve differently on another node)."""
    if isinstance(a, Path) and isinstance(b, Path):
        return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))
    return a == b


def load(trainer: Trainer, path: Location, resuming: bool = True) -> TrainPosition:
    """Restore model and optimizer state from ``path`` into ``trainer``; the saved position
    (checked to resume on this world size where ``resuming``; an evaluation only reads it).

    Every file read is checked against ``meta.json``'s digests. The checkpoint may come from
    another plan or world size. DCP maps every tensor by its global offsets. Row-wise
    Adagrad's accumulators are the exception: TorchRec keeps one per row per column block (a
    ``[rows * blocks]`` tensor under column-wise sharding, ``[rows]`` otherwise), so
    :func:`_reshard_row_states` converts them between block layouts, and
    :func:`_convert_row_states` between replicated and sharded tables.
    """
    meta = read_meta(path)
    if resuming:
        position = check_compatible(meta, path, dist.get_world_size())
    else:
        position = TrainPosition(**meta["position"])
    if resuming and redeals_skipping(meta, dist.get_world_size(), False) and dist.get_rank() == 0:
        # an elastic group back at another size (the driver refuses it for a resume asked
        # for): training goes on, said
        LOG.warning(
            f"{path}: resumed mid-epoch on {dist.get_world_size()} ranks, saved by "
            f"{meta.get('world_size')}, where bad rows are skipped: this epoch's re-dealt "
            "batches may miss some rows (each is still trained at most once)"
        )
    digests = file_digests(meta, path) if dist.get_rank() == 0 else meta.get("files")
    state, wrapped = _state(trainer)
    try:
        reader = checkpoint_files.reader(path, digests)
        saved = reader.read_metadata().state_dict_metadata
        # Ranks convert different tables (each holds its own optimizer state), so the
        # conversion runs without collectives; they agree on its outcome before DCP's load.
        problem: str | None = None
        try:
            _check_model_shapes(state["model"], saved, path)
            wrapped += _add_lazy_optimizer_state(state, saved, trainer)
            converted = _reshard_row_states(state, saved, path, digests)
            converted.update(_convert_row_states(state, saved, path, digests, position.step))
        except CheckpointError as err:
            problem, converted = str(err), {}
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP's, a BaseException
            # every rank must reach agree(): the others would wait there for this one
            problem, converted = f"{path}: cannot load checkpoint shards ({reason(err)})", {}
        for param, _ in converted:  # an emptied entry would look like a missing key to DCP
            if not state["optim"]["state"].get(param, True):
                del state["optim"]["state"][param]
        agree(problem)
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner())
        for (param, key), tensor in converted.items():
            state["optim"]["state"].setdefault(param, {})[key] = tensor
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
        # (CheckpointException, which wraps a rank's failure, is a BaseException; DCP's
        # collective load hands every rank the same one, so all stop alike)
        raise_a_wrapped_stop(err)
        raise CheckpointError(f"{path}: cannot load checkpoint shards ({reason(err)})") from None
    unwrap(state, wrapped)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optim"])
    rng = meta.get("torch_rng_states")
    if rng and len(rng) == dist.get_world_size():  # another world size: ranks start afresh
        state_bytes = bytearray(base64.b64decode(rng[dist.get_rank()]))
        torch.set_rng_state(torch.frombuffer(state_bytes, dtype=torch.uint8))
    return position


def _add_lazy_optimizer_state(
    state: dict[str, Any], saved: dict[str, Any], trainer: Trainer
) -> Wrapped:
    """Slots for torch Adam's moments and step where the checkpoint holds them and the fresh
    optimizer has not made them yet: torch's Adam makes them at its first step, and DCP
    loads only the keys its target holds, so a resume started Adam afresh beside the
    restored weights. Only an Adam whose state for the parameter is empty, only the three
    keys Adam makes, each moment of the whole weight's shape (a table's, under TorchRec's
    dense kernel, given DCP placed as the weight: :mod:`dist_train.sharded_moments`; a
    checkpoint of more than one rank made before that holds one rank's and starts afresh).
    What was placed as a weight, for :func:`~dist_train.sharded_moments.unwrap`."""
    params: dict[str, Any] = getattr(trainer.optimizer, "params", {})
    names = sorted(params, key=len, reverse=True)  # the longest name a key starts with
    prefix = "optim.state."
    held: dict[str, dict[str, Any]] = {}
    for fqn, md in saved.items():
        if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            rest = fqn[len(prefix) :]
            name = next((n for n in names if rest.startswith(n + ".")), None)
            if name is not None:
                held.setdefault(name, {})[rest[len(name) + 1 :]] = md
    added: list[str] = []
    for name, keys in held.items():
        param = params[name]
        owner = _owner(trainer.optimizer, param)
        weight = state["model"].get(name, param)
        whole = tuple(weight.size())
        if (
            not isinstance(owner, torch.optim.Adam)
            or owner.state.get(param)
            or set(keys) != {"step", "exp_avg", "exp_avg_sq"}
            or hasattr(param, "local_shards")
            or not (tuple(param.size()) == whole or placeable(param, weight))
        ):
            continue
        if any(tuple(keys[k].size) != whole for k in ("exp_avg", "exp_avg_sq")):
            LOG.warning(
                f"{name}: the checkpoint's Adam moments are of another shape than the table "
                "(one rank's, as dist_train saved them on CPU ranks before 2026-12-05): "
                "they start afresh"
            )
            continue
        group = next(g for g in owner.param_groups if any(p is param for p in g["params"]))
        on_device = group.get("fused") or group.get("capturable")  # where torch keeps step
        slots = {
            "step": torch.zeros((), dtype=keys["step"].properties.dtype).to(
                param.device if on_device else "cpu"
            ),
            "exp_avg": torch.zeros_like(param, dtype=keys["exp_avg"].properties.dtype),
            "exp_avg_sq": torch.zeros_like(param, dtype=keys["exp_avg_sq"].properties.dtype),
        }
        # the optimizer's own state holds the same tensors: TorchRec's load_state_dict
        # copies into state the optimizer already has, and refuses any it has not
        owner.state[param].update(slots)
        state["optim"]["state"].setdefault(name, {}).update(slots)
        added.append(name)
    return shard_like_weights(state, added)


def _owner(optimizer: Any, param: torch.Tensor) -> Any:
    """The (leaf) optimizer that updates ``param``: TorchRec's wrappers hold torch's."""
    for _, inner in getattr(optimizer, "optimizers", []):
        if any(p is param for p in inner.params.values()):
            return _owner(inner, param)
    return getattr(optimizer, "_optimizer", optimizer)


def check_model_shapes(
    path: Location, meta: dict[str, Any], model: dict[str, Any], settings: str = ""
) -> None:
    """:func:`_check_model_shapes` on the driver, before any worker starts: ``model`` is a
    state dict of whole tensors (a meta-device model's serves), ``meta`` the checkpoint's
    ``meta.json``, ``settings`` what the job's model settings changed since (said in the
    error). The ranks check again against their sharded model as they load."""
    digests = file_digests(meta, path)
    try:
        saved = checkpoint_files.reader(path, digests).read_metadata()
    except FileNotFoundError:
        if digests is not None and checkpoint_files.METADATA in digests:
            # found here, not in the ranks once they have started
            raise CheckpointError(
                f"{path}: no .metadata, which its meta.json lists: not a checkpoint's folder "
                "(an export's, or one a copy left out?)"
            ) from None
        return  # the load names a missing file
    _check_model_shapes(model, saved.state_dict_metadata, path, settings)


def _check_model_shapes(
    model: dict[str, Any], saved: dict[str, Any], path: Location, settings: str = ""
) -> None:
    """CheckpointError naming the model tensors the checkpoint lacks, those it holds that
    the model does not (a model of fewer layers: loading would drop trained ones), or the
    first whose whole shape (any plan's shards together) differs from the saved one: the
    checkpoint is of another model, which no resharding turns into this one. (DCP's own
    error came from one rank, mid-load: "Missing key in checkpoint state_dict".)"""
    tensors = {k: t for k, t in model.items() if isinstance(t, torch.Tensor)}
    since = f"it was saved with {settings}" if settings else ""
    changed = f"; {since}" if since else ""
    missing = [k for k in tensors if f"model.{k}" not in saved]
    instead = sorted(  # what the checkpoint holds that the model does not
        k.removeprefix("model.")
        for k in saved
        if k.startswith("model.") and k.removeprefix("model.") not in model
    )
    if missing:
        raise CheckpointOfAnotherJob(
            f"{path}: this job's model holds {_some(missing)}, which the checkpoint does "
            "not" + (f" (it holds {_some(instead)} instead)" if instead else "") + ": the "
            "checkpoint is of another model (another model.kind or layers; or a DLRM "
            "without dense columns saved by a dist_train before 116a848, whose bottom MLP "
            f"never trained){changed}. Resume it with the config and dist_train that saved "
            "it, or start a new run"
        )
    for key, tensor in tensors.items():
        size = getattr(saved.get(f"model.{key}"), "size", None)
        if size is None:
            continue
        now, then = tuple(tensor.size()), tuple(size)
        if now != then:
            raise CheckpointOfAnotherJob(
                f"{path}: {key} was saved as {' x '.join(map(str, then))}, but this job's "
                f"model holds {' x '.join(map(str, now))}: the checkpoint is of another "
                "model (another config's table rows, dims or layers; or, for hashing_trick "
                f"tables, a dist_train before fc4d3c4, which rounded their rows down){changed}. "
                "Resume it with the config and dist_train that saved it, or start a new run"
            )
    if instead:
        raise CheckpointOfAnotherJob(
            f"{path}: the checkpoint holds {_some(instead)}, which this job's model does not: "
            "it is of a model of more layers, whose trained weights this one would drop"
            f"{f' ({since})' if since else ''}. Resume it with the config that saved "
            "it, or start a new run"
        )


def _some(keys: list[str], shown: int = 3) -> str:
    """``keys``, the first ``shown`` of them and how many more."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _load_whole(
    fqn: str, md: Any, dtype: torch.dtype, path: Location, digests: FileDigests | None
) -> torch.Tensor:
    """One saved item (its metadata ``md``) in full, read by this rank alone."""
    whole = torch.empty(tuple(md.size), dtype=dtype)
    dcp.load(
        {fqn: whole},
        storage_reader=checkpoint_files.reader(path, digests),
        planner=SafeLoadPlanner(),
        no_dist=True,
    )
    return whole


def _column_blocks(chunks: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[int]:
    """Widths of a table's column blocks, left to right, from its shards' (offsets, sizes)."""
    return [width for _, width in sorted({(o[1], s[1]) for o, s in chunks})]


def _saved_blocks(saved: dict[str, Any], param: str) -> list[int] | None:
    """Column block widths of ``param``'s saved weight (None: not in the checkpoint)."""
    weight = saved.get(f"model.{param}")
    if weight is None:
        return None
    return _column_blocks([(tuple(c.offsets), tuple(c.sizes)) for c in weight.chunks])


def _saved_per_row(
    fqn: str,
    md: Any,
    blocks: list[int],
    rows: int,
    dtype: torch.dtype,
    path: Location,
    digests: FileDigests | None,
) -> torch.Tensor:
    """A saved per-row-per-block state as one value per row: the blocks' values averaged,
    weighted by width (exactly the row-wise Adagrad accumulator of the whole row)."""
    if md.size[0] != rows * len(blocks):
        raise CheckpointError(
            f"{path}: {fqn} has {md.size[0]} values; expected one per row per column "
            f"block ({rows} rows x {len(blocks)} blocks)"
        )
    whole = _load_whole(fqn, md, dtype, path, digests)
    widths = torch.tensor(blocks, dtype=torch.float64)
    per_row = (whole.view(len(blocks), rows).double() * widths[:, None]).sum(0)
    return (per_row / widths.sum()).to(dtype)


def _fill_blocks(tensor: Any, per_row: torch.Tensor, rows: int) -> None:
    """Copy one value per row into every column block of a sharded per-row state."""
    for shard in tensor.local_shards():
        (offset,), (size,) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        row = offset % rows  # a shard never spans two column blocks
        shard.tensor.copy_(per_row[row : row + size])


def _reshard_row_states(
    state: dict[str, Any], saved: dict[str, Any], path: Location, digests: FileDigests | None
) -> dict[tuple[str, str], Any]:
    """Load the per-row optimizer states whose block layout differs from the saved one.

    Such entries are removed from ``state`` (DCP cannot map them) and returned, filled:
    one value per row (:func:`_saved_per_row`), copied into every target block.
    """
    out: dict[tuple[str, str], Any] = {}
    for param, entries in list(state["optim"]["state"].items()):
        weight = state["model"].get(param)
        if weight is None or not hasattr(weight, "metadata") or weight.dim() != 2:
            continue
        rows = weight.shape[0]
        target_blocks = _column_blocks(
            [
                (tuple(m.shard_offsets), tuple(m.shard_sizes))
                for m in weight.metadata().shards_metadata
            ]
        )
        saved_blocks = _saved_blocks(saved, param)
        if saved_blocks is None:
            continue  # DCP names the missing key when it loads
        for key, tensor in list(entries.items()):
            fqn = f"optim.state.{param}.{key}"
            md = saved.get(fqn)
            if md is None or not hasattr(tensor, "local_shards") or tensor.dim() != 1:
                continue
            if tuple(md.size) == tuple(tensor.shape) and saved_blocks == target_blocks:
                continue  # same layout: DCP reshards it by offsets
            if tensor.shape[0] != rows * len(target_blocks):
                raise CheckpointError(
                    f"{path}: {fqn} has {md.size[0]} values; expected one per row per column "
                    f"block ({rows} rows x {len(saved_blocks)} blocks)"
                )
            per_row = _saved_per_row(fqn, md, saved_blocks, rows, tensor.dtype, path, digests)
            _fill_blocks(tensor, per_row, rows)
            del entries[key]
            out[(param, key)] = tensor
    return out


def _convert_row_states(
    state: dict[str, Any],
    saved: dict[str, Any],
    path: Location,
    digests: FileDigests | None,
    step: int,
) -> dict[tuple[str, str], Any]:
    """Row-wise Adagrad accumulators of a table that moved between data_parallel (TorchRec's
    dense ``RowWiseAdagrad``: ``sum`` [rows, 1] and ``step``) and a sharded type (FBGEMM's
    fused ``<table>.momentum1``: one value per row per column block).

    Such entries are removed from ``state`` and returned, filled: one value per row
    (:func:`_saved_per_row`), copied into every target block.
    """
    out: dict[tuple[str, str], Any] = {}
    for param, entries in list(state["optim"]["state"].items()):
        prefix = f"optim.state.{param}."
        saved_keys = {k[len(prefix) :] for k in saved if k.startswith(prefix)}
        fused_saved = sorted(k for k in saved_keys if k.endswith(".momentum1"))
        if "sum" in entries and "sum" not in saved_keys and fused_saved:
            target = entries.pop("sum")
            entries.pop("step", None)
            rows = target.shape[0]
            fqn = prefix + fused_saved[0]
            blocks = _saved_blocks(saved, param) or [1]
            per_row = _saved_per_row(fqn, saved[fqn], blocks, rows, target.dtype, path, digests)
            target.copy_(per_row[:, None])
            out[(param, "sum")] = target
            out[(param, "step")] = torch.tensor(float(step))
            continue
        for key, tensor in list(entries.items()):
            if not key.endswith(".momentum1") or key in saved_keys or "sum" not in saved_keys:
                continue
            md = saved[prefix + "sum"]
            rows = int(md.size[0])
            _fill_blocks(
                tensor,
                _load_whole(prefix + "sum", md, tensor.dtype, path, digests).reshape(rows),
                rows,
            )
            del entries[key]
            out[(param, key)] = tensor
    return out

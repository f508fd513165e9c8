"""Saving: :class:`CheckpointSaver` stages the state in memory and writes it in a background
thread on a process group of its own, so training goes on during the write; one save is
in flight at most. Rank 0 commits it by writing ``meta.json`` into the renamed folder.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.api import CheckpointException

from dist_train import storage
from dist_train.checkpoint.digests import FileDigests
from dist_train.checkpoint.errors import CheckpointError, reason
from dist_train.checkpoint.folders import (
    META,
    PARTIAL_PREFIX,
    REPLACED_PREFIX,
    committed,
    refuse_foreign,
    save_folder_name,
)
from dist_train.checkpoint.meta import META_DIGEST, TrainPosition, meta_digest
from dist_train.checkpoint.rng import rng_state
from dist_train.checkpoint.state import Trainer, agree, trainer_state
from dist_train.checkpoint.writer import writer as checkpoint_writer
from dist_train.logs import LOG
from dist_train.storage import Location

# A storage fault drill: (rank, step, directory) -> a wrapper of DCP's filesystem, or None.
StorageDrill = Callable[[int, int, Location], Callable[[Any], Any] | None]


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
        state, _ = trainer_state(self.trainer)
        if self.background:
            if self._staging is None:  # reused: the layout is the same at every save
                self._staging = _create_cpu_state_dict(state)
            state = _copy_state_dict(state, self._staging)
        job = _Save(state, position, rng_state(), held=hold)
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
        if _same_location(path, self.root / save_folder_name(step)):
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
            storage.rmtree(self.root / save_folder_name(step, PARTIAL_PREFIX))  # best effort
        if job.error is None and job.path is not None:
            self.last_path = job.path
            if self.on_commit is not None:
                self.on_commit(job.path, job.position)

    def _write(self, job: _Save) -> None:
        """Every rank's shards into the step's partial directory; their digests gathered."""
        group, step = self.group, job.position.step
        rank = dist.get_rank(group)
        partial = self.root / save_folder_name(step, PARTIAL_PREFIX)
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
        writer, log = checkpoint_writer(partial, wrap)
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
        final = self.root / save_folder_name(step)
        partial = self.root / save_folder_name(step, PARTIAL_PREFIX)

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
            meta[META_DIGEST] = meta_digest(meta)
            # A step saved again (a rerun reaching it): its committed checkpoint stays whole
            # until the new one is committed.
            aside = self.root / save_folder_name(step, REPLACED_PREFIX)
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

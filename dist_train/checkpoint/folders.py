"""The layout of a checkpoint folder: which entries are committed checkpoints, which are
saves a crash left half-written, and which are a user's files a save must not replace.
"""

from __future__ import annotations

import uuid

from dist_train import storage
from dist_train.checkpoint.errors import CheckpointError, reason
from dist_train.config.schema import JobConfig
from dist_train.storage import Location, location

PREFIX = "step-"
STEP_DIGITS = 8  # a save's folder: step-00000048
PARTIAL_PREFIX = ".partial-step-"
REPLACED_PREFIX = ".replaced-step-"  # a committed step-N set aside while N is saved again
META = "meta.json"


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


def save_folder_name(step: int, prefix: str = PREFIX) -> str:
    """The name a save of ``step`` gives its folder: ``step-%08d`` once committed; with
    ``prefix`` the partial or set-aside one's."""
    return f"{prefix}{step:0{STEP_DIGITS}d}"


def is_a_saves_name(p: Location) -> bool:
    """Whether ``p`` is named as a save names its folder: ``step-%08d`` exactly."""
    step = step_of(p)
    return step >= 0 and p.name == save_folder_name(step)


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


def resolve_checkpoint(cfg: JobConfig, resume: str) -> Location | None:
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

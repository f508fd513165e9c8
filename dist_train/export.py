"""``dist-train export``: a sharded checkpoint as one unsharded safetensors file.

For inspection and serving: every table is written whole (its shards stitched by DCP from
their global offsets), with the dense layers, under their model keys
(``sparse_arch.embedding_bags.unified_0.weight``, ...). ``--optimizer`` adds the optimizer state
in a second file. The checkpoint's ``meta.json`` (step, config, plan) is copied beside them.
Everything is loaded into this machine's memory: export tables that fit in it. safetensors holds
raw tensors only, so reading an export never runs code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from dist_train.checkpoint.errors import CheckpointError, raise_a_wrapped_stop, reason
from dist_train.checkpoint.file_access import METADATA
from dist_train.checkpoint.folders import META, committed, is_a_saves_name
from dist_train.checkpoint.meta import file_digests, read_meta
from dist_train.checkpoint.reader import reader as checkpoint_reader
from dist_train.checkpoint.safe_decode import SafeExportPlanner
from dist_train.config.errors import ConfigError
from dist_train.config.load import parse_config
from dist_train.embedding.layout import EmbeddingLayout, build_layout
from dist_train.logs import LOG
from dist_train.storage import Location, move_in, new_staging


class ExportError(ValueError):
    """An export that cannot be written where it was asked to; the message names the path."""


class OutFolderRefused(ExportError):
    """An ``--out`` folder refused before anything is written (a bad argument: ``dist-train
    export`` exits 2 for it, as ``evaluate`` does for its ``--out``)."""


def _flatten(prefix: str, node: Any, out: dict[str, torch.Tensor]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(node, torch.Tensor):
        out[prefix] = node.detach().contiguous()


def load_unsharded(path: Location, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole checkpoint as plain tensors, in this process (no process group needed),
    every file checked against the digests in ``meta`` (its ``meta.json``)."""
    state: dict[str, Any] = {}
    try:
        reader = checkpoint_reader(path, file_digests(meta, path))
        # first on its own: DCP logs a traceback for each failed read of it before it raises
        reader.read_metadata()
        _load_state_dict(state, storage_reader=reader, planner=SafeExportPlanner(), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - DCP raises many types
        # (CheckpointException, which wraps a rank's failure, is a BaseException)
        raise_a_wrapped_stop(err)
        raise CheckpointError(f"{path}: cannot read checkpoint shards ({reason(err)})") from None
    return state


OUTPUTS = ("model.safetensors", "optimizer.safetensors", META, "export.json")
"""The files an export writes into its folder (``export.json`` last: it lists the others)."""


def export(path: Location, out_dir: Path, with_optimizer: bool = False) -> dict[str, Any]:
    """Write ``model.safetensors`` (and ``optimizer.safetensors``) and ``meta.json`` to
    ``out_dir``; returns a summary (files, tensors, tables with their shapes). The files are
    written beside it first, then moved in: a failed export leaves ``out_dir`` as it was."""
    meta = read_meta(path)  # a clear error naming the file if the checkpoint is unusable
    _check_out_dir(path, out_dir)
    state = load_unsharded(path, meta)
    model: dict[str, torch.Tensor] = {}
    _flatten("", state.get("model", {}), model)
    if not model:
        raise CheckpointError(f"{path}: the checkpoint holds no model tensors")
    step = {"step": str(meta["position"]["step"])}
    written = [out_dir / "model.safetensors"]
    if with_optimizer:
        written.append(out_dir / "optimizer.safetensors")
    tables = {
        k: list(v.shape) for k, v in model.items() if ".embedding_bags." in k and v.dim() == 2
    }
    layout = _saved_layout(meta)
    if layout is not None:  # its keys would name tables the file lacks, or of other shapes
        saved = {t.name: [t.num_rows, t.dim] for t in layout.tables}
        held = {k.split(".embedding_bags.")[1].split(".")[0]: v for k, v in tables.items()}
        if held != saved:  # edited, or an older dist_train's split of the rows: no keys
            LOG.warning(
                f"export.json lists no keys: the config in {path / META} gives other tables "
                f"({_shapes(saved)}) than the checkpoint holds ({_shapes(held)})"
            )
            layout = None
    summary = {
        "files": [str(f.absolute()) for f in written],
        "tensors": len(model),
        "tables": tables,
        "keys": _keys(layout),
    }
    earlier = _earlier_export(out_dir)
    try:
        # on out_dir's filesystem, so that renames move the files in: inside an existing
        # out_dir (which may be a mount, or a link to another filesystem, in a folder this
        # user cannot write), else beside it, made as mkdir makes out_dir
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        where = out_dir if out_dir.is_dir() else out_dir.parent
        staged = new_staging(where, f".{out_dir.name}.exporting-")
        try:
            save_file(model, str(staged / "model.safetensors"), metadata=step)
            if with_optimizer:
                optim: dict[str, torch.Tensor] = {}
                _flatten("", state.get("optim", {}), optim)
                save_file(optim, str(staged / "optimizer.safetensors"), metadata=step)
            for f in staged.glob("*.safetensors"):  # safetensors makes them 0600
                f.chmod(0o666 & ~_umask())
            meta_text = (path / META).read_text()
            (staged / META).write_text(meta_text)
            (staged / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
            _move_in(staged, out_dir)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    except OSError as err:
        raise ExportError(f"{out_dir}: cannot write the export ({err.strerror or err})") from None
    if earlier is not None and earlier[0] != meta_text:  # a folder kept for the newest, say
        LOG.warning(
            f"{out_dir}: replaced the export of another checkpoint (step {earlier[1]}) with "
            f"step {meta['position']['step']}'s"
        )
    return summary


def _earlier_export(out_dir: Path) -> tuple[str, object] | None:
    """An earlier export's ``meta.json`` in ``out_dir`` and its step, None if there is none."""
    if not (out_dir / "export.json").is_file() or not (out_dir / META).is_file():
        return None  # (a pipe of that name would hang the read)
    try:
        text = (out_dir / META).read_text()
        position = json.loads(text).get("position", {})
        return text, position.get("step") if isinstance(position, dict) else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _umask() -> int:
    """This process's file mode mask, as ``open`` applies it to files it makes: read from
    ``/proc`` (setting it to read it back changes it for every thread meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_in(staged: Path, out_dir: Path) -> None:
    """Move a staged export into ``out_dir`` (:func:`~dist_train.storage.move_in`,
    ``export.json`` last), after removing an earlier export's file this one does not write
    (an optimizer of another step would pass for this one's)."""
    if out_dir.exists():
        listed = _exported_files(out_dir) or set()
        for name in OUTPUTS:
            if not (staged / name).exists() and name in listed:
                (out_dir / name).unlink(missing_ok=True)
    move_in(staged, out_dir, last="export.json")


def _exported_files(out_dir: Path) -> set[str] | None:
    """The names of the files an earlier export into ``out_dir`` wrote: those its
    ``export.json`` lists, ``meta.json`` and itself; None where no export's ``export.json``
    is there (none, unreadable, or not an export's record)."""
    record = out_dir / "export.json"
    if not record.is_file():  # a pipe of that name: not read
        return None
    try:
        written = json.loads(record.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    files = written.get("files") if isinstance(written, dict) else None
    if not isinstance(files, list) or not isinstance(written.get("tables"), dict):
        return None
    return {Path(f).name for f in files if isinstance(f, str)} | {META, "export.json"}


def _holds_a_checkpoint(folder: Path) -> bool:
    return (folder / METADATA).is_file() and (folder / META).is_file()


def _check_out_dir(path: Location, out_dir: Path) -> None:
    """OutFolderRefused for an ``out_dir`` whose files an export would spoil, or that would pass
    for a checkpoint: inside the checkpoint, a folder holding a checkpoint (its
    ``meta.json`` would be overwritten and its own file check then fail), one holding files
    of an export's names that no export wrote (a user's own model, say), or one named as a
    save names its folder (``step-%08d``: in a run's checkpoint folder the export's
    ``meta.json`` would pass for a checkpoint's, and ``latest`` take it for the newest)."""
    # inside a committed checkpoint (this one, named by a path or a file:// URL, or another):
    # its file check would then fail on the export's files
    try:
        here = out_dir.resolve()
    except (OSError, RuntimeError) as err:  # a loop of links
        raise OutFolderRefused(f"{out_dir}: cannot resolve it ({err})") from None
    if out_dir.is_symlink() and not out_dir.exists():  # Python 3.13 resolves a loop quietly
        raise OutFolderRefused(f"{out_dir}: a link to no folder (a loop of links, or nothing)")
    for folder in here.parents:
        if _holds_a_checkpoint(folder):
            raise OutFolderRefused(
                f"{out_dir}: inside the checkpoint {folder}; export to another folder"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutFolderRefused(f"{out_dir}: not a folder; export to a folder")
    names = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    if METADATA in names or any(n.endswith(".distcp") for n in names):
        raise OutFolderRefused(f"{out_dir}: holds a checkpoint; export to another folder")
    # files of an export's names are an earlier export's where its export.json lists them
    # (any export.json passed for proof: a user's model beside one, or an optimizer added
    # to an export made without it, was replaced)
    theirs = sorted(names & set(OUTPUTS) - (_exported_files(out_dir) or set()))
    if theirs:
        raise OutFolderRefused(
            f"{out_dir}: holds {', '.join(theirs)}, which no export wrote; export to another "
            "folder (nothing was changed)"
        )
    if out_dir.is_dir() and committed(out_dir):
        # a run's checkpoint folder: `--resume` of it then failed far from the cause
        raise OutFolderRefused(
            f"{out_dir}: a run's checkpoint folder (it holds {committed(out_dir)[-1].name}); "
            "export to another folder"
        )
    if is_a_saves_name(here):
        raise OutFolderRefused(
            f"{out_dir}: named as a checkpoint's save is ({here.name}): in a run's checkpoint "
            "folder its meta.json would pass for a checkpoint's (`latest` would take it, "
            "retention delete it); name the folder otherwise"
        )


def _saved_layout(meta: dict[str, Any]) -> EmbeddingLayout | None:
    """The tables and keys of the checkpoint's config; None for a checkpoint without its
    config, or with one this dist_train no longer reads (said)."""
    if not isinstance(meta.get("config"), dict):
        return None
    try:
        cfg = parse_config(meta["config"], "the checkpoint's config")
    except ConfigError as err:  # an older dist_train's config: the tables still export
        LOG.warning(f"export.json lists no keys: {err}")
        return None
    return build_layout(cfg.embedding, cfg.features, cfg.seed)


def _shapes(tables: dict[str, list[int]]) -> str:
    return ", ".join(f"{name} {rows:,} x {dim}" for name, (rows, dim) in sorted(tables.items()))


def _keys(layout: EmbeddingLayout | None) -> list[dict[str, Any]]:
    """Which table each (feature, chunk) reads and with which salt: a unified table's
    sub-tables are separate tables, each key hashing into its own sub-table's rows
    (``dist_train.embedding.hashing.salted_rows``; salt None: ids are rows). Empty without
    the checkpoint's config (:func:`_saved_layout`)."""
    if layout is None:
        return []
    return [
        {"key": k.key, "feature": k.feature, "chunk": k.chunk, "table": k.table, "salt": k.salt}
        for k in layout.keys
    ]

"""A checkpoint's contents decoded without running code from them.

DCP trusts its files: its reader unpickles ``.metadata``, its load planners
``torch.load(..., weights_only=False)`` non-tensor items. Here ``.metadata`` is unpickled by
:class:`MetadataUnpickler`, which admits only the classes DCP metadata is made of, its fields
then checked (:func:`read_metadata_bytes`); the load planners (:class:`SafeLoadPlanner` and
the others) load non-tensor items with torch's ``weights_only`` unpickler. A forger who
rewrites the files and their digests still cannot run code in the loading process.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    _EmptyStateDictLoadPlanner,
)
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.file_access import is_plain_file_name

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (_DCP_METADATA, "Metadata"),
        (_DCP_METADATA, "MetadataIndex"),
        (_DCP_METADATA, "StorageMeta"),
        (_DCP_METADATA, "TensorProperties"),
        (_DCP_METADATA, "TensorStorageMetadata"),
        (_DCP_METADATA, "ChunkStorageMetadata"),
        (_DCP_METADATA, "BytesStorageMetadata"),
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # maps a layout's name to the layout
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
    }
)


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``Metadata`` and refuses every other global (functions above all)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of DCP metadata")


def read_metadata_bytes(data: bytes, where: str) -> Metadata:
    """DCP ``Metadata`` from the bytes of a ``.metadata`` file, its contents checked
    (:func:`_metadata_problem`), or CheckpointError."""
    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - a crafted or corrupt file raises anything
        raise CheckpointError(f"{where}: not DCP checkpoint metadata ({err})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{where}: not DCP checkpoint metadata (a {type(metadata)})")
    problem = _metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{where}: not DCP checkpoint metadata ({problem})")
    return metadata


def _metadata_problem(metadata: Metadata) -> str | None:
    """What in unpickled ``metadata`` a save does not write, or None. Its classes are DCP's
    (:class:`MetadataUnpickler`); their fields are checked here, since a forged file (its
    digests rewritten) reached torch with them: a declared size no chunk covers exported
    the process's uninitialized memory, a list index in ``planner_data`` of 10**12 grew a
    list without end, a shard path out of the folder was read, and odd types failed in
    tracebacks."""
    entries = metadata.state_dict_metadata
    for key, entry in entries.items():
        if not isinstance(key, str):
            return f"a key {key!r} that is no name"
        if isinstance(entry, BytesStorageMetadata):
            continue
        if not isinstance(entry, TensorStorageMetadata):
            return f"{key}: a {type(entry).__name__}, not a tensor's or an item's"
        problem = _tensor_problem(entry)
        if problem:
            return f"{key}: {problem}"
    if metadata.planner_data is not None:
        if not isinstance(metadata.planner_data, dict):
            return "planner_data is not a mapping"
        for key, where in metadata.planner_data.items():
            # a path into the state: names, and list indices no longer than the entries
            if not isinstance(where, tuple | list) or not all(
                isinstance(p, str) or (type(p) is int and 0 <= p < len(entries)) for p in where
            ):
                return f"planner_data[{key!r}]: {str(where)[:80]} is no path into the state"
    if metadata.storage_meta is not None and not isinstance(metadata.storage_meta, StorageMeta):
        return f"storage_meta is a {type(metadata.storage_meta).__name__}"
    storage = metadata.storage_data
    if storage is not None:
        if not isinstance(storage, dict):
            return "storage_data is not a mapping"
        for info in storage.values():
            name = getattr(info, "relative_path", None)
            if not is_plain_file_name(name):
                return f"a shard at {str(name)[:80]!r}, outside the checkpoint's folder"
            offset, length = getattr(info, "offset", None), getattr(info, "length", None)
            if not (type(offset) is int and type(length) is int and offset >= 0 <= length):
                return f"{name}: an item at offset {offset!r} of length {length!r}"
    return None


def _tensor_problem(entry: TensorStorageMetadata) -> str | None:
    """What in one tensor's metadata no save writes: its size, dtype, or chunks that do
    not tile it (each inside it, their elements adding up to its own)."""
    size = entry.size
    if not isinstance(size, torch.Size) or any(type(n) is not int or n < 0 for n in size):
        return f"size {str(size)[:80]}"
    if not isinstance(getattr(entry.properties, "dtype", None), torch.dtype):
        return "no dtype"
    if not isinstance(entry.chunks, list):
        return "its chunks are no list"
    covered = 0
    for chunk in entry.chunks:
        offsets, sizes = getattr(chunk, "offsets", None), getattr(chunk, "sizes", None)
        if not (isinstance(offsets, torch.Size) and isinstance(sizes, torch.Size)) or not (
            len(offsets) == len(sizes) == len(size)
        ):
            return f"a chunk {str(chunk)[:80]} of another shape than its size {tuple(size)}"
        if any(
            type(o) is not int or type(n) is not int or o < 0 or n < 0 or o + n > d
            for o, n, d in zip(offsets, sizes, size, strict=True)
        ):
            return f"a chunk at {tuple(offsets)} of {tuple(sizes)}, outside its size {tuple(size)}"
        covered += sizes.numel()
    if covered != size.numel():
        return f"chunks of {covered:,} elements for a size of {size.numel():,} ({tuple(size)})"
    return None


# -- non-tensor items without code -------------------------------------------------------------


def _load_bytes_safely(planner: DefaultLoadPlanner, read_item: ReadItem, value: io.BytesIO) -> None:
    """``DefaultLoadPlanner.load_bytes`` with the ``weights_only`` unpickler."""
    obj = torch.load(value, map_location="cpu", weights_only=True)
    fqn = read_item.dest_index.fqn
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[fqn], obj)
    else:
        planner.state_dict[fqn] = obj


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, loading non-tensor items with the ``weights_only`` unpickler."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_bytes_safely(self, read_item, value)


class SafeExportPlanner(_EmptyStateDictLoadPlanner):
    """DCP's load-everything planner (exports), with non-tensor items loaded safely."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        _load_bytes_safely(self, read_item, value)


class SafeDecodePlanner(SafeExportPlanner):
    """Decodes every item as a load would, and keeps no tensor (``verify``): the state is
    planned without memory, and each decoded item is checked against its size, then dropped
    (at most one item's tensor at a time, beside the file's mapped pages)."""

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        metadata: Metadata | None = None,
        is_coordinator: bool = False,
    ) -> None:
        if metadata is None:
            raise AssertionError("a decode needs the checkpoint's metadata")
        for key, entry in metadata.state_dict_metadata.items():
            value: Any = entry
            if isinstance(entry, TensorStorageMetadata):
                # one element seen at every index: the plan needs the sizes, not the memory
                value = torch.empty((), dtype=entry.properties.dtype).expand(entry.size)
            if metadata.planner_data is not None and key in metadata.planner_data:
                set_element(state_dict, metadata.planner_data[key], value)
            else:
                state_dict[key] = value
        DefaultLoadPlanner.set_up_planner(self, state_dict, metadata, is_coordinator)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        # on the meta device: the size is checked, nothing is copied or kept
        dtype = self.lookup_tensor(read_item.dest_index).dtype
        return torch.empty(tuple(read_item.lengths), dtype=dtype, device="meta")

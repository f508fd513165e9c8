"""``--set key.path=value`` overrides applied to a config mapping before it is validated: list
items named by name or position, values typed by the key they set.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from dist_train.config.errors import ConfigError
from dist_train.config.keys import find_item, item_parts, list_type, nested_model
from dist_train.config.schema import JobConfig
from dist_train.config.yaml_file import yaml_value

# an empty value is null, as in YAML; YAML's "~" is text here: `--set checkpoint.dir=~`
# meant the home folder
_NULLS = ("", "null", "Null", "NULL")


def _takes_text(parts: list[str]) -> bool:
    """Whether the key ``parts`` names holds a string (unknown keys count: they are refused
    by name whatever their value); an item of a list (:func:`item_parts`) holds the list's
    item type."""
    items = item_parts(parts)
    model: type[BaseModel] | None = JobConfig
    kind: Any = None
    for i, part in enumerate(parts):
        if i in items:
            if i == len(parts) - 1:  # a whole item: features.C14={...}, data.dense_columns.0
                return _is_text(typing.get_args(list_type(kind))[0])
            continue
        if model is None:
            return False  # inside a mapping's entry or a plain list's item
        field = model.model_fields.get(part)
        if field is None:
            return True
        kind = field.annotation
        if i == len(parts) - 1:
            return _is_text(kind)
        model = nested_model(kind)
    return False


def _is_text(kind: Any) -> bool:
    """str, or an optional str (either annotated): not a list or mapping of them."""
    if typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_text(k) for k in typing.get_args(kind))
    return kind is str


def _override_value(item: str, parts: list[str], text: str) -> Any:
    """An override's value: YAML, except that a string key takes the text as typed (YAML
    would read ``2024`` as a number, ``*.parquet`` as an alias, `` #2`` as a comment), unless
    it is null or quoted."""
    bare = text.strip()
    if _takes_text(parts) and bare not in _NULLS and bare[:1] not in ("'", '"'):
        return text
    try:
        return yaml_value(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"--set {item}: not valid YAML ({problem})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(
            f"--set {item.partition('=')[0]}=...: nested too deeply to read"
        ) from None


def override_key(item: str) -> str:
    """The key of a ``--set key=value`` item."""
    return item.split("=", 1)[0].strip()


def override_shape_error(item: str) -> str | None:
    """What is wrong with the shape of a ``--set`` item (no ``=``, an empty key part);
    None for a ``KEY.PATH=VALUE``."""
    if "=" not in item:
        return f"override {item!r}: expected KEY.PATH=VALUE"
    if not all(item.split("=", 1)[0].strip().split(".")):
        return f"override {item!r}: expected KEY.PATH=VALUE (an empty key)"
    return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (values parsed as YAML,
    but for string keys: :func:`_override_value`)."""
    out: dict[str, Any] = copy.deepcopy(raw) or {}  # (a YAML round trip re-read "09" as 9)
    for item in overrides:
        shapeless = override_shape_error(item)
        if shapeless:
            raise ConfigError(shapeless)
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, dict) and p not in node and parts[i + 1].isdigit():
                # an item of a list the config leaves unset: made a mapping {'0': ...}, it
                # was refused as "Input should be a valid list"
                whole = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"--set {item}: {whole} is not set, so it has no item {parts[i + 1]}; set "
                    f"it whole, e.g. --set {whole}=[...]"
                )
            child = (
                node[_item_index(node, p, parts[i - 1], item)]
                if isinstance(node, list)
                else node.setdefault(p, {})
            )
            if not isinstance(child, dict | list):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        last = parts[-1]
        if isinstance(node, list):  # a whole item: features.C14={name: C14, chunks: 3}
            at = _item_index(node, last, parts[-2], item)
            new = _override_value(item, parts, value)
            if new is None:  # its error named the item by position, and no --set
                raise ConfigError(
                    f"--set {item}: an item of {parts[-2]} cannot be null; to drop items, set "
                    f"{'.'.join(parts[:-1])} whole, e.g. --set {'.'.join(parts[:-1])}=[...]"
                )
            node[at] = new
        else:
            node[last] = _override_value(item, parts, value)
    return out


def _item_index(items: list[Any], part: str, name: str, item: str) -> int:
    """The position of the item of list ``name`` that ``part`` names in an override
    (:func:`find_item`), or an error naming the override."""
    found = find_item(items, part)
    if found is not None:
        return found
    if not items:  # (its positions "from 0 to -1")
        raise ConfigError(
            f"--set {item}: {name} is empty, so it has no item {part!r}; set it whole, e.g. "
            f"--set {item.split('=', 1)[0].rsplit('.', 1)[0]}=[...]"
        )
    names = [str(e.get("name")) for e in items if isinstance(e, dict) and "name" in e]
    listed = f"; its items: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
    raise ConfigError(
        f"--set {item}: {name} has no item named {part!r} (name one by its name, or by its "
        f"position from 0 to {len(items) - 1}){listed if names else ''}"
    )

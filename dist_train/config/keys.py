"""The config's keys as dotted paths: which exist, the field a key names, and the known key
nearest a misspelt one.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

from dist_train.config.schema import JobConfig


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as the items of a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def dotted_keys(model: type[BaseModel] = JobConfig, prefix: str = "") -> list[str]:
    """Every key and section of ``model`` as a dotted path (list items without an index:
    ``features.name``), for suggesting the key a misspelt one meant."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        nested = nested_model(field.annotation)
        if nested is not None:
            keys += dotted_keys(nested, key)
    return keys


def item_parts(parts: list[str]) -> set[int]:
    """Which of a key's ``parts`` name an item of a list (``features.C14.chunks``: 1), by its
    name or position, as far as the key's fields are known."""
    items: set[int] = set()
    model: type[BaseModel] | None = JobConfig
    i = 0
    while i < len(parts) and model is not None:
        field = model.model_fields.get(parts[i])
        if field is None:
            break
        if list_type(field.annotation) is not None:
            items.add(i + 1)
            i += 1
        model = nested_model(field.annotation)
        i += 1
    return items


def list_type(annotation: Any) -> Any:
    """The list type ``annotation`` is, or holds as an option (``list[str] | None``)."""
    if typing.get_origin(annotation) is list:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(annotation) if typing.get_origin(a) is list), None)
    return None


def field_at(key: str) -> Any:
    """The field ``key`` names (an entry of a mapping key: the mapping's; an item of a list
    key, named by its name or position: the list's); None if none."""
    parts = key.split(".")
    items = item_parts(parts)
    model: type[BaseModel] | None = JobConfig
    field = None
    for i, part in enumerate(parts):
        if field is not None and typing.get_origin(field.annotation) is dict:
            return field  # an entry's name is the user's
        if i in items:
            continue  # an item: what follows is a key of the list's model
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = nested_model(field.annotation)
    return field


def known_key(key: str) -> bool:
    """Whether ``key`` is a config key or section, or an entry of a mapping one
    (``sharding.pooling_factors.C24``)."""
    return field_at(key) is not None


def closest_key(key: str) -> str | None:
    """The config key nearest an unknown ``key``, if any is near: the "did you mean" of an
    error. The list items ``key`` names stay where it names them (features.C14.chunkz:
    features.C14.chunks)."""
    parts = key.split(".")
    items = item_parts(parts)
    dotted = ".".join(p for i, p in enumerate(parts) if i not in items)
    keys = [k for k in dotted_keys() if not dotted.startswith(f"{k}.")]  # no sections
    close = difflib.get_close_matches(dotted, keys, n=1)
    if not close:
        return None
    names = close[0].split(".")
    for i in sorted(items):  # back in, where the suggestion keeps the key's way to the item
        if names[:i] != parts[:i] or i > len(names):
            return close[0]
        names.insert(i, parts[i])
    suggestion = ".".join(names)
    return suggestion if suggestion != key else None


def find_item(items: list[Any], part: str) -> int | None:
    """The position of the item ``part`` names: the item whose ``name`` it is
    (features.C14), or else the item at that position (features.13); None if none."""
    for i, each in enumerate(items):
        if isinstance(each, dict) and str(each.get("name")) == part:
            return i
    return int(part) if part.isdigit() and int(part) < len(items) else None

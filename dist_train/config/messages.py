"""pydantic's validation errors worded for the user: each at the key the user wrote (list
items by name), unions as one problem, and the ``--set`` that caused it named.
"""

from __future__ import annotations

import re
import reprlib
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from dist_train.config.keys import closest_key, field_at, find_item
from dist_train.config.overrides import override_key
from dist_train.config.schema import can_name_item

# a union's member as pydantic names it at the end of an error's loc (int | 'auto')
_UNION_MEMBER = re.compile(r"int|bool|float|str|literal\[.*\]|str-enum\[\w+\]|[\w-]+\[.*\]")
_MEMBER_WORDS = {"int": "an integer", "bool": "true or false", "float": "a number", "str": "text"}


def _one_error_a_union(errors: list[Any]) -> list[Any]:
    """pydantic's errors with those of one union's members (``group_size: int | 'auto'``
    gave ``group_size.int`` and ``group_size.literal['auto']``, two problems at keys that
    do not exist) merged into one at the union's key, saying what it takes. A union fails
    in every member: two or more errors at one key's members, one after the other."""
    out: list[Any] = []
    i = 0
    while i < len(errors):
        loc = tuple(errors[i]["loc"])
        j = i
        while (
            j < len(errors)
            and loc
            and tuple(errors[j]["loc"])[:-1] == loc[:-1]
            and len(errors[j]["loc"]) == len(loc)
            and _UNION_MEMBER.fullmatch(str(errors[j]["loc"][-1]))
        ):
            j += 1
        if j - i < 2:  # no union: one error (a mapping's key named int, say) as it is
            out.append(errors[i])
            i += 1
            continue
        words = [
            str((e.get("ctx") or {}).get("expected") or _MEMBER_WORDS.get(str(e["loc"][-1])))
            for e in errors[i:j]
        ]
        taken = " or ".join(w for w in words if w != "None") or "another value"
        out.append(
            {
                **errors[i],
                "loc": loc[:-1],
                "msg": f"expected {taken}; got {_shown(errors[i]['input'])}",
            }
        )
        i = j
    return out


# a value quoted in an error, cut short: YAML's aliases can expand a few bytes to gigabytes
_SHORT = reprlib.Repr()  # (its keyword arguments came in Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 80


def _shown(value: Any) -> str:
    """``repr(value)``, its nesting, lists and strings cut short (``[[1, 2, ...], ...]``)."""
    return _SHORT.repr(value)


def format_errors(
    source: str, err: ValidationError, overrides: Sequence[str] = (), raw: Any = None
) -> str:
    """``err``'s problems, a line each under one naming ``source``: at the keys as the user
    writes them in ``raw`` (the config as overridden), the ``--set`` among ``overrides`` that
    caused each named where it is clear."""
    errors = _one_error_a_union(err.errors())
    lines = [f"{source}: invalid job config ({len(errors)} problem(s))"]
    for e in errors:
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        shown = _at_names(e["loc"], raw) or key
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = closest_key(shown)
            hint = f"did you mean {close}? " if close else ""
            msg = (
                f"unknown key ({hint}every key: `dist-train show-config --reference`, "
                "docs/config.md)"
            )
        sureness = [
            (
                max(
                    _blames(_at_positions(override_key(o), raw), key if e["loc"] else "", msg),
                    # a check of the whole job names a list's items by name, as errors do
                    0 if e["loc"] else _blames(_named_key(override_key(o), raw), "", msg),
                ),
                o,
            )
            for o in overrides
        ]
        surest = max((s for s, _ in sureness), default=0)
        blamed = [o for s, o in sureness if s == surest > 0]  # the surest, the last of them
        # a guess (inside the key, not named) only where one override could be it: of two,
        # the last was named where the first made the error
        if blamed and (surest > 1 or len(blamed) == 1):
            msg += f" (from --set {blamed[-1]})"
        lines.append(f"  {shown}: {msg}")
    return "\n".join(lines)


def _blames(override: str, key: str, message: str) -> int:
    """How surely an error at ``key`` ("": a check of the whole job) with ``message`` comes
    from the ``--set`` of ``override``: 2 for one that sets the key or a section it lies in,
    or something inside the key that the message names (by its part inside the key, or whole:
    ``features.0.name``); 1 for something else inside it (a
    section's check names what it finds, not always what changed: ``num_categorical`` for
    unknown ``multi_hot_columns``); 0 for none. An entry of a mapping only where the message
    names the entry (as the mapping's checks quote it, ``'C99'``); for the whole job, one
    the message names."""
    if key and (override == key or key.startswith(f"{override}.")):
        return 2  # (an entry of a mapping too: the error is at the entry itself)
    parent, _, entry = override.rpartition(".")
    field = field_at(parent) if parent else None
    is_entry = field is not None and typing.get_origin(field.annotation) is dict
    if is_entry and f"'{entry}'" not in message:
        return 0
    if not key:
        return 2 * _mentions(message, parent if is_entry else override)
    inside = override.removeprefix(f"{key}.")
    if inside == override:  # not inside the key
        return 0
    return 2 if is_entry or _mentions(message, inside) or _mentions(message, override) else 1


def _at_positions(key: str, raw: Any) -> str:
    """``key`` with each list item it names by name named by its position in ``raw`` (the
    config as overridden): errors name items by position (features.C14.chunks is
    features.13.chunks in the default job)."""
    out: list[str] = []
    node = raw
    for part in key.split("."):
        if isinstance(node, list):
            found = find_item(node, part)
            part = part if found is None else str(found)
            node = None if found is None else node[found]
        else:
            node = node.get(part) if isinstance(node, dict) else None
        out.append(part)
    return ".".join(out)


def _mentions(message: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def _named_key(key: str, raw: Any) -> str:
    """An override's ``key`` with each list item it names by position named by its name
    where it has one (:func:`_at_names`): features.2.column is features.C3.column."""
    loc: list[int | str] = []
    node = raw
    for part in _at_positions(key, raw).split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            loc.append(int(part))
            node = node[int(part)]
        else:
            loc.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return _at_names(tuple(loc), raw)


def _at_names(loc: tuple[int | str, ...], raw: Any) -> str:
    """An error's ``loc`` with each list item that has a name named by it, as the user
    names it (features.2.chunks is features.C3.chunks in the default job); "" if empty."""
    out: list[str] = []
    node = raw
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            item = node[part]
            name = item.get("name") if isinstance(item, dict) else None
            if can_name_item(name) and find_item(node, str(name)) == part:  # its first
                out.append(str(name))
            else:
                out.append(str(part))
            node = item
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out)

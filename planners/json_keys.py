"""JSON read as strictly as the job's YAML: a key given twice in one object is refused
(``json`` keeps the last, unseen: an edited file's first value would pass for its own)."""

from __future__ import annotations

import json
from typing import Any


class KeyGivenTwice(ValueError):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} given twice in one object")
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise KeyGivenTwice(key)
        out[key] = value
    return out


def loads_unique_keys(text: str | bytes) -> Any:
    """``json.loads``, refusing a key given twice (:class:`KeyGivenTwice`); a number of more
    digits than Python reads is a ValueError that says so, without Python's advice."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, KeyGivenTwice):
        raise
    except ValueError as err:  # "Exceeds the limit (4300 digits) ...; use sys.set_int..."
        raise ValueError(str(err).split(";")[0]) from None

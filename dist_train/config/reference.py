"""``dist-train show-config --reference``: every job config key, from the pydantic models.

``docs/config.md`` is this module's output; ``tests/unit/test_config_reference.py`` fails
when the two differ, so the reference cannot go stale.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from dist_train.config.keys import nested_model
from dist_train.config.schema import JobConfig

HEADER = """# Job config reference

Generated from the pydantic models in `dist_train/config/schema.py` by
`dist-train show-config --reference > docs/config.md`; a test fails when this file is stale.
A job config is YAML (`launch/configs/default.yaml` is the default job); any key can be set
from the command line with `--set key.path=value`, the value read as YAML, except that a key
of type str takes the text as typed (`--set name=2024`, `--set 'data.train_path=*.parquet'`;
only `null`, an empty value (null too) and quoted text are read as YAML; `~` is text, a home
folder). A number's key, or a list or mapping of numbers, refuses YAML's yes/no values (`on`,
`off`, `yes`, `no`, `true`, `false`), and no number may be infinite or NaN. A number's key
reads exponent form as YAML 1.2 does (`num_rows: 3e5` is 300000: PyYAML's YAML 1.1 reads it
as text), in a file and on the command line alike; a text key keeps the text. Nor are
numbers read in YAML 1.1's octal or base 60: `seed: 0123` is 123 (`0o17` is octal, `0x1f`
hex), `epochs: 1:30` is refused. A path may not be empty (leave its key out for its default, or
set null where its type allows null); an `output_dir` of `file:/x` is the folder `/x`. `dist-train
show-config` prints the validated config of a job, every default filled in; an error names
the key and the `--set` it came from, and an unknown key gets the closest valid one as a
suggestion. An item of a list is named by its `name` (an item of `features`), or else by
its position from 0: `--set features.C14.chunks=3`, `--set features.0.column=cat_1`,
`--set model.bottom_mlp.0=32`, or whole: `--set 'features.C14={name: C14, chunks: 3}'`;
`--set 'features=[...]'` replaces the list. Errors name an item the same way
(`features.C14.chunks: Input should be greater than 0`).
"""


def _type_name(annotation: Any) -> str:
    """A short readable type: ``int | None``, ``auto | row_wise | ...``, ``list[int]``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:  # a constrained type (PositiveInt): its base type
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if isinstance(annotation, type) and hasattr(annotation, "__members__"):  # enums
        return " \\| ".join(str(m.value) for m in annotation)  # type: ignore[attr-defined]
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if hasattr(value, "value"):  # an enum member
        value = value.value
    return f"`{json.dumps(value)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    doc = (model.__doc__ or "").strip().splitlines()
    out += ["", f"## `{prefix or 'top level'}`", ""] + ([doc[0], ""] if doc else [])
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    later: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = nested_model(field.annotation)
        if nested is not None:
            is_list = typing.get_origin(field.annotation) is list
            later.append((nested, f"{key}[]" if is_list else key))
            kind = "list of mappings" if is_list else "mapping"
            meaning = field.description or (nested.__doc__ or "").strip().splitlines()[0]
            out.append(f"| `{key}` | {kind} | {_default(field)} | {meaning} (below) |")
            continue
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
    for nested, key in later:
        _section(nested, key, out)


def config_reference() -> str:
    """The Markdown reference of every key of :class:`~dist_train.config.schema.JobConfig`."""
    out = [HEADER.rstrip()]
    _section(JobConfig, "", out)
    return "\n".join(out) + "\n"

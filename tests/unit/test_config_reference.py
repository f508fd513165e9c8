"""docs/config.md is the generated reference of every config key, and stays current."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from dist_train.config.reference import config_reference
from dist_train.config.schema import JobConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _keys(annotation, f"{key}.")
        elif args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            out += _keys(args[0], f"{key}[].")
    return out


def test_docs_config_md_is_the_generated_reference() -> None:
    assert DOC.read_text() == config_reference(), (
        "docs/config.md is stale: run `dist-train show-config --reference > docs/config.md`"
    )


def test_the_reference_lists_every_key_with_its_meaning() -> None:
    text = config_reference()
    for key in _keys(JobConfig):
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        assert not row.rstrip().endswith("|  |"), f"{key} has no description"

"""A job config read, overridden and validated: the one way in to a :class:`JobConfig`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dist_train.config.errors import ConfigError
from dist_train.config.messages import format_errors
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig
from dist_train.config.yaml_file import read_yaml

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout (an install: site-packages)
DEFAULT_CONFIG = REPO_ROOT / "launch" / "configs" / "default.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a YAML job config (the default one if ``path`` is None)."""
    # ~ too: a shell leaves `--config=~/x.yaml` (or a quoted one) as typed
    path = Path(path).expanduser() if path is not None else DEFAULT_CONFIG
    if not path.exists() or path.is_dir():
        if path == DEFAULT_CONFIG:  # a wheel holds the package, not the checkout's launch/
            raise ConfigError(
                f"{path}: no such config file. dist_train runs from its checkout, installed "
                "editable (`make setup`, or `pip install -e .`); this install has no "
                "launch/configs: give --config"
            )
        raise ConfigError(
            f"{path}: a folder, not a config file"
            if path.is_dir()
            else f"{path}: no such config file"
        )
    return parse_with_overrides(read_yaml(path), str(path), overrides or [])


def parse_with_overrides(raw: Any, source: str, overrides: list[str]) -> JobConfig:
    """:func:`parse_config` of ``raw`` with the ``--set`` items ``overrides`` applied (a
    document that is no mapping is refused by :func:`parse_config`, naming ``source``)."""
    if overrides and (raw is None or isinstance(raw, dict)):
        raw = apply_overrides(raw or {}, overrides)
    return parse_config(raw, source, overrides)


def parse_config(raw: Any, source: str = "<config>", overrides: Sequence[str] = ()) -> JobConfig:
    """Validate an already-parsed config mapping (``overrides``: the ``--set`` items applied to
    it, which the errors they cause name)."""
    if raw is None:
        raise ConfigError(f"{source}: empty; a job config is a mapping of settings")
    if not isinstance(raw, dict):
        kinds: dict[type, str] = {list: "a list", str: "a string", bool: "true or false"}
        kind = kinds.get(type(raw), "a number" if isinstance(raw, int | float) else "a value")
        raise ConfigError(f"{source}: a job config must be a mapping of settings, not {kind}")
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(source, err, overrides, raw)) from None


def load_or_report(config: str | Path | None, overrides: list[str]) -> JobConfig | None:
    """:func:`load_config`, or None after printing the error (for command lines)."""
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None

"""The config's error, apart from its schema: the YAML reader and the command-line options
raise it without importing pydantic's models."""

from __future__ import annotations


class ConfigError(ValueError):
    """A job config that cannot be used; the message names the file and key."""

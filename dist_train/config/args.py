"""The command-line options every job command takes (``--config``, ``--set``, ``-q``/``-v``,
``--resume``), and their values as overrides.
"""

from __future__ import annotations

import argparse
import typing

from dist_train.config.errors import ConfigError


def not_empty(say: str) -> typing.Callable[[str], str]:
    """An argparse type: text that is not empty or blank, else the usage error ``say`` (an
    empty value was read as no flag at all, or as the working directory)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(say)
        return text

    return parse


def add_config_args(
    p: argparse.ArgumentParser,
    default: str = "default: launch/configs/default.yaml",
    job_config: bool = True,
) -> None:
    """The ``--config`` and ``--set`` options every job command takes (``default`` says
    which config it reads without ``--config``), and ``-q``/``-v``; only these two without
    ``job_config``."""
    if job_config:
        p.add_argument(
            "--config",
            type=not_empty("an empty path; name a config file"),
            help=f"job config YAML ({default})",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=2 (repeatable)",
        )
    loud = p.add_mutually_exclusive_group()
    loud.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const="quiet",
        default="normal",
        help="print warnings and errors only (a training job's metrics.jsonl is still "
        "written in full)",
    )
    loud.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const="verbose",
        help="print debug messages too",
    )


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``dist-train train``'s options: :func:`add_config_args`' and ``--resume``."""
    add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="PATH|latest",
        help="continue from a checkpoint (latest = newest under the run's dir)",
    )


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items of parsed :func:`add_train_args` options, ``--resume`` as one
    more: its text as typed (``--resume null`` is the path 'null', not a null)."""
    resume = getattr(args, "resume", None)
    if resume is None:
        return list(args.set)
    if not resume.strip():  # read as null, it trained from scratch without a word
        raise ConfigError("--resume: an empty path; name a checkpoint, or latest")
    return [*args.set, f"checkpoint.resume={as_typed(resume)}"]


def as_typed(text: str) -> str:
    """``text`` as an override's value that reads back as that text: YAML single-quoted (a
    bare empty value, or ``null``, reads as null)."""
    return "'" + text.replace("'", "''") + "'"

"""Job configs and cluster files read as YAML: safe types only, numbers as YAML 1.2 reads
them, a key given twice refused, bounded in size, pipes read as files are.
"""

from __future__ import annotations

import errno
import os
import re
import select
import stat
import typing
from pathlib import Path
from typing import Any

import yaml

from dist_train.config.errors import ConfigError


class _Yaml12Numbers(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's misreadings of numbers, which YAML 1.2 drops:
    ``0123`` read as octal (a seed of 83) and ``1:30`` in base 60 (90 epochs). Integers are
    decimal (leading zeros and ``_`` between digits allowed), ``0o`` octal or ``0x`` hex;
    floats as PyYAML reads them but in base 60. (Exponent forms such as ``1e6``, text to
    PyYAML, are read per key: :func:`~dist_train.config.schema._exponent_numbers`.)"""


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Yaml12Numbers.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Numbers.add_implicit_resolver(
    _INT_TAG,
    # a leading 0 before more digits: text (YAML 1.1 read octal), which a number's key
    # reads as the decimal it is and a text key keeps ("09", a name, stays "09")
    re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Yaml12Numbers.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?"
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    text = str(loader.construct_scalar(node))
    digits = text.replace("_", "")
    sign, digits = (-1, digits[1:]) if digits[:1] == "-" else (1, digits.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2])
    try:
        return sign * (int(digits[2:], base) if base else int(digits, 10))
    except ValueError:  # 0o_, 0x_: no digits; the text, for the key's own error
        return text


_Yaml12Numbers.add_constructor(_INT_TAG, _yaml12_int)


def yaml_value(text: str) -> Any:
    """A YAML document's value, numbers read as YAML 1.2 reads them (:class:`_Yaml12Numbers`)."""
    return yaml.load(text, Loader=_Yaml12Numbers)


class _UniqueKeys(_Yaml12Numbers):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last: a second ``train:`` section would replace the first whole, unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # the merge keys (<<: *anchor) first: what they bring in, the mapping's own keys
        # may override, as YAML allows; only the mapping's own keys are checked
        merge = "tag:yaml.org,2002:merge"
        own_keys = sum(key.tag != merge for key, _ in node.value)
        self.flatten_mapping(node)  # type: ignore[no-untyped-call]  # merged pairs go first
        seen: dict[Any, int] = {}
        for key_node, _ in node.value[len(node.value) - own_keys :] if own_keys else []:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                again = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error names it
                break
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_YAML_BYTES = 64 * 2**20
"""The most :func:`read_yaml` reads: a job config or cluster file is some KB."""


PIPE_WAIT_S = 10.0
"""How long a named pipe (``mkfifo``) is waited on for a writer to send something."""


def _open_for_reading(path: Path) -> typing.BinaryIO:
    """``path`` open for reading. A shell's pipe (``<(cmd)``, ``/dev/stdin``) is read to its
    end however long its writer takes; OSError for a named pipe no writer sends anything to
    in :data:`PIPE_WAIT_S` (opening it waited for one without end; a read at once found the
    end of a pipe whose writer had not opened it yet, and read as empty)."""
    if not stat.S_ISFIFO(path.stat().st_mode):
        return path.open("rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # returns at once, writer or not
    # a shell's pipe has its writer from the start (its file reads `pipe:[inode]`)
    try:
        named = not os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:  # no /proc (macOS): waited on as a named pipe
        named = True
    waiting = select.poll()  # until a writer sends (POLLIN), or came and went (POLLHUP)
    waiting.register(fd, select.POLLIN | select.POLLHUP)
    if named and not waiting.poll(PIPE_WAIT_S * 1000):
        os.close(fd)
        raise OSError(errno.ETIMEDOUT, f"a pipe that nothing wrote to in {PIPE_WAIT_S:g} s")
    os.set_blocking(fd, True)  # then read what the writer sends, to its end
    return os.fdopen(fd, "rb")


def read_yaml(path: Path) -> Any:
    """A YAML file's contents (safe types only; a key given twice in a mapping, text that is
    not UTF-8 and malformed YAML are a :class:`ConfigError` naming the file). A pipe
    (``<(...)``, ``/dev/stdin``) is read as a file is."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a file")
    try:
        with _open_for_reading(path) as f:  # a pipe or device has no size to check first
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:  # /dev/zero read until memory ran out
            raise ConfigError(f"{path}: over {MAX_YAML_BYTES // 2**20} MiB, no YAML file of ours")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeys)
    except yaml.YAMLError as err:
        # one line, at the file's line and column: PyYAML's own text spans several and
        # names the text it read as "<unicode string>"
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        context = getattr(err, "context", None)
        raise ConfigError(
            f"{path}{at}: not valid YAML: {problem}" + (f" ({context})" if context else "")
        ) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path}: nested too deeply to read") from None

"""Every shell command in README.md and docs/*.md runs here, or is checked as cluster-only.

The info string of a fenced block says what its commands need:

- ```bash          cheap (seconds each): run as written.
- ```bash long     runs on a laptop but takes minutes (training, benchmarks, sweeps), or needs
                   the output of such a command (a checkpoint): SHRINK maps its subcommand
                   (``train``, ``bench planner``, ``make train``, ...) to extra flags that
                   scale it down, and a long command without an entry fails. The shrunk
                   command runs when DIST_TRAIN_DOC_LONG=1 (minutes: not in ``make test``);
                   otherwise it is checked like a cluster command.
- ```bash cluster  needs what CI lacks (a Ray cluster, GPUs, docker, a cloud account, a
                   registry, the public Criteo files): not run.

Every ``dist-train ...`` / ``python -m dist_train...`` line of every marked block (the
shrunk form too) must parse with the real argument parser, name config files and repository
paths that exist, and its ``--set`` overrides must validate against the job config. Other
blocks (```text, ```yaml, bare ```) are output, not commands; a bare block holding a command,
or a ```sh / ```shell / ```console one, fails ``test_command_blocks_are_marked``.

Commands run with ``bash -e``, the venv's bin first on PATH, each file's in order in a
scratch directory of its own in which the repository's folders are symlinked (so
``launch/configs/tiny.yaml`` resolves, and ``outputs/``, ``data/`` land there, not in the
checkout): a command can use an earlier one's output (``--resume latest`` after a train), and
each page works from a fresh checkout, as its reader starts. A command repeated on another
page runs again there, as that page's state may need it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dist_train.cli.parser import build_parser
from dist_train.config.args import add_config_args
from dist_train.config.errors import ConfigError
from dist_train.config.load import DEFAULT_CONFIG, load_config

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
RUN_LONG = os.environ.get("DIST_TRAIN_DOC_LONG", "") not in ("", "0")
TIMEOUT = {"bash": 120, "bash long": 600}
TINY = "launch/configs/tiny.yaml"

# How each long command is scaled down: extra arguments appended to it (argparse keeps the
# last value of a repeated option, and a later --set wins). Training keeps its step count:
# the docs name checkpoints by step (step-00000048 of the default job); what a short run
# costs is start-up, and plain processes start in seconds where Ray takes 15.
TRAIN = ["--set", "launcher=processes"]
NO_SETUP = ["-o", ".venv/.installed"]  # make: the venv is there; never reinstall from a test
# Commands that rehearse Ray Train's restarts need Ray: they are tiny jobs already.
RAY_RESTARTS = ("ray.max_failures", "ray.min_workers", "DIST_TRAIN_KILL_AT")
SHRINK: dict[str, list[str]] = {
    "train": TRAIN,
    "train, ray restarts": [],
    "python -m dist_train.driver": TRAIN,
    # Its own name: the page goes on to start the default job afresh (`dist-train train`).
    "make train": [*NO_SETUP, "ARGS=" + " ".join([*TRAIN, "--set", "name=make-train"])],
    "make test": [*NO_SETUP, "PYTEST_ARGS=--collect-only -q"],  # the suite itself: collected
    "validate": [],  # long only because it needs a trained checkpoint
    "export": [],  # likewise
    "evaluate": TRAIN,  # likewise; plain processes start in seconds
    "calibrate": ["--ranks", "1"],
    "plan": ["--no-torchrec"],  # TorchRec's planner takes most of a 4,096-rank dry run
    "bench embeddings": ["--config", TINY, "--lrs", "0.05", "--set", "train.max_steps=4"],
    "bench launch": ["--config", TINY, "--set", "train.max_steps=4"],
    "bench ingest": ["--config", TINY],
    # A preset topology file (written into the scratch directory) instead of calibrating,
    # and a table of 100,000 rows (the docs' 2,000,000-row one takes minutes to time).
    "bench planner": [
        *("--config", TINY, "--rounds", "1", "--set", "embedding.num_rows=100000"),
        *("--set", "sharding.topology=doc-test-topology.json"),
    ],
    "bench checkpoint": [
        *("--config", TINY, "--rows", "20000", "--rounds", "1"),
        *("--stall-rounds", "0", "--no-recovery"),
    ],
    "bench train": ["--config", TINY, "--ranks", "1", "--rounds", "1"],
    "bench pipeline": ["--config", TINY, "--ranks", "2", "--rounds", "1"],
    "bench kernel": ["--rounds", "1", "--dims", "16", "--batches", "512"],
    "sweep": [
        *("--budgets", "0.1", "--seeds", "0", "--set", "train.max_steps=4"),
        *("--set", "data.synthetic.num_train_rows=4096"),
        *("--set", "data.synthetic.num_test_rows=1024"),
    ],
}

MARKERS = ("bash", "bash long", "bash cluster")
UNMARKED_SHELLS = {"sh", "shell", "console", "zsh", "terminal", "shell-session"}
COMMAND_WORDS = {"dist-train", "make", "python", "python3", "pip", "ray", "docker", "kubectl"}
REPO_DIRS = ("launch", "docker", "docs", "dist_train", "planners", "tests")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence
    info: str
    body: list[tuple[int, str]]  # (line number, text without the fence's indent)


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    marker: str
    text: str  # continuation lines joined
    prelude: tuple[str, ...] = field(default=())  # the block's earlier exports

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_files() -> list[Path]:
    """README.md, then every docs/*.md (new ones included) by name."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    opened: tuple[int, str, str, int] | None = None
    body: list[tuple[int, str]] = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(text)
        if opened is None:
            if m:
                opened, body = (n, m["fence"], m["info"].strip(), len(m["indent"])), []
            continue
        start, fence, info, indent = opened
        if m and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence) and not m["info"]:
            out.append(Block(str(path.relative_to(REPO)), start, info, body))
            opened = None
            continue
        body.append((n, text[indent:] if text[:indent].isspace() else text.lstrip()))
    return out


def words(text: str) -> list[str]:
    return shlex.split(text, comments=True)


def is_setting(text: str) -> bool:
    """``export X=1`` or ``X=1 Y=2``: a line that only sets variables."""
    w = words(text)
    return bool(w) and (w[0] == "export" or all(ASSIGNMENT.match(x) for x in w))


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    settings: list[str] = []
    pending: list[str] = []
    first = 0
    for n, text in block.body:
        stripped = text.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            first = n
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        line = " ".join([*pending, stripped])
        pending = []
        out.append(Command(block.doc, first, block.info, line, tuple(settings)))
        if is_setting(line):
            settings.append(line)
    return out


def looks_like_command(line: str) -> bool:
    first = line.strip().removeprefix("$ ").split(" ", 1)[0]
    return first in COMMAND_WORDS or first.startswith(".venv/bin/")


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path)]


ALL_COMMANDS = [c for b in all_blocks() if b.info in MARKERS for c in commands(b)]


# --- static checks: the argument parser, files, config overrides ---


def program(argv: list[str]) -> tuple[str, list[str]]:
    """("dist-train" | "make" | "python -m MODULE" | the program, its arguments)."""
    rest = list(argv)
    while rest and ASSIGNMENT.match(rest[0]):  # VAR=value before the program
        rest.pop(0)
    if not rest:
        return "", []
    prog = Path(rest[0]).name
    if prog in ("python", "python3") and len(rest) > 2 and rest[1] == "-m":
        if rest[2] == "dist_train.cli":
            return "dist-train", rest[3:]
        return f"python -m {rest[2]}", rest[3:]
    return prog, rest[1:]


def parse(parser: argparse.ArgumentParser, argv: list[str], what: str) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code == 0:  # --help
            return argparse.Namespace()
        pytest.fail(f"{what}: the argument parser refuses {shlex.join(argv)}:\n{err.getvalue()}")


def driver_parser() -> argparse.ArgumentParser:
    # What dist_train/driver.py main() builds (importing the driver would import TorchRec).
    p = argparse.ArgumentParser(prog="python -m dist_train.driver")
    add_config_args(p)
    return p


def subcommand(prog: str, args: list[str]) -> str:
    """The SHRINK key: ``train``, ``bench planner``, ``make train``, ``python -m M``..."""
    if prog == "dist-train":
        ns = parse(build_parser(), args, "dist-train")
        sub = getattr(ns, "bench", None) or getattr(ns, "format", None)
        command = getattr(ns, "command", None) or "dist-train"  # None: --help
        return f"{command} {sub}" if sub else command
    if prog == "make":
        targets, skip = [], False
        for a in args:  # the words that are neither options, their values, nor VAR=value
            if not skip and not a.startswith("-") and not ASSIGNMENT.match(a):
                targets.append(a)
            skip = a in ("-o", "-C", "-f", "-I", "-W")
        return f"make {targets[0]}" if targets else "make"
    return prog


def check_paths(argv: list[str], what: str) -> None:
    """Config files and paths into the repository's source folders must exist."""
    for token in argv:
        for value in (token, token.split("=", 1)[-1]):
            if "://" in value or value.startswith(("-", "$")):
                continue
            into_repo = value.split("/", 1)[0] in REPO_DIRS and "/" in value
            if (into_repo or value.endswith((".yaml", ".yml"))) and "*" not in value:
                assert (REPO / value).exists(), f"{what}: {value} does not exist in the repository"


def check_job_args(ns: argparse.Namespace, what: str) -> None:
    """--config exists and the job config with these --set overrides validates."""
    if not hasattr(ns, "set"):
        return
    if getattr(ns, "command", None) == "validate":  # --set applies to each job config named
        for name in ns.files:
            if name.startswith("launch/configs/"):
                try:
                    load_config(REPO / name, list(ns.set))
                except ConfigError as err:
                    pytest.fail(f"{what}: {name} does not validate: {err}")
        return
    config = ns.config
    if config is None and getattr(ns, "command", None) == "sweep":
        config = DEFAULT_CONFIG.parent / ("adult.yaml" if ns.dataset == "adult" else "default.yaml")
    if config is not None:
        config = REPO / config
        assert config.is_file(), f"{what}: --config {ns.config} does not exist"
    overrides = list(ns.set)
    if getattr(ns, "resume", None):
        overrides.append(f"checkpoint.resume={ns.resume}")
    try:
        load_config(config, overrides)
    except ConfigError as err:
        pytest.fail(f"{what}: the job config does not validate: {err}")


def check_static(argv: list[str], what: str) -> str:
    """Parse and check one command line; return its SHRINK key."""
    check_paths(argv, what)
    prog, args = program(argv)
    if prog == "dist-train":
        check_job_args(parse(build_parser(), args, what), what)
    elif prog == "python -m dist_train.driver":
        check_job_args(parse(driver_parser(), args, what), what)
    elif prog == "python -m dist_train.launchers.ray_token":
        from dist_train.launchers.ray_token import build_parser as token_parser

        parse(token_parser(), args, what)
    elif prog.startswith("python -m dist_train"):
        pytest.fail(f"{what}: no parser known for {prog}; add it to test_doc_commands.py")
    elif prog == "make" and "train" in args:
        for a in args:
            if a.startswith("ARGS="):  # make train ARGS="..." passes them to dist-train train
                check_job_args(parse(build_parser(), ["train", *shlex.split(a[5:])], what), what)
    return subcommand(prog, args)


# --- running ---


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Each doc's directory: it looks like the checkout (symlinks) and collects the output."""
    dirs: dict[str, Path] = {}

    def for_doc(doc: str) -> Path:
        if doc not in dirs:
            root = tmp_path_factory.mktemp(Path(doc).stem)
            for name in (*REPO_DIRS, ".venv", "Makefile", "pyproject.toml", "README.md"):
                if (REPO / name).exists():
                    (root / name).symlink_to(REPO / name)
            if RUN_LONG:
                from planners.topology import CPU_PRESET, save_topology

                save_topology(CPU_PRESET, root / "doc-test-topology.json")
            dirs[doc] = root
        return dirs[doc]

    return for_doc


def strip_comment(text: str) -> str:
    """``text`` without its trailing ``# comment`` (a ``#`` outside quotes, after a blank)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def is_simple(text: str) -> bool:
    """One command: no pipe, list, redirection or background outside quotes."""
    lex = shlex.shlex(strip_comment(text), posix=True, punctuation_chars=True)
    return not any(set(t) <= set("|&;<>()") for t in lex)


def run(script: str, cwd: Path, timeout: int, what: str) -> None:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the workers too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{what}: still running after {timeout} s:\n{script}\n{out[-3000:]}")
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}:\n{script}\n{out[-4000:]}"


def test_command_blocks_are_marked() -> None:
    problems = []
    for b in all_blocks():
        where = f"{b.doc}:{b.line}"
        if b.info.split(" ", 1)[0] == "bash" and b.info not in MARKERS:
            problems.append(f"{where}: unknown marker ```{b.info} (use one of {MARKERS})")
        elif b.info in UNMARKED_SHELLS:
            problems.append(f"{where}: ```{b.info}: mark it {' / '.join(MARKERS)}")
        elif not b.info and any(looks_like_command(t) for _, t in b.body):
            problems.append(f"{where}: a command in a bare block: mark it {' / '.join(MARKERS)}")
    assert not problems, "\n".join(problems)
    assert sum(c.doc == "README.md" for c in ALL_COMMANDS) >= 10, "README's commands not found"


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=[c.id for c in ALL_COMMANDS])
def test_doc_command(cmd: Command, scratch: Callable[[str], Path]) -> None:
    what = f"{cmd.id} ({cmd.marker})"
    try:
        argv = words(cmd.text)
    except ValueError as err:
        pytest.fail(f"{what}: not a shell command line ({err}): {cmd.text}")
    key = check_static(argv, what)
    if key == "train" and any(r in cmd.text for r in RAY_RESTARTS):
        key = "train, ray restarts"
    if cmd.marker == "bash cluster" or is_setting(cmd.text):
        return
    if cmd.marker == "bash long":
        assert key in SHRINK, (
            f"{what}: no SHRINK entry for {key!r} in tests/integration/test_doc_commands.py: "
            f"add the flags that scale `{cmd.text}` down to seconds"
        )
        assert is_simple(cmd.text), f"{what}: a long command must be one simple command"
        check_static([*argv, *SHRINK[key]], f"{what}, shrunk")
        script = " ".join([strip_comment(cmd.text), *map(shlex.quote, SHRINK[key])])
        if not RUN_LONG:
            pytest.skip(f"long; DIST_TRAIN_DOC_LONG=1 runs: {script}")
    else:
        script = cmd.text
    run("\n".join([*cmd.prelude, script]), scratch(cmd.doc), TIMEOUT[cmd.marker], what)

"""``dist-train train`` starts the ranks' server before it imports the driver."""

from __future__ import annotations

import glob
import subprocess
import sys
from pathlib import Path

import pytest

from dist_train.cli import commands
from dist_train.cli.main import main
from dist_train.config.load import load_config
from dist_train.driver import _process_worker


def test_the_server_preloads_the_module_of_the_driver_rank_function() -> None:
    assert _process_worker.__module__ == commands.TRAIN_WORKER_MODULE


def test_cli_and_the_rank_server_module_import_no_torch() -> None:
    """What runs before the server starts must stay light, or nothing overlaps."""
    code = (
        "import sys, dist_train.cli.main, dist_train.launchers.rank_server; "
        "print(sorted(m for m in ('torch', 'torchrec', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


_SERVER_LIFE = """
import multiprocessing.forkserver as fs, os, sys
from dist_train.launchers.rank_server import _server_pid, rank_server_started

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return os.waitpid(pid, os.WNOHANG)[0] == 0

if sys.argv[1] == "ours":
    with rank_server_started("dist_train.driver"):
        pid = _server_pid(fs._forkserver)
        assert pid is not None and alive(pid)
    assert _server_pid(fs._forkserver) is None and not alive(pid)  # stopped, mid-import
else:
    fs.set_forkserver_preload(["json"])  # a light server of the caller's own
    fs.ensure_running()
    pid = _server_pid(fs._forkserver)
    with rank_server_started("dist_train.driver"):
        assert _server_pid(fs._forkserver) == pid
    assert alive(pid)  # the caller's server, left running
print("ok")
"""


def test_the_rank_server_is_stopped_by_the_block_that_started_it_only() -> None:
    for case in ("ours", "running"):  # in fresh processes: pytest's own server stays
        out = subprocess.run(
            [sys.executable, "-c", _SERVER_LIFE, case], capture_output=True, text=True, timeout=120
        )
        assert out.stdout.strip() == "ok", (case, out.stderr[-2000:])


def test_a_bad_config_fails_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from dist_train.cli.main import main; "
        f"rc = main(['train', '--set', 'ray.num_workers=-1', '--set', 'output_dir={tmp_path}']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["2", "False"], out.stderr[-2000:]
    assert "ray.num_workers" in out.stderr


def test_the_server_starts_early_only_for_cpu_ranks_of_the_processes_launcher() -> None:
    def cpu_ranks(*overrides: str) -> bool:
        return commands._cpu_ranks(load_config(None, list(overrides)))

    gpus = bool(glob.glob("/dev/nvidia[0-9]*"))
    assert cpu_ranks("launcher=processes", "train.device=cpu")
    assert cpu_ranks("launcher=processes", "train.device=auto") is not gpus
    assert not cpu_ranks("launcher=processes", "train.device=cuda")
    assert not cpu_ranks("launcher=ray", "train.device=cpu")


def test_resume_takes_the_path_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(commands, "_load", lambda config, overrides: seen.append(overrides))
    path = "/ckpts/run #2/step-00000048"  # YAML would read ` #2...` as a comment
    assert main(["train", "--resume", path]) == 2  # (the stub loads nothing)
    assert load_config(None, seen[0]).checkpoint.resume == path


def test_an_unknown_flag_shows_its_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse showed the top level's usage, which lists no flag of the command."""
    for argv, usage in [
        (["train", "--sett", "x"], "usage: dist-train train [-h] [--config CONFIG]"),
        (["bench", "train", "--epochs", "2"], "usage: dist-train bench train [-h]"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(usage), err
        assert f"unrecognized arguments: {' '.join(argv[-2:])}" in err


def test_an_override_with_an_empty_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    # it was applied to the top level as the key '' ("<top level>: unknown key")
    for item in ("=3", "train..batch_size=3"):
        assert main(["show-config", "--set", item]) == 2
        assert f"override {item!r}: expected KEY.PATH=VALUE (an empty key)" in (
            capsys.readouterr().err
        )


def test_output_into_a_reader_that_stopped_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dist-train ... | head` printed a BrokenPipeError traceback, and `train | head` one a
    log line (logging's handleError)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dist_train.cli", "show-config", "--reference"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the interpreter has started: every write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""

    from dist_train.logs import LOG, setup_logging

    class Gone:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    setup_logging("normal")
    monkeypatch.setattr(sys, "stdout", Gone())
    LOG.info("a line the reader will not read")
    monkeypatch.undo()
    assert "Logging error" not in capsys.readouterr().err


def test_a_commands_own_batches_print_no_torch_fx_warning() -> None:
    """torch.fx warns once a process that its is_fx_tracing API changed, when TorchRec makes
    a KeyedJaggedTensor: `bench train` printed it from its own process, between its lines."""
    code = (
        "from dist_train.logs import setup_logging; setup_logging(); import torch; "
        "from torchrec import KeyedJaggedTensor; "
        "KeyedJaggedTensor(keys=['a'], values=torch.tensor([1]), lengths=torch.tensor([1]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "is_fx_tracing" not in out.stderr, out.stderr[-2000:]


def test_every_command_the_parser_knows_has_one_to_run() -> None:
    """The grammar and the commands live in two modules: a command added to one alone
    would parse and then fail with a KeyError, or never be reachable."""
    import argparse

    from dist_train.cli.parser import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(commands._COMMANDS)

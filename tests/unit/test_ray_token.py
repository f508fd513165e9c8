"""Ray's token file is its owner's alone (dist_train/launchers/ray_token.py)."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest

from dist_train.launchers import local_cluster
from dist_train.launchers.ray_token import keep_token_private


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_token_ray_would_write_readable_by_all_is_written_for_its_owner_alone(
    home: Path,
) -> None:
    """Ray wrote ~/.ray/auth_token with the umask, 0644 in a folder of 0755: any user of the
    machine could read the token that guards the cluster (a helper's audit)."""
    path = keep_token_private()
    assert path == home / ".ray" / "auth_token"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 bits in hex, as Ray's own
    assert keep_token_private() == path and path.read_text() == token  # kept, not replaced


def test_an_earlier_token_of_rays_is_made_its_owners_alone(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = home / ".ray" / "auth_token"
    path.parent.mkdir()
    path.write_text("a" * 64)
    path.chmod(0o644)
    with caplog.at_level("WARNING", logger="dist_train"):
        assert keep_token_private() == path
    assert _mode(path) == 0o600 and path.read_text() == "a" * 64
    assert f"{path}: made readable by its owner alone (it was -rw-r--r--" in caplog.text


def test_a_token_set_elsewhere_or_authentication_off_writes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "mine"))
    assert keep_token_private() is None
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "b" * 64)
    assert keep_token_private() is None
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert keep_token_private() is None
    assert not (home / ".ray").exists() and not (home / "mine").exists()


def test_local_cluster_start_writes_the_token_before_ray_start(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launch/local_cluster.sh ran `ray get-auth-token --generate`, which wrote it 0644."""
    seen: list[int] = []

    def start_head(args: list[str], env: object = None) -> tuple[int, int, str]:
        seen.append(_mode(home / ".ray" / "auth_token"))
        return 0, 1, "ray start failed\n"  # no cluster to stop: group 0

    monkeypatch.setattr(local_cluster, "start_head", start_head)
    monkeypatch.setattr(tempfile, "tempdir", str(home))  # its record's folder (cached)
    assert local_cluster.start(0, []) == 1
    assert seen == [0o600]


def test_the_command_writes_the_token_and_says_where(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dist_train.launchers.ray_token import main

    assert main([]) == 0
    path = home / ".ray" / "auth_token"
    assert capsys.readouterr().out == f"{path}: readable by its owner alone\n"
    assert _mode(path) == 0o600

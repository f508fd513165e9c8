"""Relative paths under Ray: Ray Train runs workers in its session directory, so the driver
resolves every path against the directory the user ran from before any worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_train.config import load_config
from dist_train.driver import run_job

TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
pytestmark = pytest.mark.ray


def test_relative_output_dir_lands_where_the_summary_says_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    over = ["launcher=ray", "output_dir=rel-out", "checkpoint.every_steps=8"]
    first = run_job(load_config(TINY, [*over, "train.max_steps=8"]))
    saved = tmp_path / "rel-out" / "tiny" / "checkpoints" / "step-00000008"
    assert first["checkpoint"] == str(saved)
    assert (saved / "meta.json").is_file()
    assert first["run_dir"] == str(tmp_path / "rel-out" / "tiny")

    rest = run_job(load_config(TINY, [*over, "checkpoint.resume=latest"]))
    assert rest["steps"] == 16
    log = [json.loads(line) for line in (tmp_path / "rel-out" / "tiny" / "metrics.jsonl").open()]
    assert [e["checkpoint"] for e in log if e["event"] == "resume"] == [str(saved)]

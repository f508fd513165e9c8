"""`dist-train evaluate`: a committed checkpoint's test metrics, training nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dist_train.cli import main
from dist_train.config import JobConfig
from dist_train.data.synthetic import GeneratedData
from dist_train.driver import run_job

CONFIG = "job.yaml"


@pytest.fixture
def trained(small_cfg: JobConfig, small_data: GeneratedData, tmp_path: Path) -> dict[str, object]:
    """A 2-rank job trained to its end (its checkpoint saved) and its config file."""
    raw = small_cfg.model_dump(mode="json")
    raw["launcher"] = "processes"
    raw["data"].update(train_path=str(small_data.train_dir), test_path=str(small_data.test_dir))
    (tmp_path / CONFIG).write_text(yaml.safe_dump(raw))
    summary = run_job(JobConfig.model_validate(raw))
    assert summary["checkpoint"]
    return summary


def _evaluate(tmp_path: Path, *args: str) -> int:
    return main(["evaluate", *args, "--config", str(tmp_path / CONFIG)])


def test_a_checkpoint_evaluates_as_training_did_and_leaves_its_run_alone(
    trained: dict[str, object],
    tmp_path: Path,
    small_data: GeneratedData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The final checkpoint's metrics are the run's own (the same weights, the same test
    rows), on its 2 ranks and resharded to 1; the run's summary and log are untouched; other
    data (--set data.test_path) is evaluated as asked."""
    run_dir = Path(str(trained["run_dir"]))
    before = {f: (run_dir / f).read_bytes() for f in ("summary.json", "metrics.jsonl")}
    capsys.readouterr()
    assert _evaluate(tmp_path, "latest") == 0
    out = capsys.readouterr().out
    folder = run_dir / "evaluations" / Path(str(trained["checkpoint"])).name
    summary = json.loads((folder / "evaluation.json").read_text())
    assert summary["checkpoint"] == trained["checkpoint"] and summary["step"] == trained["steps"]
    for key in ("test_auc", "test_log_loss", "test_ne", "test_examples"):
        assert summary[key] == trained[key], key
    assert f"test AUC          {trained['test_auc']:.4f}\n" in out
    assert f"outputs           {folder}  (evaluation.json, metrics.jsonl)" in out
    (record,) = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert record["event"] == "eval" and record["test_auc"] == trained["test_auc"]
    assert {f: (run_dir / f).read_bytes() for f in before} == before

    one = tmp_path / "one-rank"
    assert (
        _evaluate(
            tmp_path, str(trained["checkpoint"]), "--set", "ray.num_workers=1", "--out", str(one)
        )
        == 0
    )
    resharded = json.loads((one / "evaluation.json").read_text())
    assert resharded["world_size"] == 1
    assert resharded["test_auc"] == pytest.approx(trained["test_auc"], abs=1e-6)

    other = ["--set", f"data.test_path={small_data.train_dir}", "--out", str(tmp_path / "o")]
    assert _evaluate(tmp_path, "latest", *other) == 0
    on_train = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert on_train["test_examples"] == 8192 != trained["test_examples"]


def test_what_cannot_be_evaluated_is_named_before_any_worker_starts(
    trained: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    cases = [
        (["latest", "--set", "name=other"], "no committed checkpoint under "),
        ([str(tmp_path / "nope")], f"{tmp_path / 'nope'}: no such checkpoint folder"),
        (["latest", "--set", "model.top_mlp=[32]"], "the checkpoint is of another model"),
        (["latest", "--set", "seed=5"], "was trained with other hashing of the features"),
    ]
    for args, why in cases:
        assert _evaluate(tmp_path, *args) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("error: checkpoint: ") and why in err, err
        assert not (tmp_path / "default" / "evaluations").exists()


def test_evaluate_under_ray(trained: dict[str, object], tmp_path: Path) -> None:
    """The same evaluation from Ray Train's workers."""
    out = tmp_path / "ray-eval"
    assert _evaluate(tmp_path, "latest", "--set", "launcher=ray", "--out", str(out)) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["test_auc"] == pytest.approx(trained["test_auc"], abs=1e-6)
    assert summary["world_size"] == 2

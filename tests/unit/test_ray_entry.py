"""What Ray Train's processes unpickle of a job: the training function and its config."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle

from dist_train.config.load import load_config
from dist_train.launchers import ray_train
from dist_train.launchers.ray_entry import PAYLOAD
from dist_train.train.worker_inputs import WorkerInputs

REPO = Path(__file__).resolve().parents[2]
# torch itself is no saving: Ray Train's own TorchConfig, which the controller unpickles too,
# imports it
HEAVY = ("torchrec", "fbgemm_gpu", "dist_train.train", "dist_train.launchers.ray_train")


class _Handed(Exception):
    """Ends ``_fit`` where Ray Train would start."""


def test_ray_trains_processes_unpickle_a_job_without_torchrec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train's controller unpickles the trainer's config before it starts any worker, a
    worker the function too: with the job's ``WorkerInputs`` in the config, the controller
    imported TorchRec, FBGEMM and the training modules first (about 2.5 s of one core per
    Ray run), and a worker imported FBGEMM before it quieted its loggers."""
    handed: dict[str, Any] = {}

    def trainer(**kwargs: Any) -> None:
        handed.update(kwargs)
        raise _Handed

    monkeypatch.setattr(ray_train, "TorchTrainer", trainer)
    cfg = load_config(REPO / "launch" / "configs" / "tiny.yaml", [])
    inputs = WorkerInputs(train_groups=[], test_groups=[], run_dir=str(tmp_path))
    with pytest.raises(_Handed):
        ray_train._fit(cfg, inputs, private=True)
    pickled = tmp_path / "job.pkl"
    job = (handed["train_loop_per_worker"], handed["train_loop_config"])
    pickled.write_bytes(ray.cloudpickle.dumps(job))
    probe = (
        "import pickle, sys\n"
        f"function, config = pickle.loads(open({str(pickled)!r}, 'rb').read())\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # what a worker opens: the driver's config and inputs, as they were
    payload = pickle.loads(handed["train_loop_config"][PAYLOAD])
    assert payload["inputs"] == inputs and payload["config"] == cfg.model_dump(mode="json")

"""What Ray Train's controller unpickles of a job: the training function and its config."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import ray.cloudpickle

from dist_train.config import load_config
from dist_train.launchers.ray_entry import PAYLOAD, ray_worker, train_loop_config
from dist_train.launchers.ray_train import _worker_payload
from dist_train.train.worker_inputs import WorkerInputs

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchrec", "fbgemm_gpu", "dist_train.train", "dist_train.launchers.ray_train")


def test_the_controller_unpickles_a_job_without_importing_torch(tmp_path: Path) -> None:
    """The controller unpickles the function and its config (Ray's cloudpickle) before it
    starts any worker; by reference to the launcher, with the job's ``WorkerInputs`` in it,
    that imported torch, TorchRec and FBGEMM first, about 3 s of one core per Ray run."""
    cfg = load_config(REPO / "launch" / "configs" / "tiny.yaml", [])
    inputs = WorkerInputs(train_groups=[], test_groups=[], run_dir=str(tmp_path))
    config = train_loop_config(_worker_payload(cfg, inputs, private=True))
    pickled = tmp_path / "job.pkl"
    pickled.write_bytes(ray.cloudpickle.dumps((ray_worker, config)))
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
    function, opened = ray.cloudpickle.loads(pickled.read_bytes())
    payload = pickle.loads(opened[PAYLOAD])
    assert function is ray_worker
    assert payload["inputs"] == inputs and payload["config"] == cfg.model_dump(mode="json")

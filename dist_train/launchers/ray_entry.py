"""The function Ray Train runs on each worker, in a module that imports nothing heavy.

Ray Train's controller unpickles the training function and its config before it starts any
worker. Pickled by reference to the launcher, with the job's ``WorkerInputs`` beside it, they
had the controller import torch, TorchRec and FBGEMM first: about 3 s of one core, on the
path of every Ray run's start. Here the controller imports this module only, and the job's
payload stays bytes until a worker opens it."""

from __future__ import annotations

import pickle
from typing import Any

PAYLOAD = "payload"


def train_loop_config(payload: dict[str, Any]) -> dict[str, bytes]:
    """``payload`` as the ``train_loop_config`` that :func:`ray_worker` reads."""
    return {PAYLOAD: pickle.dumps(payload)}


def ray_worker(config: dict[str, bytes]) -> None:
    """Run one rank on the payload of :func:`train_loop_config`."""
    from dist_train.logs import quiet_worker_logs

    quiet_worker_logs()  # first: FBGEMM logs a line per library it loads, at INFO
    from dist_train.launchers.ray_worker import run_rank

    # the launcher's own pickle of its own objects, written by this job's driver
    run_rank(pickle.loads(config[PAYLOAD]))

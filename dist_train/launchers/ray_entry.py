"""The function Ray Train runs on each worker, and the job handed to it.

It imports nothing heavy. A worker imports this module first, to unpickle the function,
and quiets the libraries' loggers before it imports them (FBGEMM logs a line per library it
loads). Ray Train's controller, which unpickles the config before it starts any worker,
finds the job there as bytes: as a ``WorkerInputs`` it imported TorchRec, FBGEMM and the
training modules first, about 2.5 s of one core on the path of every Ray run's start.
"""

from __future__ import annotations

import pickle
from typing import Any

PAYLOAD = "payload"


def train_loop_config(payload: dict[str, Any]) -> dict[str, bytes]:
    """``payload`` as the ``train_loop_config`` that :func:`train_loop_per_worker` reads."""
    return {PAYLOAD: pickle.dumps(payload)}


def train_loop_per_worker(config: dict[str, bytes]) -> None:
    """Run one rank on the payload of :func:`train_loop_config`."""
    from dist_train.logs import quiet_worker_logs

    quiet_worker_logs()  # before the imports below, which load FBGEMM
    from dist_train.launchers.ray_worker import run_rank

    # the launcher's own pickle of its own objects, made by this job's driver
    run_rank(pickle.loads(config[PAYLOAD]))

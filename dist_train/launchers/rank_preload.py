"""Imported once by the forkserver that plain-process ranks fork from (see
:func:`dist_train.launchers.processes.run_processes`): what every rank would otherwise import
and load for itself, about 5 s of CPU a rank on the project's machines."""

import contextlib

import torchrec  # noqa: F401

import dist_train.train.loop  # noqa: F401
from dist_train import kernels

# pyarrow imports pandas, where installed, on a rank's first batch (0.2 s): not a dependency
with contextlib.suppress(ImportError):
    import pandas  # noqa: F401

kernels.load()

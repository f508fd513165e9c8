"""Imported once by the forkserver that plain-process ranks fork from (see
:func:`dist_train.launchers.processes.run_processes`): what every rank would otherwise import
and load for itself, about 5 s of CPU a rank on the project's machines."""

import contextlib
import signal

# Ctrl-C is the command's to report: the server ignores it once it has preloaded (as
# multiprocessing's forkserver does), and the command stops it. Meanwhile, seconds of
# imports, it printed the interrupted import's traceback. Ranks take it back (_entry).
signal.signal(signal.SIGINT, signal.SIG_IGN)

import torchrec  # noqa: E402, F401

import dist_train.train.loop  # noqa: E402, F401
from dist_train import kernels  # noqa: E402

# pyarrow imports pandas, where installed, on a rank's first batch (0.2 s): not a dependency
with contextlib.suppress(ImportError):
    import pandas  # noqa: F401

kernels.load()

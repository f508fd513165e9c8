"""Keep worker output to our own progress lines.

FBGEMM logs every TBE's full argument list at INFO, TorchRec and torch.distributed emit
deprecation warnings on every run; none of it helps a user reading progress.
"""

from __future__ import annotations

import logging
import warnings


def quiet_worker_logs() -> None:
    """Raise library loggers to WARNING and drop library deprecation warnings."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("fbgemm_gpu", "torchrec", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch.fx warns on every TorchRec forward that its is_fx_tracing API changed.
    logging.getLogger("torch.fx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(rec)?\..*")

"""Console messages: ``dist_train``'s own logger, and library logs kept out of the way.

Every message goes through the ``dist_train`` logger (:data:`LOG`), printed as
``[dist-train] ...`` (:func:`setup_logging`; ``--quiet`` and ``--verbose`` set its level on the
driver, which hands it to the workers). FBGEMM logs every TBE's full argument list at INFO,
TorchRec and torch.distributed emit deprecation warnings on every run; none of it helps a user
reading progress (:func:`quiet_worker_logs`).
"""

from __future__ import annotations

import logging
import sys
import warnings


class _DropMessage(logging.Filter):
    """Drops a library's records that hold ``phrase``."""

    def __init__(self, phrase: str) -> None:
        super().__init__()
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        return self.phrase not in record.getMessage()


def drop_message(logger: str, phrase: str) -> None:
    """Keep ``logger``'s records that hold ``phrase`` off the console (added once)."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, _DropMessage) and f.phrase == phrase for f in target.filters):
        target.addFilter(_DropMessage(phrase))


def worded_for_users(error: BaseException) -> bool:
    """Whether ``error`` is one of this project's (``dist_train``'s or ``planners``'),
    raised with a message for the user, which says more than its traceback would; a
    library's error, or a bug's, is not."""
    return type(error).__module__.startswith(("dist_train.", "planners."))


def quiet_worker_logs() -> None:
    """Raise library loggers to WARNING and drop library deprecation warnings."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("fbgemm_gpu", "torchrec", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _quiet_torch_fx()
    # TorchRec warns for every replicated table that it ignores the sharder's cache
    # parameters; replicated tables train with their own optimizer on purpose.
    drop_message("torchrec.distributed.utils", "caching params will be ignored")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(rec)?\..*")


def _quiet_torch_fx() -> None:
    # torch.fx warns, once a process, that its is_fx_tracing API changed: TorchRec asks it
    # at every KeyedJaggedTensor made (a batch's) and every forward
    logging.getLogger("torch.fx").setLevel(logging.ERROR)


LOG = logging.getLogger("dist_train")
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class _Console(logging.Handler):
    """``[dist-train] message`` lines: INFO and below on stdout, warnings and errors on
    stderr (``[dist-train] WARNING: ...``). The stream is looked up at each record, so a
    test's or Ray's redirection of stdout is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"[dist-train] {record.levelname}: {message}\n")
                sys.stderr.flush()
            else:
                # Not print(): Ray Train patches print() into its logger, duplicating lines.
                sys.stdout.write(f"[dist-train] {message}\n")
                sys.stdout.flush()
        except BrokenPipeError:
            pass  # `dist-train train | head`: the reader stopped reading; the run goes on
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


def setup_logging(verbosity: str = "normal") -> None:
    """Send ``dist_train``'s messages to the console at ``verbosity`` (quiet: warnings and
    errors only; verbose: debug lines too). Idempotent; workers call it with the driver's."""
    if verbosity not in LEVELS:
        raise ValueError(f"verbosity must be one of {sorted(LEVELS)}, not {verbosity!r}")
    LOG.setLevel(LEVELS[verbosity])
    _quiet_torch_fx()  # the commands' own process builds batches too (bench, validate)
    LOG.propagate = False  # Ray and libraries configure the root logger their own way
    if not any(isinstance(h, _Console) for h in LOG.handlers):
        LOG.addHandler(_Console())


def verbosity() -> str:
    """The verbosity set by :func:`setup_logging` ("normal" if none was)."""
    for name, level in LEVELS.items():
        if LOG.level == level:
            return name
    return "normal"

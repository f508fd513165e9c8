"""A checkpoint's errors: :class:`CheckpointError`, and DCP's errors made one line
(:func:`reason`), what torch's safe unpickler refused named (:func:`safe_load_refusal`), or
the stop they wrap raised again (:func:`raise_a_wrapped_stop`).
"""

from __future__ import annotations

import re

from torch.distributed.checkpoint.api import CheckpointException


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


_REFUSED = "Weights only load failed"  # torch's weights_only unpickler's refusal opens so
# what it refused, by the shapes of torch.serialization's messages (its _get_wo_message)
_WHAT_WAS_REFUSED = (
    re.compile(r"GLOBAL (\S+) was not an allowed global by default"),
    re.compile(r"GLOBAL \S+ whose module \S+ is blocked"),
    re.compile(r"\S+ must be \S+ to load"),
    re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)"),
    re.compile(r"Weights only load failed\.\s*\n\s*\n(\S[^\n]*)"),
)


def safe_load_refusal(err: BaseException) -> str | None:
    """What torch's ``weights_only`` unpickler refused in ``err``'s text (a global, an
    opcode), None where it is no such refusal. Its message is mostly advice: to load the file
    with ``weights_only=False``, which runs the code a crafted file holds, or to allow its
    globals. Only what was refused is kept."""
    text = str(err)
    start = text.find(_REFUSED)
    if start < 0:
        return None
    text = text[start:]
    for pattern in _WHAT_WAS_REFUSED:
        found = pattern.search(text)
        if found:
            what = found.group(1) if pattern.groups else found.group(0)
            if pattern is _WHAT_WAS_REFUSED[0]:
                what = f"GLOBAL {what}, not among the types a checkpoint holds"
            break
    else:
        what = "a pickle it does not load"
    return f"refused by the safe (weights-only) unpickler: {what.strip().rstrip('.')}"


def raise_a_wrapped_stop(err: BaseException) -> None:
    """Raise the Ctrl-C or SIGTERM (a KeyboardInterrupt; :class:`~dist_train.stopping.Terminated`
    stays one) that DCP caught inside a read and wrapped in a CheckpointException: a stop,
    which was reported as an unreadable checkpoint (exit 1, where a stop exits 130 or 143)."""
    if isinstance(err, CheckpointException):
        for failure, _ in err.failures.values():
            if isinstance(failure, KeyboardInterrupt):
                raise failure from None


def reason(err: BaseException) -> str:
    """The last line of a DCP error (a CheckpointException carries every rank's traceback),
    or what the safe unpickler refused in it."""
    refused = safe_load_refusal(err)
    if refused:
        return refused
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__

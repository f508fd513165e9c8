"""Each rank's CPU random generator in a checkpoint: its state encoded for ``meta.json``
(``torch_rng_states``, one a rank), checked when ``meta.json`` is read, and restored on
load where the world size is the saved one."""

from __future__ import annotations

import base64
from typing import Any

import torch
import torch.distributed as dist


def rng_state_bytes() -> bytes:
    """This process's CPU generator state, as torch holds it."""
    return torch.get_rng_state().numpy().tobytes()


def rng_state() -> str:
    """:func:`rng_state_bytes` as base64: each rank's entry in ``meta.json``."""
    return base64.b64encode(rng_state_bytes()).decode()


def is_rng_state(state: Any) -> bool:
    """Base64 of a CPU generator's state, as :func:`rng_state` writes it: of its length, and
    one a generator takes (its Mersenne Twister's state checked by torch)."""
    try:
        raw = base64.b64decode(state, validate=True) if isinstance(state, str) else b""
        if len(raw) != len(rng_state_bytes()):
            return False
        torch.Generator().set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        return True
    except (ValueError, RuntimeError):
        return False


def restore_rng_state(states: list[str] | None) -> None:
    """This rank's generator as ``states`` (``meta.json``'s, checked by :func:`is_rng_state`)
    saved it; left as it is where the world size differs (the ranks start afresh) or none
    were saved."""
    if states and len(states) == dist.get_world_size():
        state_bytes = bytearray(base64.b64decode(states[dist.get_rank()]))
        torch.set_rng_state(torch.frombuffer(state_bytes, dtype=torch.uint8))

"""What a checkpoint holds of a trainer (its model's and optimizer's state dicts; each rank's
RNG state is :mod:`.rng`'s), and the ranks' agreement on a save's or a load's outcome.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.distributed as dist

from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.sharded_moments import Wrapped, shard_like_weights


class Trainer(Protocol):
    """What a checkpoint saves and loads: a model and its optimizer, each with a state dict
    (``dist_train.train.trainer.Trainer``)."""

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def optimizer(self) -> Any: ...


def trainer_state(trainer: Trainer) -> tuple[dict[str, Any], Wrapped]:
    """The model's and optimizer's state dicts, a sharded table's torch optimizer state
    placed as its weight (:mod:`dist_train.checkpoint.sharded_moments`); what was so placed."""
    state = {"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}
    return state, shard_like_weights(state)


def agree(problem: str | None, group: dist.ProcessGroup | None = None, cause: bool = False) -> None:
    """Raise CheckpointError on every rank if any rank has a ``problem`` (so no rank waits in
    a collective the others left). Where some rank's problem is the ``cause`` (its own
    storage's error), the others' (what it did to a shared write) are left out."""
    problems: list[tuple[str | None, bool]] = [(None, False)] * dist.get_world_size(group)
    dist.all_gather_object(problems, (problem, cause), group=group)
    causes = [p for p, c in problems if p is not None and c]
    found = list(dict.fromkeys(causes or [p for p, _ in problems if p is not None]))
    if found:
        raise CheckpointError("; ".join(found))

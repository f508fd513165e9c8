"""Training through TorchRec's ``TrainPipelineSparseDist`` (``train.pipeline``).

The pipeline starts the next batch's input dist (the ids' all-to-all) before this batch's
forward and waits for it after; on GPUs it also copies the batch after next to the device on
a side stream. It therefore reads two batches ahead of the one it trains: :func:`pipelined_steps`
yields each batch with its loss only once it is trained, so the loop's step count, checkpoint
positions and row ledger follow trained batches, never read ones.

The pipeline calls the model on a whole batch, and finds the sharded tables' inputs by
tracing the model class's ``forward`` with torch.fx. While it runs, the model's class is a
subclass whose ``forward`` takes a :class:`~dist_train.data.batch.Batch` and returns its loss
(:func:`batch_forward`); the class and the sharded modules' forwards are restored after.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel, get_unwrapped_module
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from dist_train.data.batch import Batch
from dist_train.train.unpooled_row_wise import drop_routings_in_flight


def _batch_loss(self: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's forward: (loss to backpropagate, loss it returns)."""
    logits = super(type(self), self).forward(batch.dense, batch.sparse)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    return loss, loss.detach()


_BATCH_FORWARD_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _batch_forward_class(base: type[nn.Module]) -> type[nn.Module]:
    # one subclass per model class: every epoch's pipeline finds the same one
    if base not in _BATCH_FORWARD_CLASSES:
        name = f"Pipelined{base.__name__}"
        _BATCH_FORWARD_CLASSES[base] = type(name, (base,), {"forward": _batch_loss})
    return _BATCH_FORWARD_CLASSES[base]


@contextmanager
def batch_forward(model: DistributedModelParallel) -> Iterator[None]:
    """While inside, ``model`` is called on a :class:`Batch` and returns (loss, loss)."""
    module: nn.Module = get_unwrapped_module(model)
    base = type(module)
    module.__class__ = _batch_forward_class(base)
    try:
        yield
    finally:
        module.__class__ = base


def pipelined_steps(
    model: DistributedModelParallel,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    batches: Iterator[Batch],
) -> Generator[tuple[Batch, float], None, None]:
    """Train ``model`` on each of ``batches`` in order through TorchRec's pipeline; yields each
    batch (as read, before any copy to the device) and its loss once its step is done.

    Every batch read is trained before this returns: the pipeline drains at the end. Closed
    early, it forgets the batches it read ahead (the model is usable again).
    """
    read: deque[Batch] = deque()

    def reading() -> Iterator[Batch]:
        for batch in batches:
            read.append(batch)
            yield batch

    model.train()
    with batch_forward(model):
        pipeline: TrainPipelineSparseDist[Batch, torch.Tensor] = TrainPipelineSparseDist(
            model, optimizer, device, execute_all_batches=True
        )
        source = reading()
        try:
            while True:
                try:
                    loss = pipeline.progress(source)
                except StopIteration:
                    return
                if not pipeline._pipelined_modules:
                    # TorchRec falls back to plain steps without a word when its trace
                    # cannot reach the sharded tables' inputs
                    raise RuntimeError(
                        f"train.pipeline: TorchRec's pipeline found no sharded table it can "
                        f"pipeline in {type(get_unwrapped_module(model)).__name__}.forward; "
                        "set train.pipeline=false"
                    )
                yield read.popleft(), float(loss)
        finally:
            pipeline.detach()
            if read:  # stopped early: batches read ahead will not be trained
                drop_routings_in_flight(model)

"""How a job averages its dense network across ranks: bare on one rank, else in DDP with
its gradients in one fixed layout, so that a resumed run sums them as an uninterrupted one
does (docs/checkpoint.md, "Exact resume")."""

# no `from __future__ import annotations`: DDP checks its hook's annotations as objects
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import DataParallelWrapper, DefaultDataParallelWrapper
from torchrec.distributed.types import ShardingEnv


class OneRankDense(DataParallelWrapper):
    """The dense network of a one-rank job, on its device and not in DDP: with nothing to
    average, DDP's hooks, bucket copies and all-reduce cost about 3% of a step
    (docs/performance_log.md, "One rank without DDP")."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        dmp._dmp_wrapped_module.to(device)


ONE_BUCKET_MB = 2**20  # every dense gradient in one bucket, whatever the network's size


@dataclass(frozen=True)
class _FixedOrder:
    """What :func:`_all_reduce_in_fixed_order` needs: each dense parameter's place in the
    network's order, and the ranks to average over."""

    place: dict[torch.Tensor, int]
    group: dist.ProcessGroup | None
    world: int


def _all_reduce_in_fixed_order(
    state: _FixedOrder, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's mean of the bucket's gradients (DDP's own hook's: divided by the ranks, then
    summed), each parameter's laid out by its place in the network whatever the bucket's
    layout: gloo's ring over 3 or more ranks adds a value's terms in an order set by its
    position in the flat tensor."""
    buffer, params = bucket.buffer(), bucket.parameters()
    bounds = list(itertools.accumulate((p.numel() for p in params), initial=0))
    views = [buffer[a:b] for a, b in itertools.pairwise(bounds)]  # (as DDP lays them out)
    order = sorted(range(len(params)), key=lambda i: state.place[params[i]])
    flat = torch.cat([views[i] for i in order]).div_(state.world)
    summed = dist.all_reduce(flat, group=state.group, async_op=True)
    assert summed is not None  # (async_op)

    def back(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        out, start = done.value()[0], 0
        for i in order:
            _copy_on_this_thread(views[i], out[start : start + views[i].numel()])
            start += views[i].numel()
        return buffer

    return summed.get_future().then(back)


def _copy_on_this_thread(into: torch.Tensor, values: torch.Tensor) -> None:
    """``into.copy_(values)``; on CPU by numpy, on the calling thread: the hook's callback
    runs on gloo's thread, and an ATen copy that large opens an OpenMP team there, which
    makes libgomp put every worker to sleep between parallel regions (docs/performance_log.md,
    "OpenMP's workers asleep")."""
    if into.device.type == "cpu":
        np.copyto(into.numpy(), values.numpy())
    else:
        into.copy_(values)


class DenseInFixedOrder(DefaultDataParallelWrapper):
    """The dense network in DDP (as TorchRec's default wrapper), its gradients in one bucket,
    averaged in a fixed layout. TorchRec's DDP sums the first step's gradients in one bucket
    in the parameters' order, then rebuilds its buckets in the order the backward made them:
    a resumed run's first step was a first step, and at 3 ranks or more gloo's ring summed
    its gradients in another order, 1-2 ulp off the uninterrupted run's (2 ranks add two
    numbers, alike in any order). docs/checkpoint.md, "Exact resume"."""

    def __init__(self) -> None:
        super().__init__(bucket_cap_mb=ONE_BUCKET_MB)

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        super().wrap(dmp, env, device)
        ddp = dmp._dmp_wrapped_module
        if isinstance(ddp, DistributedDataParallel):  # (not where every parameter is sharded)
            place = {p: i for i, p in enumerate(ddp.module.parameters())}
            group = env.process_group
            world = dist.get_world_size(group)
            ddp.register_comm_hook(_FixedOrder(place, group, world), _all_reduce_in_fixed_order)


def dense_data_parallel(world_size: int) -> DataParallelWrapper:
    """How the dense network is averaged across ``world_size`` ranks: bare on one
    (:class:`OneRankDense`), else in DDP in a fixed layout (:class:`DenseInFixedOrder`)."""
    return OneRankDense() if world_size == 1 else DenseInFixedOrder()

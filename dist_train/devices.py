"""Which device a job's ranks train on, and the process-group backend that goes with it.

``train.device: auto`` means CUDA when the launcher can give every rank its own GPU (a Ray
cluster with GPU resources; this machine's CUDA devices for plain processes), else CPU. The
driver decides once, plans for that device, and ships the answer to the workers.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

DeviceType = Literal["cpu", "cuda"]

# CUDA tensors go over nccl; CPU tensors (row ledgers, metrics, object collectives, 2D merge
# bookkeeping) keep using gloo, so the same code runs on both devices.
CUDA_BACKEND = "cpu:gloo,cuda:nccl"
CPU_BACKEND = "gloo"


class DeviceError(RuntimeError):
    """The job asks for a device the launcher cannot give every rank."""


def resolve_device(
    setting: str,
    num_workers: int,
    gpus: float,
    where: str,
    key: str = "train.device",
    ranks_key: str = "ray.num_workers",
) -> DeviceType:
    """``setting`` (auto, cpu or cuda; the value of ``key``) for ``num_workers`` ranks (set
    by ``ranks_key``), one GPU each, when ``gpus`` GPUs are available ``where`` (all named
    in errors)."""
    if setting == "cpu":
        return "cpu"
    enough = gpus >= num_workers
    if setting == "cuda":
        if not enough:
            fewer = f"fewer ranks ({ranks_key}) or " if gpus >= 1 else ""
            raise DeviceError(
                f"{key}=cuda needs one GPU per rank: {num_workers} ranks, but "
                f"{where} has {gpus:g} GPU(s); use {fewer}{key}=cpu"
            )
        return "cuda"
    if setting != "auto":
        raise DeviceError(f"unknown {key} {setting!r}; use auto, cpu or cuda")
    return "cuda" if gpus > 0 and enough else "cpu"


def local_gpus() -> int:
    """CUDA devices this process can see (0 without a CUDA build of torch)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def backend_for(device_type: str) -> str:
    """The ``torch.distributed`` backend string for ranks on ``device_type``."""
    return CUDA_BACKEND if device_type == "cuda" else CPU_BACKEND


def select_local_gpu() -> None:
    """Make ``cuda:LOCAL_RANK`` this process's current device; more local ranks than visible
    GPUs is an error (two ranks on one GPU: NCCL refuses it, or both run at half speed)."""
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local >= count:
        raise DeviceError(
            f"local rank {local} has no GPU of its own: this node shows {count} GPU(s); "
            "start at most one worker a GPU (ray.num_workers, or fewer per node)"
        )
    torch.cuda.set_device(local)


def rank_device(device_type: str) -> torch.device:
    """This rank's device: the current CUDA device (set by the launcher), or the CPU."""
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("the job was planned for CUDA but this worker sees no GPU")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

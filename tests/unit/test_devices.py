"""Which device a job trains on: ``train.device`` against the GPUs a launcher has."""

from __future__ import annotations

import pytest

from dist_train.config.load import load_config
from dist_train.devices import (
    CPU_BACKEND,
    CUDA_BACKEND,
    DeviceError,
    backend_for,
    rank_device,
    resolve_device,
)
from dist_train.launchers.cluster import ClusterLimits, NodeResources
from dist_train.validate import Report, _check_fit


@pytest.mark.parametrize(
    ("setting", "workers", "gpus", "expected"),
    [
        ("auto", 2, 0, "cpu"),  # no GPU: the CPU
        ("auto", 2, 2, "cuda"),  # one each
        ("auto", 8, 16, "cuda"),
        ("auto", 4, 2, "cpu"),  # not one each: the CPU, not two ranks sharing a GPU
        ("cpu", 2, 8, "cpu"),  # asked for
        ("cuda", 2, 2, "cuda"),
    ],
)
def test_device_follows_setting_and_gpus(
    setting: str, workers: int, gpus: float, expected: str
) -> None:
    assert resolve_device(setting, workers, gpus, "here") == expected


def test_cuda_without_a_gpu_per_rank_names_the_shortfall() -> None:
    fewer = r"4 ranks, but the cluster has 2 GPU\(s\); use fewer ranks \(ray.num_workers\) or"
    with pytest.raises(DeviceError, match=fewer):
        resolve_device("cuda", 4, 2, "the cluster")
    # none at all: fewer ranks would not do (calibrate named workers, which it has not)
    with pytest.raises(DeviceError, match=r"0 GPU\(s\); use --device=cpu$"):
        resolve_device("cuda", 2, 0, "this machine", "--device", "--ranks")


def test_gpu_ranks_use_nccl_for_cuda_tensors_and_gloo_for_the_rest() -> None:
    assert backend_for("cuda") == CUDA_BACKEND == "cpu:gloo,cuda:nccl"
    assert backend_for("cpu") == CPU_BACKEND == "gloo"
    assert rank_device("cpu").type == "cpu"


def _fit(nodes: list[NodeResources], *overrides: str) -> Report:
    cfg = load_config(overrides=["ray.num_workers=4", *overrides])
    report = Report()
    _check_fit(cfg, "job.yaml", ClusterLimits(nodes), "cluster.yaml", report)
    return report


def test_cluster_fit_counts_one_gpu_per_worker_on_gpu_clusters() -> None:
    gpu_nodes = [NodeResources("g", cpus=32, gpus=2, count=2)]
    ok = _fit(gpu_nodes)
    assert not ok.problems and "cuda ranks" in ok.ok[-1]
    # 2 nodes x 2 workers: the CPU-only node has room for none of them
    mixed = [NodeResources("g", cpus=32, gpus=4), NodeResources("c", cpus=32, gpus=0)]
    split = _fit(mixed, "ray.num_nodes=2")
    assert "needs 2 nodes" in split.problems[0] and "c: 32 CPUs, 0 GPUs -> 0" in split.problems[0]
    too_few = _fit([NodeResources("g", cpus=32, gpus=1, count=2)], "train.device=cuda")
    assert "2 GPU(s)" in too_few.problems[0]
    asked = _fit([NodeResources("c", cpus=32, gpus=0)], "train.device=cuda")
    assert "train.device=cuda needs one GPU per rank" in asked.problems[0]
    cpu = _fit([NodeResources("c", cpus=32, gpus=0)])
    assert not cpu.problems and cpu.ok[-1].endswith("cpu ranks)")
    short = _fit([NodeResources("g", cpus=32, gpus=2)])  # auto: 2 GPUs for 4 workers
    assert "cpu ranks: its 2 GPU(s) are fewer than one per worker" in short.ok[-1]


def test_the_processes_launcher_needs_a_gpu_for_every_worker_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It starts ray.num_workers ranks whatever ray.min_workers says (only Ray is elastic):
    2 GPUs for 4 ranks would put two ranks on each."""
    from dist_train import driver
    from dist_train.config.load import load_config

    monkeypatch.setattr(driver, "local_gpus", lambda: 2)
    over = ["launcher=processes", "ray.num_workers=4", "ray.min_workers=2", "train.device=auto"]
    assert driver.job_device(load_config(overrides=over)) == "cpu"
    assert driver.job_device(load_config(overrides=[*over[:1], "ray.num_workers=2"])) == "cuda"

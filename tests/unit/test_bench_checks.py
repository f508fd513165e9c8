"""The benchmarks' checks of what they are asked, before they measure (a helper's audit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dist_train.config.errors import ConfigError
from dist_train.config.load import load_config


def test_the_disk_probe_writes_the_checkpoints_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It wrote whole 8 MiB blocks, rounded down: a 1 MB checkpoint was set against 8 MiB
    of disk writes, and its line said 1 MB."""
    from dist_train.bench.checkpoint import disk_bandwidth

    sizes: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: (sizes.append(os.fstat(fd).st_size), real_fsync(fd))
    )
    for size in (1_000_000, 9 * 2**20 + 7):
        disk_bandwidth(tmp_path, size)
    assert sizes == [1_000_000, 9 * 2**20 + 7]


def test_what_a_benchmark_cannot_measure_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dist_train.bench.checkpoint import run_checkpoint_bench
    from dist_train.bench.interaction import run_interaction_bench
    from dist_train.bench.kernel import run_kernel_bench

    # figures of a dot interaction the job does not have
    with pytest.raises(ConfigError, match=r"times DLRM.s dot interaction, .*model.kind=dcn_v2"):
        run_interaction_bench(load_config(overrides=["model.kind=dcn_v2"]), [1])
    # --rows sizes no table of a collisionless job: the banner named a table never saved
    with pytest.raises(ConfigError, match=r"embedding.kind=collisionless sizes them"):
        collisionless = ["embedding.kind=collisionless", "data.synthetic.string_columns=[]"]
        run_checkpoint_bench(load_config(overrides=collisionless), 1000)
    # widths the flag takes but this machine cannot hold: an allocator's traceback (a
    # machine of 1 GiB, whatever this one has: a larger one would build the tables)
    from dist_train.bench import kernel

    monkeypatch.setattr(kernel, "usable_memory_bytes", lambda: 2**30)
    with pytest.raises(ConfigError, match=r"--dims 64,128 --batches 8: their tables of 1,00"):
        run_kernel_bench(dims=(64, 128), batches=(8,), rounds=1)
    # and batches: the cases' tensors were not counted, and a 64-wide batch of 2**20
    # examples (8 GiB of gradient) ended in the allocator's traceback (a helper's audit)
    monkeypatch.setattr(kernel, "usable_memory_bytes", lambda: 6 * 2**30)
    kernel._check_memory((64,), (8,))  # the tables alone fit
    with pytest.raises(ConfigError, match=r"--dims 64 --batches 1048576: .* need 2[0-9.]+ GiB"):
        run_kernel_bench(dims=(64,), batches=(2**20,), rounds=1)


def test_weight_decay_the_pytorch_peer_cannot_apply_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """torch's optimizers of sparse gradients take no weight decay: the peer's tables
    would train without it, and its step do less than ours, with no word."""
    from dist_train.bench import train

    def stop(*_: object) -> str:
        raise RuntimeError("measured nothing")

    monkeypatch.setattr(train, "synthetic_train_data", stop)
    for decay, warned in ((0.0, False), (0.01, True)):
        caplog.clear()
        cfg = load_config(overrides=[f"embedding.optimizer.weight_decay={decay}"])
        with pytest.raises(RuntimeError, match="measured nothing"):
            train.run_train_bench(cfg, [1])
        said = "the pytorch peer's tables train without it" in caplog.text
        assert said == warned, caplog.text

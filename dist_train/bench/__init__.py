"""Benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

from dist_train.config import JobConfig, apply_overrides, parse_config


def variant(cfg: JobConfig, overrides: list[str], label: str) -> JobConfig:
    """``cfg`` with ``overrides``, reading the same data files as ``cfg`` (its paths, or the
    synthetic data it generates under its own run directory). A benchmark's runs save no
    checkpoints unless ``overrides`` ask: they are measurements, and a rerun of the benchmark
    must not meet them (a fresh run beside checkpoints is refused)."""
    no_saves = ["checkpoint.save_at_end=false", "checkpoint.every_steps=null"]
    raw = apply_overrides(cfg.model_dump(mode="json"), [*no_saves, *overrides])
    raw["data"]["train_path"] = cfg.data.train_path or str(cfg.run_dir / "data" / "train")
    raw["data"]["test_path"] = cfg.data.test_path or str(cfg.run_dir / "data" / "test")
    return parse_config(raw, label)

"""Benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

from dist_train.config import JobConfig, apply_overrides, parse_config


def variant(cfg: JobConfig, overrides: list[str], label: str) -> JobConfig:
    """``cfg`` with ``overrides``, reading the same data files as ``cfg`` (its paths, or the
    synthetic data it generates under its own run directory)."""
    raw = apply_overrides(cfg.model_dump(mode="json"), overrides)
    raw["data"]["train_path"] = cfg.data.train_path or str(cfg.run_dir / "data" / "train")
    raw["data"]["test_path"] = cfg.data.test_path or str(cfg.run_dir / "data" / "test")
    return parse_config(raw, label)

"""A config's paths made absolute before anything starts: workers run in other folders."""

from __future__ import annotations

from pathlib import Path

from dist_train.config.schema import FILE_SCHEME, JobConfig

FILE_URL = FILE_SCHEME + "//"


def absolute_path(path: str, base: Path | None = None) -> str:
    """``path`` against ``base`` (default: the working directory); URLs stay URLs, but a
    ``file:`` one is written ``file://`` + its absolute path (fsspec and pyarrow read
    ``file:/x`` and ``file://x`` too: the first as ``/x``, the second relative); ``~`` is
    expanded."""
    base = base or Path.cwd()
    if path.startswith(FILE_SCHEME):
        local = path[len(FILE_SCHEME) :]
        local = local[2:] if local.startswith("//") else local
        return FILE_URL + absolute_path(local, base)
    if "://" in path:
        return path
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else base / expanded)


def resolve_paths(cfg: JobConfig, base: Path | None = None) -> JobConfig:
    """``cfg`` with every path made absolute against ``base`` (default: the working directory).

    The driver calls this before anything starts: workers run elsewhere (Ray Train runs them
    in its session directory), where a relative path means another place.
    """
    base = base or Path.cwd()

    def opt(path: str | None) -> str | None:
        return None if path is None else absolute_path(path, base)

    resume = cfg.checkpoint.resume
    return cfg.model_copy(
        update={
            "output_dir": absolute_path(cfg.output_dir, base),
            "data": cfg.data.model_copy(
                update={
                    "train_path": opt(cfg.data.train_path),
                    "test_path": opt(cfg.data.test_path),
                }
            ),
            "checkpoint": cfg.checkpoint.model_copy(
                update={
                    "dir": opt(cfg.checkpoint.dir),
                    "resume": resume if resume in (None, "latest") else opt(resume),
                }
            ),
            "ray": cfg.ray.model_copy(update={"storage_path": opt(cfg.ray.storage_path)}),
            "sharding": cfg.sharding.model_copy(update={"topology": opt(cfg.sharding.topology)}),
        }
    )

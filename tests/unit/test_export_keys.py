"""export.json's key map: from the checkpoint's config, and absent (not an error) for a config
this dist_train no longer reads."""

from __future__ import annotations

from dist_train.config import load_config
from dist_train.export import _keys


def test_every_key_names_its_table_and_salt() -> None:
    cfg = load_config(overrides=["embedding.num_tables=2"])
    keys = _keys({"config": cfg.model_dump(mode="json")})
    assert len(keys) == sum(f.chunks for f in cfg.features)
    assert {k["table"] for k in keys} == {"unified_0", "unified_1"}
    assert len({k["salt"] for k in keys}) == len(keys)  # every chunk its own salt


def test_an_older_config_exports_without_the_map() -> None:
    raw = load_config().model_dump(mode="json")
    raw["seed"] = -1  # valid once, refused today
    assert _keys({"config": raw}) == []
    assert _keys({}) == []

"""export.json's key map: from the checkpoint's config, and absent (not an error) for a config
this dist_train no longer reads."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dist_train.config.load import load_config
from dist_train.data.synthetic import _schema
from dist_train.embedding.hashing import fingerprint_ints, fingerprint_strings, salted_rows
from dist_train.embedding.layout import build_layout
from dist_train.export import _keys, _saved_layout
from dist_train.train.trainer import make_batch_builder


def test_every_key_names_its_table_and_salt() -> None:
    cfg = load_config(overrides=["embedding.num_tables=2"])
    keys = _keys(_saved_layout({"config": cfg.model_dump(mode="json")}))
    assert len(keys) == sum(f.chunks for f in cfg.features)
    assert {k["table"] for k in keys} == {"unified_0", "unified_1"}
    assert len({k["salt"] for k in keys}) == len(keys)  # every chunk its own salt


def test_every_key_names_the_table_and_salt_training_hashes_it_with() -> None:
    """A serving system looks a value's row up from export.json alone: the salt and table
    of each key, ``salted_rows`` and the table's rows give the row training read. (The
    salts were only checked to differ: another seed's passed.)"""
    cfg = load_config(overrides=["embedding.num_tables=2", "seed=7"])
    keys = _keys(_saved_layout({"config": cfg.model_dump(mode="json")}))
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    rows = {t.name: t.num_rows for t in layout.tables}
    schema = _schema(cfg.data.synthetic)
    value = {pa.string(): "a value", pa.int64(): 7}  # an id every column has
    arrays = {}
    for field in schema:
        if field.name.startswith("C"):
            listed = pa.types.is_list(field.type)
            base = field.type.value_type if listed else field.type
            arrays[field.name] = pa.array([[value[base]] if listed else value[base]], field.type)
        else:
            arrays[field.name] = pa.array([1], field.type)
    batch = make_batch_builder(cfg, layout).build(pa.table(arrays), "one row")
    assert [k["key"] for k in keys] == batch.sparse.keys()
    for k in keys:
        base = schema.field(k["feature"]).type
        base = base.value_type if pa.types.is_list(base) else base
        if base == pa.string():
            fingerprint = fingerprint_strings(pa.array([value[base]]))
        else:
            fingerprint = fingerprint_ints(np.array([value[base]], np.int64))
        want = salted_rows(fingerprint, k["salt"], rows[k["table"]])
        assert batch.sparse[k["key"]].values().tolist() == want.tolist(), k


def test_an_older_config_exports_without_the_map() -> None:
    raw = load_config().model_dump(mode="json")
    raw["seed"] = -1  # valid once, refused today
    assert _keys(_saved_layout({"config": raw})) == []
    assert _keys(_saved_layout({})) == []

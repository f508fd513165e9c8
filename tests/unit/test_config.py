"""Configuration: the default loads; bad keys and values are named before anything starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from dist_train.config.errors import ConfigError
from dist_train.config.load import DEFAULT_CONFIG, load_config, parse_config
from dist_train.config.schema import (
    EMBEDDING_SETTINGS,
    MODEL_SETTINGS,
    FeatureConfig,
    JobConfig,
    ModelConfig,
)


def test_default_config_is_valid_and_documented_defaults_hold() -> None:
    cfg = load_config()
    assert cfg.embedding.kind == "unified"
    assert cfg.ray.num_workers == 2 and cfg.sharding.type == "auto"
    assert len(cfg.features) == 26 and cfg.data.resolved_dense_columns()[0] == "I1"
    assert cfg.data.train_path is None  # synthetic by default


def test_every_shipped_config_is_valid() -> None:
    shipped = sorted(DEFAULT_CONFIG.parent.glob("*.yaml"))
    assert {p.name for p in shipped} >= {"default.yaml", "tiny.yaml", "two_nodes.yaml"}
    for path in shipped:
        load_config(path)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(DEFAULT_CONFIG.read_text() + text)
    return p


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(DEFAULT_CONFIG.read_text().replace("dim: 16", "dimension: 16"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "embedding.dimension: unknown key" in str(err.value)


def test_bad_value_is_named_with_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be greater than 0"):
        load_config(overrides=["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"embedding\.kind: Input should be 'unified'"):
        load_config(overrides=["embedding.kind=mixed"])


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match=r"embedding\.kind=collisionless needs a cardinality"):
        load_config(overrides=["embedding.kind=collisionless", "features=[{name: C1}]"])
    with pytest.raises(ConfigError, match="duplicate feature names"):
        load_config(overrides=["features=[{name: C1}, {name: C1}]"])
    with pytest.raises(ConfigError, match="give both train_path and test_path"):
        load_config(overrides=["data.train_path=/data/train"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_key_given_twice_and_text_not_utf8_are_named(tmp_path: Path) -> None:
    """A second ``train:`` section replaced the first whole, unseen; bytes that are not
    UTF-8 gave a traceback (exit 1, not a config error's 2). ``validate`` reads alike."""
    from dist_train.cli.main import main

    twice = tmp_path / "twice.yaml"
    twice.write_text(DEFAULT_CONFIG.read_text() + "train:\n  epochs: 3\n")
    with pytest.raises(
        ConfigError, match=r"twice.yaml:82:1: .*key 'train' given twice \(lines \d+ and"
    ):
        load_config(twice)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match=r"binary.yaml: not UTF-8 text \(byte 6\)"):
        load_config(binary)
    for path in (twice, binary):
        assert main(["validate", str(path)]) == 1  # a PROBLEM line, no traceback
    # merge keys bring keys in, which the mapping's own may override: no key given twice
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "features:\n  - &f {name: C1, chunks: 2}\n  - {<<: *f, name: C2, chunks: 1}\n"
        "  - <<: [*f]\n    name: C3\n"
    )
    features = load_config(merged).features
    assert [(f.name, f.chunks) for f in features] == [("C1", 2), ("C2", 1), ("C3", 2)]
    unhashable = tmp_path / "unhashable.yaml"
    unhashable.write_text("? [x, y]\n: 1\n")
    with pytest.raises(ConfigError, match="unhashable key"):
        load_config(unhashable)


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_a_run_name_of_dots_is_refused(name: str) -> None:
    """``name: ..`` made the run's folder output_dir's parent: its data, checkpoints and
    summary landed beside output_dir, shared by every run so named."""
    with pytest.raises(ConfigError, match=r"name: .*no folder of its own"):
        load_config(overrides=[f"name={name}"])
    assert load_config(overrides=["name=a.b"]).name == "a.b"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["features=[{name: C99}]"], r"the generated data lack: 'C99' \(features.C99\)"),
        (["features.1.column=I1"], r"the generated data lack: 'I1' \(features.C2.column\)"),
        (["features.C3.column=I1"], r"the generated data lack: 'I1' \(features.C3.column\)"),
        (["data.dense_columns=[I1, I99]"], r"data.dense_columns names .* \['I99'\]"),
        (["embedding.kind=collisionless"], r"embedding.kind=collisionless needs integer ids, but"),
    ],
)
def test_generated_data_that_lack_a_column_are_refused_before_they_are_made(
    overrides: list[str], named: str
) -> None:
    """The generated columns are known: these failed only after the data were written. The
    error names the key at fault, and with it the override that set it (a check of the
    whole job is blamed on an override its message names)."""
    with pytest.raises(ConfigError, match=named) as err:
        load_config(overrides=overrides)
    assert str(err.value).endswith(f"(from --set {overrides[0]})")
    ints = ["embedding.kind=collisionless", "data.synthetic.string_columns=[]"]
    assert load_config(overrides=ints).embedding.kind == "collisionless"


def test_a_seed_past_64_bits_is_refused() -> None:
    """It validated, then failed in the ranks ("Overflow when unpacking long long")."""
    with pytest.raises(ConfigError, match=r"seed: Input should be less than"):
        load_config(overrides=[f"seed={2**64}"])
    assert load_config(overrides=[f"seed={2**63 - 1}"]).seed == 2**63 - 1


def test_seeds_past_32_bits_give_torch_other_seeds() -> None:
    """torch's generators read a seed's low 32 bits: seed s + 2^32 started from seed s's
    dense weights and tables. Seeds below 2^32 keep their weights."""
    from dist_train.embedding.init import torch_seed

    assert [torch_seed(s) for s in (0, 7, 2**32 - 1)] == [0, 7, 2**32 - 1]
    folded = {torch_seed(s) for s in (2**32, 2**32 + 7, 2**40, 2**63 - 1)}
    assert len(folded) == 4 and not folded & {0, 7} and max(folded) < 2**32


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(overrides=["train.epochs=3", "embedding.optimizer.learning_rate=0.1"])
    assert cfg.train.epochs == 3 and cfg.embedding.optimizer.learning_rate == 0.1
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        load_config(overrides=["train.epochs"])


def test_output_dir_url_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"output_dir: .*not the URL 's3://b/x'"):
        load_config(overrides=["output_dir=s3://b/x"])
    load_config(overrides=["checkpoint.dir=s3://b/x"])  # checkpoints may live at a URL


def test_pin_cores_reads_a_bare_on_or_off_as_yaml_writes_them(tmp_path: Path) -> None:
    # YAML 1.1 reads on / off as booleans, in a file as on the command line
    assert load_config(None, ["ray.pin_cores=off"]).ray.pin_cores == "off"
    assert load_config(None, ["ray.pin_cores=on"]).ray.pin_cores == "on"
    written = tmp_path / "job.yaml"
    written.write_text(
        DEFAULT_CONFIG.read_text().replace("  num_workers: 2", "  pin_cores: off\n  num_workers: 2")
    )
    assert load_config(written).ray.pin_cores == "off"
    with pytest.raises(ConfigError, match=r"ray\.pin_cores"):
        load_config(None, ["ray.pin_cores=sometimes"])


def test_overrides_of_string_keys_keep_the_text_as_typed() -> None:
    cfg = load_config(
        overrides=[
            "data.train_path=/data/*.parquet",  # YAML: an alias
            "data.test_path=/ckpts/run #2/test",  # YAML: a comment
            "name=2024",  # YAML: a number
            "checkpoint.dir=null",
        ]
    )
    assert cfg.data.train_path == "/data/*.parquet" and cfg.data.test_path == "/ckpts/run #2/test"
    assert cfg.name == "2024" and cfg.checkpoint.dir is None
    assert load_config(overrides=['name="quoted"']).name == "quoted"
    # lists and mappings of strings are YAML still
    lists = load_config(
        overrides=["data.synthetic.string_columns=[]", "sharding.pooling_factors={C1: 2.0}"]
    )
    assert lists.data.synthetic.string_columns == [] and lists.sharding.pooling_factors == {
        "C1": 2.0
    }


def test_override_errors_name_the_override() -> None:
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=\[1: not valid YAML"):
        load_config(overrides=["train.epochs=[1"])
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.batch_size=0", "name=bad name"])
    assert (
        "train.batch_size: Input should be greater than 0 (from --set train.batch_size=0)"
        in str(err.value)
    )
    assert "(from --set name=bad name)" in str(err.value)


def test_memory_per_rank_is_read_as_a_size_when_the_config_is() -> None:
    assert load_config(overrides=["sharding.memory_per_rank=16GiB"]).sharding.memory_per_rank
    with pytest.raises(ConfigError, match=r"sharding\.memory_per_rank: .*cannot read 'lots'"):
        load_config(overrides=["sharding.memory_per_rank=lots"])


def test_unknown_key_suggests_the_closest_and_where_every_key_is() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.batchsize=3", "train.num_workers=2", "ray.foo=1"])
    text = str(err.value)
    assert "train.batchsize: unknown key (did you mean train.batch_size?" in text
    assert "train.num_workers: unknown key (did you mean ray.num_workers?" in text
    assert "ray.foo: unknown key (every key: `dist-train show-config --reference`" in text
    assert "docs/config.md" in text and "default.yaml)" not in text


def test_a_unified_table_split_into_more_sub_tables_than_chunks_is_refused() -> None:
    features = "features=[{name: C1, chunks: 1}, {name: C2, chunks: 1}]"
    with pytest.raises(ConfigError, match=r"num_tables \(4\) exceeds the features' 2 chunks"):
        load_config(overrides=[features, "embedding.num_tables=4"])
    assert load_config(overrides=[features, "embedding.num_tables=2"]).embedding.num_tables == 2


def test_any_non_negative_seed_initializes_the_tables() -> None:
    from dist_train.embedding.init import init_rows

    with pytest.raises(ConfigError, match="seed: Input should be greater than or equal to 0"):
        load_config(overrides=["seed=-1"])
    tables = []
    for seed in (0, 2**27, 2**32, 2**40, 2**63 - 1):  # once overflowed from 2^30; 2^32 was 0
        rows = init_rows("unified_0", 20_000, 8, seed, 0, 9_000, 0.1)
        assert rows.shape == (9_000, 8) and rows.abs().max() <= 0.1
        assert rows.abs().max() > 0.09 and abs(rows.mean()) < 0.005  # U(-0.1, 0.1)
        # the same seed the same rows; any row range the same values (a shard's): across
        # the generator's block of 8,192 rows too
        assert torch.equal(rows, init_rows("unified_0", 20_000, 8, seed, 0, 9_000, 0.1))
        assert torch.equal(rows[8_000:], init_rows("unified_0", 20_000, 8, seed, 8_000, 9_000, 0.1))
        tables.append(rows)
    for i, one in enumerate(tables):  # each seed its own tables
        assert all(not torch.equal(one, other) for other in tables[i + 1 :])
    assert not torch.equal(tables[0], init_rows("unified_1", 20_000, 8, 0, 0, 9_000, 0.1))


@pytest.mark.parametrize("key", ["model.bottom_mlp", "model.top_mlp", "model.attention_mlp"])
@pytest.mark.parametrize("size", [0, -4])
def test_layer_sizes_must_be_positive(key: str, size: int) -> None:
    # 0 trained a model whose logits were all 0; -4 crashed building it, with a traceback
    with pytest.raises(ConfigError, match=rf"{key}\.1: Input should be greater than 0"):
        load_config(overrides=[f"{key}=[8,{size}]"])


def test_a_bench_variant_over_generated_data_is_checked_as_generated() -> None:
    """bench embeddings' collisionless variant over string ids passed (the variant reads the
    generated files by path), so unified and hashing_trick trained before it failed."""
    from dist_train.bench import variant

    with pytest.raises(ConfigError, match=r"embedding\.kind=collisionless needs integer ids"):
        variant(load_config(), ["embedding.kind=collisionless"], "bench variant")
    ints = load_config(overrides=["data.synthetic.string_columns=[]"])
    assert variant(ints, ["embedding.kind=collisionless"], "v").data.train_path is not None


@pytest.mark.parametrize(
    ("override", "named"),
    [
        # each passed validation, then failed in the planner, the launch or the generator
        ("ray.cpus_per_worker=.inf", r"ray\.cpus_per_worker: Input should be a finite number"),
        # Ray refused it at the launch, naming its own num_cpus (a helper's audit)
        (
            "ray.cpus_per_worker=0.00001",
            r"ray\.cpus_per_worker: .*greater than or equal to 0\.0001",
        ),
        # the same column fed to the model twice
        ("data.dense_columns=[I1, I2, I1]", r"data: .*dense_columns names I1 more than once"),
        ("sharding.pooling_factors.C24=.nan", r"pooling_factors\.C24: Input should be a finite"),
        ("embedding.optimizer.learning_rate=.inf", r"learning_rate: Input should be a finite"),
        ("data.synthetic.cardinalities=[10, 0]", r"cardinalities\.1: Input should be greater"),
        ("data.synthetic.mean_multi_hot_length=0.5", r"mean_multi_hot_length: .* equal to 1"),
        (
            "data.label_column=click",
            r"data\.label_column='click': in the generated data it is no column",
        ),
        (
            "data.row_id_column=id",
            r"data\.row_id_column='id': in the generated data it is no column",
        ),
        # YAML's yes/no values were taken as 1 and 0: group_size=on was full replication
        ("sharding.group_size=on", r"sharding\.group_size: .*expected a number, got a yes/no"),
        ("train.epochs=yes", r"train\.epochs: .*expected a number, got a yes/no"),
        ("train.prefetch_niceness=off", r"prefetch_niceness: .*expected a number, got a yes/no"),
        ("model.bottom_mlp=[yes]", r"bottom_mlp: .*expected a number at \[0\], got a yes/no"),
        ("sharding.pooling_factors={C24: on}", r"pooling_factors: .*number at \.C24, got a yes"),
    ],
)
def test_values_that_would_fail_later_are_refused_naming_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(overrides=[override])


def test_yes_no_keys_and_yaml_numbers_still_read() -> None:
    cfg = load_config(overrides=["checkpoint.save_at_end=no", "ray.pin_cores=off"])
    assert cfg.checkpoint.save_at_end is False and cfg.ray.pin_cores == "off"
    assert load_config(overrides=["data.label_column=label"]).data.label_column == "label"


def test_a_config_file_of_bytes_and_home_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML number of bytes was refused ("a valid string"), though docs/planner.md takes
    bytes; `--set checkpoint.dir=~` became null (the default folder), YAML's other null."""
    job = tmp_path / "job.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["sharding"]["memory_per_rank"] = 8_000_000_000
    job.write_text(yaml.safe_dump(raw))
    assert load_config(job).sharding.memory_per_rank == "8000000000"
    assert load_config(overrides=["checkpoint.dir=~"]).checkpoint.dir == "~"
    # a config under ~, as `--config=~/job.yaml` leaves it (a helper's audit: not found)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config("~/job.yaml").sharding.memory_per_rank == "8000000000"
    # an empty value is null still, as YAML reads it (a review found it taken as text: a
    # data.train_path= read this folder's Parquet files)
    empty = load_config(overrides=["data.train_path=", "data.test_path=", "checkpoint.dir="])
    assert (empty.data.train_path, empty.data.test_path, empty.checkpoint.dir) == (None,) * 3


def test_a_config_file_not_a_mapping_is_refused_with_overrides_too(tmp_path: Path) -> None:
    """With --set, a list file was replaced by an empty mapping: the defaults trained."""
    job = tmp_path / "list.yaml"
    job.write_text("- name: x\n")
    for overrides in ([], ["name=foo"]):
        with pytest.raises(ConfigError, match=r"list\.yaml: .* must be a mapping .*, not a list$"):
            load_config(job, overrides)
    # an empty file was "a mapping, got NoneType"; with --set it is the settings they give
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.yaml: empty; a job config is a mapping"):
        load_config(empty, [])
    with pytest.raises(ConfigError, match=r"empty\.yaml: invalid .*\n  features: Field required"):
        load_config(empty, ["name=foo"])


def test_a_check_of_the_whole_job_names_the_override_it_names() -> None:
    """A check across sections has no key of its own ("<top level>"): the --set behind it
    went unnamed, though docs/config.md says an error names it."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["embedding.num_tables=100", "name=tables"])
    line = str(err.value).splitlines()[-1]
    assert line.startswith("  <top level>: ") and "exceeds the features'" in line
    assert line.endswith("(from --set embedding.num_tables=100)")
    # a mapping's entry, which the check names as the mapping
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["sharding.pooling_factors.C99=3"])
    assert str(err.value).endswith("(from --set sharding.pooling_factors.C99=3)")
    # and only the entry named: a valid entry beside it is not blamed
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["sharding.pooling_factors.C99=3", "sharding.pooling_factors.C1=2"])
    assert str(err.value).endswith("(from --set sharding.pooling_factors.C99=3)")
    with pytest.raises(ConfigError) as err:
        load_config(
            overrides=["sharding.pooling_factors={C99: 3}", "sharding.pooling_factors.C1=2"]
        )
    assert "(from --set sharding.pooling_factors.C1=2)" not in str(err.value)
    # an error at the mapping's own key (its field check), and an entry named as a word of
    # the message (a feature called "features"): the bad entry, not the last one
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["sharding.pooling_factors.C1=-1", "sharding.pooling_factors.C2=2"])
    assert str(err.value).endswith("(from --set sharding.pooling_factors.C1=-1)")
    words = ["features=[{name: features}, {name: C2}]", "sharding.pooling_factors.C99=3"]
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[*words, "sharding.pooling_factors.features=2"])
    assert str(err.value).endswith("(from --set sharding.pooling_factors.C99=3)")


def test_a_check_of_a_section_names_the_override_it_names(tmp_path: Path) -> None:
    """A section's check (train_path without test_path) blamed the last --set inside the
    section, an unrelated data.on_bad_input=skip (a helper's audit)."""
    for overrides in (
        ["data.train_path=/x", "data.on_bad_input=skip"],
        ["data.on_bad_input=skip", "data.train_path=/x"],
    ):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=overrides)
        assert str(err.value).endswith("(synthetic data) (from --set data.train_path=/x)")
    with pytest.raises(ConfigError) as err:  # the section set whole: it is the cause
        load_config(overrides=["data={train_path: /x}"])
    assert str(err.value).endswith("(from --set data={train_path: /x})")
    # a check that names what it finds, not what changed: the --set inside it, still (a
    # review found the first version of the rule above named none here)
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.kind=autoint", "model.attention_heads=3"])
    assert str(err.value).endswith("(from --set model.attention_heads=3)")  # named
    config = tmp_path / "heads.yaml"  # 3 heads, fine for DLRM, which has none
    config.write_text("model:\n  attention_heads: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(config, ["model.kind=autoint", "seed=3"])
    assert str(err.value).endswith("(from --set model.kind=autoint)")
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["data.synthetic.num_categorical=20"])
    assert str(err.value).endswith("(from --set data.synthetic.num_categorical=20)")


def test_attention_heads_are_checked_for_autoint_only() -> None:
    """An AutoInt setting refused a DLRM job (the model reads no attention setting)."""
    odd = ["model.attention_dim=15", "model.attention_heads=2"]
    assert load_config(overrides=odd).model.kind == "dlrm"
    with pytest.raises(ConfigError, match=r"attention_dim \(15\) must be divisible"):
        load_config(overrides=[*odd, "model.kind=autoint"])


def test_an_install_without_the_checkout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wheel (`pip install .`, not editable) holds the package and not launch/: every
    command without --config failed with "no such config file", naming a path in
    site-packages."""
    from dist_train.config import load

    monkeypatch.setattr(load, "DEFAULT_CONFIG", tmp_path / "launch" / "configs" / "default.yaml")
    with pytest.raises(ConfigError, match=r"runs from its checkout, installed editable"):
        load.load_config()
    with pytest.raises(ConfigError, match=r"nosuch\.yaml: no such config file$"):
        load.load_config(tmp_path / "nosuch.yaml")


def test_numbers_in_exponent_form_read_as_yaml_1_2_reads_them(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads ``1e6`` and ``1.0e6`` as text: ``embedding.num_rows: 3e5`` was
    refused ("unable to parse string as an integer"). A numeric key now reads them as the
    number, in a file and on the command line, alike; a text key keeps the text."""
    job = tmp_path / "job.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    text = yaml.safe_dump(raw).replace("num_rows: 300000", "num_rows: 3e5")
    text = text.replace("name: default", "name: 1e3").replace(
        "name: C1\n", "name: 2e1\n  column: C1\n"
    )
    text = text.replace("seed: 0", "seed: 9007199254740993e0")
    job.write_text(text + "checkpoint:\n  every_steps: 1.0e3\n")
    cfg = load_config(job, ["train.max_steps=2E3", "train.dense_learning_rate=5e-2"])
    assert (cfg.embedding.num_rows, cfg.checkpoint.every_steps) == (300_000, 1000)
    assert (cfg.train.max_steps, cfg.train.dense_learning_rate) == (2000, 0.05)
    assert cfg.seed == 2**53 + 1  # exactly: no float holds it
    assert (cfg.name, cfg.features[0].name) == ("1e3", "2e1")  # text keys keep the text
    assert load_config(overrides=["name=1e3"]).name == "1e3"
    assert load_config(overrides=["model.top_mlp=[1.28e2, 64]"]).model.top_mlp == [128, 64]
    with pytest.raises(ConfigError, match=r"train\.max_steps: .*fractional part"):
        load_config(overrides=["train.max_steps=1.5e0"])
    # no setting's size: refused at once (int(Decimal("1e1000000")) took 32 s; 1e-400 was 0)
    for big in ("seed=1e1000000", "seed=1e9999999999999999999", "seed=1e-400"):
        with pytest.raises(ConfigError, match=r"seed: Input should be a valid integer"):
            load_config(overrides=[big])
    with pytest.raises(ConfigError, match=r"learning_rate: Input should be a finite number"):
        load_config(overrides=["train.dense_learning_rate=1e400"])
    sized = job.with_name("sized.yaml")
    sized.write_text(text.replace("type: auto", "type: auto\n  memory_per_rank: 16e9"))
    assert load_config(sized).sharding.memory_per_rank == "16e9"
    assert (
        load_config(overrides=["sharding.memory_per_rank=16e9"]).sharding.memory_per_rank == "16e9"
    )


def test_an_override_names_a_list_item_by_its_name_or_position() -> None:
    """docs/config.md lists features[].chunks among the keys --set sets, but a list's items
    could only be replaced whole (features.0.chunks: "'features' is not a section")."""

    def feature(cfg: JobConfig, name: str) -> FeatureConfig:
        return next(f for f in cfg.features if f.name == name)

    cfg = load_config(
        overrides=["features.C14.chunks=3", "features.0.name=2024", "features.2024.column=C1"]
    )
    assert feature(cfg, "C14").chunks == 3 and feature(cfg, "C13").chunks == 1
    assert cfg.features[0].name == "2024"  # a text key keeps its text inside an item too
    whole = load_config(overrides=["features.C2={name: C2, chunks: 4}"])
    assert feature(whole, "C2").chunks == 4 and feature(whole, "C2").cardinality is None
    with pytest.raises(ConfigError, match=r"features has no item named 'C99' \(name one by"):
        load_config(overrides=["features.C99.chunks=3"])
    with pytest.raises(ConfigError, match=r"position from 0 to 25"):
        load_config(overrides=["features.26.chunks=3"])
    # errors inside an item name the override, and suggest the key at that item
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["features.C14.chunkz=3"])
    assert "features.C14.chunkz: unknown key (did you mean features.C14.chunks?" in str(err.value)
    assert str(err.value).endswith("(from --set features.C14.chunkz=3)")
    with pytest.raises(ConfigError, match=r"greater than 0 \(from --set features.C14.chunks=0\)"):
        load_config(overrides=["features.C14.chunks=0"])
    # an error's key names the item as the user does (it named it by position:
    # features.13.chunks); by position where its name cannot be a key's part
    for override, shown in [
        ("features.C14.chunks=0", "  features.C14.chunks: Input should be greater than 0"),
        ("features.13.chunks=0", "  features.C14.chunks: Input should be greater than 0"),
        ("model.bottom_mlp.0=-1", "  model.bottom_mlp.0: Input should be greater than 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[override])
        assert shown in str(err.value)
    for name in ("2024", "a.b"):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"features.0.name={name}", "features.0.chunks=0"])
        assert "  features.0.chunks: Input should be greater than 0" in str(err.value)
    # a name that repeats another's: the list's check, naming both items' keys and the
    # override that made it, wherever it stands (a check of the whole job said "<top level>"
    # and named no override)
    line = (
        "  features: Value error, duplicate feature names ['C2'] (features.0.name, features.1.name)"
    )
    for overrides in (
        ["features.0.name=C2", "features.C14.chunks=3"],
        ["features.C14.chunks=3", "features.0.name=C2"],
    ):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=overrides)
        assert f"{line} (from --set features.0.name=C2)" in str(err.value)
    # by the old name, which the config no longer holds: alone it is the one; beside another
    # override into the list it is a guess, and none is named rather than the wrong one
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["features.C1.name=C2"])
    assert f"{line} (from --set features.C1.name=C2)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["features.C1.name=C2", "features.C14.chunks=3"])
    assert str(err.value).endswith("features.1.name)")


def test_overrides_into_list_items_from_a_review() -> None:
    from dist_train.config.keys import closest_key, known_key

    # a plain list's item has no keys (a TypeError's traceback)
    for item in ("data.dense_columns.0.x=1", "model.bottom_mlp.0.x.y=1"):
        with pytest.raises(ConfigError, match=r"'0' is not a section"):
            load_config(overrides=["data.dense_columns=[I1,I2]", item])
    # an item of a list of text keeps its text; of numbers, reads a number
    text = load_config(overrides=["data.dense_columns=[I1,I2]", "data.dense_columns.1=I3"])
    assert text.data.dense_columns == ["I1", "I3"]
    assert load_config(overrides=["model.bottom_mlp.0=32"]).model.bottom_mlp == [32]
    # the override at fault is the one blamed, not the last into the list
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["features.C14.chunks=0", "features.C2.chunks=3"])
    assert str(err.value).endswith("(from --set features.C14.chunks=0)")
    # a suggestion keeps the item only where it stays in the list
    assert closest_key("features.C14.chunkz") == "features.C14.chunks"
    assert closest_key("features.C14.batch_size") == "train.batch_size"
    # submit's check of keys it cannot validate (no config here): items are keys
    assert known_key("features.C14.chunks") and known_key("features.0") and known_key("features")
    assert not known_key("features.C14.chunkz") and not known_key("model.bottom_mlp.0.x")


@pytest.mark.parametrize(
    ("item", "named"),
    [
        ("embedding.num_rows=99999999999999999999999", "embedding.num_rows: Value error, "),
        ("embedding.dim=99999999999999999999999", "embedding.dim: Input should be less"),
        ("embedding.num_rows=4611686018427387904", "num_rows x dim = 7.38e+19 elements"),
        ("model.bottom_mlp=[100000000000000000000]", "model.bottom_mlp.0: Input should be"),
        ("ray.num_workers=100000000000000000000", "ray.num_workers: Input should be less"),
        ("train.batch_size=99999999999999999999", "train.batch_size: Input should be less"),
        ("features.C1.cardinality=99999999999999999999", "features.C1.cardinality: Value error"),
    ],
)
def test_sizes_past_any_machine_are_named_by_their_key(item: str, named: str) -> None:
    """A review's finding: these passed validation, then failed in the layout or the planner
    with an OverflowError or a torch error naming no key (tracebacks in plan and validate)."""
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(overrides=[item])


def test_a_collisionless_table_past_any_machine_is_named() -> None:
    over = ["embedding.kind=collisionless", "data.synthetic.string_columns=[]"]
    with pytest.raises(
        ConfigError, match=r"embedding\.kind=collisionless: the tables of \['C26'\]"
    ):
        load_config(overrides=[*over, "features.C26.cardinality=4611686018427387904"])
    with pytest.raises(
        ConfigError, match=r"embedding\.kind=collisionless: the tables of \['C4'\]"
    ):  # 64 chunks
        load_config(
            overrides=[*over, "features.C4.cardinality=4503599627370496", "features.C4.chunks=64"]
        )


def test_a_relative_file_url_is_made_absolute(tmp_path: Path) -> None:
    """`file://out/...` named another folder in Ray's workers (they run elsewhere)."""
    from dist_train.config.paths import absolute_path

    assert absolute_path("file://out/ckpt", tmp_path) == f"file://{tmp_path}/out/ckpt"
    assert absolute_path("file:///abs/ckpt", tmp_path) == "file:///abs/ckpt"
    assert absolute_path("s3://bucket/ckpt", tmp_path) == "s3://bucket/ckpt"
    assert absolute_path("rel", tmp_path) == str(tmp_path / "rel")


def test_a_file_url_with_one_slash_names_the_path_fsspec_reads(tmp_path: Path) -> None:
    """fsspec and pyarrow read `file:/abs/x` as `/abs/x`; it was made `<cwd>/file:/abs/x`."""
    import fsspec

    from dist_train.config.paths import absolute_path

    for url, local in (("file:/abs/ckpt", "/abs/ckpt"), ("file:out/ckpt", "out/ckpt")):
        ours = absolute_path(url, tmp_path)
        assert ours == "file://" + str(tmp_path / local)
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)  # fsspec reads a relative one against the working folder
            assert fsspec.core.url_to_fs(url)[1] == fsspec.core.url_to_fs(ours)[1]


def test_a_ray_address_that_is_no_gcs_address_is_refused_naming_the_key() -> None:
    """A job server's URL, a host without a port or a port that is no number ran Ray's
    start-up, then failed with Ray's error, which named RAY_ADDRESS or nothing (a helper's
    audit)."""
    for address, why in (
        ("http://127.0.0.1:8265", "is a job server's URL"),
        ("127.0.0.1", "is no host:port"),
        ("localhost:6391x", "is no host:port"),
        ("::1:6379", "is no host:port"),  # an IPv6 host needs its brackets
        ("10.0.0.1:99999", "is no host:port"),
        ("local", "leave ray.address null"),
    ):
        with pytest.raises(ConfigError, match=rf"ray.address: Value error, .*{why}"):
            load_config(overrides=[f"ray.address={address}"])
    for address in ("auto", "10.0.0.1:6379", "[::1]:6379", "ray://head:10001", "h-0.svc:6379"):
        assert load_config(overrides=[f"ray.address={address}"]).ray.address == address
    # empty is null, in a file as on the command line (a review found "" refused)
    raw = load_config().model_dump(mode="json")
    raw["ray"]["address"] = ""
    assert parse_config(raw).ray.address is None


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            "data.dense_columns=[I1,label]",
            "data.label_column='label' is also in data.dense_columns",
        ),
        (
            "features.C3.column=label",
            "data.label_column='label' is also the column of feature C3 (features.C3.column)",
        ),
        ("data.label_column=C5", "data.label_column='C5' is also the column of feature C5"),
        ("data.row_id_column=I2", "data.row_id_column='I2' is also in data.dense_columns"),
        ("data.row_id_column=label", "data.row_id_column and data.label_column are both 'label'"),
    ],
)
def test_the_label_or_row_ids_as_a_model_input_are_refused(override: str, named: str) -> None:
    """A label read as a dense column or a feature's column trained to a test AUC of 1.0 with
    no error (a review's walk-through, on a user's own Parquet)."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert named in str(err.value) and f"(from --set {override})" in str(err.value)
    # a feature without a column reads the column of its name: the key is its name's (the
    # override names the feature by its old name, which no item holds now: not blamed)
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["features.C2.name=label"])
    assert "is also the column of feature label (features.label): the model" in str(err.value)
    # a dense column that is also a feature's is a choice (a count bucketed as a category)
    own = ["data.train_path=/data/train", "data.test_path=/data/test"]
    both = load_config(overrides=[*own, "data.dense_columns=[I1,I2]", "features.C3.column=I1"])
    assert both.features[2].source_column == "I1" and "I1" in both.data.resolved_dense_columns()


def test_sizes_an_embedding_kind_does_not_read_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """embedding.num_tables, read by unified alone, took no effect under the other kinds,
    unsaid. The driver warns of it, as of another model kind's settings. num_rows is read by
    every kind: the bound of the tables' initialization (collisionless's too)."""
    from dist_train.driver import _warn_unread

    exact = ["embedding.kind=collisionless", "data.synthetic.string_columns=[]"]
    sized = load_config(overrides=[*exact, "embedding.num_rows=5000", "embedding.num_tables=2"])
    assert sized.embedding.unread_settings() == ["embedding.num_tables=2"]
    hashed = load_config(overrides=["embedding.kind=hashing_trick", "embedding.num_tables=2"])
    assert hashed.embedding.unread_settings() == ["embedding.num_tables=2"]
    unified = ["embedding.num_rows=5000", "embedding.num_tables=2", "embedding.dim=8"]
    assert load_config(overrides=unified).embedding.unread_settings() == []
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_unread(sized)
    assert (
        "embedding.kind=collisionless does not read embedding.num_tables=2: it takes no "
        "effect" in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_unread(load_config(overrides=["model.cross_layers=5"]))
    assert "model.kind=dlrm does not read model.cross_layers=5: it takes" in caplog.text
    assert "embedding.kind" not in caplog.text
    # a DLRM with no dense columns learns one vector (no bottom MLP); SGD reads no eps
    caplog.clear()
    no_dense = [
        "data.synthetic.num_dense=0",
        "model.bottom_mlp=[32]",
        "embedding.optimizer.eps=0.1",
    ]
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_unread(load_config(overrides=no_dense))
    assert "a DLRM without dense columns does not read model.bottom_mlp=[32]" in caplog.text
    assert "eps" not in caplog.text  # Adagrad reads it
    caplog.clear()
    with caplog.at_level("WARNING", logger="dist_train"):
        _warn_unread(
            load_config(
                overrides=[
                    "model.bottom_mlp=[32]",
                    "embedding.optimizer.type=sgd",
                    "embedding.optimizer.eps=0.1",
                ]
            )
        )
    assert "bottom_mlp" not in caplog.text  # 13 dense columns: read
    assert "embedding.optimizer.type=sgd does not read embedding.optimizer.eps=0.1" in caplog.text
    # the hashing trick's tables need a row a chunk: fewer would exceed their budget
    with pytest.raises(
        ConfigError, match=r"num_rows \(25\) is fewer than the features' chunks \(39\)"
    ):
        load_config(overrides=["embedding.kind=hashing_trick", "embedding.num_rows=25"])
    load_config(overrides=["embedding.kind=hashing_trick", "embedding.num_rows=39"])
    # each kind's sizes are settings, and only num_rows and num_tables differ between kinds
    sizes = {k for kind in EMBEDDING_SETTINGS.values() for k in kind}
    assert sizes == {"num_rows", "num_tables"} and set(EMBEDDING_SETTINGS) == {
        "unified",
        "hashing_trick",
        "collisionless",
    }


def test_settings_another_model_kind_reads_are_named() -> None:
    """A DLRM given cross or attention settings (model.kind forgotten) trained a DLRM, and
    nothing it printed named the kind (a walk-through's finding): the driver warns of them
    and names the model in its first line."""
    cfg = load_config(overrides=["model.cross_layers=5", "model.attention_heads=4"])
    assert cfg.model.unread_settings() == ["model.cross_layers=5", "model.attention_heads=4"]
    assert cfg.model.describe() == "dlrm (bottom_mlp=[64], top_mlp=[128, 64], interaction=dot)"
    dcn = load_config(overrides=["model.kind=dcn_v2", "model.bottom_mlp=[32]"]).model
    assert dcn.unread_settings() == ["model.bottom_mlp=[32]"]
    assert dcn.describe() == "dcn_v2 (top_mlp=[128, 64], cross_layers=3, cross_rank=None)"
    assert load_config(overrides=["model.kind=autoint"]).model.unread_settings() == []
    # each kind reads settings that exist, and every setting but the kind has a reader
    read = {k for kind in MODEL_SETTINGS.values() for k in kind}
    assert read == set(ModelConfig.model_fields) - {"kind"}


def test_an_empty_path_is_refused_naming_the_key() -> None:
    """`checkpoint.dir: ""` (or any path key's) was made absolute as the working directory:
    the run's checkpoints, and the pruning of old ones, went wherever the command ran (a
    review's finding)."""
    keys = (
        "output_dir",
        "checkpoint.dir",
        "checkpoint.resume",
        "ray.storage_path",
        "sharding.topology",
        "data.train_path",
        "data.test_path",
    )
    for key in keys:
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .*an empty path"):
            load_config(overrides=[f'{key}=" "'])
    # a file: URL of a local folder is that folder (it made one named 'file:' here)
    assert load_config(overrides=["output_dir=file:/tmp/x"]).output_dir == "/tmp/x"
    assert load_config(overrides=["output_dir=file:///tmp/x"]).output_dir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"output_dir: .*an empty path"):
        load_config(overrides=["output_dir=file:"])


def test_numbers_are_not_read_in_octal_or_base_60(tmp_path: Path) -> None:
    """PyYAML's YAML 1.1 read `seed: 0123` as octal (83) and `epochs: 1:30` in base 60
    (90), in a file and on the command line alike, without a word (a review's finding)."""
    job = tmp_path / "job.yaml"
    text = DEFAULT_CONFIG.read_text().replace("seed: 0\n", "seed: 0123\n")
    job.write_text(text.replace("batch_size: 2048 ", "batch_size: 0512 "))
    cfg = load_config(job)
    assert (cfg.seed, cfg.train.batch_size) == (123, 512)
    assert load_config(overrides=["train.batch_size=0100"]).train.batch_size == 100
    assert load_config(overrides=["seed=0o17"]).seed == 15  # YAML 1.2's octal
    assert load_config(overrides=["seed=0x10", "train.epochs=1_000"]).seed == 16
    # a text key keeps a leading zero: "09" in a file, given to --set or round the overrides
    named = tmp_path / "named.yaml"
    named.write_text(DEFAULT_CONFIG.read_text().replace("name: default", "name: 09"))
    assert load_config(named, ["seed=1"]).name == "09"
    named.write_text(DEFAULT_CONFIG.read_text().replace("name: default", 'name: "0o17"'))
    assert load_config(named, ["seed=1"]).name == "0o17"
    with pytest.raises(ConfigError, match="seed: Input should be a valid integer"):
        load_config(overrides=["seed=0o_"])  # no digits: the key's error, not a traceback
    for base_60 in ("train.epochs=1:30", "train.dense_learning_rate=1:5.0"):
        with pytest.raises(ConfigError, match="Input should be a valid"):
            load_config(overrides=[base_60])


def test_a_feature_name_with_a_dot_is_refused_before_training() -> None:
    """A feature named `a.b` passed validation, then training failed after the data were
    prepared (TorchRec: module name can't contain '.'), naming neither file nor key."""
    for name in ("a.b", '""'):
        with pytest.raises(ConfigError, match=r"features\.0\.name: .*hold no '\.'"):
            load_config(overrides=[f"features.C1.name={name}"])
    dotted = load_config(
        overrides=["data.train_path=x", "data.test_path=y", "features.0.column=a.b"]
    )
    assert dotted.features[0].column == "a.b"  # a column may hold one


def test_resume_is_taken_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    """`train --resume ''` was dropped (a fresh run) and `--resume null` read as YAML's null
    (a fresh run too), each without a word (a review's finding)."""
    from dist_train.cli.main import main

    assert main(["train", "--resume", " "]) == 2
    assert "error: --resume: an empty path; name a checkpoint, or latest" in capsys.readouterr().err
    import argparse

    from dist_train.config.args import train_overrides

    args = argparse.Namespace(set=["seed=1"], resume="null")
    assert load_config(overrides=train_overrides(args)).checkpoint.resume == "null"
    args.resume = "it's"
    assert load_config(overrides=train_overrides(args)).checkpoint.resume == "it's"


def test_a_unions_error_is_one_problem_at_its_key(tmp_path: Path) -> None:
    """`sharding.group_size=AUTO` was 2 problems, at `sharding.group_size.int` and
    `sharding.group_size.literal['auto']`, keys that do not exist (a review's finding)."""
    with pytest.raises(ConfigError) as bad:
        load_config(overrides=["sharding.group_size=AUTO", "train.pipeline=maybe"])
    said = str(bad.value)
    assert "(2 problem(s))" in said and ".int" not in said and "literal[" not in said
    # an enum among the members: every value it takes (it said "expected 'auto'" alone)
    with pytest.raises(ConfigError) as enum:
        load_config(overrides=["sharding.type=foo"])
    assert "(1 problem(s))" in str(enum.value) and "str-enum" not in str(enum.value)
    assert "sharding.type: expected 'auto' or 'row_wise', " in str(enum.value)
    assert "  sharding.group_size: expected an integer or 'auto'; got 'AUTO'" in said
    assert "  train.pipeline: expected 'auto' or true or false; got 'maybe'" in said


def test_malformed_yaml_is_one_line_at_its_place(tmp_path: Path) -> None:
    """PyYAML's message spans lines and names the text `"<unicode string>"`, not the file."""
    bad = tmp_path / "tab.yaml"
    bad.write_text("train:\n\tepochs: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    said = str(err.value)
    assert said.startswith(f"{bad}:2:1: not valid YAML: found character") and "\n" not in said
    assert "<unicode string>" not in said


def test_an_item_of_a_list_not_set_or_empty_says_so(tmp_path: Path) -> None:
    """`--set model.attention_mlp.0=32` where the config leaves the list unset made a mapping
    {'0': 32}, refused as "Input should be a valid list"; on an empty list it named
    positions "from 0 to -1" (a review's findings)."""
    with pytest.raises(ConfigError, match=r"model\.attention_mlp is not set, so it has no item 0"):
        load_config(overrides=["model.attention_mlp.0=32"])
    empty = tmp_path / "empty.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw.setdefault("model", {})["attention_mlp"] = []
    empty.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"attention_mlp is empty, so it has no item '0'"):
        load_config(empty, ["model.attention_mlp.0=32"])
    assert load_config(overrides=["model.attention_mlp=[32]"]).model.attention_mlp == [32]
    assert load_config(overrides=["features.0.chunks=2"]).features[0].chunks == 2


def test_an_alias_bomb_at_a_unions_key_is_quoted_short() -> None:
    """A union's error quoted its whole input: 248 characters of YAML aliases at
    `sharding.group_size` printed a 254 MB message, and 9 levels in a file ran past 40 s and
    3.4 GB (a helper's audit)."""
    level = "&a [x,x,x,x,x,x,x,x,x]"
    for name, last in zip("bcdefgh", "abcdefg", strict=True):
        level += f",&{name} [" + ",".join([f"*{last}"] * 9) + "]"
    with pytest.raises(ConfigError) as bad:
        load_config(overrides=[f"sharding.group_size=[{level}]"])
    said = str(bad.value)
    assert "sharding.group_size: expected an integer or 'auto'; got [[" in said
    assert len(said) < 2_000, len(said)


def test_yaml_nested_too_deeply_is_named_not_a_traceback(tmp_path: Path) -> None:
    """PyYAML composes nested collections recursively: a config or `--set` value nested a
    few thousand deep ended in a RecursionError's traceback (a helper's audit)."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(deep))}: nested too deeply to read$"):
        load_config(deep)
    with pytest.raises(ConfigError, match=r"^--set seed=\.\.\.: nested too deeply to read$"):
        load_config(overrides=["seed=" + "[" * 3000 + "]" * 3000])


def test_a_config_read_from_a_pipe_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config <(cat job.yaml)` and `--config /dev/stdin` were "no such config file": a
    pipe is no regular file (a helper's audit)."""
    import os
    import threading
    import time

    from dist_train.config import yaml_file

    fifo = tmp_path / "job.fifo"
    os.mkfifo(fifo)
    text = (DEFAULT_CONFIG.parent / "tiny.yaml").read_text()

    def write_later() -> None:  # a writer that opens the pipe after the reader did
        time.sleep(0.5)
        fifo.write_text(text)

    writer = threading.Thread(target=write_later, daemon=True)
    writer.start()
    try:
        # it read as empty where the writer had not opened the pipe yet (a flaky test)
        assert load_config(fifo).name == "tiny"
    finally:
        writer.join(timeout=10)
    # a pipe nothing writes to: opening it waited without end (a review)
    monkeypatch.setattr(yaml_file, "PIPE_WAIT_S", 0.2)
    with pytest.raises(ConfigError, match=r"job.fifo: cannot read it \(a pipe that nothing wrote"):
        load_config(fifo)
    # a shell's pipe (`<(slow command)`, /dev/stdin) is read however long its writer takes
    # (a second review: cut off after the wait)
    read_end, write_end = os.pipe()

    def send_later() -> None:
        time.sleep(0.5)
        with os.fdopen(write_end, "w") as f:
            f.write(text)

    sender = threading.Thread(target=send_later, daemon=True)
    sender.start()
    try:
        assert load_config(Path(f"/dev/fd/{read_end}")).name == "tiny"
    finally:
        sender.join(timeout=10)
        os.close(read_end)
    # a device is read no further than a config could be (it was, until memory ran out)
    with pytest.raises(ConfigError, match=r"^/dev/zero: over 64 MiB, no YAML file of ours$"):
        load_config("/dev/zero")
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "none.yaml")


def test_an_item_set_to_null_and_a_mappings_bad_entry_name_their_override() -> None:
    """`--set features.C1=` said "features.0: Input should be a valid dictionary", and
    `--set sharding.pooling_factors.C1=nan` named no --set (a helper's audit)."""
    with pytest.raises(ConfigError, match=r"^--set features.C1=: an item of features cannot"):
        load_config(overrides=["features.C1="])
    with pytest.raises(ConfigError, match=r"features has no item named 'C99'"):  # first
        load_config(overrides=["features.C99="])
    with pytest.raises(ConfigError) as bad:
        load_config(overrides=["sharding.pooling_factors.C1=nan"])
    assert "(from --set sharding.pooling_factors.C1=nan)" in str(bad.value)


def test_the_generated_datas_probability_column_is_named_as_such() -> None:
    """`data.row_id_column=oracle_p` said the generated data have no such column; they do,
    a float (a helper's audit)."""
    with pytest.raises(ConfigError, match=r"'oracle_p': in the generated data it is the true"):
        load_config(overrides=["data.row_id_column=oracle_p"])
    with pytest.raises(ConfigError, match=r"'ids': in the generated data it is no column"):
        load_config(overrides=["data.row_id_column=ids"])

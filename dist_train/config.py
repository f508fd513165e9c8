"""Job configuration: pydantic models validated once, at the edge.

A job config is a YAML file (see ``launch/configs/``). ``load_config`` reads it, applies
``--set key.path=value`` overrides, and returns a validated :class:`JobConfig` or raises
:class:`ConfigError` naming the file, the dotted key at fault, and why.
"""

from __future__ import annotations

import argparse
import copy
import decimal
import difflib
import errno
import os
import re
import reprlib
import select
import stat
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from planners.topology import TopologyError, parse_bytes
from planners.types import ShardingType

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (an install: site-packages)
DEFAULT_CONFIG = REPO_ROOT / "launch" / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A job config that cannot be used; the message names the file and key."""


def _kinds(annotation: Any) -> list[Any]:
    """The types a field of ``annotation`` takes: its unions' members, constraints dropped."""
    kinds: list[Any] = []
    todo = [annotation]
    while todo:
        kind = todo.pop()
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            todo.append(typing.get_args(kind)[0])
        elif origin in (typing.Union, types.UnionType):
            todo.extend(typing.get_args(kind))
        else:
            kinds.append(kind)
    return kinds


def _numeric(annotation: Any) -> bool:
    """Whether a field of ``annotation`` takes a number and no yes/no value."""
    kinds = _kinds(annotation)
    return bool not in kinds and any(k in (int, float) for k in kinds)


def _yes_no_for_number(annotation: Any, value: Any) -> str | None:
    """Where ``value`` holds a yes/no value that ``annotation`` would read as a number: ""
    (the value itself), "[i]" (a list's entry) or ".key" (a mapping's); None if nowhere."""
    if isinstance(value, bool):
        return "" if _numeric(annotation) else None
    for kind in _kinds(annotation):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is list and isinstance(value, list) and _numeric(args[0]):
            return next((f"[{i}]" for i, v in enumerate(value) if isinstance(v, bool)), None)
        if origin is dict and isinstance(value, dict) and _numeric(args[1]):
            return next((f".{k}" for k, v in value.items() if isinstance(v, bool)), None)
    return None


# a number in exponent form, as YAML 1.2 reads one: PyYAML (YAML 1.1) reads 1e6 as text
# beyond it int(Decimal) of a huge exponent took seconds, and 1e-400 rounded to 0
_LARGEST_EXPONENT = 30
_EXPONENT_FORM = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+")


def _exponent_numbers(annotation: Any, value: Any) -> Any:
    """``value`` with text in exponent form (``3e5``) read as the number a numeric field of
    ``annotation`` (or its list's or mapping's values) holds: an integer where the field
    takes no float and the number is whole (exactly, past 2**53 too), else a float. A text
    field keeps its text, and so does a number past 1e30 or under 1e-30 either way (the
    field then refuses it)."""
    if not _numeric(annotation):
        for kind in _kinds(annotation):
            origin, args = typing.get_origin(kind), typing.get_args(kind)
            if origin is list and isinstance(value, list):
                return [_exponent_numbers(args[0], v) for v in value]
            if origin is dict and isinstance(value, dict):
                return {k: _exponent_numbers(args[1], v) for k, v in value.items()}
        return value
    if not (isinstance(value, str) and _EXPONENT_FORM.fullmatch(value.strip())):
        return value
    try:
        number = decimal.Decimal(value.strip())
        small = abs(number.adjusted()) <= _LARGEST_EXPONENT
    except decimal.InvalidOperation:  # an exponent past what Decimal holds
        small = False
    if not small:
        return value  # no setting's size: the field refuses the text (1e400, 1e-400)
    if float in _kinds(annotation):
        return float(number)
    # an integer field: a whole number exactly, else pydantic's "fractional part" error
    return int(number) if number == number.to_integral_value() else number


class _Strict(BaseModel):
    # inf and nan are no setting's value: an infinite cpus_per_worker or pooling factor
    # passed validation and failed deep in the planner or the launch
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A number (or a list or mapping of numbers) refuses YAML's yes/no values (``on``,
        ``yes``, ``true``), which pydantic would take as 1 and 0: ``sharding.group_size=on``
        was full replication."""
        field = cls.model_fields.get(info.field_name or "")
        where = None if field is None else _yes_no_for_number(field.annotation, value)
        if where is not None:
            raise ValueError(
                f"expected a number{' at ' + where if where else ''}, got a yes/no value "
                "(YAML reads yes/no and on/off as true/false)"
            )
        return value if field is None else _exponent_numbers(field.annotation, value)

    def changed_settings(self, prefix: str, keys: Sequence[str]) -> list[str]:
        """``PREFIX.KEY=VALUE`` of each of ``keys`` given away from its default."""
        default = type(self)()
        return [
            f"{prefix}.{k}={getattr(self, k)}"
            for k in keys
            if getattr(self, k) != getattr(default, k)
        ]

    @field_validator("*", mode="after")
    @classmethod
    def _ints_within_64_bits(cls, value: Any) -> Any:
        """No whole number past a 64-bit integer (a row count of 10^23 passed validation and
        failed in the layout with an OverflowError naming no key)."""
        if _past_int64(value):
            raise ValueError(f"{value!r} holds a whole number past a 64-bit integer")
        return value


def _past_int64(value: Any) -> bool:
    if isinstance(value, int):
        return abs(value) > 2**63 - 1
    if isinstance(value, list | tuple):
        return any(map(_past_int64, value))
    if isinstance(value, dict):
        return any(map(_past_int64, value.values()))
    return False


# Widths far past any network's, short of sizes whose products overflow or whose allocation
# fails naming no key: a layer of 2**20 x 2**20 weights is 4 TiB
MAX_WIDTH = 2**20
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


def _not_empty(path: str) -> str:
    # made absolute, '' (or file:, file://) was the working directory: checkpoints landed
    # wherever the command ran
    local = path[len("file:") :] if path.startswith("file:") else path
    if not (local[2:] if local.startswith("//") else local).strip():
        raise ValueError("an empty path; leave the key out for its default")
    return path


PathText = Annotated[str, AfterValidator(_not_empty)]
"""A path or URL: never empty."""
MAX_COLUMNS = 2**16  # a generated dataset's columns of each kind (Criteo's: 13 and 26)
# ids of one generated column: its sampler holds 16 bytes an id (4 GiB at this bound)
MAX_VOCABULARY = 2**28
MAX_TABLE_ELEMENTS = 2**56  # 256 PiB of float32, past any cluster; products stay in int64


class SyntheticDataConfig(_Strict):
    """The Criteo-shaped generator used when no data paths are given."""

    num_train_rows: int = Field(200_000, gt=0, description="Rows in the training split.")
    num_test_rows: int = Field(50_000, gt=0, description="Rows in the test split.")
    num_dense: int = Field(13, ge=0, le=MAX_COLUMNS, description="Dense columns I1..In.")
    num_categorical: int = Field(
        26, gt=0, le=MAX_COLUMNS, description="Categorical columns C1..Cn."
    )
    min_cardinality: int = Field(
        10, gt=0, le=MAX_VOCABULARY, description="Smallest categorical vocabulary."
    )
    max_cardinality: int = Field(
        100_000, gt=0, le=MAX_VOCABULARY, description="Largest categorical vocabulary."
    )
    cardinalities: list[Annotated[int, Field(gt=0, le=MAX_VOCABULARY)]] | None = Field(
        None, description="Explicit per-column vocabulary sizes (overrides min/max)."
    )
    zipf_exponent: float = Field(1.1, ge=0.0, description="Skew of id frequencies (0 = uniform).")
    multi_hot_columns: list[str] = Field(
        default_factory=lambda: ["C24", "C25", "C26"],
        description="Categorical columns written as lists of ids.",
    )
    mean_multi_hot_length: float = Field(
        3.0, ge=1, le=1024, description="Mean list length (Poisson + 1: at least 1)."
    )
    string_columns: list[str] = Field(
        default_factory=lambda: ["C1", "C2"],
        description="Categorical columns written as hex strings (as Criteo ships them).",
    )
    null_fraction: float = Field(0.02, ge=0.0, lt=1.0, description="Share of null cells.")
    signal_scale: float = Field(
        1.0, gt=0.0, description="Std of the planted per-id logit contributions."
    )
    num_train_files: int = Field(4, gt=0, description="Parquet files for the training split.")
    rows_per_group: int = Field(16_384, gt=0, description="Parquet row-group size.")
    seed: int = Field(1234, ge=0, description="Generator seed (independent of the training seed).")

    @model_validator(mode="after")
    def _check(self) -> SyntheticDataConfig:
        if self.min_cardinality > self.max_cardinality:
            raise ValueError("min_cardinality must be <= max_cardinality")
        if self.num_train_files > self.num_train_rows:  # a file of no rows is no file
            raise ValueError(
                f"num_train_files ({self.num_train_files}) exceeds num_train_rows "
                f"({self.num_train_rows}): every file needs a row"
            )
        if self.cardinalities is not None and len(self.cardinalities) != self.num_categorical:
            raise ValueError(
                f"cardinalities has {len(self.cardinalities)} entries, "
                f"num_categorical is {self.num_categorical}"
            )
        names = {f"C{i + 1}" for i in range(self.num_categorical)}
        for key in ("multi_hot_columns", "string_columns"):
            unknown = sorted(set(getattr(self, key)) - names)
            if unknown:
                raise ValueError(f"{key} names unknown columns {unknown}")
        return self

    def column_cardinalities(self) -> list[int]:
        """Vocabulary size of C1..Cn (log-spaced between min and max unless given)."""
        if self.cardinalities is not None:
            return list(self.cardinalities)
        n = self.num_categorical
        if n == 1:
            return [self.max_cardinality]
        lo, hi = self.min_cardinality, self.max_cardinality
        return [round(lo * (hi / lo) ** (i / (n - 1))) for i in range(n)]


class DataConfig(_Strict):
    """Where the data is and which columns mean what."""

    train_path: PathText | None = Field(
        None,
        description=(
            "Parquet file, directory or glob; None = generate synthetic data (with "
            "test_path: both or neither)."
        ),
    )
    test_path: PathText | None = Field(
        None, description="Held-out Parquet data for final metrics (with train_path)."
    )
    label_column: str = Field(
        "label", description="0/1 click label; never also a dense or feature column."
    )
    dense_columns: list[str] | None = Field(
        None, description="Dense float columns; None = I1..I<num_dense> of the generator."
    )
    dense_transform: Literal["log1p", "none"] = Field(
        "log1p", description="log(1 + max(x, 0)) tames Criteo's count features."
    )
    shuffle_buffer_rows: int = Field(
        0,
        ge=0,
        description=(
            "Shuffle rows within windows of this many rows (after the per-epoch shuffle of "
            "row-group order); 0 = keep row order inside row groups. Memory: one window."
        ),
    )
    on_bad_input: Literal["error", "skip"] = Field(
        "error",
        description=(
            "error: stop at the first bad file or row, naming file, row group and column; "
            "skip: drop bad files, row groups and rows and report counts in the summary."
        ),
    )
    row_id_column: str | None = Field(
        None,
        description=(
            "A column of unique integer row ids (generated data has `row_id`). When set, every "
            "rank appends the ids it trains on, step by step, to <run dir>/ledger/rank-<r>.jsonl "
            "(`dist_train.train.ledger` replays it across failures to audit exactly-once input)."
        ),
    )
    synthetic: SyntheticDataConfig = Field(default_factory=SyntheticDataConfig)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if (self.train_path is None) != (self.test_path is None):
            raise ValueError("give both train_path and test_path, or neither (synthetic data)")
        listed = self.dense_columns or []
        twice = sorted({c for c in listed if listed.count(c) > 1})
        if twice:  # (the same column fed to the model twice)
            raise ValueError(f"dense_columns names {', '.join(twice)} more than once")
        return self

    def resolved_dense_columns(self) -> list[str]:
        return dense_column_names(self.dense_columns, self.synthetic.num_dense)


def dense_column_names(listed: Sequence[str] | None, num_dense: int) -> list[str]:
    """The dense columns a job reads: those listed, else the generator's I1..In."""
    return list(listed) if listed is not None else [f"I{i + 1}" for i in range(num_dense)]


class FeatureConfig(_Strict):
    """One categorical feature: a column and how many chunks of the table it gets."""

    name: str = Field(description="Feature name; also the salt, so renaming remaps rows.")
    column: str | None = Field(None, description="Parquet column (default: the name).")
    chunks: int = Field(1, gt=0, le=64, description="Chunks (probes) k_f into the table.")
    cardinality: int | None = Field(
        None,
        gt=0,
        description=(
            "Vocabulary size; required by the collisionless baseline (its rows). Declared, it "
            "is also a check under every kind: an integer id outside [0, cardinality) is bad "
            "input (data.on_bad_input). Leave it unset for hashed features whose ids may "
            "exceed it, such as ids first seen in the test set."
        ),
    )

    @field_validator("name")
    @classmethod
    def _no_dots(cls, v: str) -> str:
        # a name names the feature's table, whose module name and checkpoint keys are
        # dot-separated paths: 'a.b' trained into a KeyError after the data were prepared
        if not v or "." in v:
            raise ValueError(
                f"{v!r}: a feature's name must be non-empty and hold no '.' (it names the "
                "feature's table and its checkpoint keys); keep a dotted column's name in "
                "column:"
            )
        return v

    @property
    def source_column(self) -> str:
        return self.column or self.name


class EmbeddingOptimizerConfig(_Strict):
    """The FBGEMM fused optimizer applied inside the embedding backward pass."""

    type: Literal["rowwise_adagrad", "adam", "sgd"] = Field(
        "rowwise_adagrad", description="Fused optimizer of the embedding tables."
    )
    learning_rate: float = Field(0.01, gt=0.0, description="Embedding learning rate.")
    eps: float = Field(1e-8, gt=0.0, description="Adagrad/Adam epsilon.")
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        description=(
            "L2 weight decay; above 0 refused for fused optimizers on CPU ranks (FBGEMM's "
            "CPU kernels ignore it)."
        ),
    )


EMBEDDING_SETTINGS = {
    "unified": ("num_rows", "num_tables"),
    "hashing_trick": ("num_rows",),
    "collisionless": ("num_rows",),  # not its tables' rows: their initialization's bound
}
"""The ``embedding.*`` sizes each ``embedding.kind`` reads (the rest every kind reads)."""


class EmbeddingConfig(_Strict):
    """The shared table (Unified Embedding) or one of the baselines."""

    kind: Literal["unified", "collisionless", "hashing_trick"] = Field(
        "unified",
        description=(
            "unified: one shared hashed table; collisionless: one exact table per feature; "
            "hashing_trick: one hashed table per feature, same parameter budget as unified."
        ),
    )
    num_rows: int = Field(
        1_000_000,
        gt=0,
        description=(
            "Rows M of the shared table (unified, hashing_trick); every kind's tables start "
            "from U(+-1/sqrt(M)). The default job (launch/configs/default.yaml) sets 300,000."
        ),
    )
    dim: int = Field(16, gt=0, le=MAX_WIDTH, description="Columns d of each chunk vector.")
    num_tables: int = Field(
        1, gt=0, description="Split the unified table round-robin into this many sub-tables."
    )
    pooling: Literal["sum", "mean"] = Field("sum", description="Pooling of multi-hot values.")
    optimizer: EmbeddingOptimizerConfig = Field(default_factory=EmbeddingOptimizerConfig)

    def settings_read(self) -> tuple[str, ...]:
        """The settings this ``kind`` reads: every kind reads ``dim``, ``pooling``,
        ``optimizer`` and ``num_rows`` (the initialization's bound); ``num_tables`` is
        the unified table's split."""
        return (*EMBEDDING_SETTINGS[self.kind], "dim", "pooling", "optimizer")

    def unread_settings(self) -> list[str]:
        """``embedding.KEY=VALUE`` of each setting given away from its default that this
        ``kind`` does not read."""
        return self.changed_settings(
            "embedding",
            [k for k in type(self).model_fields if k not in ("kind", *self.settings_read())],
        )

    @model_validator(mode="after")
    def _check(self) -> EmbeddingConfig:
        if self.num_tables > self.num_rows:
            raise ValueError("num_tables must not exceed num_rows")
        if self.num_rows * self.dim > MAX_TABLE_ELEMENTS:
            raise ValueError(
                f"num_rows x dim = {self.num_rows * self.dim:.3g} elements: more than "
                f"{MAX_TABLE_ELEMENTS:.3g} (2**56), past any cluster's memory"
            )
        return self


MODEL_SETTINGS = {
    "dlrm": ("bottom_mlp", "top_mlp", "interaction"),
    "dcn_v2": ("top_mlp", "cross_layers", "cross_rank"),
    "autoint": ("attention_layers", "attention_heads", "attention_dim", "attention_mlp"),
}
"""The ``model.*`` settings each ``model.kind`` reads (docs/models.md)."""


class ModelConfig(_Strict):
    """The network over dense features and embedding chunks (``kind``; docs/models.md)."""

    kind: Literal["dlrm", "dcn_v2", "autoint"] = Field(
        "dlrm",
        description="dlrm: dot interaction; dcn_v2: cross network (the Unified Embedding "
        "paper's model); autoint: self-attention over the feature embeddings.",
    )
    bottom_mlp: list[Width] = Field(
        default_factory=lambda: [64],
        description="dlrm: hidden sizes of the dense tower (its output is one d-vector).",
    )
    top_mlp: list[Width] = Field(
        default_factory=lambda: [128, 64],
        description="dlrm: hidden sizes above the interaction; dcn_v2: the deep network over "
        "the cross output.",
    )
    interaction: Literal["dot", "concat"] = Field(
        "dot", description="dlrm: pairwise dot products of all d-vectors, or concatenation."
    )
    cross_layers: int = Field(3, gt=0, le=1024, description="dcn_v2: cross layers.")
    cross_rank: int | None = Field(
        None,
        gt=0,
        le=MAX_WIDTH,
        description="dcn_v2: rank of each cross layer's weight (U V^T); none: full rank.",
    )
    attention_layers: int = Field(2, gt=0, le=1024, description="autoint: self-attention layers.")
    attention_heads: int = Field(2, gt=0, le=MAX_WIDTH, description="autoint: heads per layer.")
    attention_dim: int = Field(
        16,
        gt=0,
        le=MAX_WIDTH,
        description="autoint: output width of each layer, split over the heads (a multiple "
        "of attention_heads).",
    )
    attention_mlp: list[Width] = Field(
        default_factory=list,
        description="autoint: hidden sizes between the flattened attention output and the "
        "logit; none (the paper's AutoInt) trains best on the default data.",
    )

    def settings_read(self) -> tuple[str, ...]:
        """The settings this ``kind`` reads; the others are other kinds'."""
        return MODEL_SETTINGS[self.kind]

    def describe(self) -> str:
        """The kind and the settings it reads, e.g. ``dcn_v2 (top_mlp=[128, 64], ...)``."""
        read = ", ".join(f"{k}={getattr(self, k)}" for k in self.settings_read())
        return f"{self.kind} ({read})"

    def unread_settings(self) -> list[str]:
        """``model.KEY=VALUE`` of each setting given away from its default that this
        ``kind`` does not read."""
        return self.changed_settings(
            "model",
            [k for k in type(self).model_fields if k not in ("kind", *self.settings_read())],
        )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "autoint" and self.attention_dim % self.attention_heads:
            raise ValueError(
                f"attention_dim ({self.attention_dim}) must be divisible by attention_heads "
                f"({self.attention_heads})"
            )
        return self


class TrainConfig(_Strict):
    """The training loop."""

    batch_size: int = Field(2048, gt=0, le=2**31, description="Examples per rank per step.")
    eval_batch_size: int = Field(
        8192, gt=0, le=2**31, description="Examples per rank per eval step."
    )
    epochs: int = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None,
        gt=0,
        description=(
            "Stop after this many steps, or at the end of train.epochs if that comes first "
            "(the driver warns when it does)."
        ),
    )
    dense_optimizer: Literal["adagrad", "adam", "sgd"] = Field(
        "adagrad", description="Optimizer of the MLPs."
    )
    dense_learning_rate: float = Field(0.05, gt=0.0, description="MLP learning rate.")
    log_every: int = Field(
        20,
        gt=0,
        description="Print progress every this many steps, and at training's last step.",
    )
    prefetch_batches: int = Field(2, ge=0, description="Batches built ahead by a thread.")
    prefetch_niceness: int = Field(
        19,
        ge=0,
        le=19,
        description=(
            "Niceness of the thread that builds batches ahead (Linux, per thread; threads it "
            "starts inherit it): 19 fills the gaps the compute threads leave, 0 competes with "
            "them for the cores."
        ),
    )
    pipeline: Literal["auto"] | bool = Field(
        "auto",
        description=(
            "Train through TorchRec's TrainPipelineSparseDist: the next batch's input dist "
            "(the ids' all-to-all) starts before this batch's forward, and on GPUs the batch "
            "after it is copied on a side stream. Same steps and losses as without. auto: on "
            "GPU ranks, off on CPU ranks (gloo runs the all-to-all on the training thread, "
            "so nothing overlaps: docs/benchmarks.md measures both)."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "Where ranks train. auto: one GPU per rank when the launcher has one for every "
            "rank (GPU resources in the Ray cluster; this machine's CUDA devices for "
            "launcher=processes), else the CPU. cuda fails when a rank would have no GPU."
        ),
    )


class ShardingConfig(_Strict):
    """How embedding tables are placed on ranks: the cost-model planner (docs/planner.md)."""

    type: Literal["auto"] | ShardingType = Field(
        "auto",
        description=(
            "auto: the planner picks each table's sharding type by estimated step time. "
            "Any other value (row_wise, row_wise_unpooled, column_wise, table_wise, "
            "data_parallel, table_row_wise, grid_shard) restricts every table to that type "
            "(the planner still picks ranks, nodes and splits). row_wise_unpooled is row_wise "
            "whose lookups come back one vector per id (docs/planner.md)."
        ),
    )
    topology: PathText | None = Field(
        None,
        description=(
            "Topology file from `dist-train calibrate` (speeds of this machine and backend); "
            "None = the built-in preset for the device."
        ),
    )
    memory_per_rank: str | None = Field(
        None, description="Memory each rank may use, e.g. 16GiB (None: the topology's)."
    )
    pooling_factors: dict[str, float] = Field(
        default_factory=dict,
        description="Mean ids per example of multi-hot features (default: generated data's "
        "own means, from data.synthetic; 1.0 each for data at data.train_path).",
    )
    group_size: int | Literal["auto"] = Field(
        "auto",
        description=(
            "2D parallelism: shard the tables inside groups of this many consecutive ranks, "
            "the groups being replicas kept in sync (docs/planner.md). The world size = 1D "
            "(every rank in one group); auto: the planner picks by estimated step time."
        ),
    )
    sync_every: int = Field(
        1,
        gt=0,
        description=(
            "2D parallelism: steps between merges of the replicas' embedding updates (each "
            "replica's gradients recovered, summed over the replicas and applied to every "
            "copy; also before every checkpoint and at the end of training)."
        ),
    )
    id_skew: float = Field(
        1.1,
        ge=0.0,
        description=(
            "Zipf exponent of the ids over each table's rows (0 = uniform), from which the "
            "planner estimates the hit rate of TorchRec's UVM cache on CUDA. 1.1: the "
            "synthetic data's exponent, and the fit to the default table's rows "
            "(docs/planner.md, UVM caching)."
        ),
    )
    cache_load_factor: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description=(
            "CUDA: fraction of a table's rows (per shard) kept in HBM when the planner puts "
            "it on TorchRec's fused_uvm_caching kernel (rows in host memory behind an HBM "
            "cache); TorchRec's default 0.2."
        ),
    )

    kernels: Literal["auto", "fbgemm"] = Field(
        "auto",
        description=(
            "CPU embedding kernels. auto: the project's C lookup and fused row-wise Adagrad "
            "update wherever they compute what FBGEMM's kernel would (row-wise Adagrad without "
            "options, sum pooling, float32, tables of at most 16M rows a rank of at most 64 "
            "floats; "
            "docs/performance_log.md), FBGEMM's elsewhere; fbgemm: FBGEMM's kernels for every "
            "table, as stock TorchRec runs them (a table several features share is still "
            "handed to FBGEMM as one feature's, docs/architecture.md)."
        ),
    )

    @field_validator("memory_per_rank", mode="before")
    @classmethod
    def _bytes_as_text(cls, v: Any) -> Any:
        """A YAML number of bytes (``8000000000``) as the text ``--set`` gives."""
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("memory_per_rank")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_bytes(v)
            except TopologyError as err:
                raise ValueError(str(err)) from None
        return v

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("group_size must be >= 1 or 'auto'")
        return v

    @field_validator("pooling_factors")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if x <= 0}
        if bad:
            raise ValueError(f"pooling factors must be > 0: {bad}")
        return v


class RayConfig(_Strict):
    """The Ray cluster the job runs on and how workers are placed."""

    address: str | None = Field(
        None,
        description=(
            "The cluster to join: host:port (or ray://...), or 'auto' (RAY_ADDRESS, else the "
            "cluster `ray start` made on this machine). None = a private embedded Ray "
            "instance on 127.0.0.1, whatever runs beside it (a `ray start` cluster, an "
            "exported RAY_ADDRESS), except in a `ray job submit` entrypoint, which joins the "
            "cluster it was submitted to."
        ),
    )
    num_workers: int = Field(2, gt=0, le=MAX_WIDTH, description="Training workers (ranks).")

    cpus_per_worker: float = Field(
        1.0,
        ge=1e-4,  # Ray's resource precision: less failed inside Ray, naming its num_cpus
        description=(
            "CPUs Ray reserves per worker; a CPU worker runs its whole CPUs as torch threads "
            "(at least 1: 0.5 and 1.5 run 1)."
        ),
    )
    num_nodes: int | None = Field(
        None,
        gt=0,
        description=(
            "Nodes the workers must span, num_workers / num_nodes ranks each (checked at "
            "start-up); None = wherever Ray packs them."
        ),
    )
    pin_cores: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Hold each CPU worker to cores of its own, its share of the CPUs of its "
            "process's affinity (one each with as many workers as CPUs; dealt round them "
            "with a whole number more). auto: on where the job is taken to own the machine "
            "(launcher=processes, the private embedded Ray instance; two such jobs at once "
            "on one machine would pin to the same CPUs: set off), off on a joined Ray "
            "cluster, where other jobs' workers may hold the same CPUs. Never pinned: GPU "
            "workers, more threads a worker than its share, an uneven number of workers a "
            "CPU, or an OpenMP binding set in the environment (OMP_PROC_BIND, OMP_PLACES, "
            "GOMP_CPU_AFFINITY, KMP_AFFINITY). summary.json lists each rank's CPUs (rank_cores)."
        ),
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy of the worker bundles."
    )
    max_failures: int = Field(
        0, ge=-1, description="Worker-group restarts Ray Train attempts (-1 = unlimited)."
    )
    storage_path: PathText | None = Field(
        None,
        description=(
            "Ray Train storage (shared path or URL on multi-node clusters); "
            "None = <output_dir>/<name>/ray."
        ),
    )
    autoscaling: bool = Field(
        False,
        description="The cluster grows on demand: skip the check that workers fit right now.",
    )
    min_workers: int | None = Field(
        None,
        gt=0,
        description=(
            "Elastic: run with anywhere from min_workers to num_workers workers, as many as the "
            "cluster holds (Ray Train's ScalingConfig(num_workers=(min, max))). When the count "
            "changes after a failure, the workers re-plan the tables and resume from the last "
            "checkpoint, resharded, with the epoch's untrained batches re-dealt."
        ),
    )

    @field_validator("address")
    @classmethod
    def _a_gcs_address(cls, v: str | None) -> str | None:
        """Ray's own errors for these came after its start-up, naming RAY_ADDRESS or
        nothing (``Invalid address format: 127.0.0.1``). Empty is null, as ``--set
        ray.address=`` is."""
        if not v:
            return None
        if v == "auto" or re.fullmatch(r"ray://\S+", v):
            return v
        if re.match(r"https?://", v):
            raise ValueError(
                f"{v} is a job server's URL (dist-train submit --address takes it); "
                "ray.address is the cluster's GCS address, host:6379, or auto"
            )
        if v == "local":
            raise ValueError("'local': leave ray.address null for a private embedded instance")
        # a host without colons, or an IPv6 address in brackets; a port of 1-65535
        found = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(\d{1,5})", v)
        if found is None or not 0 < int(found.group(2)) < 2**16:
            raise ValueError(
                f"{v!r} is no host:port (the cluster's GCS, host:6379; an IPv6 host in "
                "brackets), ray://... or auto"
            )
        return v

    @field_validator("pin_cores", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        # YAML reads a bare on / off (a config file's or --set's) as a boolean
        if isinstance(v, bool):
            return "on" if v else "off"
        return v

    @model_validator(mode="after")
    def _check(self) -> RayConfig:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed num_workers ({self.num_workers})"
            )
        if self.min_workers is not None and self.num_nodes is not None:
            raise ValueError("min_workers (elastic) cannot be combined with a fixed num_nodes")
        if self.num_nodes is not None and self.num_workers % self.num_nodes:
            raise ValueError(
                f"num_workers ({self.num_workers}) must be a multiple of num_nodes "
                f"({self.num_nodes})"
            )
        return self

    @property
    def threads_per_worker(self) -> int:
        """Torch threads a CPU worker runs: its whole CPUs (Ray's OMP_NUM_THREADS), at least 1."""
        return max(1, int(self.cpus_per_worker))

    def pins_cores(self, owns_machine: bool) -> bool:
        """Whether CPU workers are pinned (``pin_cores``): ``auto`` where the job owns the
        machine (plain processes, the private embedded Ray instance)."""
        return self.pin_cores == "on" or (self.pin_cores == "auto" and owns_machine)


class CheckpointConfig(_Strict):
    """Sharded checkpoints (see dist_train/checkpoint/)."""

    every_steps: int | None = Field(
        None, gt=0, description="Save every this many steps (and at the end: save_at_end)."
    )
    num_to_keep: int = Field(2, gt=0, description="Committed checkpoints kept (oldest go).")
    dir: PathText | None = Field(None, description="Where; None = <output_dir>/<name>/checkpoints.")
    resume: PathText | None = Field(
        None, description="'latest' (if any exists) or a checkpoint path to continue from."
    )
    save_at_end: bool = Field(True, description="Save when training ends.")
    background: bool = Field(
        True,
        description=(
            "Write checkpoints in a background thread: training waits only while the state "
            "is copied in memory (one extra copy of each rank's state); false = write inline."
        ),
    )

    @property
    def saves(self) -> bool:
        """Whether the job saves any checkpoint: periodically, or at its end."""
        return self.save_at_end or self.every_steps is not None


def number_in_name(value: float) -> str:
    """``value`` as a run name holds it (``0.1``, ``1e06``): no ``+``, which names refuse."""
    return f"{value:g}".replace("+", "")


class JobConfig(_Strict):
    """A whole training job."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name.")
    seed: int = Field(
        0,
        ge=0,
        lt=2**63,
        description=(
            "Seed of weights, hashing salts and data order. torch's generators read 32 "
            "bits: for them a seed of 2^32 or more is hashed to 32 bits, so it starts from "
            "the weights of some seed below 2^32 (its salts and data order stay its own)."
        ),
    )
    output_dir: PathText = Field(
        "outputs",
        description=(
            "Parent directory of run outputs (a local or mounted path: metrics and summaries "
            "are plain files; checkpoint.dir may be a URL)."
        ),
    )
    launcher: Literal["ray", "processes"] = Field(
        "ray", description="ray: Ray Train workers; processes: plain torch.multiprocessing."
    )

    @field_validator("output_dir")
    @classmethod
    def _local_output_dir(cls, v: str) -> str:
        if v.startswith(FILE_SCHEME):  # a local path all the same (made one folder 'file:')
            v = v[len(FILE_SCHEME) :]
            v = v[2:] if v.startswith("//") else v
        if "://" in v:
            raise ValueError(
                f"must be a local or mounted directory, not the URL {v!r} (metrics and "
                "summaries are plain files); put checkpoints at a URL with checkpoint.dir"
            )
        return _not_empty(v)

    @field_validator("name")
    @classmethod
    def _a_folder_of_its_own(cls, v: str) -> str:
        if set(v) == {"."}:  # '.' or '..': the run would write into output_dir or above it
            raise ValueError(f"{v!r} is no folder of its own under output_dir; name the run")
        return v

    data: DataConfig = Field(default_factory=DataConfig)
    features: list[FeatureConfig] = Field(min_length=1, description="Categorical features.")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @field_validator("features")
    @classmethod
    def _distinct_names(cls, features: list[FeatureConfig]) -> list[FeatureConfig]:
        # a check of the list, not of the whole job: its error names the list's key, and a
        # `--set features.<item>.name` that made the duplicate is named with it
        names = [f.name for f in features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            # each by its position: a name two items share names neither
            keys = [f"features.{i}.name" for i, n in enumerate(names) if n in dupes]
            raise ValueError(f"duplicate feature names {dupes} ({', '.join(keys)})")
        return features

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        names = [f.name for f in self.features]
        unknown = sorted(set(self.sharding.pooling_factors) - set(names))
        if unknown:
            raise ValueError(f"sharding.pooling_factors names unknown features {unknown}")
        if self.embedding.kind == "collisionless":
            missing = [f.name for f in self.features if f.cardinality is None]
            if missing:
                raise ValueError(f"embedding.kind=collisionless needs a cardinality for {missing}")
            dim = self.embedding.dim
            huge = [
                f.name
                for f in self.features
                if (f.cardinality or 0) * f.chunks * dim > MAX_TABLE_ELEMENTS
            ]
            if huge:
                raise ValueError(
                    f"embedding.kind=collisionless: the tables of {huge}: cardinality x chunks x "
                    "embedding.dim past "
                    f"{MAX_TABLE_ELEMENTS:.3g} (2**56) elements, any cluster's memory"
                )
        self._check_column_roles()
        if self.data.train_path is None:
            self._check_generated_columns()
        chunks = sum(f.chunks for f in self.features)
        if self.embedding.kind == "hashing_trick" and self.embedding.num_rows < chunks:
            # each feature's table takes num_rows / chunks rows a chunk, and at least one
            raise ValueError(
                f"embedding.kind=hashing_trick: embedding.num_rows ({self.embedding.num_rows}) "
                f"is fewer than the features' chunks ({chunks}): each feature's table needs a "
                "row, more parameters than the budget it stands for"
            )
        if self.embedding.kind == "unified" and self.embedding.num_tables > chunks:
            # sub-tables are dealt chunks round-robin: one without a chunk would be dropped,
            # and the table would hold fewer rows than embedding.num_rows
            raise ValueError(
                f"embedding.num_tables ({self.embedding.num_tables}) exceeds the features' "
                f"{chunks} chunks: every sub-table of the unified table needs one"
            )
        return self

    def _check_column_roles(self) -> None:
        """The label, or the row ids, read as a model input: the label fed to the model that
        predicts it trains to a test AUC of 1.0 with no error."""
        n = self.data.synthetic.num_dense
        unset = "" if self.data.dense_columns is not None else f" (unset: it stands for I1..I{n})"
        inputs = [(c, f"in data.dense_columns{unset}") for c in self.data.resolved_dense_columns()]
        inputs += [
            (
                f.source_column,
                f"the column of feature {f.name} ({_column_key(self.features, i)})",
            )
            for i, f in enumerate(self.features)
        ]
        for key, column in (
            ("data.label_column", self.data.label_column),
            ("data.row_id_column", self.data.row_id_column),
        ):
            where = next((w for c, w in inputs if c == column), None)
            if where is not None:
                raise ValueError(
                    f"{key}={column!r} is also {where}: the model would be fed its "
                    f"{'own label' if key == 'data.label_column' else 'row ids'} as an input"
                )
        if (
            self.data.row_id_column is not None
            and self.data.row_id_column == self.data.label_column
        ):
            raise ValueError(
                f"data.row_id_column and data.label_column are both {self.data.label_column!r}"
            )

    def _check_generated_columns(self) -> None:
        """Generated data have known columns: a feature or dense column they lack, or string
        ids for the collisionless tables, would fail only after the data were generated."""
        synth = self.data.synthetic
        read = {f.source_column for f in self.features}
        made = {f"C{i + 1}" for i in range(synth.num_categorical)}
        lacking = [
            f"{f.source_column!r} ({_column_key(self.features, i)})"
            for i, f in enumerate(self.features)
            if f.source_column not in made
        ]
        if lacking:
            raise ValueError(
                f"features read columns the generated data lack: {', '.join(lacking)} "
                f"(data.synthetic.num_categorical={synth.num_categorical} makes C1..C"
                f"{synth.num_categorical})"
            )
        dense = set(self.data.resolved_dense_columns())
        missing = sorted(dense - {f"I{i + 1}" for i in range(synth.num_dense)})
        if missing:
            raise ValueError(
                f"data.dense_columns names columns the generated data lack: {missing} "
                f"(data.synthetic.num_dense={synth.num_dense} makes I1..I{synth.num_dense})"
            )
        for key, column in (
            ("data.label_column", self.data.label_column),
            ("data.row_id_column", self.data.row_id_column),
        ):
            if column is not None and column not in ("label", "row_id"):
                what = (
                    "is the true click probability, a float"
                    if column == "oracle_p"
                    else "is no column of theirs"
                )
                raise ValueError(
                    f"{key}={column!r}: in the generated data it {what} (their label is "
                    "'label', their row ids 'row_id')"
                )
        strings = sorted(read & set(synth.string_columns))
        if self.embedding.kind == "collisionless" and strings:
            raise ValueError(
                f"embedding.kind=collisionless needs integer ids, but data.synthetic."
                f"string_columns makes {strings} strings; set data.synthetic.string_columns=[]"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as the items of a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def dotted_keys(model: type[BaseModel] = JobConfig, prefix: str = "") -> list[str]:
    """Every key and section of ``model`` as a dotted path (list items without an index:
    ``features.name``), for suggesting the key a misspelt one meant."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        keys.append(key)
        nested = nested_model(field.annotation)
        if nested is not None:
            keys += dotted_keys(nested, key)
    return keys


def _item_parts(parts: list[str]) -> set[int]:
    """Which of a key's ``parts`` name an item of a list (``features.C14.chunks``: 1), by its
    name or position, as far as the key's fields are known."""
    items: set[int] = set()
    model: type[BaseModel] | None = JobConfig
    i = 0
    while i < len(parts) and model is not None:
        field = model.model_fields.get(parts[i])
        if field is None:
            break
        if _list_type(field.annotation) is not None:
            items.add(i + 1)
            i += 1
        model = nested_model(field.annotation)
        i += 1
    return items


def _list_type(annotation: Any) -> Any:
    """The list type ``annotation`` is, or holds as an option (``list[str] | None``)."""
    if typing.get_origin(annotation) is list:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(annotation) if typing.get_origin(a) is list), None)
    return None


def _field_at(key: str) -> Any:
    """The field ``key`` names (an entry of a mapping key: the mapping's; an item of a list
    key, named by its name or position: the list's); None if none."""
    parts = key.split(".")
    items = _item_parts(parts)
    model: type[BaseModel] | None = JobConfig
    field = None
    for i, part in enumerate(parts):
        if field is not None and typing.get_origin(field.annotation) is dict:
            return field  # an entry's name is the user's
        if i in items:
            continue  # an item: what follows is a key of the list's model
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = nested_model(field.annotation)
    return field


def known_key(key: str) -> bool:
    """Whether ``key`` is a config key or section, or an entry of a mapping one
    (``sharding.pooling_factors.C24``)."""
    return _field_at(key) is not None


def _blames(override: str, key: str, message: str) -> int:
    """How surely an error at ``key`` ("": a check of the whole job) with ``message`` comes
    from the ``--set`` of ``override``: 2 for one that sets the key or a section it lies in,
    or something inside the key that the message names (by its part inside the key, or whole:
    ``features.0.name``); 1 for something else inside it (a
    section's check names what it finds, not always what changed: ``num_categorical`` for
    unknown ``multi_hot_columns``); 0 for none. An entry of a mapping only where the message
    names the entry (as the mapping's checks quote it, ``'C99'``); for the whole job, one
    the message names."""
    if key and (override == key or key.startswith(f"{override}.")):
        return 2  # (an entry of a mapping too: the error is at the entry itself)
    parent, _, entry = override.rpartition(".")
    field = _field_at(parent) if parent else None
    is_entry = field is not None and typing.get_origin(field.annotation) is dict
    if is_entry and f"'{entry}'" not in message:
        return 0
    if not key:
        return 2 * _mentions(message, parent if is_entry else override)
    inside = override.removeprefix(f"{key}.")
    if inside == override:  # not inside the key
        return 0
    return 2 if is_entry or _mentions(message, inside) or _mentions(message, override) else 1


def _at_positions(key: str, raw: Any) -> str:
    """``key`` with each list item it names by name named by its position in ``raw`` (the
    config as overridden): errors name items by position (features.C14.chunks is
    features.13.chunks in the default job)."""
    out: list[str] = []
    node = raw
    for part in key.split("."):
        if isinstance(node, list):
            found = _find_item(node, part)
            part = part if found is None else str(found)
            node = None if found is None else node[found]
        else:
            node = node.get(part) if isinstance(node, dict) else None
        out.append(part)
    return ".".join(out)


def _mentions(message: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message) is not None


def override_key(item: str) -> str:
    """The key of a ``--set key=value`` item."""
    return item.split("=", 1)[0].strip()


def closest_key(key: str) -> str | None:
    """The config key nearest an unknown ``key``, if any is near: the "did you mean" of an
    error. The list items ``key`` names stay where it names them (features.C14.chunkz:
    features.C14.chunks)."""
    parts = key.split(".")
    items = _item_parts(parts)
    dotted = ".".join(p for i, p in enumerate(parts) if i not in items)
    keys = [k for k in dotted_keys() if not dotted.startswith(f"{k}.")]  # no sections
    close = difflib.get_close_matches(dotted, keys, n=1)
    if not close:
        return None
    names = close[0].split(".")
    for i in sorted(items):  # back in, where the suggestion keeps the key's way to the item
        if names[:i] != parts[:i] or i > len(names):
            return close[0]
        names.insert(i, parts[i])
    suggestion = ".".join(names)
    return suggestion if suggestion != key else None


# a union's member as pydantic names it at the end of an error's loc (int | 'auto')
_UNION_MEMBER = re.compile(r"int|bool|float|str|literal\[.*\]|str-enum\[\w+\]|[\w-]+\[.*\]")
_MEMBER_WORDS = {"int": "an integer", "bool": "true or false", "float": "a number", "str": "text"}


def _one_error_a_union(errors: list[Any]) -> list[Any]:
    """pydantic's errors with those of one union's members (``group_size: int | 'auto'``
    gave ``group_size.int`` and ``group_size.literal['auto']``, two problems at keys that
    do not exist) merged into one at the union's key, saying what it takes. A union fails
    in every member: two or more errors at one key's members, one after the other."""
    out: list[Any] = []
    i = 0
    while i < len(errors):
        loc = tuple(errors[i]["loc"])
        j = i
        while (
            j < len(errors)
            and loc
            and tuple(errors[j]["loc"])[:-1] == loc[:-1]
            and len(errors[j]["loc"]) == len(loc)
            and _UNION_MEMBER.fullmatch(str(errors[j]["loc"][-1]))
        ):
            j += 1
        if j - i < 2:  # no union: one error (a mapping's key named int, say) as it is
            out.append(errors[i])
            i += 1
            continue
        words = [
            str((e.get("ctx") or {}).get("expected") or _MEMBER_WORDS.get(str(e["loc"][-1])))
            for e in errors[i:j]
        ]
        taken = " or ".join(w for w in words if w != "None") or "another value"
        out.append(
            {
                **errors[i],
                "loc": loc[:-1],
                "msg": f"expected {taken}; got {_shown(errors[i]['input'])}",
            }
        )
        i = j
    return out


# a value quoted in an error, cut short: YAML's aliases can expand a few bytes to gigabytes
_SHORT = reprlib.Repr()  # (its keyword arguments came in Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 80


def _shown(value: Any) -> str:
    """``repr(value)``, its nesting, lists and strings cut short (``[[1, 2, ...], ...]``)."""
    return _SHORT.repr(value)


def _format_errors(
    source: str, err: ValidationError, overrides: Sequence[str] = (), raw: Any = None
) -> str:
    errors = _one_error_a_union(err.errors())
    lines = [f"{source}: invalid job config ({len(errors)} problem(s))"]
    for e in errors:
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        shown = _at_names(e["loc"], raw) or key
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            close = closest_key(shown)
            hint = f"did you mean {close}? " if close else ""
            msg = (
                f"unknown key ({hint}every key: `dist-train show-config --reference`, "
                "docs/config.md)"
            )
        sureness = [
            (
                max(
                    _blames(_at_positions(override_key(o), raw), key if e["loc"] else "", msg),
                    # a check of the whole job names a list's items by name, as errors do
                    0 if e["loc"] else _blames(_named_key(override_key(o), raw), "", msg),
                ),
                o,
            )
            for o in overrides
        ]
        surest = max((s for s, _ in sureness), default=0)
        blamed = [o for s, o in sureness if s == surest > 0]  # the surest, the last of them
        # a guess (inside the key, not named) only where one override could be it: of two,
        # the last was named where the first made the error
        if blamed and (surest > 1 or len(blamed) == 1):
            msg += f" (from --set {blamed[-1]})"
        lines.append(f"  {shown}: {msg}")
    return "\n".join(lines)


def _named_key(key: str, raw: Any) -> str:
    """An override's ``key`` with each list item it names by position named by its name
    where it has one (:func:`_at_names`): features.2.column is features.C3.column."""
    loc: list[int | str] = []
    node = raw
    for part in _at_positions(key, raw).split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            loc.append(int(part))
            node = node[int(part)]
        else:
            loc.append(part)
            node = node.get(part) if isinstance(node, dict) else None
    return _at_names(tuple(loc), raw)


def _can_name_item(name: object) -> bool:
    """Whether ``name`` can stand for its item in a dotted key (not read as a position
    or split in two)."""
    return isinstance(name, str) and bool(name) and not name.isdigit() and "." not in name


def _feature_key(features: Sequence[FeatureConfig], i: int) -> str:
    """The key of ``features[i]`` as a user names it: by name where a key can name it so
    (features.C3; the first of its name), else by position (features.2)."""
    name = features[i].name
    names = [f.name for f in features]
    return f"features.{name if _can_name_item(name) and names.index(name) == i else i}"


def _column_key(features: Sequence[FeatureConfig], i: int) -> str:
    """Where the column ``features[i]`` reads is set: its ``column`` key, or where it has
    none the feature's own key (:func:`_feature_key`): its name is then the column."""
    key = _feature_key(features, i)
    return f"{key}.column" if features[i].column else key


def _at_names(loc: tuple[int | str, ...], raw: Any) -> str:
    """An error's ``loc`` with each list item that has a name named by it, as the user
    names it (features.2.chunks is features.C3.chunks in the default job); "" if empty."""
    out: list[str] = []
    node = raw
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            item = node[part]
            name = item.get("name") if isinstance(item, dict) else None
            if _can_name_item(name) and _find_item(node, str(name)) == part:  # its first
                out.append(str(name))
            else:
                out.append(str(part))
            node = item
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out)


# an empty value is null, as in YAML; YAML's "~" is text here: `--set checkpoint.dir=~`
# meant the home folder
_NULLS = ("", "null", "Null", "NULL")


def _takes_text(parts: list[str]) -> bool:
    """Whether the key ``parts`` names holds a string (unknown keys count: they are refused
    by name whatever their value); an item of a list (:func:`_item_parts`) holds the list's
    item type."""
    items = _item_parts(parts)
    model: type[BaseModel] | None = JobConfig
    kind: Any = None
    for i, part in enumerate(parts):
        if i in items:
            if i == len(parts) - 1:  # a whole item: features.C14={...}, data.dense_columns.0
                return _is_text(typing.get_args(_list_type(kind))[0])
            continue
        if model is None:
            return False  # inside a mapping's entry or a plain list's item
        field = model.model_fields.get(part)
        if field is None:
            return True
        kind = field.annotation
        if i == len(parts) - 1:
            return _is_text(kind)
        model = nested_model(kind)
    return False


def _is_text(kind: Any) -> bool:
    """str, or an optional str (either annotated): not a list or mapping of them."""
    if typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_text(k) for k in typing.get_args(kind))
    return kind is str


def _override_value(item: str, parts: list[str], text: str) -> Any:
    """An override's value: YAML, except that a string key takes the text as typed (YAML
    would read ``2024`` as a number, ``*.parquet`` as an alias, `` #2`` as a comment), unless
    it is null or quoted."""
    bare = text.strip()
    if _takes_text(parts) and bare not in _NULLS and bare[:1] not in ("'", '"'):
        return text
    try:
        return yaml_value(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(f"--set {item}: not valid YAML ({problem})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(
            f"--set {item.partition('=')[0]}=...: nested too deeply to read"
        ) from None


def override_shape_error(item: str) -> str | None:
    """What is wrong with the shape of a ``--set`` item (no ``=``, an empty key part);
    None for a ``KEY.PATH=VALUE``."""
    if "=" not in item:
        return f"override {item!r}: expected KEY.PATH=VALUE"
    if not all(item.split("=", 1)[0].strip().split(".")):
        return f"override {item!r}: expected KEY.PATH=VALUE (an empty key)"
    return None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (values parsed as YAML,
    but for string keys: :func:`_override_value`)."""
    out: dict[str, Any] = copy.deepcopy(raw) or {}  # (a YAML round trip re-read "09" as 9)
    for item in overrides:
        shapeless = override_shape_error(item)
        if shapeless:
            raise ConfigError(shapeless)
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, dict) and p not in node and parts[i + 1].isdigit():
                # an item of a list the config leaves unset: made a mapping {'0': ...}, it
                # was refused as "Input should be a valid list"
                whole = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"--set {item}: {whole} is not set, so it has no item {parts[i + 1]}; set "
                    f"it whole, e.g. --set {whole}=[...]"
                )
            child = (
                node[_item_index(node, p, parts[i - 1], item)]
                if isinstance(node, list)
                else node.setdefault(p, {})
            )
            if not isinstance(child, dict | list):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = child
        last = parts[-1]
        if isinstance(node, list):  # a whole item: features.C14={name: C14, chunks: 3}
            at = _item_index(node, last, parts[-2], item)
            new = _override_value(item, parts, value)
            if new is None:  # its error named the item by position, and no --set
                raise ConfigError(
                    f"--set {item}: an item of {parts[-2]} cannot be null; to drop items, set "
                    f"{'.'.join(parts[:-1])} whole, e.g. --set {'.'.join(parts[:-1])}=[...]"
                )
            node[at] = new
        else:
            node[last] = _override_value(item, parts, value)
    return out


def _find_item(items: list[Any], part: str) -> int | None:
    """The position of the item ``part`` names: the item whose ``name`` it is
    (features.C14), or else the item at that position (features.13); None if none."""
    for i, each in enumerate(items):
        if isinstance(each, dict) and str(each.get("name")) == part:
            return i
    return int(part) if part.isdigit() and int(part) < len(items) else None


def _item_index(items: list[Any], part: str, name: str, item: str) -> int:
    """The position of the item of list ``name`` that ``part`` names in an override
    (:func:`_find_item`), or an error naming the override."""
    found = _find_item(items, part)
    if found is not None:
        return found
    if not items:  # (its positions "from 0 to -1")
        raise ConfigError(
            f"--set {item}: {name} is empty, so it has no item {part!r}; set it whole, e.g. "
            f"--set {item.split('=', 1)[0].rsplit('.', 1)[0]}=[...]"
        )
    names = [str(e.get("name")) for e in items if isinstance(e, dict) and "name" in e]
    listed = f"; its items: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
    raise ConfigError(
        f"--set {item}: {name} has no item named {part!r} (name one by its name, or by its "
        f"position from 0 to {len(items) - 1}){listed if names else ''}"
    )


def parse_config(raw: Any, source: str = "<config>", overrides: Sequence[str] = ()) -> JobConfig:
    """Validate an already-parsed config mapping (``overrides``: the ``--set`` items applied to
    it, which the errors they cause name)."""
    if raw is None:
        raise ConfigError(f"{source}: empty; a job config is a mapping of settings")
    if not isinstance(raw, dict):
        kinds: dict[type, str] = {list: "a list", str: "a string", bool: "true or false"}
        kind = kinds.get(type(raw), "a number" if isinstance(raw, int | float) else "a value")
        raise ConfigError(f"{source}: a job config must be a mapping of settings, not {kind}")
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err, overrides, raw)) from None


class _Yaml12Numbers(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1's misreadings of numbers, which YAML 1.2 drops:
    ``0123`` read as octal (a seed of 83) and ``1:30`` in base 60 (90 epochs). Integers are
    decimal (leading zeros and ``_`` between digits allowed), ``0o`` octal or ``0x`` hex;
    floats as PyYAML reads them but in base 60. (Exponent forms such as ``1e6``, text to
    PyYAML, are read per key: :func:`_exponent_numbers`.)"""


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Yaml12Numbers.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Numbers.add_implicit_resolver(
    _INT_TAG,
    # a leading 0 before more digits: text (YAML 1.1 read octal), which a number's key
    # reads as the decimal it is and a text key keeps ("09", a name, stays "09")
    re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Yaml12Numbers.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?"
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    text = str(loader.construct_scalar(node))
    digits = text.replace("_", "")
    sign, digits = (-1, digits[1:]) if digits[:1] == "-" else (1, digits.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2])
    try:
        return sign * (int(digits[2:], base) if base else int(digits, 10))
    except ValueError:  # 0o_, 0x_: no digits; the text, for the key's own error
        return text


_Yaml12Numbers.add_constructor(_INT_TAG, _yaml12_int)


def yaml_value(text: str) -> Any:
    """A YAML document's value, numbers read as YAML 1.2 reads them (:class:`_Yaml12Numbers`)."""
    return yaml.load(text, Loader=_Yaml12Numbers)


class _UniqueKeys(_Yaml12Numbers):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last: a second ``train:`` section would replace the first whole, unseen)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # the merge keys (<<: *anchor) first: what they bring in, the mapping's own keys
        # may override, as YAML allows; only the mapping's own keys are checked
        merge = "tag:yaml.org,2002:merge"
        own_keys = sum(key.tag != merge for key, _ in node.value)
        self.flatten_mapping(node)  # type: ignore[no-untyped-call]  # merged pairs go first
        seen: dict[Any, int] = {}
        for key_node, _ in node.value[len(node.value) - own_keys :] if own_keys else []:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                again = key in seen
            except TypeError:  # an unhashable key: PyYAML's own error names it
                break
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


MAX_YAML_BYTES = 64 * 2**20
"""The most :func:`read_yaml` reads: a job config or cluster file is some KB."""


PIPE_WAIT_S = 10.0
"""How long a named pipe (``mkfifo``) is waited on for a writer to send something."""


def _open_for_reading(path: Path) -> typing.BinaryIO:
    """``path`` open for reading. A shell's pipe (``<(cmd)``, ``/dev/stdin``) is read to its
    end however long its writer takes; OSError for a named pipe no writer sends anything to
    in :data:`PIPE_WAIT_S` (opening it waited for one without end; a read at once found the
    end of a pipe whose writer had not opened it yet, and read as empty)."""
    if not stat.S_ISFIFO(path.stat().st_mode):
        return path.open("rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # returns at once, writer or not
    # a shell's pipe has its writer from the start (its file reads `pipe:[inode]`)
    try:
        named = not os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:  # no /proc (macOS): waited on as a named pipe
        named = True
    waiting = select.poll()  # until a writer sends (POLLIN), or came and went (POLLHUP)
    waiting.register(fd, select.POLLIN | select.POLLHUP)
    if named and not waiting.poll(PIPE_WAIT_S * 1000):
        os.close(fd)
        raise OSError(errno.ETIMEDOUT, f"a pipe that nothing wrote to in {PIPE_WAIT_S:g} s")
    os.set_blocking(fd, True)  # then read what the writer sends, to its end
    return os.fdopen(fd, "rb")


def read_yaml(path: Path) -> Any:
    """A YAML file's contents (safe types only; a key given twice in a mapping, text that is
    not UTF-8 and malformed YAML are a :class:`ConfigError` naming the file). A pipe
    (``<(...)``, ``/dev/stdin``) is read as a file is."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a file")
    try:
        with _open_for_reading(path) as f:  # a pipe or device has no size to check first
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:  # /dev/zero read until memory ran out
            raise ConfigError(f"{path}: over {MAX_YAML_BYTES // 2**20} MiB, no YAML file of ours")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeys)
    except yaml.YAMLError as err:
        # one line, at the file's line and column: PyYAML's own text spans several and
        # names the text it read as "<unicode string>"
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        context = getattr(err, "context", None)
        raise ConfigError(
            f"{path}{at}: not valid YAML: {problem}" + (f" ({context})" if context else "")
        ) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(f"{path}: nested too deeply to read") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a YAML job config (the default one if ``path`` is None)."""
    # ~ too: a shell leaves `--config=~/x.yaml` (or a quoted one) as typed
    path = Path(path).expanduser() if path is not None else DEFAULT_CONFIG
    if not path.exists() or path.is_dir():
        if path == DEFAULT_CONFIG:  # a wheel holds the package, not the checkout's launch/
            raise ConfigError(
                f"{path}: no such config file. dist_train runs from its checkout, installed "
                "editable (`make setup`, or `pip install -e .`); this install has no "
                "launch/configs: give --config"
            )
        raise ConfigError(
            f"{path}: a folder, not a config file"
            if path.is_dir()
            else f"{path}: no such config file"
        )
    return parse_with_overrides(read_yaml(path), str(path), overrides or [])


def parse_with_overrides(raw: Any, source: str, overrides: list[str]) -> JobConfig:
    """:func:`parse_config` of ``raw`` with the ``--set`` items ``overrides`` applied (a
    document that is no mapping is refused by :func:`parse_config`, naming ``source``)."""
    if overrides and (raw is None or isinstance(raw, dict)):
        raw = apply_overrides(raw or {}, overrides)
    return parse_config(raw, source, overrides)


FILE_SCHEME = "file:"
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


def load_or_report(config: str | Path | None, overrides: list[str]) -> JobConfig | None:
    """:func:`load_config`, or None after printing the error (for command lines)."""
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def not_empty(say: str) -> typing.Callable[[str], str]:
    """An argparse type: text that is not empty or blank, else the usage error ``say`` (an
    empty value was read as no flag at all, or as the working directory)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(say)
        return text

    return parse


def add_config_args(
    p: argparse.ArgumentParser,
    default: str = "default: launch/configs/default.yaml",
    job_config: bool = True,
) -> None:
    """The ``--config`` and ``--set`` options every job command takes (``default`` says
    which config it reads without ``--config``), and ``-q``/``-v``; only these two without
    ``job_config``."""
    if job_config:
        p.add_argument(
            "--config",
            type=not_empty("an empty path; name a config file"),
            help=f"job config YAML ({default})",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set train.epochs=2 (repeatable)",
        )
    loud = p.add_mutually_exclusive_group()
    loud.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const="quiet",
        default="normal",
        help="print warnings and errors only (a training job's metrics.jsonl is still "
        "written in full)",
    )
    loud.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const="verbose",
        help="print debug messages too",
    )


def add_train_args(p: argparse.ArgumentParser) -> None:
    """``dist-train train``'s options: :func:`add_config_args`' and ``--resume``."""
    add_config_args(p)
    p.add_argument(
        "--resume",
        metavar="PATH|latest",
        help="continue from a checkpoint (latest = newest under the run's dir)",
    )


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` items of parsed :func:`add_train_args` options, ``--resume`` as one
    more: its text as typed (``--resume null`` is the path 'null', not a null)."""
    resume = getattr(args, "resume", None)
    if resume is None:
        return list(args.set)
    if not resume.strip():  # read as null, it trained from scratch without a word
        raise ConfigError("--resume: an empty path; name a checkpoint, or latest")
    return [*args.set, f"checkpoint.resume={as_typed(resume)}"]


def as_typed(text: str) -> str:
    """``text`` as an override's value that reads back as that text: YAML single-quoted (a
    bare empty value, or ``null``, reads as null)."""
    return "'" + text.replace("'", "''") + "'"

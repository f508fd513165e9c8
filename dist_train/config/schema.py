"""The job config's schema: pydantic models of its sections, each value checked where it is
read, and :class:`JobConfig`, which checks the sections against each other. How an error
names a feature (:func:`feature_key`, :func:`column_key`) is the schema's too: its checks
across sections name the features they find at fault.
"""

from __future__ import annotations

import decimal
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from planners.topology import TopologyError, parse_bytes
from planners.types import ShardingType


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
FILE_SCHEME = "file:"  # a local path written as a URL (file:/x, file:///x)


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
        8192,
        gt=0,
        le=2**31,
        description="Examples per rank per eval step (the planner refuses one whose buffers "
        "would not fit a rank under the plan chosen for training, naming one that fits).",
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
                f"the column of feature {f.name} ({column_key(self.features, i)})",
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
            f"{f.source_column!r} ({column_key(self.features, i)})"
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


def can_name_item(name: object) -> bool:
    """Whether ``name`` can stand for its item in a dotted key (not read as a position
    or split in two)."""
    return isinstance(name, str) and bool(name) and not name.isdigit() and "." not in name


def feature_key(features: Sequence[FeatureConfig], i: int) -> str:
    """The key of ``features[i]`` as a user names it: by name where a key can name it so
    (features.C3; the first of its name), else by position (features.2)."""
    name = features[i].name
    names = [f.name for f in features]
    return f"features.{name if can_name_item(name) and names.index(name) == i else i}"


def column_key(features: Sequence[FeatureConfig], i: int) -> str:
    """Where the column ``features[i]`` reads is set: its ``column`` key, or where it has
    none the feature's own key (:func:`feature_key`): its name is then the column."""
    key = feature_key(features, i)
    return f"{key}.column" if features[i].column else key

"""``dist-train bench embeddings``: the paper's comparison on one dataset, in one run.

Trains the same job with each embedding kind (unified, hashing_trick, collisionless) at each
given embedding learning rate, on the same generated data, and prints parameters, test AUC,
log loss and examples/s side by side. Runs with the plain-process launcher so start-up costs
do not blur throughput.
"""

from __future__ import annotations

import sys
from typing import Any

from dist_train.bench import variant, write_json
from dist_train.config.schema import JobConfig, number_in_name
from dist_train.data.synthetic import generate, generated_cardinalities, said_of_cardinalities
from dist_train.driver import run_job
from dist_train.embedding.layout import build_layout

KINDS = ("unified", "hashing_trick", "collisionless")


def _variant(cfg: JobConfig, kind: str, lr: float) -> JobConfig:
    overrides = [
        f"name={cfg.name}-{kind}-lr{number_in_name(lr)}",
        f"embedding.kind={kind}",
        f"embedding.optimizer.learning_rate={lr}",
        "launcher=processes",
    ]
    return variant(cfg, overrides, f"bench variant {kind} lr={lr}")


def run_embedding_bench(
    cfg: JobConfig, learning_rates: list[float], json_out: str | None = None
) -> list[dict[str, Any]]:
    """Run every (kind, learning rate) variant; print and return one row each."""
    if cfg.data.train_path is None:
        # the collisionless table's rows, and params/collisionless, are the values the data
        # hold: the declared cardinalities left over from other data.synthetic settings
        # counted rows that no id reaches
        cfg, changed = generated_cardinalities(cfg)
        if changed:
            print(f"[bench] {said_of_cardinalities(changed)}", flush=True)
        # the collisionless table indexes integer ids: the bench's own data, beside the
        # job's (which a training run of this config generates, with its string columns)
        synthetic = cfg.data.synthetic.model_copy(update={"string_columns": []})
        if cfg.data.synthetic.string_columns:
            print(
                "[bench] generating the data without string columns (the collisionless "
                "table indexes integer ids)",
                flush=True,
            )
        data = generate(synthetic, cfg.run_dir / "bench-embeddings-data")
        paths = {"train_path": str(data.train_dir), "test_path": str(data.test_dir)}
        cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"synthetic": synthetic, **paths})}
        )
    # every variant validated first: a bad one (collisionless over a user's string ids)
    # stops the bench before the others train
    variants = {(kind, lr): _variant(cfg, kind, lr) for kind in KINDS for lr in learning_rates}
    rows = []
    for kind in KINDS:
        for lr in learning_rates:
            variant = variants[kind, lr]
            params = build_layout(variant.embedding, variant.features, variant.seed).num_parameters
            print(f"[bench] {kind} lr={lr:g} ({params:,} embedding parameters)", flush=True)
            summary = run_job(variant)
            rows.append(
                {
                    "kind": kind,
                    "learning_rate": lr,
                    "embedding_parameters": params,
                    "test_auc": summary["test_auc"],
                    "test_log_loss": summary["test_log_loss"],
                    "examples_per_second": summary["examples_per_second"],
                }
            )
    base = next(r["embedding_parameters"] for r in rows if r["kind"] == "collisionless")
    print("\nkind           lr      params      params/collisionless  test AUC  log loss  ex/s")
    for r in rows:
        print(
            f"{r['kind']:<14} {r['learning_rate']:<7g} {r['embedding_parameters']:>11,} "
            f"{r['embedding_parameters'] / base:>20.2f}  {r['test_auc']:.4f}    "
            f"{r['test_log_loss']:.4f}    {r['examples_per_second']:,.0f}"
        )
    sys.stdout.flush()
    if json_out:
        write_json(json_out, rows)
    return rows

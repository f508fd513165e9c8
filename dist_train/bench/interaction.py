"""``dist-train bench interaction``: DLRM's dot interaction, native kernels against torch's.

The job's shapes (``train.batch_size`` examples; the dense vector and every chunk vector,
``d`` wide), timed forward alone and forward + backward, for torch's implementation (a batched
matmul and a gather of its upper triangle, with its own backward) and for the C kernels in
each instruction set this CPU runs (:mod:`dist_train.models.dot_interaction`), at each thread
count asked. Rounds interleaved; medians, and ``torch / native`` per round, median.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

from dist_train.bench import seconds_per_call, spread, write_json
from dist_train.config.errors import ConfigError
from dist_train.config.schema import JobConfig
from dist_train.embedding.init import torch_seed
from dist_train.embedding.layout import build_layout
from dist_train.models.dot_interaction import (
    dot_interaction,
    native_variants,
    select_native_variant,
)

CALLS_PER_ROUND = 5


def run_interaction_bench(
    cfg: JobConfig, threads: list[int], json_out: str | None = None, rounds: int = 9
) -> dict[str, Any]:
    """Time every (threads, implementation) case; print and return the figures."""
    if cfg.model.kind != "dlrm" or cfg.model.interaction != "dot":  # its figures: not this job's
        raise ConfigError(
            f"bench interaction times DLRM's dot interaction, and this job's model is "
            f"model.kind={cfg.model.kind}, model.interaction={cfg.model.interaction}; set "
            "model.kind=dlrm and model.interaction=dot"
        )
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    batch, d, n = cfg.train.batch_size, layout.dim, layout.num_vectors + 1
    generator = torch.Generator().manual_seed(torch_seed(cfg.seed))
    dense = torch.randn(batch, d, generator=generator, requires_grad=True)
    vectors = torch.randn(batch, n - 1, d, generator=generator, requires_grad=True)
    grad = torch.randn(batch, d + n * (n - 1) // 2, generator=generator)
    variants = native_variants()
    impls = ["torch", *variants]

    def forward(impl: str) -> Callable[[], object]:
        def run() -> object:
            if impl != "torch":
                select_native_variant(impl)
            with torch.no_grad():
                return dot_interaction(dense, vectors, native=impl != "torch")

        return run

    def forward_backward(impl: str) -> Callable[[], object]:
        def run() -> object:
            if impl != "torch":
                select_native_variant(impl)
            out = dot_interaction(dense, vectors, native=impl != "torch")
            return torch.autograd.grad(out, (dense, vectors), grad)

        return run

    print(
        f"[bench] dot interaction: batch {batch}, {n} vectors of {d}; native kernels: "
        f"{', '.join(variants) or 'not built for this CPU'}; threads {threads}; "
        f"{rounds} interleaved rounds",
        flush=True,
    )
    modes = (("forward", forward), ("forward_backward", forward_backward))
    seconds: dict[tuple[int, str, str], list[float]] = {}
    previous = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for t in threads:
                torch.set_num_threads(t)
                for impl in impls:
                    for mode, make in modes:
                        seconds.setdefault((t, impl, mode), []).append(
                            seconds_per_call(make(impl), CALLS_PER_ROUND)
                        )
    finally:
        torch.set_num_threads(previous)
        if variants:
            select_native_variant(variants[0])
    rows = []
    for t in threads:
        for impl in impls:
            row: dict[str, Any] = {"threads": t, "implementation": impl}
            for mode in ("forward", "forward_backward"):
                ours = seconds[(t, impl, mode)]
                base = seconds[(t, "torch", mode)]
                row[f"{mode}_seconds"] = spread(ours)
                row[f"{mode}_torch_over_this"] = statistics.median(
                    b / o for b, o in zip(base, ours, strict=True)
                )
            rows.append(row)
    print("\n  threads  implementation  fwd ms  torch/this  fwd+bwd ms  torch/this")
    for r in rows:
        print(
            f"  {r['threads']:>7}  {r['implementation']:>14}"
            f"  {r['forward_seconds'][0] * 1e3:>6.2f}  {r['forward_torch_over_this']:>10.2f}"
            f"  {r['forward_backward_seconds'][0] * 1e3:>10.2f}"
            f"  {r['forward_backward_torch_over_this']:>10.2f}"
        )
    result = {"batch": batch, "vectors": n, "dim": d, "rows": rows}
    if json_out:
        write_json(json_out, result)
    return result

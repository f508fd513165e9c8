"""``dist-train bench kernel``: FBGEMM's table-batched embedding kernel against copy speed.

One ``SplitTableBatchedEmbeddingBagsCodegen`` on this device's kernel (a 1,000,000-row table
read by 32 features, ids Zipf(1.1) hashed per feature as in ``dist-train calibrate``), timed
forward alone and forward + backward with the fused row-wise Adagrad update, over row widths
and batch sizes. Its bandwidth counts the bytes the kernel must move:

- forward: each looked-up row read, each pooled output written (``ids x dim x 4 +
  bags x dim x 4``);
- forward + backward: that, the pooled gradients read, and each distinct row read and
  written again with its accumulator once (``+ bags x dim x 4 + distinct x (2 x dim x 4 +
  8)``: the update sums a row's gradients first);

against ``Tensor.copy_`` of 256 MiB (bytes read + written per second) timed as the kernel is
(the mean of back-to-back calls) in the same rounds, interleaved; medians reported, the
ratios to copy taken round by round.

Beside it, the same ids through a table of the same shape declared as one feature read by
32 x batch bags: what FBGEMM's CPU backward does for a table of its own. For a table several
features share (a unified table, or the calibration's) it takes a serial loop without
FBGEMM's generated kernels (``is_shared_table`` in ``embedding_backward_split_cpu_template.cpp``);
``shared / one feature`` is that path's cost in time, forward + backward. The trainer's CPU
ranks run a shared table as one feature (:mod:`dist_train.train.shared_tables`), and where
the C lookup and update apply (:mod:`dist_train.train.table_rows`, CPU with the extension
built) they run those instead: ``C fwd+bwd`` times them on the same ids, given as the
trainer gets them (a KJT, feature-major), and ``1-feature / C`` compares the two.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from typing import Any, cast

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from dist_train.bench import seconds_per_call, write_json
from dist_train.bench.roofline import embedding_bytes
from dist_train.config.errors import ConfigError
from dist_train.data.memory import reuse_freed_memory
from planners.calibrate import (
    TBE_BAGS,
    TBE_ROWS,
    calibration_tbe,
    copy_probe,
    zipf_rows,
)
from planners.cores import usable_memory_bytes

DIMS = (16, 32, 64, 128)
BATCHES = (512, 2048, 8192)
ROUNDS = 5
CALLS_PER_ROUND = 5


def _forward(tbe: torch.nn.Module, ids: torch.Tensor, offsets: torch.Tensor) -> None:
    with torch.no_grad():
        tbe(ids, offsets)


def _training(
    tbe: torch.nn.Module, ids: torch.Tensor, offsets: torch.Tensor, grad: torch.Tensor
) -> None:
    tbe(ids, offsets).backward(grad)  # the fused update runs inside backward


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Round by round, as the bench's other ratios: a slow spell hits both sides alike."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def _over_copy(moved: float, copy_rates: list[float], seconds: list[float]) -> float:
    """``moved`` bytes per ``seconds`` over copy's rate, round by round."""
    return _median_ratio([moved / t for t in seconds], copy_rates)


def _table_rows_call(
    tbe: SplitTableBatchedEmbeddingBagsCodegen, ids: torch.Tensor, batch: int, grad: torch.Tensor
) -> Callable[[], object]:
    """Forward + backward of the C lookup and update on ``tbe`` (a one-feature kernel), the
    ids as one-id bags of TBE_BAGS features."""
    from dist_train.train.table_rows import TableRows

    rows = TableRows(tbe, ["calibration"], [TBE_BAGS])
    keys = [f"f{i}" for i in range(TBE_BAGS)]
    features = KeyedJaggedTensor.from_lengths_sync(
        keys, ids, torch.ones(ids.numel(), dtype=torch.int64)
    )
    assert features.stride() == batch
    return lambda: rows(features).backward(grad)


def _c_kernel(dim: int) -> SplitTableBatchedEmbeddingBagsCodegen | None:
    """A one-feature kernel for the C lookup and update to run on, where they apply."""
    from dist_train.train.table_rows import MAX_DIM, applies

    if dim > MAX_DIM:  # before building a table it would not run
        return None
    tbe = cast(SplitTableBatchedEmbeddingBagsCodegen, calibration_tbe(dim, features=1))
    return tbe if applies(tbe) else None


TABLES_PER_DIM = 3  # FBGEMM's table, its one-feature copy, and the C kernel's


# a case's tensors, a bag each (measured ad hoc, 2026-12-07: 582 bytes a bag at dim 64):
# held from its set-up to the end, its ids, offsets and lengths (int64) and the output's
# gradient; and while it runs, two more outputs of its width
CASE_BAG_BYTES = 3 * 8
RUNNING_OUTPUTS = 2


def _check_memory(dims: tuple[int, ...], batches: tuple[int, ...]) -> None:
    """ConfigError, naming --dims and --batches, where the widths' tables (every width's
    held at once, a float a value) and the cases' tensors (every case's held at once)
    outgrow the memory this process may use: a width or batch the flags take ended in an
    allocator's traceback, or the kernel's out-of-memory kill."""
    tables = TABLES_PER_DIM * TBE_ROWS * 4 * sum(dims)
    bags = [(b * TBE_BAGS, d) for d in dims for b in batches]
    cases = sum(n * (CASE_BAG_BYTES + 4 * d) for n, d in bags)
    running = max(n * 4 * d * RUNNING_OUTPUTS for n, d in bags)
    need, have = tables + cases + running, usable_memory_bytes()
    if need > have * 0.8:
        raise ConfigError(
            f"--dims {','.join(map(str, dims))} --batches {','.join(map(str, batches))}: "
            f"their tables of {TBE_ROWS:,} rows and batches of {TBE_BAGS} bags an example "
            f"need {need / 2**30:,.1f} GiB, and this machine has {have / 2**30:,.1f}; ask "
            "for fewer or narrower widths, or fewer or smaller batches"
        )


def run_kernel_bench(
    json_out: str | None = None,
    rounds: int = ROUNDS,
    dims: tuple[int, ...] = DIMS,
    batches: tuple[int, ...] = BATCHES,
) -> dict[str, Any]:
    """Time every (dim, batch) case forward and forward+backward; print and return them."""
    _check_memory(dims, batches)
    # as in the trainer's processes: freed outputs stay in the heap for the next call, where
    # glibc's defaults would map and fault in fresh pages every call (as much system time
    # as the kernels' own)
    reuse_freed_memory()
    copy_call, copied = copy_probe()
    cases: list[dict[str, Any]] = []
    calls: list[
        tuple[
            Callable[[], object],
            Callable[[], object],
            Callable[[], object],
            Callable[[], object] | None,
        ]
    ] = []
    for dim in dims:
        tbe = calibration_tbe(dim)
        one_feature = calibration_tbe(dim, features=1)
        c_kernel = _c_kernel(dim)
        for batch in batches:
            ids = zipf_rows(batch, TBE_BAGS)
            offsets = torch.arange(ids.numel() + 1)
            grad = torch.ones(batch, TBE_BAGS * dim)
            bags = batch * TBE_BAGS
            distinct = ids.unique().numel()  # one table: its update moves each row once
            forward_bytes, update_bytes = embedding_bytes(ids.numel(), bags, dim, distinct)

            forward = functools.partial(_forward, tbe, ids, offsets)
            training = functools.partial(_training, tbe, ids, offsets, grad)
            # the same bags, one feature's: its pooled output is [bags, dim]
            one_grad = grad.view(bags, dim)
            training_one = functools.partial(_training, one_feature, ids, offsets, one_grad)
            training_c = None if c_kernel is None else _table_rows_call(c_kernel, ids, batch, grad)
            for call in (forward, training, training_one, training_c):
                if call is not None:
                    call()
            calls.append((forward, training, training_one, training_c))
            cases.append(
                {
                    "dim": dim,
                    "batch": batch,
                    "bags": bags,
                    "forward_bytes": forward_bytes,
                    "forward_backward_bytes": forward_bytes + update_bytes,
                    "forward_seconds": [],
                    "forward_backward_seconds": [],
                    "one_feature_forward_backward_seconds": [],
                    "c_forward_backward_seconds": [],
                    "copy_bytes_per_second": [],
                }
            )
    print(
        f"[bench] FBGEMM TBE on the CPU kernel, {TBE_ROWS:,} rows, {TBE_BAGS} features x Zipf "
        f"ids, {torch.get_num_threads()} thread(s); {rounds} interleaved rounds",
        flush=True,
    )
    for _ in range(rounds):
        for case, (run_forward, run_training, run_one, run_c) in zip(cases, calls, strict=True):
            case["copy_bytes_per_second"].append(
                copied / seconds_per_call(copy_call, CALLS_PER_ROUND)
            )
            case["forward_seconds"].append(seconds_per_call(run_forward, CALLS_PER_ROUND))
            case["forward_backward_seconds"].append(seconds_per_call(run_training, CALLS_PER_ROUND))
            case["one_feature_forward_backward_seconds"].append(
                seconds_per_call(run_one, CALLS_PER_ROUND)
            )
            if run_c is not None:
                case["c_forward_backward_seconds"].append(seconds_per_call(run_c, CALLS_PER_ROUND))
    rows = []
    for case in cases:
        copy = statistics.median(case["copy_bytes_per_second"])
        fwd = statistics.median(case["forward_seconds"])
        both = statistics.median(case["forward_backward_seconds"])
        shared_over_one = _median_ratio(
            case["forward_backward_seconds"], case["one_feature_forward_backward_seconds"]
        )
        in_c = case["c_forward_backward_seconds"]
        over_copy = functools.partial(
            _over_copy, case["forward_backward_bytes"], case["copy_bytes_per_second"]
        )
        rows.append(
            {
                "dim": case["dim"],
                "batch": case["batch"],
                "forward_seconds": fwd,
                "forward_backward_seconds": both,
                "forward_bytes_per_second": case["forward_bytes"] / fwd,
                "forward_backward_bytes_per_second": case["forward_backward_bytes"] / both,
                "copy_bytes_per_second": copy,
                "forward_over_copy": _over_copy(
                    case["forward_bytes"], case["copy_bytes_per_second"], case["forward_seconds"]
                ),
                "forward_backward_over_copy": over_copy(case["forward_backward_seconds"]),
                "one_feature_forward_backward_seconds": statistics.median(
                    case["one_feature_forward_backward_seconds"]
                ),
                # the same bytes: the same ids, bags and distinct rows
                "one_feature_forward_backward_over_copy": over_copy(
                    case["one_feature_forward_backward_seconds"]
                ),
                "shared_over_one_feature": shared_over_one,
                # the C lookup and update, where they apply
                **(
                    {
                        "c_forward_backward_seconds": statistics.median(in_c),
                        "c_forward_backward_over_copy": over_copy(in_c),
                        "one_feature_over_c": _median_ratio(
                            case["one_feature_forward_backward_seconds"], in_c
                        ),
                    }
                    if in_c
                    else {}
                ),
            }
        )
    print(
        "\n  dim   batch  fwd ms  fwd GB/s  fwd/copy  fwd+bwd ms  fwd+bwd GB/s  /copy  copy GB/s"
        "  1-feature fwd+bwd ms  /copy  shared/1-feature  C fwd+bwd ms  /copy  1-feature/C"
    )
    for r in rows:
        print(
            f"{r['dim']:>5} {r['batch']:>7} {r['forward_seconds'] * 1e3:>7.2f} "
            f"{r['forward_bytes_per_second'] / 1e9:>9.2f} {r['forward_over_copy']:>9.2f} "
            f"{r['forward_backward_seconds'] * 1e3:>11.2f} "
            f"{r['forward_backward_bytes_per_second'] / 1e9:>13.2f} "
            f"{r['forward_backward_over_copy']:>6.2f} {r['copy_bytes_per_second'] / 1e9:>10.1f}"
            f"  {r['one_feature_forward_backward_seconds'] * 1e3:>20.2f}"
            f" {r['one_feature_forward_backward_over_copy']:>6.2f}"
            f"  {r['shared_over_one_feature']:>16.2f}"
            + (
                f"  {r['c_forward_backward_seconds'] * 1e3:>12.2f}"
                f" {r['c_forward_backward_over_copy']:>6.2f}"
                f"  {r['one_feature_over_c']:>11.2f}"
                if "one_feature_over_c" in r
                else f"  {'-':>12} {'-':>6}  {'-':>11}"  # the trainer runs FBGEMM's kernel here
            )
        )
    result = {"threads": torch.get_num_threads(), "rows": rows}
    if json_out:
        write_json(json_out, result)
    return result

"""Worker bodies the multi-process tests run in forked rank processes (gloo; nccl on GPUs)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dist_train.bench import rank_batches
from dist_train.config.load import parse_config
from dist_train.config.schema import JobConfig
from dist_train.devices import rank_device
from dist_train.embedding.layout import build_layout
from dist_train.train import trainer as trainer_module
from dist_train.train.lookups import lookup_modules
from dist_train.train.rank_layout import discover_rank_layout
from dist_train.train.sharding import JobPlan, plan_job, planner_for_config
from dist_train.train.shared_tables import OneFeatureFusedEmbeddingBag
from dist_train.train.trainer import Trainer, make_batch_builder
from planners import placement as pl
from planners.cores import process_cores
from planners.planner import plan_from_placements


def uneven_row_wise_plan(cfg: JobConfig, sizes: list[int]) -> JobPlan:
    """Every table row-wise over all ranks with the rows split as ``sizes``."""
    world = dist.get_world_size()
    planner, model = planner_for_config(cfg, world, world)
    placements = [pl.row_wise(t, planner.topology, sizes) for t in planner.workload.tables]
    plan = plan_from_placements(
        model, placements, planner.workload, planner.topology, planner.compute_kernel
    )
    return JobPlan(plan, world, world, "cpu")


def train_fixed_batches(
    cfg_raw: dict[str, Any],
    data_path: str,
    num_steps: int,
    global_batch: int,
    local_world_size: int | None = None,
    row_sizes: list[int] | None = None,
    device_type: str = "cpu",
    unpooled: bool = False,
    shared_as_one_feature: bool = True,
) -> dict[str, Any]:
    """Train ``num_steps`` on fixed global batches, each rank taking its contiguous slice.

    The plan is the job's (made for ``local_world_size`` ranks a node), or with ``row_sizes``
    an uneven row-wise split; with ``unpooled`` its row-wise tables run unpooled
    (dist_train/train/unpooled_row_wise.py); ranks train on ``device_type`` (the launcher set
    the GPU). ``shared_as_one_feature=False`` builds the trainer without
    :func:`~dist_train.train.shared_tables.read_shared_tables_as_one_feature` and
    :func:`~dist_train.train.tables_in_c.run_tables_in_c`: TorchRec's kernels as TorchRec
    builds them.
    Returns the global mean loss of every step, this rank's embedding shards, the plan's
    placements, the tables this rank's kernels read as one feature, its kernels' classes, the
    class around the dense network, and the trained model's predictions for half a batch of
    the rows after the last step's.
    """
    cfg = parse_config(cfg_raw)
    rank, world = dist.get_rank(), dist.get_world_size()
    if local_world_size:  # simulated nodes: TorchRec's hierarchical shardings read the env
        discover_rank_layout(f"node-{rank // local_world_size}")
    job_plan = uneven_row_wise_plan(cfg, row_sizes) if row_sizes else None
    if unpooled:  # the same row-wise plan, its lookups sent back one vector per id
        job_plan = job_plan or plan_job(cfg, world, local_world_size or world)
        rows = [t for t, p in job_plan.placements().items() if p["type"] == "row_wise"]
        job_plan = dataclasses.replace(job_plan, unpooled_tables=tuple(rows))
    if not shared_as_one_feature:  # this forked rank process only
        trainer_module.read_shared_tables_as_one_feature = lambda model, c_kernels: []
        trainer_module.run_tables_in_c = lambda model: []
    trainer = Trainer.build(cfg, job_plan, rank_device(device_type), local_world_size)
    one_feature = sorted(
        m.config.embedding_tables[0].name
        for m in lookup_modules(trainer.model)
        if isinstance(m, OneFeatureFusedEmbeddingBag)
    )
    builder = trainer.batch_builder()
    table = pq.read_table(data_path, columns=builder.columns)
    local = global_batch // world
    losses = []
    for step in range(num_steps):
        rows = table.slice(step * global_batch + rank * local, local)
        loss = torch.tensor([trainer.train_step(builder.build(rows))], dtype=torch.float64)
        dist.all_reduce(loss)  # a CPU tensor: gloo, on GPU ranks too
        losses.append(float(loss.item()) / world)
    # a batch of another size after training, as evaluation's: each rank's half slice
    rows = table.slice(num_steps * global_batch + rank * local, local // 2)
    predictions = trainer.predict(builder.build(rows))
    shards = []
    for key, value in trainer.model.state_dict().items():
        if hasattr(value, "local_shards"):
            for shard in value.local_shards():
                shards.append(
                    (
                        key,
                        list(shard.metadata.shard_offsets),
                        shard.tensor.detach().cpu().numpy().copy(),
                    )
                )
        elif ".embedding_bags." in key:  # a data_parallel replica (a plain tensor)
            shards.append((key, [0, 0], value.detach().cpu().numpy().copy()))
    return {
        "losses": losses,
        "shards": shards,
        "placements": trainer.plan.placements(),
        "one_feature_tables": one_feature,
        "kernel_classes": sorted(
            {type(m).__name__ for m in lookup_modules(trainer.model) if hasattr(m, "emb_module")}
        ),
        "dense_wrapper": type(trainer.model._dmp_wrapped_module).__name__,
        "predictions": predictions,
    }


def assemble_tables(results: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Full tables from every rank's shards."""
    pieces: dict[str, list[tuple[list[int], np.ndarray]]] = {}
    for r in results:
        for key, offsets, arr in r["shards"]:
            pieces.setdefault(key, []).append((offsets, arr))
    tables = {}
    for key, parts in pieces.items():
        rows = max(o[0] + a.shape[0] for o, a in parts)
        cols = max(o[1] + a.shape[1] for o, a in parts)
        full = np.full((rows, cols), np.nan, dtype=np.float32)
        for (r0, c0), arr in parts:
            full[r0 : r0 + arr.shape[0], c0 : c0 + arr.shape[1]] = arr
        assert not np.isnan(full).any(), f"{key}: shards do not cover the table"
        tables[key] = full
    return tables


def collective_plan_placements(cfg_raw: dict[str, Any]) -> dict[str, Any]:
    """TorchRec's planner interface: rank 0 plans and broadcasts; each rank's placements."""
    cfg = parse_config(cfg_raw)
    world = dist.get_world_size()
    planner, model = planner_for_config(cfg, world, world)
    plan = planner.collective_plan(model, [])
    searched_here = planner.result is not None  # only rank 0 ran the search
    job_plan = JobPlan(plan, world, world, "cpu")
    return {"placements": job_plan.placements(), "searched_here": searched_here}


def unpooled_refusals(cfg_raw: dict[str, Any], data_path: str) -> dict[str, str]:
    """The errors a ``row_wise_unpooled`` model raises, every rank alike (before any
    collective of the bad call, or after all of them): on ids outside the table, on a batch
    of variable size per feature, and on a second batch's lookup input before the first
    batch's output dist (the input dist's last stage runs in its batch's own forward, in a
    train pipeline too)."""
    from torchrec import KeyedJaggedTensor

    cfg = parse_config(cfg_raw)
    trainer = Trainer.build(cfg)
    assert trainer.plan.unpooled_tables
    builder = trainer.batch_builder()
    batch = builder.build(pq.read_table(data_path, columns=builder.columns).slice(0, 8))
    sparse, rows = batch.sparse, trainer.layout.tables[0].num_rows
    errors: dict[str, str] = {}
    bad = {
        "ids": KeyedJaggedTensor(
            keys=sparse.keys(), values=sparse.values() + rows, lengths=sparse.lengths()
        ),
        "stride": KeyedJaggedTensor(
            keys=sparse.keys(),
            values=sparse.values(),
            lengths=sparse.lengths(),
            stride_per_key_per_rank=[[8]] * (len(sparse.keys()) - 1) + [[7]],
        ),
    }
    for name, kjt in bad.items():
        try:
            trainer.model(batch.dense, kjt)
        except ValueError as err:
            errors[name] = str(err)
    # ids just past the table, where the last shard is the shorter: their rows fall within
    # the largest shard's span
    short_last = uneven_row_wise_plan(cfg, [rows - rows // 3, rows // 3])
    unpooled = tuple(t for t, p in short_last.placements().items() if p["type"] == "row_wise")
    uneven = Trainer.build(cfg, dataclasses.replace(short_last, unpooled_tables=unpooled))
    past_the_end = KeyedJaggedTensor(
        keys=sparse.keys(), values=torch.full_like(sparse.values(), rows), lengths=sparse.lengths()
    )
    try:
        uneven.model(batch.dense, past_the_end)
    except ValueError as err:
        errors["past_the_end"] = str(err)
    # not a refusal: a batch of no rows gives no predictions, as pooled row_wise does (it
    # failed reshaping 0 elements)
    empty = builder.build(pq.read_table(data_path, columns=builder.columns).slice(0, 0))
    errors["empty_batch"] = str(tuple(trainer.predict(empty).shape))
    ebc = trainer.model.module.sparse_arch
    ebc.input_dist(ebc.create_context(), sparse).wait().wait()
    try:
        ebc.input_dist(ebc.create_context(), sparse).wait().wait()
    except RuntimeError as err:
        errors["in_flight"] = str(err)
    return errors


def where_the_rank_runs(name: str) -> dict[str, Any]:
    """This rank's directory, the environment variable ``name``, its thread count and cores."""
    return {
        "cwd": os.getcwd(),
        "value": os.environ.get(name),
        "threads": torch.get_num_threads(),
        "rank": dist.get_rank(),
        "cores": process_cores(),
    }


def pipelined_and_plain_losses(
    cfg_raw: dict[str, Any],
    data_path: str,
    models: list[str],
    steps: int,
    device_type: str = "cpu",
) -> dict[str, dict[str, list[float]]]:
    """For each model kind, the losses of ``steps`` steps trained one at a time and through
    TorchRec's train pipeline (``train.pipeline``), from the same start on the same batches
    (the pipeline's must come back as read, in order), the evaluation after each, and the
    evaluation twice after a pipeline closed with batches read ahead."""
    base = parse_config(cfg_raw)
    builder = make_batch_builder(base, build_layout(base.embedding, base.features, base.seed))
    table = pq.read_table(data_path, columns=builder.columns)
    batches = rank_batches(builder, table, base.train.batch_size, steps)
    out: dict[str, dict[str, list[float]]] = {}
    for kind in models:
        raw = {**cfg_raw, "model": {**cfg_raw["model"], "kind": kind}}
        runs = {}
        for pipeline in (False, True):
            cfg = parse_config({**raw, "train": {**raw["train"], "pipeline": pipeline}})
            trainer = Trainer.build(cfg, device=rank_device(device_type))
            assert trainer.pipelined is pipeline
            trained = list(trainer.train_steps(iter(batches)))
            assert [b is a for (b, _), a in zip(trained, batches, strict=True)] == [True] * steps
            assert trainer.steps_done == steps
            runs["pipeline" if pipeline else "plain"] = [loss for _, loss in trained]
            # the model's class and forward are its own again: evaluation runs
            runs[f"{'pipeline' if pipeline else 'plain'}_eval"] = [
                float(trainer.predict(batches[0]).sum())
            ]
            if pipeline:  # a pipeline closed with batches read ahead leaves nothing behind
                early = trainer.train_steps(iter(batches))
                next(early)
                early.close()
                twice = [float(trainer.predict(batches[0]).sum()) for _ in range(2)]
                runs["eval_after_early_close"] = twice
        out[kind] = runs
    return out


def bench_dense_optimizers(cfg_raw: dict[str, Any]) -> dict[str, list[str]]:
    """The optimizer classes ``bench train``'s plain-PyTorch peer and dense-alone timing
    build for the job ``cfg_raw``: theirs for the dense network must be the job's."""
    from dist_train.bench.peers import DenseOnly, PlainPyTorch

    cfg = parse_config(cfg_raw)
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    peer = PlainPyTorch(cfg, layout)
    return {
        "pytorch": [type(o).__name__ for o in peer.optimizers],
        "dense_only": [type(DenseOnly(cfg, layout).optimizer).__name__],
        "pooling": sorted({bag.mode for bag in peer.model.module.sparse_arch.bags.values()}),
    }


def sparse_means_by_hand_and_by_gloo(rows: list[list[int]]) -> dict[str, list[float]]:
    """Rank r's sparse gradients of two tables (10 x 3 and 7 x 2): at each of ``rows[r]`` in
    the first (repeats add up; none at all is a rank without rows) and at the same rows
    mod 7 reversed in the second, a row of consecutive values from r + 1; averaged over the
    ranks by the ``pytorch`` peer's batched exchange
    (:func:`~dist_train.bench.peers.mean_over_ranks`) and by gloo's sparse all-reduce; both
    dense and flat, one table after the other."""
    from dist_train.bench.peers import mean_over_ranks

    rank, world = dist.get_rank(), dist.get_world_size()
    grads = []
    for ids, shape in ((rows[rank], (10, 3)), ([i % 7 for i in rows[rank][::-1]], (7, 2))):
        values = torch.arange(len(ids) * shape[1], dtype=torch.float32).view(-1, shape[1])
        index = torch.tensor(ids, dtype=torch.int64).unsqueeze(0)
        grads.append(torch.sparse_coo_tensor(index, values + rank + 1, shape).coalesce())
    by_hand = mean_over_ranks(grads, world)
    by_gloo = []
    for g in grads:
        summed = g.clone()  # gloo sums in place
        dist.all_reduce(summed)
        by_gloo.append(summed / world)
    return {
        name: torch.cat([m.to_dense().flatten() for m in means]).tolist()
        for name, means in (("by_hand", by_hand), ("by_gloo", by_gloo))
    }


def peer_steps_by_exchange(raw: dict[str, Any], steps: int) -> dict[str, Any]:
    """The ``pytorch`` peer's losses over ``steps`` steps with each way of averaging the
    tables' gradients, from the same start on the same batches, and the largest difference
    between the two ways' tables afterwards."""
    from dist_train.bench.peers import PeerExchange, PlainPyTorch

    cfg = parse_config(raw)
    layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
    builder = make_batch_builder(cfg, layout)
    table = pq.read_table(cfg.data.train_path, columns=builder.columns)
    batches = rank_batches(builder, table, cfg.train.batch_size, steps)
    exchanges: tuple[PeerExchange, ...] = ("ddp", "batched")
    peers = {e: PlainPyTorch(cfg, layout, e) for e in exchanges}
    losses = {e: [peer.train_step(b) for b in batches] for e, peer in peers.items()}
    tables = zip(peers["ddp"].tables, peers["batched"].tables, strict=True)
    return {
        "losses": losses,
        "table_difference": max(float((a - b).abs().max()) for a, b in tables),
        "batched_tables_sum": sum(
            float(t.detach().double().sum()) for t in peers["batched"].tables
        ),
    }


def sustained_rates_with_a_slow_rank(call_seconds: list[float]) -> float:
    """Rank r's :func:`~dist_train.bench.roofline.sustained_rate` of calls that take
    ``call_seconds[r]`` (a sleep), one unit of work each."""
    from dist_train.bench.roofline import sustained_rate

    pause = call_seconds[dist.get_rank()]
    return sustained_rate(lambda: time.sleep(pause), work=1.0, calls=3, windows=2)


def step_cpu_of_a_busy_and_a_sleeping_rank(step_seconds: float) -> tuple[float, float]:
    """``bench train``'s timing of 3 steps in which a thread rank 0 starts spins for
    ``step_seconds`` of its CPU time (not the main thread: every thread counts) and rank 1
    sleeps as long: (wall seconds, CPU seconds of both ranks)."""
    from dist_train.bench.train import _timed

    busy = dist.get_rank() == 0

    def spin() -> None:
        end = time.thread_time() + step_seconds
        while time.thread_time() < end:
            pass

    class Steps:
        def train_step(self, batch: Any) -> float:
            if busy:
                spinner = threading.Thread(target=spin)
                spinner.start()
                spinner.join()
            else:
                time.sleep(step_seconds)
            return 0.0

    cpu: list[float] = []
    wall = _timed(Steps(), iter([None] * 3), 3, cpu)
    return wall, cpu[0]


def openmp_waits_after_each_bench_system(
    raw: dict[str, dict[str, Any]], plans: dict[str, JobPlan | None], data: str
) -> dict[str, int]:
    """:func:`~dist_train.bench.openmp.openmp_waits` before and after each ``bench train``
    system trained 2 steps in each mode, then after a thread of our own ran one parallel op
    and lives on (the control: an OpenMP team of its own); the ranks probe in turn."""
    from dist_train.bench import train as bench
    from dist_train.bench.openmp import openmp_waits

    cfgs = {s: parse_config(r) for s, r in raw.items()}
    table = pq.read_table(data, columns=bench._builder(cfgs["unified"]).columns)

    def probe(probes: int = 3, rounds: int = 3) -> int:
        # one rank at a time, the others asleep in the barrier: ranks whose threads outnumber
        # the cores (2 ranks of 2 threads on 2 cores) would otherwise preempt each other's
        # spinning workers into sleeping (64 waits before any system ran, once). The fewest
        # of a few rounds: another program's load preempts them now and then (134 waits
        # before any system ran, in a CI run beside a review's tests), a team of a system's
        # own puts them to sleep every time
        count = 0
        for turn in range(dist.get_world_size()):
            dist.barrier()
            if turn == dist.get_rank():
                count = min(openmp_waits(probes) for _ in range(rounds))
        dist.barrier()
        return count

    waits = {"before": probe()}
    for s in bench.SYSTEMS:
        model = bench._build(cfgs[s], plans[s])
        batches = rank_batches(bench._builder(cfgs[s]), table, cfgs[s].train.batch_size, 2)
        bench._timed(model, iter(batches), 2)
        stream = bench._pipeline(s, cfgs[s], data)()
        bench._timed(model, stream, 2)
        stream.close()  # its prefetch thread ends: the probe sees what the system left
        waits[s] = probe()
    ran, stop = threading.Event(), threading.Event()

    def team_of_its_own() -> None:
        torch.ones(1 << 20).add_(1.0)
        ran.set()
        stop.wait()

    thread = threading.Thread(target=team_of_its_own, daemon=True)
    thread.start()
    ran.wait()
    waits["control"] = probe(probes=1)
    stop.set()
    thread.join()
    return waits


def tensors_sharing_memory() -> dict[str, Any]:
    """One tensor twice and a view of it beside a tensor of its own, as a result."""
    t = torch.arange(6.0) + dist.get_rank()
    return {"same": [t, t], "view": t[2:], "own": torch.ones(2)}


def fails_on_rank_1_midway() -> dict[str, Any]:
    """Rank 1 raises halfway through 50 all-reduces; rank 0's next collective then fails
    for want of its peer."""
    t = torch.ones(1000)
    for i in range(50):
        if dist.get_rank() == 1 and i == 25:
            raise MemoryError("rank 1 ran out of memory at step 25")
        dist.all_reduce(t)
    return {"ok": 1}


def config_error_on_rank_1() -> dict[str, Any]:
    """Rank 1 raises one of the project's own errors, worded for the user."""
    if dist.get_rank() == 1:
        parse_config({"train": {"batch_size": 0}}, "rank 1's config")
    dist.barrier()
    return {"ok": 1}


def killed_on_rank_1_midway() -> dict[str, Any]:
    """Rank 1 is SIGKILLed halfway through 50 all-reduces, as the out-of-memory killer
    ends a process: it records no error, and rank 0's next collective fails."""
    t = torch.ones(1000)
    for i in range(50):
        if dist.get_rank() == 1 and i == 25:
            os.kill(os.getpid(), signal.SIGKILL)
        dist.all_reduce(t)
    return {"ok": 1}


def interrupted_on_rank_1(at: int) -> dict[str, Any]:
    """Rank 1 gets a SIGINT of its own before all-reduce ``at`` of 50 (50: after the
    last); rank 0's next collective, if any, then fails for want of its peer."""
    t = torch.ones(1000)
    for i in range(51):
        if dist.get_rank() == 1 and i == at:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode: it never gets here
        if i < 50:
            dist.all_reduce(t)
    return {"ok": 1}


def every_rank_interrupted() -> dict[str, Any]:
    """Every rank gets a SIGINT of its own, then all-reduces: a driver that ignores SIGINT
    (a background job of a script) has ranks that ignore it too."""
    os.kill(os.getpid(), signal.SIGINT)
    t = torch.ones(10)
    dist.all_reduce(t)
    return {"sum": float(t.sum())}


def prefetch_threads_after_a_failed_step(cfg_raw: dict[str, Any], data_path: str) -> list[int]:
    """The prefetch threads alive as an epoch's third step raised, and after (none, if the
    epoch closed its stream)."""
    from dist_train.checkpoint.meta import TrainPosition
    from dist_train.data.listing import list_row_groups
    from dist_train.data.stream import PREFETCH_THREAD
    from dist_train.data.validation import BadInputPolicy
    from dist_train.train import epochs

    cfg = parse_config(cfg_raw, "test")
    builder = make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))
    run = epochs.Epochs(
        cfg,
        list_row_groups(data_path),
        builder,
        BadInputPolicy.for_job(cfg),
        TrainPosition(),
        ranks=(dist.get_rank(), dist.get_world_size()),
    )

    def prefetching() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == PREFETCH_THREAD]

    during: list[str] = []

    def failing(batches: Any) -> Any:
        for i, batch in enumerate(batches):
            if i == 2:
                during.extend(prefetching())
                raise RuntimeError("a step failed")
            yield batch, 0.0

    epoch = next(iter(run))
    try:
        for _ in epoch.trained(failing):
            pass
    except RuntimeError:
        pass
    return [len(during), len(prefetching())]

"""``dist-train bench train``: our trainer's examples/s and memory beside its peers'.

Four systems train the same data, dense network, optimizer settings and embedding parameter
budget, side by side in one run:

- ``unified``: our unified table, placed by our planner (the default job);
- ``hashing_trick``: our trainer with one hashed table per feature, placed by our planner,
  its kernels our C lookup and update where they apply (:mod:`dist_train.train.tables_in_c`);
- ``torchrec``: the same tables as ``hashing_trick``, placed by TorchRec's
  ``EmbeddingShardingPlanner`` (default constants, TorchRec's own sharder), in the same
  ``DistributedModelParallel`` with FBGEMM's kernels and fused row-wise Adagrad
  (``sharding.kernels: fbgemm``);
- ``pytorch``: the same tables as ``nn.EmbeddingBag`` with torch's Adagrad, the dense
  network in DDP with the job's dense optimizer (:mod:`dist_train.bench.peers`); the
  tables' gradients averaged as DDP does, one gloo sparse all-reduce a table, or with
  ``peer_exchange="batched"`` (``--peer-exchange batched``) in one exchange for all tables.

Two modes: ``step`` times forward + backward + optimizer on batches built before timing;
``end_to_end`` also reads and converts the Parquet files while timing (ours: the training
loop's input pipeline with its prefetch thread, and the job's shuffle buffer, none in the
default job; the peers: the plain
pyarrow loop of :func:`~dist_train.bench.peers.plain_parquet_batches`). Each system's
pipeline runs through all rounds, as an epoch's does in training. Its end-to-end round first
trains untimed on the batches our prefetch thread built since the last round (the queue's
``train.prefetch_batches`` and the one the thread holds: :func:`built_ahead`), so that the
timed steps find the queue as training does. After that round the
bench waits, untimed, until the process is idle (:func:`wait_until_idle`), so that the
thread's refill (and pyarrow's decoding for it) does not run in the next system's timing.

Beside them, in step mode, the dense network alone (:class:`~dist_train.bench.peers.DenseOnly`):
no system's step can be shorter, and ``pytorch``'s step over it bounds ``unified / pytorch``.
The roofline (:mod:`dist_train.bench.roofline`) measures this machine's rates in every
round too, and divides each round's ``unified`` step by the floor at that round's rates,
and the dense network alone by the floor's dense terms (a step with embeddings cannot come
nearer its floor than that, unless its embeddings cost less than their share); beside them,
how busy that step keeps the cores (every rank's CPU time over the step's wall
time: spinning OpenMP workers count as busy). After the rounds every rank checks that its
OpenMP workers still spin between parallel regions (:mod:`dist_train.bench.openmp`); the
output warns if a system left them asleep, which slows every system in the process.

With more than one rank, ours run on cores of their own, each rank on its share, as our
launchers place them (:mod:`dist_train.launchers.affinity`). Each peer runs as it is
faster: pinned the same way, or free on all the bench's cores as ``torchrun`` leaves it,
chosen after the warm-up by timing it both ways on batches of its own (:func:`faster_cores`;
ours are timed both ways too, for the record). Pinning is no peer's constant gain: on this
machine ``pytorch`` took 1.4-1.9x the time pinned at 2 ranks and 0.71-0.76x at 4
(docs/performance_log.md, "Each rank on cores of its own").

For each rank count, all systems are built in the same gloo processes and timed in
interleaved rounds (every mode and system once per round, each system opening a round in
turn); a system's figure is the median over rounds, with the spread (min and max). Memory
is measured apart, in fresh processes per system: the peak RSS of a rank (the largest) less
the same process before it built the system (imports, process group, prebuilt batches).
Every rank allocates as a training rank does
(:func:`~dist_train.data.memory.reuse_freed_memory`, set for every rank by
:func:`~dist_train.launchers.processes.run_processes`): freed blocks stay in the heap for
reuse, for the peers as for ours.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dist_train.bench import rank_batches, spread, synthetic_train_data, variant, write_json
from dist_train.bench.openmp import PROBE_REGIONS, SLEEPING_WAITS_PER_REGION, openmp_waits
from dist_train.bench.peers import DenseOnly, PeerExchange, PlainPyTorch, plain_parquet_batches
from dist_train.bench.planner import MemoryMark, torchrec_job_plan
from dist_train.bench.roofline import (
    MachineRates,
    dense_floor,
    measure_rates,
    step_floor,
    working_set_bytes,
)
from dist_train.checkpoint.meta import TrainPosition
from dist_train.config.load import parse_config
from dist_train.config.schema import JobConfig
from dist_train.data.batch import Batch, BatchBuilder
from dist_train.data.listing import list_row_groups, resolve_files
from dist_train.data.memory import release_freed_memory
from dist_train.data.validation import BadInputPolicy
from dist_train.embedding.layout import build_layout
from dist_train.launchers.affinity import pin_process
from dist_train.launchers.processes import run_processes
from dist_train.logs import LOG
from dist_train.train.epochs import Epochs
from dist_train.train.sharding import JobPlan, plan_job, planner_for_config
from dist_train.train.trainer import Trainer, make_batch_builder
from planners.calibrate import COPY_PROBE_BYTES
from planners.cores import process_cores, usable_cores

SYSTEMS = ("unified", "hashing_trick", "torchrec", "pytorch")
PEERS = ("torchrec", "pytorch")  # timed pinned or free, as they are faster
AFFINITY_TRIALS = 3  # alternations of each way in faster_cores
MODES = ("step", "end_to_end")
WARMUP_STEPS = 2
TRIAL_STEPS = 8  # batches of faster_cores' trials, apart from the rounds'
STEPS_PER_ROUND = 8
ROUNDS = 5
# wait_until_idle(): the process is idle when its threads use under a tenth of a core for
# 10 ms; the wait gives up after 1 s
IDLE_WINDOW_S = 0.01
IDLE_BUSY = 0.1
IDLE_TIMEOUT_S = 1.0


class _Trains(Protocol):
    def train_step(self, batch: Batch) -> float: ...


def system_configs(cfg: JobConfig) -> dict[str, JobConfig]:
    """Each system's job: ``unified`` is ``cfg``; the others use one table per feature."""
    per_feature = variant(cfg, ["embedding.kind=hashing_trick"], "bench train hashing_trick")
    unified = variant(cfg, ["embedding.kind=unified"], "bench train unified")
    # stock TorchRec: FBGEMM's kernels, not ours
    stock = variant(per_feature, ["sharding.kernels=fbgemm"], "bench train torchrec")
    return {
        "unified": unified,
        "hashing_trick": per_feature,
        "torchrec": stock,
        "pytorch": per_feature,
    }


def system_plans(cfgs: dict[str, JobConfig], world: int) -> dict[str, JobPlan | None]:
    """Our planner's plans, TorchRec's plan, none for plain PyTorch (data parallel)."""
    theirs, _ = torchrec_job_plan(cfgs["torchrec"], world, world, usable_cores())
    return {
        "unified": plan_job(cfgs["unified"], world, world),
        "hashing_trick": plan_job(cfgs["hashing_trick"], world, world),
        "torchrec": theirs,
        "pytorch": None,
    }


def _build(cfg: JobConfig, plan: JobPlan | None, peer_exchange: PeerExchange = "ddp") -> _Trains:
    if plan is None:
        layout = build_layout(cfg.embedding, cfg.features, cfg.seed)
        return PlainPyTorch(cfg, layout, peer_exchange)
    return Trainer.build(cfg, plan, local_world_size=plan.local_world_size)


def _builder(cfg: JobConfig) -> BatchBuilder:
    return make_batch_builder(cfg, build_layout(cfg.embedding, cfg.features, cfg.seed))


FLOOR_SAMPLE_ROWS = 65_536


def _floor_sample(
    cfg: JobConfig, data: str, at_least: int = FLOOR_SAMPLE_ROWS
) -> tuple[BatchBuilder, pa.Table]:
    """The batch builder of ``cfg`` and ``data``'s first rows (``at_least`` of them, where
    it holds so many), which the floor's loads are measured on."""
    builder = _builder(cfg)
    parts, rows = [], 0
    for file in resolve_files(data):  # the first rows, over as many files as they take
        parts.append(pq.ParquetFile(file).read(columns=builder.columns))
        rows += parts[-1].num_rows
        if rows >= at_least:
            break
    return builder, pa.concat_tables(parts).slice(0, at_least)


def ids_per_feature(cfg: JobConfig, data: str) -> dict[str, float]:
    """Each feature's mean ids a sample over ``data``'s first rows, as the batch builder
    reads them (a null is none, a list its non-null elements)."""
    builder, table = _floor_sample(cfg, data)
    sparse = builder.build(table).sparse
    per_key = dict(zip(sparse.keys(), sparse.length_per_key(), strict=True))
    out: dict[str, float] = {}
    for key in builder.layout.keys:
        # a feature null in every sampled row: under one id in the sample (a pooling factor
        # must be positive, and left out it would count the default's one id a row)
        out.setdefault(key.feature, max(per_key[key.key], 1) / table.num_rows)
    return out


def distinct_rows_per_batch(cfg: JobConfig, data: str, world: int = 1) -> dict[str, float]:
    """Each table's mean distinct rows in ``world`` ranks' batches of
    ``cfg.train.batch_size`` together over ``data``'s first rows, over ``world``: at one
    rank the rows its batch reads, and at any world a rank's share of the rows a row-wise
    update reads and writes once each (a row the ranks' batches share is updated once)."""
    size = cfg.train.batch_size * world
    builder, table = _floor_sample(cfg, data, max(FLOOR_SAMPLE_ROWS, size))
    # the ranks' batches a window holds: fewer than world where the data is shorter
    ranks = max(1.0, min(size, table.num_rows) / cfg.train.batch_size)
    table_of = {key.key: key.table for key in builder.layout.keys}
    counts: dict[str, list[int]] = {t.name: [] for t in builder.layout.tables}
    for start in range(0, max(1, table.num_rows - size + 1), size):
        sparse = builder.build(table.slice(start, size)).sparse
        ids: dict[str, list[torch.Tensor]] = {name: [] for name in counts}
        for key, values in sparse.to_dict().items():
            ids[table_of[key]].append(values.values())
        for name, parts in ids.items():
            counts[name].append(torch.cat(parts).unique().numel() if parts else 0)
    return {name: statistics.mean(c) / ranks for name, c in counts.items()}


def _pipeline(system: str, cfg: JobConfig, data: str) -> Callable[[], Generator[Batch]]:
    """A fresh input pipeline of ``system`` (ours: the training loop's; peers: plain pyarrow)."""
    builder = _builder(cfg)
    if system in ("torchrec", "pytorch"):
        return lambda: plain_parquet_batches(data, builder, cfg.train.batch_size)
    groups = list_row_groups(data)

    def ours() -> Generator[Batch]:
        epochs = Epochs(cfg, groups, builder, BadInputPolicy.for_job(cfg), TrainPosition())
        yield from next(iter(epochs)).batches()

    return ours


def built_ahead(cfg: JobConfig) -> int:
    """The batches our prefetch thread has built while the process idles: its queue's
    ``train.prefetch_batches`` and the one it holds, waiting for room in the queue."""
    return cfg.train.prefetch_batches + 1 if cfg.train.prefetch_batches > 0 else 0


def _timed(
    model: _Trains, batches: Iterator[Batch], steps: int, cpu: list[float] | None = None
) -> float:
    """Seconds for ``steps`` steps of every rank (the slowest rank ends the step); appends
    to ``cpu`` the CPU seconds every rank's process used meanwhile (all threads, user and
    system), summed over the ranks."""
    dist.barrier()
    start, start_cpu = time.perf_counter(), time.process_time()
    done = 0
    for batch in itertools.islice(batches, steps):
        model.train_step(batch)
        done += 1
    dist.barrier()
    seconds, used = time.perf_counter() - start, time.process_time() - start_cpu
    if done < steps:
        raise RuntimeError(f"the input ran out after {done} of {steps} steps: generate more rows")
    if cpu is not None:
        total = torch.tensor([used], dtype=torch.float64)
        dist.all_reduce(total)
        cpu.append(float(total.item()))
    return seconds


def wait_until_idle(window: float = IDLE_WINDOW_S, timeout: float = IDLE_TIMEOUT_S) -> bool:
    """Wait, untimed, until this process's threads are idle (under ``IDLE_BUSY`` of a core
    over ``window`` seconds); False if they were not within ``timeout``. After our end-to-end
    round the prefetch thread refills its queue, and pyarrow's pool decodes for it: left to
    run on, that work fell in the next system's timed round (docs/performance_log.md, "Rounds
    that start quiet"). The timeout leaves room for OpenMP's workers, which spin for a few
    ms after the last parallel region (libgomp's ``GOMP_SPINCOUNT``) before they sleep."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        start, cpu = time.perf_counter(), time.process_time()
        time.sleep(window)
        if time.process_time() - cpu < IDLE_BUSY * (time.perf_counter() - start):
            return True
    return False


def time_systems(
    raw: dict[str, dict[str, Any]],
    plans: dict[str, JobPlan | None],
    data: str,
    rounds: int,
    bench_cores: list[int],
    peer_exchange: PeerExchange = "ddp",
    copy_bytes: int = COPY_PROBE_BYTES,
) -> dict[str, Any]:
    """Worker: build every system, time them round-robin (seconds per round), with the dense
    network alone (:class:`~dist_train.bench.peers.DenseOnly`) in step mode, and this
    machine's rates for the roofline at the end of each round; after the rounds, this rank's
    :func:`~dist_train.bench.openmp.openmp_waits`, and how many of its waits for an idle
    process (:func:`wait_until_idle`) timed out. Ours run on this rank's own cores (where
    the launcher pinned it), each of :data:`PEERS` on them or on all ``bench_cores``, as it
    is faster."""
    own_cores = process_cores()
    cfgs = {s: parse_config(r) for s, r in raw.items()}
    models = {s: _build(cfgs[s], plans[s], peer_exchange) for s in SYSTEMS}
    unified = cfgs["unified"]
    dense_only = DenseOnly(unified, build_layout(unified.embedding, unified.features, unified.seed))
    batch = cfgs["unified"].train.batch_size
    first_round = WARMUP_STEPS + TRIAL_STEPS
    count = first_round + rounds * STEPS_PER_ROUND
    builders = {s: _builder(cfgs[s]) for s in SYSTEMS}
    # every system reads the same columns (the job's features, dense and label)
    table = pq.read_table(data, columns=builders["unified"].columns)
    prebuilt = {s: rank_batches(builders[s], table, batch, count) for s in SYSTEMS}
    del table
    # One pipeline per system for the whole run, as in training (an epoch's stream); the
    # warm-up also compiles the batch builder's kernels.
    streams = {s: _pipeline(s, cfgs[s], data)() for s in SYSTEMS}
    for s in SYSTEMS:
        _timed(models[s], iter(prebuilt[s][:WARMUP_STEPS]), WARMUP_STEPS)
        _timed(models[s], streams[s], WARMUP_STEPS)
    busy_waits = int(not wait_until_idle())
    cores = {s: own_cores for s in SYSTEMS}
    pinned_over_free: dict[str, float] = {}
    # where this rank was not pinned, nothing to choose, and nothing to reset (a user's
    # OpenMP binding, say)
    repin = own_cores != bench_cores
    if repin:
        # ours too, for the record: they stay pinned, as our launchers run them
        for s in SYSTEMS:
            trial = prebuilt[s][WARMUP_STEPS:first_round]
            faster, pinned_over_free[s] = faster_cores(models[s], trial, own_cores, bench_cores)
            if s in PEERS:
                cores[s] = faster
        pin_process(own_cores)
    _timed(dense_only, iter(prebuilt["unified"][:WARMUP_STEPS]), WARMUP_STEPS)
    seconds: dict[str, dict[str, list[float]]] = {m: {s: [] for s in SYSTEMS} for m in MODES}
    unified_cpu_seconds: list[float] = []
    dense_seconds: list[float] = []
    rates: list[dict[str, float]] = []
    for r in range(rounds):
        first = first_round + r * STEPS_PER_ROUND
        # each system opens a round in turn: the round before ends with the rates' copies,
        # which leave the next step's rows out of cache
        for s in SYSTEMS[r % len(SYSTEMS) :] + SYSTEMS[: r % len(SYSTEMS)]:
            steps = iter(prebuilt[s][first : first + STEPS_PER_ROUND])
            # the roofline's step: how busy it keeps the cores
            cpu = unified_cpu_seconds if s == "unified" else None
            if repin:
                pin_process(cores[s])
            seconds["step"][s].append(_timed(models[s], steps, STEPS_PER_ROUND, cpu))
            # each pipeline at its own steady state: the batches our prefetch thread built
            # ahead are spent untimed (the peers' pipelines build nothing ahead; for them
            # these steps only move the stream on)
            _timed(models[s], streams[s], built_ahead(cfgs[s]))
            seconds["end_to_end"][s].append(_timed(models[s], streams[s], STEPS_PER_ROUND))
            busy_waits += not wait_until_idle()
        if repin:
            # the dense network alone where unified's step runs: pytorch's step over it is
            # unified / pytorch with free embeddings
            pin_process(own_cores)
        steps = iter(prebuilt["unified"][first : first + STEPS_PER_ROUND])
        dense_seconds.append(_timed(dense_only, steps, STEPS_PER_ROUND))
        # the roofline's rates in every round, beside the steps they judge: measured once
        # after all rounds, a quiet or busy moment of this shared machine moved every ratio
        rates.append(asdict(measure_rates(copy_bytes)))
        if dist.get_rank() == 0:  # minutes of rounds: a line each (off the clock)
            step = seconds["step"]["unified"][-1] / STEPS_PER_ROUND
            # rank 0's clock: the summary takes the slowest rank's
            print(
                f"[bench] round {r + 1}/{rounds}: unified's step {step * 1e3:.1f} ms on rank 0",
                flush=True,
            )
    return {
        "seconds": seconds,
        "unified_step_cpu_seconds": unified_cpu_seconds,
        "dense_only_seconds": dense_seconds,
        "rates": rates,
        "openmp_waits": _openmp_waits_after(streams),
        "busy_waits": busy_waits,
        "pinned": {s: cores[s] != bench_cores for s in SYSTEMS},
        "pinned_over_free": pinned_over_free,
    }


def faster_cores(
    model: _Trains, batches: list[Batch], pinned: list[int], free: list[int]
) -> tuple[list[int], float]:
    """Run on every rank at once: of this rank's ``pinned`` cores and all ``free`` ones, those
    on which ``model`` trains ``batches`` faster (rank 0's medians over alternated trials
    decide for all ranks), and the pinned seconds over the free."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for trial in range(AFFINITY_TRIALS):
        for pin in (True, False) if trial % 2 == 0 else (False, True):
            pin_process(pinned if pin else free)
            seconds[pin].append(_timed(model, iter(batches), len(batches)))
    ratio = torch.tensor([statistics.median(seconds[True]) / statistics.median(seconds[False])])
    dist.broadcast(ratio, 0)
    return (pinned if ratio.item() <= 1.0 else free), float(ratio.item())


def _openmp_waits_after(streams: dict[str, Generator[Batch]]) -> int:
    """After every system ran: did one leave the workers asleep for all? The pipelines stop
    first (ours ends its prefetch thread), so their threads' own waits stay out of the
    count."""
    for stream in streams.values():
        stream.close()
    return openmp_waits()


def peak_memory(
    raw: dict[str, Any],
    plan: JobPlan | None,
    data: str,
    system: str,
    peer_exchange: PeerExchange = "ddp",
) -> dict[str, int]:
    """Worker: this rank's peak RSS over building one system and training it, with prebuilt
    batches and then through its pipeline, less the process before it built the system and
    the library code it mapped (:meth:`~dist_train.bench.planner.MemoryMark.peak_growth`)."""
    cfg = parse_config(raw)
    builder = _builder(cfg)
    table = pq.read_table(data, columns=builder.columns)
    batches = rank_batches(builder, table, cfg.train.batch_size, 3)
    del table
    pipeline = _pipeline(system, cfg, data)
    # what the set-up freed would otherwise stay resident, in the baseline, and be reused
    # by the system unseen
    release_freed_memory()
    dist.barrier()
    mark = MemoryMark.now()
    model = _build(cfg, plan, peer_exchange)
    _timed(model, iter(batches), 3)
    step = mark.peak_growth()
    _timed(model, pipeline(), 3)
    return {"step": step, "end_to_end": mark.peak_growth()}


def _row(
    system: str, mode: str, world: int, seconds: list[float], batch: int, memory: int, params: int
) -> dict[str, Any]:
    rates = [STEPS_PER_ROUND * batch * world / s for s in seconds]
    return {
        "system": system,
        "mode": mode,
        "ranks": world,
        "examples_per_second": statistics.median(rates),
        "examples_per_second_min": min(rates),
        "examples_per_second_max": max(rates),
        "max_rank_memory_bytes": memory,
        "embedding_parameters": params,
    }


Rounds = dict[tuple[str, str, int], list[float]]  # (mode, system, ranks): seconds per round


def ratio_pairs(world: int) -> dict[str, tuple[tuple[str, str], tuple[str, str]]]:
    """The goals' ratios at ``world`` ranks: name -> (mode, system) over (mode, system)."""
    out = {}
    for mode in MODES:
        out[f"hashing_trick_over_torchrec_{mode}_{world}_ranks"] = (
            (mode, "hashing_trick"),
            (mode, "torchrec"),
        )
        out[f"unified_over_pytorch_{mode}_{world}_ranks"] = ((mode, "unified"), (mode, "pytorch"))
    out[f"unified_end_to_end_over_step_{world}_ranks"] = (
        ("end_to_end", "unified"),
        ("step", "unified"),
    )
    return out


def ratios(rounds: Rounds) -> dict[str, list[float]]:
    """Each goal's ratio of examples/s round by round (a round times every system once, back
    to back, so the machine's slow spells hit both sides of a ratio alike): [median, min,
    max] over the rounds."""
    out: dict[str, list[float]] = {}
    for world in sorted({w for _, _, w in rounds}):
        for name, ((mode_a, a), (mode_b, b)) in ratio_pairs(world).items():
            # examples/s a over b: seconds b over a, the same steps and examples per round
            over = zip(rounds[mode_a, a, world], rounds[mode_b, b, world], strict=True)
            paired = [tb / ta for ta, tb in over]
            out[name] = spread(paired)
    return out


def run_train_bench(
    cfg: JobConfig,
    ranks: list[int],
    json_out: str | None = None,
    rounds: int = ROUNDS,
    peer_exchange: PeerExchange = "ddp",
) -> dict[str, Any]:
    """Time and measure every system at each rank count, the plain-PyTorch peer's tables'
    gradients averaged by ``peer_exchange``; print and return the figures."""
    cfgs = system_configs(cfg)
    batch = cfg.train.batch_size
    if cfg.embedding.optimizer.weight_decay:
        LOG.warning(
            f"embedding.optimizer.weight_decay={cfg.embedding.optimizer.weight_decay}: the "
            "pytorch peer's tables train without it (torch's optimizers of sparse gradients "
            "take none), so it does less work a step than the other systems"
        )
    # each end-to-end round first spends the prefetched batches untimed
    steps = WARMUP_STEPS + TRIAL_STEPS + rounds * (STEPS_PER_ROUND + built_ahead(cfg))
    rows_needed = int(1.5 * steps * batch * max(ranks))
    data = synthetic_train_data(cfg, rows_needed, "bench-train-data")
    # the floor reads every id the batches hold: multi-hot features hold several a sample
    unified = cfgs["unified"]
    pooling = {"pooling_factors": ids_per_feature(unified, data)}
    distinct = distinct_rows_per_batch(unified, data)
    floor_cfg = unified.model_copy(update={"sharding": unified.sharding.model_copy(update=pooling)})
    params = {
        s: build_layout(c.embedding, c.features, c.seed).num_parameters for s, c in cfgs.items()
    }
    raw = {s: c.model_dump(mode="json") for s, c in cfgs.items()}
    results: list[dict[str, Any]] = []
    roofline: list[dict[str, Any]] = []
    affinity: list[dict[str, Any]] = []
    rounds_of: Rounds = {}
    cores = usable_cores()  # the ranks' cores, not the host's
    exchange = "; one exchange for all tables" if peer_exchange == "batched" else ""
    peer = f"data_parallel (DDP{exchange})"
    for world in ranks:
        plans = system_plans(cfgs, world)
        labels = {s: peer if p is None else p.label for s, p in plans.items()}
        threads = max(1, cores // world)
        print(
            f"[bench] {world} rank(s), {threads} thread(s) each: {rounds} interleaved rounds "
            f"x {STEPS_PER_ROUND} steps of {batch:,} examples per rank, modes "
            f"{' and '.join(MODES)}; plans: " + "; ".join(f"{s} {labels[s]}" for s in SYSTEMS),
            flush=True,
        )
        workload = planner_for_config(floor_cfg, world, world)[0].workload
        copy_bytes = working_set_bytes(workload, world)
        out = run_processes(
            time_systems,
            (raw, plans, data, rounds, process_cores(), peer_exchange, copy_bytes),
            world,
            threads,
        )
        memory = {
            s: run_processes(
                peak_memory, (raw[s], plans[s], data, s, peer_exchange), world, threads
            )
            for s in SYSTEMS
        }
        # every round ends at a barrier: the slowest rank's figure is everyone's
        seconds = {
            (mode, s): [max(r["seconds"][mode][s][i] for r in out) for i in range(rounds)]
            for mode in MODES
            for s in SYSTEMS
        }
        for (mode, s), per_round in seconds.items():
            rounds_of[mode, s, world] = per_round
            peak = max(m[mode] for m in memory[s])
            results.append(_row(s, mode, world, per_round, batch, peak, params[s]))
            results[-1]["plan"] = labels[s]
            results[-1]["pinned"] = out[0]["pinned"][s]
        affinity.append(
            {
                "ranks": world,
                "pinned": out[0]["pinned"],
                "pinned_over_free": out[0]["pinned_over_free"],
            }
        )
        step = statistics.median(seconds["step", "unified"]) / STEPS_PER_ROUND
        dense = [max(r["dense_only_seconds"][i] for r in out) for i in range(rounds)]
        # round by round, as the goals' ratios: the peer's step over the dense network alone
        pytorch_over_dense = [p / d for p, d in zip(seconds["step", "pytorch"], dense, strict=True)]
        round_rates = out[0]["rates"]
        # round by round: each round's step against the floor at that round's rates, and
        # the dense network alone against the floor's dense terms
        # a rank's share of the rows the ranks update together (at one rank: ``distinct``)
        updated = distinct_rows_per_batch(unified, data, world) if world > 1 else None
        floors = [
            step_floor(workload, world, MachineRates(**r), distinct, updated) for r in round_rates
        ]
        over_floor = [
            seconds["step", "unified"][i] / STEPS_PER_ROUND / floors[i]["floor"]
            for i in range(rounds)
        ]
        dense_over_floor = [
            dense[i] / STEPS_PER_ROUND / dense_floor(floors[i]) for i in range(rounds)
        ]
        rates = {k: statistics.median(r[k] for r in round_rates) for k in round_rates[0]}
        # every rank's CPU time over the step's wall time: below the cores, ranks waited
        busy = [
            cpu / wall
            for cpu, wall in zip(
                out[0]["unified_step_cpu_seconds"], seconds["step", "unified"], strict=True
            )
        ]
        roofline.append(
            {
                "system": "unified",
                "mode": "step",
                "ranks": world,
                # medians over the rounds; on one rank no collective rate (JSON: null)
                "rates": {k: v if math.isfinite(v) else None for k, v in rates.items()},
                # the copy rate's working set: a rank's share of the tables and their state
                "copy_working_set_bytes": copy_bytes,
                "floor_seconds": step_floor(
                    workload, world, MachineRates(**rates), distinct, updated
                ),
                "measured_step_seconds": step,
                "measured_over_floor": statistics.median(over_floor),
                "measured_over_floor_spread": spread(over_floor),
                "busy_cores": spread(busy),
                "cores": cores,
                # the step without embeddings, and the largest unified / pytorch step ratio
                # any embedding path could reach: pytorch's step over it
                "dense_only_step_seconds": statistics.median(dense) / STEPS_PER_ROUND,
                "pytorch_over_dense_only": spread(pytorch_over_dense),
                # no step with embeddings can be nearer its floor than the dense network
                # alone is to the floor's dense terms (DENSE_TERMS)
                "dense_only_over_dense_floor": spread(dense_over_floor),
                # voluntary context switches over PROBE_REGIONS parallel regions, the most
                # of any rank (dist_train/bench/openmp.py)
                "openmp_waits": max(r["openmp_waits"] for r in out),
                "openmp_probe_regions": PROBE_REGIONS,
                # waits for an idle process (wait_until_idle: after the warm-up and each
                # end-to-end round) that timed out, the most of any rank
                "busy_waits": max(r["busy_waits"] for r in out),
            }
        )
        summary = {
            "results": results,
            "ratios": ratios(rounds_of),
            "roofline": roofline,
            "affinity": affinity,
            "peer_exchange": peer_exchange,
        }
        if json_out:  # each rank count's figures kept as it ends: a stop loses only the rest
            write_json(json_out, summary)
    _print(summary)
    return summary


def _print(summary: dict[str, Any]) -> None:
    print(
        "\nsystem         mode        ranks  examples/s (median, min-max)   max rank memory  "
        "emb. params"
    )
    for r in summary["results"]:
        print(
            f"{r['system']:<14} {r['mode']:<11} {r['ranks']:>5}  {r['examples_per_second']:>10,.0f}"
            f" ({r['examples_per_second_min']:,.0f}-{r['examples_per_second_max']:,.0f})"
            f"{'':>4} {r['max_rank_memory_bytes'] / 2**20:>10.1f} MiB  "
            f"{r['embedding_parameters']:>11,}"
        )
    for a in summary["affinity"]:
        trials = a["pinned_over_free"]
        print(
            f"cores at {a['ranks']} rank(s): "
            + "; ".join(
                f"{s} {'pinned' if pinned else 'free'}"
                + (f" (pinned / free seconds x{trials[s]:.2f})" if s in trials else "")
                for s, pinned in a["pinned"].items()
            )
        )
    print()
    print("ratios of examples/s, round by round: median (min-max)")
    for name, (median, low, high) in summary["ratios"].items():
        print(f"{name:<48} x{median:.2f} ({low:.2f}-{high:.2f})")
    for r in summary["roofline"]:
        rates, terms = r["rates"], r["floor_seconds"]
        collectives = (
            f", all-to-all {rates['all_to_all_bytes_per_second'] / 1e9:.2f} GB/s, all-reduce "
            f"{rates['all_reduce_bytes_per_second'] / 1e9:.2f} GB/s"
            if rates["all_to_all_bytes_per_second"] is not None
            else ""
        )
        print(
            f"\nroofline, {r['system']} {r['mode']} on {r['ranks']} rank(s): copy "
            f"{rates['copy_bytes_per_second'] / 1e9:.1f} GB/s "
            f"({r['copy_working_set_bytes'] / 2**20:.1f} MiB working set), matmul "
            f"{rates['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s{collectives} per rank\n  floor "
            f"{terms['floor'] * 1e3:.2f} ms ("
            + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in terms.items() if k != "floor")
            + f" ms); measured step {r['measured_step_seconds'] * 1e3:.2f} ms: "
            "x{:.2f} ({:.2f}-{:.2f}) the floor, round by round\n  the dense network alone ".format(
                *r["measured_over_floor_spread"]
            )
            + f"{r['dense_only_step_seconds'] * 1e3:.2f} ms a step, "
            "x{:.2f} ({:.2f}-{:.2f}) the floor's dense terms; pytorch's step over it ".format(
                *r["dense_only_over_dense_floor"]
            )
            + "(the most unified / pytorch could reach with free embeddings): x{:.2f} "
            "({:.2f}-{:.2f})".format(*r["pytorch_over_dense_only"])
            + "\n  the ranks' CPU time over the step's wall time: {:.2f} ({:.2f}-{:.2f})".format(
                *r["busy_cores"]
            )
            + f" of {r['cores']} cores busy"
        )
        if r["openmp_waits"] > SLEEPING_WAITS_PER_REGION * PROBE_REGIONS:
            print(
                f"  warning: {r['openmp_waits']} voluntary context switches in "
                f"{PROBE_REGIONS} parallel regions after the rounds: OpenMP's workers sleep "
                "between regions, which slows every system's step (more OpenMP threads than "
                "the process's cores: another thread's team, a thread count over the cores, "
                'or OMP_WAIT_POLICY; docs/performance_log.md, "OpenMP\'s workers asleep")'
            )
        if r["busy_waits"]:
            print(
                f"  warning: {r['busy_waits']} time(s) a rank's threads were still busy "
                f"{IDLE_TIMEOUT_S:g} s after a round: their work may have run in the next "
                "round's timing (OMP_WAIT_POLICY=active, or another busy thread; "
                'docs/performance_log.md, "Rounds that start quiet")'
            )

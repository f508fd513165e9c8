"""``dist-train sweep``: quality per parameter across embedding methods (the paper's Table 1).

For each parameter budget (a fraction of the collisionless parameter count, generous to
tiny) and seed, the same job trains with:

- ``collisionless``: one exact table per feature (its full vocabulary; one budget, 1.0);
- ``hashing_trick``: one hashed table per feature, the budget's rows split evenly;
- ``multiplexing``: one shared hashed table, one chunk per feature (feature multiplexing);
- ``unified``: one shared table, chunks per feature as the job config sets them (more for
  high-cardinality features: Unified Embedding).

Every arm has one chunk (d columns) per feature except ``unified``; parameters are table
rows x d. A seed changes initialization, hash salts and batch order; the data stay fixed.
Results go to ``<out>/results.jsonl`` as each run ends (a rerun skips the arms already
there, and refuses a file of runs under another job config), then ``sweep.json``,
``sweep.md`` (mean and spread of test AUC and log loss) and ``sweep.png`` (AUC against
parameters).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from dist_train.config.args import as_typed
from dist_train.config.errors import ConfigError
from dist_train.config.load import DEFAULT_CONFIG, load_config, parse_config
from dist_train.config.overrides import apply_overrides
from dist_train.config.schema import JobConfig, number_in_name
from dist_train.data.synthetic import generate, generated_cardinalities, said_of_cardinalities
from dist_train.embedding.layout import build_layout
from dist_train.logs import setup_logging, verbosity

if TYPE_CHECKING:  # (torch: imported where the arms train)
    from dist_train.devices import DeviceType

METHODS = ("collisionless", "hashing_trick", "multiplexing", "unified")
DATASETS = {"synthetic": DEFAULT_CONFIG, "adult": DEFAULT_CONFIG.parent / "adult.yaml"}
# Applied to a dataset's own config (before --set). The default job's 2,048 examples per rank
# train one epoch of 200,000 rows in 48 steps: seeds then differ by up to 0.05 test AUC and
# bury the methods' differences; 512 gives 195 steps and about 0.003 (docs/benchmarks.md).
DATASET_OVERRIDES = {"synthetic": ["train.batch_size=512"], "adult": []}
BUDGETS = (1.0, 0.3, 0.1, 0.03)
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Arm:
    """One training run of the sweep."""

    method: str
    budget: float  # fraction of the collisionless parameters
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-b{number_in_name(self.budget)}-s{self.seed}"


def arms(budgets: tuple[float, ...], seeds: tuple[int, ...]) -> list[Arm]:
    """Every run, seeds innermost-but-one so a partial sweep covers all methods early (a
    budget or seed given twice runs once: a repeat would count as another seed)."""
    budgets, seeds = tuple(dict.fromkeys(budgets)), tuple(dict.fromkeys(seeds))
    named: dict[str, float] = {}
    for budget in budgets:  # runs are recorded by name: two budgets of one would mix
        other = named.setdefault(number_in_name(budget), budget)
        if other != budget:
            raise ValueError(
                f"budgets {other!r} and {budget!r} both name runs b{number_in_name(budget)}; "
                "give budgets that differ in their first 6 significant digits"
            )
    out = [Arm("collisionless", 1.0, s) for s in seeds]
    for budget in budgets:
        for seed in seeds:
            out += [Arm(m, budget, seed) for m in METHODS if m != "collisionless"]
    return out


def vocabulary(cfg: JobConfig) -> int:
    """Distinct values over all features (the collisionless table rows)."""
    missing = [f.name for f in cfg.features if f.cardinality is None]
    if missing:
        raise ValueError(f"the sweep needs a cardinality for every feature; missing: {missing}")
    return sum(f.cardinality or 0 for f in cfg.features)


def arm_config(base: JobConfig, arm: Arm) -> JobConfig:
    """``base`` trained as ``arm``: its embedding kind, rows and chunks, seed and name."""
    raw = base.model_dump(mode="json")
    rows = max(len(base.features), round(arm.budget * vocabulary(base)))
    kind = {"multiplexing": "unified"}.get(arm.method, arm.method)
    overrides = [
        f"name={arm.name}",
        f"seed={arm.seed}",
        f"embedding.kind={kind}",
        f"embedding.num_rows={rows}",
        "embedding.num_tables=1",
    ]
    if arm.method != "unified":
        for feature in raw["features"]:
            feature["chunks"] = 1
    return parse_config(apply_overrides(raw, overrides), f"sweep arm {arm.name}")


def stale_runs(
    done: list[dict[str, Any]], base: JobConfig, planned: list[Arm]
) -> list[dict[str, Any]]:
    """The ``done`` runs of ``planned`` arms whose recorded parameters are not what the arm
    holds now: an older dist_train's (before fc4d3c4 the hashing trick's rows were rounded
    down), not this arm's figures."""
    params = {}
    for arm in planned:
        cfg = arm_config(base, arm)
        params[arm.name] = build_layout(cfg.embedding, cfg.features, cfg.seed).num_parameters
    return [r for r in done if params.get(r["name"], r["parameters"]) != r["parameters"]]


def _given_config(dataset: str, config: str | None, overrides: list[str]) -> JobConfig:
    """``config`` with ``overrides``, or the dataset's own config with its sweep settings."""
    if config is not None:
        return load_config(config, overrides)
    return load_config(DATASETS[dataset], [*DATASET_OVERRIDES[dataset], *overrides])


def dataset_config(
    dataset: str, config: str | None, overrides: list[str]
) -> tuple[JobConfig, list[str]]:
    """The sweep's job as given (:func:`_given_config`), on generated data with the
    features' cardinalities the generated columns'
    (:func:`~dist_train.data.synthetic.generated_cardinalities`), and the features whose
    cardinality that changed."""
    cfg = _given_config(dataset, config, overrides)
    # (a config naming data of its own is refused by prepare, naming its path)
    generated = dataset == "synthetic" and cfg.data.train_path is None
    return generated_cardinalities(cfg) if generated else (cfg, [])


def append_line(path: Path, line: str) -> None:
    """``line`` on a line of its own at the end of ``path``: a file edited by hand (a run's
    line removed to train it again) may have lost its last newline, and the record would
    have joined that line, two runs on one."""
    with path.open("ab+") as f:  # appends, wherever it reads
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode() + b"\n")


def prepare(
    dataset: str, config: str | None, overrides: list[str], out: Path, progress: bool = False
) -> JobConfig:
    """The sweep's base job: its data written once under ``out/data`` (``progress``: the
    generator's lines, as ``gen-data`` prints them), runs under ``out``."""
    cfg = dataset_config(dataset, config, overrides)[0]
    own = load_config(DATASETS[dataset], DATASET_OVERRIDES[dataset]).data
    for key in ("train_path", "test_path"):  # a path of the user's: refused, not replaced
        value = getattr(cfg.data, key)
        if value is not None and value != getattr(own, key):
            own_value = getattr(own, key)
            keep = "null" if own_value is None else f"{own_value} (its config's)"
            raise ConfigError(
                f"data.{key}={value}: the sweep trains on the dataset --dataset names "
                f"({dataset}), written under {out / 'data'}; leave data.{key} as {keep}"
            )
    data = out / "data"
    if dataset == "adult":
        from dist_train.data.adult import convert_adult

        written = convert_adult(data)
        train, test = written.train_dir, written.test_dir
    else:
        # integer ids: the collisionless baseline indexes them
        synth = cfg.data.synthetic.model_copy(update={"string_columns": []})
        generated = generate(synth, data, progress=progress)
        train, test = generated.train_dir, generated.test_dir
    fixed = [  # the paths as typed (a leading quote would read as YAML's)
        f"output_dir={as_typed(str(out / 'runs'))}",
        "launcher=processes",
        f"data.train_path={as_typed(str(train))}",
        f"data.test_path={as_typed(str(test))}",
        # dozens of runs: keep the figures, not the tables (an arm trained again after an
        # interruption would find its checkpoints and be refused as a fresh run beside them)
        "checkpoint.save_at_end=false",
        "checkpoint.every_steps=null",
        "checkpoint.resume=null",
        "checkpoint.dir=null",
    ]
    return parse_config(apply_overrides(cfg.model_dump(mode="json"), fixed), "sweep base job")


def dense_parameters(job: JobConfig) -> int:
    """The parameters of an arm's network above its tables: an arm of more chunks (unified)
    feeds its model more vectors, and DLRM's pairs grow with their square."""
    from dist_train.train.sharding import build_model

    return build_model(job, build_layout(job.embedding, job.features, job.seed)).dense_parameters


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, standard deviation, min and max of test AUC and log loss per (method, budget)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    rows = []
    for (method, budget), runs in sorted(groups.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        row: dict[str, Any] = {
            "method": method,
            "budget": budget,
            "parameters": runs[0]["parameters"],
            "seeds": len(runs),
        }
        for metric in ("test_auc", "test_log_loss"):
            values = [float(r[metric]) for r in runs]
            if any(math.isnan(v) for v in values):  # a diverged seed: no figure stands for it
                row.update({f"{metric}_{k}": math.nan for k in ("mean", "std", "min", "max")})
                continue
            row[f"{metric}_mean"] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_min"], row[f"{metric}_max"] = min(values), max(values)
        rows.append(row)
    return rows


def training_settings(base: JobConfig) -> dict[str, Any]:
    """What the figures were trained on and how, for the summary: two sweeps of other rows
    or epochs printed the same header."""
    from dist_train.data.listing import resolve_files

    def rows(path: str | None) -> int:
        return sum(pq.read_metadata(f).num_rows for f in resolve_files(path or ""))

    return {
        "train_rows": rows(base.data.train_path),
        "test_rows": rows(base.data.test_path),
        "embedding_dim": base.embedding.dim,
        "batch_size_per_rank": base.train.batch_size,
        "ranks": base.ray.num_workers,
        "epochs": base.train.epochs,
        "max_steps": base.train.max_steps,
    }


def markdown(
    rows: list[dict[str, Any]],
    dataset: str,
    model: str = "dlrm",
    settings: dict[str, Any] | None = None,
) -> str:
    trained = ""
    if settings:
        steps = "" if settings["max_steps"] is None else f", at most {settings['max_steps']} steps"
        trained = (
            f" Trained on {settings['train_rows']:,} rows ({settings['epochs']} epoch(s) of "
            f"{settings['batch_size_per_rank']:,} examples per rank, {settings['ranks']} "
            f"ranks{steps}), tested on {settings['test_rows']:,}; dim "
            f"{settings['embedding_dim']}."
        )
    lines = [
        f"Dataset: {dataset}; model: {model}.{trained} Test AUC and log loss: mean ± "
        "standard deviation over seeds (min-max). The budget is the embedding tables'; the "
        "network above them grows with the vectors an arm feeds it (unified's chunks).",
        "",
        "| method | budget | embedding parameters | dense parameters | seeds | test AUC | "
        "log loss |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        dense = r.get("dense_parameters")
        auc, loss = f"{r['test_auc_mean']:.4f}", f"{r['test_log_loss_mean']:.4f}"
        if r["seeds"] > 1:  # one seed has no spread: "± 0.0000" would claim one
            auc += f" ± {r['test_auc_std']:.4f} ({r['test_auc_min']:.4f}-{r['test_auc_max']:.4f})"
            loss += f" ± {r['test_log_loss_std']:.4f}"
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {r['parameters']:,} | "
            f"{'-' if dense is None else f'{dense:,}'} | {r['seeds']} | {auc} | {loss} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], dataset: str, path: Path) -> None:
    """Test AUC (mean, error bars: standard deviation) against parameters, one line a method."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["parameters"])
        if not mine:
            continue
        if method == "collisionless":  # one budget: draw it as the reference line it is
            ax.axhline(mine[0]["test_auc_mean"], color="black", linestyle="--", linewidth=1)
        ax.errorbar(
            [r["parameters"] for r in mine],
            [r["test_auc_mean"] for r in mine],
            yerr=[r["test_auc_std"] for r in mine],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    # a tick at each budget's parameters, labelled: on decades alone, a sweep spanning less
    # than one (1.56M to 5.19M) had no number on its axis, and minor ticks' labels crowd
    params = sorted({r["parameters"] for r in rows})
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(params, [_short(p) for p in params])
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("test AUC")
    ax.set_title(f"Quality per parameter ({dataset})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(n: int) -> str:
    """``n`` in three significant digits: 3,952 is 3.95k, 5,191,600 is 5.19M, 999,600 1M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        text = f"{n / scale:.3g}"
        if "e" not in text and float(text) >= 1:  # rounded up to this unit's 1 counts
            return text + unit
    return str(n)


def config_digest(job: JobConfig) -> str:
    """Of the job the user gave the sweep (before ``prepare`` sets its paths under ``--out``):
    a rerun reuses only runs trained under the same one."""
    text = json.dumps(job.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


DIVERGED = "TrainingDiverged"
"""How a diverged run's recorded error opens (an older dist_train's wrote it within a rank's
failure, or only TrainingDiverged's message: :func:`diverged`)."""

RETRIES = 2
"""Reruns that train a failed run again (:func:`failed_to_run`); a run failed this often
more is kept as failed: its failure repeats (out of memory, say)."""


def diverged(error: str) -> bool:
    """Whether a recorded ``error`` is a divergence, as this and older dist_trains wrote it
    ("rank 0 failed: TrainingDiverged: ...", or the message alone: "step 3: the training
    loss is nan ...")."""
    return (
        error.startswith(DIVERGED) or f": {DIVERGED}:" in error or "the training loss is" in error
    )


def failed_to_run(run: dict[str, Any]) -> bool:
    """Whether ``run`` is recorded with an error other than its divergence: a rank killed
    (out of memory, a lost machine) or failed. A rerun trains it again, as it may not fail
    twice (:func:`to_train_again`); a diverged run is kept, since its seed diverges every
    time."""
    error = run.get("error")
    return isinstance(error, str) and not diverged(error)


def to_train_again(
    done: list[dict[str, Any]], wanted: set[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The runs of ``wanted`` that a rerun trains again, by name, each its newest record:
    every record of it failed to run (:func:`failed_to_run`), at most :data:`RETRIES` times
    after the first; and the runs that failed more often, kept as failed. A run with a
    record that trained, or diverged, is neither."""
    records: dict[str, list[dict[str, Any]]] = {}
    for run in done:
        if run["name"] in wanted:
            records.setdefault(run["name"], []).append(run)
    failed = {name: runs for name, runs in records.items() if all(map(failed_to_run, runs))}
    again = {name: runs[-1] for name, runs in failed.items() if len(runs) <= RETRIES}
    return again, sorted(set(failed) - set(again))


def _results(log: Path) -> list[dict[str, Any]]:
    """The runs recorded in ``log`` (none if it does not exist); blank lines are passed
    over, and a line that is not a run's JSON object is an error naming the line."""
    if not log.exists():
        return []
    try:
        text = log.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{log}: not a sweep's results (not UTF-8 text)") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except json.JSONDecodeError as err:
            run = err
        problem = _record_problem(run)
        if problem:
            raise ConfigError(
                f"{log}, line {number}: not a sweep run's record ({problem}); remove the "
                "line (its run trains again) or the file (to start over)"
            )
        for metric in ("test_auc", "test_log_loss"):  # strict JSON writes NaN as null
            if run.get(metric) is None:
                run[metric] = math.nan
        out.append(run)
    return out


def _record_problem(run: object) -> str | None:
    """What makes ``run`` no run's record of ``results.jsonl``, checked before any run
    trains (a bad figure failed the summary after all of them); None if nothing."""
    if not isinstance(run, dict):
        return str(run) if isinstance(run, Exception) else f"a {type(run).__name__}"
    number = (int, float)
    wanted: dict[str, tuple[type, ...]] = {
        "name": (str,),
        "method": (str,),
        "budget": number,
        "parameters": (int,),
        "test_auc": (*number, type(None)),
        "test_log_loss": (*number, type(None)),
    }
    for key, kinds in wanted.items():
        if key not in run:
            return f"no {key!r}"
        if not isinstance(run[key], kinds) or isinstance(run[key], bool):
            return f"{key}={run[key]!r}"
    return None


def check_budgets(base: JobConfig, budgets: tuple[float, ...]) -> None:
    """ConfigError for a budget outside (0, 1] of the exact tables, or one whose rows fall
    under one a feature: :func:`arm_config` raises it to that floor, and the table showed
    two budgets' rows with one arm's figures."""
    values, features = vocabulary(base), len(base.features)
    budget_of: dict[int, float] = {}
    for budget in budgets:
        if not 0 < budget <= 1:
            raise ConfigError(
                f"--budgets {budget:g}: a budget is a fraction of the exact tables' "
                "parameters, in (0, 1]"
            )
        rows = round(budget * values)
        if rows < features:
            raise ConfigError(
                f"--budgets {budget:g}: {rows} rows of the {values:,} values, fewer than one "
                f"for each of the {features} features; a budget of {features / values:.3g} or "
                "more gives each a row"
            )
        if budget_of.setdefault(rows, budget) != budget:  # one arm: a table row each
            raise ConfigError(
                f"--budgets {budget_of[rows]!r} and {budget!r} give the same {rows} rows of "
                f"the {values:,} values: one arm's figures under two budgets"
            )


def _device(job: JobConfig) -> DeviceType:
    """Where the sweep's arms train; ConfigError where ``train.device`` cannot be had (it
    was a traceback, after the data were generated)."""
    from dist_train.devices import DeviceError
    from dist_train.driver import job_device

    try:  # on the launcher the arms train on (prepare's): a job's launcher=ray asked a
        # Ray cluster (ray.address) for its GPUs, and failed where none was
        return job_device(job.model_copy(update={"launcher": "processes"}))
    except DeviceError as err:
        raise ConfigError(f"device: {err}; nothing was trained") from None


def _check_plans(base: JobConfig, todo: list[Arm], device: DeviceType) -> None:
    """ConfigError naming the first arm that no plan fits, or whose model the run refuses
    (a dcn_v2 cross_rank past its width), before any arm trains (a sweep stopped at it,
    after the arms before it had trained). The seeds share a plan."""
    from dist_train.models.dcn import wide_rank_note
    from dist_train.train.sharding import plan_for_config
    from planners.topology import TopologyError
    from planners.types import PlanningError

    for arm in {(a.method, a.budget): a for a in todo}.values():
        job = arm_config(base, arm)
        try:
            wide_rank_note(job)
            plan_for_config(job, device)
        except (PlanningError, TopologyError, ConfigError) as err:
            raise ConfigError(f"sweep arm {arm.name}: {err}; nothing was trained") from None


SUMMARY_FILES = ("sweep.json", "sweep.md", "sweep.png")
"""What a sweep writes into its folder after its runs, beside results.jsonl."""


def run_sweep(
    dataset: str,
    out: Path,
    config: str | None = None,
    overrides: list[str] | None = None,
    budgets: tuple[float, ...] = BUDGETS,
    seeds: tuple[int, ...] = SEEDS,
) -> list[dict[str, Any]]:
    """Train every arm not already in ``out/results.jsonl``; write and return the summary."""
    # the trainer's imports are only needed to train
    from dist_train.driver import run_job
    from dist_train.launchers.processes import RankError
    from dist_train.train.loop import TrainingDiverged
    from dist_train.train.progress import strict_json

    job, changed = dataset_config(dataset, config, overrides or [])
    progress = verbosity() != "quiet"  # -q: the table at the end, warnings and errors only
    if changed and progress:
        print(f"[sweep] {said_of_cardinalities(changed)}")
    check_budgets(job, budgets)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if verbosity() == "normal":
        setup_logging("quiet")  # dozens of runs: the sweep prints one line each
    log = out / "results.jsonl"
    done = _results(log)
    for name in SUMMARY_FILES:  # written after every run: a sweep of hours failed at its end
        summary_file = out / name
        if summary_file.is_dir() or (
            summary_file.exists() and not os.access(summary_file, os.W_OK)
        ):
            raise ConfigError(
                f"{summary_file}: {'a folder' if summary_file.is_dir() else 'not writable'}, "
                "where the sweep writes its summary after its runs; move it"
            )
    # a record without its dataset (an edited line) is left to the runs' own checks
    others = sorted({str(r["dataset"]) for r in done if "dataset" in r} - {dataset})
    if others:  # the runs, data and summary files of one would replace the other's
        raise ConfigError(
            f"{log} holds runs of another dataset ({', '.join(others)}); sweep each dataset "
            "into its own --out"
        )
    digest = config_digest(job)
    other = [r["name"] for r in done if r.get("config", digest) != digest]
    if any("config" not in r for r in done):  # written before runs recorded their config
        print(f"[sweep] {log}: runs without a recorded config are taken as this one's")
    if other:
        raise ConfigError(
            f"{log}: {len(other)} {dataset} run(s) there ({other[0]}, ...) trained under "
            "another job config (--config, --set): their figures cannot be mixed with this "
            "one's. Sweep into another --out, or remove the file to start over"
        )
    planned = arms(budgets, seeds)
    wanted = {a.name for a in planned}
    recorded = {r["name"] for r in done if not failed_to_run(r)}  # (failed: trained again)
    # before the data are written; a sweep whose arms are all on record trains nothing
    # (its summary is written on any machine)
    device = _device(job) if any(a.name not in recorded for a in planned) else None
    base = prepare(dataset, config, overrides or [], out, progress)  # after the checks: writes data
    stale = stale_runs(done, base, planned)
    if stale:
        print(
            f"[sweep] {log}: {len(stale)} run(s) there ({stale[0]['name']}, ...) hold other "
            "parameters than their arm now has (an older dist_train's): not taken"
        )
        done = [r for r in done if all(r is not old for old in stale)]
    retried, given_up = to_train_again(done, wanted)  # (of this dist_train's records)
    done = [r for r in done if r["name"] not in retried]
    if retried and progress:
        name, run = next(iter(retried.items()))
        why = str(run["error"]).splitlines()[0][:120]
        print(
            f"[sweep] {log}: {len(retried)} run(s) there failed without diverging "
            f"({name}: {why}, ...): trained again"
        )
    if given_up and progress:
        print(
            f"[sweep] {log}: {len(given_up)} run(s) there failed {RETRIES + 1} times or more "
            f"({given_up[0]}, ...): kept as failed (remove their lines to train them again)"
        )
    have = {r["name"] for r in done}
    todo = [a for a in planned if a.name not in have]
    if progress:
        print(
            f"[sweep] {dataset}: {len(todo)} run(s) to train, "
            f"{len(wanted & have)} already in {log}",
            flush=True,
        )
    if todo:  # (records of an older dist_train's parameters, found stale: trained again)
        _check_plans(base, todo, device or _device(job))
    for i, arm in enumerate(todo, 1):
        start = time.perf_counter()
        job = arm_config(base, arm)
        params = build_layout(job.embedding, job.features, job.seed).num_parameters
        error = None
        # an arm trained before and not on record (stopped before its line was written, or
        # stale): its own folder's summary, which a fresh run beside it is refused over
        (job.run_dir / "summary.json").unlink(missing_ok=True)
        try:
            summary = run_job(job)
        except (RankError, TrainingDiverged) as err:  # its figures are none; the rest train
            error = str(err) if isinstance(err, RankError) else f"{DIVERGED}: {err}"
            summary = {"test_auc": math.nan, "test_log_loss": math.nan}
        result = {
            **asdict(arm),
            "dataset": dataset,
            "config": digest,
            "name": arm.name,
            "parameters": params,
            "test_auc": summary["test_auc"],
            "test_log_loss": summary["test_log_loss"],
            "seconds": time.perf_counter() - start,
            **({"error": error} if error else {}),
        }
        append_line(log, strict_json(result))
        done.append(result)
        figures = (
            f"failed: {error}"
            if error
            else f"test AUC {result['test_auc']:.4f}, log loss {result['test_log_loss']:.4f}"
        )
        if progress:
            print(
                f"[sweep] {i}/{len(todo)} {arm.name}: {params:,} parameters, {figures} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    # one row a run, its newest: an older sweep's file may hold a run twice (a seed given twice)
    runs = {r["name"]: r for r in done if r["name"] in wanted}
    rows = summarize(list(runs.values()))
    for row in rows:  # (the same for every seed and budget of a method: counted per row)
        arm = Arm(row["method"], row["budget"], 0)
        row["dense_parameters"] = dense_parameters(arm_config(base, arm))
    settings = {k: getattr(base.model, k) for k in base.model.settings_read()}
    trained = training_settings(base)
    summary = {
        "dataset": dataset,
        "model": base.model.kind,
        "model_settings": settings,
        "config": digest,
        "training": trained,
        "rows": rows,
    }
    summary_json, table_md, plot_png = (out / name for name in SUMMARY_FILES)
    summary_json.write_text(strict_json(summary, indent=2))
    table = markdown(rows, dataset, base.model.describe(), trained)
    table_md.write_text(table)
    plot(rows, dataset, plot_png)
    print("\n" + table + f"\nwrote {table_md}, {summary_json}, {plot_png}")
    sys.stdout.flush()
    failed = [r for r in done if r["name"] in wanted and "error" in r]  # in the file's order
    if failed and all("error" in r for r in runs.values()):  # nothing to compare: a script
        first = failed[0]
        raise SweepFailed(
            f"every run of the sweep failed ({len(failed)}, their errors in {log}); the first, "
            f"{first['name']}: {first['error']}"
        )
    return rows


class SweepFailed(RuntimeError):
    """Every run of a sweep failed: its table holds no figure."""

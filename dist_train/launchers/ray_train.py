"""Launch the worker function as Ray Train ``TorchTrainer`` workers (gloo on CPU; one GPU
per worker and nccl for CUDA tensors on GPU ranks)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from dist_train.config.schema import JobConfig
from dist_train.devices import backend_for, local_gpus
from dist_train.launchers.cluster import check_fits, describe, live_nodes, packing_risk
from dist_train.launchers.processes import free_port
from dist_train.launchers.ray_entry import train_loop_config, train_loop_per_worker
from dist_train.launchers.ray_reports import FAILED, SUMMARY_FILE
from dist_train.launchers.ray_token import keep_token_private
from dist_train.logs import LOG, drop_message
from dist_train.stopping import Terminated
from dist_train.train.faults import DRILL_ENVS
from planners.cores import usable_cores

if TYPE_CHECKING:
    from dist_train.train.worker_inputs import WorkerInputs


class LaunchError(RuntimeError):
    """The Ray job could not start or did not finish."""


HEALTH_CHECK_ENV, HEALTH_CHECK_SECONDS = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


# Set by Ray's job supervisor in the environment of a `ray job submit` entrypoint (with
# RAY_ADDRESS, the GCS address of the job's cluster): ray/dashboard/modules/job/job_supervisor.py.
JOB_ENTRYPOINT_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# The GCS port of a head node Ray starts (ray/_private/node.py; ray.init has no argument).
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
# "0": Ray prints its workers' lines without colour codes (ray/_private/worker.py)
COLOR_PREFIX_ENV = "RAY_COLOR_PREFIX"


def ray_address(configured: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The cluster the job joins, or None for a private embedded Ray instance.

    - ``ray.address`` set: that cluster. ``auto`` is Ray's: RAY_ADDRESS (a GCS address,
      host:port) if set, else the cluster ``ray start`` made on this machine.
    - ``ray.address: null``: a private embedded instance, whatever runs beside it (a
      ``ray start`` cluster, an exported RAY_ADDRESS such as the job server URL for
      ``ray job submit``), except in the entrypoint of ``ray job submit``, where Ray's job
      supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR and RAY_ADDRESS: there the job joins the
      cluster it was submitted to, instead of starting a private Ray inside the head node.
    """
    if configured:
        return configured
    if JOB_ENTRYPOINT_ENV in environ:
        return environ.get("RAY_ADDRESS") or "auto"
    return None


@contextlib.contextmanager
def private_ray(**init_kwargs: Any) -> Iterator[None]:
    """A private Ray instance for the block: ``ray.init(address="local", **init_kwargs)``,
    which never joins a running cluster, then ``ray.shutdown()``.

    While it runs, RAY_ADDRESS names the instance's own GCS (its port chosen here), in this
    process and in every process the instance starts: an exported RAY_ADDRESS (such as a job
    server URL for ``ray job submit``) never reaches them, and Ray code that looks a cluster
    up by itself (Ray Train's placement-group cleaner queries the state API with no address)
    finds this instance, not a ``ray start`` cluster beside it. The caller's RAY_ADDRESS is
    back after the block.
    """
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", GCS_PORT_ENV)}
    # Ray turns token authentication on for a new local instance where RAY_AUTH_MODE is
    # unset, and warns at every start that it did (docs/launch.md, "Security", says it once)
    drop_message(RAY_AUTH_LOGGER, "Token authentication is enabled for this Ray cluster")
    with contextlib.suppress(OSError):  # unwritable: Ray's own write says so
        keep_token_private()  # where Ray would write it readable by every user
    port = free_port()
    os.environ[GCS_PORT_ENV] = str(port)  # read by the head node Ray starts
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"  # ignored by ray.init(address="local")
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with _daemons_in_own_sessions():
            _init_keeping_sigterm(address="local", **init_kwargs)
        _restore({GCS_PORT_ENV: saved[GCS_PORT_ENV]})
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        try:
            # None: not set from Python, nothing to put back; off the main thread ray.init
            # set none, and signal.signal would raise
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)
        finally:
            _restore(saved)


@contextlib.contextmanager
def _daemons_in_own_sessions() -> Iterator[None]:
    """Ray's daemons started in the block (GCS, raylet, dashboard, log monitor, ...) each in
    a session of its own, out of the driver's process group (the raylet starts the workers
    in process groups of their own already): a SIGTERM to that group (``kill -- -PGID``, a
    shell's job control) then reaches the driver alone, and stops the run as ``kill PID``
    does (a stop of a whole cgroup, systemd's default, still reaches them). In the group,
    the daemons' own handling of it raced: where the raylet unregistered its node before
    the GCS stopped, it stopped its workers and exited within about 0.1 s, taking the
    plasma store with it, and Ray's core worker in the driver ended the process with
    _exit(1) before any Python ran (no line); where the GCS stopped first, the raylet waited
    on it about 7 s while the workers trained on. Ray blocks SIGINT in its daemons, for
    Ctrl-C's sake (``start_ray_process``), but not SIGTERM.

    Only where the kernel ends them with the driver (Linux's PR_SET_PDEATHSIG, which Ray
    then sets for them, and starts no reaper): Ray's reaper process, used otherwise, ends a
    dead driver's daemons by signalling its own process group, so they must stay in it (as
    on Windows, where Ray gives them process groups of their own only in the same case)."""
    try:
        import ray._private.services as services
        import ray._private.utils as ray_utils
    except ImportError:  # Ray reorganised its private modules: as Ray starts them
        yield
        return
    popen = getattr(services, "ConsolePopen", None)
    fate_shared = getattr(ray_utils, "detect_fate_sharing_support", lambda: False)
    if sys.platform == "win32" or not isinstance(popen, type) or not fate_shared():
        yield
        return

    class OwnSessionPopen(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    # what start_ray_process starts each daemon with, looked up at each start
    services.ConsolePopen = OwnSessionPopen  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        services.ConsolePopen = popen  # type: ignore[misc, assignment]


def _init_keeping_sigterm(**init_kwargs: Any) -> None:
    """``ray.init(**init_kwargs)``, the caller's own SIGTERM handler kept: ``ray.init``
    installs one of its own (exit 1, or the signal's number). A caller's Python handler
    (dist_train.stopping: exit 143 through the finally blocks) stays; with none (the default
    action, in library use), Ray's, which shuts its processes down."""
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**init_kwargs)
    except SystemExit as err:  # Ray's handler met a SIGTERM while ray.init ran: sys.exit(15)
        if err.code != signal.SIGTERM or not callable(on_sigterm):
            raise
        raise Terminated from None  # the stop the caller's handler would have made of it
    finally:
        if callable(on_sigterm):
            signal.signal(signal.SIGTERM, on_sigterm)


def _restore(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _connected(cfg: JobConfig) -> Iterator[bool]:
    """Ray for the job (see ``ray_address``): the caller's connection if there is one, the
    cluster it names, or a private embedded instance that lives as long as the block.
    Yields whether it is the private instance (the job owns the machine)."""
    if ray.is_initialized():
        yield False
        return
    address = ray_address(cfg.ray.address)
    if address:
        _join(cfg, address)
        yield False
        return
    needed = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    num_cpus = usable_cores()
    if needed > num_cpus:
        LOG.warning(
            f"{cfg.ray.num_workers} workers x {cfg.ray.cpus_per_worker:g} CPU "
            f"exceed the {num_cpus} cores this process may use; oversubscribing the embedded "
            "Ray instance"
        )
        num_cpus = math.ceil(needed)
    # A local instance cannot be preempted; its watcher actor only adds start-up noise.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    LOG.info(f"starting an embedded Ray instance on 127.0.0.1 ({num_cpus} CPUs)")
    # Everything, the dashboard included, listens on loopback only.
    with private_ray(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    ):
        yield True


def _join(cfg: JobConfig, address: str) -> None:
    """Connect this process to the cluster at ``address`` (for the rest of its life)."""
    submitted = "" if cfg.ray.address else " (the cluster this job was submitted to)"
    LOG.info(f"joining Ray cluster at {address}{submitted}")
    _check_reachable(address)
    try:
        _init_keeping_sigterm(address=address, log_to_driver=True, logging_level=logging.WARNING)
    except ConnectionError as err:
        # Ray's own message names the address alone; what failed ends its cause's text
        # (the last line of a traceback Ray quotes, for a refused connection)
        lines = str(err.__cause__ or "").strip().splitlines()
        cause = lines[-1].strip() if lines else ""
        why = f"{err}: {cause}" if cause else str(err)
        refused = "InvalidAuthToken" in cause or "AuthenticationError" in cause
        hint = _auth_hint() if refused else ""
        raise LaunchError(f"cannot join the Ray cluster at {address} ({why}){hint}") from err


def _auth_hint(environ: Mapping[str, str] = os.environ) -> str:
    """What to check where the GCS refused ``ray.init``'s authentication: a cluster with
    token authentication refuses a client without it, and Ray logs only a warning a second
    (``InvalidAuthToken``) before it gives up."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return (
            ": is this client's token the cluster's (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
            "~/.ray/auth_token)?"
        )
    return (
        ": if the cluster uses token authentication, set RAY_AUTH_MODE=token here, with its "
        "token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (docs/launch.md)"
    )


REACH_SECONDS = 10.0


def _check_reachable(address: str) -> None:
    """Fail at once if ``address`` (host:port, or ray://host:port) takes no connection:
    ``ray.init`` retries an address nothing answers without end. ``auto`` is checked as
    the RAY_ADDRESS that ``ray.init`` takes for it, where one is set."""
    named = address
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        named = f"{address} (RAY_ADDRESS, for ray.address=auto)"
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return  # "auto" without RAY_ADDRESS, or a form Ray resolves itself
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS)
    except OSError as err:
        raise LaunchError(
            f"cannot reach the Ray cluster at {named} ({err.strerror or err}): is it up, "
            "and is ray.address (or RAY_ADDRESS) its head's GCS address, host:port?"
        ) from None
    with conn:
        if os.environ.get("RAY_USE_TLS", "0") in ("0", ""):  # TLS: no cleartext to read
            _check_speaks_grpc(conn, address)


# A client's HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5):
# a gRPC server such as Ray's GCS answers with its own SETTINGS frame (type 4).
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4


def _check_speaks_grpc(conn: socket.socket, address: str) -> None:
    """Fail if what listens at ``address`` does not answer as a gRPC server: ``ray.init``
    retried another service (the dashboard's port, say) without end."""
    try:
        conn.sendall(_HTTP2_PREFACE)
        reply = conn.recv(9)
    except OSError:
        reply = b""
    if len(reply) < 4 or reply[3] != _SETTINGS_FRAME:
        heard = f"it answered {reply[:16]!r}" if reply else "it did not answer"
        raise LaunchError(
            f"{address} takes connections but is no Ray GCS ({heard}): ray.address (or "
            "RAY_ADDRESS) must be the head's GCS address, host:port (6379 unless the head "
            "set --port), not the dashboard's (8265, used by ray job submit)"
        )


def cluster_gpus(cfg: JobConfig) -> tuple[float, str]:
    """The GPUs the job's workers can get, and where: the cluster's (connecting to the one
    the job names, and staying connected for :func:`launch_ray`), or this machine's for the
    embedded instance :func:`launch_ray` starts."""
    if not ray.is_initialized():
        address = ray_address(cfg.ray.address)
        if not address:
            return float(local_gpus()), "this machine"
        _join(cfg, address)
    return float(ray.cluster_resources().get("GPU", 0.0)), "the Ray cluster"


def check_cluster(cfg: JobConfig, device_type: str) -> None:
    """Fail fast if the connected cluster cannot host the worker group (unless autoscaling)."""
    nodes = live_nodes(ray.nodes())
    LOG.info(f"Ray cluster: {describe(nodes)}")
    if not cfg.ray.autoscaling:
        needed = cfg.ray.min_workers or cfg.ray.num_workers  # elastic: at least the minimum
        gpus = 1.0 if device_type == "cuda" else 0.0
        check_fits(
            nodes,
            needed,
            cfg.ray.cpus_per_worker,
            gpus,
            cfg.ray.num_nodes,
            cfg.ray.placement_strategy,
        )
    risk = packing_risk(
        nodes,
        cfg.ray.num_workers,
        cfg.ray.cpus_per_worker,
        1.0 if device_type == "cuda" else 0.0,
        cfg.ray.num_nodes,
        cfg.ray.placement_strategy,
    )
    if risk:
        LOG.warning(risk)


def failure_config(cfg: JobConfig) -> FailureConfig:
    """Ray Train's retries: ``ray.max_failures`` restarts after a worker fails, and as many
    for a worker group that cannot start (placed nowhere within Ray's start timeout). Ray
    retries the latter without end by default, so a job that lost a node hung, whatever
    ``max_failures`` said; with ``ray.autoscaling`` it waits for nodes as long as it takes."""
    limit = -1 if cfg.ray.autoscaling else cfg.ray.max_failures
    # Ray Train v2's FailureConfig (the default in Ray 2.60); the stubs show v1's
    return FailureConfig(max_failures=cfg.ray.max_failures, controller_failure_limit=limit)  # type: ignore[call-arg]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SAYS = 400  # characters of a rank's error in the message (Ray's whole text: the log, -v)


def worker_failures(err: BaseException) -> str:
    """Ray's error for a failed worker group, rank by rank, the ranks whose health check
    failed (a process that died or stopped answering) first: Ray's own text leads with
    rank 0's traceback, which, when another rank died, is only the collective that lost it
    ("Connection closed by peer"). Anything else: as Ray says it."""
    failures = getattr(err, "worker_failures", None)
    if not isinstance(failures, dict) or not failures:
        return str(err)
    LOG.debug(f"Ray's error: {err}")
    unhealthy, others = [], []
    for rank, failure in sorted(failures.items()):
        text = _ANSI.sub("", str(failure))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if "health check" in text.lower():
            where = re.search(r"hostname='([^']*)'.*?pid=(\d+)", text, re.S)
            at = f" (pid {where.group(2)} on {where.group(1)})" if where else ""
            why = [line for line in lines if line.lower().startswith(("hint", "worker exit"))]
            said = f": {' '.join(why)}"[:_SAYS] if why else ""
            unhealthy.append(f"rank {rank}: its worker failed Ray's health check{at}{said}")
            continue
        if lines and lines[0].startswith("Traceback"):  # the exception is its last line
            lines = lines[-1:]
        said = " | ".join(lines[:4])
        cut = "..." if len(said) > _SAYS or len(lines) > 4 else ""
        others.append(f"rank {rank}: {type(failure).__name__}: {said[:_SAYS]}{cut}")
    return "; ".join(unhealthy + others)


def _raise_divergence(err: BaseException) -> None:
    """Raise the ``TrainingDiverged`` of the lowest rank if that is how ``err``'s worker
    group ended: the same error as a restarted group's (or the processes launcher's)."""
    from dist_train.train.loop import TrainingDiverged

    failures = getattr(err, "worker_failures", None)
    diverged = [f for _, f in sorted((failures or {}).items()) if isinstance(f, TrainingDiverged)]
    if diverged:
        raise TrainingDiverged(str(diverged[0])) from err


def launch_ray(cfg: JobConfig, inputs: WorkerInputs) -> dict[str, Any]:
    """Run the job on Ray Train workers; the rank-0 summary."""
    # Ray Train's controller takes one report per worker per health check (2 s by default):
    # checkpoint pointers, reported from the background save thread, would queue behind
    # each other and hold up the next save. Ray passes this variable from the driver to its
    # controller; a value the user set wins.
    defaults = {HEALTH_CHECK_ENV: HEALTH_CHECK_SECONDS}
    if not sys.stdout.isatty():  # a log file's (ray job logs'): no terminal colours in it
        defaults[COLOR_PREFIX_ENV] = "0"  # read as Ray prints workers' lines, to its end
    with _environment_defaults(defaults), _connected(cfg) as private:
        check_cluster(cfg, inputs.device_type)
        result, work = _fit(cfg, inputs, private)
        if result.error is not None:
            raise LaunchError(f"{work} failed: {worker_failures(result.error)}")
        if result.checkpoint is None:
            raise LaunchError(f"{work} finished without reporting a summary")
        with result.checkpoint.as_directory() as path:
            summary = dict(json.loads((Path(path) / SUMMARY_FILE).read_text()))
        failure = recorded_failure(summary, work)
        if failure is not None:
            raise failure
        return summary


@contextlib.contextmanager
def _environment_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in the environment for the block where the caller set none; the
    caller's environment as it was after it (a library caller's process goes on)."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        _restore(saved)


def _worker_payload(cfg: JobConfig, inputs: WorkerInputs, pin_cores: bool) -> dict[str, Any]:
    """What every worker needs from the driver (read by
    :func:`~dist_train.launchers.ray_worker.run_rank`); ``pin_cores``: each pins itself to
    its share of its node's cores."""
    return {
        "config": cfg.model_dump(mode="json"),
        "inputs": inputs,
        "pin_cores": pin_cores,
        # the drills' settings, from the driver's environment: a joined cluster's workers
        # have its raylet's, where they were never set
        "drills": {k: os.environ[k] for k in DRILL_ENVS if k in os.environ},
    }


def recorded_failure(summary: Mapping[str, Any], work: str) -> Exception | None:
    """The error to raise for ``work`` where its summary is a restarted group's that found a
    failure recorded (``FAILED``: a rank's error a restart would meet again): a divergence
    as itself, any other as a :class:`LaunchError` naming it; None for a finished run's."""
    if FAILED not in summary:
        return None
    # (imported here: the driver's launcher does not import the training modules)
    from dist_train.train.loop import TrainingDiverged

    kind, message = summary[FAILED]
    if kind == TrainingDiverged.__name__:
        return TrainingDiverged(message)
    return LaunchError(
        f"{work} failed: {kind}: {message} (the restarted worker group stopped: it would "
        "meet the same error again)"
    )


def _fit(cfg: JobConfig, inputs: WorkerInputs, private: bool) -> tuple[Any, str]:
    """Ray Train's run of the job's workers (``private``: on the embedded instance, which
    owns the machine): its result, and what they did (for errors)."""
    cuda = inputs.device_type == "cuda"
    pin_cores = cfg.ray.pins_cores(owns_machine=private) and not cuda
    resources = {"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1.0} if cuda else {})}
    storage = cfg.ray.storage_path or str((Path(inputs.run_dir) / "ray").resolve())
    workers: Any = cfg.ray.num_workers
    if cfg.ray.min_workers is not None:  # Ray Train v2's elastic (min, max); the stubs
        workers = (cfg.ray.min_workers, cfg.ray.num_workers)  # show v1's int only
    trainer = TorchTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=train_loop_config(_worker_payload(cfg, inputs, pin_cores)),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=cuda,  # Ray Train then sets each worker's current CUDA device
            resources_per_worker=resources,
            placement_strategy=cfg.ray.placement_strategy,
        ),
        torch_config=TorchConfig(backend=backend_for(inputs.device_type)),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=failure_config(cfg),
            # Ray Train v2's RunConfig (the default in Ray 2.60); the stubs show v1's.
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]
        ),
    )
    work = "evaluation" if inputs.evaluate_only else "training"  # for its errors
    on_sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except SystemExit as err:  # Ray Train's Ctrl-C handler ends fit() with sys.exit
        raise KeyboardInterrupt from err
    except Exception as err:  # Ray wraps worker errors; surface the root cause
        _raise_divergence(err)
        raise LaunchError(f"{work} failed: {worker_failures(err)}") from err
    finally:  # Ray Train's handler (set on the main thread only) would outlive the run
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_sigint)
    return result, work

"""``dist-train submit``: ``ray job submit`` with the driver as entrypoint.

    ray job submit --address A [--working-dir . --runtime-env-json {...excludes...}] \\
        -- python -m dist_train.driver --config C [--set K=V ...] [-q | -v]

The config is validated here first, so a wrong key or value stops the job before anything
starts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from dist_train.config.errors import ConfigError
from dist_train.config.keys import closest_key, known_key
from dist_train.config.load import REPO_ROOT, load_or_report
from dist_train.config.overrides import override_key, override_shape_error
from dist_train.config.schema import JobConfig
from dist_train.stopping import EXIT_CODE

# Never upload these with the working dir (Ray's upload limit is 100 MiB).
EXCLUDES = [".venv", ".git", "outputs", "**/__pycache__", ".pytest_cache", ".ruff_cache"]
_VERBOSITY_FLAGS = {"quiet": ["-q"], "verbose": ["-v"], "normal": []}


def ray_cli() -> str:
    """The ``ray`` executable next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


IMAGE_CHECKOUT = "/opt/dist_train"  # docker/Dockerfile.*: WORKDIR, the checkout's copy


def local_copy(config: str, working_dir: str | None) -> Path | None:
    """This machine's copy of the ``config`` a job on the cluster reads: itself, with an
    upload; without one, a path under ``IMAGE_CHECKOUT`` or a relative one (the image's
    working dir) in this checkout; None for another path that is not on this machine."""
    if working_dir:
        return Path(config).expanduser()
    image = PurePosixPath(config)
    if image.is_relative_to(IMAGE_CHECKOUT):
        return REPO_ROOT / image.relative_to(IMAGE_CHECKOUT)
    path = Path(config).expanduser()
    if not path.is_absolute():
        return REPO_ROOT / path
    return path if path.exists() else None


def cluster_config_path(config: str, working_dir: str | None) -> str:
    """Where the driver on the cluster finds ``config``: its path relative to the uploaded
    working dir, where the driver runs; without an upload, ``config`` as typed.

    Raises :class:`ConfigError` for a config outside an uploaded working dir: the upload
    leaves it behind, so the cluster could not read it.
    """
    if not working_dir:
        return config  # nothing uploaded: a path the cluster's nodes see, as typed
    # Ray uploads what lies under the working dir by name, a link as the file it points to
    # (wherever that is), so the config's own path decides, not its target's; its folders
    # resolved too, for a config named through a link to the working dir or a folder in it
    root = Path(os.path.abspath(Path(working_dir).expanduser()))
    path = Path(os.path.abspath(Path(config).expanduser()))
    if not path.is_relative_to(root):
        root, path = root.resolve(), path.parent.resolve() / path.name
    if not path.is_relative_to(root):
        raise ConfigError(
            f"{config}: outside the working dir {root} that is uploaded to the cluster, so "
            "the job could not read it there; put it inside the working dir, or submit with "
            "--no-working-dir and a path the cluster's nodes see"
        )
    left_out = _left_out_by_upload(path, root)
    if left_out:
        raise ConfigError(
            f"{config}: the upload of {root} leaves it out ({left_out}), so the job could "
            "not read it on the cluster; copy it to a folder that is uploaded (launch/configs/, "
            "say), or submit with --no-working-dir and a path the cluster's nodes see"
        )
    return path.relative_to(root).as_posix()


def _left_out_by_upload(path: Path, root: Path) -> str | None:
    """Why Ray's upload of ``root`` leaves ``path`` out, None if it does not: matched by
    :data:`EXCLUDES`, or by a ``.gitignore`` or ``.rayignore`` of a folder on its way, as
    Ray's packaging reads them (its own functions: ``ray job submit`` uploads with them)."""
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    quiet = logging.getLogger("dist_train.submit.upload")  # Ray names each ignore file
    quiet.setLevel(logging.WARNING)
    gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    # as Ray walks down to it: the ignore files of every folder above hold for all below
    rules = [(_get_excludes(root, EXCLUDES), f"the submit's excludes {EXCLUDES}")]
    folder = root
    for part in path.relative_to(root).parts:
        found = get_excludes_from_ignore_files(folder, gitignore, quiet)
        rules += [(rule, f"an ignore file in {folder}") for rule in found]
        folder = folder / part
        for rule, why in rules:
            if rule(folder):
                return why
    return None


def submit_command(
    config: str,
    overrides: list[str],
    address: str | None,
    working_dir: str | None,
    wait: bool,
    submission_id: str | None = None,
    verbosity: str = "normal",
) -> list[str]:
    """The ``ray job submit`` argv for a job config."""
    cmd = [ray_cli(), "job", "submit"]
    # as Ray's job CLI picks it: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS
    env_address = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    address = address or env_address or "http://127.0.0.1:8265"
    cmd += ["--address", address]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if working_dir:
        cmd += ["--working-dir", working_dir]
        cmd += ["--runtime-env-json", json.dumps({"excludes": EXCLUDES})]
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", "python", "-m", "dist_train.driver", "--config", config]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + _VERBOSITY_FLAGS[verbosity]


def processes_on_a_cluster(cfg: JobConfig) -> str:
    """What a job of another launcher than Ray's does on a Ray cluster."""
    return (
        f"launcher={cfg.launcher} runs all {cfg.ray.num_workers} ranks as processes on the "
        "node its driver runs on (a job's: the head), and the cluster's other nodes go "
        "unused; --set launcher=ray spreads them over the cluster"
    )


def _note_relative_outputs(cfg: JobConfig) -> None:
    """Say where a relative path of an uploaded job points: an output lands in Ray's copy
    of the checkout, which identical uploads share (a second submit finds the first's
    checkpoints) and which goes with the Ray session; an input is read there, against the
    checkout's root, whatever folder the job was submitted from."""
    resume = cfg.checkpoint.resume
    paths = {
        "output_dir": (cfg.output_dir, True),
        "checkpoint.dir": (cfg.checkpoint.dir, True),
        "ray.storage_path": (cfg.ray.storage_path, True),
        "data.train_path": (cfg.data.train_path, False),
        "data.test_path": (cfg.data.test_path, False),
        "sharding.topology": (cfg.sharding.topology, False),
        "checkpoint.resume": (None if resume == "latest" else resume, False),
    }
    for key, (value, written) in paths.items():
        # ~ and ~user are the cluster's to expand (that user may be there only)
        if not value or "://" in value or value.startswith(("/", "~")):
            continue
        where = (
            "the job writes it inside Ray's copy of the uploaded checkout, which identical "
            "uploads share and the Ray session removes"
            if written
            else "the job reads it inside Ray's copy of the uploaded checkout, from the "
            "checkout's root (not this folder), where the upload holds it"
        )
        print(
            f"note: {key}={value} is relative: {where}; give a path the cluster's nodes "
            f"share (--set {key}=/shared/...)",
            file=sys.stderr,
        )


def submit(
    config: str,
    overrides: list[str],
    address: str | None,
    working_dir: str | None,
    wait: bool,
    dry_run: bool,
    submission_id: str | None = None,
    verbosity: str = "normal",
) -> int:
    """Validate the job, then run (or, with ``dry_run``, print) the submission: ``ray job
    submit``'s exit code, or 2 (the error printed) for a config the job could not use.
    Without an upload, a config named by a path that is neither this checkout's nor its
    copy in the image, and not on this machine, is read and checked by the job on the
    cluster (its overrides' keys checked here)."""
    local = local_copy(config, working_dir)
    if local is None:
        shapeless = next(filter(None, map(override_shape_error, overrides)), None)
        if shapeless:  # as load_config says it
            print(f"error: {shapeless}", file=sys.stderr)
            return 2
        unknown = [o for o in overrides if not known_key(override_key(o))]
        if unknown:
            close = closest_key(override_key(unknown[0]))
            hint = f" (did you mean {close}?)" if close else ""
            print(f"error: --set {unknown[0]}: no such config key{hint}", file=sys.stderr)
            return 2
        print(
            f"note: {config} is not on this machine: the job reads and checks it on the cluster",
            file=sys.stderr,
        )
    else:
        cfg = load_or_report(local, overrides)
        if cfg is None:
            return 2
        if cfg.model.kind == "dcn_v2" and cfg.model.cross_rank is not None:
            from dist_train.models.dcn import wide_rank_note  # (torch: for this job alone)

            try:  # the run refuses it before it starts: not uploaded for that
                wide_rank_note(cfg)
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        if working_dir:
            _note_relative_outputs(cfg)
        if cfg.launcher != "ray":
            print(f"warning: {processes_on_a_cluster(cfg)}", file=sys.stderr)
    try:
        remote = cluster_config_path(config, working_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if wait and not submission_id:  # named here, so that its end can be asked for by name
        submission_id = f"dist-train-{secrets.token_hex(6)}"
    cmd = submit_command(remote, overrides, address, working_dir, wait, submission_id, verbosity)
    address = cmd[cmd.index("--address") + 1]
    # Ray's CLI shlex.joins the argv after "--" (list2cmdline only when submitting from
    # Windows) and the job supervisor runs it with /bin/sh: the text after "--" here is exactly
    # what the cluster's shell reads, so quotes and "$" in --set values arrive as typed.
    print(shown(ray_cli_text(cmd[1:], address, cmd[0]), address), flush=True)
    if dry_run:
        return 0
    # Ray's CLI and client take RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, over --address:
    # the address printed is the one used; one with a password goes in them alone, where
    # ps shows no other user of the machine it
    env = {**os.environ, "RAY_API_SERVER_ADDRESS": address, "RAY_ADDRESS": address}
    if _password(address) is not None:
        at = cmd.index("--address")
        cmd = cmd[:at] + cmd[at + 2 :]
    problem = _job_server_problem(address, submission_id, env)
    if problem:
        print(f"error: {shown(problem, address)}", file=sys.stderr)
        return 1
    try:
        code = subprocess.run(cmd, check=False, env=env).returncode
    except KeyboardInterrupt:
        if wait:  # Ray's CLI only stops following the job's logs
            stop = ray_cli_text(["job", "stop", "--address", address, str(submission_id)], address)
            print(
                f"note: job {submission_id} goes on running on the cluster (Ctrl-C stops "
                f"following it): `{shown(stop, address)}` stops it",
                file=sys.stderr,
            )
        raise
    if code < 0:  # killed by a signal: the shell's status for it, as the project's commands'
        return 128 - code
    if code == 0 and wait and submission_id:
        return _ended_code(address, submission_id, env)
    return code


def ray_cli_text(args: list[str], address: str, ray: str = "ray") -> str:
    """``ray`` with ``args`` as a shell line that reaches ``address`` wherever it is run:
    Ray's CLI takes RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, over ``--address``, so where
    this shell exports another, the line sets the address there too."""
    line = shlex.join([ray, *args])
    exported = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if exported and exported != address:
        return f"RAY_API_SERVER_ADDRESS={shlex.quote(address)} {line}"
    return line


def _password(address: str) -> str | None:
    """The password in ``address`` (``[http://]user:password@host:port``), if it has one."""
    netloc = address.partition("://")[2] if "://" in address else address
    userinfo, at, _ = netloc.partition("/")[0].rpartition("@")
    return userinfo.partition(":")[2] or None if at and ":" in userinfo else None


def shown(text: str, address: str) -> str:
    """``text`` with the password in ``address`` starred, as typed and as a shell quotes it
    (a quote in it): printed, it would be in a terminal's scrollback and a CI log."""
    password = _password(address)
    if password is None:
        return text
    # the whole address as a shell line holds it first, then the password wherever else
    # (in this order: a set's order varies from run to run, and so did the text)
    text = text.replace(shlex.quote(address), shlex.quote(address.replace(password, "***")))
    for form in (shlex.quote(password), password):
        text = text.replace(f":{form}@", ":***@")
    return text


PROBE_TIMEOUT_S = 60.0

# Ray's job client for the address in RAY_API_SERVER_ADDRESS (not argv, which ps shows
# every user), made as the CLI makes it (with the headers of RAY_JOB_HEADERS), in a process
# of its own: it reads the cluster's token afresh (a process's client keeps the first token
# it read). Where it cannot be made, a JSON line says why and the process exits 1.
_CLIENT = """
import json, os, sys
from ray.job_submission import JobSubmissionClient
try:
    raw = os.environ.get("RAY_JOB_HEADERS")  # set but empty: refused, as Ray's CLI does
    headers = None if raw is None else json.loads(raw)
    assert headers is None or isinstance(headers, dict)
except (ValueError, AssertionError):
    print(json.dumps({"error": "headers"}))
    raise SystemExit(1)
try:
    client = JobSubmissionClient(os.environ["RAY_API_SERVER_ADDRESS"], headers=headers)
except Exception as err:
    lines = str(err).strip().splitlines() or [""]
    print(json.dumps({"error": type(err).__name__, "why": lines[-1]}))
    raise SystemExit(1)
"""

_PROBE = (
    _CLIENT
    + """
taken = False
if sys.argv[1]:
    try:
        client.get_job_info(sys.argv[1])
        taken = True
    except Exception:
        pass  # none of that id (404), or a question the submit itself will meet
print(json.dumps({"taken": taken}))
"""
)


def _job_server_problem(address: str, submission_id: str | None, env: dict[str, str]) -> str:
    """Why a submission to ``address`` would fail before it starts, as one line ("" if it
    would not): no job server there, a token it refuses, a submission id it already holds.
    (Ray's CLI says so in a traceback of 50 to 120 lines.) Asked by Ray's client in a
    process of its own (:data:`_CLIENT`)."""
    asked = _ask_job_server(_PROBE, address, submission_id or "", env)
    if asked is None:
        return (
            f"no answer from {address} in {PROBE_TIMEOUT_S:.0f} s: is that the cluster's job "
            "server (--address, RAY_ADDRESS; http://<head>:8265)?"
        )
    try:
        answer = json.loads(asked.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return ""  # no answer to read: the submit itself says what it meets
    error = answer.get("error")
    if error == "headers":
        return (  # its value unsaid: headers carry credentials
            "RAY_JOB_HEADERS is not a JSON object of the headers to send (Ray's CLI refuses it too)"
        )
    if error == "ConnectionError":
        return (
            f"no Ray job server answers at {address}: is the cluster up "
            "(launch/local_cluster.sh start, docs/launch.md) and is that its job server's "
            "address (--address, RAY_ADDRESS; http://<head>:8265)?"
        )
    if error == "AuthenticationError":
        return (
            f"the job server at {address} refused this machine's token ({answer.get('why')}): "
            "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH; docs/launch.md)"
        )
    if error:
        gcs = (
            ""
            if "://" in address
            else " (Ray reads host:port as a GCS address; a job server's is http://<head>:8265)"
        )
        return f"cannot reach the job server at {address}: {error}: {answer.get('why')}{gcs}"
    if answer.get("taken"):
        return (
            f"the job server at {address} already holds a job {submission_id!r}: give "
            "another --submission-id (or none: submit names one)"
        )
    return ""


_ASK_STATUS = _CLIENT + "print(client.get_job_status(sys.argv[1]).value)\n"


def _ask_job_server(
    script: str, address: str, submission_id: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str] | None:
    """``script`` (Ray's job client, :data:`_CLIENT`) run on ``address`` (passed in its
    environment) and ``submission_id`` in a process of its own; None where it gave no answer
    within :data:`PROBE_TIMEOUT_S` (a job server that hangs would hang the command)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", script, submission_id],
            capture_output=True,
            text=True,
            check=False,
            env={**env, "RAY_API_SERVER_ADDRESS": address},
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None


def _ended_code(address: str, submission_id: str, env: dict[str, str]) -> int:
    """The exit code of a waited-for job that ``ray job submit`` exits 0 for: 0 where it
    SUCCEEDED; SIGTERM's (:data:`~dist_train.stopping.EXIT_CODE`, as a stopped ``dist-train
    train`` exits) where ``ray job stop`` ended it; 1 where it did not end (the CLI stops
    following a job whose cluster went away) or its end cannot be asked. A script that
    goes on after a 0 would export a run that never finished."""
    asked = _ask_job_server(_ASK_STATUS, address, submission_id, env) or (
        subprocess.CompletedProcess([], 1, "", f"no answer in {PROBE_TIMEOUT_S:.0f} s")
    )
    status = asked.stdout.strip()
    ask = shown(
        ray_cli_text(["job", "status", "--address", address, submission_id], address), address
    )
    if asked.returncode != 0:
        # Ray's traceback, or the client's JSON line (_CLIENT)
        lines = asked.stderr.strip().splitlines() or asked.stdout.strip().splitlines()
        why = shown(lines[-1], address) if lines else "no answer"
        print(
            f"error: could not ask how job {submission_id} ended ({why}): its end is "
            f"unknown (`{ask}`)",
            file=sys.stderr,
        )
        return 1
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        print(f"error: job {submission_id} was stopped before it finished", file=sys.stderr)
        return EXIT_CODE
    print(
        f"error: job {submission_id} is {status or 'of no status'}, not finished: `ray job "
        "submit` stopped following it (its cluster or job server went away?); "
        f"`{ask}` says how it goes on",
        file=sys.stderr,
    )
    return 1

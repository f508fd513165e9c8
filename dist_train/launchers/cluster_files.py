"""Ray cluster-launcher YAML and KubeRay RayJob manifests: their capacity, checked.

Only the fields dist_train relies on are modelled (everything else passes through), and each
file's maximum size is turned into :class:`NodeResources` for ``check_fits``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import io
import itertools
import logging
import math
import re
import shlex
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dist_train.launchers.cluster import UNBOUNDED, ClusterLimits, NodeResources


class ClusterFileError(ValueError):
    """A cluster file that cannot be used; the message names the file and the field."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class NodeType(_Open):
    resources: dict[str, float] = Field(description="Logical resources: CPU, GPU, memory.")
    min_workers: int = Field(0, ge=0)
    # none: Ray fills in the cluster's max_workers (0 here refused min_workers 2 that Ray took)
    max_workers: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check(self) -> NodeType:
        if self.max_workers is not None and self.min_workers > self.max_workers:
            raise ValueError(f"min_workers {self.min_workers} > max_workers {self.max_workers}")
        if "CPU" not in self.resources:
            raise ValueError("resources must declare CPU")
        return self


class ClusterLauncherConfig(_Open):
    """The parts of ``ray up`` cluster YAML that size the cluster."""

    cluster_name: str
    max_workers: int | None = Field(None, ge=0, description="Ray fills in 2 when it is absent.")
    provider: dict[str, Any]
    head_node_type: str
    available_node_types: dict[str, NodeType]

    @model_validator(mode="after")
    def _check(self) -> ClusterLauncherConfig:
        if self.head_node_type not in self.available_node_types:
            raise ValueError(
                f"head_node_type {self.head_node_type!r} is not one of available_node_types "
                f"{sorted(self.available_node_types)}"
            )
        if "type" not in self.provider:
            raise ValueError("provider.type is required")
        return self

    def limits(self) -> ClusterLimits:
        """Each node type at the most of it the cluster may hold (its own ``max_workers``,
        within the cluster's, and the head), under the cluster's ``max_workers``."""
        budget = self.max_workers or 0
        nodes = []
        for name, nt in self.available_node_types.items():
            most = budget if nt.max_workers is None else min(nt.max_workers, budget)
            count = most + (1 if name == self.head_node_type else 0)
            if count:
                nodes.append(_node(name, nt.resources, count))
        return ClusterLimits(nodes, self.head_node_type, budget)


def _node(name: str, resources: dict[str, float], count: int) -> NodeResources:
    return NodeResources(
        name=name,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        memory_bytes=int(resources.get("memory", 0)),
        count=count,
    )


# Kubernetes' grammar: a number, then a binary or decimal suffix, or a decimal exponent
# (16e9; 1E is an exa, 1E3 a thousand); a resource's is never below 0
_QUANTITY = re.compile(
    r"^(\+?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(n|u|m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)|[eE]([+-]?\d+))?$"
)
_SCALE = {
    None: 1,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "Ki": 2**10,
    "M": 1e6,
    "Mi": 2**20,
    "G": 1e9,
    "Gi": 2**30,
    "T": 1e12,
    "Ti": 2**40,
    "P": 1e15,
    "Pi": 2**50,
    "E": 1e18,
    "Ei": 2**60,
}


def k8s_quantity(value: str | int | float, where: str) -> float:
    """A Kubernetes quantity ('4', '500m', '16Gi', '16e9') as a number."""
    m = _QUANTITY.match(str(value))
    if not m:
        raise ClusterFileError(f"{where}: {value!r} is not a Kubernetes quantity")
    number, suffix, exponent = m.groups()
    # the exponent read as text: 10.0 ** 400 raised OverflowError, where this is inf
    scaled = f"{number}e{exponent}" if exponent is not None else None
    number_value = float(scaled) if scaled else float(number) * _SCALE[suffix]
    if not math.isfinite(number_value):
        raise ClusterFileError(f"{where}: {value!r} is too large for any machine")
    return number_value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """``value``, a mapping (None: an empty one), or an error naming the field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClusterFileError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


@functools.cache
def ray_start_options() -> frozenset[str]:
    """The long options of this Ray's ``ray start`` (its click command's), without dashes."""
    from ray.scripts.scripts import start

    return frozenset(o[2:] for p in start.params for o in p.opts if o.startswith("--"))


def _check_start_params(params: dict[str, Any], where: str) -> None:
    """ClusterFileError for a key of ``rayStartParams`` that misspells an option of ``ray
    start`` (KubeRay passes each as ``--key=value``: ``num_cpus`` failed the pod's start,
    and this check read the container's CPU limit instead). A key near none of them may be
    a newer Ray's option, and passes."""
    known = ray_start_options()
    for key in map(str, params):
        if key in known:
            continue
        near = difflib.get_close_matches(key.replace("_", "-").lower(), known, n=1, cutoff=0.8)
        if near:
            raise ClusterFileError(
                f"{where}.rayStartParams.{key}: not an option of `ray start`; did you mean "
                f"{near[0]!r}?"
            )


def _group_resources(group: dict[str, Any], where: str) -> dict[str, float]:
    """Ray resources of a KubeRay group: rayStartParams override container limits."""
    group = _mapping(group, where)  # the head's (each worker group's is checked before)
    params = _mapping(group.get("rayStartParams"), f"{where}.rayStartParams")
    _check_start_params(params, where)
    template = _mapping(group.get("template"), f"{where}.template")
    containers = _mapping(template.get("spec"), f"{where}.template.spec").get("containers")
    if not containers:
        raise ClusterFileError(f"{where}: template.spec.containers is empty")
    if not isinstance(containers, list):
        raise ClusterFileError(f"{where}.template.spec.containers: expected a list")
    container = _mapping(containers[0], f"{where}.template.spec.containers[0]")
    at = f"{where}.template.spec.containers[0].resources"
    resources = _mapping(container.get("resources"), at)
    limits = _mapping(resources.get("limits"), f"{at}.limits")
    requests = _mapping(resources.get("requests"), f"{at}.requests")
    # As KubeRay writes `ray start`'s options (ray-operator's generateRayStartCommand): a
    # rayStartParams value as given, else the container's limit (newer KubeRay: for CPUs, the
    # request where there is no limit) rounded up to a whole number, as Kubernetes'
    # Quantity.Value() rounds it (1500m: 2 CPUs, which validate read as 1.5)
    if "num-cpus" in params:
        cpu = _start_count(params, "num-cpus", where)
    else:
        cpu = _whole(limits, "cpu", f"{at}.limits") or _whole(requests, "cpu", f"{at}.requests")
        if not cpu:
            raise ClusterFileError(
                f"{where}: set resources.limits.cpu (or requests.cpu) or rayStartParams.num-cpus"
            )
    if "num-gpus" in params:
        gpu = _start_count(params, "num-gpus", where)
    else:  # the first limit whose name ends in gpu (nvidia.com/gpu, amd.com/gpu), as KubeRay
        gpu = next(
            (
                g
                for k in limits
                if str(k).endswith("gpu") and (g := _whole(limits, k, f"{at}.limits"))
            ),
            0.0,
        )
    if "memory" in params:  # ray start --memory: its bytes
        memory = _start_count(params, "memory", where)
    else:
        memory = k8s_quantity(limits.get("memory", 0), f"{at}.limits.memory")
    return {"CPU": cpu, "GPU": gpu, "memory": memory}


def _start_count(params: dict[str, Any], key: str, where: str) -> float:
    """A ``rayStartParams`` value of ``ray start``'s whole-number options: KubeRay passes it
    as ``--key=value`` unchanged, and ``ray start`` takes no Kubernetes quantity (``8Gi``,
    ``500m`` and ``1.5`` fail the pod's start, where they were read as quantities)."""
    value = str(params[key]).strip()
    if not re.fullmatch(r"[0-9]+", value):
        unit = "bytes" if key == "memory" else "a whole count"
        raise ClusterFileError(
            f"{where}.rayStartParams.{key}: {params[key]!r} is not a whole number "
            f"(`ray start --{key}` takes {unit}; KubeRay passes the value as it is)"
        )
    return float(int(value))


def _whole(quantities: dict[str, Any], key: str, where: str) -> float:
    """A container's ``key`` quantity rounded up to a whole number, as KubeRay passes it to
    ``ray start``; 0 where there is none."""
    value = quantities.get(key)
    return 0.0 if value is None else float(math.ceil(k8s_quantity(value, f"{where}.{key}")))


def _shell_words(command: str) -> list[str]:
    """``command``'s words as ``/bin/sh`` reads them up to the end of its first command (Ray
    runs an entrypoint with it): before a newline (a backslash before one continues the
    line), a ``;``, ``&&``, ``||``, ``|``, ``&``, a redirection (``> log``, ``2>&1``: its
    file descriptor's number too) or a ``#`` that starts a word. ValueError for an
    unbalanced quote."""
    lexer = shlex.shlex(command.replace("\\\n", ""), posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace_split = True
    lexer.whitespace = " \t\r"  # a newline ends the command, as a ; does
    lexer.commenters = ""  # shlex ends a word at a # inside it, sh only at a word's start
    words: list[str] = []
    for word in lexer:
        if word.startswith("#"):
            break
        if word and set(word) <= set(lexer.punctuation_chars):
            if words and words[-1].isdigit() and word[0] in "<>":  # 2> err.log
                words.pop()
            break
        words.append(word)
    return words


_CLI_VERBOSITY = ("-q", "--quiet", "-v", "--verbose")  # dist-train's, before its command
_PYTHON_FLAG = re.compile(r"-[bBdEhiIOqsSuvR]+|-[XW].+")  # -u, -OO, -B; -Xdev, -Wignore


def entrypoint_command(entrypoint: str) -> tuple[str, list[str]] | None:
    """Which of dist_train's job commands a job's ``entrypoint`` runs, and the arguments
    after it: ``driver`` for ``python -m dist_train.driver``, ``train`` for ``dist-train
    train`` (or ``python -m dist_train.cli train``), which inside a job joins the job's
    cluster. Allowed around it: leading ``VAR=value`` settings and ``exec``, a path to the
    program, python's own flags (``-u``, ``-X dev``), dist-train's ``-q``/``-v`` before
    ``train``, and what a shell runs after it (``> log``, ``; echo done``: the arguments
    end there). None for anything else: a shell around it (``bash -c '...'``) is not read,
    its config could not be checked."""
    try:
        args = _shell_words(entrypoint)
    except ValueError:
        return None
    args = list(itertools.dropwhile(lambda a: re.fullmatch(r"[A-Za-z_]\w*=.*", a), args))
    if args[:1] == ["exec"]:
        args = args[1:]
    if not args:
        return None
    program, rest = args[0], args[1:]
    if re.fullmatch(r"(.*/)?dist-train", program):
        rest = list(itertools.dropwhile(lambda a: a in _CLI_VERBOSITY, rest))
        return ("train", rest[1:]) if rest[:1] == ["train"] else None
    if re.fullmatch(r"(.*/)?python[0-9.]*", program) is None:
        return None
    while rest and (_PYTHON_FLAG.fullmatch(rest[0]) or rest[0] in ("-X", "-W")):
        rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
    if rest[:2] == ["-m", "dist_train.driver"]:
        return "driver", rest[2:]
    if rest[:2] == ["-m", "dist_train.cli"]:
        rest = list(itertools.dropwhile(lambda a: a in _CLI_VERBOSITY, rest[2:]))
        return ("train", rest[1:]) if rest[:1] == ["train"] else None
    return None


def runs_the_driver(entrypoint: str) -> bool:
    """Whether a job's ``entrypoint`` runs the driver (:func:`entrypoint_command`)."""
    return entrypoint_command(entrypoint) is not None


def rayjob_nodes(doc: dict[str, Any], source: str) -> tuple[list[NodeResources], str]:
    """Nodes (at ``maxReplicas`` where KubeRay's autoscaler is on, else ``replicas``) and
    entrypoint of a KubeRay RayJob manifest."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ClusterFileError(f"{source}: RayJob has no spec")
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not runs_the_driver(entrypoint):
        raise ClusterFileError(
            f"{source}: spec.entrypoint must run 'python -m dist_train.driver --config ...' "
            f"or 'dist-train train --config ...', got {entrypoint!r}"
        )
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, dict) or "headGroupSpec" not in cluster:
        raise ClusterFileError(f"{source}: spec.rayClusterSpec.headGroupSpec is required")
    nodes = [
        _node("head", _group_resources(cluster["headGroupSpec"], f"{source}: headGroupSpec"), 1)
    ]
    scales = cluster.get("enableInTreeAutoscaling") or False
    if not isinstance(scales, bool):
        raise ClusterFileError(
            f"{source}: spec.rayClusterSpec.enableInTreeAutoscaling must be true or false, "
            f"got {scales!r}"
        )
    groups = cluster.get("workerGroupSpecs") or []
    if not isinstance(groups, list):
        raise ClusterFileError(f"{source}: spec.rayClusterSpec.workerGroupSpecs: expected a list")
    for i, group in enumerate(groups):
        where = f"{source}: workerGroupSpecs[{i}]"
        group = _mapping(group, where)
        count = _group_pods(group, scales, where)
        if count:
            nodes.append(
                _node(group.get("groupName", f"group{i}"), _group_resources(group, where), count)
            )
    return nodes, entrypoint


def _group_pods(group: dict[str, Any], scales: bool, where: str) -> int:
    """The pods KubeRay runs for a worker group at most: ``replicas`` within
    [``minReplicas``, ``maxReplicas``] (``maxReplicas`` where its autoscaler is on), times
    ``numOfHosts``; none while ``suspend``."""

    def count(key: str, default: int) -> int:
        value = group.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ClusterFileError(f"{where}.{key} must be a count, got {value!r}")
        return value

    if group.get("suspend") is True:
        return 0
    low = count("minReplicas", 0)
    # KubeRay's default maxReplicas: its autoscaler grows such a group without a bound
    high = count("maxReplicas", UNBOUNDED if scales else max(low, count("replicas", low)))
    replicas = high if scales else min(max(count("replicas", low), low), high)
    return replicas * count("numOfHosts", 1)


def _as_ray_reads_it(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """``doc`` with the defaults ``ray up`` fills in, checked against Ray's own schema (what
    Ray refuses is refused here, and what it accepts, such as no top-level ``max_workers``,
    is accepted)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    quiet = logging.getLogger("ray.autoscaler._private.util")
    level, quiet.level = quiet.level, logging.WARNING  # its notes on the defaults it fills
    said = io.StringIO()  # Ray's CLI logger prints its refusals too (a coloured PANIC line)
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            prepared: dict[str, Any] = prepare_config(copy.deepcopy(doc))
            validate_config(prepared)
    except Exception as err:  # noqa: BLE001 - jsonschema's, Ray's ValueError, KeyError, ...
        where = ".".join(str(p) for p in getattr(err, "absolute_path", ()))
        message = getattr(err, "message", None) or str(err).splitlines()[0]
        at = f" (at {where})" if where else ""
        raise ClusterFileError(f"{source}: Ray would refuse it: {message}{at}") from None
    finally:
        quiet.level = level
    return prepared


def launcher_limits(doc: dict[str, Any], source: str) -> ClusterLimits:
    """What a cluster-launcher YAML's cluster may grow to."""
    try:
        ClusterLauncherConfig.model_validate(doc)  # first: its messages name our fields
        return ClusterLauncherConfig.model_validate(_as_ray_reads_it(doc, source)).limits()
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top level>'}: {e['msg']}"
            for e in err.errors()
        )
        raise ClusterFileError(f"{source}: invalid Ray cluster config: {problems}") from None

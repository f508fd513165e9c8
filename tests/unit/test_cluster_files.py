"""Cluster-launcher files are read as ``ray up`` reads them: Ray's defaults filled in, Ray's
schema enforced, errors naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dist_train.launchers.cluster import ClusterLimits
from dist_train.launchers.cluster_files import ClusterFileError, launcher_limits
from dist_train.validate import validate_files

AWS = Path(__file__).resolve().parents[2] / "launch" / "clusters" / "aws-gpu.yaml"


def _aws() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(AWS.read_text())
    return doc


def test_what_ray_accepts_is_accepted() -> None:
    doc = _aws()
    del doc["max_workers"]  # Ray's default: 2 workers
    workers = [n for n in launcher_limits(doc, "aws.yaml").nodes if n.name == "gpu_worker"]
    assert [w.count for w in workers] == [2]
    declared = _aws()["available_node_types"]["gpu_worker"]["max_workers"]
    workers = [n for n in launcher_limits(_aws(), "aws.yaml").nodes if n.name == "gpu_worker"]
    assert [w.count for w in workers] == [declared] and declared != 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["available_node_types"]["gpu_worker"].pop("node_config"),
            r"bad\.yaml: Ray would refuse it: 'node_config' is a required property \(at "
            r"available_node_types\.gpu_worker\)",
        ),
        (
            lambda d: d["available_node_types"]["gpu_worker"]["resources"].update(GPU=-1),
            r"-1 is less than the minimum of 0 \(at available_node_types\.gpu_worker\.resources",
        ),
    ],
)
def test_what_ray_refuses_is_refused_naming_the_field(edit: Any, message: str) -> None:
    doc = _aws()
    edit(doc)
    with pytest.raises(ClusterFileError, match=message):
        launcher_limits(doc, "bad.yaml")


def _cpu_type_first(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a CPU-only worker type listed before its GPU type, under the same cap."""
    cpu = {**doc["available_node_types"]["gpu_worker"], "resources": {"CPU": 192}}
    types = doc["available_node_types"]
    doc["available_node_types"] = {"head": types["head"], "cpu_worker": cpu, **types}
    return doc


def test_the_cap_on_workers_goes_to_the_types_the_job_needs() -> None:
    cluster = launcher_limits(_cpu_type_first(_aws()), "mixed.yaml")
    assert cluster.max_workers == 4
    # the autoscaler may start any 4 workers: listed first, the CPU type took all 4
    by_gpus = cluster.largest(lambda n: n.gpus)
    assert sum(n.gpus * n.count for n in by_gpus) == 32
    by_cpus = cluster.largest(lambda n: n.cpus)
    assert {n.name: n.count for n in by_cpus} == {"head": 1, "cpu_worker": 4}
    assert "at most 5 node(s): the head (head) and 4 of cpu_worker (up to 4), gpu_worker" in (
        cluster.describe()
    )
    # a cap above what the types hold: the types' total (it read "11 node(s)")
    roomy = ClusterLimits(cluster.nodes, "head", 10)
    assert roomy.describe().startswith("at most 9 node(s): the head (head) and 8 of")


def test_validate_fits_a_gpu_job_to_a_gpu_type_listed_second(tmp_path: Path) -> None:
    cluster = tmp_path / "mixed.yaml"
    cluster.write_text(yaml.safe_dump(_cpu_type_first(_aws()), sort_keys=False))
    job = yaml.safe_load((AWS.parents[1] / "configs" / "two_nodes.yaml").read_text())
    job["train"] = {**job.get("train", {}), "device": "cuda"}
    job["ray"]["cpus_per_worker"] = 48  # 2 a p4d node, as its num_nodes asks (PACK)
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))
    report = validate_files([str(job_path), str(cluster)])
    assert report.problems == []
    assert any("fits" in line and "cuda ranks" in line for line in report.ok)


def test_kubernetes_quantities_in_all_their_forms() -> None:
    """'16e9' and '1P' (decimal exponents, peta and exa suffixes) are Kubernetes quantities
    kubectl takes: validate refused a RayJob that gave them (a helper's audit)."""
    from dist_train.launchers.cluster_files import ClusterFileError, k8s_quantity

    for text, value in (
        ("4", 4.0), ("500m", 0.5), ("16Gi", 16 * 2**30), ("16e9", 16e9), ("1E3", 1e3),
        ("1E", 1e18), ("2P", 2e15), ("1Pi", 2.0**50), (".5", 0.5), ("1.5Gi", 1.5 * 2**30),
        ("250u", 250e-6), ("+2", 2.0),
    ):  # fmt: skip
        assert k8s_quantity(text, "memory") == pytest.approx(value), text
    # and what no resource is: a negative one (a review found -64Gi taken), text
    for text in ("16GB", "1e", "Gi", "", "-4", "-1Gi"):
        with pytest.raises(ClusterFileError, match=f"memory: '{text}' is not a Kubernetes"):
            k8s_quantity(text, "memory")
    with pytest.raises(ClusterFileError, match="memory: '1e400' is too large"):  # a traceback
        k8s_quantity("1e400", "memory")

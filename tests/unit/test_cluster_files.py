"""Cluster-launcher files are read as ``ray up`` reads them: Ray's defaults filled in, Ray's
schema enforced, errors naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dist_train.launchers.cluster_files import ClusterFileError, launcher_nodes

AWS = Path(__file__).resolve().parents[2] / "launch" / "clusters" / "aws-gpu.yaml"


def _aws() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(AWS.read_text())
    return doc


def test_what_ray_accepts_is_accepted() -> None:
    doc = _aws()
    del doc["max_workers"]  # Ray's default: 2 workers
    workers = [n for n in launcher_nodes(doc, "aws.yaml") if n.name == "gpu_worker"]
    assert [w.count for w in workers] == [2]
    declared = _aws()["available_node_types"]["gpu_worker"]["max_workers"]
    workers = [n for n in launcher_nodes(_aws(), "aws.yaml") if n.name == "gpu_worker"]
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
        launcher_nodes(doc, "bad.yaml")

"""GPU tier: ``dist-train calibrate`` measures a GPU machine unchanged (marked ``gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_train.cli.main import main
from planners.topology import TopologySpec

pytestmark = pytest.mark.gpu


def test_calibrate_on_a_gpu_machine_writes_a_cuda_topology(tmp_path: Path) -> None:
    out = tmp_path / "topology.json"
    ranks = min(2, torch.cuda.device_count())
    assert main(["calibrate", "--out", str(out), "--ranks", str(ranks)]) == 0  # --device auto
    spec = TopologySpec.model_validate_json(out.read_text())
    assert spec.device_type == "cuda" and spec.ranks_per_node == ranks
    assert spec.memory_per_rank_bytes == torch.cuda.get_device_properties(0).total_memory
    assert spec.host_to_device_bytes_per_second and spec.host_memory_per_rank_bytes
    assert all(t > 0 for t in spec.lookup_seconds_per_row.values())
    assert "nccl" in spec.source
    # the planner takes it like any topology file
    assert main(["plan", "--topology", str(out), "--no-torchrec"]) == 0

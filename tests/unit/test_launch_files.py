"""Cluster fit, node topology, cluster files and `dist-train validate` (pure logic, no Ray)."""

from __future__ import annotations

import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

from dist_train.cli.main import main
from dist_train.config.errors import ConfigError
from dist_train.data.adult import convert_adult
from dist_train.launchers.cluster import ClusterTooSmallError, NodeResources, check_fits
from dist_train.launchers.submit import EXCLUDES, submit_command
from dist_train.train.rank_layout import RankLayoutError, layout_from_node_ids
from dist_train.validate import validate_files

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"


def test_check_fits_counts_whole_workers_per_node() -> None:
    nodes = [NodeResources("a", cpus=3), NodeResources("b", cpus=3)]
    check_fits(nodes, 6, 1.0)
    check_fits(nodes, 2, 1.5, num_nodes=2)
    with pytest.raises(ClusterTooSmallError, match="room for 2 worker"):
        check_fits(nodes, 3, 2.0)  # 3 CPUs per node host one 2-CPU worker each
    with pytest.raises(ClusterTooSmallError, match="needs 2 nodes with room for 3"):
        check_fits([NodeResources("a", cpus=8), NodeResources("b", cpus=2)], 6, 1.0, num_nodes=2)
    gpus = [NodeResources("g", cpus=96, gpus=8, count=2)]
    check_fits(gpus, 16, 4.0, gpus_per_worker=1.0, num_nodes=2)
    with pytest.raises(ClusterTooSmallError):
        check_fits(gpus, 17, 4.0, gpus_per_worker=1.0)


def test_check_fits_reads_the_placement_strategy() -> None:
    # a group Ray cannot place retried without end: the job hung instead of failing here
    one = [NodeResources("a", cpus=4)]
    check_fits(one, 2, 1.0, strategy="STRICT_PACK")
    with pytest.raises(ClusterTooSmallError, match="STRICT_SPREAD puts each of the 2 workers"):
        check_fits(one, 2, 1.0, strategy="STRICT_SPREAD")
    two = [NodeResources("a", cpus=2), NodeResources("b", cpus=2)]
    check_fits(two, 2, 1.0, strategy="STRICT_SPREAD")
    with pytest.raises(ClusterTooSmallError, match="STRICT_PACK puts all 3 workers on one"):
        check_fits(two, 3, 1.0, strategy="STRICT_PACK")
    check_fits(two, 3, 1.0, strategy="SPREAD")


def test_a_worker_group_that_cannot_start_is_retried_as_max_failures_says() -> None:
    from dist_train.config.load import load_config
    from dist_train.launchers.ray_train import failure_config

    # Ray's default retried a group it could not place without end, whatever max_failures
    fixed = failure_config(load_config(overrides=["ray.max_failures=1"]))
    assert (fixed.max_failures, fixed.controller_failure_limit) == (1, 1)
    waits = failure_config(load_config(overrides=["ray.max_failures=1", "ray.autoscaling=true"]))
    assert waits.controller_failure_limit == -1  # nodes may be on their way


def test_topology_from_node_ids() -> None:
    topo = layout_from_node_ids(["n1", "n1", "n2", "n2"], rank=3)
    assert (topo.num_nodes, topo.local_world_size, topo.node_rank, topo.local_rank) == (2, 2, 1, 1)
    with pytest.raises(RankLayoutError, match="not contiguous"):
        layout_from_node_ids(["n1", "n2", "n1", "n2"], rank=0)
    with pytest.raises(RankLayoutError, match="different numbers of ranks"):
        layout_from_node_ids(["n1", "n1", "n1", "n2"], rank=0)


def test_shipped_launch_files_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    convert_adult(tmp_path / "data" / "adult")  # adult.yaml reads it, relative to the cwd
    monkeypatch.chdir(tmp_path)
    files = [
        *sorted((LAUNCH / "configs").glob("*.yaml")),
        LAUNCH / "clusters" / "aws-gpu.yaml",
        LAUNCH / "kuberay" / "rayjob.yaml",
    ]
    report = validate_files([str(f) for f in files])
    # one problem, the one docs/operations.md sets ray.cpus_per_worker=48 for: with 1 CPU a
    # worker, PACK lands the 2-node job's 4 workers on one 8-GPU node (it said "ok ... but")
    (problem,) = report.problems
    assert problem.startswith(f"{LAUNCH}/configs/two_nodes.yaml on {LAUNCH}/clusters/aws-gpu")
    assert problem.endswith("set ray.cpus_per_worker=48 so that each node holds 2")
    assert any(
        "aws-gpu.yaml: Ray cluster config, at most 5 node(s): the head (head) and 4 of "
        "gpu_worker (up to 4); up to 384 CPUs or 32 GPUs" in line
        for line in report.ok
    )
    assert any("two_nodes.yaml fits" in line and "rayjob.yaml" in line for line in report.ok)
    two_nodes, aws = LAUNCH / "configs" / "two_nodes.yaml", LAUNCH / "clusters" / "aws-gpu.yaml"
    fixed = validate_files([str(two_nodes), str(aws)], ["ray.cpus_per_worker=48"])
    assert fixed.problems == [] and any("two_nodes.yaml fits" in line for line in fixed.ok)


def _edit(src: Path, dst: Path, change: dict) -> Path:  # type: ignore[type-arg]
    doc = yaml.safe_load(src.read_text())
    for dotted, value in change.items():
        node = doc
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    dst.write_text(yaml.safe_dump(doc))
    return dst


def test_validate_names_problems(tmp_path: Path) -> None:
    aws = LAUNCH / "clusters" / "aws-gpu.yaml"
    bad_head = _edit(aws, tmp_path / "bad_head.yaml", {"head_node_type": "nope"})
    # no workers (Ray refuses a max_workers below the node types' min_workers)
    small = _edit(
        aws,
        tmp_path / "small.yaml",
        {"max_workers": 0, "available_node_types.gpu_worker.min_workers": 0},
    )
    job = _edit(
        LAUNCH / "configs" / "tiny.yaml",
        tmp_path / "job.yaml",
        {"data.train_path": str(tmp_path / "missing"), "data.test_path": str(tmp_path / "missing")},
    )
    report = validate_files([str(bad_head), str(small), str(job)])
    text = "\n".join(report.problems)
    assert "bad_head.yaml: invalid Ray cluster config" in text
    assert "head_node_type 'nope' is not one of available_node_types" in text
    assert "job.yaml: data.train_path:" in text and "no such file or folder" in text
    assert f"{job} on {small}: the cluster is too small" in text


def test_a_node_type_without_max_workers_takes_the_clusters_as_ray_does(tmp_path: Path) -> None:
    """A node type with min_workers 2 and no max_workers of its own: Ray fills in the
    cluster's (4) and takes the file; validate read the absent value as 0 and refused it,
    quoting `max_workers 0`, which the file did not say."""
    aws = yaml.safe_load((LAUNCH / "clusters" / "aws-gpu.yaml").read_text())
    del aws["available_node_types"]["gpu_worker"]["max_workers"]
    aws["available_node_types"]["gpu_worker"]["min_workers"] = 2
    path = tmp_path / "no-max.yaml"
    path.write_text(yaml.safe_dump(aws))
    report = validate_files([str(path)])
    assert report.problems == [] and "at most 5 node(s)" in report.ok[0], report


def test_validate_rayjob_entrypoint_and_capacity(tmp_path: Path) -> None:
    rayjob = LAUNCH / "kuberay" / "rayjob.yaml"
    wrong = _edit(rayjob, tmp_path / "wrong.yaml", {"spec.entrypoint": "python train.py"})
    report = validate_files([str(wrong)])
    assert "spec.entrypoint must run 'python -m dist_train.driver" in report.problems[0]
    # the command that runs the driver: inside a job it joins the job's cluster
    command = {"spec.entrypoint": "dist-train train --config launch/configs/two_nodes.yaml"}
    report = validate_files([str(_edit(rayjob, tmp_path / "cli.yaml", command))])
    assert not report.problems and any("its entrypoint's config" in ok for ok in report.ok)
    doc = yaml.safe_load(rayjob.read_text())
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = 1
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 1
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(doc))
    report = validate_files([str(tmp_path / "one.yaml")])
    # Its own two_nodes.yaml (4 workers on 2 nodes) cannot fit one 2-CPU worker pod.
    assert any(
        "its entrypoint's config 'two_nodes'" in p and "too small" in p for p in report.problems
    ), report.problems


def test_validate_cli_exit_codes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["validate", str(LAUNCH / "configs" / "tiny.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfeatures: [{name: C1}]\ntrain: {batch_size: -1}\n")
    assert main(["validate", str(bad)]) == 1
    assert "train.batch_size: Input should be greater than 0" in capsys.readouterr().err


def _driver(config: str, *args: str) -> list[str]:
    """The entrypoint ``ray job submit`` runs: the driver on ``config``, then ``args``."""
    return ["python", "-m", "dist_train.driver", "--config", config, *args]


def test_submit_command_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    cmd = submit_command("launch/configs/tiny.yaml", ["train.epochs=2"], None, "/repo", True)
    assert cmd[1:5] == ["job", "submit", "--address", "http://127.0.0.1:8265"]
    assert cmd[cmd.index("--working-dir") + 1] == "/repo"
    assert '".venv"' in cmd[cmd.index("--runtime-env-json") + 1]
    tail = cmd[cmd.index("--") + 1 :]
    assert tail == _driver("launch/configs/tiny.yaml", "--set", "train.epochs=2")
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert "http://head:8265" in submit_command("c.yaml", [], None, None, False)
    # as Ray's job CLI picks it: RAY_API_SERVER_ADDRESS first (a review: it beat --address)
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert "http://api:8265" in submit_command("c.yaml", [], None, None, False)
    assert "http://given:8265" in submit_command("c.yaml", [], "http://given:8265", None, False)


def test_validate_names_a_url_it_cannot_open_instead_of_failing() -> None:
    report = validate_files(["nosuchfs://bucket/run/step-00000001"])
    assert not report.ok
    assert report.problems[0].startswith("nosuchfs://bucket/run/step-00000001: cannot open")


def test_submit_dry_run_validates_the_config_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--dry-run", "--set", "trian.epochs=2"]) == 2
    assert "trian: unknown key (did you mean train?" in capsys.readouterr().err
    assert main(["submit", "--dry-run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such config file" in capsys.readouterr().err
    # a config outside the uploaded checkout would not reach the cluster
    outside = tmp_path / "job.yaml"
    outside.write_text((LAUNCH / "configs" / "tiny.yaml").read_text())
    assert main(["submit", "--dry-run", "--config", str(outside)]) == 2
    assert f"{outside}: outside the working dir {REPO}" in capsys.readouterr().err


def test_submit_notes_a_relative_output_path_of_an_uploaded_job(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It lands in Ray's copy of the checkout: identical uploads share it (a second submit
    found the first's checkpoints and failed) and the Ray session removes it."""
    tiny = str(LAUNCH / "configs" / "tiny.yaml")
    assert main(["submit", "--dry-run", "--config", tiny]) == 0
    assert "note: output_dir=outputs is relative" in capsys.readouterr().err
    absolute = ["--set", "output_dir=/shared/outputs", "--set", "checkpoint.dir=ckpt"]
    assert main(["submit", "--dry-run", "--config", tiny, *absolute]) == 0
    err = capsys.readouterr().err
    assert "output_dir=" not in err and "note: checkpoint.dir=ckpt is relative" in err
    for home in ("~/outputs", "~nobody-here/outputs"):  # the job expands them, not this
        assert main(["submit", "--dry-run", "--config", tiny, "--set", f"output_dir={home}"]) == 0
        assert "is relative" not in capsys.readouterr().err
    assert main(["submit", "--dry-run", "--no-working-dir", "--config", tiny]) == 0
    assert "is relative" not in capsys.readouterr().err  # the image's own folder
    # an input is read there too, from the checkout's root (unsaid; a helper's audit)
    inputs = ["--set", "data.train_path=data/train", "--set", "data.test_path=/shared/test"]
    assert main(["submit", "--dry-run", "--config", tiny, *inputs]) == 0
    err = capsys.readouterr().err
    assert "note: data.train_path=data/train is relative: the job reads it inside" in err
    assert "data.test_path" not in err


def test_without_an_upload_a_config_is_checked_where_this_checkout_holds_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs section 4: with --no-working-dir, name the config by its path in the image. It
    was read on this machine and refused ("no such config file"). Now a path in the image's
    copy of this checkout, or a relative one, is checked in this checkout (a typo refused
    here, not on the cluster); another path that is not here is left to the job, its
    overrides' keys checked; and the default config goes as the image's relative path."""
    image = "/opt/dist_train/launch/configs/two_nodes.yaml"
    base = ["submit", "--dry-run", "--no-working-dir"]
    assert main([*base, "--config", image]) == 0
    assert image in capsys.readouterr().out
    assert main([*base, "--config", image.replace("two_", "tow_")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main([*base, "--config", "launch/configs/tow_nodes.yaml"]) == 2
    capsys.readouterr()
    elsewhere = "/srv/jobs/job.yaml"
    assert main([*base, "--config", elsewhere]) == 0
    out = capsys.readouterr()
    assert f"note: {elsewhere} is not on this machine" in out.err and elsewhere in out.out
    assert main([*base, "--config", elsewhere, "--set", "trian.epochs=2"]) == 2
    err = capsys.readouterr().err  # with the key meant, as the train command says it
    assert "--set trian.epochs=2: no such config key (did you mean train.epochs?)" in err
    # a list's items are named by name or position (docs/config.md)
    assert main([*base, "--config", elsewhere, "--set", "features.C14.chunks=3"]) == 0
    assert "--set features.C14.chunks=3" in capsys.readouterr().out
    # a mapping's entries are the user's to name (they were refused as unknown keys)
    entry = "sharding.pooling_factors.C24=3"
    assert main([*base, "--config", elsewhere, "--set", entry]) == 0
    assert f"--set {entry}" in capsys.readouterr().out
    assert main([*base, "--config", elsewhere, "--set", "sharding.pooling.C24=3"]) == 2
    assert "no such config key" in capsys.readouterr().err
    # an item that is no KEY=VALUE, said as for a config here (it was "no such config key")
    assert main([*base, "--config", elsewhere, "--set", "train.epochs"]) == 2
    assert "override 'train.epochs': expected KEY.PATH=VALUE" in capsys.readouterr().err
    assert main(base) == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert cmd[cmd.index("--config") + 1] == "launch/configs/default.yaml"


def test_submit_dry_run_prints_a_command_a_shell_reads_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(LAUNCH)  # a path inside the checkout is sent relative to its root
    argv = ["submit", "--dry-run", "-q", "--config", "configs/tiny.yaml", "--set", "name=a-b"]
    assert main(argv) == 0
    cmd = shlex.split(capsys.readouterr().out)
    tail = cmd[cmd.index("--") + 1 :]
    assert tail == _driver("launch/configs/tiny.yaml", "--set", "name=a-b", "-q")
    assert json.loads(cmd[cmd.index("--runtime-env-json") + 1])["excludes"]


def test_submit_prints_the_address_it_uses_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray's CLI takes RAY_API_SERVER_ADDRESS and RAY_ADDRESS over --address: the printed
    command, run in this shell, went to the exported cluster; a password in the address was
    printed, and one from the environment put on the argv that ps shows every user (a
    helper's audit)."""
    import subprocess

    from dist_train.launchers import submit

    tiny = str(LAUNCH / "configs" / "tiny.yaml")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    argv = ["submit", "--dry-run", "--no-working-dir", "--config", tiny]
    assert main([*argv, "--address", "http://127.0.0.1:8265"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[0] == "RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265"
    assert printed[printed.index("--address") + 1] == "http://127.0.0.1:8265"
    # the address exported: as typed, with no assignment before it
    monkeypatch.setenv("RAY_ADDRESS", "http://alice:hunter2@127.0.0.1:9")
    ran: list[tuple[list[str], dict[str, str]]] = []

    def run(cmd: list[str], check: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        ran.append((cmd, env))
        return subprocess.CompletedProcess(cmd, -15)  # ray job submit killed by SIGTERM

    monkeypatch.setattr(submit, "_job_server_problem", lambda *args: "")
    monkeypatch.setattr(submit.subprocess, "run", run)
    assert main([*argv[:1], *argv[2:], "--no-wait"]) == 128 + 15  # the shell's, not -15
    out = capsys.readouterr().out
    assert "--address 'http://alice:***@127.0.0.1:9'" in out and "hunter2" not in out
    ((cmd, env),) = ran
    assert "--address" not in cmd and not any("hunter2" in a for a in cmd)
    assert env["RAY_API_SERVER_ADDRESS"] == "http://alice:hunter2@127.0.0.1:9"
    # with no scheme (Ray reads it as http), or a quote a shell quotes (a review: printed)
    for address in ("alice:hunter2@127.0.0.1:8265", "http://alice:hunt'er2@127.0.0.1:9"):
        ran.clear()
        assert main([*argv[:1], *argv[2:], "--no-wait", "--address", address]) == 128 + 15
        out = capsys.readouterr().out
        assert "alice:***@127.0.0.1" in out and "hunt" not in out, out
        ((cmd, _),) = ran
        assert "--address" not in cmd, cmd


def test_without_an_upload_the_config_path_goes_as_typed() -> None:
    from dist_train.launchers.submit import cluster_config_path

    inside = str(LAUNCH / "configs" / "tiny.yaml")  # on a shared mount every node sees
    assert cluster_config_path(inside, None) == inside
    assert cluster_config_path("launch/configs/tiny.yaml", None) == "launch/configs/tiny.yaml"
    assert cluster_config_path(inside, str(REPO)) == "launch/configs/tiny.yaml"


def test_a_linked_config_goes_by_its_own_path_as_rays_upload_sends_it(tmp_path: Path) -> None:
    """A config linked into the checkout from elsewhere was refused as outside the working
    dir: its target was compared, where Ray's upload sends the link's path with the
    target's contents. A checkout named through a link to its folder still resolves."""
    from ray._private.runtime_env.packaging import _zip_files

    from dist_train.launchers.submit import cluster_config_path

    root, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (root / "launch").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "job.yaml").write_text("name: x\n")
    (root / "launch" / "job.yaml").symlink_to(elsewhere / "job.yaml")
    assert cluster_config_path(str(root / "launch" / "job.yaml"), str(root)) == "launch/job.yaml"
    (tmp_path / "via").symlink_to(root)
    via = tmp_path / "via" / "launch" / "job.yaml"
    assert cluster_config_path(str(via), str(root)) == "launch/job.yaml"
    _zip_files(str(root), EXCLUDES, str(tmp_path / "upload.zip"), include_gitignore=True)
    with zipfile.ZipFile(tmp_path / "upload.zip") as upload:
        assert upload.read("launch/job.yaml") == b"name: x\n"
    with pytest.raises(ConfigError, match="outside the working dir"):
        cluster_config_path(str(elsewhere / "job.yaml"), str(root))


@pytest.mark.parametrize(
    ("ignore_file", "lines", "config", "why"),
    [
        (None, "", "outputs/run/config.json", "the submit's excludes"),
        (".gitignore", "private/\n", "private/job.yaml", "an ignore file in"),
        ("sub/.rayignore", "*.local.yaml\n", "sub/deep/job.local.yaml", "an ignore file in"),
    ],
)
def test_a_config_the_upload_leaves_out_is_refused(
    tmp_path: Path, ignore_file: str | None, lines: str, config: str, why: str
) -> None:
    """Ray's upload honours the excludes and every .gitignore and .rayignore on the way: a
    run's saved config.json under outputs/ was accepted, then missing on the cluster."""
    from dist_train.launchers.submit import cluster_config_path

    root = tmp_path / "checkout"
    (root / config).parent.mkdir(parents=True)
    (root / config).write_text("name: x\n")
    if ignore_file:
        (root / ignore_file).parent.mkdir(parents=True, exist_ok=True)
        (root / ignore_file).write_text(lines)
    with pytest.raises(ConfigError, match=rf"{config}: the upload of {root} leaves it out \({why}"):
        cluster_config_path(str(root / config), str(root))
    kept = root / "sub" / "job.yaml"  # beside them, what the upload keeps is sent
    kept.parent.mkdir(exist_ok=True)
    kept.write_text("name: y\n")
    assert cluster_config_path(str(kept), str(root)) == "sub/job.yaml"
    # what Ray's own packaging, as `ray job submit` runs it, puts in the upload
    from ray._private.runtime_env.packaging import _zip_files

    _zip_files(str(root), EXCLUDES, str(tmp_path / "upload.zip"), include_gitignore=True)
    uploaded = zipfile.ZipFile(tmp_path / "upload.zip").namelist()
    assert "sub/job.yaml" in uploaded and config not in uploaded


def test_a_node_with_room_for_more_than_its_share_is_named() -> None:
    """Two 4-CPU nodes for a 2-node job of 2 workers at 1 CPU passed every check; Ray's PACK
    put both workers on one node and the job stopped at start ("landed on 1")."""
    from dist_train.launchers.cluster import NodeResources, packing_risk

    nodes = [NodeResources("worker", cpus=4, gpus=0, count=2)]
    risk = packing_risk(nodes, 2, 1.0, 0.0, 2, "PACK")
    assert risk is not None and "set ray.cpus_per_worker=4 so that each node holds 1" in risk
    assert packing_risk(nodes, 2, 4.0, 0.0, 2, "PACK") is None  # each node holds its one
    assert packing_risk(nodes, 2, 1.0, 0.0, None, "PACK") is None  # no node count asked
    assert packing_risk(nodes, 2, 1.0, 0.0, 1, "PACK") is None  # one node: what PACK does
    # 6 workers on 2 nodes of 8 CPUs: 8 / 3 rounded down, so that 3 fit, not 2
    eight = [NodeResources("worker", cpus=8, count=2)]
    assert "set ray.cpus_per_worker=2.6666 so that each node holds 3" in str(
        packing_risk(eight, 6, 1.0, 0.0, 2, "PACK")
    )
    # a 64-CPU head beside two 8-CPU workers: no one value gives every node its 4
    head = [NodeResources("head", cpus=64), NodeResources("worker", cpus=8, count=2)]
    assert "no one ray.cpus_per_worker" in str(packing_risk(head, 8, 1.0, 0.0, 2, "PACK"))


def test_a_rayjob_without_autoscaling_has_its_replicas_not_its_maximum() -> None:
    """KubeRay runs `replicas` pods unless its autoscaler is on; `validate` counted
    `maxReplicas`, and said a job fits that the cluster could not hold."""
    from dist_train.launchers.cluster_files import ClusterFileError, rayjob_nodes

    group = {"groupName": "w", "replicas": 1, "maxReplicas": 2}
    group["template"] = {
        "spec": {"containers": [{"resources": {"limits": {"cpu": "4", "memory": "8Gi"}}}]}
    }
    head = {"template": group["template"]}
    doc = {
        "kind": "RayJob",
        "spec": {
            "entrypoint": "python -m dist_train.driver --config x.yaml",
            "rayClusterSpec": {"headGroupSpec": head, "workerGroupSpecs": [group]},
        },
    }
    assert [n.count for n in rayjob_nodes(doc, "job.yaml")[0]] == [1, 1]
    # as KubeRay counts them: replicas within [minReplicas, maxReplicas], x numOfHosts
    for edit, pods in (
        ({"replicas": 3}, 2),
        ({"replicas": 1, "minReplicas": 2}, 2),
        ({"numOfHosts": 2}, 2),
        ({"suspend": True}, 0),
    ):
        edited = {**doc, "spec": {**doc["spec"]}}
        cluster = {**doc["spec"]["rayClusterSpec"], "workerGroupSpecs": [{**group, **edit}]}  # type: ignore[index,dict-item]
        edited["spec"]["rayClusterSpec"] = cluster  # type: ignore[index]
        nodes = rayjob_nodes(edited, "job.yaml")[0]
        assert sum(n.count for n in nodes[1:]) == pods, edit
    doc["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] = True  # type: ignore[index]
    assert [n.count for n in rayjob_nodes(doc, "job.yaml")[0]] == [1, 2]
    # with no maxReplicas, KubeRay's default of 2**31 - 1: it was taken as replicas, and a
    # job the autoscaler would hold said to be too large (a helper's audit)
    del group["maxReplicas"]
    assert [n.count for n in rayjob_nodes(doc, "job.yaml")[0]] == [1, 2**31 - 1]
    from dist_train.launchers.cluster import describe

    said = describe(rayjob_nodes(doc, "job.yaml")[0])
    assert said == "as many nodes as it asks for (w: autoscaled, no maxReplicas)", said
    doc["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] = "false"  # type: ignore[index]
    with pytest.raises(ClusterFileError, match="enableInTreeAutoscaling must be true or false"):
        rayjob_nodes(doc, "job.yaml")


def test_a_rayjobs_config_named_by_its_path_in_the_image_is_checked(tmp_path: Path) -> None:
    """An entrypoint's `--config /opt/dist_train/launch/configs/...` (the image's copy of
    this checkout) was a PROBLEM: validate looked for it on this machine."""
    text = (LAUNCH / "kuberay" / "rayjob.yaml").read_text()
    job = tmp_path / "rayjob.yaml"
    job.write_text(text.replace("--config launch/", "--config /opt/dist_train/launch/"))
    assert "/opt/dist_train/launch/" in job.read_text()
    report = validate_files([str(job)])
    assert not report.problems and any("its entrypoint's config" in ok for ok in report.ok)


@pytest.mark.parametrize(
    ("entrypoint", "runs"),
    [
        ("python -m dist_train.driver --config c.yaml", True),
        ("OMP_NUM_THREADS=2 python3.11 -m dist_train.driver", True),
        ("dist-train train --config c.yaml --set seed=1", True),
        ("/usr/bin/python -m dist_train.cli train", True),
        ("echo dist-train train; python my_script.py", False),  # a substring matched
        ("bash -c 'dist-train train --config c.yaml'", False),  # a shell it cannot read
        ("dist-train trainer", False),
        ("python train.py", False),
        # forms that run the driver, refused before (a helper's audit)
        ("python -u -m dist_train.driver --config c.yaml", True),
        ("python -X dev -OO -m dist_train.driver", True),
        ("dist-train -q train --config c.yaml", True),
        ("/opt/venv/bin/dist-train train --config c.yaml", True),
        ("exec python -m dist_train.driver --config c.yaml", True),
        ("python -u my_script.py", False),
        ("dist-train -q evaluate latest", False),
        ("python -Xdev -m dist_train.driver", True),
        ("python -m dist_train.cli -q train --config c.yaml", True),
        ("python -m dist_train.cli -q evaluate latest", False),
    ],
)
def test_a_rayjob_entrypoint_is_read_as_a_command(entrypoint: str, runs: bool) -> None:
    from dist_train.launchers.cluster_files import runs_the_driver

    assert runs_the_driver(entrypoint) is runs


@pytest.mark.parametrize(
    "after",
    [
        "> /tmp/log 2>&1",
        "2>err.log",
        "; echo done",
        "&& echo done",
        "| tee log",
        "&",
        "\necho done",  # a YAML block's second line: a command of its own
        "# a comment",
    ],
)
def test_a_rayjob_entrypoints_arguments_end_where_its_shell_ends_the_command(after: str) -> None:
    """Ray runs the entrypoint with /bin/sh: `... > log 2>&1` was checked as arguments the
    driver refuses ('the driver refuses > /tmp/log 2>&1'); quoted operators stay values."""
    from dist_train.launchers.cluster_files import entrypoint_command

    entrypoint = "python -m dist_train.driver --config c.yaml --set 'x=1;2' " + after
    assert entrypoint_command(entrypoint) == (
        "driver",
        ["--config", "c.yaml", "--set", "x=1;2"],
    )
    # a # inside a word is no comment (shlex's default ended the word there); a backslash
    # before a newline continues the line
    entrypoint = "python -m dist_train.driver \\\n --config c#1.yaml --set name=run#2"
    assert entrypoint_command(entrypoint) == (
        "driver",
        ["--config", "c#1.yaml", "--set", "name=run#2"],
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"template": [1, 2]}, "workerGroupSpecs[0].template: expected a mapping, got list"),
        (
            {"template": {"spec": {"containers": ["ray"]}}},
            "workerGroupSpecs[0].template.spec.containers[0]: expected a mapping",
        ),
        (
            {"template": {"spec": {"containers": [{"resources": {"limits": ["cpu"]}}]}}},
            "containers[0].resources.limits: expected a mapping",
        ),
        ({"rayStartParams": "num-cpus=4"}, "workerGroupSpecs[0].rayStartParams: expected a"),
        (None, "workerGroupSpecs[0]: expected a mapping, got str"),
    ],
)
def test_a_rayjob_field_of_the_wrong_shape_is_named(change: dict | None, named: str) -> None:  # type: ignore[type-arg]
    """A review's finding: each of these raised AttributeError through validate."""
    from dist_train.launchers.cluster_files import ClusterFileError, rayjob_nodes

    doc = yaml.safe_load((LAUNCH / "kuberay" / "rayjob.yaml").read_text())
    groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    groups[0] = "just a string" if change is None else {**groups[0], **change}
    with pytest.raises(ClusterFileError, match=re.escape(named)):
        rayjob_nodes(doc, "rj.yaml")
    doc["spec"]["rayClusterSpec"]["headGroupSpec"] = "head"
    with pytest.raises(ClusterFileError, match="headGroupSpec: expected a mapping, got str"):
        rayjob_nodes(doc, "rj.yaml")


def test_a_misspelt_ray_start_param_is_named_and_ray_starts_memory_counts() -> None:
    """KubeRay passes each rayStartParams key to `ray start` as `--key=value`: `num_cpus`
    failed the pods' start while validate read the container's CPU limit and said the job
    fits; and a `memory` param, the Ray node's memory resource, was not read at all."""
    from dist_train.launchers.cluster_files import ClusterFileError, rayjob_nodes

    doc = yaml.safe_load((LAUNCH / "kuberay" / "rayjob.yaml").read_text())
    group = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    for typo, meant in (("num_cpus", "num-cpus"), ("num-cpu", "num-cpus"), ("Memory", "memory")):
        group["rayStartParams"] = {typo: "2"}
        with pytest.raises(ClusterFileError, match=rf"rayStartParams\.{typo}: .*'{meant}'"):
            rayjob_nodes(doc, "rj.yaml")
    # an option this Ray's `ray start` lacks and nothing near it: maybe a newer Ray's
    group["rayStartParams"] = {"block": "true", "some-future-option": "x", "memory": "3000000000"}
    assert rayjob_nodes(doc, "rj.yaml")[0][1].memory_bytes == 3e9
    # `ray start` takes whole numbers for these (click's int): a Kubernetes quantity, an
    # exponent or a fraction failed the pods' start, where validate read it as a quantity
    for key, value in (
        ("memory", "8Gi"),
        ("memory", "3e9"),
        ("num-cpus", "1.5"),
        ("num-gpus", "500m"),
    ):
        group["rayStartParams"] = {key: value}
        with pytest.raises(
            ClusterFileError, match=rf"rayStartParams\.{key}: '{value}' is not a whole number"
        ):
            rayjob_nodes(doc, "rj.yaml")
    # a container's quantity named by its key's whole path: a request's and a limit's read
    # alike (`workerGroupSpecs[0].cpu`; a helper's audit)
    del group["rayStartParams"]
    resources = group["template"]["spec"]["containers"][0]["resources"]
    at = r"workerGroupSpecs\[0\]\.template\.spec\.containers\[0\]\.resources"
    resources["limits"] = {"memory": "8Gi"}
    resources["requests"] = {"cpu": "two"}
    with pytest.raises(ClusterFileError, match=rf"{at}\.requests\.cpu: 'two' is not a Kub"):
        rayjob_nodes(doc, "rj.yaml")
    resources["limits"] = {"cpu": "2", "memory": "lots"}
    with pytest.raises(ClusterFileError, match=rf"{at}\.limits\.memory: 'lots' is not a Kub"):
        rayjob_nodes(doc, "rj.yaml")


def test_a_pods_cpus_and_gpus_are_counted_as_kuberay_starts_ray() -> None:
    """KubeRay passes a container's CPU limit to `ray start` rounded up (Kubernetes'
    Quantity.Value()), or, newer versions, its request where there is no limit, and the
    first limit named `*gpu`: validate read 1500m as 1.5 CPUs (the cluster too small for
    workers of 2), refused a pod with requests alone, and knew only nvidia.com/gpu."""
    from dist_train.launchers.cluster_files import rayjob_nodes

    doc = yaml.safe_load((LAUNCH / "kuberay" / "rayjob.yaml").read_text())
    container = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"
    ][0]

    def worker(resources: dict) -> tuple[float, float]:  # type: ignore[type-arg]
        container["resources"] = resources
        node = rayjob_nodes(doc, "rj.yaml")[0][1]
        return node.cpus, node.gpus

    assert worker({"limits": {"cpu": "1500m", "memory": "8Gi"}}) == (2, 0)
    assert worker({"requests": {"cpu": "3"}}) == (3, 0)
    assert worker({"limits": {"cpu": "2", "amd.com/gpu": 1}}) == (2, 1)
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-cpus": "3"}
    assert worker({"limits": {"cpu": "4"}}) == (3, 0)  # as given


def test_a_processes_job_on_a_cluster_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """launcher=processes runs every rank on the driver's node: validate said such a job
    fits a 3-node RayJob, and submit sent it without a word (a review's finding)."""
    rayjob = LAUNCH / "kuberay" / "rayjob.yaml"
    entrypoint = yaml.safe_load(rayjob.read_text())["spec"]["entrypoint"]
    on_head = _edit(
        rayjob, tmp_path / "rj.yaml", {"spec.entrypoint": f"{entrypoint} --set launcher=processes"}
    )
    problems = validate_files([str(on_head)]).problems
    assert any(
        p.startswith(f"its entrypoint's config 'two_nodes' on {on_head}: launcher=processes runs")
        for p in problems
    ), problems
    # a job file beside a cluster's: not necessarily the cluster's job; not checked against it
    job = _edit(LAUNCH / "configs" / "tiny.yaml", tmp_path / "job.yaml", {"launcher": "processes"})
    report = validate_files([str(job), str(rayjob)])
    assert not any(str(job) in p for p in report.problems), report.problems
    assert f"{job} is not checked against {rayjob}: launcher=processes" in "\n".join(report.ok)
    tiny = str(LAUNCH / "configs" / "tiny.yaml")
    assert main(["submit", "--dry-run", "--config", tiny, "--set", "launcher=processes"]) == 0
    assert "warning: launcher=processes runs all 2 ranks" in capsys.readouterr().err


def test_a_job_server_that_never_answers_how_a_job_ended_does_not_hang_submit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asking how a waited-for job ended had no time limit, where the probe before the
    submission had one: a job server that accepts and never answers hung `dist-train
    submit` (a review's finding). A listening socket that never accepts stands in."""
    import os
    import socket

    from dist_train.launchers import submit

    monkeypatch.setattr(submit, "PROBE_TIMEOUT_S", 3.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert submit._ended_code(address, "job-1", dict(os.environ)) == 1
    assert "could not ask how job job-1 ended (no answer in 3 s)" in capsys.readouterr().err


def test_what_ray_refuses_is_said_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An on-premise provider with node types: Ray's CLI logger also printed its refusal,
    a coloured `PANIC config.py:28 -- ...` line, before validate's own (a helper's audit)."""
    doc = yaml.safe_load((LAUNCH / "clusters" / "aws-gpu.yaml").read_text())
    doc["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2"]}
    path = tmp_path / "onprem.yaml"
    path.write_text(yaml.safe_dump(doc))
    (problem,) = validate_files([str(path)]).problems
    assert "Ray would refuse it: The field available_node_types is not supported" in problem
    said = capsys.readouterr()
    assert "PANIC" not in said.out + said.err and "\x1b[" not in said.out + said.err

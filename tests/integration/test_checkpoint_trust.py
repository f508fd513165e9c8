"""Checkpoints a user can trust: a file that runs code on load is refused (and the code does
not run), a changed byte is named, a save that fails leaves the previous checkpoint as the
latest, and fuzzed checkpoint files never load as different weights."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

from dist_train.checkpoint.digests import file_digest
from dist_train.checkpoint.errors import CheckpointError
from dist_train.checkpoint.folders import META, committed
from dist_train.checkpoint.load import verify
from dist_train.checkpoint.meta import META_DIGEST, meta_digest
from dist_train.config.load import load_config
from dist_train.driver import run_job
from dist_train.export import export
from dist_train.launchers.processes import RankError
from dist_train.storage import location
from dist_train.train.faults import SAVE_FAULT_ENV

TINY = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny.yaml"
BASE = ["launcher=processes", "checkpoint.every_steps=4"]


class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed checkpoint of the tiny job after 8 steps (2 ranks)."""
    out = tmp_path_factory.mktemp("trust")
    run_job(load_config(TINY, [*BASE, f"output_dir={out}", "train.max_steps=8"]))
    return committed(out / "tiny" / "checkpoints")[-1]


def _copy(saved: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / saved.parent.name / saved.name
    shutil.copytree(saved, ckpt)
    return ckpt


def _redigest(ckpt: Path) -> None:
    """Record the files' current digests in meta.json, as a forger would."""
    meta = json.loads((ckpt / META).read_text())
    meta.pop(META_DIGEST)
    meta["files"] = {p.name: file_digest(p) for p in sorted(ckpt.iterdir()) if p.name != META}
    meta[META_DIGEST] = meta_digest(meta)
    (ckpt / META).write_text(json.dumps(meta))


def _refused_everywhere(
    ckpt: Path, tmp_path: Path, file: str, marker: Path, said: str = ""
) -> None:
    """export, validate and resume all stop naming ``file`` (and saying ``said``); the
    planted code never ran."""
    with pytest.raises(CheckpointError, match=file) as exported:
        export(ckpt, tmp_path / "export")
    with pytest.raises(CheckpointError, match=file) as verified:
        verify(ckpt)
    over = [*BASE, f"output_dir={tmp_path / 'resume'}", f"checkpoint.resume={ckpt}"]
    # refused on the driver before any worker starts, or by a worker (its RankError)
    with pytest.raises((CheckpointError, RankError), match=file) as resumed:
        run_job(load_config(TINY, over))
    assert not marker.exists(), "code from the checkpoint ran"
    assert not (tmp_path / "export" / "model.safetensors").exists()
    for refused in (exported, verified, resumed):
        assert said in str(refused.value), str(refused.value)
        # torch's advice opens its refusal: to load the file in the way that runs its code
        assert "weights_only` set to `False`" not in str(refused.value), str(refused.value)


def test_code_running_metadata_is_refused(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    marker = tmp_path / "pwned-metadata"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    _redigest(ckpt)  # the digests match: only the unpickler stands in the way
    _refused_everywhere(ckpt, tmp_path, r"\.metadata", marker)


@pytest.mark.parametrize("as_bytes", [True, False], ids=["non-tensor item", "tensor"])
def test_code_running_item_is_refused(saved: Path, tmp_path: Path, as_bytes: bool) -> None:
    """A pickle that runs code, planted as a non-tensor item or as a tensor's bytes:
    ``validate`` decodes tensors as a load does, so it refuses both (it checked a tensor's
    digests only)."""
    ckpt = _copy(saved, tmp_path)
    marker = tmp_path / "pwned-item"
    shard = ckpt / "__0_0.distcp"
    payload = io.BytesIO()
    torch.save(_RunsCode(marker), payload)
    offset = shard.stat().st_size
    with shard.open("ab") as f:
        f.write(payload.getvalue())
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())  # our own file: trusted here
    key = "model.dense_arch.0.bias"  # a key the model loads: DCP reads the item at resume
    planted = _StorageInfo("__0_0.distcp", offset, len(payload.getvalue()))
    if as_bytes:
        metadata.state_dict_metadata[key] = BytesStorageMetadata()
        metadata.storage_data = {
            **{k: v for k, v in metadata.storage_data.items() if k.fqn != key},
            MetadataIndex(key): planted,
        }
    else:
        (index,) = [i for i in metadata.storage_data if i.fqn == key]
        metadata.storage_data[index] = planted
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    _redigest(ckpt)
    refused = "refused by the safe (weights-only) unpickler: GLOBAL posix.system whose module"
    _refused_everywhere(ckpt, tmp_path, "__0_0.distcp", marker, refused)


def test_a_flipped_byte_is_named(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    shard = ckpt / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    _refused_everywhere(ckpt, tmp_path, "__1_0.distcp", tmp_path / "none")


@pytest.mark.parametrize("kind", ["enospc", "error", "vanish"])
def test_a_failed_save_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Rank 1's disk fills / its write raises; for "vanish", rank 0's directory disappears.
    monkeypatch.setenv(SAVE_FAULT_ENV, f"{0 if kind == 'vanish' else 1}:8:{kind}")
    over = [*BASE, f"output_dir={tmp_path}", "train.max_steps=12"]
    message = {
        # the failing rank's own error alone: the other rank's DCP error ("unexpected pos",
        # what the failure did to the shared write) was joined to it
        "enospc": r"rank 1: OSError: \[Errno 28\] No space left on device",
        "error": "injected shard write failure",
        "vanish": "FileNotFoundError",
    }[kind]
    one = "(?:(?!; ).)*"  # one rank's problem: several are joined by "; "
    saved = rf"checkpoint step 8 was not saved \({one}{message}{one}\); the checkpoints"
    with pytest.raises(Exception, match=saved):
        run_job(load_config(TINY, over))
    root = tmp_path / "tiny" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-00000004"]  # no partial left
    verify(root / "step-00000004")
    if kind == "enospc":  # the run resumes from the checkpoint before the failed save
        monkeypatch.delenv(SAVE_FAULT_ENV)
        rest = run_job(load_config(TINY, [*over, "checkpoint.resume=latest"]))
        assert rest["steps"] == 12
        events = [json.loads(line) for line in (root.parent / "metrics.jsonl").open()]
        assert [e["step"] for e in events if e["event"] == "resume"] == [4]
        # steps 5-8, trained again, are logged once: the failed run's records are dropped
        trained = [e["step"] for e in events if e["event"] == "train"]
        assert trained == sorted(set(trained)) and trained[-1] == 12


def _flat(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_fuzzed_checkpoint_files_never_load_as_other_weights(saved: Path, tmp_path: Path) -> None:
    """Random byte flips, truncations and appended garbage in every file of a checkpoint:
    each export either stops with an error naming the file, or writes the same weights."""
    export(saved, tmp_path / "reference")
    reference = _flat(tmp_path / "reference")
    rng = random.Random(0)
    files = sorted(p.name for p in saved.iterdir())
    counts: Counter[tuple[str, str]] = Counter()
    for case in range(90):
        ckpt = tmp_path / f"case-{case}" / saved.name
        shutil.copytree(saved, ckpt)
        name = files[case % len(files)]
        data = bytearray((ckpt / name).read_bytes())
        kind = ("flip", "truncate", "append")[case // len(files) % 3]
        if kind == "flip":
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        elif kind == "truncate":
            del data[rng.randrange(len(data)) :]
        else:
            data += rng.randbytes(rng.randint(1, 64))
        (ckpt / name).write_bytes(bytes(data))
        try:
            export(ckpt, ckpt.parent / "export")
        except CheckpointError as err:
            assert name in str(err), (case, name, kind, err)
            counts[(kind, "named error")] += 1
        else:
            got = _flat(ckpt.parent / "export")
            assert got.keys() == reference.keys(), (case, name, kind)
            assert all(torch.equal(got[k], reference[k]) for k in got), (case, name, kind)
            counts[(kind, "same weights")] += 1
        shutil.rmtree(ckpt.parent)
    print("\ncheckpoint fuzz (90 cases):", dict(sorted(counts.items())))
    assert sum(n for (_, outcome), n in counts.items() if outcome == "named error") >= 80


def _forged(ckpt: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """meta.json edited by ``edit``, its own digest recomputed, as a forger would."""
    meta = json.loads((ckpt / META).read_text())
    meta.pop(META_DIGEST)
    edit(meta)
    meta[META_DIGEST] = meta_digest(meta)
    (ckpt / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(sharding=[1]), "sharding is not a map of tables' placements"),
        (lambda m: m.update(torch_rng_states=["AAAA"]), "torch_rng_states is not a list of CPU"),
        (lambda m: m.update(torch_rng_states=["%%%"]), "torch_rng_states is not a list of CPU"),
        (
            lambda m: m["position"].update(batches=2, plan={"stream_world": 2, "segments": []}),
            "position.plan deals no streams",
        ),
        (
            lambda m: m["position"].update(batches=2, plan={"stream_world": 0, "segments": [[]]}),
            "position.plan deals no streams",
        ),
        # an IndexError and a TypeError in a rank, naming neither file nor key (a helper's
        # audit)
        (
            lambda m: m["position"].update(
                batches=2, plan={"stream_world": 2, "segments": [[[7, 0, 16]], [[1, 0, 16]]]}
            ),
            "position.plan is not valid",
        ),
        (
            lambda m: m["position"].update(
                batches=2, plan={"stream_world": 2, "segments": [[[0, 9, 1]], [[1, 0, 16]]]}
            ),
            "position.plan is not valid",
        ),
        (lambda m: m["config"]["train"].update(batch_size=[1]), "config.train.batch_size is not"),
    ],
)
def test_forged_metadata_values_are_named_before_anything_loads(
    saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], named: str
) -> None:
    """Each passed the type checks: a traceback after the weights had loaded, or (an empty
    plan) a run that trained nothing and reported success."""
    ckpt = _copy(saved, tmp_path)
    _forged(ckpt, edit)
    with pytest.raises(CheckpointError, match=f"{META}: {re.escape(named)}"):
        verify(ckpt)


def _bigger(metadata: Any) -> None:
    entry = metadata.state_dict_metadata["model.dense_arch.0.bias"]
    entry.size = torch.Size([entry.size[0] * 4])  # no chunk added: torch.empty's memory


def _endless_index(metadata: Any) -> None:
    metadata.planner_data = {**(metadata.planner_data or {}), "x": ("model", 10**12)}


def _shard_outside(metadata: Any) -> None:
    (index, info), *_ = metadata.storage_data.items()
    metadata.storage_data[index] = _StorageInfo(
        "../" + info.relative_path, info.offset, info.length
    )


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_bigger, "model.dense_arch.0.bias: chunks of "),
        (_endless_index, "planner_data['x']: "),
        (lambda m: setattr(m, "storage_meta", torch.Size([1])), "storage_meta is a Size"),
        (_shard_outside, "a shard at '../__"),
    ],
    ids=["size no chunk covers", "a list index of 10**12", "odd storage_meta", "shard outside"],
)
def test_forged_dcp_metadata_is_refused_before_torch_reads_it(
    saved: Path, tmp_path: Path, edit: Callable[[Any], None], named: str
) -> None:
    """.metadata rewritten, its digests with it (a helper's audit): a size no chunk covered
    exported uninitialized memory (the process's strings among it) and validate said ok; a
    planner_data index of 10**12 grew a list without end; a storage_meta of another type
    failed in a traceback; a shard at ../ was read from outside the checkpoint."""
    ckpt = _copy(saved, tmp_path)
    metadata = pickle.loads((ckpt / ".metadata").read_bytes())  # our own file: trusted here
    edit(metadata)
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))
    _redigest(ckpt)
    said = rf"\.metadata: not DCP checkpoint metadata \({re.escape(named)}"
    with pytest.raises(CheckpointError, match=said):
        verify(ckpt)
    with pytest.raises(CheckpointError, match=said):
        export(ckpt, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_a_file_meta_json_lists_outside_its_folder_is_refused(saved: Path, tmp_path: Path) -> None:
    ckpt = _copy(saved, tmp_path)
    _forged(ckpt, lambda m: m["files"].update({"../elsewhere.distcp": m["files"][".metadata"]}))
    with pytest.raises(CheckpointError, match=r"files\['../elsewhere.distcp'\]: not a file of"):
        verify(ckpt)


def test_an_export_whose_config_names_other_tables_lists_no_keys(
    saved: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """meta.json's config said 3 tables of a checkpoint holding 2: export.json's keys named
    a table model.safetensors lacks (a helper's audit). An older dist_train's split of a
    table's rows would differ the same way: the tables export, without keys (a review)."""
    ckpt = _copy(saved, tmp_path)
    _forged(ckpt, lambda m: m["config"]["embedding"].update(num_tables=3))
    with caplog.at_level("WARNING", logger="dist_train"):
        assert export(ckpt, tmp_path / "export")["keys"] == []
    assert re.search(r"lists no keys: the config in .*meta.json gives other tables \(", caplog.text)
    assert export(_copy(saved, tmp_path / "whole"), tmp_path / "whole-export")["keys"]


def test_metadata_that_json_or_its_digest_cannot_vouch_for_is_named(
    saved: Path, tmp_path: Path
) -> None:
    ckpt = _copy(saved, tmp_path)
    text = (ckpt / META).read_text()
    # a number past Python's digit limit, and nesting past its recursion limit: tracebacks
    for bad in ('{"step": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        (ckpt / META).write_text(bad)
        with pytest.raises(CheckpointError, match=f"{META}: unreadable checkpoint metadata"):
            verify(ckpt)
    # a key given twice: json kept the last, so the digest (of the parsed dict) matched and
    # the first value, which another reader may take, passed unseen (a helper's audit)
    twice = text.replace('"position": {', '"position": {"step": 999999, ', 1)
    assert twice != text
    (ckpt / META).write_text(twice)
    with pytest.raises(CheckpointError, match=f"{META}: .*key 'step' given twice in one object"):
        verify(ckpt)
    # one flip in the digest's key turned verification off: file digests need their own
    (ckpt / META).write_text(text.replace(f'"{META_DIGEST}"', '"meta_xxh3_12X"'))
    with pytest.raises(CheckpointError, match=f"{META}: records file digests but not its own"):
        verify(ckpt)


@pytest.mark.parametrize("file", [META, ".metadata", "__0_0.distcp"])
def test_a_checkpoint_file_linked_to_an_endless_device_is_refused(
    saved: Path, tmp_path: Path, file: str
) -> None:
    """meta.json or .metadata read whole from /dev/zero ran out of memory; validate hashed a
    shard linked to it forever."""
    ckpt = _copy(saved, tmp_path)
    (ckpt / file).unlink()
    (ckpt / file).symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=re.escape(file)):
        verify(ckpt)


@pytest.mark.parametrize("kind", ["fifo", "endless"])
def test_export_and_resume_refuse_a_metadata_that_is_no_regular_file(
    saved: Path, tmp_path: Path, kind: str
) -> None:
    """A named pipe as .metadata hung export and resume (only validate checked); a link to
    /dev/zero is refused by name there too, not read."""
    ckpt = _copy(saved, tmp_path)
    (ckpt / ".metadata").unlink()
    if kind == "fifo":
        os.mkfifo(ckpt / ".metadata")
    else:
        (ckpt / ".metadata").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"\.metadata: not a regular file"):
        export(ckpt, tmp_path / "export")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("file", [".metadata", "__1_0.distcp"])
def test_a_pipe_in_a_checkpoint_at_a_file_url_is_refused(
    saved: Path, tmp_path: Path, file: str
) -> None:
    """Over a file:// URL, validate and export opened a named pipe and waited on it for
    ever (the local path's check was the only one)."""
    ckpt = _copy(saved, tmp_path)
    (ckpt / file).unlink()
    os.mkfifo(ckpt / file)
    url = location(f"file://{ckpt}")
    with pytest.raises(CheckpointError, match=rf"{re.escape(file)}: not a regular file"):
        verify(url)
    with pytest.raises(CheckpointError, match=rf"{re.escape(file)}: not a regular file"):
        export(url, tmp_path / "export")


def test_a_folder_the_reader_never_opens_does_not_stop_an_export(
    saved: Path, tmp_path: Path
) -> None:
    """Only the files the reader opens must be regular: a NAS's @eaDir or a notes/ folder
    beside the shards stopped export and resume for a moment (b949b87)."""
    ckpt = _copy(saved, tmp_path)
    (ckpt / "notes").mkdir()
    summary = export(ckpt, tmp_path / "export")
    assert summary["tensors"] > 0


def test_after_a_failed_save_train_names_the_checkpoint_to_go_on_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The committed checkpoints before a failed save are whole: the hint names the newest
    (and none after a checkpoint that failed to load: test_checkpoint.py)."""
    from dist_train.cli.main import main

    monkeypatch.setenv(SAVE_FAULT_ENV, "1:8:enospc")
    args = ["train", "--config", str(TINY), "-q"]
    for item in [*BASE, f"output_dir={tmp_path}", "train.max_steps=12"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "checkpoint step 8 was not saved" in err
    newest = tmp_path / "tiny" / "checkpoints" / "step-00000004"
    assert f"the newest committed checkpoint is {newest} (step 4)" in err, err

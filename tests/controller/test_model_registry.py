"""The model registry's pure file functions (controller/registry.py): content addressing, prefixes,
refusal of damaged files, idempotent push, atomic writes and deployment logs with a torn last line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from controller import registry as reg
from models import artifact


def _model(path: Path, seed: int) -> Path:
    artifact.write(path, {"a": np.arange(3.0) + seed}, {"tags": ["x", "y"], "units": {"x": "bar"},
                                                        "summary": {"threshold_on": 0.6, "rows": 10}})
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def test_push_addresses_the_artifact_by_its_checksum(tmp_path, registry):
    src = _model(tmp_path / "press.npz", 1)
    record, added = reg.push(registry, src, note="first", by="ann", now=100.0)
    model_id = artifact.read(src, ())[1]["checksum"]
    assert added and record["id"] == model_id
    assert (registry / "artifacts" / f"{model_id}.npz").read_bytes() == src.read_bytes()
    meta = json.loads((registry / "artifacts" / f"{model_id}.json").read_text())
    assert meta == record
    assert (meta["name"], meta["source"], meta["pushed_by"], meta["pushed_at"], meta["note"]) == (
        "press", "press.npz", "ann", 100.0, "first")
    assert meta["tags"] == ["x", "y"] and meta["units"] == {"x": "bar"} and meta["threshold_on"] == 0.6
    assert [r["id"] for r in reg.list_models(registry)] == [model_id]


def test_push_again_changes_nothing(tmp_path, registry):
    src = _model(tmp_path / "m.npz", 1)
    first, _ = reg.push(registry, src, note="one", now=1.0)
    before = {p.name: p.stat().st_mtime_ns for p in (registry / "artifacts").iterdir()}
    again, added = reg.push(registry, src, note="two", now=2.0)
    assert not added and again == first
    assert {p.name: p.stat().st_mtime_ns for p in (registry / "artifacts").iterdir()} == before


def test_push_refuses_a_damaged_file_and_writes_nothing(tmp_path, registry):
    src = _model(tmp_path / "m.npz", 1)
    data = bytearray(src.read_bytes())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(reg.RegistryError, match="cannot push .*bad.npz.*unreadable or truncated") as exc:
        reg.push(registry, bad)
    assert "\n" not in str(exc.value)
    assert not registry.exists()
    (tmp_path / "text.npz").write_text("not a model")
    with pytest.raises(reg.RegistryError, match="cannot push"):
        reg.push(registry, tmp_path / "text.npz")
    with pytest.raises(reg.RegistryError, match="not found"):
        reg.push(registry, tmp_path / "absent.npz")


def test_prefix_lookup_unique_ambiguous_unknown_and_malformed(tmp_path, registry):
    ids = [reg.push(registry, _model(tmp_path / f"m{i}.npz", i))[0]["id"] for i in range(2)]
    assert reg.artifact_path(registry, ids[0]).stem == ids[0]
    assert reg.artifact_path(registry, ids[1][:12].upper()).stem == ids[1]
    # a third artifact sharing the first 12 hex digits with ids[0] makes that prefix ambiguous
    twin = ids[0][:12] + "f" * 52 if ids[0][12:] != "f" * 52 else ids[0][:12] + "e" * 52
    shutil.copy(registry / "artifacts" / f"{ids[0]}.npz", registry / "artifacts" / f"{twin}.npz")
    with pytest.raises(reg.RegistryError, match="ambiguous.*give more hex digits"):
        reg.artifact_path(registry, ids[0][:12])
    assert reg.artifact_path(registry, ids[0]).stem == ids[0]  # the full id still resolves
    with pytest.raises(reg.RegistryError, match="not the one its name says"):
        reg.artifact_path(registry, twin)  # content of ids[0] under another name: refused
    with pytest.raises(reg.RegistryError, match="is not in registry"):
        reg.artifact_path(registry, "0" * 12)
    for bad in ("abc", "g" * 12, "0" * 65, "../" + ids[0]):
        with pytest.raises(reg.RegistryError, match="is not a model id"):
            reg.artifact_path(registry, bad)
    with pytest.raises(reg.RegistryError, match="registry .* not found"):
        reg.artifact_path(tmp_path / "nowhere", ids[0])
    (tmp_path / "plain").mkdir()
    with pytest.raises(reg.RegistryError, match="not a model registry"):
        reg.list_models(tmp_path / "plain")


def test_a_corrupted_artifact_in_the_registry_is_refused_and_repaired_by_a_push(tmp_path, registry):
    src = _model(tmp_path / "m.npz", 3)
    model_id = reg.push(registry, src)[0]["id"]
    stored = registry / "artifacts" / f"{model_id}.npz"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(reg.RegistryError, match="damaged.*push the model again"):
        reg.artifact_path(registry, model_id)
    _, added = reg.push(registry, src)
    assert added and reg.artifact_path(registry, model_id) == stored


def test_a_failed_copy_leaves_neither_a_partial_artifact_nor_metadata(tmp_path, registry, monkeypatch):
    src = _model(tmp_path / "m.npz", 4)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reg.os, "fsync", broken_fsync)
    with pytest.raises(reg.RegistryError, match="cannot write to registry.*No space left"):
        reg.push(registry, src)
    assert list((registry / "artifacts").iterdir()) == []  # no .npz, no .json, no temp file
    monkeypatch.undo()
    assert reg.push(registry, src)[1]


def test_an_artifact_without_metadata_is_listed_not_hidden(tmp_path, registry):
    model_id = reg.push(registry, _model(tmp_path / "m.npz", 5))[0]["id"]
    (registry / "artifacts" / f"{model_id}.json").unlink()  # a push killed between the two files
    (rec,) = reg.list_models(registry)
    assert rec["id"] == model_id and rec["name"] == "?" and "push the model again" in rec["note"]
    again, added = reg.push(registry, tmp_path / "m.npz", name="press")
    assert added and again["name"] == "press" and reg.list_models(registry)[0]["name"] == "press"


def test_deployment_log_survives_a_torn_last_line(registry):
    e1 = {"at": 1.0, "by": "ann", "action": "promote", "id": "a" * 64, "version": 5}
    reg.log_deployment(registry, "plant1", "line3", e1)
    path = reg.deployment_log(registry, "plant1", "line3")
    with open(path, "ab") as f:  # what a kill -9 in the middle of an append leaves
        f.write(b'{"at": 2.0, "by": "bob", "action": "prom')
    assert reg.read_deployments(registry, "plant1", "line3") == [e1]
    e2 = {"at": 3.0, "by": "bob", "action": "rollback", "id": "b" * 64, "version": 6, "previous": "a" * 64}
    reg.log_deployment(registry, "plant1", "line3", e2)
    assert reg.read_deployments(registry, "plant1", "line3") == [e1, e2]
    assert reg.read_deployments(registry, "plant1", "other") == []
    with pytest.raises(ValueError):
        reg.log_deployment(registry, "plant1", "line3", {"action": "delete", "id": "x"})


def test_line_names_are_checked_before_they_become_paths():
    assert reg.parse_line("plant1/line-3") == ("plant1", "line-3")
    for bad in ("plant1", "a/b/c", "../x", "a/..", "a/", " /b", "a/b c"):
        with pytest.raises(reg.RegistryError, match="is not SITE/LINE"):
            reg.parse_line(bad)


def test_rollback_target_prefers_the_recorded_previous_then_the_log():
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    log = [{"action": "promote", "id": a}, {"action": "challenge", "id": c},
           {"action": "promote", "id": b, "previous": a}]
    assert reg.rollback_target(log, b) == a
    assert reg.rollback_target(log, None) == a
    assert reg.rollback_target([{"action": "promote", "id": a}, {"action": "promote", "id": b}], b) == a
    assert reg.rollback_target([{"action": "promote", "id": a}], a) is None
    assert reg.rollback_target([], None) is None


def test_writes_are_readable_by_others(tmp_path, registry):
    """A shared registry: artifacts and metadata 0644 (write_atomic's default would be 0600)."""
    model_id = reg.push(registry, _model(tmp_path / "m.npz", 6))[0]["id"]
    for suffix in (".npz", ".json"):
        assert os.stat(registry / "artifacts" / f"{model_id}{suffix}").st_mode & 0o777 == 0o644


def test_list_survives_metadata_with_a_garbage_pushed_at(tmp_path, registry):
    """A hand-edited or foreign .json whose pushed_at is not a number must not crash `model list`."""
    good, _ = reg.push(registry, _model(tmp_path / "a.npz", 1), now=5.0)
    bad, _ = reg.push(registry, _model(tmp_path / "b.npz", 2), now=6.0)
    meta_path = registry / "artifacts" / f"{bad['id']}.json"
    meta_path.write_text(json.dumps({**bad, "pushed_at": "yesterday"}))
    assert {r["id"] for r in reg.list_models(registry)} == {good["id"], bad["id"]}

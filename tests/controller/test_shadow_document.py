"""The shadow document's rules, pure logic: versions per field, last writer wins, stale retained
copies ignored, the delta, rejections with their reason, the reported version, and the shadow
file (atomic, survives a restart, a damaged one set aside)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller.config.shadow import ShadowConfig
from controller.shadow.document import Desired, DesiredError, ShadowDocument, parse_desired, version_of
from controller.shadow.fields import FIELDS, shadow_fields
from controller.shadow.store import SHADOW_FILE, ShadowStore


def msg(value, version: int, by: str = "fleet") -> bytes:
    return json.dumps({"value": value, "version": version, "by": by}).encode()


def test_last_writer_wins_per_field_and_stale_versions_are_ignored() -> None:
    doc = ShadowDocument(FIELDS)
    v5 = parse_desired(msg(1.1, 5, "alice"))
    assert doc.offer("threshold_margin", v5) == "new"
    doc.accept("threshold_margin", v5)
    # the retained copy again (every reconnect), and an older write: never undo a newer change
    assert doc.offer("threshold_margin", v5) == "stale"
    assert doc.offer("threshold_margin", parse_desired(msg(0.9, 4, "bob"))) == "stale"
    # another field has its own versions: version 1 is news there
    assert doc.offer("shadow_mode", parse_desired(msg(True, 1, "bob"))) == "new"
    v6 = parse_desired(msg(1.2, 6, "bob"))
    assert doc.offer("threshold_margin", v6) == "new"
    doc.accept("threshold_margin", v6)
    assert doc.desired["threshold_margin"] == Desired(1.2, 6, "bob")


def test_a_rejected_version_is_not_tried_again_and_a_higher_one_clears_it() -> None:
    doc = ShadowDocument(FIELDS)
    doc.accept("shadow_mode", parse_desired(msg(False, 2)))
    doc.reject("shadow_mode", 3, "fleet", "shadow_mode must be true or false, got 'yes'")
    assert doc.seen("shadow_mode") == 3
    assert doc.offer("shadow_mode", parse_desired(msg(True, 3))) == "stale"
    assert doc.desired["shadow_mode"].value is False  # desired keeps the last accepted value
    doc.accept("shadow_mode", parse_desired(msg(True, 4)))
    assert "shadow_mode" not in doc.rejected


def test_unknown_fields_cannot_grow_the_document_without_bound() -> None:
    doc = ShadowDocument(FIELDS)
    for i in range(50):
        doc.reject(f"typo{i}", 1, "fleet", "unknown field")
    doc.reject("shadow_mode", 1, "fleet", "bad")
    assert len(doc.rejected) == 9 and "shadow_mode" in doc.rejected


@pytest.mark.parametrize(("payload", "why"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"value": 1, "by": "x"}', "version must be an integer"),
    (b'{"value": 1, "version": 0, "by": "x"}', "version must be an integer"),
    (b'{"value": 1, "version": true, "by": "x"}', "version must be an integer"),
    (b'{"value": 1, "version": 1.5, "by": "x"}', "version must be an integer"),
    (b'{"value": 1, "version": 1}', "by must name the writer"),
    (b'{"value": 1, "version": 1, "by": "a\\nb"}', "by must name the writer"),
    (b'{"version": 1, "by": "x"}', "value is missing"),
    (b'{"value": 1, "version": 1, "by": "x", "extra": 2}', "unknown key"),
    (b'{"value": NaN, "version": 1, "by": "x"}', "not JSON"),
])
def test_bad_payloads_say_what_is_wrong(payload: bytes, why: str) -> None:
    with pytest.raises(DesiredError, match=why):
        parse_desired(payload)


def test_the_version_of_a_refused_payload_is_kept_when_it_has_one() -> None:
    assert version_of(b'{"value": 1, "version": 7}') == 7
    assert version_of(b"garbage") is None


@pytest.fixture
def fields(tmp_path: Path):
    return shadow_fields(tmp_path / "models", 0.8, 1.5)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("shadow_mode", "yes", "true or false"),
    ("shadow_mode", 1, "true or false"),
    ("threshold_margin", 2.0, r"outside \[0.8, 1.5\]"),
    ("threshold_margin", 0.5, "outside"),
    ("threshold_margin", True, "must be a number"),
    ("threshold_margin", "1.1", "must be a number"),
    ("inhibits", [], "must be an object"),
    ("inhibits", {"stop_line": True}, "inhibits\\['stop_line'\\] must be"),
    ("inhibits", {"stop_line": {"inhibited": "yes"}}, "must be"),
    ("inhibits", {"stop_line": {"inhibited": True, "interlocks": []}}, "must be"),
    ("model_version", "../etc/passwd", "model file name"),
    ("model_version", ".hidden", "model file name"),
    ("model_version", 3, "model file name"),
])
def test_field_values_of_the_wrong_shape_are_rejected_with_the_reason(fields, field, value, why) -> None:
    with pytest.raises(DesiredError, match=why):
        fields[field].check(value)


def state(**overrides) -> dict:
    base = {"shadow_mode": False, "threshold_margin": 1.0, "model": {"version": "m1", "id": "ab" * 32},
            "inhibits": {"stop_line": {"inhibited": False}, "divert": {"inhibited": True}}}
    return {**base, **overrides}


def test_delta_is_what_of_desired_is_not_in_effect(fields) -> None:
    doc = ShadowDocument(FIELDS)
    for field, value in (("shadow_mode", True), ("threshold_margin", 1.0), ("model_version", "abab" * 4),
                         ("inhibits", {"stop_line": {"inhibited": True, "reason": "x"},
                                       "divert": {"inhibited": True, "reason": "y"}})):
        doc.accept(field, Desired(fields[field].check(value), 1, "fleet"))
    now = state()
    pending = {n: (lambda v, f=f, s=now: f.pending(v, s)) for n, f in fields.items()}
    # margin 1.0 is in effect; the model is matched by its id prefix; divert is already inhibited
    assert doc.delta(pending) == {"shadow_mode": True,
                                  "inhibits": {"stop_line": {"inhibited": True, "reason": "x"}}}
    in_effect = state(shadow_mode=True,
                      inhibits={"stop_line": {"inhibited": True}, "divert": {"inhibited": True}})
    pending = {n: (lambda v, f=f, s=in_effect: f.pending(v, s)) for n, f in fields.items()}
    assert doc.delta(pending) == {}


def test_the_reported_version_rises_only_when_the_content_changes() -> None:
    doc = ShadowDocument(FIELDS)
    first, changed = doc.report({"shadow_mode": False}, {})
    assert changed and first["version"] == 1
    again, changed = doc.report({"shadow_mode": False}, {})
    assert not changed and again["version"] == 1
    doc.reject("shadow_mode", 2, "fleet", "bad")
    later, changed = doc.report({"shadow_mode": False}, {})
    assert changed and later["version"] == 2
    assert later["rejected"] == {"shadow_mode": {"version": 2, "by": "fleet", "reason": "bad"}}


def test_the_shadow_file_survives_a_restart_and_the_version_never_goes_back(tmp_path: Path) -> None:
    doc = ShadowDocument(FIELDS)
    doc.accept("shadow_mode", Desired(True, 4, "fleet"))
    doc.reject("threshold_margin", 9, "bob", "outside")
    for _ in range(3):
        doc.report({"n": len(doc.rejected) + doc.version}, {})
    ShadowStore(tmp_path).save(doc)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    restarted = ShadowDocument(FIELDS)
    assert ShadowStore(tmp_path).load(restarted) == ""
    assert restarted.desired == {"shadow_mode": Desired(True, 4, "fleet")}
    assert restarted.rejected["threshold_margin"]["version"] == 9
    assert restarted.offer("shadow_mode", Desired(False, 4, "x")) == "stale"
    report, changed = restarted.report({"n": 0}, {})
    assert changed and report["version"] == 4  # above every version published before the restart


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 2}', '{"format": 1, "reported_version": -1}',
                                  '{"format": 1, "reported_version": 1, "desired": {"nope": {"value": 1}}}'])
def test_a_damaged_shadow_file_is_set_aside_and_the_shadow_starts_empty(tmp_path: Path, text: str) -> None:
    (tmp_path / SHADOW_FILE).write_text(text)
    doc = ShadowDocument(FIELDS)
    problem = ShadowStore(tmp_path).load(doc)
    assert "unusable" in problem and doc.desired == {} and doc.version == 0
    assert not (tmp_path / SHADOW_FILE).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f"{SHADOW_FILE}.damaged-")]


def test_config_margin_range_holds_one_and_wildcards_are_refused() -> None:
    from pydantic import ValidationError

    for bad in ({"threshold_margin_min": 1.1}, {"threshold_margin_max": 0.9}, {"threshold_margin_min": 0},
                {"topic_prefix": "a/+/b"}, {"topic_prefix": "/a"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            ShadowConfig.model_validate(bad)
    cfg = ShadowConfig.model_validate({"models_dir": "models"}, context={"base_dir": "/etc/ls"})
    assert cfg.models_dir == Path("/etc/ls/models")
    assert ShadowConfig().prefix_for("s1", "l1") == "linesentry/s1/l1/shadow"
    assert ShadowConfig().models_dir_for(Path("/var/ls")) == Path("/var/ls/models")

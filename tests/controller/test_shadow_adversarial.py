"""The device shadow against a hostile or careless fleet, a damaged shadow file and a state
directory that cannot be written: each test is a defect found by review (docs/shadow.md's promises)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controller.shadow.document import DesiredError, ShadowDocument, parse_desired, version_of
from controller.shadow.fields import FIELDS
from controller.shadow.store import SHADOW_FILE, ShadowStore
from hil_tests.rig.service_process import closed_ports_config
from tests.controller.test_shadow_agent import PREFIX, FakeLink, Line

DEEP = b"[" * 60_000  # under the 64 KiB payload limit, far beyond the JSON decoder's recursion limit


@pytest.fixture
def config(tmp_path, model) -> Path:
    return closed_ports_config(tmp_path, model)


def test_a_deeply_nested_payload_is_a_rejection_not_a_crash() -> None:
    with pytest.raises(DesiredError, match="not JSON"):
        parse_desired(DEEP)
    nested_value = b'{"value": ' + b"[" * 30_000 + b"]" * 30_000 + b', "version": 3, "by": "x"}'
    with pytest.raises(DesiredError, match="not JSON"):
        parse_desired(nested_value)
    assert version_of(DEEP) is None


async def test_the_worker_survives_a_deeply_nested_message(config):
    link = FakeLink()
    async with Line(config, link) as line:
        handler = link.handlers[f"{PREFIX}/desired/+"]
        handler(f"{PREFIX}/desired/shadow_mode", DEEP, True)
        good = json.dumps({"value": True, "version": 1, "by": "f"}).encode()
        handler(f"{PREFIX}/desired/shadow_mode", good, True)
        for _ in range(200):
            if line.agent.stats.applied:
                break
            await asyncio.sleep(0.01)
        assert line.agent.stats.applied == 1 and line.controller.ops.actions.shadow_global
        assert line.agent.stats.rejected == 1 and line.agent.doc.desired["shadow_mode"].version == 1


@pytest.mark.parametrize("reason", ["belt\nchange", "\x1b[31mred\x1b[0m", "x" * 501])
async def test_an_inhibit_reason_follows_the_api_rule(config, reason):
    """The API takes printable text of at most 500 characters (no line break, no escape sequence
    that `linesentry events` would print to a terminal); the shadow's validation is the API's."""
    async with Line(config, FakeLink()) as line:
        entry = {"stop_line": {"inhibited": True, "reason": reason}}
        assert await line.send("inhibits", entry, 1) == "rejected"
        assert not line.controller.ops.actions.status()[0]["inhibited"]
        assert "reason" in line.agent.doc.rejected["inhibits"]["reason"]


def test_a_payload_without_a_usable_version_does_not_lower_the_version_seen() -> None:
    """v10 was rejected; garbage on the same topic must not make an older v8 news again."""
    doc = ShadowDocument(FIELDS)
    doc.accept("shadow_mode", parse_desired(b'{"value": false, "version": 5, "by": "a"}'))
    doc.reject("shadow_mode", 10, "a", "bad")
    doc.reject("shadow_mode", None, "", "payload is not JSON")
    assert doc.seen("shadow_mode") == 10
    assert doc.offer("shadow_mode", parse_desired(b'{"value": true, "version": 8, "by": "b"}')) == "stale"
    restored = ShadowDocument(FIELDS)
    restored.load_json(json.loads(json.dumps(doc.to_json())))
    assert restored.seen("shadow_mode") == 10


@pytest.mark.parametrize("text", [
    '{"format": 1, "reported_version": 3, "rejected": {"shadow_mode": {"version": "9", "reason": "r"}}}',
    '{"format": 1, "reported_version": 3, "rejected": {"shadow_mode": {"version": 1e300, "reason": "r"}}}',
    '{"format": 1, "reported_version": 3, "rejected": {"shadow_mode": {"version": [], "reason": "r"}}}',
    "[" * 60_000,
])
def test_a_damaged_shadow_file_is_set_aside_at_start(tmp_path, text) -> None:
    (tmp_path / SHADOW_FILE).write_text(text)
    doc = ShadowDocument(FIELDS)
    assert "unusable" in ShadowStore(tmp_path).load(doc)
    assert not (tmp_path / SHADOW_FILE).exists() and doc.seen("shadow_mode") == 0


async def test_the_reported_version_is_not_published_before_it_is_durable(config, caplog):
    """A state directory that cannot take the shadow file: publishing the report anyway would let
    the reported version go back after a restart (the file still holds the older one)."""
    link = FakeLink()
    async with Line(config, link) as line:
        assert await line.agent.publish_report()
        saved = line.agent.last_report["version"]
        path = line.agent.store.path
        path.unlink()
        path.mkdir()  # the rename onto it fails: an OSError like a full or read-only disk
        assert await line.send("shadow_mode", True, 1) == "applied"
        published = len(link.published)
        for _ in range(3):  # every report round tries again: said once, not every second
            assert not await line.agent.publish_report()
        assert len(link.published) == published  # not seen by anyone: it could go back
        assert len([r for r in caplog.records if r.levelname == "ERROR" and "cannot save" in r.message]) == 1
        path.rmdir()
        assert await line.agent.publish_report()  # durable now: published
        assert link.published[-1][1]["version"] > saved
        assert json.loads(path.read_text())["reported_version"] == link.published[-1][1]["version"]


def test_shadow_mode_off_during_an_activation_arms_the_action_it_only_shadowed() -> None:
    """The fleet turns global shadow off while the alarm is active: the action wrote nothing for
    this activation (it only logged what it would write), so it acts now, not at the next one; an
    action that really wrote before shadow went on and off does not write twice."""
    from controller.actions import ActionEngine
    from controller.config import ActionConfig

    stop = ActionConfig.model_validate({"name": "stop", "alarm": "anomaly", "min_interval_s": 5.0,
                                        "write": {"tag": "line_stop", "value": True}})
    e = ActionEngine([stop])
    e.set_global_shadow(True)
    assert e.evaluate(1.0, {"anomaly"}, {}) == ()
    assert [ev.kind for ev in e.take_events()] == ["shadow"]
    e.set_global_shadow(False)
    (write,) = e.evaluate(1.1, {"anomaly"}, {})  # no min_interval_s from a write that never happened
    assert write.tag == "line_stop"
    e.set_global_shadow(True)
    e.set_global_shadow(False)
    assert e.evaluate(1.2, {"anomaly"}, {}) == ()  # it wrote in this activation: once per activation


async def test_shadow_mode_off_during_a_comm_loss_writes_the_safe_state_it_only_shadowed(config):
    """The press is comm-lost (closed port) while global shadow mode is on: its safe state is only
    logged; turning shadow off while the loss lasts writes it (it would never be, until the next loss)."""
    async with Line(config, FakeLink()) as line:
        c = line.controller
        c.ops.set_shadow_mode(True, "ann")
        journal = c.events.since

        def safe_state(kind: str) -> list[dict]:
            c.journal.flush()
            return [e for e in journal(0) if e["source"] == "safe_state:press" and e.get("result") == kind]

        for _ in range(400):
            if safe_state("shadow"):
                break
            await asyncio.sleep(0.01)
        assert safe_state("shadow") and not safe_state("fired")
        c.ops.set_shadow_mode(False, "ann")
        assert safe_state("fired")


async def test_huge_rejected_values_and_field_names_keep_the_reported_document_small(config):
    """A reason echoes the refused value and an unknown field its topic level: unclipped, a dozen 60 kB
    payloads made a reported document of most of a megabyte (over a broker's maximum packet size,
    AWS IoT's is 128 kB: no report could be published again) and as many 60 kB journal events."""
    async with Line(config, FakeLink()) as line:
        assert await line.send("threshold_margin", "x" * 60_000, 1) == "rejected"
        assert await line.send("model_version", "y" * 60_000, 1) == "rejected"
        for i in range(12):
            payload = json.dumps({"value": "z" * 60_000, "version": 1, "by": "f"}).encode()
            assert await line.agent.handle(f"{PREFIX}/desired/{i}{'f' * 60_000}", payload) == "rejected"
        report, _ = line.agent.build_report()
        assert len(json.dumps(report)) < 32_000
        assert max(len(e["message"]) for e in line.events("shadow")) < 1_000


async def test_the_reported_version_does_not_go_back_after_the_shadow_file_is_damaged(config):
    """A damaged (or lost) shadow file starts the shadow empty: its reported version must still be
    above every version the broker and the fleet saw before, or a fleet ordering reports by version
    would ignore this line's reports until it caught up."""
    link = FakeLink()
    async with Line(config, link) as line:
        for value, version in ((True, 1), (False, 2), (True, 3)):
            assert await line.send("shadow_mode", value, version) == "applied"
            assert await line.agent.publish_report()
        before = link.published[-1][1]["version"]
        path = line.agent.store.path
    path.write_text('{"format": 1, "reported_ver')  # torn by a disk fault (a rename never tears it)
    link = FakeLink()
    async with Line(config, link) as line:
        assert await line.agent.publish_report()
        assert link.published[-1][1]["version"] > before


async def test_an_inhibit_from_the_shadow_is_journaled_with_its_desired_version(config):
    """Every applied change is a journal event with its origin: for an inhibit the reason is the
    fleet's own text, so the event must still say which desired version set it."""
    async with Line(config, FakeLink()) as line:
        entry = {"stop_line": {"inhibited": True, "reason": "belt change"}}
        assert await line.send("inhibits", entry, 7, by="ann") == "applied"
        event = [e for e in line.events("stop_line") if e.get("result") == "inhibited"][-1]
        assert event["user"] == "shadow:ann" and "belt change" in event["message"]
        assert "device shadow inhibits v7" in event["message"]
        assert line.controller.ops.reasons["action:stop_line"] == "belt change"  # the operator's view


class BrokenOnceLink(FakeLink):
    """A link whose first publish fails with something other than MqttUnavailable (a library's
    ValueError, say): a bug elsewhere, which must cost one report, not every later one."""

    async def publish(self, topic, payload, *, qos=1, retain=False) -> None:
        if not self.published and not getattr(self, "failed", False):
            self.failed = True
            raise ValueError("payload rejected by the client library")
        await super().publish(topic, payload, qos=qos, retain=retain)


async def test_the_report_loop_survives_an_unexpected_publish_error(config):
    link = BrokenOnceLink()
    async with Line(config, link):
        desired = json.dumps({"value": True, "version": 1, "by": "f"}).encode()
        link.handlers[f"{PREFIX}/desired/+"](f"{PREFIX}/desired/shadow_mode", desired, True)
        for _ in range(300):
            if link.published and link.published[-1][1]["state"]["shadow_mode"] is True:
                break
            await asyncio.sleep(0.01)
        assert link.failed and link.published and link.published[-1][1]["state"]["shadow_mode"] is True


WRITER = """
import sys
from pathlib import Path
from controller.shadow.document import ShadowDocument
from controller.shadow.fields import FIELDS
from controller.shadow.store import ShadowStore
store, doc = ShadowStore(Path(sys.argv[1])), ShadowDocument(FIELDS)
doc.rejected = {f"f{k}": {"version": 1, "by": "x", "reason": "r" * 4000} for k in range(8)}
while True:
    doc.version += 1
    store.save(doc)
    if doc.version == 1:
        print("saved once", flush=True)
"""


def test_a_kill_9_during_the_shadow_file_write_leaves_no_torn_file_and_no_litter(tmp_path) -> None:
    """A real process writing the shadow file in a loop, killed at random: the file is always whole
    (old or new), and the temp file a kill leaves behind is cleared at the next start, not left to
    pile up in the state directory over a crash loop."""
    import random
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    litter = []
    for _ in range(40):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=root,
                                stdout=subprocess.PIPE)
        proc.stdout.readline()
        time.sleep(random.uniform(0.005, 0.05))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        litter = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        doc = ShadowDocument(FIELDS)
        assert ShadowStore(tmp_path).load(doc) == "" and doc.version > 0  # whole, never torn
        if litter:
            break
    assert litter, "no kill landed inside a write in 40 tries"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("site", ["a+b", "a#", "a/", "nul\x00site"])
def test_a_site_name_that_makes_no_mqtt_topic_is_refused_at_start(tmp_path, site) -> None:
    """The default prefix is made of the site and line names: a wildcard, an empty level or a NUL
    (which MQTT forbids in a topic name) is one clear error, not a subscription the broker refuses."""
    from types import SimpleNamespace

    from controller.config.shadow import ShadowConfig
    from controller.errors import BadRequest
    from controller.shadow import ShadowAgent

    ops = SimpleNamespace(identity=SimpleNamespace(site=site, line="l1"))
    with pytest.raises(BadRequest, match="topic_prefix"):
        ShadowAgent(ShadowConfig(), link=FakeLink(), ops=ops, state_dir=tmp_path, events=None)


async def test_a_flood_of_rejected_desired_messages_does_not_flood_the_journal(config):
    """A fleet client stuck in a retry loop (a bad value, a new version each time): every message is
    rejected and reported, but the journal keeps the line's history (its retention drops the oldest
    rows: 10 a second would push a day of alarms out within a day), so only a budget is journaled
    and the rest is said in one event."""
    from controller.shadow.agent import REJECTION_EVENTS_PER_MINUTE

    async with Line(config, FakeLink()) as line:
        for version in range(1, 201):
            assert await line.send("threshold_margin", "much higher", version) == "rejected"
        assert line.agent.stats.rejected == 200
        assert line.agent.doc.rejected["threshold_margin"]["version"] == 200  # the report has the latest
        events = [e for e in line.events("shadow") if e.get("result") == "rejected"]
        assert len(events) == REJECTION_EVENTS_PER_MINUTE
        flood = [e for e in line.events("shadow") if e.get("result") == "flood"]
        assert len(flood) == 1 and "not journaled" in flood[0]["message"]


async def test_overlapping_saves_never_leave_the_file_behind_the_published_version(config):
    """A desired change and a report round save the shadow file at the same time (two threads): the
    older text must never land last, or a kill -9 then makes an already published version come back."""
    link = FakeLink()
    async with Line(config, link) as line:
        for i in range(1, 101):
            await asyncio.gather(line.send("threshold_margin", 1.0 + (i % 2) * 0.1, i),
                                 line.agent.publish_report(), line.send("shadow_mode", bool(i % 2), i),
                                 line.send("no_such_field", i, i), line.agent.publish_report())
            saved = json.loads(line.agent.store.path.read_text())["reported_version"]
            assert saved >= link.published[-1][1]["version"], f"round {i}"

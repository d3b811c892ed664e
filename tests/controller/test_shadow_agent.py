"""The shadow agent on the real controller (the demo line, its PLCs on closed ports) with an in-test
link (the three methods of controller.mqtt.session.MqttLink; the real one against mosquitto is
hil_tests/test_shadow.py): every field applied through Operations with the API's validation and
journaled with its origin, rejections with the reason, the delta, and the desired state applied
again at a restart with no broker."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from controller.config import load_config
from controller.config.shadow import ShadowConfig
from controller.runtime import Controller
from controller.shadow import ShadowAgent
from hil_tests.rig.service_process import closed_ports_config

PREFIX = "linesentry/test/shadow"


class FakeLink:
    """Records publishes; `connected` as the test sets it."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.handlers: dict[str, object] = {}
        self.connect_callbacks: list = []
        self.published: list[tuple[str, dict, bool]] = []

    def subscribe(self, topic_filter, handler, qos=1) -> None:
        self.handlers[topic_filter] = handler

    def on_connect(self, callback) -> None:
        self.connect_callbacks.append(callback)

    async def publish(self, topic, payload, *, qos=1, retain=False) -> None:
        self.published.append((topic, json.loads(payload), retain))


class Line:
    """A controller on `config` and its shadow agent (models in state/models)."""

    def __init__(self, config: Path, link: FakeLink) -> None:
        self.controller = Controller(load_config(config), api_port=0)
        self.link = link
        self.agent: ShadowAgent | None = None

    async def __aenter__(self) -> Line:
        await self.controller.start()
        c = self.controller
        self.agent = ShadowAgent(ShadowConfig(topic_prefix=PREFIX), link=self.link, ops=c.ops,
                                 state_dir=Path(c.state_dir.path), events=c.events)
        await self.agent.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.agent.stop()
        await self.controller.aclose()

    async def send(self, field: str, value, version: int, by: str = "fleet") -> str:
        payload = json.dumps({"value": value, "version": version, "by": by}).encode()
        return await self.agent.handle(f"{PREFIX}/desired/{field}", payload)

    def events(self, source: str) -> list[dict]:
        return [e for e in self.controller.events.since(0) if e["source"] == source]


@pytest.fixture
def config(tmp_path, model) -> Path:
    return closed_ports_config(tmp_path, model)


async def test_shadow_mode_is_applied_journaled_with_its_origin_and_reported(config):
    link = FakeLink()
    async with Line(config, link) as line:
        ops = line.controller.ops
        assert await line.send("shadow_mode", True, 1, by="fleet-ui") == "applied"
        assert ops.actions.shadow_global and ops.health.shadow
        assert [a["shadow"] for a in ops.actions.status()] == [True]
        assert [p["kind"] for p in ops.protections_disabled()] == ["shadow"]  # the operator sees it
        event = line.events("shadow_mode")[-1]
        assert event["user"] == "shadow:fleet-ui" and event["role"] == "engineer"
        assert event["reason"] == "device shadow shadow_mode v1"
        assert await line.send("shadow_mode", False, 1) == "stale"  # a retained copy of an old write
        assert ops.actions.shadow_global

        assert await line.agent.publish_report()
        topic, report, retained = link.published[-1]
        assert topic == f"{PREFIX}/reported" and retained
        assert report["state"]["shadow_mode"] is True and report["delta"] == {}
        assert report["desired"]["shadow_mode"] == {"value": True, "version": 1, "by": "fleet-ui"}
        state = report["state"]
        assert state["config"]["hash"] == ops.config_hash and len(ops.config_hash) == 64
        assert state["model"]["version"] == "model" and len(state["model"]["id"]) == 64
        assert state["plcs"] and state["software_version"]

        assert await line.send("shadow_mode", False, 2) == "applied"
        assert not ops.actions.shadow_global and ops.protections_disabled() == []


async def test_threshold_margin_scales_the_line_threshold_within_the_configured_range(config):
    async with Line(config, FakeLink()) as line:
        p = line.controller.pipeline
        base = p.detector.threshold
        assert await line.send("threshold_margin", 1.2, 1) == "applied"
        assert p.detector.threshold == pytest.approx(base * 1.2) and p.model_threshold == base
        status = line.controller.ops.status()["detector"]
        assert status["threshold_margin"] == 1.2 and status["model_threshold"] == base
        assert any(d["kind"] == "threshold_margin" for d in line.controller.ops.protections_disabled())
        assert await line.send("threshold_margin", 1.6, 2) == "rejected"
        assert "outside [0.8, 1.5]" in line.agent.doc.rejected["threshold_margin"]["reason"]
        assert p.detector.threshold == pytest.approx(base * 1.2)
        assert await line.send("threshold_margin", 0.9, 3) == "applied"
        assert p.detector.threshold == pytest.approx(base * 0.9)  # from the model's, not 1.2's
        assert "threshold_margin" not in line.agent.doc.rejected
        event = [e for e in line.events("detector") if e.get("result") == "threshold_margin"][-1]
        assert event["user"] == "shadow:fleet" and "1.2 -> 0.9" in event["message"]


async def test_inhibits_follow_the_api_rules_and_a_bad_entry_changes_nothing(config):
    async with Line(config, FakeLink()) as line:
        ops = line.controller.ops
        bad = {"stop_line": {"inhibited": True, "reason": "maintenance"}, "no_such": {"inhibited": True,
                                                                                        "reason": "x"}}
        assert await line.send("inhibits", bad, 1) == "rejected"
        assert "no action named 'no_such'" in line.agent.doc.rejected["inhibits"]["reason"]
        assert not ops.actions.status()[0]["inhibited"]  # all or nothing
        assert await line.send("inhibits", {"stop_line": {"inhibited": True}}, 2) == "rejected"
        assert "reason is required" in line.agent.doc.rejected["inhibits"]["reason"]

        good = {"stop_line": {"inhibited": True, "reason": "maintenance"}}
        assert await line.send("inhibits", good, 3) == "applied"
        act = ops.actions.status()[0]
        assert act["inhibited"] and act["inhibited_by"] == "shadow:fleet"
        assert [p["kind"] for p in ops.protections_disabled()] == ["inhibited"]
        # an operator releases it locally: the delta shows the desired inhibit not in effect
        ops.inhibit_action("stop_line", "ann", False, "back in service")
        report, _ = line.agent.build_report()
        assert report["delta"] == {"inhibits": {"stop_line": {"inhibited": True, "reason": "maintenance"}}}
        assert await line.send("inhibits", {"stop_line": {"inhibited": False}}, 4) == "applied"
        report, _ = line.agent.build_report()
        assert report["delta"] == {} and "inhibits" not in report["rejected"]
        # the interlock is config: no field reaches it
        assert [str(c) for c in line.controller.config.action("stop_line").interlocks] == ["motor_speed > 50"]


async def test_a_model_version_is_loaded_with_the_reload_validation(config, model, tmp_path):
    async with Line(config, FakeLink()) as line:
        models_dir = Path(line.controller.state_dir.path) / "models"
        models_dir.mkdir()
        shutil.copy(model, models_dir / "v2.npz")
        (models_dir / "broken.npz").write_bytes(model.read_bytes()[:1000])
        assert await line.send("model_version", "v3", 1) == "rejected"
        assert "no model 'v3'" in line.agent.doc.rejected["model_version"]["reason"]
        assert await line.send("model_version", "broken", 2) == "rejected"
        assert "unreadable or truncated" in line.agent.doc.rejected["model_version"]["reason"]
        assert line.controller.model_path == model
        assert await line.send("model_version", "v2", 3) == "applied"
        assert line.controller.model_path == models_dir / "v2.npz"
        event = [e for e in line.events("detector") if "reloaded" in e["message"]][-1]
        assert event["user"] == "shadow:fleet" and event["reason"] == "device shadow model_version v3"
        report, _ = line.agent.build_report()
        assert report["state"]["model"]["version"] == "v2" and report["delta"] == {}
        model_id = report["state"]["model"]["id"]
        (models_dir / "v2.npz").rename(models_dir / "renamed.npz")
        assert await line.send("model_version", model_id[:16], 4) == "applied"  # by its id
        assert line.controller.model_path == models_dir / "renamed.npz"


async def test_the_desired_state_is_applied_again_at_start_with_no_broker(config):
    async with Line(config, FakeLink()) as line:
        base = line.controller.pipeline.detector.threshold
        assert await line.send("shadow_mode", True, 5) == "applied"
        assert await line.send("threshold_margin", 1.3, 2) == "applied"
        assert await line.send("inhibits", {"stop_line": {"inhibited": True, "reason": "m"}}, 1) == "applied"
        await line.agent.publish_report()
        version = line.agent.last_report["version"]
    offline = FakeLink(connected=False)
    async with Line(config, offline) as line:
        ops = line.controller.ops
        assert ops.actions.shadow_global and ops.health.shadow
        assert line.controller.pipeline.detector.threshold == pytest.approx(base * 1.3)
        assert ops.actions.status()[0]["inhibited"]
        again = [e for e in line.events("shadow_mode") if e["user"] == "shadow:fleet"]
        assert again and again[-1]["reason"] == "device shadow shadow_mode v5, again at start"
        assert not await line.agent.publish_report() and offline.published == []  # not connected
        assert line.agent.last_report["version"] > version
        assert await line.send("shadow_mode", False, 5) == "stale"  # the retained copy after reconnect
        offline.connected = True
        await asyncio.gather(*(cb() for cb in offline.connect_callbacks))
        assert await line.agent.publish_report() and offline.published[-1][1]["state"]["shadow_mode"]


async def test_the_margin_carries_over_to_a_reload_and_keeps_the_alarm_reachable(config, model, tmp_path):
    import dataclasses

    from controller.errors import BadRequest, ModelLoadError
    from hil_tests.rig.training import simulated_normal
    from models import StreamingDetector

    async with Line(config, FakeLink()) as line:
        ops, p = line.controller.ops, line.controller.pipeline
        base = p.model_threshold
        with pytest.raises(BadRequest, match="could never fire"):
            ops.set_threshold_margin(1.0 / base, "ann")
        assert p.threshold_margin == 1.0 and p.detector.threshold == base
        assert await line.send("threshold_margin", 1.25, 1) == "applied"
        models_dir = Path(line.controller.state_dir.path) / "models"
        models_dir.mkdir()
        shutil.copy(model, models_dir / "v2.npz")
        assert await line.send("model_version", "v2", 1) == "applied"
        assert p.detector.threshold == pytest.approx(p.model_threshold * 1.25)
        assert p.model_threshold == pytest.approx(base)  # the same fit: its own threshold, unscaled
        # a model fitted with a 1.6 times higher threshold, under a margin that keeps the current one below 1
        cfg = line.controller.config
        times, rows = simulated_normal(cfg.detector_tags(), seconds=60.0)
        spec = dataclasses.replace(cfg.detector_spec(), threshold_margin=1.6)
        StreamingDetector(cfg.detector_tags(), spec).fit(rows, times).save(tmp_path / "high.npz")
        ops.set_threshold_margin(0.99 / base, "ann")
        with pytest.raises(ModelLoadError, match="could never fire"):
            await ops.reload_model("ann", str(tmp_path / "high.npz"))
        assert line.controller.model_path == models_dir / "v2.npz"  # the refused model is not swapped in

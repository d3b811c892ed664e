"""The device shadow end to end: the real controller on the simulated plant, its MqttLink through a
TCP `Gate` to a real mosquitto, and a fleet client (aiomqtt, straight to the broker) that writes
retained desired topics and reads the retained reported document.

- desired changes are applied (journaled with their origin), a bad one is reported rejected;
- partition: the gate is cut (stop listening, connections dropped), the fleet changes desired, the
  gate is restored; both sides agree within CONVERGE_S (the measured time is printed);
- restart with the broker down: the desired state comes back from the shadow file at start, and
  the reported document reaches the broker with a higher version once it is back; the same after
  a kill -9 of a real `linesentry run` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.demo_config import demo_text
from hil_tests.rig.gate import Gate
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import free_port, wait_for
from hil_tests.rig.service_process import ServiceProcess

PREFIX = "linesentry/demo-site/demo-line/shadow"
FAST_LINK = {"keepalive_s": 2.0, "connect_timeout_s": 1.0, "backoff_initial_s": 0.2, "backoff_cap_s": 0.5}
# after the gate opens: a reconnect within backoff_cap_s, the retained desired, the apply and the
# report (DEBOUNCE_S); 5 s leaves room for a loaded 2-core machine, the figure is printed
CONVERGE_S = 5.0


def shadow_config(tmp_path: Path, rig, model: Path, broker_port: int, api_port: int | None = None) -> Path:
    text = demo_text(tmp_path / "state", model, opcua_endpoint=rig.opcua_endpoint,
                     modbus_port=rig.modbus_port, api_port=api_port)
    keys = "\n".join(f"{k} = {v}" for k, v in FAST_LINK.items())
    text += f'\n[mqtt]\nbroker = "mqtt://127.0.0.1:{broker_port}"\n{keys}\n\n[mqtt.shadow]\n'
    path = tmp_path / "line.toml"
    path.write_text(text)
    return path


class Fleet:
    """The fleet side: writes desired (retained, QoS 1), keeps every reported document it receives."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.reports: list[dict[str, Any]] = []
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Fleet:
        self._client = aiomqtt.Client(self.broker.host, self.broker.port, identifier="fleet-test")
        await self._client.__aenter__()
        await self._client.subscribe(f"{PREFIX}/reported", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self._client.messages:
            self.reports.append(json.loads(message.payload))

    async def desire(self, field: str, value: Any, version: int, by: str = "fleet") -> None:
        payload = json.dumps({"value": value, "version": version, "by": by})
        await self._client.publish(f"{PREFIX}/desired/{field}", payload, qos=1, retain=True)

    @property
    def last(self) -> dict[str, Any]:
        return self.reports[-1] if self.reports else {}

    def agrees(self, field: str, version: int) -> dict[str, Any] | None:
        """The latest report, if it has `field` at `version` accepted and nothing pending."""
        r = self.last
        ok = r.get("desired", {}).get(field, {}).get("version") == version and r.get("delta") == {}
        return r if ok else None


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
async def gate(broker):
    g = await Gate(broker.host, broker.port).start()
    yield g
    await g.stop()


async def test_desired_is_applied_journaled_and_reported(tmp_path, rig, model, broker, gate):
    controller = Controller(load_config(shadow_config(tmp_path, rig, model, gate.port)), api_port=0)
    task = await start_controller(controller)
    try:
        async with Fleet(broker) as fleet:
            await wait_for(lambda: fleet.last.get("version"), timeout=10, what="a reported document")
            first = fleet.last["version"]
            assert fleet.last["state"]["shadow_mode"] is False and fleet.last["delta"] == {}
            await fleet.desire("shadow_mode", True, 1, by="ops-console")
            # Margins stay below 1 / the demo model's threshold (about 0.92 since the predictive
            # calibration): above it the line could no longer fire, and the margin is refused.
            await fleet.desire("threshold_margin", 1.05, 1)
            await fleet.desire("threshold_margin", 7.0, 2)  # outside [0.8, 1.5]: rejected, 1.05 stays
            await fleet.desire("inhibits", {"stop_line": {"inhibited": True, "reason": "belt change"}}, 1)
            report = await wait_for(lambda: fleet.last.get("rejected") and fleet.agrees("inhibits", 1),
                                    timeout=10, what="the desired state reported in effect")
            assert report["version"] > first
            state = report["state"]
            assert state["shadow_mode"] is True and state["threshold_margin"] == 1.05
            assert state["inhibits"]["stop_line"] == {"inhibited": True, "by": "shadow:fleet",
                                                      "reason": "belt change"}
            assert report["desired"]["threshold_margin"]["version"] == 1
            assert "outside [0.8, 1.5]" in report["rejected"]["threshold_margin"]["reason"]
            ops = controller.ops
            assert ops.actions.shadow_global
            assert controller.detector.threshold == pytest.approx(controller.pipeline.model_threshold * 1.05)
            events = controller.events.since(0)
            assert any(e["source"] == "shadow_mode" and e["user"] == "shadow:ops-console" for e in events)
            assert any(e["source"] == "stop_line" and e["user"] == "shadow:fleet" for e in events)
            assert any(e["source"] == "shadow" and e.get("result") == "rejected" for e in events)
    finally:
        await stop_controller(controller, task)


async def test_both_sides_agree_after_a_partition(tmp_path, rig, model, broker, gate):
    controller = Controller(load_config(shadow_config(tmp_path, rig, model, gate.port)), api_port=0)
    task = await start_controller(controller)
    try:
        async with Fleet(broker) as fleet:
            await fleet.desire("threshold_margin", 1.02, 1)
            await wait_for(lambda: fleet.agrees("threshold_margin", 1), timeout=10, what="v1 in effect")
            await gate.stop_listening()  # the edge is cut off: no connection, none accepted
            gate.drop_connections()
            await wait_for(lambda: not controller.mqtt.connected, timeout=10, what="the link to see the cut")
            await fleet.desire("threshold_margin", 1.08, 2)
            await fleet.desire("shadow_mode", True, 1)
            await asyncio.sleep(1.0)  # while cut, the edge cannot know: nothing changes there
            assert controller.pipeline.threshold_margin == 1.02 and not controller.ops.actions.shadow_global

            opened = time.monotonic()
            await gate.start()
            await wait_for(lambda: controller.mqtt.connected, timeout=CONVERGE_S, what="the link back")
            reconnected = time.monotonic() - opened
            await wait_for(lambda: fleet.agrees("threshold_margin", 2) and fleet.agrees("shadow_mode", 1),
                           timeout=CONVERGE_S, interval=0.005, what="both sides to agree")
            converged = time.monotonic() - opened
            print(f"\nshadow partition: reconnected {reconnected:.3f} s, converged {converged:.3f} s after "
                  f"the gate opened (bound {CONVERGE_S} s; backoff cap {FAST_LINK['backoff_cap_s']} s)")
            assert controller.pipeline.threshold_margin == 1.08 and controller.ops.actions.shadow_global
            state = fleet.last["state"]
            assert state["threshold_margin"] == 1.08 and state["shadow_mode"] is True
    finally:
        await stop_controller(controller, task)


async def test_desired_survives_a_restart_with_the_broker_down(tmp_path, rig, model, broker, gate):
    config = shadow_config(tmp_path, rig, model, gate.port)
    controller = Controller(load_config(config), api_port=0)
    task = await start_controller(controller)
    try:
        async with Fleet(broker) as fleet:
            await fleet.desire("shadow_mode", True, 3)
            await fleet.desire("threshold_margin", 0.9, 4)
            await wait_for(lambda: fleet.agrees("shadow_mode", 3) and fleet.agrees("threshold_margin", 4),
                           timeout=10, what="the desired state in effect")
            before = fleet.last["version"]
    finally:
        await stop_controller(controller, task)
    broker.stop()

    controller = Controller(load_config(config), api_port=0)
    task = await start_controller(controller)
    try:
        assert not controller.mqtt.connected
        assert controller.ops.actions.shadow_global  # from the shadow file, before any broker
        assert controller.pipeline.threshold_margin == 0.9
        assert controller.detector.threshold == pytest.approx(controller.pipeline.model_threshold * 0.9)
        again = [e for e in controller.events.since(0) if e["source"] == "shadow_mode"
                 and e.get("reason", "").endswith("again at start")]
        assert again and again[-1]["user"] == "shadow:fleet"
        broker.start()
        async with Fleet(broker) as fleet:
            report = await wait_for(lambda: fleet.last if fleet.last.get("version", 0) > before else None,
                                    timeout=CONVERGE_S, what="a newer reported document, broker back")
            assert report["state"]["shadow_mode"] is True and report["delta"] == {}
            assert report["desired"]["shadow_mode"]["version"] == 3
    finally:
        await stop_controller(controller, task)


async def test_desired_survives_a_kill_9_with_the_broker_down(tmp_path, rig, model, broker):
    service = ServiceProcess(shadow_config(tmp_path, rig, model, broker.port, api_port=free_port()))
    try:
        await asyncio.to_thread(service.start)
        async with Fleet(broker) as fleet:
            await fleet.desire("shadow_mode", True, 1)
            await fleet.desire("threshold_margin", 1.06, 1)
            await wait_for(lambda: fleet.agrees("shadow_mode", 1) and fleet.agrees("threshold_margin", 1),
                           timeout=20, what="the desired state in effect")
        assert await asyncio.to_thread(service.kill9) == -9
        broker.stop()
        await asyncio.to_thread(service.start)
        status = await asyncio.to_thread(service.get, "/status")
        assert status["controller"]["shadow"] is True and status["detector"]["threshold_margin"] == 1.06
        assert [p["kind"] for p in status["protections_disabled"]] == ["shadow", "threshold_margin"]
        events = await asyncio.to_thread(service.events)
        assert any(e["source"] == "shadow_mode" and e.get("reason", "").endswith("again at start")
                   for e in events)
        assert await asyncio.to_thread(service.stop) == 0
    finally:
        service.close()

"""The device shadow against a hostile fleet on a real mosquitto: the broker ACL docs/shadow.md gives
is the real authorisation, so it must let the edge and the fleet do their part and nothing more
(the fleet cannot forge the line's reported document), and garbage left retained on the desired
topics must not stop the edge from converging on the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import aiomqtt

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.test_shadow import PREFIX, shadow_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "shadow.md"
USERS = {"fleet": "fleet-secret", "line-demo": "line-secret"}


def docs_acl() -> str:
    """The mosquitto acl_file text docs/shadow.md recommends (the code block after 'for mosquitto')."""
    match = re.search(r"for mosquitto:\n\n```\n(.*?)```", DOCS.read_text(), re.S)
    assert match, "docs/shadow.md has no mosquitto ACL block"
    return match.group(1)


class Client:
    """A raw MQTT client (as a fleet would be) that keeps what it receives."""

    def __init__(self, broker: Mosquitto, user: str, topic: str) -> None:
        self.client = aiomqtt.Client(broker.host, broker.port, username=user, password=USERS[user],
                                     identifier=f"{user}-adversary")
        self.topic, self.received = topic, []
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Client:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self.client.messages:
            self.received.append((str(message.topic), message.payload))

    def reports(self) -> list[dict]:
        return [json.loads(p) for t, p in self.received if t == f"{PREFIX}/reported"]


async def test_the_documented_acl_lets_each_side_do_its_part_and_nothing_more(tmp_path, rig, model,
                                                                              monkeypatch):
    monkeypatch.setenv("LINESENTRY_MQTT_USERNAME", "line-demo")
    monkeypatch.setenv("LINESENTRY_MQTT_PASSWORD", USERS["line-demo"])
    with Mosquitto(tmp_path, acl=docs_acl(), users=USERS) as broker:
        controller = Controller(load_config(shadow_config(tmp_path, rig, model, broker.port)), api_port=0)
        task = await start_controller(controller)
        try:
            async with Client(broker, "fleet", f"{PREFIX}/reported") as fleet:
                # garbage and an unknown field left retained on desired topics: rejected, not in the way
                for field, payload in (("shadow_mode", b"\xff\xfe not json"), ("no_such_field", b"{}")):
                    await fleet.client.publish(f"{PREFIX}/desired/{field}", payload, qos=1, retain=True)
                desired = {"value": True, "version": 2, "by": "fleet"}
                await fleet.client.publish(f"{PREFIX}/desired/shadow_mode", json.dumps(desired), qos=1,
                                           retain=True)
                report = await wait_for(
                    lambda: next((r for r in reversed(fleet.reports())
                                  if r["desired"].get("shadow_mode", {}).get("version") == 2
                                  and "no_such_field" in r["rejected"]), None),
                    timeout=10, what="shadow_mode v2 in effect and the unknown field rejected")
                assert report["state"]["shadow_mode"] is True and report["delta"] == {}
                assert controller.ops.actions.shadow_global
                # the fleet forges the line's reported document: the broker must refuse it
                forged = {"version": 10**12, "state": {"shadow_mode": False}, "forged": True}
                await fleet.client.publish(f"{PREFIX}/reported", json.dumps(forged), qos=1, retain=True)
                await asyncio.sleep(0.5)
                assert not any(r.get("forged") for r in fleet.reports())
            # and what stays retained for the next reader is the edge's own
            async with Client(broker, "fleet", f"{PREFIX}/reported") as reader:
                retained = await wait_for(lambda: reader.reports(), timeout=5, what="the retained report")
                assert not retained[-1].get("forged") and retained[-1]["state"]["shadow_mode"] is True
        finally:
            await stop_controller(controller, task)

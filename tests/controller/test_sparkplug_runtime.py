"""The Sparkplug node in the running controller, against a real mosquitto: the node is born without
its PLC (a Modbus PLC on a closed port has no DBIRTH), status shows the link, a start that fails
(an unknown deadband tag) unwinds, a primary host's STATE holds the births back until it is online,
and a controller without [mqtt] never imports the MQTT client or protobuf."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from controller.config import load_config
from controller.errors import BadRequest
from controller.runtime import Controller
from controller.sparkplug.payload import decode
from hil_tests.rig.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
LINE = """
[controller]
site = "test"
line = "spb"
state_dir = "{state}"

[[modbus]]
name = "press"
host = "127.0.0.1"
port = {port}
poll_interval_s = 0.1
  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  dtype = "uint16"
  address = 0
"""
MQTT = """
[mqtt]
broker = "{url}"
backoff_initial_s = 0.05
backoff_cap_s = 0.2
[mqtt.sparkplug]
tag_interval_s = 0.1
"""


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "line.toml"
    path.write_text(LINE.format(state=tmp_path / "state", port=closed_port()) + extra)
    return path


async def until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return value


class Watcher:
    """Every message under spBv1.0/#, decoded."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker, self.got, self._task = broker, [], None

    async def __aenter__(self) -> Watcher:
        ready = asyncio.Event()

        async def watch() -> None:
            async with aiomqtt.Client(self.broker.host, self.broker.port, identifier="t-watch") as c:
                await c.subscribe("spBv1.0/#", qos=1)
                ready.set()
                async for m in c.messages:
                    parts = str(m.topic).split("/")
                    kind = "STATE" if parts[1] == "STATE" else parts[2]
                    self.got.append((kind, str(m.topic), None if kind == "STATE" else decode(m.payload)))

        self._task = asyncio.create_task(watch())
        await asyncio.wait_for(ready.wait(), 5)
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.got]


async def publish_state(broker: Mosquitto, host_id: str, online: bool) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"t-{host_id}") as c:
        await c.publish(f"spBv1.0/STATE/{host_id}", json.dumps({"online": online, "timestamp": 1}), qos=1,
                        retain=True)


async def test_the_node_is_born_without_its_lost_plc_and_status_shows_the_link(tmp_path):
    with Mosquitto(tmp_path) as broker:
        async with Watcher(broker) as w:
            config = load_config(line(tmp_path, MQTT.format(url=broker.url)))
            async with Controller(config, api_port=0) as c:
                await until(lambda: "NBIRTH" in w.kinds())
                status = c.status()["mqtt"]
                assert status["connected"] and status["sparkplug"]["born"]
                assert status["sparkplug"]["devices_born"] == [] and status["sparkplug"]["backlog"] == 0
                await asyncio.sleep(0.5)
                assert "DBIRTH" not in w.kinds() and "DDATA" not in w.kinds()  # the PLC never delivered
            await until(lambda: "NDEATH" in w.kinds())
            (_, topic, nbirth), = [g for g in w.got if g[0] == "NBIRTH"]
            assert topic == "spBv1.0/test/NBIRTH/spb" and nbirth.seq == 0
            (_, _, ndeath), = [g for g in w.got if g[0] == "NDEATH"]
            assert ndeath.metrics[0].value == nbirth.metrics[0].value  # the bdSeq of the session


async def test_a_failed_start_unwinds_the_mqtt_link(tmp_path):
    with Mosquitto(tmp_path) as broker:
        async with Watcher(broker) as w:
            config = load_config(line(tmp_path, MQTT.format(url=broker.url) + "deadbands = { nope = 1.0 }\n"))
            c = Controller(config, api_port=0)
            with pytest.raises(BadRequest, match="deadbands: no tag named 'nope'"):
                await c.start()
            await asyncio.sleep(0.5)
            assert w.kinds() == [] and c.mqtt is not None and not c.mqtt.connected
            assert [t for t in asyncio.all_tasks() if t.get_name() in ("mqtt", "sparkplug")] == []


async def test_a_primary_host_offline_holds_the_births_and_its_return_brings_them(tmp_path):
    with Mosquitto(tmp_path) as broker:
        await publish_state(broker, "scada", False)
        async with Watcher(broker) as w:
            config = load_config(line(tmp_path, MQTT.format(url=broker.url) + 'primary_host_id = "scada"\n'))
            async with Controller(config, api_port=0) as c:
                await until(lambda: c.mqtt.connected)
                await asyncio.sleep(0.5)
                assert "NBIRTH" not in w.kinds()
                assert c.status()["mqtt"]["sparkplug"]["primary_host_online"] is False
                await publish_state(broker, "scada", True)
                await until(lambda: "NBIRTH" in w.kinds())
                await publish_state(broker, "scada", False)
                await until(lambda: c.sparkplug.host_online is False)
                await publish_state(broker, "scada", True)
                await until(lambda: w.kinds().count("NBIRTH") == 2)  # back online: born again


def test_a_controller_without_mqtt_never_imports_the_mqtt_client_or_protobuf(tmp_path):
    path = line(tmp_path)
    code = (f"import asyncio, sys\nfrom controller.config import load_config\n"
            f"from controller.runtime import Controller\nasync def main():\n"
            f"    async with Controller(load_config({str(path)!r}), api_port=0):\n"
            f"        await asyncio.sleep(0.2)\nasyncio.run(main())\n"
            f"print(','.join(m for m in ('aiomqtt', 'paho', 'google.protobuf') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1:] in ([], [""]), proc.stdout

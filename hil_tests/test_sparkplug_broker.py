"""The node's broker connection as a plant would configure it, seen by the independent host:
TLS with a CA and a client certificate plus a username/password from the environment, against
mosquitto configured for exactly that; and protocol "auto" against a broker that speaks only
MQTT 3.1.1 (a proxy in front of mosquitto refusing MQTT 5 CONNECTs the way a 3.1.1 broker does).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import paho.mqtt.client as mqtt

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import config_for_rig, start_controller, stop_controller
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.sparkplug_host import HostTls, SparkplugHost, mqtt_tables

GROUP, NODE = "demo-site", "demo-line"


def node_config(tmp_path: Path, rig, model: Path, url: str, **mqtt_keys) -> Path:
    path = config_for_rig(rig, tmp_path / "state", model, tmp_path / "line.toml")
    keys = {"connect_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_cap_s": 1.0, **mqtt_keys}
    path.write_text(path.read_text() + mqtt_tables(url, mqtt_keys=keys, sparkplug={"tag_interval_s": 0.5}))
    return path


def mqtt_status(controller: Controller) -> dict:
    """The "mqtt" part of the controller's status (what /api/v1/status answers)."""
    return controller.ops.status()["mqtt"]


async def births_arrive(host: SparkplugHost, controller: Controller, task: asyncio.Task) -> None:
    try:
        await wait_for(lambda: host.of("NBIRTH") and len(host.of("DBIRTH")) >= 2, timeout=15,
                       what="the births through the broker")
        await wait_for(lambda: host.of("DDATA"), timeout=5, what="data after the births")
    finally:
        await stop_controller(controller, task)
    assert host.violations == []


async def test_tls_with_client_certificate_and_credentials_from_the_environment(
        tmp_path, rig, model, monkeypatch):
    monkeypatch.setenv("LINESENTRY_MQTT_USERNAME", "line")
    monkeypatch.setenv("LINESENTRY_MQTT_PASSWORD", "s3cret")
    with Mosquitto(tmp_path, tls=True, users={"line": "s3cret", "scada": "other"}) as broker:
        tls = HostTls(str(broker.ca_file), str(broker.cert_file), str(broker.key_file))
        with SparkplugHost(broker.host, broker.port, GROUP, tls=tls, username="scada",
                           password="other") as host:
            path = node_config(tmp_path, rig, model, broker.url, ca_file=str(broker.ca_file),
                               cert_file=str(broker.cert_file), key_file=str(broker.key_file))
            controller = Controller(load_config(path), api_port=0)
            await births_arrive(host, controller, await start_controller(controller))
            assert host.of("NBIRTH")[0].topic == f"spBv1.0/{GROUP}/NBIRTH/{NODE}"


async def test_a_wrong_password_publishes_nothing_and_the_controller_runs_on(
        tmp_path, rig, model, monkeypatch):
    monkeypatch.setenv("LINESENTRY_MQTT_USERNAME", "line")
    monkeypatch.setenv("LINESENTRY_MQTT_PASSWORD", "wrong")
    with Mosquitto(tmp_path, users={"line": "s3cret", "scada": "other"}) as broker, \
            SparkplugHost(broker.host, broker.port, GROUP, username="scada", password="other") as host:
        controller = Controller(load_config(node_config(tmp_path, rig, model, broker.url)), api_port=0)
        task = await start_controller(controller)
        try:
            status = await wait_for(lambda: (s := mqtt_status(controller))["last_error"] and s, timeout=10,
                                    what="the refused connect in the status")
            await asyncio.sleep(1.0)
            assert host.messages == [] and not task.done()
            assert not status["connected"] and status["connects"] == 0, status
        finally:
            await stop_controller(controller, task)


class Mqtt311Only:
    """A TCP proxy to a broker that answers an MQTT 5 CONNECT as a 3.1.1-only broker does
    (CONNACK return code 1, unacceptable protocol version, then close) and forwards 3.1.1."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.refused = self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> Mqtt311Only:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._open:
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(2)
            length, shift, more = head[1] & 0x7F, 7, head[1] & 0x80
            while more:  # the remaining length is a varint
                b = (await reader.readexactly(1))[0]
                head += bytes([b])
                length, shift, more = length | (b & 0x7F) << shift, shift + 7, b & 0x80
            body = await reader.readexactly(length)
            level = body[2 + int.from_bytes(body[:2], "big")]  # after the protocol name
            if level >= 5:
                self.refused += 1
                writer.write(bytes([0x20, 0x02, 0x00, 0x01]))
                await writer.drain()
                return
            self.forwarded += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._open |= {writer, up_writer}
            up_writer.write(head + body)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_protocol_auto_falls_back_to_mqtt_311(tmp_path, rig, model):
    with Mosquitto(tmp_path) as broker, \
            SparkplugHost(broker.host, broker.port, GROUP, protocol=mqtt.MQTTv311) as host:
        proxy = await Mqtt311Only(broker.port).start()
        try:
            path = node_config(tmp_path, rig, model, f"mqtt://127.0.0.1:{proxy.port}", protocol="auto")
            controller = Controller(load_config(path), api_port=0)
            task = await start_controller(controller)
            await wait_for(lambda: mqtt_status(controller)["connected"], timeout=10, what="connected")
            assert mqtt_status(controller)["protocol"] == "3.1.1"
            await births_arrive(host, controller, task)
        finally:
            await proxy.stop()
        assert proxy.refused >= 1 and proxy.forwarded >= 1, (proxy.refused, proxy.forwarded)

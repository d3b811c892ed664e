"""The MQTT link and the Sparkplug node against a hostile network and careless hosts: a broker that
accepts TCP and never answers, refused commands in floods and with huge or unprintable values,
tag values at infinity. Brokers that misbehave are plain TCP servers in the test (they speak no
MQTT at all); the rest is the pure logic of the node's modules."""

from __future__ import annotations

import asyncio
import time

from controller.config.mqtt import MqttConfig
from controller.mqtt.session import MqttLink


class SilentBroker:
    """Accepts TCP connections, reads what comes, never answers: counts the connections still open."""

    def __init__(self) -> None:
        self.accepted = self.open = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentBroker:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            while await reader.read(4096):
                pass
        finally:
            self.open -= 1
            writer.close()


async def test_a_broker_that_never_sends_connack_gets_no_pile_of_half_open_connections():
    async with SilentBroker() as broker:
        cfg = MqttConfig.model_validate({"broker": broker.url, "connect_timeout_s": 0.2, "keepalive_s": 10.0,
                                         "backoff_initial_s": 0.05, "backoff_cap_s": 0.05})
        link = MqttLink(cfg, client_id="t-silent")
        began = time.monotonic()
        await link.start()
        assert time.monotonic() - began < 0.1  # start never waits for the broker
        try:
            await asyncio.sleep(2.0)
            assert broker.accepted >= 5 and not link.connected
            assert broker.open <= 1, f"{broker.open} connections of failed attempts left open"
            assert "timed out" in link.stats.last_error or "CONNACK" in link.stats.last_error
        finally:
            began = time.monotonic()
            await link.stop()
            assert time.monotonic() - began < 1.0
        await asyncio.sleep(0.3)
        assert broker.open == 0, "a connect attempt cut short by the stop left its socket open"

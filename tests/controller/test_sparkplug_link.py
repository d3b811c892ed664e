"""`MqttLink` (controller/mqtt/session.py) against a real mosquitto: publish with PUBACK, handlers kept
across a broker restart, a publish that fails fast (never hangs) while the broker is away, the will
sent by the broker when the link dies, TLS with a client certificate and username/password from
the environment. Each test starts its own broker and fails if it cannot."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import pytest

from controller.config.mqtt import MqttConfig
from controller.mqtt.session import MqttLink, MqttUnavailable, WillMessage
from hil_tests.rig.mosquitto import Mosquitto


def config(broker: Mosquitto, **extra) -> MqttConfig:
    return MqttConfig.model_validate({"broker": broker.url, "backoff_initial_s": 0.05, "backoff_cap_s": 0.2,
                                      "connect_timeout_s": 2.0, **extra})


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as b:
        yield b


async def test_publish_subscribe_and_resubscribe_after_a_broker_restart(broker):
    link = MqttLink(config(broker), client_id="t-link")
    got: list[tuple[str, bytes, bool]] = []
    connects: list[int] = []

    async def counted() -> None:
        connects.append(len(connects))

    link.subscribe("t/in/#", lambda topic, payload, retained: got.append((topic, payload, retained)))
    link.on_connect(counted)
    await link.start()
    try:
        assert await link.wait_connected(10)
        await link.publish("t/in/a", b"one")  # QoS 1: returns after the PUBACK
        await until(lambda: got == [("t/in/a", b"one", False)])
        broker.kill()
        await until(lambda: not link.connected)
        began = time.monotonic()
        with pytest.raises(MqttUnavailable):
            await link.publish("t/in/a", b"lost")
        assert time.monotonic() - began < 0.5  # not connected: refused at once
        broker.start()
        await until(lambda: link.connected and len(connects) == 2)
        await link.publish("t/in/b", b"two")
        await until(lambda: got[-1] == ("t/in/b", b"two", False))  # the subscription came back
    finally:
        await link.stop()
    assert not link.connected


async def test_the_broker_sends_the_will_when_the_link_dies_and_not_on_a_clean_stop(broker):
    seen: list[bytes] = []

    async def watch() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="t-watcher") as c:
            await c.subscribe("t/will")
            async for m in c.messages:
                seen.append(bytes(m.payload))

    watcher = asyncio.create_task(watch())
    wills = iter(range(100))
    link = MqttLink(config(broker, keepalive_s=1.0), client_id="t-will")
    link.set_will(lambda: WillMessage("t/will", f"will {next(wills)}".encode()))
    await link.start()
    try:
        assert await link.wait_connected(10)
        await link.stop()  # clean DISCONNECT: no will ("will 0" would come before "will 1" below)
        # a new session takes a new will (the provider is asked before each connect)
        link2 = MqttLink(config(broker, keepalive_s=1.0), client_id="t-will")
        link2.set_will(lambda: WillMessage("t/will", f"will {next(wills)}".encode()))
        await link2.start()
        assert await link2.wait_connected(10)
        # the same client id connecting again takes the session over: the old one's will is sent
        takeover = await asyncio.wait_for(aiomqtt.Client(broker.host, broker.port,
                                                         identifier="t-will").__aenter__(), 5)
        await until(lambda: seen == [b"will 1"])  # and never "will 0": the clean stop sent none
        await takeover.__aexit__(None, None, None)
        await link2.stop()
    finally:
        watcher.cancel()


async def test_a_publish_never_waits_past_the_connect_timeout(broker):
    link = MqttLink(config(broker, connect_timeout_s=0.5), client_id="t-hang")
    await link.start()
    try:
        assert await link.wait_connected(10)
        broker.proc.send_signal(19)  # SIGSTOP: the socket stays open, no PUBACK ever comes
        began = time.monotonic()
        with pytest.raises(MqttUnavailable):
            await link.publish("t/x", b"x")
        assert time.monotonic() - began < 1.5
    finally:
        broker.proc.send_signal(18)  # SIGCONT
        await link.stop()


async def test_tls_with_a_client_certificate_and_a_password_from_the_environment(tmp_path, monkeypatch):
    with Mosquitto(tmp_path, tls=True, users={"line": "s3cret"}) as broker:
        monkeypatch.setenv("T_MQTT_USER", "line")
        monkeypatch.setenv("T_MQTT_PASS", "s3cret")
        cfg = config(broker, ca_file=str(broker.ca_file), cert_file=str(broker.cert_file),
                     key_file=str(broker.key_file), username_env="T_MQTT_USER", password_env="T_MQTT_PASS")
        link = MqttLink(cfg, client_id="t-tls")
        got: list[bytes] = []
        link.subscribe("t/tls", lambda t, p, r: got.append(p))
        await link.start()
        try:
            assert await link.wait_connected(10)
            assert link.protocol == "5"
            await link.publish("t/tls", b"secure")
            await until(lambda: got == [b"secure"])
        finally:
            await link.stop()
        monkeypatch.setenv("T_MQTT_PASS", "wrong")
        link = MqttLink(cfg, client_id="t-tls-bad")
        await link.start()
        try:
            assert not await link.wait_connected(1.5)  # refused login: keeps retrying, never connected
            assert link.stats.failures >= 1
        finally:
            await link.stop()

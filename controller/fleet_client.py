"""The fleet side of the device shadow, for the CLI: read retained shadow topics, write a desired
field, wait for the lines' reports (docs/shadow.md). Synchronous paho-mqtt, one connection per command.

Retained messages are read with a barrier: after the SUBACK the client sends an UNSUBSCRIBE of a
topic it never subscribed, and the broker answers it only after the retained messages it queued for
the earlier SUBSCRIBE (brokers process a client's packets in order), so "no retained message" is
known without waiting a guessed time.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from controller.errors import LinesentryError

MAX_VERSION = 2**53
PASSWORD_ENV = "LINESENTRY_MQTT_PASSWORD"
DEFAULT_PREFIX = "linesentry/{site}/{line}/shadow"


class FleetError(LinesentryError):
    """The broker cannot be reached or refused us (a runtime failure: exit 1)."""

    status = 503


class BadBroker(LinesentryError, ValueError):
    """The --broker / --prefix given cannot be used (a user mistake: exit 2)."""

    status = 400


def parse_broker(text: str) -> tuple[str, int, bool]:
    """HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] -> (host, port, tls)."""
    t = text.strip()
    tls = t.startswith("mqtts://")
    for scheme in ("mqtt://", "mqtts://"):
        t = t.removeprefix(scheme)
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = t, ("8883" if tls else "1883")
    if not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadBroker(f"--broker {text!r} is not HOST:PORT (e.g. broker.plant.local:1883 or mqtts://host:8883)")
    return host.strip("[]"), int(port), tls


def topic_prefix(template: str, site: str, line: str) -> str:
    try:
        prefix = template.format(site=site, line=line)
    except (KeyError, IndexError, ValueError) as exc:
        raise BadBroker(f"--prefix {template!r} is not a template with {{site}} and {{line}}: "
                        f"{exc}") from None
    if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        raise BadBroker(f"--prefix gives {prefix!r}: not an MQTT topic without wildcards or edge '/'")
    return prefix


def next_version(seen: list[Any], now_ms: int | None = None) -> int:
    """max(now in ms, highest version seen + 1): above the edge's own decisions and any earlier writer."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    known = [int(v) for v in seen if isinstance(v, int) and not isinstance(v, bool)]
    return min(MAX_VERSION, max([now, *(v + 1 for v in known)]))


@dataclass
class _Inbox:
    messages: queue.Queue = field(default_factory=queue.Queue)
    retained: dict[str, Any] = field(default_factory=dict)


class FleetClient:
    """One MQTT connection to the fleet's broker (context manager)."""

    def __init__(self, broker: str, *, tls_ca: str | None = None, username: str | None = None,
                 timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        self.host, self.port, tls = parse_broker(broker)
        self.timeout = timeout
        self._connected = threading.Event()
        self._connect_rc: Any = None
        self._acks: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.inbox = _Inbox()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"linesentry-cli-{uuid.uuid4().hex[:12]}", clean_session=True)
        if tls or tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        if username:
            self.client.username_pw_set(username, os.environ.get(PASSWORD_ENV))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack

    # paho callbacks (its network thread)
    def _on_connect(self, client, userdata, flags, rc, properties=None) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = None
        self.inbox.messages.put((msg.topic, payload))

    def _on_ack(self, client, userdata, mid, *rest) -> None:
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        event.set()

    def _wait_ack(self, mid: int, what: str) -> None:
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
        if not event.wait(self.timeout):
            raise FleetError(f"broker {self.host}:{self.port} did not answer the {what} "
                             f"within {self.timeout:g} s")

    def __enter__(self) -> FleetClient:
        where = f"{self.host}:{self.port}"
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise FleetError(f"cannot reach the MQTT broker {where}: {exc.strerror or exc} "
                             "(check --broker, the network and the broker)") from None
        self.client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise FleetError(f"MQTT broker {where} did not answer the connect within {self.timeout:g} s")
        if self._connect_rc is not None and getattr(self._connect_rc, "is_failure", False):
            self.close()
            raise FleetError(f"MQTT broker {where} refused the connection: {self._connect_rc} "
                             f"(check --username, ${PASSWORD_ENV}, --tls-ca)")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def read_retained(self, topics: list[str]) -> dict[str, Any]:
        """The retained payload (parsed JSON; None when not JSON) of each topic that has one; the
        topics stay subscribed, so later publishes arrive through `messages()`."""
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        if rc != 0:
            raise FleetError(f"subscribe failed on {self.host}:{self.port} (code {rc})")
        self._wait_ack(mid, "subscribe")
        rc, mid = self.client.unsubscribe(f"linesentry-cli/barrier/{uuid.uuid4().hex}")
        self._wait_ack(mid, "unsubscribe")
        found: dict[str, Any] = {}
        for topic, payload in self.drain():
            found[topic] = payload
        return found

    def drain(self) -> list[tuple[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.inbox.messages.get_nowait())
            except queue.Empty:
                return out

    def next_message(self, timeout: float) -> tuple[str, Any] | None:
        try:
            return self.inbox.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def publish_retained(self, topic: str, payload: dict) -> None:
        """Publish retained at QoS 1 and wait for the broker's PUBACK."""
        info = self.client.publish(topic, json.dumps(payload), qos=1, retain=True)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            raise FleetError(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise FleetError(f"broker {self.host}:{self.port} did not acknowledge the publish to {topic} "
                             f"within {self.timeout:g} s")

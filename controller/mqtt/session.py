"""One MQTT connection for the whole controller (Sparkplug B node, device shadow), kept up forever.

`MqttLink` owns one aiomqtt client at a time. Its task connects, restores every subscription, runs
the `on_connect` callbacks in the order they were registered (births, reported state), then
dispatches incoming messages to the handlers, one at a time in arrival order. When the broker goes
away the client is dropped and a new one connects after a `drivers.supervisor.Backoff` delay (the
same jittered, capped rules as the PLC sessions); the backoff is reset once a session has stayed up
for STABLE_AFTER_S. Before each connect the will provider (if any) gives the will message, so the
Sparkplug node can put the bdSeq of that very session into its NDEATH.

`publish` never waits for a broker that is not there: it raises `MqttUnavailable` at once when not
connected, and when the PUBACK (QoS 1) has not come within connect_timeout_s or the session breaks
while it waits. The caller decides what to keep (the Sparkplug node commits it to the outbox).
A PUBACK that does not come in time also ends the session (the client holds every unconfirmed
message until its session ends: a broker that answers pings and confirms nothing would grow it
forever); a PUBACK that refuses (MQTT 5 reason code, e.g. the broker's ACL) is no confirmation.

Protocol "auto" asks for MQTT 5 and falls back to 3.1.1, for the rest of the run, when the broker
answered but refused the protocol (a 3.1.1 broker answers CONNACK 1, "unacceptable protocol
version", or closes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.errors import LinesentryError
from controller.tasks import cancel_and_wait
from drivers.supervisor import Backoff

if TYPE_CHECKING:
    from controller.config.mqtt import MqttConfig

log = logging.getLogger(__name__)

IN_FLIGHT_WARNING = 500  # publishes awaiting their PUBACK before aiomqtt warns (several replay batches)
STABLE_AFTER_S = 10.0  # a session up this long resets the backoff (a flapping broker keeps backing off)
# CONNACK codes that mean "I do not speak that protocol": 3.1.1's 1, MQTT 5's 0x84 (132)
PROTOCOL_REFUSED = (1, 132)
# MQTT 5 Maximum Packet Size we announce: the broker drops what is bigger for us. Commands, STATE and
# desired shadow fields are a few kB; a 50 MB NCMD stalled the event loop (the PLC polls) ~0.5 s.
MAX_INBOUND_BYTES = 1 << 20

Handler = Callable[[str, bytes, bool], None | Awaitable[None]]  # (topic, payload, retained)


class MqttUnavailable(LinesentryError):
    """The broker is not connected, or a publish was not confirmed in time (the message may be lost)."""

    status = 503


@dataclass(frozen=True)
class WillMessage:
    """The message the broker publishes for us when our session ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass
class LinkStats:
    connects: int = 0  # sessions established
    failures: int = 0  # connect attempts that failed and sessions lost
    published: int = 0  # publishes confirmed (PUBACK for QoS 1, written for QoS 0)
    publish_failures: int = 0
    received: int = 0
    handler_errors: int = 0
    refused_publishes: int = 0  # PUBACKs with a failure reason code (MQTT 5: not authorized, quota)
    last_error: str = ""


class MqttLink:
    """One broker connection, reconnected forever; see the module docstring.

        link = MqttLink(cfg.mqtt, client_id="linesentry-site-line")
        link.subscribe("spBv1.0/g/NCMD/n", handler)    # kept across reconnects
        link.on_connect(births)                          # after each (re)connect, in order
        await link.start()                               # returns at once; connects in its task
        await link.publish(topic, payload, qos=1)        # after PUBACK, or MqttUnavailable
        await link.stop()
    """

    def __init__(self, config: MqttConfig, *, client_id: str) -> None:
        self.config = config
        self.client_id = client_id
        self.connected = False
        self.protocol = "" if config.protocol == "auto" else config.protocol  # the one in use
        self.stats = LinkStats()
        self.backoff = Backoff(config.backoff_initial_s, cap=config.backoff_cap_s)
        self._subscriptions: dict[str, tuple[Handler, int]] = {}
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._will: Callable[[], WillMessage | None] | None = None
        self._client: aiomqtt.Client | None = None
        self._lost: asyncio.Event | None = None  # set when the current session breaks
        self._up = asyncio.Event()  # set while connected (after on_connect callbacks ran)
        self._task: asyncio.Task | None = None
        self._refused = ""  # the reason code of the last refused publish
        self._dropping = ""  # why the link itself is ending the session (its last_error)

    # -- set-up (before or after start) --------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Call `handler(topic, payload, retained)` for each message on `topic_filter`, from now on and
        after every reconnect. Subscribing again to the same filter replaces its handler."""
        self._subscriptions[topic_filter] = (handler, qos)
        client = self._client
        if client is not None and self.connected:
            task = asyncio.get_running_loop().create_task(self._subscribe_now(client, topic_filter, qos))
            task.add_done_callback(_log_failure)

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback()` after each (re)connect, once the subscriptions are restored."""
        self._on_connect.append(callback)

    def set_will(self, provider: Callable[[], WillMessage | None]) -> None:
        """`provider()` is called before each connect attempt: its message is that session's will."""
        self._will = provider

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task; it returns at once (the broker may well be down)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt")

    async def stop(self) -> None:
        """Disconnect cleanly (no will published) and end the task."""
        task, self._task = self._task, None
        if task is not None:  # the session's exit sends a DISCONNECT: the broker drops the will
            await cancel_and_wait([task])
        self.connected = False
        self._up.clear()

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected (and the on_connect callbacks ran), False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- publishing ------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and return after the PUBACK (QoS 1) or the write (QoS 0). Raises `MqttUnavailable`
        when not connected, when the session breaks meanwhile, or after connect_timeout_s."""
        await self.send(topic, payload, qos=qos, retain=retain)

    def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Awaitable[None]:
        """Start a publish now and return its confirmation to await (as `publish`). Messages go out
        in the order of these calls (each publish task's first step hands its message to the client,
        and asyncio runs new tasks in order), so a caller may number them under a lock and wait for
        the PUBACKs outside it, several in flight. Raises `MqttUnavailable` at once when not connected."""
        client, lost = self._client, self._lost
        if client is None or lost is None or not self.connected:
            self.stats.publish_failures += 1
            raise MqttUnavailable(f"not connected to the MQTT broker {self.config.broker}")
        sending = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain,
                                                       timeout=math.inf))
        return self._confirmed(topic, client, sending, lost, self.stats.refused_publishes)

    async def _confirmed(self, topic: str, client: aiomqtt.Client, sending: asyncio.Future,
                         lost: asyncio.Event, refused_before: int) -> None:
        broken = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait((sending, broken), timeout=self.config.connect_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            broken.cancel()
            if not sending.done():
                sending.cancel()
        if sending not in done:
            self.stats.publish_failures += 1
            if broken in done:
                raise MqttUnavailable(f"publish to {topic} not confirmed: the session broke")
            # A broker that keeps the session up (answers pings) but confirms nothing: the client
            # keeps each unconfirmed message for its whole session, so that session must end (a
            # new one starts after the backoff, with births; what was not confirmed is stored).
            why = f"no PUBACK within {self.config.connect_timeout_s:g} s"
            if not lost.is_set() and not self._dropping:  # (once for all the publishes in flight)
                self._dropping = f"{why}: session dropped"
                log.warning("MQTT %s: %s; dropping the session", self.config.broker, why)
                _abandon(client)
            raise MqttUnavailable(f"publish to {topic} not confirmed: {why}")
        try:
            sending.result()
        except aiomqtt.MqttError as exc:
            self.stats.publish_failures += 1
            raise MqttUnavailable(f"publish to {topic} failed: {exc}") from exc
        if self.stats.refused_publishes != refused_before:  # maybe this one: not confirmed (at least once)
            self.stats.publish_failures += 1
            raise MqttUnavailable(f"publish to {topic} not confirmed: the broker refused a publish meanwhile "
                                  f"({self._refused})")
        self.stats.published += 1

    # -- the connection task ---------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the broker or a handler must not end the task
                self.stats.failures += 1
                self.stats.last_error = self._dropping or f"{type(exc).__name__}: {exc}"
                self._dropping = ""
                level = logging.WARNING if self.stats.failures == 1 or self.connected else logging.DEBUG
                log.log(level, "MQTT %s: %s; reconnecting", self.config.broker, self.stats.last_error)
            finally:
                self._down()
            if time.monotonic() - started >= STABLE_AFTER_S:
                self.backoff.reset()
            await asyncio.sleep(self.backoff.next_delay())

    async def _session(self) -> None:
        """One session: connect (falling back to 3.1.1 if asked), restore, dispatch until it breaks."""
        protocol = self.protocol or "5"
        try:
            client = await self._connect(protocol)
        except aiomqtt.MqttError as exc:
            if self.protocol or not _protocol_refused(exc):
                raise
            log.warning("MQTT %s refused MQTT 5 (%s): using MQTT 3.1.1", self.config.broker, exc)
            protocol = "3.1.1"
            client = await self._connect(protocol)
        self.protocol = protocol
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_exit(client.__aexit__)
            self._client, self._lost = client, asyncio.Event()
            self.connected = True
            self.stats.connects += 1
            if self.stats.failures:
                log.warning("MQTT %s: connected (MQTT %s) after %d failure(s)", self.config.broker,
                            self.protocol, self.stats.failures)
            else:
                log.info("MQTT %s: connected (MQTT %s)", self.config.broker, self.protocol)
            for topic_filter, (_, qos) in list(self._subscriptions.items()):
                await client.subscribe(topic_filter, qos=qos, timeout=self.config.connect_timeout_s)
            for callback in list(self._on_connect):
                await callback()
            self._up.set()
            async for message in client.messages:
                await self._dispatch(str(message.topic), _payload(message.payload), bool(message.retain))

    async def _connect(self, protocol: str) -> aiomqtt.Client:
        c = self.config
        will = self._will() if self._will is not None else None
        username, password = c.credentials()
        tls = None
        if c.tls:
            _check_readable(c)
            tls = aiomqtt.TLSParameters(ca_certs=str(c.ca_file) if c.ca_file else None,
                                        certfile=str(c.cert_file) if c.cert_file else None,
                                        keyfile=str(c.key_file) if c.key_file else None,
                                        cert_reqs=ssl.CERT_REQUIRED)
        client = aiomqtt.Client(
            c.host, c.port, username=username, password=password, identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
            clean_session=None if protocol == "5" else True, keepalive=max(1, math.ceil(c.keepalive_s)),
            timeout=c.connect_timeout_s, tls_params=tls, properties=_connect_properties() if protocol == "5"
            else None)
        # aiomqtt warns at every publish while more than 10 await their PUBACK: the Sparkplug replay
        # keeps a batch of 50 in flight by design, which made a warning line per replayed message
        client.pending_calls_threshold = IN_FLIGHT_WARNING
        closed = _closed_event(client)
        entering = asyncio.ensure_future(client.__aenter__())
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait((entering, closing), timeout=c.connect_timeout_s + 1.0,
                               return_when=asyncio.FIRST_COMPLETED)
            if not entering.done():
                entering.cancel()
                if closing.done():  # aiomqtt would wait for its timeout: it ignores a close before CONNACK
                    raise BrokerClosed("the broker closed the connection before its CONNACK")
                raise aiomqtt.MqttError(f"no CONNACK within {c.connect_timeout_s:g} s") from TimeoutError()
            entering.result()
        except BaseException:  # a refusal, aiomqtt's own timeout, a stop during the connect
            entering.cancel()
            _abandon(client)
            raise
        finally:
            closing.cancel()
        self._check_pubacks(client)
        return client

    def _check_pubacks(self, client: aiomqtt.Client) -> None:
        """Count the PUBACKs that refuse (MQTT 5 reason code >= 0x80: not authorized by the broker's
        ACL, quota exceeded): aiomqtt takes them as confirmations, so a Sparkplug row refused by a
        wrong ACL was acked and deleted. Which message a PUBACK is for aiomqtt does not say: every
        publish in flight at a refusal counts as not confirmed (kept and sent again)."""
        paho = client._client  # aiomqtt wraps paho's on_publish and has no public hook for it
        confirm = paho.on_publish

        def checked(c: object, userdata: object, mid: int, reason_code: object, properties: object) -> None:
            if getattr(reason_code, "is_failure", False):
                self.stats.refused_publishes += 1
                self._refused = str(reason_code)
                self.stats.last_error = f"the broker refuses our publishes: {reason_code}"
                if self.stats.refused_publishes == 1:
                    log.error("MQTT %s refuses a publish: %s (the broker's ACL?); what it refuses is kept "
                              "and sent again", self.config.broker, reason_code)
            confirm(c, userdata, mid, reason_code, properties)

        paho.on_publish = checked

    def _down(self) -> None:
        if self._lost is not None:
            self._lost.set()
        self._client, self._lost = None, None
        self.connected = False
        self._up.clear()

    async def _subscribe_now(self, client: aiomqtt.Client, topic_filter: str, qos: int) -> None:
        await client.subscribe(topic_filter, qos=qos, timeout=self.config.connect_timeout_s)

    async def _dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        self.stats.received += 1
        for topic_filter, (handler, _) in list(self._subscriptions.items()):
            if not topic_matches_sub(topic_filter, topic):
                continue
            try:
                result = handler(topic, payload, retained)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # one bad message or handler must not drop the session
                self.stats.handler_errors += 1
                n = self.stats.handler_errors
                if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood of bad messages is no log flood
                    log.error("MQTT message on %s: handler failed: %s: %s (%d handler failure(s) so far)",
                              topic, type(exc).__name__, str(exc)[:200], n)


def _protocol_refused(exc: aiomqtt.MqttError) -> bool:
    """The broker answered the MQTT 5 CONNECT but not with a session: refused the protocol version,
    or closed the connection (what some 3.1.1 brokers do). Not a refused login (codes 4, 5, 134, 135)
    and not an unreachable broker (the socket's OSError)."""
    if isinstance(exc, MqttConnectError):
        code = getattr(exc.rc, "value", exc.rc)
        return code in PROTOCOL_REFUSED
    return not isinstance(exc.__context__, OSError) and not isinstance(exc.__cause__, OSError)


def _connect_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = MAX_INBOUND_BYTES
    return properties


class BrokerClosed(aiomqtt.MqttError):
    """The broker closed the connection after our CONNECT, without a CONNACK (what some 3.1.1
    brokers do with an MQTT 5 CONNECT)."""


def _closed_event(client: aiomqtt.Client) -> asyncio.Event:
    """An event set when the connection of `client` ends (paho's on_disconnect, which aiomqtt
    drops before the CONNACK; it has no public hook for it)."""
    closed, loop = asyncio.Event(), asyncio.get_running_loop()
    paho = client._client
    inner = paho.on_disconnect

    def on_disconnect(*args: object) -> None:
        loop.call_soon_threadsafe(closed.set)
        if inner is not None:
            inner(*args)

    paho.on_disconnect = on_disconnect
    return closed


def _check_readable(config: MqttConfig) -> None:
    """The TLS files can be read: else the error names the file (the ssl module's says only
    "[Errno 2] No such file or directory", a status line nobody can act on)."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, key)
        if path is None:
            continue
        try:
            path.open("rb").close()
        except OSError as exc:
            raise MqttUnavailable(f"[mqtt] {key} {path} cannot be read: {exc.strerror or exc}") from None


def _abandon(client: aiomqtt.Client) -> None:
    """Close the socket of a connect attempt that failed. aiomqtt leaves it open (and its keepalive
    task running) when no CONNACK came or the stop cut the connect short: a broker that accepts TCP
    and never answers collected one half-open connection per retry, and a late CONNACK on one
    would have made it a second session with our client id. A DISCONNECT does not do it (paho
    2.2 fails on its own DISCONNECT before closing); a shutdown makes paho see the end of the
    connection and close everything itself. aiomqtt offers no public way to its paho client."""
    with contextlib.suppress(Exception):
        sock = client._client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)


def _payload(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("MQTT subscribe failed: %s (it is restored at the next reconnect)", task.exception())

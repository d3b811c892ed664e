"""The MQTT link and the Sparkplug node against a hostile network, a broken broker, careless hosts
and engineers: a broker that never answers CONNACK, answers pings but never PUBACK, closes an MQTT 5
CONNECT, refuses publishes by ACL; floods of bad commands, Rebirths, STATE flaps and repeated Acks;
huge, unprintable and non-UTF-8 values; tags at infinity; ids that are not one topic level; damaged
bdSeq files; the outbox cap without a cloud sink. Brokers that misbehave in ways mosquitto cannot
are small TCP servers in the test; everything else runs against a real mosquitto."""

from __future__ import annotations

import asyncio
import math
import random
import re
import time

import aiomqtt
import pytest

from controller.config import ConfigError, load_config
from controller.config.mqtt import MqttConfig
from controller.mqtt.session import MAX_INBOUND_BYTES, MqttLink, MqttUnavailable
from controller.outbox import Outbox
from controller.points import Identity
from controller.records import Record
from controller.runtime import Controller
from controller.sparkplug.catalogue import Catalogue
from controller.sparkplug.commands import REFUSALS_PER_MINUTE, Command, RefusalGate, node_commands
from controller.sparkplug.node import REBIRTH_MIN_S
from controller.sparkplug.payload import BOOLEAN, DOUBLE, STRING, Metric, Payload, decode, encode
from controller.sparkplug.reporting import ChangeFilter
from controller.sparkplug.sequence import BDSEQ_FILE, BdSeqStore
from hil_tests.rig.mosquitto import Mosquitto
from tests.controller.test_sparkplug_runtime import MQTT, Watcher, line, until


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


CAT = Catalogue(alarms=["hot"], actions=[], devices={}, commands=True)
HOST = Metric("Host", STRING, "scada")
OK = {"enabled": True, "hosts": ["scada"]}


def ncmd(*metrics: Metric) -> Payload:
    return Payload(0, None, metrics)


def test_a_refusal_repeats_at_most_a_few_dozen_characters_of_what_a_host_sent():
    huge = "x" * 1_000_000
    for payload in (ncmd(Metric("Alarms/hot/Shelve", STRING, huge), HOST),  # no seconds
                    ncmd(Metric(f"Alarms/{huge}/Ack", STRING, "r"), HOST),  # no such alarm
                    ncmd(Metric(huge, DOUBLE, 1.0)),  # not a command
                    ncmd(Metric("Alarms/hot/Ack", STRING, "r"), Metric("Host", STRING, huge))):  # a stranger
        done, refused = node_commands(payload, CAT, **OK)
        assert done == [] and len(refused) == 1
        assert len(refused[0].metric) + len(refused[0].why) < 400, refused[0].why[:200]


def test_an_ack_or_shelve_reason_is_held_to_the_api_rules():
    for bad in ("r" * 501, "line one\nline two", "bell\x07", "\x1b[2Jclear"):
        for metric in (Metric("Alarms/hot/Ack", STRING, bad),
                       Metric("Alarms/hot/Shelve", STRING, f"60 {bad}")):
            done, refused = node_commands(ncmd(metric, HOST), CAT, **OK)
            assert done == [] and "printable text of at most 500" in refused[0].why, (bad[:20], metric.name)
    assert node_commands(ncmd(Metric("Alarms/hot/Ack", STRING, "r" * 500), HOST), CAT, **OK)[0] == [
        Command("ack", "hot", "scada", "r" * 500)]
    for seconds in ("1e300", "nan", "-5", "inf", "0"):  # 1e300 passes here: max_shelve_s refuses it
        shelve = Metric("Alarms/hot/Shelve", STRING, f"{seconds} why")
        done, refused = node_commands(ncmd(shelve, HOST), CAT, **OK)
        assert (done != []) == (seconds == "1e300"), seconds


def test_the_refusal_gate_says_a_few_a_minute_and_then_how_many_it_did_not():
    gate = RefusalGate(per_minute=3)
    assert [gate.allow(t) for t in (0.0, 0.1, 0.2, 0.3, 0.4, 59.0)] == [True, True, True, False, False, False]
    assert gate.allow(60.0) and gate.take_unsaid() == 3 and gate.take_unsaid() == 0


async def test_a_flood_of_bad_commands_is_counted_but_does_not_flood_the_journal(tmp_path):
    n = 2000
    with Mosquitto(tmp_path) as broker:
        config = load_config(line(tmp_path, MQTT.format(url=broker.url)))
        async with Controller(config, api_port=0) as c:
            await until(lambda: c.status()["mqtt"]["sparkplug"]["born"])
            first = c.events.last_id
            junk = encode([Metric("pressure", DOUBLE, 1.0)], seq=0, timestamp_ms=1)
            async with aiomqtt.Client(broker.host, broker.port, identifier="t-flood") as flood:
                for i in range(n):
                    await flood.publish("spBv1.0/test/NCMD/spb" if i % 2 else "spBv1.0/test/DCMD/spb/press",
                                        junk if i % 3 else b"\xff garbage", qos=0)
                await flood.publish("spBv1.0/test/NCMD/spb", junk, qos=1)
            await until(lambda: c.status()["mqtt"]["sparkplug"]["refused_commands"] >= n // 2, timeout=30)
            await asyncio.sleep(0.3)
            refused = [e for e in c.events.since(first) if e.get("result") == "refused"]
            assert 1 <= len(refused) <= REFUSALS_PER_MINUTE, len(refused)


def test_a_tag_stuck_at_infinity_is_reported_once_not_at_every_tick_and_nan_is_null():
    f = ChangeFilter()
    for band in (0.0, 0.5):
        assert [f.changed(("inf", band), math.inf, band) for _ in range(3)] == [True, False, False]
        assert [f.changed(("-inf", band), -math.inf, band) for _ in range(2)] == [True, False]
        assert f.changed(("inf", band), -math.inf, band) and f.changed(("inf", band), 1e300, band)
        assert [f.changed(("nan", band), math.nan, band) for _ in range(2)] == [True, False]
    values = (1e300, math.inf, -math.inf, math.nan)  # Double carries infinities; NaN goes as null
    assert [m.value for m in decode(encode([Metric("x", DOUBLE, v) for v in values], seq=1,
                                           timestamp_ms=1)).metrics] == [1e300, math.inf, -math.inf, None]


async def test_a_publish_the_broker_refuses_is_not_taken_as_confirmed(tmp_path, monkeypatch):
    """MQTT 5: mosquitto answers a publish its ACL denies with PUBACK 'Not authorized'; aiomqtt took
    it as a confirmation, so the Sparkplug node acked and deleted rows a wrong ACL had dropped."""
    acl = "user line\ntopic readwrite ok/#\n"
    with Mosquitto(tmp_path, users={"line": "pw"}, acl=acl) as broker:
        monkeypatch.setenv("T_USER", "line")
        monkeypatch.setenv("T_PASS", "pw")
        cfg = MqttConfig.model_validate({"broker": broker.url, "connect_timeout_s": 2.0, "protocol": "5",
                                         "username_env": "T_USER", "password_env": "T_PASS"})
        link = MqttLink(cfg, client_id="t-acl")
        await link.start()
        try:
            assert await link.wait_connected(10)
            await link.publish("ok/a", b"1")
            with pytest.raises(MqttUnavailable, match="Not authorized"):
                await link.publish("spBv1.0/other/NDATA/x", b"2")
            assert link.stats.refused_publishes == 1 and "Not authorized" in link.stats.last_error
            await link.publish("ok/b", b"3")  # the next one is confirmed again
            assert link.stats.published == 2
        finally:
            await link.stop()


async def test_a_tls_file_that_is_not_there_is_named_in_the_status_line(tmp_path):
    async with SilentBroker() as broker:
        url = broker.url.replace("mqtt://", "mqtts://")
        cfg = MqttConfig.model_validate({"broker": url, "ca_file": str(tmp_path / "typo-ca.pem"),
                                         "backoff_initial_s": 0.05, "backoff_cap_s": 0.1})
        link = MqttLink(cfg, client_id="t-tls-file")
        await link.start()
        try:
            await until(lambda: link.stats.failures >= 2)
            assert f"ca_file {tmp_path / 'typo-ca.pem'} cannot be read" in link.stats.last_error
            assert link.protocol == ""  # not taken for a broker refusing MQTT 5
        finally:
            await link.stop()


def test_a_long_outage_over_the_outbox_cap_drops_the_oldest_and_strands_no_event_row(tmp_path):
    """Sparkplug without [sync]: the size cap's drop event is for the cloud sinks, and there are none;
    it stayed in the outbox pending for no one (never sent, never deleted but by the cap)."""
    with Outbox(tmp_path, max_bytes=1 << 16, identity=Identity("s", "l", "c")) as ob:
        ob.subscribe("sparkplug", routed_only=True)
        big = [Record("sparkplug", {"type": "NDATA", "device": ""}, {"payload": "x" * 20_000}, 1, "event")]
        for _ in range(6):
            assert ob.append(big, sinks=("sparkplug",)).ok
        assert ob.stats.dropped_rows_cap >= 3  # the oldest went, and it was said (counted, logged)
        assert ob.backlog() == ob.backlog("sparkplug"), "a row in the outbox that no sink will ever take"


def test_a_site_or_plc_name_that_is_not_one_topic_level_is_refused_at_load_with_sparkplug_only(tmp_path):
    def load(site: str, plc: str, mqtt: str = MQTT.format(url="mqtt://127.0.0.1:1")):
        text = line(tmp_path).read_text().replace('site = "test"', f'site = "{site}"')
        (tmp_path / "l.toml").write_text(text.replace('name = "press"', f'name = "{plc}"') + mqtt)
        return load_config(tmp_path / "l.toml")

    for site, plc, where in (("plant/a", "press", "controller.site: 'plant/a' is the Sparkplug group_id"),
                             ("plant", "press/1", "modbus[0].name: 'press/1' is a Sparkplug device id"),
                             ("plant", "press+", "modbus[0].name: 'press+' is a Sparkplug device id"),
                             ("plant", "#", "modbus[0].name: '#' is a Sparkplug device id")):
        with pytest.raises(ConfigError, match=re.escape(where)):
            load(site, plc)
    assert load("plänt", "prëss").mqtt.sparkplug is not None  # UTF-8 is a valid topic level
    assert load("plant/a", "p", MQTT.format(url="mqtt://127.0.0.1:1") + 'group_id = "plant-a"\n')
    assert load("plant/a", "press/1", "").mqtt is None  # without Sparkplug no name is a topic


def test_a_command_with_a_name_or_string_that_is_not_utf8_is_a_bad_payload_not_a_handler_crash():
    """proto2 does not check UTF-8: protobuf gave such a name as bytes, and the allow-list raised
    TypeError for it (logged as a handler failure for every message, never counted as refused)."""
    good = encode([Metric("Alarms/hot/Ack", STRING, "seen", properties={"q": (STRING, "ok")}), HOST],
                  seq=0, timestamp_ms=1)
    assert [m.name for m in decode(good).metrics] == ["Alarms/hot/Ack", "Host"]
    for old, new in ((b"hot", b"\xff\xfe\xfd"), (b"seen", b"se\xc3("), (b"ok", b"\xffk")):
        with pytest.raises(ValueError, match="not UTF-8"):
            decode(good.replace(old, new))
    rng = random.Random(7)
    for _ in range(3000):  # no other exception than ValueError out of decode, none out of the allow-list
        data = bytearray(good)
        data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            payload = decode(bytes(data))
        except ValueError:
            continue
        node_commands(payload, CAT, **OK)


async def test_auto_falls_back_to_3_1_1_at_once_when_the_broker_closes_an_mqtt5_connect():
    """A 3.1.1-only broker that closes the connection on an MQTT 5 CONNECT (instead of CONNACK 1):
    aiomqtt ignored the close and waited for its timeout, so "auto" never fell back, never connected."""
    levels: list[int] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(2)  # a short CONNECT: one byte of remaining length
        body = await reader.readexactly(head[1])
        levels.append(body[6])  # the protocol level: 5 or 4 (3.1.1)
        if body[6] == 4:
            writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
            while await reader.read(100):
                pass
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    cfg = MqttConfig.model_validate({"broker": f"mqtt://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                     "connect_timeout_s": 3.0})
    link = MqttLink(cfg, client_id="t-311")
    await link.start()
    try:
        assert await link.wait_connected(2.0), link.stats.last_error  # well before connect_timeout_s
        assert link.protocol == "3.1.1" and levels == [5, 4]
    finally:
        await link.stop()
        server.close()


async def test_a_flood_of_rebirth_requests_is_answered_without_a_births_storm(tmp_path):
    with Mosquitto(tmp_path) as broker:
        async with Watcher(broker) as w:
            config = load_config(line(tmp_path, MQTT.format(url=broker.url)))
            async with Controller(config, api_port=0) as c:
                await until(lambda: "NBIRTH" in w.kinds())
                rebirth = encode([Metric("Node Control/Rebirth", BOOLEAN, True)], seq=0, timestamp_ms=1)
                async with aiomqtt.Client(broker.host, broker.port, identifier="t-rebirths") as host:
                    for _ in range(300):
                        await host.publish("spBv1.0/test/NCMD/spb", rebirth, qos=1)
                await until(lambda: w.kinds().count("NBIRTH") >= 2)  # the request is answered
                await asyncio.sleep(REBIRTH_MIN_S * 1.5)
                births = w.kinds().count("NBIRTH")
                assert births <= 4, f"{births} NBIRTHs for 300 Rebirth requests in a second"
                assert c.status()["mqtt"]["sparkplug"]["refused_commands"] == 0


async def test_a_primary_host_state_flapping_fast_is_no_births_storm(tmp_path):
    with Mosquitto(tmp_path) as broker:
        async with Watcher(broker) as w:
            config = load_config(line(tmp_path, MQTT.format(url=broker.url) + 'primary_host_id = "scada"\n'))
            async with Controller(config, api_port=0) as c:
                await until(lambda: c.mqtt.connected)
                async with aiomqtt.Client(broker.host, broker.port, identifier="t-flap") as host:
                    for i in range(200):
                        state = b'{"online": %s, "timestamp": %d}' % (b"true" if i % 2 else b"false", i)
                        await host.publish("spBv1.0/STATE/scada", state, qos=1)
                await until(lambda: c.sparkplug.host_online is True and "NBIRTH" in w.kinds())
                await asyncio.sleep(REBIRTH_MIN_S * 1.5)
                births = w.kinds().count("NBIRTH")
                assert 1 <= births <= 3, f"{births} NBIRTHs for 100 offline/online flaps"


async def test_a_flood_of_messages_a_handler_fails_on_is_no_log_flood(tmp_path, caplog):
    with Mosquitto(tmp_path) as broker:
        link = MqttLink(MqttConfig.model_validate({"broker": broker.url}), client_id="t-handler")

        def broken(topic: str, payload: bytes, retained: bool) -> None:
            raise KeyError(payload[:10])

        link.subscribe("t/#", broken)
        await link.start()
        try:
            assert await link.wait_connected(10)
            with caplog.at_level("ERROR", logger="controller.mqtt.session"):
                async with aiomqtt.Client(broker.host, broker.port, identifier="t-junk") as junk:
                    for _ in range(1000):
                        await junk.publish("t/x", b"junk", qos=1)
                await until(lambda: link.stats.handler_errors == 1000)
        finally:
            await link.stop()
        assert 1 <= len([r for r in caplog.records if "handler failed" in r.message]) <= 10


async def test_a_broker_that_answers_pings_but_never_pubacks_gets_its_session_dropped():
    """The client keeps every unconfirmed QoS 1 message for the whole session; a session that stays
    up (pings answered) with nothing confirmed grew without bound (one message per timed-out publish,
    the Sparkplug replay resending its batch every pass)."""
    sessions: list[int] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(0)
        try:
            while head := await reader.read(1):
                length, shift = 0, 0
                while True:  # the remaining length: 7 bits a byte
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                await reader.readexactly(length)
                if head[0] >> 4 == 1:
                    writer.write(b"\x20\x02\x00\x00")  # CONNACK
                elif head[0] >> 4 == 12:
                    writer.write(b"\xd0\x00")  # PINGRESP; a PUBLISH gets nothing
                elif head[0] >> 4 == 3:
                    sessions[-1] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    cfg = MqttConfig.model_validate({"broker": f"mqtt://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                     "protocol": "3.1.1", "connect_timeout_s": 0.3, "keepalive_s": 1.0,
                                     "backoff_initial_s": 0.05, "backoff_cap_s": 0.1})
    link = MqttLink(cfg, client_id="t-nopuback")
    await link.start()
    try:
        assert await link.wait_connected(5)
        with pytest.raises(MqttUnavailable, match="no PUBACK"):
            await link.publish("t/x", b"x" * 1000)
        await until(lambda: link.stats.connects >= 2, timeout=3.0)  # a new session, the old one's queue gone
        assert "no PUBACK" in link.stats.last_error and sessions[0] == 1
    finally:
        await link.stop()
        server.close()


def test_a_bdseq_file_damaged_or_from_elsewhere_is_said_and_starts_again(tmp_path, caplog):
    for text in ('{"bdseq": 300}', '{"bdseq": true}', '{"bdseq": 7.5}', '{"bdseq": -1}', "\x00\xff", "[]"):
        (tmp_path / BDSEQ_FILE).write_text(text)
        caplog.clear()
        with caplog.at_level("WARNING", logger="controller.sparkplug.sequence"):
            assert BdSeqStore(tmp_path).next() == 0, text
        assert "cannot be read" in caplog.text, text
    (tmp_path / BDSEQ_FILE).write_text('{"bdseq": 41, "written_by": "a newer version"}')
    assert BdSeqStore(tmp_path).next() == 42  # a key more is no damage


async def test_a_huge_message_for_the_edge_is_dropped_by_the_broker_under_mqtt5(tmp_path):
    with Mosquitto(tmp_path) as broker:
        link = MqttLink(MqttConfig.model_validate({"broker": broker.url}), client_id="t-big")
        got: list[int] = []
        link.subscribe("spBv1.0/g/NCMD/n", lambda topic, payload, retained: got.append(len(payload)))
        await link.start()
        try:
            assert await link.wait_connected(10) and link.protocol == "5"
            async with aiomqtt.Client(broker.host, broker.port, identifier="t-big-host") as host:
                await host.publish("spBv1.0/g/NCMD/n", b"6" * (MAX_INBOUND_BYTES + 1), qos=1)
                await host.publish("spBv1.0/g/NCMD/n", b"small", qos=1)
            await until(lambda: got)
            await asyncio.sleep(0.2)
            assert got == [5], "a message over the announced maximum packet size reached the edge"
        finally:
            await link.stop()


async def test_a_host_repeating_an_ack_is_saved_and_logged_once(tmp_path, caplog):
    alarm = ('\n[[alarms]]\nname = "hot"\nsource = "tag:pressure:limit"\npriority = "high"\n'
             '[detector.limits]\npressure = { lo = 0.0, hi = 10.0 }\n')
    sparkplug = MQTT + 'commands = true\ncommand_hosts = ["scada"]\n'
    with Mosquitto(tmp_path) as broker:
        config = load_config(line(tmp_path, alarm + sparkplug.format(url=broker.url)))
        async with Controller(config, api_port=0) as c:
            await until(lambda: c.status()["mqtt"]["sparkplug"]["born"])
            ack = encode([Metric("Alarms/hot/Ack", STRING, "seen"), HOST], seq=0, timestamp_ms=1)
            with caplog.at_level("WARNING", logger="controller.sparkplug.node"):
                async with aiomqtt.Client(broker.host, broker.port, identifier="t-acks") as host:
                    for _ in range(200):
                        await host.publish("spBv1.0/test/NCMD/spb", ack, qos=1)
                await until(lambda: c.status()["mqtt"]["sparkplug"]["commands"]
                            + c.status()["mqtt"]["sparkplug"]["refused_commands"] == 200)
            assert len([r for r in caplog.records if "done" in r.message]) <= 1

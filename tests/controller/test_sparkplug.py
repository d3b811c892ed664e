"""The Sparkplug node's pure logic: payload round trip on the official schema (read back by
pysparkplug, an independent decoder), aliases stable and unique, seq and bdSeq wrap, bdSeq persisted,
report by exception with deadbands, the command allow-list."""

from __future__ import annotations

import math

import pytest
from pysparkplug import DataType
from pysparkplug import Metric as TheirMetric
from pysparkplug._protobuf import Payload as TheirPayload

from controller.config.mqtt import MqttConfig, SparkplugConfig
from controller.sparkplug.catalogue import Catalogue
from controller.sparkplug.commands import Command, device_commands, node_commands
from controller.sparkplug.payload import (
    BOOLEAN,
    DOUBLE,
    INT32,
    INT64,
    STRING,
    UINT64,
    Metric,
    Payload,
    decode,
    encode,
    historical,
)
from controller.sparkplug.reporting import ChangeFilter
from controller.sparkplug.sequence import BDSEQ_FILE, BdSeqStore, Seq


def test_every_datatype_the_node_writes_round_trips_and_an_independent_decoder_agrees():
    metrics = [Metric("bdSeq", INT64, 255, timestamp_ms=1), Metric("Line/Alarm", BOOLEAN, True, alias=3),
               Metric("Line/Score", DOUBLE, 0.125, alias=4, timestamp_ms=2),
               Metric("PLC/Reads", UINT64, 2**63 + 5, alias=5), Metric("q", INT32, -7, alias=6),
               Metric("Alarms/a/State", STRING, "UNACK", alias=7), Metric("none", DOUBLE, None, alias=8),
               Metric("nan", DOUBLE, math.nan, alias=9),
               Metric("speed", DOUBLE, 1500.0, alias=10, properties={"engUnit": (STRING, "rpm"),
                                                                     "Quality": (INT32, 192)})]
    data = encode(metrics, seq=7, timestamp_ms=99)
    p = decode(data)
    assert (p.seq, p.timestamp_ms) == (7, 99)
    assert [m.value for m in p.metrics] == [255, True, 0.125, 2**63 + 5, -7, "UNACK", None, None, 1500.0]
    assert p.metrics[-1].properties == {"engUnit": (STRING, "rpm"), "Quality": (INT32, 192)}
    assert [m.alias for m in p.metrics] == [None, 3, 4, 5, 6, 7, 8, 9, 10]
    theirs = TheirPayload.FromString(data)
    decoded = [TheirMetric.from_pb(m) for m in theirs.metrics]
    assert [m.value for m in decoded[:6]] == [255, True, 0.125, 2**63 + 5, -7, "UNACK"]
    assert [m.datatype for m in decoded[:3]] == [DataType.INT64, DataType.BOOLEAN, DataType.DOUBLE]
    assert theirs.metrics[6].is_null and theirs.metrics[7].is_null
    assert encode([], seq=None, timestamp_ms=5) and decode(encode([], seq=None, timestamp_ms=5)).seq is None


def test_a_replayed_payload_is_historical_with_a_new_seq_and_its_own_timestamps():
    stored = encode([Metric(None, DOUBLE, 1.0, alias=4, timestamp_ms=10)], seq=None, timestamp_ms=11)
    p = decode(historical(stored, seq=42))
    assert p.seq == 42 and p.timestamp_ms == 11
    assert [(m.alias, m.value, m.timestamp_ms, m.is_historical) for m in p.metrics] == [(4, 1.0, 10, True)]


def test_a_payload_that_is_not_protobuf_is_a_value_error():
    with pytest.raises(ValueError, match="not a Sparkplug B payload"):
        decode(b"\xff\xff\xff")


TAGS = (("temp", "number"), ("gate", "bit"), ("note", "text"))


def catalogue(commands: bool = False, tags=TAGS) -> Catalogue:
    return Catalogue(alarms=["hot", "cold"], actions=["stop"], commands=commands,
                     devices={"press": list(tags), "conveyor": [("speed", None)]})


def test_aliases_are_unique_stable_and_follow_the_config_order():
    a, b = catalogue(), catalogue()
    aliases = [m.alias for m in a.node] + [m.alias for d in a.devices for m in a.device(d)]
    assert aliases == [m.alias for m in b.node] + [m.alias for d in b.devices for m in b.device(d)]
    assert aliases[0] is None and a.node[0].name == "bdSeq"  # read by name in NBIRTH and NDEATH
    assert aliases[1:] == list(range(1, len(aliases)))  # unique, 1, 2, ... in config order
    assert [(m.name, m.datatype) for m in a.device("press")] == [
        ("temp", DOUBLE), ("gate", BOOLEAN), ("note", STRING), ("PLC/State", STRING), ("PLC/Reads", UINT64),
        ("PLC/Errors", UINT64)]
    assert a.device("conveyor")[0].datatype == DOUBLE  # known only once connected: a number until then
    names = [m.name for m in a.node]
    assert "Alarms/hot/State" in names and "Alarms/hot/Priority" in names and "Actions/stop/State" in names
    assert not [n for n in names if n.endswith(("/Ack", "/Shelve"))]
    with_commands = [m.name for m in catalogue(commands=True).node]
    assert "Alarms/cold/Ack" in with_commands and "Alarms/cold/Shelve" in with_commands


def test_seq_wraps_and_restarts_at_each_birth_and_bdseq_is_persisted_and_wraps(tmp_path):
    s = Seq()
    assert [s.birth(), *(s.next() for _ in range(256))][-2:] == [255, 0]
    assert s.birth() == 0
    store = BdSeqStore(tmp_path)
    assert [store.next() for _ in range(3)] == [0, 1, 2]
    assert BdSeqStore(tmp_path).next() == 3  # a restart goes on after the last one used
    (tmp_path / BDSEQ_FILE).write_text('{"bdseq": 255}')
    assert BdSeqStore(tmp_path).next() == 0
    (tmp_path / BDSEQ_FILE).write_text("damaged")
    assert BdSeqStore(tmp_path).next() == 0


def test_report_by_exception_with_an_absolute_deadband():
    f = ChangeFilter()
    assert f.changed("t", 10.0, 0.5)  # first value: always
    assert not f.changed("t", 10.4, 0.5) and not f.changed("t", 9.6, 0.5)  # measured from the last sent
    assert f.changed("t", 10.6, 0.5) and not f.changed("t", 10.6, 0.5)
    assert f.changed("t", None, 0.5) and not f.changed("t", math.nan, 0.5)  # to null once
    assert f.changed("t", 10.6, 0.5)  # back from null: always
    assert f.changed("z", 1.0) and not f.changed("z", 1.0) and f.changed("z", 1.0 + 1e-12)  # no deadband
    assert f.changed("b", True) and not f.changed("b", True) and f.changed("b", False)
    assert f.changed("s", "UNACK") and not f.changed("s", "UNACK") and f.changed("s", "ACKED")
    f.set("s", "NORMAL")  # a birth sent it: the next change is measured from there
    assert not f.changed("s", "NORMAL")
    f.forget()
    assert f.changed("s", "NORMAL")


def ncmd(*metrics: Metric) -> Payload:
    return Payload(0, 0, tuple(metrics))


def test_rebirth_is_always_obeyed_and_everything_else_is_refused_when_commands_are_off():
    c = catalogue()
    rebirth = Metric("Node Control/Rebirth", BOOLEAN, True)
    assert node_commands(ncmd(rebirth), c, enabled=False, hosts=[]) == ([Command("rebirth")], [])
    by_alias = Metric(None, BOOLEAN, True, alias=c.node_metric("Node Control/Rebirth").alias)
    assert node_commands(ncmd(by_alias), c, enabled=False, hosts=[])[0] == [Command("rebirth")]
    ack = Metric("Alarms/hot/Ack", STRING, "seen")
    done, refused = node_commands(ncmd(ack, Metric("Host", STRING, "scada")), c, enabled=False,
                                  hosts=["scada"])
    assert done == [] and "commands are off" in refused[0].why
    done, refused = node_commands(ncmd(Metric("temp", DOUBLE, 5.0)), c, enabled=False, hosts=[])
    assert done == [] and "no tag is ever written" in refused[0].why


def test_enabled_commands_are_ack_and_shelve_from_a_listed_host_only():
    c = catalogue(commands=True)
    host = Metric("Host", STRING, "scada")
    ok = dict(enabled=True, hosts=["scada"])
    assert node_commands(ncmd(Metric("Alarms/hot/Ack", STRING, " seen "), host), c, **ok) == (
        [Command("ack", "hot", "scada", "seen")], [])
    assert node_commands(ncmd(Metric("Alarms/hot/Shelve", STRING, "90.5 pump swap"), host), c, **ok)[0] == [
        Command("shelve", "hot", "scada", "pump swap", 90.5)]
    cases = {
        "no Host metric": ncmd(Metric("Alarms/hot/Ack", STRING, "x")),
        "not in command_hosts": ncmd(Metric("Alarms/hot/Ack", STRING, "x"),
                                     Metric("Host", STRING, "intruder")),
        "no alarm named": ncmd(Metric("Alarms/nope/Ack", STRING, "x"), host),
        "<seconds> <reason>": ncmd(Metric("Alarms/hot/Shelve", STRING, "soon please"), host),
        "expects a String": ncmd(Metric("Alarms/hot/Ack", BOOLEAN, True), host),
        "not a command": ncmd(Metric("gate", BOOLEAN, True), host),
    }
    for why, payload in cases.items():
        done, refused = node_commands(payload, c, **ok)
        assert done == [] and len(refused) == 1 and why in refused[0].why, (why, refused)
    for bad in ("nan reason", "inf reason", "-5 reason", "0 reason"):
        assert node_commands(ncmd(Metric("Alarms/hot/Shelve", STRING, bad), host), c, **ok)[0] == [], bad
    assert device_commands(ncmd(Metric("gate", BOOLEAN, True)), "press")[0].metric == "press/gate"


def test_the_schema_defaults_and_refusals():
    sp = SparkplugConfig()
    assert (sp.tag_interval_s, sp.data_qos, sp.replay_per_s, sp.commands) == (1.0, 1, 500, False)
    assert sp.ids_for("site", "line") == ("site", "line")
    with pytest.raises(ValueError, match="command_hosts"):
        SparkplugConfig(commands=True)
    with pytest.raises(ValueError, match="one MQTT topic level"):
        SparkplugConfig(group_id="a/b")
    with pytest.raises(ValueError, match="one MQTT topic level"):
        SparkplugConfig().ids_for("site+", "line")
    m = MqttConfig(broker="mqtts://broker.example:8884")
    assert (m.host, m.port, m.tls) == ("broker.example", 8884, True)
    assert MqttConfig(broker="mqtt://h").port == 1883 and MqttConfig(broker="mqtts://h").port == 8883
    for broker in ("tcp://h:1", "mqtt://", "mqtt://h:99999", "mqtt://h:1/path"):
        with pytest.raises(ValueError, match="broker must be"):
            MqttConfig(broker=broker)
    with pytest.raises(ValueError, match="for TLS"):
        MqttConfig(broker="mqtt://h:1", ca_file="ca.pem")
    with pytest.raises(ValueError, match="go together"):
        MqttConfig(broker="mqtts://h:1", cert_file="c.pem")

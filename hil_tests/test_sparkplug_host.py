"""The independent Sparkplug host application (hil_tests/rig/sparkplug_host.py) checked on its own:
its rules fed hand-made traffic (each rule caught when broken), and the whole host against a
real mosquitto and a third-party edge node (pysparkplug's EdgeNode, killed with SIGKILL for the will).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pysparkplug import DataType, DBirth, DData, DDeath, Metric, NBirth, NData, NDeath

from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.sparkplug_host import SparkplugHost, SparkplugRules

G, E = "g", "edge"
T = f"spBv1.0/{G}"


def m(name: str | None, datatype: DataType, value, alias: int | None = None) -> Metric:
    return Metric(timestamp=1, name=name, datatype=datatype, value=value, alias=alias)


def nbirth(seq: int = 0, bd: int = 3) -> bytes:
    metrics = [m("bdSeq", DataType.INT64, bd), m("Line/Score", DataType.DOUBLE, 0.5, alias=1)]
    return NBirth(1, seq, metrics).encode()


def dbirth(seq: int, alias: int = 2) -> bytes:
    return DBirth(1, seq, [m("motor_speed", DataType.DOUBLE, 1500.0, alias=alias)]).encode()


def by_alias(alias: int, value, seq: int, device: bool = False) -> bytes:
    cls = DData if device else NData
    return cls(1, seq, [m(None, DataType.DOUBLE, value, alias=alias)]).encode(include_dtypes=False)


def feed(*messages: tuple[str, bytes]) -> SparkplugRules:
    rules = SparkplugRules()
    for topic, payload in messages:
        rules.receive(topic, payload)
    return rules


def test_a_well_formed_session_breaks_no_rule_and_aliases_resolve():
    rules = feed((f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/DBIRTH/{E}/conveyor", dbirth(1)),
                 (f"{T}/NDATA/{E}", by_alias(1, 0.7, 2)),
                 (f"{T}/DDATA/{E}/conveyor", by_alias(2, 1490.0, 3, True)),
                 (f"{T}/DDEATH/{E}/conveyor", DDeath(1, 4).encode()),
                 (f"{T}/NDEATH/{E}", NDeath(None, m("bdSeq", DataType.INT64, 3)).encode()))
    assert rules.violations == []
    ndata, ddata = rules.messages[2], rules.messages[3]
    assert (ndata.metrics[0].name, ndata.metrics[0].value) == ("Line/Score", 0.7)
    assert (ddata.metrics[0].name, ddata.metrics[0].datatype) == ("motor_speed", DataType.DOUBLE)
    assert rules.current[(E, "conveyor", "motor_speed")].value == 1490.0
    assert not rules.nodes[E].alive and rules.stale_deaths == []


@pytest.mark.parametrize(("messages", "expected"), [
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth(seq=1))], "NBIRTH seq is not 0", id="nbirth-seq"),
    pytest.param([(f"{T}/NBIRTH/{E}", NBirth(1, 0, [m("x", DataType.DOUBLE, 1.0)]).encode())],
                 "without a bdSeq", id="no-bdseq"),
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/NDATA/{E}", by_alias(1, 0.1, 2))],
                 "seq 2 after 0", id="seq-gap"),
    pytest.param([(f"{T}/NDATA/{E}", by_alias(1, 0.1, 1))], "before the NBIRTH", id="data-before-birth"),
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/DDATA/{E}/conveyor", by_alias(2, 1.0, 1, True))],
                 "before the DBIRTH", id="ddata-before-dbirth"),
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/NDATA/{E}", by_alias(9, 0.1, 1))],
                 "alias 9 is not defined", id="unknown-alias"),
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/DBIRTH/{E}/conveyor", dbirth(1, alias=1))],
                 "alias 1 of 'motor_speed' is already used", id="alias-collision"),
    pytest.param([(f"{T}/NBIRTH/{E}", nbirth()), (f"{T}/DBIRTH/{E}/conveyor", dbirth(1)),
                  (f"{T}/DDEATH/{E}/conveyor", DDeath(1, 2).encode()),
                  (f"{T}/DDATA/{E}/conveyor", by_alias(2, 1.0, 3, True))],
                 "after its DDEATH", id="ddata-dead"),
])
def test_each_broken_rule_is_reported(messages, expected):
    violations = feed(*messages).violations
    assert any(expected in v for v in violations), violations


def test_seq_wraps_after_255_and_an_ndeath_of_another_session_is_ignored():
    msgs = [(f"{T}/NBIRTH/{E}", nbirth(bd=7))]
    msgs += [(f"{T}/NDATA/{E}", by_alias(1, float(i), i % 256)) for i in range(1, 260)]
    msgs.append((f"{T}/NDEATH/{E}", NDeath(None, m("bdSeq", DataType.INT64, 6)).encode()))
    rules = feed(*msgs)
    assert rules.violations == []
    assert rules.nodes[E].alive and [d.metric("bdSeq").value for d in rules.stale_deaths] == [6]


def test_a_retained_sparkplug_message_is_a_violation():
    rules = SparkplugRules()
    rules.receive(f"{T}/NBIRTH/{E}", nbirth(), retained=True)
    assert any("retained" in v for v in rules.violations)


NODE_SCRIPT = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt
    import pysparkplug as psp
    host, port = sys.argv[1], int(sys.argv[2])
    now = psp.get_current_timestamp
    bd = psp.Metric(timestamp=now(), name="bdSeq", datatype=psp.DataType.INT64, value=5)
    score = dict(name="Line/Score", datatype=psp.DataType.DOUBLE, alias=1)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="third-party")
    c.will_set("spBv1.0/g/NDEATH/third-party", psp.NDeath(now(), bd).encode(), qos=1)
    c.connect(host, port)
    c.loop_start()
    birth = psp.NBirth(now(), 0, [bd, psp.Metric(timestamp=now(), value=0.5, **score)])
    c.publish("spBv1.0/g/NBIRTH/third-party", birth.encode()).wait_for_publish(5)
    data = psp.NData(now(), 1, [psp.Metric(timestamp=now(), value=0.75, alias=1, name=None,
                                           datatype=psp.DataType.DOUBLE)])
    c.publish("spBv1.0/g/NDATA/third-party", data.encode(include_dtypes=False), qos=1).wait_for_publish(5)
    print("updated", flush=True)
    time.sleep(60)
""")


async def test_the_host_follows_a_third_party_edge_node_and_its_will(tmp_path: Path):
    """A minimal edge node written with paho and pysparkplug's payload classes (not ours) in a child
    process: NBIRTH, NDATA by alias, then SIGKILL: the broker sends its NDEATH will, whose bdSeq is
    the NBIRTH's. (pysparkplug's own EdgeNode does not run on paho-mqtt 2.)"""
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, "g") as host:
        child = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, broker.host, str(broker.port)],
                                 stdout=subprocess.PIPE, text=True, env=os.environ)
        try:
            assert child.stdout.readline().strip() == "updated"
            await wait_for(lambda: host.of("NDATA"), timeout=5, what="the third-party NDATA")
            assert host.value("third-party", "Line/Score") == 0.75
            child.send_signal(signal.SIGKILL)
            child.wait(5)
            death = await wait_for(lambda: host.of("NDEATH"), timeout=10, what="the will (NDEATH)")
        finally:
            child.kill()
            child.wait(5)
        birth = host.last_birth("third-party")
        assert death[0].metric("bdSeq").value == birth.metric("bdSeq").value == 5
        assert host.violations == [] and not host.alive("third-party")

"""The controller as a Sparkplug B edge node, as an independent host application sees it.

The real controller runs on the simulated plant (demo config + an [mqtt] table) and publishes to a
real mosquitto; `SparkplugHost` (paho + pysparkplug, no controller code) decodes every message and
checks the Sparkplug rules as they arrive (seq, bdSeq, birth before data, aliases). Each test ends
with `host.violations == []`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pysparkplug import DataType

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import config_for_rig, start_controller, stop_controller
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig
from hil_tests.rig.sparkplug_host import SparkplugHost, mqtt_tables

GROUP, NODE = "demo-site", "demo-line"  # the demo's site and line: the default ids
BITS = {"conveyor_line_stop", "conveyor_reject_gate", "line_stop", "reject_gate"}  # Boolean tags of the demo
ALARM_STATES = {"NORMAL", "UNACK", "ACKED", "RTN_UNACK", "SHELVED", "SUPPRESSED", "OUT_OF_SERVICE"}
FAST_LINK = {"keepalive_s": 2.0, "connect_timeout_s": 2.0, "backoff_initial_s": 0.2, "backoff_cap_s": 1.0}


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path) as b:
        yield b


@pytest.fixture
def host(broker):
    with SparkplugHost(broker.host, broker.port, GROUP) as h:
        yield h


def node_config(tmp_path: Path, rig: Rig, model: Path, broker_url: str, **sparkplug) -> Path:
    path = config_for_rig(rig, tmp_path / "state", model, tmp_path / "line.toml")
    path.write_text(path.read_text() + mqtt_tables(broker_url, mqtt_keys=FAST_LINK, sparkplug=sparkplug))
    return path


async def running(tmp_path, rig, model, broker, **sparkplug) -> tuple[Controller, asyncio.Task]:
    config = load_config(node_config(tmp_path, rig, model, broker.url, **sparkplug))
    controller = Controller(config, api_port=0)
    return controller, await start_controller(controller)


async def born(host: SparkplugHost, since: int = 0, timeout: float = 15.0) -> None:
    """Until the node and both PLC devices have a birth after `since`."""
    def done() -> bool:
        devices = {r.device for r in host.of("DBIRTH", since=since)}
        return bool(host.of("NBIRTH", since=since)) and devices >= {"conveyor", "press"}
    await wait_for(done, timeout=timeout, what="NBIRTH and a DBIRTH of both PLCs")


def journal(controller: Controller) -> list[dict]:
    return controller.events.since()


async def test_births_define_every_metric_of_the_contract_and_aliases_stay_across_restarts(
        tmp_path, rig, model, broker, host):
    config = load_config(node_config(tmp_path, rig, model, broker.url, tag_interval_s=0.2))
    controller = Controller(config, api_port=0)
    task = await start_controller(controller)
    try:
        await born(host)
        status = controller.ops.status()
    finally:
        await stop_controller(controller, task)
    nbirth = host.last_birth(NODE)
    node = {m.name: m for m in nbirth.metrics}
    expected = {"bdSeq": DataType.INT64, "Node Control/Rebirth": DataType.BOOLEAN,
                "Properties/Software Version": DataType.STRING, "Properties/Config Hash": DataType.STRING,
                "Line/Score": DataType.DOUBLE, "Line/Threshold": DataType.DOUBLE,
                "Line/Alarm": DataType.BOOLEAN}
    for alarm in config.alarms:
        expected[f"Alarms/{alarm.name}/State"] = expected[f"Alarms/{alarm.name}/Priority"] = DataType.STRING
    for action in config.actions:
        expected[f"Actions/{action.name}/State"] = DataType.STRING
    assert {n: node[n].datatype for n in expected if n in node} == expected, sorted(set(expected) - set(node))
    assert not [n for n in node if n.endswith(("/Ack", "/Shelve"))], "commands are off: no Ack/Shelve metrics"
    for alarm in config.alarms:
        assert node[f"Alarms/{alarm.name}/State"].value in ALARM_STATES
        assert node[f"Alarms/{alarm.name}/Priority"].value == alarm.priority
    assert node["Properties/Software Version"].value == status["controller"]["version"]
    assert node["Properties/Config Hash"].value == status["controller"]["config_hash"]
    assert node["Line/Threshold"].value == pytest.approx(status["detector"]["threshold"])
    assert nbirth.seq == 0 and 0 <= node["bdSeq"].value <= 255

    for plc in ("conveyor", "press"):
        device = {m.name: m for m in host.last_birth(NODE, plc).metrics}
        tags = [t.name for t in config.plc(plc).driver.tags]
        health = {"PLC/State": DataType.STRING, "PLC/Reads": DataType.UINT64, "PLC/Errors": DataType.UINT64}
        assert {n: device[n].datatype for n in health if n in device} == health
        for tag in tags:
            assert tag in device, f"DBIRTH {plc} lacks tag {tag}"
            m = device[tag]
            assert m.datatype == (DataType.BOOLEAN if tag in BITS else DataType.DOUBLE), (tag, m.datatype)
            assert m.properties.get("Quality") == 192, (tag, m.properties)
            if tag in config.detector.units:
                assert m.properties.get("engUnit") == config.detector.units[tag], (tag, m.properties)
    # a clean stop says goodbye with the session's NDEATH
    death = await wait_for(lambda: host.of("NDEATH"), timeout=5, what="the NDEATH of a clean stop")
    assert death[-1].metric("bdSeq").value == node["bdSeq"].value

    def aliases() -> dict[tuple[str | None, str], int]:
        births = [host.last_birth(NODE), host.last_birth(NODE, "conveyor"), host.last_birth(NODE, "press")]
        return {(b.device, m.name): m.alias for b in births for m in b.metrics if m.alias is not None}

    first = aliases()
    assert len(first) >= len(node) + 2 * 3 - 1  # every metric but maybe bdSeq has one
    mark = host.mark()
    again = Controller(load_config(node_config(tmp_path, rig, model, broker.url, tag_interval_s=0.2)),
                       api_port=0)
    task = await start_controller(again)
    try:
        await born(host, since=mark)
    finally:
        await stop_controller(again, task)
    assert aliases() == first
    assert host.last_birth(NODE).metric("bdSeq").value == (node["bdSeq"].value + 1) % 256  # persisted, +1
    assert host.violations == []


async def test_data_by_exception_at_most_every_tag_interval_with_deadbands(
        tmp_path, rig, model, broker, host):
    interval = 0.25
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=interval,
                                     deadbands={"motor_speed": 1e9})
    try:
        await born(host)
        mark = host.mark()
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(3.0)
        window = asyncio.get_running_loop().time() - start
    finally:
        await stop_controller(controller, task)
    ddata = [r for r in host.of("DDATA", since=mark) if not r.historical]
    per_device = {d: [r for r in ddata if r.device == d] for d in ("conveyor", "press")}
    for device, msgs in per_device.items():
        assert msgs, f"no DDATA from {device} in {window:.1f} s of a wandering plant"
        assert len(msgs) <= window / interval + 2, (device, len(msgs), window)
        for r in msgs:
            assert all(m.alias is not None and m.timestamp is not None for m in r.metrics), r
    sent = {m.name for r in ddata for m in r.metrics}
    assert "vibration_rms" in sent  # a noisy tag without a deadband goes out
    assert "motor_speed" not in sent  # it wanders, but within its (huge) deadband
    assert not sent & {"conveyor_reject_gate", "reject_gate"}  # constant: never resent after the birth
    assert host.violations == []


async def test_alarm_transitions_go_at_once_and_a_lost_plc_dies_and_is_born_again(
        tmp_path, rig, model, broker, host):
    interval = 5.0  # tag values at most every 5 s: an alarm that waited for them would be late
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=interval)
    try:
        await born(host)
        mark = host.mark()
        await rig.take_down("press")
        ddeath = await wait_for(lambda: host.of("DDEATH", device="press", since=mark), timeout=10,
                                what="DDEATH of the lost press")
        alarm = "Alarms/press_comm_loss/State"
        ndata = await wait_for(lambda: [r for r in host.of("NDATA", since=mark)
                                        if r.metric(alarm) and r.metric(alarm).value == "UNACK"], timeout=5,
                               what="the press_comm_loss alarm as NDATA")
        event = next(e for e in journal(controller) if e["source"] == "press_comm_loss"
                     and e.get("state") == "UNACK")
        delay = ndata[0].arrived - event["time"]
        assert delay < interval / 2, f"alarm NDATA {delay:.2f} s after the transition"
        assert not ndata[0].historical and ddeath[0].seq is not None
        assert not host.alive(NODE, "press") and host.alive(NODE, "conveyor")
        mark = host.mark()
        await rig.bring_up("press")
        dbirth = await wait_for(lambda: host.of("DBIRTH", device="press", since=mark), timeout=20,
                                what="DBIRTH of the press on its return")
        assert dbirth[0].metric("hydraulic_pressure").properties.get("Quality") == 192
        assert host.alive(NODE, "press")
    finally:
        await stop_controller(controller, task)
    assert host.violations == []


async def test_rebirth_is_answered_with_every_birth_and_the_same_bdseq(tmp_path, rig, model, broker, host):
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=0.5)
    try:
        await born(host)
        bd = host.last_birth(NODE).metric("bdSeq").value
        mark = host.mark()
        host.rebirth(NODE)
        await born(host, since=mark, timeout=5)
        rebirth = host.of("NBIRTH", since=mark)[0]
        assert rebirth.seq == 0 and rebirth.metric("bdSeq").value == bd
    finally:
        await stop_controller(controller, task)
    assert host.violations == []


def refusals(controller: Controller, since_id: int) -> list[dict]:
    """Journal events after `since_id` that record a refused Sparkplug command."""
    return [e for e in journal(controller) if e["id"] > since_id and "sparkplug" in json.dumps(e).lower()
            and "refus" in json.dumps(e).lower()]


async def press_alarm_unack(controller: Controller, rig: Rig) -> None:
    await rig.take_down("press")
    await wait_for(lambda: str(controller.alarms.state("press_comm_loss")) == "UNACK", timeout=10,
                   what="press_comm_loss UNACK")


async def test_commands_are_off_by_default_an_ack_is_refused_and_journaled(
        tmp_path, rig, model, broker, host):
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=0.5)
    try:
        await born(host)
        await press_alarm_unack(controller, rig)
        last = journal(controller)[-1]["id"]
        host.alarm_command(NODE, "press_comm_loss", "Ack", "from scada", host="scada-1")
        await wait_for(lambda: refusals(controller, last), timeout=5, what="the refusal in the journal")
        assert str(controller.alarms.state("press_comm_loss")) == "UNACK"
        assert not [e for e in journal(controller) if e["id"] > last and e["source"] == "press_comm_loss"
                    and e.get("user", "").startswith("sparkplug")]
    finally:
        await stop_controller(controller, task)
    assert host.violations == []


async def test_enabled_commands_ack_and_shelve_from_a_listed_host_only_and_never_write_a_tag(
        tmp_path, rig, model, broker, host):
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=0.5, commands=True,
                                     command_hosts=["scada-1"])
    try:
        await born(host)
        node = host.last_birth(NODE)
        assert node.metric("Alarms/press_comm_loss/Ack").datatype == DataType.STRING
        assert node.metric("Alarms/press_comm_loss/Shelve").datatype == DataType.STRING
        await press_alarm_unack(controller, rig)

        last = journal(controller)[-1]["id"]
        host.alarm_command(NODE, "press_comm_loss", "Ack", "not mine", host="intruder")
        await wait_for(lambda: refusals(controller, last), timeout=5, what="the intruder's ack refused")
        assert str(controller.alarms.state("press_comm_loss")) == "UNACK"

        mark = host.mark()
        host.alarm_command(NODE, "press_comm_loss", "Ack", "seen on the SCADA", host="scada-1")
        await wait_for(lambda: str(controller.alarms.state("press_comm_loss")) == "ACKED", timeout=5,
                       what="the ack from scada-1")
        ack = next(e for e in journal(controller) if e["id"] > last and e["source"] == "press_comm_loss"
                   and e.get("state") == "ACKED")
        assert ack.get("user") == "sparkplug:scada-1", ack
        await wait_for(lambda: host.value(NODE, "Alarms/press_comm_loss/State") == "ACKED", timeout=5,
                       what="the ACKED state as NDATA")
        assert host.of("NDATA", since=mark)

        host.alarm_command(NODE, "press_comm_loss", "Shelve", "60 maintenance on the press", host="scada-1")
        await wait_for(lambda: str(controller.alarms.state("press_comm_loss")) == "SHELVED", timeout=5,
                       what="the shelve from scada-1")

        writes = len(rig.recorder.writes)
        gate_before = rig.plant.reject_gate
        last = journal(controller)[-1]["id"]
        host.command(NODE, [("conveyor_reject_gate", DataType.BOOLEAN, not gate_before)], device="conveyor")
        host.command(NODE, [("conveyor_reject_gate", DataType.BOOLEAN, not gate_before),
                            ("Host", DataType.STRING, "scada-1")])
        await wait_for(lambda: len(refusals(controller, last)) >= 2, timeout=5,
                       what="both tag writes (DCMD, NCMD) refused")
        await asyncio.sleep(0.5)  # a write, had it been made, has long reached the plant by now
        assert rig.plant.reject_gate == gate_before
        assert not [w for w in rig.recorder.writes[writes:] if "reject_gate" in w.actuator]
    finally:
        await stop_controller(controller, task)
    assert host.violations == []


async def test_a_jam_reaches_the_host_as_line_alarm_and_score(tmp_path, rig, model, broker, host):
    controller, task = await running(tmp_path, rig, model, broker, tag_interval_s=0.25)
    try:
        await born(host)
        mark = host.mark()
        rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=5.0))
        await wait_for(lambda: host.value(NODE, "Line/Alarm") is True, timeout=10, what="Line/Alarm true")
        # Line/Alarm and the alarm's state may come in two messages of the same round
        await wait_for(lambda: host.value(NODE, "Alarms/line_anomaly/State") == "UNACK", timeout=2,
                       what="line_anomaly UNACK")
        threshold = host.value(NODE, "Line/Threshold")
        # the alarm may go out (at once) before the next score (at the tag interval): wait for it
        await wait_for(lambda: [r for r in host.of("NDATA", since=mark)
                                if (m := r.metric("Line/Score")) and m.value > threshold], timeout=5,
                       what="a Line/Score above Line/Threshold")
    finally:
        await stop_controller(controller, task)
    assert host.violations == []

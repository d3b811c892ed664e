"""The fault matrix: every failure mode of the safety loop x each protocol it applies to, over real
sockets (simulated plant, asyncua and pymodbus servers behind the rig's TCP gates, the real
controller on the demo config). Each test asserts the safe behaviour and, where docs/safety.md
states one, its time bound, as a generous multiple (the bounds are documented, not tuned).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from pathlib import Path

import pytest

from controller.clock import Clock
from controller.config import load_config
from controller.runtime import HOUSEKEEPING_S, Controller
from drivers.opcua.security import create_client_certificate
from hil_tests.rig.controller_run import (
    conveyor_safe_state,
    live,
    make_controller,
    start_controller,
    stop_controller,
    without_model,
)
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import wait_for
from hil_tests.rig.plant import Plant
from hil_tests.rig.servers import OpcUaSecurityOptions, Rig

BOUND_MULTIPLE = 3.0  # timed asserts: documented bound x this (a loaded 2-core CI machine)
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_line.toml"
# the demo config's stale_timeout_s per PLC
STALE = {plc.name: plc.effective_stale_timeout_s() for _, plc in load_config(DEMO_CONFIG).plcs()}


def comm_bound(plc: str) -> float:
    """docs/safety.md: comm loss within stale_timeout_s + one housekeeping period of the last good data."""
    return STALE[plc] + HOUSEKEEPING_S


# ---- configs ------------------------------------------------------------------------------------


def secured(text: str, certs: Path, security: OpcUaSecurityOptions) -> str:
    """The conveyor over Basic256Sha256 SignAndEncrypt with a pinned server certificate."""
    cert, key = certs / "client.der", certs / "client_key.pem"
    block = (
        '\n  [opcua.security]\n  policy = "Basic256Sha256"\n  mode = "SignAndEncrypt"\n'
        f'  client_certificate = "{cert}"\n  client_private_key = "{key}"\n'
        f'  server_certificate = "{security.server_cert}"\n'
    )
    anchor = "\n  [[opcua.groups]]"
    assert text.count(anchor) == 1
    return text.replace(anchor, block + anchor)


def plc(controller: Controller, name: str):
    return next(p for p in controller.plcs if p.name == name)


def line_stop_writes(rig: Rig) -> list:
    return [w for w in rig.recorder.writes if w.actuator == "line_stop"]


def comm_losses(controller: Controller) -> list[dict]:
    return [
        e for e in controller.events.since() if e["kind"] == "driver" and e["message"].endswith(": comm loss")
    ]


def safe_state_writes(controller: Controller) -> list[dict]:
    return [
        e
        for e in controller.events.since()
        if e["source"].startswith("safe_state:") and e.get("result") == "fired"
    ]


def only_stops(rig: Rig) -> bool:
    """Every line_stop write that reached a PLC was a stop (the line stopping may also raise the
    line alarm, whose action writes the same stop again; nothing ever writes a restart)."""
    return all(w.value == 1.0 for w in line_stop_writes(rig))


def raises(controller: Controller, alarm: str) -> list[dict]:
    return [
        e
        for e in controller.events.since()
        if e["kind"] == "alarm" and e["source"] == alarm and e.get("state") == "UNACK"
    ]


def history(controller: Controller) -> str:
    """The event log, for assertion messages."""
    t0 = controller.started_at
    return "\n".join(
        f"{e['time'] - t0:8.3f} {e['kind']:6} {e['source']}: {e['message']}"
        for e in controller.events.since()
    )


def fired(controller: Controller, action: str) -> list[dict]:
    return [e for e in controller.events.since() if e["source"] == action and e.get("result") == "fired"]


def events_with(controller: Controller, text: str) -> list[dict]:
    return [e for e in controller.events.since() if text in e["message"]]


async def plant_seconds(rig: Rig, seconds: float) -> None:
    t0 = rig.plant.t
    await wait_for(lambda: rig.plant.t >= t0 + seconds, timeout=seconds * 4 + 5, what=f"{seconds} plant s")


async def hold_for(seconds: float, check, what: str) -> None:
    """`check()` must hold on every look for `seconds` (no flapping, no early return to normal)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        await asyncio.sleep(0.02)


# ---- healthy start ------------------------------------------------------------------------------


async def test_twenty_healthy_starts_with_a_slow_secured_opcua_plc_write_nothing(tmp_path, model):
    """Item 1: a PLC that takes a while to connect is 'connecting', never comm-lost at start-up."""
    certs = tmp_path / "certs"
    certs.mkdir()
    create_client_certificate(
        certs / "client.der", certs / "client_key.pem", "urn:linesentry:hil-client", "localhost"
    )
    security = OpcUaSecurityOptions(tmp_path / "pki", trusted_client_certs=[certs / "client.der"])
    async with Rig(Plant(5), opcua_port=0, modbus_port=0, security=security) as rig:
        rig.opcua_gate.delay_s = 0.01  # every chunk back from the PLC 10 ms late: a slow link
        connect_s = []
        for run in range(20):
            controller = make_controller(
                tmp_path / f"run{run}", rig, model, conveyor_safe_state, lambda t: secured(t, certs, security)
            )
            task = asyncio.create_task(controller.run())
            try:
                await live(controller)
                connect_s.append(
                    plc(controller, "conveyor").driver.stats.last_alive - controller.started_mono
                )
                rounds = controller.housekeeping_rounds
                await wait_for(
                    lambda c=controller, r=rounds: c.housekeeping_rounds >= r + 3,
                    timeout=5,
                    what="three housekeeping rounds with every PLC live",
                )
            finally:
                await stop_controller(controller, task)
            assert not any(p.comm_lost for p in controller.plcs), f"start {run}: comm loss"
            assert comm_losses(controller) == [] and safe_state_writes(controller) == []
            assert line_stop_writes(rig) == [] and not rig.plant.line_stop, (
                f"start {run}: the line was stopped"
            )
        # the case the old code got wrong: data only arrived after the first housekeeping round
        assert max(connect_s) > HOUSEKEEPING_S, connect_s


# ---- dead and silent devices --------------------------------------------------------------------


def wrong_unit_id(text: str) -> str:
    assert text.count("device_id = 1\n") == 1
    return text.replace("device_id = 1\n", "device_id = 7\n")


def illegal_addresses(text: str) -> str:
    """Every Modbus tag 200 addresses up: the device answers every read with an exception."""
    return re.sub(r"^(  address = )(\d+)$", lambda m: f"{m[1]}{int(m[2]) + 200}", text, flags=re.M)


@pytest.mark.parametrize("fault", [wrong_unit_id, illegal_addresses], ids=["wrong_unit_id", "all_exceptions"])
async def test_a_dead_modbus_device_is_comm_loss_and_safe_state_without_flapping(tmp_path, rig, model, fault):
    """Item 8: TCP accepted, no good data ever: comm loss counted from the controller's start."""
    controller = make_controller(tmp_path, rig, model, fault)
    task = asyncio.create_task(controller.run())
    press = plc(controller, "press")
    try:
        await wait_for(lambda: press.comm_lost or task.done(), timeout=10, what="press comm loss")
        raised_after = time.monotonic() - controller.started_mono
        assert STALE["press"] <= raised_after <= BOUND_MULTIPLE * comm_bound("press"), raised_after
        await wait_for(lambda: rig.plant.line_stop, timeout=5, what="the safe-state line stop at the PLC")
        assert "press_comm_loss" in controller.alarms.active()
        # no flapping: reconnect attempts and exception replies never count as data flowing
        await hold_for(
            4 * STALE["press"], lambda: press.comm_lost, "press comm loss cleared without good data"
        )
        assert press.driver.stats.last_alive == -math.inf
        assert len(raises(controller, "press_comm_loss")) == 1, history(controller)
        assert len(comm_losses(controller)) == 1 and len(safe_state_writes(controller)) == 1
        assert only_stops(rig)
    finally:
        await stop_controller(controller, task)


@pytest.mark.parametrize("target", ["conveyor", "press"])
async def test_a_frozen_plc_is_comm_loss_within_the_bound_then_recovers(tmp_path, rig, model, target):
    """Items 8, 9, 13: the PLC accepts requests and never answers. Comm loss within
    stale_timeout_s + one housekeeping period, one safe-state write, its tag alarms suppressed
    by design while it lasts, and comm loss clears only when good data flows again."""
    controller = make_controller(tmp_path, rig, model, conveyor_safe_state)
    task = await start_controller(controller)
    lost = plc(controller, target)
    try:
        await live(controller)
        await plant_seconds(rig, 1.0)
        rig.gate(target).frozen = True
        frozen_at = time.monotonic()
        await wait_for(lambda: lost.comm_lost, timeout=15, what=f"{target} comm loss")
        took = time.monotonic() - frozen_at
        assert took <= BOUND_MULTIPLE * comm_bound(target), took
        # the safe state reaches the line through the other PLC
        await wait_for(lambda: rig.plant.line_stop, timeout=5, what="the safe-state line stop")
        await hold_for(4 * STALE[target], lambda: lost.comm_lost, f"{target} comm loss flapped")
        assert len(safe_state_writes(controller)) == 1 and only_stops(rig), history(controller)
        assert len(raises(controller, f"{target}_comm_loss")) == 1
        # consequential alarms: the lost PLC's tag alarms are suppressed, never annunciated
        own = {
            "conveyor": ("bearing_temp_bad", "bearing_temp_limit", "motor_current_limit"),
            "press": ("pump_flow_bad", "hydraulic_pressure_limit", "oil_temp_high"),
        }[target]
        assert not set(own) & set(controller.alarms.active())
        assert all(raises(controller, name) == [] for name in own)
        rig.gate(target).thaw()
        await wait_for(lambda: not lost.comm_lost, timeout=20, what=f"{target} good data again")
        assert events_with(controller, "comm loss cleared")
    finally:
        await stop_controller(controller, task)


async def test_a_failed_safe_state_write_is_an_alarm(tmp_path, rig, model):
    """Item 13: the press is lost and its safe state (a line stop over OPC UA) cannot be written."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    try:
        await live(controller)
        rig.gate("conveyor").frozen = True  # the write to the conveyor will time out
        await rig.take_down("press")
        await wait_for(
            lambda: "press_safe_state_failed" in controller.alarms.active(),
            timeout=20,
            what="the safe-state failure alarm",
        )
        (alarm,) = [a for a in controller.alarms.status() if a["name"] == "press_safe_state_failed"]
        assert alarm["priority"] == "critical" and alarm["state"] == "UNACK"
        assert events_with(controller, "safe-state write conveyor_line_stop=True failed")
    finally:
        await stop_controller(controller, task)


# ---- bad sensors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "alarm"),
    [("bearing_temp", "bearing_temp_bad"), ("pump_flow", "pump_flow_bad")],
    ids=["opcua_bad_status", "modbus_exception"],
)
async def test_a_sensor_dropout_raises_its_bad_alarm_for_as_long_as_it_lasts(
    tmp_path, rig, model, tag, alarm
):
    """Items 4, 5: OPC UA serves Bad status, Modbus answers the block with exception 4."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 1.0)
        rig.injector.faults.append(FaultSpec(type="dropout", tag=tag, onset_s=rig.plant.t, duration_s=6.0))
        onset = time.monotonic()
        await wait_for(lambda: alarm in controller.alarms.active(), timeout=10, what=alarm)
        assert time.monotonic() - onset <= BOUND_MULTIPLE * (0.5 + 0.5)  # on_delay_s + a poll/publish
        await hold_for(2.5, lambda: controller.alarms.state(alarm) == "UNACK", f"{alarm} left UNACK")
    finally:
        await stop_controller(controller, task)


@pytest.mark.parametrize(
    ("tag", "alarm", "offset"),
    [("bearing_temp", "bearing_temp_limit", 60.0), ("hydraulic_pressure", "hydraulic_pressure_limit", 250.0)],
    ids=["opcua", "modbus"],
)
async def test_a_constant_value_over_its_limit_keeps_the_alarm_active(
    tmp_path, rig, model, tag, alarm, offset
):
    """Item 4: over the limit and then frozen there (an OPC UA subscription sends no more changes)."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    try:
        await live(controller)
        t = rig.plant.t
        rig.injector.faults += [
            FaultSpec(type="spike", tag=tag, onset_s=t, duration_s=12.0, magnitude=offset),
            FaultSpec(type="stuck", tag=tag, onset_s=t + 0.2, duration_s=12.0),
        ]
        await wait_for(lambda: alarm in controller.alarms.active(), timeout=10, what=alarm)
        # off_delay_s is 2 s: a limit flag lost between batches would return it to normal well within 5 s
        await hold_for(5.0, lambda: controller.alarms.state(alarm) == "UNACK", f"{alarm} returned to normal")
    finally:
        await stop_controller(controller, task)


async def test_without_a_model_the_limit_alarm_fires_and_its_action_writes(tmp_path, rig):
    """Item 6: commissioning (no [detector] model): hard limits and bad quality still alarm and act."""
    controller = make_controller(tmp_path, rig, None, without_model)
    assert controller.model_path is None
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 1.0)
        assert controller.alarms.active() == () and line_stop_writes(rig) == []
        rig.injector.faults.append(
            FaultSpec(type="spike", tag="motor_current", onset_s=rig.plant.t, duration_s=3.0, magnitude=40.0)
        )
        await wait_for(lambda: rig.plant.line_stop, timeout=10, what="the line stop on over-current")
        assert "motor_current_limit" in controller.alarms.active()
        (event,) = await wait_for(
            lambda: fired(controller, "stop_on_overcurrent"), timeout=2, what="its event"
        )
        assert "first out: motor_current_limit" in event["message"], history(controller)
        assert controller.status()["alarms"]["first_out"].startswith("motor_current_limit")
        rig.injector.faults.append(
            FaultSpec(type="dropout", tag="bearing_temp", onset_s=rig.plant.t, duration_s=3.0)
        )
        await wait_for(
            lambda: "bearing_temp_bad" in controller.alarms.active(),
            timeout=10,
            what="bearing_temp_bad without a model",
        )
    finally:
        await stop_controller(controller, task)


def flatline_without_model(text: str) -> str:
    """Commissioning with a stuck-sensor alarm: no model, [detector.flatline_s] for the vibration."""
    text = re.sub(r"^model = .*\n", "", text, flags=re.M)
    for name in ("line_anomaly", "motor_current_flatline", "hydraulic_pressure_flatline", "stop_line_failed"):
        text, n = re.subn(rf'\[\[alarms\]\]\nname = "{name}"\n(?:.+\n)*\n', "", text)
        assert n == 1, name
    text, n = re.subn(r"\[\[actions\]\]\n(?:.+\n)*", "", text)
    assert n == 1
    anchor = "\n# --- alarms"
    assert text.count(anchor) == 1
    return text.replace(anchor, "\n  [detector.flatline_s]\n  vibration_rms = 2.0\n" + anchor)


async def test_without_a_model_a_stuck_sensor_raises_its_flatline_alarm(tmp_path, rig):
    """Commissioning: the rules-only detector runs flatline for the tags of [detector.flatline_s]."""
    controller = make_controller(tmp_path, rig, None, flatline_without_model)
    assert controller.model_path is None
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 3.0)  # longer than flatline_s: a live vibration never flatlines
        assert controller.alarms.state("vibration_flatline") == "NORMAL", history(controller)
        onset = time.monotonic()
        rig.injector.faults.append(
            FaultSpec(type="stuck", tag="vibration_rms", onset_s=rig.plant.t, duration_s=30.0)
        )
        await wait_for(
            lambda: controller.alarms.state("vibration_flatline") == "UNACK",
            timeout=20,
            what="vibration_flatline without a model",
        )
        # flatline_s 2 s + on_delay_s 1 s, from the last change before the fault (not earlier)
        assert time.monotonic() - onset >= 2.0, history(controller)
    finally:
        await stop_controller(controller, task)


# ---- detection that stays sound -----------------------------------------------------------------


async def test_a_poisoned_value_does_not_blind_the_detector(tmp_path, rig, model):
    """Item 3: one GOOD reading of 1e300; afterwards the score is finite and a jam still stops the line."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 2.0)
        # inhibited while the poison passes, so the next jam is the stop's first activation
        controller.actions.inhibit("stop_line", "test", time.time(), True)
        rig.injector.faults.append(
            FaultSpec(
                type="spike", tag="vibration_rms", onset_s=rig.plant.t, duration_s=0.05, magnitude=1e300
            )
        )
        await wait_for(
            lambda: controller.values["vibration_rms"] > 1e299, timeout=5, what="the poisoned value"
        )
        await wait_for(
            lambda: controller.values["vibration_rms"] < 100, timeout=5, what="normal values again"
        )
        await plant_seconds(rig, 1.0)  # the detector's debounce has decided on the poison by now
        await wait_for(
            lambda: (
                math.isfinite(controller.line_score)
                and not controller.line_alarm
                and "line_anomaly" not in controller.alarms.active()
            ),
            timeout=30,
            what="a finite score and a quiet line after the poison",
        )
        controller.actions.inhibit("stop_line", "test", time.time(), False)
        await plant_seconds(rig, 1.0)
        assert math.isfinite(controller.line_score) and not rig.plant.line_stop, history(controller)
        rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=5.0))
        await wait_for(lambda: rig.plant.line_stop, timeout=10, what="the jam's line stop")
    finally:
        await stop_controller(controller, task)


async def test_a_stuck_sensor_stop_names_its_first_out_cause(tmp_path, rig, model):
    """Item 13: the stop is the line alarm's, the first cause the vibration flatline, which the
    stop then suppresses by design (suppress_when conveyor_line_stop == 1)."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 2.0)
        rig.injector.faults.append(
            FaultSpec(type="stuck", tag="vibration_rms", onset_s=rig.plant.t, duration_s=30.0)
        )
        await wait_for(lambda: rig.plant.line_stop, timeout=40, what="the line stop")
        (event,) = await wait_for(lambda: fired(controller, "stop_line"), timeout=2, what="the fired event")
        assert "first out: vibration_flatline" in event["message"], history(controller)
        stop = next(a for a in controller.status()["actions"] if a["name"] == "stop_line")
        assert stop["first_out"].startswith("vibration_flatline")
        await wait_for(
            lambda: controller.alarms.state("vibration_flatline") == "SUPPRESSED",
            timeout=10,
            what="the flatline suppressed by the stop",
        )
        assert controller.status()["alarms"]["first_out"].startswith("vibration_flatline")
    finally:
        await stop_controller(controller, task)


class SteppedClock(Clock):
    """System clocks, with wall time stepped by `offset` seconds (an NTP step, a wrong RTC)."""

    offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset


async def test_wall_clock_steps_raise_no_alarm_and_write_nothing(tmp_path, rig, model):
    """Item 2: wall time steps hours and a day forward and back: nothing safety-related moves.
    (With the detector on wall time, every forward step flags the tags not fresh in that frame.)"""
    clock = SteppedClock()
    controller = make_controller(tmp_path, rig, model, clock=clock)
    task = await start_controller(controller)
    try:
        await live(controller)
        await plant_seconds(rig, 2.0)
        assert controller.alarms.active() == ()
        for step in (3 * 3600.0, -6 * 3600.0, 86400.0, -86400.0 + 3 * 3600.0):
            clock.offset += step
            await plant_seconds(rig, 2.0)
        await plant_seconds(rig, 2.0)
        annunciated = [e for e in controller.events.since() if e["kind"] == "alarm"
                       and e.get("state") in ("UNACK", "ACKED", "RTN_UNACK")]
        assert annunciated == [], history(controller)
        assert controller.alarms.active() == () and not any(p.comm_lost for p in controller.plcs)
        assert line_stop_writes(rig) == [] and not rig.plant.line_stop
    finally:
        await stop_controller(controller, task)

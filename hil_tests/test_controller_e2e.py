"""End to end over real sockets: the simulated plant and the real controller on the demo config.

The model is fitted on ten simulated minutes of normal operation (hil_tests.rig.training):
the plant wanders on time scales a short live recording does not cover.
"""

from pathlib import Path

import aiohttp
import numpy as np

from controller.config import load_config
from controller.record import record
from controller.runtime import Controller
from hil_tests.rig.controller_run import config_for_rig, run_with_controller
from hil_tests.rig.controller_run import start_controller as start
from hil_tests.rig.controller_run import stop_controller as stop
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import wait_for
from hil_tests.rig.scenario import parse_scenario
from hil_tests.rig.servers import Rig


def rig_config(tmp_path: Path, rig: Rig, *, model: Path | None) -> Path:
    """The shipped demo config, pointed at this rig's ports and a private state directory."""
    return config_for_rig(rig, tmp_path / "state", model, tmp_path / "line.toml")


async def test_record_reads_the_detector_tags_through_the_drivers(tmp_path, rig):
    config = load_config(rig_config(tmp_path, rig, model=tmp_path / "unused.npz"))
    times, values, tags = await record(config, 1.5)
    assert tags == config.detector_tags() and values.shape == (len(times), len(tags))
    assert len(times) > 50 and np.all(np.diff(times) >= 0)
    assert 1000 < np.median(values[:, tags.index("motor_speed")]) < 1600  # the plant's nominal rpm


async def test_a_jam_is_detected_and_stops_the_line_through_opcua(tmp_path, rig, model):
    controller = Controller(load_config(rig_config(tmp_path, rig, model=model)), api_port=0)
    task = await start(controller)
    base = f"http://127.0.0.1:{controller.api_port}/api/v1"
    try:
        # Normal operation first: five plant seconds without a line alarm or a stop.
        t0 = rig.plant.t
        await wait_for(lambda: rig.plant.t > t0 + 5 or controller.line_alarm, timeout=20,
                       what="5 s of normal operation")
        assert not controller.line_alarm and not rig.plant.line_stop
        assert rig.recorder.writes == [] or {w.actuator for w in rig.recorder.writes} <= {"heartbeat"}

        onset = rig.plant.t
        rig.injector.faults.append(FaultSpec(type="jam", onset_s=onset, duration_s=5.0))
        await wait_for(lambda: rig.plant.line_stop, timeout=10, what="the line stop to reach the PLC")
        stop_write = next(w for w in rig.recorder.writes if w.actuator == "line_stop")
        assert stop_write.server == "conveyor" and stop_write.value == 1.0
        await wait_for(lambda: any(e["source"] == "stop_line" and e.get("result") == "confirmed"
                                   for e in controller.events.since()), timeout=5,
                       what="the readback confirmation")

        async with aiohttp.ClientSession() as http:
            status = await (await http.get(f"{base}/status")).json()
            assert "line_anomaly" in status["alarms"]["active"]
            alarms = {a["name"]: a for a in await (await http.get(f"{base}/alarms")).json()}
            assert alarms["line_anomaly"]["state"] == "UNACK"
            tags = {t["tag"]: t for t in await (await http.get(f"{base}/tags")).json()}
            assert tags["motor_current"]["quality"] == "good"
            stop_line = next(a for a in status["actions"] if a["name"] == "stop_line")
            assert stop_line["latched"] is True
            r = await http.post(f"{base}/alarms/line_anomaly/ack", json={"user": "ann"})
            assert r.status == 401
            r = await http.post(f"{base}/alarms/line_anomaly/ack", json={"user": "ann"},
                                headers={"Authorization": f"Bearer {controller.token}"})
            assert r.status == 200
            metrics = await (await http.get(f"http://127.0.0.1:{controller.api_port}/metrics")).text()
            assert "linesentry_step_seconds_count" in metrics
            assert 'linesentry_plc_connected{plc="press"} 1.0' in metrics
        await wait_for(lambda: any(e["source"] == "line_anomaly" and e.get("user") == "ann"
                                   for e in controller.events.since()), timeout=2,
                       what="the acknowledgement in the event log")
    finally:
        await stop(controller, task)
    # The latch survives a restart (the saved state is restored at start, not by the constructor).
    again = Controller(load_config(rig_config(tmp_path, rig, model=model)), api_port=0)
    task = await start(again)
    try:
        assert next(a for a in again.actions.status() if a["name"] == "stop_line")["latched"] is True
    finally:
        await stop(again, task)


async def test_press_loss_drives_the_safe_state_and_heartbeats_flow(tmp_path, rig, model):
    config = load_config(rig_config(tmp_path, rig, model=model))
    controller = Controller(config, api_port=0)
    task = await start(controller)
    try:
        await wait_for(lambda: {h.server for h in rig.recorder.heartbeats} >= {"conveyor", "press"},
                       timeout=5, what="heartbeats from the controller on both PLCs")
        beats = [h.value for h in rig.recorder.heartbeats if h.server == "press"]
        assert beats == sorted(beats) and len(set(beats)) == len(beats)  # an incrementing counter

        await rig.take_down("press")
        await wait_for(lambda: rig.plant.line_stop, timeout=10, what="the safe-state line stop")
        assert "press_comm_loss" in controller.alarms.active()
        assert np.all(controller.line.quality[controller.line.binding(["pump_flow"])] >= 3)
        await rig.bring_up("press")
        await wait_for(lambda: not controller.plcs[1].comm_lost, timeout=15, what="press data again")
    finally:
        await stop(controller, task)


async def test_shadow_mode_logs_the_stop_and_writes_nothing(tmp_path, rig, model):
    path = rig_config(tmp_path, rig, model=model)
    path.write_text(path.read_text().replace("shadow = false\nlog_level", "shadow = true\nlog_level"))
    controller = Controller(load_config(path), api_port=0)
    task = await start(controller)
    try:
        rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=5.0))
        await wait_for(lambda: any(e["source"] == "stop_line" and e.get("result") == "shadow"
                                   for e in controller.events.since()), timeout=10,
                       what="a shadow event for stop_line")
        assert not rig.plant.line_stop
        assert not [w for w in rig.recorder.writes if w.actuator == "line_stop"]
    finally:
        await stop(controller, task)


async def test_scenario_runner_judges_a_jam_against_the_real_controller(model):
    """The `linesentry hil` path: scenario -> rig + controller -> report (detection, actuation)."""
    scenario = parse_scenario({
        "name": "short_jam", "duration_s": 14, "seed": 3, "repeat": 1,
        "normal": [{"start_s": 0, "end_s": 8}],
        "faults": [{"type": "jam", "onset_s": 9, "duration_s": 3,
                    "expect": {"alarm": "line_anomaly", "within_ms": 1000, "action": "line_stop",
                               "allow": ["motor_current_limit"]}}],
    })
    report = await run_with_controller(scenario, model)
    summary = report.summary()["short_jam"]
    assert summary["detected"] == 1 and summary["missed_faults"] == 0 and summary["missed_actions"] == 0
    assert summary["false_alarms"] == 0, report.runs[0].false_alarms
    assert 0 < summary["detection_ms"]["p50"] < 1000 and summary["actuation_ms"]["n"] == 1


async def test_an_interlock_blocks_the_stop_when_the_line_is_not_running(tmp_path, rig, model):
    """stop_line requires motor_speed > 50: with the conveyor already stopped, nothing is written."""
    controller = Controller(load_config(rig_config(tmp_path, rig, model=model)), api_port=0)
    task = await start(controller)
    try:
        rig.plant.set_actuator("line_stop", True)  # stopped at the PLC by someone else
        await wait_for(lambda: controller.values["motor_speed"] < 50, timeout=10, what="the conveyor to stop")
        writes_before = len([w for w in rig.recorder.writes if w.actuator == "line_stop"])
        rig.injector.faults.append(FaultSpec(type="stuck", onset_s=rig.plant.t, duration_s=20.0,
                                             tag="hydraulic_pressure"))
        await wait_for(lambda: any(e["source"] == "stop_line" and e.get("result") == "blocked"
                                   for e in controller.events.since()), timeout=15,
                       what="the interlock to block stop_line")
        assert len([w for w in rig.recorder.writes if w.actuator == "line_stop"]) == writes_before
        blocked = next(e for e in controller.events.since() if e.get("result") == "blocked")
        assert "motor_speed > 50" in blocked["message"]
    finally:
        await stop(controller, task)


async def test_validate_connect_reaches_both_simulated_plcs(tmp_path, rig):
    from controller.cli import probe_plcs

    reached = await probe_plcs(load_config(rig_config(tmp_path, rig, model=tmp_path / "m.npz")))
    assert {name: (p.summary, p.reached, p.bad) for name, p in reached.items()} == {
        "conveyor": ("yes (7 of 7 tags good)", True, []), "press": ("yes (8 of 8 tags good)", True, [])}

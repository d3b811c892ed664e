"""Adversarial review of the split runtime over real sockets (simulated plant, asyncua and pymodbus
servers behind the rig's TCP gates, the real controller on the demo config): starts that fail at
each step, a PLC that flaps every 100 ms, one that refuses us for good (FAILED), one that is down
when the controller starts. Bounds are the documented ones x BOUND_MULTIPLE (a loaded machine).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from controller.errors import LinesentryError
from drivers.base import ConnectionState, Quality
from drivers.opcua.security import create_client_certificate
from hil_tests.rig.controller_run import (
    conveyor_safe_state,
    live,
    make_controller,
    start_controller,
    stop_controller,
)
from hil_tests.rig.net import wait_for
from hil_tests.rig.plant import Plant
from hil_tests.rig.servers import OpcUaSecurityOptions, Rig
from hil_tests.test_fault_matrix import BOUND_MULTIPLE, STALE, comm_bound, history, plc, raises, secured

RUNTIME_TASKS = ("driver:", "watchdog:", "housekeeping", "write:", "linesentry-sync")


def runtime_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(RUNTIME_TASKS)]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def fired(controller, action: str) -> list[dict]:
    return [e for e in controller.events.since() if e["source"] == action and e.get("result") == "fired"]


def tag_quality(controller, name: str) -> set[Quality]:
    return {Quality(int(controller.line.quality[i])) for i in plc(controller, name).binding}


# ---- starts that fail ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["model file", "missing model", "state dir not writable", "api port taken"])
async def test_a_start_that_fails_at_a_step_unwinds_fully(tmp_path, rig, model, step):
    """No API port left open, no task running, no PLC session opened, no state file written, and the
    error is one line (the CLI prints str(exc) for LinesentryError and OSError)."""
    edits = []
    if step == "model file":
        model = tmp_path / "bad.npz"
        model.write_bytes(b"not a model at all")
    elif step == "missing model":
        model = tmp_path / "missing.npz"
    elif step == "state dir not writable":
        edits.append(lambda text: text.replace(f'"{tmp_path / "state"}"', f'"{tmp_path / "state" / "sub"}"'))
        (tmp_path / "state").write_text("a file where the state directory goes")
    controller = make_controller(tmp_path, rig, model, *edits)
    blocker = socket.socket()
    if step == "api port taken":
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        controller.api_port = blocker.getsockname()[1]
    before = rig.opcua_gate.connections, rig.modbus_gate.connections
    try:
        with pytest.raises((LinesentryError, OSError)) as failure:
            await asyncio.wait_for(controller.run(), 60)
    finally:
        blocker.close()
    assert "\n" not in str(failure.value) and str(failure.value), repr(failure.value)
    assert runtime_tasks() == []
    assert (rig.opcua_gate.connections, rig.modbus_gate.connections) == before, "a PLC session was opened"
    if step != "api port taken" and controller.api_port:
        assert not listening(controller.api_port), "the API port was left open"
    if step != "state dir not writable":
        assert not (tmp_path / "state" / "state.json").exists(), "a failed start wrote the state file"


# ---- the connection-state channel ---------------------------------------------------------------


async def test_a_plc_flapping_every_100_ms_never_wedges_and_recovers(tmp_path, rig, model):
    """Connection dropped every 100 ms for 5 s: each loss is at most one comm-loss alarm and one
    safe-state write, and within the bound after the flapping ends the press is connected, its
    comm loss cleared and its tags good again."""
    controller = make_controller(tmp_path, rig, model)
    task = await start_controller(controller)
    press = plc(controller, "press")
    try:
        await live(controller)
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            rig.modbus_gate.drop_connections()
            await asyncio.sleep(0.1)
        stopped = time.monotonic()
        await wait_for(lambda: press.state is ConnectionState.CONNECTED and not press.comm_lost
                       and tag_quality(controller, "press") <= {Quality.GOOD, Quality.UNCERTAIN},
                       timeout=30, what="the press connected with good data after the flapping")
        took = time.monotonic() - stopped
        losses = [e for e in controller.events.since() if e["message"].endswith(": comm loss")]
        assert len(raises(controller, "press_comm_loss")) <= len(losses), history(controller)
        assert len(fired(controller, "safe_state:press")) <= len(losses), history(controller)
        assert press.supervisor.state is ConnectionState.CONNECTED
        print(f"\nflapping 5 s at 10 Hz: {len(losses)} comm losses, recovered {took:.2f} s after it ended")
    finally:
        await stop_controller(controller, task)
    assert runtime_tasks() == []


async def test_a_plc_that_refuses_our_certificate_is_failed_comm_lost_never_retried(tmp_path, model, caplog):
    """A secured OPC UA PLC that does not trust our client certificate: FAILED (not backing off for
    ever), its comm-loss alarm raised within the bound, its tags COMM_LOST, the safe state written
    once through the other PLC, one ERROR line; and no reconnect attempts afterwards."""
    certs = tmp_path / "certs"
    certs.mkdir()
    create_client_certificate(certs / "client.der", certs / "client_key.pem", "urn:linesentry:hil-client",
                              "localhost")
    create_client_certificate(certs / "other.der", certs / "other_key.pem", "urn:linesentry:other",
                              "localhost")
    security = OpcUaSecurityOptions(tmp_path / "pki", trusted_client_certs=[certs / "other.der"])
    async with Rig(Plant(5), opcua_port=0, modbus_port=0, security=security) as rig:
        controller = make_controller(tmp_path / "run", rig, model, conveyor_safe_state,
                                     lambda t: secured(t, certs, security))
        conveyor = plc(controller, "conveyor")
        with caplog.at_level(logging.ERROR):
            task = asyncio.create_task(controller.run())
            try:
                await wait_for(lambda: conveyor.state is ConnectionState.FAILED or task.done(), timeout=30,
                               what="the conveyor FAILED")
                bound = BOUND_MULTIPLE * comm_bound("conveyor") + 5
                await wait_for(lambda: conveyor.comm_lost, timeout=bound, what="the conveyor comm loss")
                assert "conveyor_comm_loss" in controller.alarms.active()
                assert tag_quality(controller, "conveyor") == {Quality.COMM_LOST}
                await wait_for(lambda: rig.plant.line_stop, timeout=10, what="the safe-state line stop")
                attempts = rig.opcua_gate.connections
                await asyncio.sleep(4 * STALE["conveyor"])
                assert rig.opcua_gate.connections == attempts, "a FAILED PLC is still being retried"
                assert conveyor.comm_lost and len(fired(controller, "safe_state:conveyor")) == 1, \
                    history(controller)
                assert len(raises(controller, "conveyor_comm_loss")) == 1
                assert controller.status()["plcs"][0]["state"] == "failed"
            finally:
                await stop_controller(controller, task)
        errors = [r.getMessage() for r in caplog.records if "no more attempts" in r.getMessage()]
        assert len(errors) == 1, errors  # said once, not once per (absent) retry
    assert runtime_tasks() == []


async def test_a_plc_down_at_start_is_comm_loss_then_recovers_when_it_comes_up(tmp_path, rig, model):
    await rig.modbus_gate.stop_listening()
    controller = make_controller(tmp_path, rig, model)
    press = plc(controller, "press")
    task = asyncio.create_task(controller.run())
    try:
        await wait_for(lambda: press.comm_lost or task.done(), timeout=20, what="press comm loss")
        assert not task.done()
        assert time.monotonic() - controller.started_mono <= BOUND_MULTIPLE * comm_bound("press") + 1
        assert len(fired(controller, "safe_state:press")) <= 1
        await rig.modbus_gate.start()
        await wait_for(lambda: not press.comm_lost and press.state is ConnectionState.CONNECTED,
                       timeout=30, what="the press back")
        await wait_for(lambda: tag_quality(controller, "press") <= {Quality.GOOD, Quality.UNCERTAIN},
                       timeout=10, what="the press tags good")
    finally:
        await stop_controller(controller, task)
    assert runtime_tasks() == []


# ---- writes -------------------------------------------------------------------------------------


def stop_through_the_press(text: str) -> str:
    """The over-current action writes the press's line_stop coil (Modbus) instead of the conveyor's."""
    old = 'write = { tag = "conveyor_line_stop", value = true }'
    assert text.count(old) == 1
    return text.replace(old, 'write = { tag = "line_stop", value = true }')


async def test_an_action_write_that_times_out_fails_after_its_alarm_and_its_fired(tmp_path, rig):
    """The PLC the action writes to stops answering just before the alarm: the write times out, the
    action is 'failed' (never left 'fired'), and the event log reads alarm -> fired -> failed."""
    from controller.alarms import AlarmState
    from hil_tests.rig.controller_run import without_model
    from hil_tests.rig.faults import FaultSpec

    controller = make_controller(tmp_path, rig, None, without_model, stop_through_the_press)
    task = await start_controller(controller)
    try:
        await live(controller)
        rig.modbus_gate.frozen = True
        rig.injector.faults.append(
            FaultSpec(type="spike", tag="motor_current", onset_s=rig.plant.t, duration_s=3.0, magnitude=40.0))
        action = "stop_on_overcurrent"
        done = lambda: [e for e in controller.events.since() if e["source"] == action  # noqa: E731
                        and e.get("result") in ("confirmed", "failed")]
        (result,) = await wait_for(done, timeout=30, what="the action's write result")
        assert result["result"] == "failed", history(controller)
        assert controller.actions.has_failed(action)
        events = controller.events.since()
        ids = {"alarm": next(e["id"] for e in events if e["source"] == "motor_current_limit"
                             and e.get("state") == str(AlarmState.UNACK)),
               "fired": fired(controller, action)[0]["id"], "failed": result["id"]}
        assert ids["alarm"] < ids["fired"] < ids["failed"], (ids, history(controller))
    finally:
        rig.modbus_gate.thaw()
        await stop_controller(controller, task)
    assert runtime_tasks() == []

"""The simulated PLCs over real sockets, reached through the project's drivers (proving the contract)."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.base import ConnectionState, Quality, ReadingBatch
from drivers.modbus.driver import ModbusDriver
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.security import create_client_certificate
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter
from hil_tests.rig.endpoints import modbus_config, opcua_config
from hil_tests.rig.faults import FaultInjector, FaultSpec
from hil_tests.rig.net import wait_for
from hil_tests.rig.plant import WATCHDOG_EXPIRED, Plant, PlantParams
from hil_tests.rig.recorder import Recorder
from hil_tests.rig.servers import OpcUaSecurityOptions, Rig


class Collector:
    """on_batch target keeping every batch; answers "latest (value, quality) of tag i".

    As on_state target it puts each loss the supervisor reports into the same timeline, as an
    all-COMM_LOST entry (where the controller marks the PLC's tags COMM_LOST).
    """

    def __init__(self) -> None:
        self.batches: list[ReadingBatch] = []

    def __call__(self, batch: ReadingBatch) -> None:
        self.batches.append(batch)

    def on_state(self, state: ConnectionState, _detail: str) -> None:
        if state is ConnectionState.BACKOFF:
            self.batches.append(ReadingBatch.empty_for([0], Quality.COMM_LOST))

    def first(self, quality: Quality, since: int = 0) -> int | None:
        for n, b in enumerate(self.batches[since:], start=since):
            if len(b) and np.all(b.quality == quality):
                return n
        return None


def fast_supervisor(driver, on_batch: Collector) -> DriverSupervisor:
    return DriverSupervisor(
        driver,
        on_batch,
        backoff=Backoff(initial=0.05, factor=2.0, cap=0.3),
        limiter=SessionRateLimiter(per_minute=600),
        on_state=on_batch.on_state,
    )


def rig_with(*faults: dict, **params) -> Rig:
    plant = Plant(seed=1, params=PlantParams(**params))
    return Rig(
        plant, FaultInjector([FaultSpec(**f) for f in faults]), Recorder(), opcua_port=0, modbus_port=0
    )


async def connect(rig: Rig, **kw) -> tuple[OpcUaDriver, ModbusDriver]:
    ou = OpcUaDriver(opcua_config(rig.opcua_endpoint, timeout_s=1.0))
    mb = ModbusDriver(modbus_config(rig.modbus_port, timeout_s=0.5, poll_interval_s=0.05, **kw))
    await ou.connect()
    await mb.connect()
    return ou, mb


def by_name(driver, batch: ReadingBatch) -> dict[str, tuple[float, int]]:
    return {
        driver.tag_names[i]: (float(v), int(q))
        for i, v, q in zip(batch.index, batch.values, batch.quality, strict=True)
    }


async def test_address_map_serves_the_plant_through_both_drivers():
    async with rig_with() as rig:
        ou, mb = await connect(rig)
        try:
            await wait_for(lambda: rig.plant.t > 0.2, what="a few ticks")
            o, m = by_name(ou, await ou.read()), by_name(mb, await mb.read())
            snap = rig.plant.snapshot()
            assert all(q == Quality.GOOD for _, q in [*o.values(), *m.values()])
            assert o["motor_current"][0] == pytest.approx(snap.value("motor_current"), abs=3)
            assert o["motor_speed"][0] == pytest.approx(snap.value("motor_speed"), rel=0.03)
            assert o["bearing_temp"][0] == pytest.approx(snap.value("bearing_temp"), abs=0.5)
            assert m["oil_temp"][0] == pytest.approx(snap.value("oil_temp"), abs=0.5)
            assert m["pump_flow"][0] == pytest.approx(snap.value("pump_flow"), abs=2)
            assert m["discharge_pressure"][0] == pytest.approx(snap.value("discharge_pressure"), abs=0.3)
            assert m["cycle_count"][0] == float(int(m["cycle_count"][0]))
            assert o["line_stop"][0] == 0 and m["line_stop"][0] == 0 and o["heartbeat"][0] == 0
            before = o["motor_current"][0]
            await wait_for(lambda: rig.plant.t > 0.5, what="more ticks")
            assert by_name(ou, await ou.read())["motor_current"][0] != before  # pushed every tick
        finally:
            await ou.close()
            await mb.close()


@pytest.mark.parametrize("via", ["opcua", "modbus"])
async def test_line_stop_through_either_plc_stops_the_line_and_is_stamped_on_arrival(via):
    async with rig_with() as rig:
        ou, mb = await connect(rig)
        try:
            writer, other = (ou, mb) if via == "opcua" else (mb, ou)
            server = "conveyor" if via == "opcua" else "press"
            speed0 = rig.plant.speed
            t0 = time.monotonic()
            await writer.write("line_stop", 1)
            t1 = time.monotonic()
            [w] = rig.recorder.writes
            assert (w.server, w.actuator, w.value) == (server, "line_stop", 1.0) and t0 <= w.mono <= t1
            await wait_for(lambda: rig.plant.speed < 0.05 * speed0, timeout=5, what="conveyor stopped")
            await wait_for(lambda: rig.plant.flow < 2, timeout=5, what="pump stopped")
            cycles = rig.plant.cycle_count
            # the other PLC shows the same actuator state (one plant behind both)
            await wait_for(lambda: True, timeout=0.1)
            got = by_name(other, await other.read(["line_stop"]))
            assert got["line_stop"][0] == 1
            o = by_name(ou, await ou.read(["motor_current", "motor_speed"]))
            assert o["motor_current"][0] < 1.0 and o["motor_speed"][0] < 0.05 * speed0
            assert rig.plant.cycle_count == cycles
            await other.write("line_stop", 0)
            await wait_for(lambda: rig.plant.speed > 0.9 * speed0, timeout=5, what="line restarted")
            assert [x.server for x in rig.recorder.writes] == [
                server,
                "conveyor" if via == "modbus" else "press",
            ]
        finally:
            await ou.close()
            await mb.close()


async def test_reject_gate_diverts_items_through_both_plcs():
    async with rig_with(item_period_s=0.1) as rig:
        ou, mb = await connect(rig)
        try:
            await mb.write("reject_gate", 1)
            assert rig.plant.reject_gate
            await wait_for(lambda: rig.plant.diverted >= 3, timeout=3, what="diverted items")
            await ou.write("reject_gate", 0)
            n = rig.plant.diverted
            await wait_for(lambda: rig.plant.items >= rig.plant.diverted + 3, timeout=3, what="items passing")
            assert rig.plant.diverted <= n + 1  # at most one item already on its way
            assert [(w.server, w.value) for w in rig.recorder.writes] == [("press", 1.0), ("conveyor", 0.0)]
        finally:
            await ou.close()
            await mb.close()


async def test_watchdog_expiry_is_recorded_when_both_heartbeats_stop():
    async with rig_with(watchdog_timeout_s=0.3) as rig:
        ou, mb = await connect(rig)
        try:
            for i in range(1, 16):
                await ou.write("heartbeat", i)
                await mb.write("heartbeat", i)
                await asyncio.sleep(0.05)  # the heartbeat period of a controller, not a wait for a condition
            assert not rig.recorder.events
            assert [h.value for h in rig.recorder.heartbeats if h.server == "press"] == list(range(1, 16))
            last = rig.recorder.heartbeats[-1].mono
            await wait_for(lambda: rig.recorder.events, timeout=3, what="watchdog event")
            [ev] = rig.recorder.events
            assert (
                ev.kind == WATCHDOG_EXPIRED and 0.3 - 0.02 <= ev.mono - last < 0.6
            )  # plant time moves in 10 ms ticks
            await mb.write("heartbeat", 99)  # one live heartbeat restores it
            await wait_for(lambda: len(rig.recorder.events) == 2, timeout=3, what="watchdog restored")
        finally:
            await ou.close()
            await mb.close()


async def test_dropout_gives_bad_quality_through_both_drivers():
    async with rig_with(
        {"type": "dropout", "tag": "bearing_temp", "onset_s": 0.2, "duration_s": 0.8},
        {"type": "dropout", "tag": "pump_flow", "onset_s": 0.2, "duration_s": 0.8},
    ) as rig:
        ou, mb = await connect(rig)
        try:
            await wait_for(lambda: rig.recorder.faults, what="dropout onset")
            await wait_for(lambda: rig.plant.t > 0.3, what="a tick after onset")
            o = by_name(ou, await ou.read())
            assert o["bearing_temp"][1] == Quality.BAD and np.isnan(o["bearing_temp"][0])
            assert o["motor_current"][1] == Quality.GOOD
            m = by_name(mb, await mb.read(["pump_flow"]))
            assert m["pump_flow"][1] == Quality.BAD and mb.stats.read_errors >= 1
            m = by_name(mb, await mb.read(["oil_temp"]))  # another block of the same PLC is fine
            assert m["oil_temp"][1] == Quality.GOOD
            await wait_for(lambda: rig.plant.t > 1.05, timeout=5, what="dropout over")
            assert by_name(ou, await ou.read(["bearing_temp"]))["bearing_temp"][1] == Quality.GOOD
            assert by_name(mb, await mb.read(["pump_flow"]))["pump_flow"][1] == Quality.GOOD
        finally:
            await ou.close()
            await mb.close()


async def test_plc_restart_makes_the_supervisors_report_comm_lost_then_recover():
    async with rig_with(
        {"type": "plc_restart", "target": "conveyor", "onset_s": 0.8, "down_s": 1.0},
        {"type": "plc_restart", "target": "press", "onset_s": 0.8, "down_s": 1.0},
    ) as rig:
        ou = OpcUaDriver(opcua_config(rig.opcua_endpoint, timeout_s=1.0))
        mb = ModbusDriver(modbus_config(rig.modbus_port, timeout_s=0.5, poll_interval_s=0.05))
        got_o, got_m = Collector(), Collector()
        sups = [fast_supervisor(ou, got_o), fast_supervisor(mb, got_m)]
        for s in sups:
            s.start()
        try:
            await wait_for(
                lambda: got_o.first(Quality.GOOD) is not None and got_m.first(Quality.GOOD) is not None,
                what="data before the restart",
            )
            lost_o = await wait_for(
                lambda: got_o.first(Quality.COMM_LOST), timeout=4, what="OPC UA COMM_LOST"
            )
            lost_m = await wait_for(
                lambda: got_m.first(Quality.COMM_LOST), timeout=4, what="Modbus COMM_LOST"
            )
            assert rig.plant.t >= 0.8
            await wait_for(
                lambda: got_o.first(Quality.GOOD, lost_o + 1) is not None,
                timeout=8,
                what="OPC UA data after the restart",
            )
            await wait_for(
                lambda: got_m.first(Quality.GOOD, lost_m + 1) is not None,
                timeout=8,
                what="Modbus data after the restart",
            )
            assert ou.stats.sessions_created >= 2 and mb.stats.sessions_created >= 2
            assert [(f.type, f.end_mono is not None) for f in rig.recorder.faults] == [
                ("plc_restart", True)
            ] * 2
        finally:
            for s in sups:
                await s.stop()


async def test_connection_drop_slow_responses_and_never_answers_on_modbus():
    async with rig_with() as rig:
        mb = ModbusDriver(modbus_config(rig.modbus_port, timeout_s=0.3, poll_interval_s=0.05))
        got = Collector()
        sup = fast_supervisor(mb, got)
        sup.start()
        try:
            await wait_for(lambda: got.first(Quality.GOOD) is not None, what="first poll")
            rig.modbus_gate.delay_s = 0.15  # slow_responses
            t0 = time.monotonic()
            await mb.read(["oil_temp"])
            assert time.monotonic() - t0 >= 0.15
            rig.modbus_gate.delay_s = 0.0
            rig.modbus_gate.drop_connections()  # connection_drop
            lost = await wait_for(
                lambda: got.first(Quality.COMM_LOST), timeout=3, what="COMM_LOST after drop"
            )
            await wait_for(
                lambda: got.first(Quality.GOOD, lost + 1) is not None, timeout=5, what="reconnected"
            )
            mark = len(got.batches)
            rig.modbus_gate.frozen = True  # never_answers: reads time out, then the link is declared lost
            bad = await wait_for(lambda: got.first(Quality.BAD, mark), timeout=3, what="timeouts as BAD")
            await wait_for(
                lambda: got.first(Quality.COMM_LOST, bad), timeout=5, what="COMM_LOST on a silent PLC"
            )
            assert rig.modbus_gate.connections >= 2
            rig.modbus_gate.thaw()
            mark = len(got.batches)
            await wait_for(lambda: got.first(Quality.GOOD, mark) is not None, timeout=5, what="recovered")
        finally:
            await sup.stop()


async def test_never_answers_on_opcua_is_detected_by_the_driver_watchdog():
    async with rig_with(
        {"type": "never_answers", "target": "conveyor", "onset_s": 0.5, "duration_s": 1.5}
    ) as rig:
        ou = OpcUaDriver(opcua_config(rig.opcua_endpoint, timeout_s=0.5))
        got = Collector()
        sup = fast_supervisor(ou, got)
        sup.start()
        try:
            lost = await wait_for(lambda: got.first(Quality.COMM_LOST), timeout=4, what="COMM_LOST")
            assert rig.plant.t >= 0.5
            await wait_for(
                lambda: got.first(Quality.GOOD, lost + 1) is not None and rig.plant.t > 2,
                timeout=8,
                what="data after the PLC answers again",
            )
        finally:
            await sup.stop()


async def test_secure_endpoint_basic256sha256_sign_and_encrypt(tmp_path: Path):
    client_cert, client_key = tmp_path / "client.der", tmp_path / "client_key.pem"
    create_client_certificate(client_cert, client_key, "urn:linesentry:hil-client", "localhost")
    security = OpcUaSecurityOptions(tmp_path / "pki", trusted_client_certs=[client_cert])
    rig = Rig(Plant(1), opcua_port=0, modbus_port=0, security=security)
    async with rig:
        cfg = opcua_config(
            rig.opcua_endpoint,
            timeout_s=2.0,
            security={
                "policy": "Basic256Sha256",
                "mode": "SignAndEncrypt",
                "client_certificate": client_cert,
                "client_private_key": client_key,
                "server_certificate": security.server_cert,
            },
        )
        ou = OpcUaDriver(cfg)
        await ou.connect()
        try:
            o = by_name(ou, await ou.read(["motor_speed"]))
            assert o["motor_speed"][1] == Quality.GOOD and o["motor_speed"][0] > 1000
            await ou.write("line_stop", 1)
            assert rig.plant.line_stop
        finally:
            await ou.close()
        plain = OpcUaDriver(opcua_config(rig.opcua_endpoint, timeout_s=2.0))
        with pytest.raises(Exception):  # noqa: B017 - whichever error the driver raises, no session
            await plain.connect()
        await plain.close()

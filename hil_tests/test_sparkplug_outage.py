"""Store and forward of the Sparkplug node through broker and controller crashes, seen by the
independent host application (hil_tests/rig/sparkplug_host.py) on a real mosquitto.

The node reaches the broker through a TCP `Gate`, the host directly: after a broker restart the
test lets the host subscribe again before it opens the gate, so the host sees every message the
node publishes after its reconnect (births first). The broker itself is really killed (SIGKILL):
sessions, in-flight messages and wills die with it.

What the node committed is read from its outbox file, from outside: before the first start the
test adds a trigger that copies every row given to the "sparkplug" sink into `sparkplug_rows`, so
that table is every message the node could not publish, whatever was acked and deleted since. A row
is one record (the outbox's own format, `controller.records`) holding the message type, the device
and the Sparkplug payload as it would have been sent; the test decodes that payload with
pysparkplug's schema and compares it, message by message, with what the host received.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from controller.config import load_config
from controller.outbox import DB_NAME, Outbox
from controller.records import decode
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.demo_config import demo_text
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.gate import Gate
from hil_tests.rig.mosquitto import Mosquitto
from hil_tests.rig.net import free_port, wait_for
from hil_tests.rig.servers import Rig
from hil_tests.rig.service_process import ServiceProcess
from hil_tests.rig.sparkplug_host import Received, SparkplugHost, mqtt_tables, stored_message

GROUP, NODE = "demo-site", "demo-line"
FAST_LINK = {"keepalive_s": 2.0, "connect_timeout_s": 1.0, "backoff_initial_s": 0.2, "backoff_cap_s": 0.5}
SINK = "sparkplug"
ARCHIVE = f"""
CREATE TABLE sparkplug_rows (row_id INTEGER PRIMARY KEY, created_ns INTEGER, body TEXT NOT NULL);
CREATE TRIGGER sparkplug_rows AFTER INSERT ON pending WHEN NEW.sink = '{SINK}' BEGIN
    INSERT OR IGNORE INTO sparkplug_rows SELECT id, created_ns, body FROM outbox WHERE id = NEW.row_id;
END;
"""


class SparkplugOutbox:
    """The node's outbox file, read from outside the controller (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        directory = state_dir / "outbox"
        directory.mkdir(parents=True, exist_ok=True)
        Outbox(directory).close()  # the controller's own schema, then our trigger
        self.path = directory / DB_NAME
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.executescript(ARCHIVE)

    def _query(self, sql: str) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as db:
            return db.execute(sql).fetchall()

    def committed(self) -> list[int]:
        """Every row ever given to the sparkplug sink, in commit order."""
        return [r for (r,) in self._query("SELECT row_id FROM sparkplug_rows ORDER BY row_id")]

    def messages(self) -> list[Message]:
        """The message of every committed row, in commit order (see `Message`)."""
        out = []
        for (body,) in self._query("SELECT body FROM sparkplug_rows ORDER BY row_id"):
            (record,) = decode(body)
            out.append(stored_message(record))
        return out

    def pending(self) -> list[int]:
        rows = self._query(f"SELECT row_id FROM pending WHERE sink = '{SINK}' ORDER BY row_id")
        return [r for (r,) in rows]


def node_config(tmp_path: Path, rig: Rig, model: Path, broker_port: int, *, api_port: int | None = None,
                **sparkplug) -> Path:
    text = demo_text(tmp_path / "state", model, opcua_endpoint=rig.opcua_endpoint,
                     modbus_port=rig.modbus_port, api_port=api_port)
    path = tmp_path / "line.toml"
    path.write_text(text + mqtt_tables(f"mqtt://127.0.0.1:{broker_port}", mqtt_keys=FAST_LINK,
                                       sparkplug=sparkplug))
    return path


async def born(host: SparkplugHost, since: int = 0, timeout: float = 20.0) -> Received:
    def done():
        devices = {r.device for r in host.of("DBIRTH", since=since)}
        births = host.of("NBIRTH", since=since)
        return births[-1] if births and devices >= {"conveyor", "press"} else None
    return await wait_for(done, timeout=timeout, what="NBIRTH and a DBIRTH of both PLCs")


Message = tuple[str, str | None, int, tuple[tuple[int, Any], ...]]  # kind, device, timestamp, (alias, value)


def as_message(r: Received) -> Message:
    """What the host received, in the shape of a stored row (raw protobuf values: UInt64 as stored)."""
    return r.kind, r.device, r.timestamp, tuple((m.alias, m.value) for m in r.metrics)


def replayed(host: SparkplugHost, since: int) -> list[Received]:
    return [r for r in host.of("NDATA", "DDATA", since=since) if any(m.is_historical for m in r.metrics)]


def assert_replayed_as_committed(replay: list[Received], committed: list[Message]) -> None:
    """Every committed message arrived, in commit order, each metric flagged historical. (Commit
    order, not timestamp order: two messages stamped a few ms apart may be committed the other way.)"""
    assert replay, "nothing was replayed"
    mixed = [r.index for r in replay if not r.historical]
    assert not mixed, f"messages mixing historical and live metrics: {mixed}"
    assert [as_message(r) for r in replay] == committed


async def outage_restored(broker: Mosquitto, host: SparkplugHost, gate: Gate) -> None:
    """Broker back on its port, the host subscribed again, then the node's path opened."""
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(host.wait_subscribed, 10.0)
    await gate.start()


async def test_broker_killed_during_a_fault_the_backlog_is_replayed_complete_in_order_and_historical(
        tmp_path, rig, model):
    replay_per_s = 25  # slow enough that live data has to overtake the backlog
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
        gate = await Gate(broker.host, broker.port).start()
        box = SparkplugOutbox(tmp_path / "state")
        config = load_config(node_config(tmp_path, rig, model, gate.port, tag_interval_s=0.2,
                                         replay_per_s=replay_per_s))
        controller = Controller(config, api_port=0)
        task = await start_controller(controller)
        try:
            await born(host)
            assert box.committed() == []  # connected: nothing stored
            broker.kill()  # nothing of the event loop runs between these two lines
            await gate.stop_listening()
            last_event = controller.events.since()[-1]["id"]
            rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=3.0))
            await wait_for(lambda: len(box.committed()) >= 40, timeout=15, what="40 messages stored")
            await asyncio.sleep(0.5)
            transitions = [e for e in controller.events.since()
                           if e["id"] > last_event and e["kind"] == "alarm"]
            assert transitions, "the jam raised no alarm while the broker was down"
            mark = host.mark()
            await outage_restored(broker, host, gate)
            await born(host, since=mark)
            await wait_for(lambda: not box.pending(), timeout=30, what="the backlog acked")
            committed = box.committed()
            replay = replayed(host, mark)
            live = [r for r in host.of("NDATA", "DDATA", since=mark) if not r.historical]
        finally:
            await stop_controller(controller, task)
            await gate.stop()
        assert len(replay) == len(committed), (len(replay), len(committed))
        assert_replayed_as_committed(replay, box.messages())
        # every alarm transition of the outage is in the replay, with its state
        states = {(m.name, m.value) for r in replay for m in r.metrics}
        for e in transitions:
            if e.get("state"):
                assert (f"Alarms/{e['source']}/State", e["state"]) in states, e
        # live data went out while the backlog was still being replayed
        assert live and live[0].arrived < replay[-1].arrived, "live data waited for the backlog"
        duration = replay[-1].arrived - replay[0].arrived
        # ... and at no more than twice replay_per_s
        assert duration >= (len(replay) - 1) / replay_per_s / 2, f"{len(replay)} replayed in {duration:.2f} s"
        assert host.violations == []


async def test_kill9_of_the_controller_is_announced_by_the_will_with_its_bdseq(tmp_path, rig, model):
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
        proc = ServiceProcess(node_config(tmp_path, rig, model, broker.port, api_port=free_port(),
                                          tag_interval_s=0.5))
        try:
            await asyncio.to_thread(proc.start)
            birth = await born(host)
            assert await asyncio.to_thread(proc.kill9) == -9
            death = await wait_for(lambda: host.of("NDEATH", since=birth.index), timeout=10,
                                   what="the NDEATH will after kill -9")
            assert death[0].metric("bdSeq").value == birth.metric("bdSeq").value
            assert death[0].qos == 1 and not death[0].retained  # the will as Sparkplug wants it
            assert not host.alive(NODE)
            mark = host.mark()
            await asyncio.to_thread(proc.start)
            again = await born(host, since=mark)
            assert again.metric("bdSeq").value == (birth.metric("bdSeq").value + 1) % 256
        finally:
            proc.close()
        assert host.violations == [], proc.log()[-3000:]


async def test_kill9_while_the_broker_is_down_loses_nothing_committed(tmp_path, rig, model):
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
        gate = await Gate(broker.host, broker.port).start()
        box = SparkplugOutbox(tmp_path / "state")
        proc = ServiceProcess(node_config(tmp_path, rig, model, gate.port, api_port=free_port(),
                                          tag_interval_s=0.2, replay_per_s=200))
        try:
            await asyncio.to_thread(proc.start)
            await born(host)
            broker.kill()
            await gate.stop_listening()
            await wait_for(lambda: len(box.pending()) >= 20, timeout=15, what="20 messages stored")
            assert await asyncio.to_thread(proc.kill9) == -9
            at_kill = box.messages()
            assert box.pending() == box.committed()  # the broker was away: nothing could be acked
            mark = host.mark()
            await outage_restored(broker, host, gate)
            await asyncio.to_thread(proc.start)
            await born(host, since=mark)
            try:
                await wait_for(lambda: not box.pending(), timeout=30, what="the backlog acked")
            except AssertionError as exc:
                status = await asyncio.to_thread(proc.get, "/status")
                raise AssertionError(f"{exc}: {len(box.pending())} of {len(box.committed())} pending, "
                                     f"{len(replayed(host, mark))} replayed; status.mqtt {status['mqtt']}\n"
                                     f"{proc.log()[-4000:]}") from None
            replay = replayed(host, mark)
        finally:
            proc.close()
            await gate.stop()
        # what the killed process committed, first and whole, then what the new one stored
        assert [as_message(r) for r in replay[:len(at_kill)]] == at_kill
        assert_replayed_as_committed(replay, box.messages())
        assert host.violations == [], proc.log()[-3000:]


async def test_a_plc_lost_during_the_outage_does_not_hold_back_the_rest_of_the_replay(
        tmp_path, rig, model):
    """The press dies while the broker is away and is still down when it returns: its stored DDATA
    cannot be replayed (no DBIRTH), but the alarm it raised meanwhile is history the host needs now."""
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
        gate = await Gate(broker.host, broker.port).start()
        box = SparkplugOutbox(tmp_path / "state")
        config = load_config(node_config(tmp_path, rig, model, gate.port, tag_interval_s=0.2))
        controller = Controller(config, api_port=0)
        task = await start_controller(controller)
        try:
            await born(host)
            broker.kill()
            await gate.stop_listening()
            await wait_for(lambda: len(box.committed()) >= 5, timeout=10,
                           what="press and conveyor data stored")
            await rig.take_down("press")
            await wait_for(lambda: str(controller.alarms.state("press_comm_loss")) == "UNACK", timeout=10,
                           what="press_comm_loss UNACK")
            mark = host.mark()
            await outage_restored(broker, host, gate)
            await wait_for(lambda: host.of("NBIRTH", since=mark) and host.of("DBIRTH", device="conveyor",
                                                                             since=mark), timeout=15,
                           what="the births without the press")
            alarm = "Alarms/press_comm_loss/State"
            await wait_for(lambda: [r for r in replayed(host, mark)
                                    if (m := r.metric(alarm)) and m.value == "UNACK"],
                           timeout=10, what="the press alarm of the outage replayed while the press is down")
            await rig.bring_up("press")
            await wait_for(lambda: not box.pending(), timeout=30,
                           what="the whole backlog once the press is back")
            replay = replayed(host, mark)
        finally:
            await stop_controller(controller, task)
            await gate.stop()
        # the press's rows wait for its DBIRTH; everything else in commit order
        assert_replayed_as_committed([r for r in replay if r.device != "press"],
                                     [m for m in box.messages() if m[1] != "press"])
        assert_replayed_as_committed([r for r in replay if r.device == "press"],
                                     [m for m in box.messages() if m[1] == "press"])
        assert host.violations == []


async def test_a_silent_partition_ends_in_the_will_and_the_backlog_follows_the_next_birth(
        tmp_path, rig, model):
    """Nothing answers on the node's path (no RST, no FIN): the broker ends the session after 1.5
    keep-alives and sends the will; what the node committed meanwhile comes after its next births."""
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as host:
        gate = await Gate(broker.host, broker.port).start()
        box = SparkplugOutbox(tmp_path / "state")
        config = load_config(node_config(tmp_path, rig, model, gate.port, tag_interval_s=0.2))
        controller = Controller(config, api_port=0)
        task = await start_controller(controller)
        try:
            birth = await born(host)
            gate.frozen = True
            death = await wait_for(lambda: host.of("NDEATH", since=birth.index), timeout=10,
                                   what="the will after the keep-alive expired")
            assert death[0].metric("bdSeq").value == birth.metric("bdSeq").value
            await wait_for(lambda: len(box.committed()) >= 10, timeout=10,
                           what="data stored in the partition")
            mark = host.mark()
            gate.thaw()
            again = await born(host, since=mark)
            assert again.metric("bdSeq").value != birth.metric("bdSeq").value
            await wait_for(lambda: not box.pending(), timeout=30, what="the backlog acked")
            replay = replayed(host, mark)
        finally:
            await stop_controller(controller, task)
            await gate.stop()
        assert_replayed_as_committed(replay, box.messages())
        assert host.violations == []


async def test_while_the_primary_host_is_offline_the_node_stores_and_replays_on_its_return(
        tmp_path, rig, model):
    primary_id = "scada-primary"
    with Mosquitto(tmp_path) as broker, SparkplugHost(broker.host, broker.port, GROUP) as observer:
        primary = SparkplugHost(broker.host, broker.port, GROUP, host_id=primary_id, primary=True).start()
        box = SparkplugOutbox(tmp_path / "state")
        config = load_config(node_config(tmp_path, rig, model, broker.port, tag_interval_s=0.2,
                                         primary_host_id=primary_id))
        controller = Controller(config, api_port=0)
        task = await start_controller(controller)
        try:
            await born(observer)
            await wait_for(lambda: observer.of("DDATA"), timeout=5, what="data while the primary is online")
            primary.stop()  # STATE offline (retained)
            offline_at = time.time()
            await wait_for(lambda: len(box.committed()) >= 10, timeout=10,
                           what="data stored, primary offline")
            late = [r for r in observer.of("NDATA", "DDATA") if not r.historical
                    and r.arrived > offline_at + 1.0]
            assert late == [], "the node published live data while its primary host was offline"
            mark = observer.mark()
            primary = SparkplugHost(broker.host, broker.port, GROUP, host_id=primary_id, primary=True).start()
            await born(observer, since=mark)
            await wait_for(lambda: not box.pending(), timeout=30, what="the backlog acked")
            replay = replayed(observer, mark)
        finally:
            await stop_controller(controller, task)
            primary.stop()
        assert_replayed_as_committed(replay, box.messages())
        assert observer.violations == []

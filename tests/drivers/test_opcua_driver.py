"""OpcUaDriver against a real asyncua server on 127.0.0.1 (started by the tests, free ports)."""

import asyncio
import logging

import numpy as np
import pytest
import pytest_asyncio
from asyncua import ua

from drivers.base import Quality
from drivers.errors import ConnectionLost, DriverError, WriteFailed, WriteRefused
from drivers.opcua import OpcUaConfig
from drivers.opcua.driver import OpcUaDriver
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter
from tests.drivers.conftest import free_port, wait_for
from tests.drivers.opcua_server import LIMIT, NS_URI, Collector, TestServer
from tests.drivers.state_watch import Losses

pytestmark = pytest.mark.asyncio(loop_scope="module")


def nsu(name: str) -> str:
    return f"nsu={NS_URI};s=Line1.{name}"


def path(name: str) -> list[str]:
    return ["0:Objects", f"{NS_URI}:Plant", f"{NS_URI}:Line1", f"{NS_URI}:{name}"]


def config(endpoint: str, tags: list[dict], groups: list[dict] | None = None, **kw) -> OpcUaConfig:
    extra = {"groups": groups} if groups is not None else {}
    return OpcUaConfig(name="plc1", endpoint=endpoint, timeout_s=1.0, tags=tags, **extra, **kw)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared():
    """One server for the tests that do not change it."""
    server = await TestServer(free_port()).start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def server():
    """A server of the test's own, for tests that change values or stop it."""
    srv = await TestServer(free_port()).start()
    yield srv
    await srv.stop()


ALL_TYPES = [
    {"name": "temp", "node": nsu("Temperature")},
    {"name": "press", "browse_path": path("Pressure")},
    {"name": "count", "node": nsu("Count")},
    {"name": "running", "browse_path": path("Running")},
    {"name": "broken", "node": nsu("Broken")},
    {"name": "drifting", "node": nsu("Drifting")},
    {"name": "label", "node": nsu("Label")},
    {"name": "numeric", "node": f"nsu={NS_URI};i=4242"},
]


async def test_a_dead_endpoint_gives_a_one_line_error_and_reads_need_a_session():
    dead = f"opc.tcp://127.0.0.1:{free_port()}/"
    driver = OpcUaDriver(config(dead, [{"name": "x", "node": nsu("Count")}]))
    with pytest.raises(DriverError, match="connection refused") as e:
        await driver.connect()
    assert dead in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConnectionLost):
        await driver.read()  # never connected


async def test_namespace_index_is_re_resolved_when_a_restart_shifts_it(server):
    driver = OpcUaDriver(config(server.endpoint, [
        {"name": "temp", "node": nsu("Temperature")}, {"name": "count", "browse_path": path("Count")}]))
    await driver.connect()
    first_ns = server.ns
    assert list((await driver.read()).values) == [21.5, 7.0]
    await driver.close()
    await server.restart(extra_namespaces=("urn:other:a", "urn:other:b"))
    assert server.ns == first_ns + 2
    await server.set_value("Temperature", 111.0)
    await server.set_value("Count", 222)
    await driver.connect()
    try:
        assert list((await driver.read()).values) == [111.0, 222.0]
        assert driver.stats.sessions_created == 2
    finally:
        await driver.close()


async def test_subscription_delivers_changes_honours_deadband_and_batches_a_publish(server):
    driver = OpcUaDriver(config(
        server.endpoint,
        [{"name": "temp", "node": nsu("Temperature"), "deadband_abs": 1.0},
         {"name": "count", "node": nsu("Count")}, {"name": "setpoint", "node": nsu("Setpoint")}],
        groups=[{"name": "default", "publishing_interval_ms": 20, "sampling_interval_ms": 10}]))
    got = Collector()
    await driver.connect()
    task = None
    try:
        task = asyncio.create_task(driver.subscribe(got))
        await wait_for(lambda: got.batches, what="initial values")
        assert sorted(got.batches[0].index) == [0, 1, 2]  # one publish, one batch
        mark = len(got.batches)
        await server.set_value("Temperature", 22.0)  # +0.5: inside the deadband
        await server.set_value("Count", 8)
        await wait_for(lambda: got.saw(1, 8.0, mark), what="count change")
        await server.set_value("Temperature", 30.0)  # +8: outside
        await wait_for(lambda: got.saw(0, 30.0, mark), what="temperature change")
        assert not got.saw(0, 22.0, mark)
        assert driver.stats.batches == len(got.batches) and driver.stats.values >= 5
    finally:
        if task is not None:
            task.cancel()
        await driver.close()


async def test_polling_group_reads_in_batches_at_its_interval(server):
    driver = OpcUaDriver(config(
        server.endpoint, [{"name": "numeric", "node": f"nsu={NS_URI};i=4242", "group": "fast"},
                          {"name": "drifting", "node": nsu("Drifting"), "group": "fast"}],
        groups=[{"name": "fast", "mode": "polling", "poll_interval_ms": 20}]))
    got = Collector()
    await driver.connect()
    task = asyncio.create_task(driver.subscribe(got))
    try:
        await wait_for(lambda: len(got.batches) >= 3, what="three polls")
        assert all(sorted(b.index) == [0, 1] for b in got.batches)
        assert got.values_of(1)[0] == (3.0, Quality.UNCERTAIN)
        mark = len(got.batches)
        await server.set_value("Numeric", 5.5)
        await wait_for(lambda: got.saw(0, 5.5, mark), what="polled change")
        assert driver.stats.reads >= 4
    finally:
        task.cancel()
        await driver.close()


async def test_writes_use_the_node_type_confirm_by_readback_and_refuse_non_writable_tags(shared):
    server = shared  # only this test touches Setpoint, Mode and Limited
    driver = OpcUaDriver(config(server.endpoint, [
        {"name": "setpoint", "node": nsu("Setpoint"), "writable": True},
        {"name": "mode", "browse_path": path("Mode"), "writable": True},
        {"name": "limited", "node": nsu("Limited"), "writable": True},
        {"name": "count", "node": nsu("Count"), "writable": True},  # the server's node is read-only
        {"name": "temp", "node": nsu("Temperature")}]))
    await driver.connect()
    try:
        await driver.write("setpoint", 12.5)
        assert await server.read("Setpoint") == 12.5
        await driver.write("mode", 3)
        dv = await server.nodes["Mode"].read_data_value()
        assert dv.Value.Value == 3 and dv.Value.VariantType == ua.VariantType.Int32
        with pytest.raises(WriteRefused, match="does not fit Int32"):
            await driver.write("mode", 2.5)
        await driver.write("limited", LIMIT - 1)
        with pytest.raises(WriteFailed, match="readback 100.0 .* does not confirm the written 150.0"):
            await driver.write("limited", 150)
        with pytest.raises(WriteFailed, match="server refused the write"):
            await driver.write("count", 1)
        with pytest.raises(WriteRefused, match="'temp' is not writable"):
            await driver.write("temp", 1.0)
        with pytest.raises(WriteRefused, match="unknown tag"):
            await driver.write("nope", 1.0)
        assert await server.read("Temperature") == 21.5
        assert driver.stats.writes == 5 and driver.stats.write_errors == 3
    finally:
        await driver.close()


def _supervisor(driver: OpcUaDriver, on_batch, on_state=None) -> DriverSupervisor:
    return DriverSupervisor(driver, on_batch, backoff=Backoff(initial=0.05, factor=2.0, cap=0.2),
                            limiter=SessionRateLimiter(per_minute=600), on_state=on_state)


async def test_a_dead_plc_does_not_stall_a_live_one(shared):
    dead = OpcUaDriver(OpcUaConfig(name="dead", endpoint=f"opc.tcp://127.0.0.1:{free_port()}/", timeout_s=0.5,
                                   tags=[{"name": "x", "node": nsu("Temperature")}]))
    live = OpcUaDriver(config(shared.endpoint, [{"name": "t", "node": nsu("Temperature"), "group": "poll"}],
                              groups=[{"name": "poll", "mode": "polling", "poll_interval_ms": 20}]))
    dead_got, live_got = Collector(), Collector()
    live_losses = Losses(live_got)
    sups = [_supervisor(dead, dead_got), _supervisor(live, live_got, live_losses)]
    for s in sups:
        s.start()
    try:
        await wait_for(lambda: sups[0].failures >= 3, what="three failed connects to the dead PLC")
        mark = len(live_got.batches)
        await wait_for(lambda: len(live_got.batches) >= mark + 5, what="live PLC still delivering")
        assert dead_got.batches == []  # batches carry data only; the loss goes through on_state
        assert live_losses.at == []
        assert "connection refused" in sups[0].last_error and dead.config.endpoint in sups[0].last_error
        assert dead.stats.sessions_created == 0 and dead.connect_attempts >= 3
    finally:
        for s in sups:
            await s.stop()


async def test_an_ordinary_server_restart_logs_no_asyncua_traceback(server, caplog):
    """asyncua logs a lost connection with ERROR tracebacks and warnings; the driver's filter makes them
    DEBUG lines (the driver and the supervisor report the loss in one line each)."""
    driver = OpcUaDriver(config(server.endpoint, [{"name": "temp", "node": nsu("Temperature")}],
                                groups=[{"name": "default", "publishing_interval_ms": 20}]))
    got = Collector()
    losses = Losses(got)
    sup = _supervisor(driver, got, losses)
    caplog.set_level(logging.INFO)
    sup.start()
    try:
        await wait_for(lambda: got.saw(0, 21.5), what="data before the restart")
        await server.stop()
        await wait_for(lambda: losses.at, what="the loss reported")
        lost_at = losses.at[0]
        await server.restart()
        await wait_for(lambda: got.saw(0, 21.5, lost_at), what="data after the restart")
    finally:
        await sup.stop()
    noisy = [r for r in caplog.records if r.name.startswith("asyncua") and (
        r.levelno >= logging.ERROR or r.exc_info or (r.name.startswith("asyncua.client") and
                                                     r.levelno >= logging.WARNING))]
    assert noisy == [], [f"{r.name}: {r.getMessage()}" for r in noisy]


async def test_a_bad_value_keeps_its_reason_in_stats_until_the_value_is_good_again(server):
    driver = OpcUaDriver(config(server.endpoint, [{"name": "broken", "node": nsu("Broken")}],
                                groups=[{"name": "default", "publishing_interval_ms": 20}]))
    got = Collector()
    await driver.connect()
    task = asyncio.create_task(driver.subscribe(got))
    try:
        await wait_for(lambda: driver.stats.tag_errors.get("broken") == "the server reports BadSensorFailure",
                       what="the Bad status as the reason")
        await server.set_value("Broken", 1.0)  # Good again
        await wait_for(lambda: got.saw(0, 1.0), what="the good value")
        assert driver.stats.tag_errors == {}
    finally:
        task.cancel()
        await driver.close()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
async def test_a_non_finite_value_with_good_status_is_bad(server, value):
    await server.set_value("Temperature", value)
    driver = OpcUaDriver(config(server.endpoint, [{"name": "temp", "node": nsu("Temperature")}]))
    await driver.connect()
    try:
        b = await driver.read()
        assert b.quality[0] == Quality.BAD and np.isnan(b.values[0])
    finally:
        await driver.close()


async def test_non_finite_and_oversized_writes_are_refused_before_sending(server):
    driver = OpcUaDriver(config(server.endpoint, [
        {"name": "setpoint", "node": nsu("Setpoint"), "writable": True},
        {"name": "press", "node": nsu("Pressure"), "writable": True}]))  # a Float node
    await driver.connect()
    try:
        for bad in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(WriteRefused, match="not a finite number"):
                await driver.write("setpoint", bad)
        with pytest.raises(WriteRefused, match="does not fit Float"):
            await driver.write("press", 1e300)
        assert (await driver.read(["setpoint"])).values[0] == 50.0  # nothing reached the server
        assert driver.stats.writes == 0
    finally:
        await driver.close()

"""ModbusDriver against real TCP servers on 127.0.0.1: pymodbus' SimDevice server and raw fakes.

Checks every server implementation must pass (coalescing, illegal addresses, types x orders,
writes) are in test_modbus_conformance.py; these are the pymodbus- and fault-specific ones."""

import asyncio
import math
import time

import numpy as np
import pytest
from conftest import free_port, wait_for
from modbus_server import (
    RawServer,
    RequestLog,
    SimServer,
    bits_at,
    device,
    registers_at,
    short_register_reply,
    wire_registers,
)
from pymodbus.simulator import DataType, SimData

from drivers.base import ConnectionState, Quality, ReadingBatch
from drivers.errors import ConnectionLost, DriverError, WriteFailed, WriteRefused
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter

ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")
SAMPLE = {"int16": -1234, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_000,
          "int64": -(2**40) - 5, "uint64": 2**50 + 3, "float32": 123.456, "float64": -9876.54321}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2,
         "float64": 4}
SIM_TYPE = {"int16": DataType.INT16, "uint16": DataType.UINT16, "int32": DataType.INT32,
            "uint32": DataType.UINT32, "int64": DataType.INT64, "uint64": DataType.UINT64,
            "float32": DataType.FLOAT32, "float64": DataType.FLOAT64}
COILS = [True, False, True, True, False, False, True, False, False, True] + [False] * 6
DISCRETES = [False, True, True, False, True] + [False] * 11


def cfg(port: int, tags: list[dict], **kw) -> ModbusDeviceConfig:
    base = {"name": f"plc{port}", "host": "127.0.0.1", "port": port, "timeout_s": 0.5,
            "poll_interval_s": 0.05, "tags": tags}
    return ModbusDeviceConfig(**(base | kw))


def reg_tags(n: int, table: str = "holding_register", start: int = 0, **kw) -> list[dict]:
    return [{"name": f"r{i}", "table": table, "address": start + i, "dtype": "uint16", **kw}
            for i in range(n)]


def plain_device(n: int = 20, log: RequestLog | None = None):
    """n holding registers 0..n-1 holding 100+i, a few coils, inputs and discretes."""
    return lambda: device([bits_at(0, COILS)], [bits_at(0, DISCRETES)],
                          [registers_at(0, [100 + i for i in range(n)])], [registers_at(0, [7, 8])], log)


@pytest.fixture
async def connected():
    """Yields a factory for connected drivers and closes them all afterwards."""
    drivers: list[ModbusDriver] = []

    async def make(config: ModbusDeviceConfig) -> ModbusDriver:
        d = ModbusDriver(config)
        await d.connect()
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        await d.close()


@pytest.fixture
async def servers():
    """Tracks started servers and stops them at the end of the test."""
    started: list = []

    async def start(server):
        started.append(await server.start())
        return server

    yield start
    for s in started:
        await s.stop()


async def test_reads_every_dtype_and_order_end_to_end_in_one_request_per_table(port, servers, connected):
    holding, tags, expected, addr = [], [], [], 0
    for dtype, value in SAMPLE.items():
        for order in ORDERS:
            if order == "ABCD":  # pymodbus' own big-endian encoding
                holding.append(SimData(addr, values=value, datatype=SIM_TYPE[dtype]))
            else:
                holding.append(registers_at(addr, wire_registers(value, dtype, order)))
            tags.append({"name": f"{dtype}_{order}", "table": "holding_register", "address": addr,
                         "dtype": dtype, "order": order})
            expected.append(float(np.float32(value)) if dtype == "float32" else float(value))
            addr += WIDTH[dtype]
    scaled = [("int16", "ABCD", 215, 0.1, -20.0), ("uint32", "CDAB", 123456, 0.01, 0.0),
              ("float32", "BADC", 2.5, 2.0, 1.0), ("int64", "DCBA", -7, -3.0, 0.5)]
    for i, (dtype, order, raw, scale, offset) in enumerate(scaled):
        holding.append(registers_at(addr, wire_registers(raw, dtype, order)))
        tags.append({"name": f"scaled{i}", "table": "holding_register", "address": addr, "dtype": dtype,
                     "order": order, "scale": scale, "offset": offset})
        expected.append(raw * scale + offset)
        addr += WIDTH[dtype]
    inputs = [registers_at(0, wire_registers(-5, "int16", "ABCD") + wire_registers(0.25, "float32", "DCBA"))]
    tags += [{"name": "in_i16", "table": "input_register", "address": 0, "dtype": "int16"},
             {"name": "in_f32", "table": "input_register", "address": 1, "dtype": "float32", "order": "DCBA"}]
    expected += [-5.0, 0.25]
    tags += [{"name": f"coil{i}", "table": "coil", "address": i, "dtype": "bool"} for i in range(10)]
    expected += [float(b) for b in COILS[:10]]
    tags += [{"name": f"di{i}", "table": "discrete_input", "address": i, "dtype": "bool"} for i in range(5)]
    expected += [float(b) for b in DISCRETES[:5]]

    log = RequestLog()
    await servers(SimServer(lambda: device([bits_at(0, COILS)], [bits_at(0, DISCRETES)], holding, inputs,
                                           log), port))
    d = await connected(cfg(port, tags))
    batch = await d.read()

    assert batch.quality.tolist() == [Quality.GOOD] * len(tags)
    np.testing.assert_allclose(batch.values, expected, rtol=1e-12)
    assert batch.index.tolist() == list(range(len(tags)))
    assert np.isnan(batch.source_ts).all()
    assert abs(batch.receive_ts - time.time()).max() < 5
    assert log.reads() == 4 and d.stats.reads == 4  # one request per table
    assert (d.stats.batches, d.stats.values, d.stats.bad_values) == (1, len(tags), 0)

    sub = await d.read(["in_f32", "scaled0"])
    names = [t["name"] for t in tags]
    assert sub.index.tolist() == [names.index("in_f32"), names.index("scaled0")]
    assert sub.values.tolist() == pytest.approx([0.25, 1.5])
    with pytest.raises(DriverError, match="no tag named 'nope'"):
        await d.read(["nope"])


async def test_device_that_only_accepts_small_requests(port, servers, connected):
    log = RequestLog(max_registers=8)
    await servers(SimServer(plain_device(20, log), port))
    greedy = await connected(cfg(port, reg_tags(20)))
    batch = await greedy.read()
    assert (batch.quality == Quality.BAD).all() and np.isnan(batch.values).all()
    assert greedy.stats.read_errors == 1 and "illegal data value" in greedy.stats.last_error

    small = await connected(cfg(port, reg_tags(20), max_registers_per_read=8))
    batch = await small.read()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values.tolist() == [100.0 + i for i in range(20)]
    assert small.stats.read_errors == 0 and small.stats.reads == 3


async def test_short_response_is_bad_not_a_crash(port, servers, connected):
    await servers(RawServer(port, short_register_reply))
    d = await connected(cfg(port, reg_tags(3)))
    batch = await d.read()
    assert (batch.quality == Quality.BAD).all()
    assert d.stats.read_errors == 1
    assert "short response" in d.stats.last_error or "malformed" in d.stats.last_error


async def test_nan_float_is_bad(port, servers, connected):
    nan_regs = [0x7FC0, 0x0000, *wire_registers(1.5, "float32", "ABCD"), 0x7F80, 0x0000]
    await servers(SimServer(lambda: device([bits_at(0, COILS)], [bits_at(0, DISCRETES)],
                                           [registers_at(0, nan_regs)], [registers_at(0, [1])]), port))
    tags = [{"name": n, "table": "holding_register", "address": a, "dtype": "float32"}
            for n, a in (("nan", 0), ("ok", 2), ("inf", 4))]
    d = await connected(cfg(port, tags))
    batch = await d.read()
    assert batch.quality.tolist() == [Quality.BAD, Quality.GOOD, Quality.BAD]
    assert batch.values[1] == 1.5 and np.isnan(batch.values[[0, 2]]).all()


async def test_writes_with_readback(port, servers, connected):
    log = RequestLog()
    await servers(SimServer(plain_device(20, log), port))
    tags = [{"name": "setpoint", "table": "holding_register", "address": 2, "dtype": "float32",
             "order": "CDAB", "scale": 0.5, "offset": 10.0, "writable": True},
            {"name": "count", "table": "holding_register", "address": 6, "dtype": "int16", "writable": True},
            {"name": "run", "table": "coil", "address": 1, "dtype": "bool", "writable": True},
            {"name": "ro", "table": "holding_register", "address": 8, "dtype": "uint16"},
            {"name": "in", "table": "input_register", "address": 0, "dtype": "uint16"}]
    d = await connected(cfg(port, tags))
    await d.write("setpoint", 61.0)
    await d.write("count", -300)
    await d.write("run", 1)
    batch = await d.read(["setpoint", "count", "run", "ro"])
    assert batch.values.tolist() == [61.0, -300.0, 1.0, 108.0]
    assert (3, 2, 2) in log.requests  # the readback of setpoint
    assert (d.stats.writes, d.stats.write_errors) == (3, 0)
    await d.write("run", 0)
    assert (await d.read(["run"])).values.tolist() == [0.0]

    for name, value, match in (("ro", 1, "not writable"), ("in", 1, "not writable"),
                               ("nope", 1, "no tag named"), ("count", 40000, "outside int16"),
                               ("run", 2, "use 0 or 1"), ("count", 1.5, "int16 holds whole numbers only"),
                               ("setpoint", math.inf, "cannot write inf: not a finite number")):
        with pytest.raises(WriteRefused, match=match):
            await d.write(name, value)
    assert d.stats.writes == 4  # refused writes never reach the device


async def test_readback_mismatch_raises_write_failed(port, servers, connected):
    def clamp(fc: int, _address: int, values: list) -> None:
        if fc == 16:
            values[:] = [min(v, 1000) for v in values]  # the PLC clamps the setpoint

    log = RequestLog(rewrite=clamp)
    await servers(SimServer(plain_device(20, log), port))
    tag = {"name": "limit", "table": "holding_register", "address": 3, "dtype": "uint16", "writable": True}
    d = await connected(cfg(port, [tag]))
    await d.write("limit", 999)
    with pytest.raises(WriteFailed, match=r"readback \[1000\] differs from the written \[5000\]"):
        await d.write("limit", 5000)
    no_readback = await connected(cfg(port, [tag], readback=False))
    await no_readback.write("limit", 5000)  # trusted blindly, as configured
    assert d.stats.write_errors == 1


async def test_connect_failure_is_a_one_line_driver_error():
    port = free_port()
    d = ModbusDriver(cfg(port, reg_tags(1), timeout_s=0.3))
    with pytest.raises(DriverError) as info:
        await d.connect()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "\n" not in msg
    assert d.stats.sessions_created == 1
    with pytest.raises(ConnectionLost):
        await d.read()
    await d.close()
    await d.close()


async def test_silent_server_times_out_to_bad_then_connection_lost_never_hangs(port, servers, connected):
    mute = await servers(RawServer(port, lambda _req: None))
    timeout = 0.2
    tags = reg_tags(2) + reg_tags(2, start=100, table="input_register")
    tags[2]["name"], tags[3]["name"] = "i0", "i1"
    d = await connected(cfg(port, tags, timeout_s=timeout, max_consecutive_timeouts=3))
    t0 = time.monotonic()
    batch = await asyncio.wait_for(d.read(), timeout=10 * timeout)
    elapsed = time.monotonic() - t0
    assert (batch.quality == Quality.BAD).all()
    assert 2 * timeout * 0.9 <= elapsed < 2 * timeout * 2.5  # one timeout per block: each is asked
    assert mute.requests == 2 and d.stats.read_errors == 2

    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="no answer to 3 requests in a row"):
        await asyncio.wait_for(d.subscribe(lambda b: None), timeout=20 * timeout)
    assert time.monotonic() - t0 < timeout * 2.5  # the third unanswered request


async def test_poll_overrun_skips_and_counts_missed_ticks(port, servers, connected):
    log = RequestLog(delay_s=0.12)
    await servers(SimServer(plain_device(4, log), port))
    d = await connected(cfg(port, reg_tags(4), poll_interval_s=0.05))
    batches: list[ReadingBatch] = []
    task = asyncio.create_task(d.subscribe(batches.append))
    try:
        await wait_for(lambda: len(batches) >= 4, timeout=5, what="4 slow polls")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert d.missed_ticks >= 2 * 3  # each ~0.12 s poll overruns at least two 0.05 s ticks
    assert all((b.quality == Quality.GOOD).all() for b in batches)


async def test_fixed_rate_polling_does_not_drift(port, servers, connected):
    await servers(SimServer(plain_device(4, RequestLog(delay_s=0.01)), port))  # each read takes >= 10 ms
    period = 0.05
    d = await connected(cfg(port, reg_tags(4), poll_interval_s=period))
    stamps: list[float] = []
    task = asyncio.create_task(d.subscribe(lambda b: stamps.append(time.monotonic())))
    try:
        await wait_for(lambda: len(stamps) >= 21, timeout=5, what="21 polls")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # A schedule that sleeps `period` after each read would take >= 20 * 0.06 = 1.2 s here.
    assert stamps[20] - stamps[0] == pytest.approx((20 + d.missed_ticks) * period, abs=0.04)


class Recorder:
    """Batches and states one supervisor reports."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, ReadingBatch]] = []
        self.states: list[ConnectionState] = []

    def on_batch(self, b: ReadingBatch) -> None:
        self.batches.append((time.monotonic(), b))

    def on_state(self, s: ConnectionState, _detail: str) -> None:
        self.states.append(s)

    def count(self, quality: Quality, since: int = 0) -> int:
        return sum(1 for _, b in self.batches[since:] if (b.quality == quality).all())


def fast_supervisor(driver: ModbusDriver, rec: Recorder) -> DriverSupervisor:
    return DriverSupervisor(driver, rec.on_batch, backoff=Backoff(initial=0.05, factor=2, cap=0.2),
                            limiter=SessionRateLimiter(per_minute=1000), on_state=rec.on_state)


async def test_server_restart_on_the_same_port_supervisor_recovers(port):
    server = await SimServer(plain_device(4), port).start()
    rec = Recorder()
    driver = ModbusDriver(cfg(port, reg_tags(4)))
    sup = fast_supervisor(driver, rec)
    sup.start()
    try:
        await wait_for(lambda: rec.count(Quality.GOOD) >= 3, timeout=5, what="first good batches")
        await server.stop()
        mark = len(rec.states)
        await wait_for(lambda: ConnectionState.BACKOFF in rec.states[mark:], timeout=5, what="loss reported")
        sessions = driver.stats.sessions_created
        await wait_for(lambda: driver.stats.sessions_created > sessions + 1, timeout=5,
                       what="reconnect attempts while down")
        await server.start()
        mark = len(rec.batches)
        await wait_for(lambda: rec.count(Quality.GOOD, mark) >= 3, timeout=5, what="data after restart")
        _, last = rec.batches[-1]
        assert last.values.tolist() == [100.0, 101.0, 102.0, 103.0]
        assert sup.state == ConnectionState.CONNECTED
    finally:
        await sup.stop()
        await server.stop()


async def test_dead_plc_does_not_slow_an_alive_one(servers):
    alive_port, dead_port = free_port(), free_port()
    await servers(SimServer(plain_device(4), alive_port))
    await servers(RawServer(dead_port, lambda _req: None))  # accepts, never answers
    alive_rec, dead_rec = Recorder(), Recorder()
    alive = fast_supervisor(ModbusDriver(cfg(alive_port, reg_tags(4), poll_interval_s=0.02)), alive_rec)
    dead_driver = ModbusDriver(cfg(dead_port, reg_tags(4), timeout_s=0.3, poll_interval_s=0.02))
    dead = fast_supervisor(dead_driver, dead_rec)
    dead.start()
    alive.start()
    try:
        await wait_for(lambda: alive_rec.count(Quality.GOOD) >= 1, timeout=5, what="alive data")
        t0, mark = time.monotonic(), len(alive_rec.batches)
        await wait_for(lambda: alive_rec.count(Quality.GOOD, mark) >= 50, timeout=5, what="50 alive batches")
        rate = 50 / (time.monotonic() - t0)
        await wait_for(lambda: ConnectionState.BACKOFF in dead_rec.states, timeout=5, what="dead PLC lost")
        assert rate > 0.7 / 0.02  # at least 70 % of the nominal 50 batches/s
        assert dead_rec.count(Quality.GOOD) == 0 and dead_driver.stats.read_errors >= 1
    finally:
        await alive.stop()
        await dead.stop()

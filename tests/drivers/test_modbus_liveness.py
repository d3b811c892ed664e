"""Liveness over real sockets: only good data refreshes `stats.last_alive` (drivers/base.py contract).

A device that accepts TCP but answers only exceptions or nothing (wrong unit id, a dead device
behind a gateway, every address illegal, a hung device) must never look alive, and must not
flap between "connected" and lost under the supervisor; a healthy device refreshes liveness on
every poll cycle.
"""

import asyncio
import logging
import math
import time

import pytest
from conftest import free_port, wait_for
from modbus_server import (
    RawServer,
    SimServer,
    bits_at,
    device,
    exception_reply,
    register_reply,
    registers_at,
    request_address,
)

from drivers.base import Quality, ReadingBatch
from drivers.errors import ConnectionLost
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter

TAGS = [{"name": "a", "table": "holding_register", "address": 0, "dtype": "uint16"},
        {"name": "b", "table": "coil", "address": 0, "dtype": "bool"}]


def cfg(port: int, **kw) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(**({"name": f"dev{port}", "host": "127.0.0.1", "port": port, "timeout_s": 0.2,
                                  "poll_interval_s": 0.02, "tags": TAGS} | kw))


def sim() -> object:
    return device([bits_at(0, [True] * 16)], [bits_at(0, [False] * 16)], [registers_at(0, [5, 6])],
                  [registers_at(0, [7])], unit=1)


class Watch:
    """Batches with the driver's last_alive at the moment each was delivered."""

    def __init__(self, driver: ModbusDriver) -> None:
        self.driver = driver
        self.seen: list[tuple[ReadingBatch, float]] = []

    def __call__(self, batch: ReadingBatch) -> None:
        self.seen.append((batch, self.driver.stats.last_alive))


async def poll(driver: ModbusDriver, batches: int) -> Watch:
    watch = Watch(driver)
    task = asyncio.create_task(driver.subscribe(watch))
    try:
        await wait_for(lambda: len(watch.seen) >= batches or task.done(), timeout=10, what=f"{batches} polls")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return watch


async def test_healthy_device_refreshes_liveness_every_cycle_wrong_unit_id_never(port):
    server = await SimServer(sim, port).start()
    healthy, wrong = ModbusDriver(cfg(port)), ModbusDriver(cfg(port, device_id=7))
    try:
        await healthy.connect()
        await wrong.connect()
        good, bad = await asyncio.gather(poll(healthy, 10), poll(wrong, 10))
    finally:
        await healthy.close()
        await wrong.close()
        await server.stop()
    alive = [t for _, t in good.seen]
    assert all(b.quality.tolist() == [Quality.GOOD] * 2 for b, _ in good.seen)
    assert all(later > earlier for earlier, later in zip(alive, alive[1:], strict=False))  # every cycle
    assert healthy.alive_interval_s == pytest.approx(0.02 + 2 * 0.2)  # poll + a timeout per block
    assert all((b.quality == Quality.BAD).all() for b, _ in bad.seen) and len(bad.seen) >= 10
    assert wrong.stats.last_alive == -math.inf
    assert "exception" in wrong.stats.tag_errors["a"]


@pytest.mark.parametrize(("code", "reason"), [(11, "gateway target failed to respond"),
                                              (2, "illegal data address"), (4, "device failure")])
async def test_a_device_answering_only_exceptions_never_looks_alive(port, code, reason):
    server = await RawServer(port, exception_reply(code)).start()
    d = ModbusDriver(cfg(port))
    try:
        await d.connect()
        watch = await poll(d, 5)
    finally:
        await d.close()
        await server.stop()
    assert all((b.quality == Quality.BAD).all() and t == -math.inf for b, t in watch.seen)
    assert d.stats.tag_errors == {"a": f"exception {code} ({reason}) reading holding_register 0..0",
                                  "b": f"exception {code} ({reason}) reading coil 0..0"}


async def test_a_silent_device_is_one_outage_not_a_flapping_link(port, caplog):
    """Accepts TCP, never answers: sessions open and are given up after max_consecutive_timeouts,
    the supervisor keeps counting one outage (one warning, no 'data flowing again'), and
    last_alive is never refreshed, so the controller's comm loss stands."""
    caplog.set_level(logging.DEBUG, logger="drivers.supervisor")
    server = await RawServer(port, lambda _req: None).start()
    d = ModbusDriver(cfg(port, timeout_s=0.05, max_consecutive_timeouts=2))
    batches: list[ReadingBatch] = []
    sup = DriverSupervisor(d, batches.append, backoff=Backoff(initial=0.01, factor=1.5, cap=0.05),
                           limiter=SessionRateLimiter(per_minute=1000))
    sup.start()
    try:
        await wait_for(lambda: d.stats.sessions_created >= 4, timeout=10, what="4 sessions")
    finally:
        await sup.stop()
        await server.stop()
    assert sup.failures >= 3
    assert d.stats.last_alive == -math.inf
    assert not any((b.quality == Quality.GOOD).any() for b in batches)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name == "drivers.supervisor"]
    assert len(warnings) == 1 and "no answer to 2 requests in a row" in warnings[0]


async def test_consumer_exceptions_do_not_tear_down_the_session(port, caplog):
    server = await SimServer(sim, port).start()
    d = ModbusDriver(cfg(port))
    calls = []

    def broken(batch: ReadingBatch) -> None:
        calls.append(batch)
        raise RuntimeError("consumer bug")

    try:
        await d.connect()
        task = asyncio.create_task(d.subscribe(broken))
        await wait_for(lambda: len(calls) >= 3 or task.done(), timeout=5, what="3 deliveries")
        assert not task.done()  # still polling
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await d.close()
        await server.stop()
    assert "on_batch raised" in caplog.text


async def test_illegal_block_is_logged_once_with_its_addresses_not_every_poll(port, caplog):
    caplog.set_level(logging.INFO, logger="drivers.modbus.driver")
    server = await SimServer(sim, port).start()
    tags = [*TAGS, {"name": "missing", "table": "holding_register", "address": 500, "dtype": "int16"},
            {"name": "missing2", "table": "holding_register", "address": 501, "dtype": "int16"}]
    d = ModbusDriver(cfg(port, tags=tags))
    try:
        await d.connect()
        watch = await poll(d, 8)
    finally:
        await d.close()
        await server.stop()
    assert all(b.quality.tolist() == [Quality.GOOD, Quality.GOOD, Quality.BAD, Quality.BAD]
               for b, _ in watch.seen)
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.modbus.driver"]
    assert lines == [f"{d.name}: exception 2 (illegal data address) reading holding_register 500..501; "
                     "BAD: missing, missing2"]
    assert d.stats.read_errors >= 8  # still counted every poll


async def test_silent_device_connection_lost_names_the_unit_id():
    port = free_port()
    server = await RawServer(port, lambda _req: None).start()
    d = ModbusDriver(cfg(port, timeout_s=0.05, max_consecutive_timeouts=2, device_id=3))
    try:
        await d.connect()
        t0 = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"no answer to 2 requests in a row .*\(unit id 3\)"):
            await asyncio.wait_for(d.subscribe(lambda b: None), timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        await d.close()
        await server.stop()


def spread_tags(*addresses: int) -> list[dict]:
    """One uint16 tag per address, far enough apart to be one block each."""
    return [{"name": f"r{a}", "table": "holding_register", "address": a, "dtype": "uint16"}
            for a in addresses]


async def test_a_silent_block_makes_only_its_tags_bad_and_late_answers_are_not_misplaced(port):
    """Block 100 never answers in time (its answer comes after timeout_s, while the next request
    waits): the blocks before and after it stay GOOD with their own values on every poll, the
    late answer is not taken for block 200's (transaction ids), and the device is not lost."""
    async def reply(request: bytes) -> bytes:
        if request_address(request) == 100:
            await asyncio.sleep(0.15)  # after the client gave up on it
        return register_reply(request)

    server = await RawServer(port, reply).start()
    d = ModbusDriver(cfg(port, tags=spread_tags(0, 100, 200, 300), timeout_s=0.1,
                         max_consecutive_timeouts=2))
    try:
        await d.connect()
        watch = await poll(d, 6)
    finally:
        await d.close()
        await server.stop()
    for batch, _ in watch.seen:
        assert batch.quality.tolist() == [Quality.GOOD, Quality.BAD, Quality.GOOD, Quality.GOOD]
        assert batch.values[[0, 2, 3]].tolist() == [1.0, 201.0, 301.0]
    assert d.stats.tag_errors == {"r100": "no answer within 0.1 s"}


async def test_a_device_where_every_block_is_silent_is_still_lost(port):
    server = await RawServer(port, lambda _req: None).start()
    d = ModbusDriver(cfg(port, tags=spread_tags(0, 100, 200, 300), timeout_s=0.05,
                         max_consecutive_timeouts=3))
    try:
        await d.connect()
        with pytest.raises(ConnectionLost, match="no answer to 3 requests in a row"):
            await asyncio.wait_for(d.subscribe(lambda b: None), timeout=5)
    finally:
        await d.close()
        await server.stop()
    assert server.requests == 3  # lost within the first poll, not after one request per poll


async def watch_alive(driver: ModbusDriver, seconds_of_polls: int) -> list[float]:
    """The gaps between successive refreshes of last_alive while the driver polls."""
    refreshes: list[float] = []
    task = asyncio.create_task(driver.subscribe(lambda b: None))

    async def sample() -> None:
        while True:
            if not refreshes or driver.stats.last_alive != refreshes[-1]:
                refreshes.append(driver.stats.last_alive)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        await wait_for(lambda: len(refreshes) > seconds_of_polls or task.done(), timeout=20, what="refreshes")
    finally:
        for t in (task, sampler):
            t.cancel()
        await asyncio.gather(task, sampler, return_exceptions=True)
    return [b - a for a, b in zip(refreshes[2:], refreshes[3:], strict=False)]


async def test_a_slow_healthy_device_refreshes_liveness_per_block_not_per_poll(port):
    """Every answer 60 ms late, 6 blocks: a poll takes ~0.36 s but each GOOD block refreshes
    last_alive at once, so on a device that answers every block two refreshes are at most
    poll_interval_s + timeout_s apart (checked with a 2x margin; per poll it would be ~0.36 s)."""
    async def reply(request: bytes) -> bytes:
        await asyncio.sleep(0.06)
        return register_reply(request)

    server = await RawServer(port, reply).start()
    d = ModbusDriver(cfg(port, tags=spread_tags(0, 100, 200, 300, 400, 500), timeout_s=0.1))
    try:
        await d.connect()
        gaps = await watch_alive(d, 20)
    finally:
        await d.close()
        await server.stop()
    assert max(gaps) <= 2 * (0.02 + 0.1), gaps
    assert d.alive_interval_s == pytest.approx(0.02 + 6 * 0.1)


async def test_liveness_gaps_stay_within_alive_interval_with_a_silent_block(port):
    """The documented bound poll_interval_s + blocks * timeout_s holds when one block never answers."""
    def reply(request: bytes) -> bytes | None:
        return None if request_address(request) == 100 else register_reply(request)

    server = await RawServer(port, reply).start()
    d = ModbusDriver(cfg(port, tags=spread_tags(0, 100, 200), timeout_s=0.1))
    try:
        await d.connect()
        gaps = await watch_alive(d, 10)
    finally:
        await d.close()
        await server.stop()
    assert max(gaps) <= d.alive_interval_s, (gaps, d.alive_interval_s)


@pytest.mark.parametrize(("kw", "reason"), [
    ({"fc": 4}, "answer with function code 4 to a read of holding_register 0..1 (FC3)"),
    ({"extra": 1}, "oversized response reading holding_register 0..1: 3 of 2 registers")])
async def test_an_answer_of_another_shape_is_bad_not_good(port, kw, reason):
    server = await RawServer(port, lambda req: register_reply(req, **kw)).start()
    tags = [{"name": "a", "table": "holding_register", "address": 0, "dtype": "uint16"},
            {"name": "b", "table": "holding_register", "address": 1, "dtype": "uint16"}]
    d = ModbusDriver(cfg(port, tags=tags))
    try:
        await d.connect()
        batch = await d.read()
    finally:
        await d.close()
        await server.stop()
    assert batch.quality.tolist() == [Quality.BAD, Quality.BAD]
    assert d.stats.tag_errors == {"a": reason, "b": reason}
    assert d.stats.last_alive == -math.inf

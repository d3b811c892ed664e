"""Backoff, session-rate limit, the supervisor's state channel and backoff reset (pure logic with a
stand-in driver), permanent errors, and recovery after a long outage against a real pymodbus server."""

import asyncio
import logging
import random
import time

import pytest
from conftest import wait_for
from modbus_server import SimServer, bits_at, device, registers_at

from drivers.base import ConnectionState, DriverStats, Quality, ReadingBatch
from drivers.errors import CertificateUntrusted, ConnectionLost, CredentialsRejected
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.supervisor import Backoff, DriverSupervisor, SessionRateLimiter


def test_backoff_grows_exponentially_to_the_cap_with_jitter_below_the_nominal_delay():
    b = Backoff(initial=0.5, factor=2.0, cap=8.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for d, n in zip(delays, nominal, strict=True):
        assert n * 0.5 <= d <= n
    b.reset()
    assert b.next_delay() <= 0.5


def test_backoff_rejects_nonsense():
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=5, cap=1)


def test_session_limiter_allows_n_per_sliding_minute():
    now = [0.0]
    lim = SessionRateLimiter(per_minute=3, clock=lambda: now[0])
    for _ in range(3):
        assert lim.wait_needed() == 0.0
        lim.started.append(now[0])
        now[0] += 1.0
    assert lim.wait_needed() == pytest.approx(57.0)  # the first session was at t=0
    now[0] = 60.0
    assert lim.wait_needed() == 0.0


class FlappingDriver:
    """Accepts every session and loses it after `lifetime` seconds (pure-logic stand-in).

    With `alive`, each session first delivers one GOOD batch (proof of data, as a real driver's
    poll or keep-alive refreshes stats.last_alive); without, it is a device that never answers.
    """

    def __init__(self, lifetime: float, alive: bool = False) -> None:
        self.name, self.tag_names = "flappy", ["a", "b"]
        self.stats = DriverStats()
        self.lifetime, self.alive = lifetime, alive
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        pass

    async def subscribe(self, on_batch) -> None:
        if self.alive:
            self.stats.last_alive = time.monotonic()
            on_batch(ReadingBatch.empty_for(range(2), Quality.GOOD))
        await asyncio.sleep(self.lifetime)
        raise ConnectionLost("dropped")


async def run_until_connects(driver, stable_after: float, connects: int, states: list | None = None):
    batches = []
    sup = DriverSupervisor(driver, batches.append,
                           backoff=Backoff(initial=0.001, factor=2.0, cap=0.05, jitter=0.0),
                           limiter=SessionRateLimiter(per_minute=10_000), stable_after=stable_after,
                           on_state=None if states is None else lambda s, d: states.append((s, d)))
    sup.start()
    await wait_for(lambda: driver.connects >= connects, what=f"{connects} connects")
    await sup.stop()
    return sup, batches


async def test_a_plc_that_drops_sessions_at_once_keeps_backing_off():
    states = []
    sup, batches = await run_until_connects(FlappingDriver(lifetime=0.0, alive=True), stable_after=1.0,
                                            connects=6, states=states)
    assert sup.backoff.attempt >= 5  # never reset: sessions did not last `stable_after`
    assert all((b.quality == Quality.GOOD).all() for b in batches)  # batches carry data quality only


async def test_every_state_change_goes_through_on_state_and_only_the_supervisor_holds_it():
    states = []
    sup, _ = await run_until_connects(FlappingDriver(lifetime=0.0, alive=True), stable_after=1.0,
                                      connects=3, states=states)
    kinds = [s for s, _ in states]
    assert kinds[:4] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED, ConnectionState.BACKOFF,
                         ConnectionState.CONNECTING]
    assert states[2][1] == "ConnectionLost: dropped"  # the cause travels with the state
    assert kinds[-1] is ConnectionState.CLOSED and sup.state is ConnectionState.CLOSED
    assert not hasattr(sup.driver, "state")


async def test_a_session_that_stayed_up_with_good_data_resets_the_backoff():
    sup, _ = await run_until_connects(FlappingDriver(lifetime=0.02, alive=True), stable_after=0.01,
                                      connects=6)
    assert sup.backoff.attempt <= 1


async def test_a_silent_device_does_not_flap_between_connected_and_lost(caplog):
    """Sessions that stay up but never deliver good data are one outage: one warning, no
    "data flowing again", the failure count keeps growing and the backoff is never reset."""
    caplog.set_level(logging.DEBUG, logger="drivers.supervisor")
    sup, batches = await run_until_connects(FlappingDriver(lifetime=0.02), stable_after=0.01, connects=6)
    assert sup.failures >= 5 and sup.backoff.attempt >= 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "connection failed or lost" in warnings[0]
    assert batches == []


async def test_good_data_ends_the_outage_once(caplog):
    caplog.set_level(logging.WARNING, logger="drivers.supervisor")
    await run_until_connects(FlappingDriver(lifetime=0.0, alive=True), stable_after=1.0, connects=4)
    messages = [r.getMessage() for r in caplog.records]
    flowing = [m for m in messages if "data flowing again" in m]
    lost = [m for m in messages if "connection failed or lost" in m]
    assert flowing and len(lost) >= len(flowing)  # each outage: one lost line, one flowing line


def _small_device():
    return device([bits_at(0, [True])], [bits_at(0, [False])], [registers_at(0, [11, 12])],
                  [registers_at(0, [1])])


async def test_recovery_after_a_long_outage_is_bounded_by_the_backoff_cap_plus_one_attempt(port):
    """Failed connects are not sessions: a server down for more than a minute's worth of attempts
    (per_minute=3 here) is reconnected within cap + one attempt of coming back. When failed
    attempts counted against the limit, this waited for the 60 s window to slide."""
    cap, timeout, poll = 0.2, 0.3, 0.05
    config = ModbusDeviceConfig(name="sup", host="127.0.0.1", port=port, timeout_s=timeout,
                                poll_interval_s=poll, tags=[{"name": "r0", "table": "holding_register",
                                                             "address": 0, "dtype": "uint16"}])
    driver = ModbusDriver(config)
    stamps: list[tuple[float, ReadingBatch]] = []
    sup = DriverSupervisor(driver, lambda b: stamps.append((time.monotonic(), b)),
                           backoff=Backoff(initial=0.05, factor=2.0, cap=cap, jitter=0.5),
                           limiter=SessionRateLimiter(per_minute=3))
    lost = lambda: sup.state in (ConnectionState.BACKOFF, ConnectionState.CONNECTING)  # noqa: E731
    server = await SimServer(_small_device, port).start()
    sup.start()
    try:
        await wait_for(lambda: any((b.quality == Quality.GOOD).all() for _, b in stamps), timeout=5,
                       what="first good value")
        await server.stop()
        await wait_for(lost, timeout=5, what="the loss reported")
        attempts = driver.stats.sessions_created
        await wait_for(lambda: driver.stats.sessions_created >= attempts + 3 + 2, timeout=10,
                       what="more failed attempts than the per-minute session limit")
        mark = len(stamps)
        await server.start()
        back = time.monotonic()
        await wait_for(lambda: any((b.quality == Quality.GOOD).all() for _, b in stamps[mark:]),
                       timeout=10, what="good data after the server came back")
        first_good = next(t for t, b in stamps[mark:] if (b.quality == Quality.GOOD).all())
        bound = cap + timeout + poll  # the longest backoff, one connect attempt, one poll
        assert first_good - back <= 2 * bound, f"recovery took {first_good - back:.3f} s"
        assert sup.failures == 0
    finally:
        await sup.stop()
        await server.stop()


class RefusingDriver(FlappingDriver):
    """A PLC that refuses us on every connect, with a permanent error."""

    def __init__(self, error: Exception) -> None:
        super().__init__(lifetime=0.0)
        self.error = error

    async def connect(self) -> None:
        self.connects += 1
        raise self.error


@pytest.mark.parametrize("error", [
    CertificateUntrusted("opc.tcp://plc: the server does not trust our client certificate"),
    CredentialsRejected("opc.tcp://plc: bad credentials: the server refused user 'op'"),
])
async def test_a_permanent_error_stops_the_retries_and_reports_failed_with_the_cause(caplog, error):
    caplog.set_level(logging.DEBUG, logger="drivers.supervisor")
    driver = RefusingDriver(error)
    states = []
    sup = DriverSupervisor(driver, lambda b: None, backoff=Backoff(initial=0.001, factor=2.0, cap=0.002),
                           limiter=SessionRateLimiter(per_minute=10_000),
                           on_state=lambda s, d: states.append((s, d)))
    task = sup.start()
    await asyncio.wait_for(task, 5)  # run() returns: no backoff loop
    assert driver.connects == 1
    assert sup.state is ConnectionState.FAILED and sup.failure is error
    assert states[-1] == (ConnectionState.FAILED, f"{type(error).__name__}: {error}")
    loud = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0][0] == logging.ERROR and str(error) in loud[0][1]
    assert "not retrying" in loud[0][1]
    await sup.stop()
    assert sup.state is ConnectionState.CLOSED


class LostCancelDriver(FlappingDriver):
    """A connect like pymodbus' to a refused port: `asyncio.wait_for` on a connection that fails in the
    loop round the supervisor's task is cancelled. Python 3.11's wait_for then raises the connection's
    error instead of the cancel (the cancel is lost)."""

    def __init__(self) -> None:
        super().__init__(lifetime=0.0)
        self.waiting: asyncio.Future | None = None

    async def connect(self) -> None:
        self.connects += 1
        self.waiting = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.waiting, 30)
        except OSError as exc:
            raise ConnectionLost(f"refused: {exc}") from None


async def test_a_cancel_lost_in_the_drivers_wait_for_still_ends_the_supervisor():
    """Was: the supervisor took the refused connect for a failure and backed off for ever: its task
    never ended, and the controller's stop waited for it (the full suite hung in Controller.aclose)."""
    driver = LostCancelDriver()
    sup = DriverSupervisor(driver, lambda batch: None, limiter=SessionRateLimiter(per_minute=10_000),
                           backoff=Backoff(initial=30, factor=1, cap=30, jitter=0))
    task = sup.start()
    await wait_for(lambda: driver.waiting is not None, what="the connect")
    driver.waiting.set_exception(OSError("connection refused"))
    task.cancel()  # the same round: wait_for's inner future is done when the cancel reaches it
    done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done and task.cancelled(), f"the supervisor went on after its cancel ({sup.state})"

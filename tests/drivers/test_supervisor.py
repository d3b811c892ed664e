"""Backoff, session-rate limit and the supervisor's backoff reset (pure logic with a stand-in driver;
the reconnect loop against real servers is in the protocol tests)."""

import asyncio
import random

import pytest
from conftest import wait_for

from drivers.base import ConnectionLost, Quality
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
    """Accepts every session and loses it after `lifetime` seconds (pure-logic stand-in)."""

    def __init__(self, lifetime: float) -> None:
        self.name, self.tag_names = "flappy", ["a", "b"]
        self.state = None
        self.lifetime = lifetime
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        pass

    async def subscribe(self, on_batch) -> None:
        await asyncio.sleep(self.lifetime)
        raise ConnectionLost("dropped")


async def run_until_connects(driver, stable_after: float, connects: int):
    batches = []
    sup = DriverSupervisor(driver, batches.append,
                           backoff=Backoff(initial=0.001, factor=2.0, cap=0.05, jitter=0.0),
                           limiter=SessionRateLimiter(per_minute=10_000), stable_after=stable_after)
    sup.start()
    await wait_for(lambda: driver.connects >= connects, what=f"{connects} connects")
    await sup.stop()
    return sup, batches


async def test_a_plc_that_drops_sessions_at_once_keeps_backing_off():
    sup, batches = await run_until_connects(FlappingDriver(lifetime=0.0), stable_after=1.0, connects=6)
    assert sup.backoff.attempt >= 5  # never reset: sessions did not last `stable_after`
    assert all(b.quality.tolist() == [Quality.COMM_LOST] * 2 for b in batches)


async def test_a_session_that_stayed_up_resets_the_backoff():
    sup, _ = await run_until_connects(FlappingDriver(lifetime=0.02), stable_after=0.01, connects=6)
    assert sup.backoff.attempt <= 1

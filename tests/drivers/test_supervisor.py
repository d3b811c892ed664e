"""Backoff and the session-rate limit (pure logic; the reconnect loop is tested against real servers)."""

import random

import pytest

from drivers.supervisor import Backoff, SessionRateLimiter


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

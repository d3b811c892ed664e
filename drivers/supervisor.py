"""Keeps one driver connected in its own task: backoff with jitter, bounded session rate.

One supervisor per PLC, so a dead, slow or misbehaving PLC never stalls
another. It is the only writer of the PLC's ConnectionState and reports every
change through `on_state(state, detail)` (the controller marks the PLC's tags
COMM_LOST on BACKOFF; batches carry data quality only). When a connection
breaks, the supervisor waits (exponential backoff with jitter, capped) and
reconnects with a fresh driver session. A permanent error (drivers.errors:
CredentialsRejected, CertificateUntrusted, SecretMissing) ends the retries: the state becomes
FAILED with the cause, because the PLC will refuse every attempt until the
configuration or its trust list changes. A sliding-window limit on
established sessions makes reconnect storms impossible even if connects succeed
and then fail immediately (an anchor system once sent >6,000 CreateSession
requests in two minutes). Failed connect attempts are not sessions and do not
count against it: they are spaced by the backoff alone (never closer than
`initial x (1 - jitter)`), so a server that comes back is reached within one
backoff cap plus one attempt.

Recovery is judged on data, not on the TCP/session handshake: the failure count
(and its "reconnected" log line) resets only once the new session proved good
data (`driver.stats.last_alive` advanced), so a device that accepts connections
but answers only errors or nothing does not flap between "connected" and lost.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from drivers.base import ConnectionState, Driver, OnBatch, ReadingBatch
from drivers.errors import ConnectionLost, DriverError

log = logging.getLogger(__name__)
RECANCEL_S = 1.0  # stop cancels a task still running this long after its cancel again


class Backoff:
    """Exponential backoff: initial x factor^attempt, capped, each delay shortened by up to `jitter`."""

    def __init__(self, initial: float = 0.5, factor: float = 2.0, cap: float = 10.0,
                 jitter: float = 0.5, rng: random.Random | None = None) -> None:
        if not (initial > 0 and factor >= 1 and cap >= initial and 0 <= jitter < 1):
            raise ValueError("backoff needs initial > 0, factor >= 1, cap >= initial, 0 <= jitter < 1")
        self.initial, self.factor, self.cap, self.jitter = initial, factor, cap, jitter
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor ** self.attempt)
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class SessionRateLimiter:
    """At most `per_minute` established sessions in any sliding 60-second window.

    `wait_needed()` before an attempt, `record()` once the session is established.
    """

    def __init__(self, per_minute: int = 12, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be >= 1")
        self.per_minute = per_minute
        self.clock = clock
        self.started: deque[float] = deque()

    def wait_needed(self) -> float:
        """Seconds until another session may start (0 if now)."""
        now = self.clock()
        while self.started and now - self.started[0] >= 60.0:
            self.started.popleft()
        if len(self.started) < self.per_minute:
            return 0.0
        return 60.0 - (now - self.started[0])

    async def wait(self) -> None:
        while (wait := self.wait_needed()) > 0:
            await asyncio.sleep(wait)

    def record(self) -> None:
        self.started.append(self.clock())


class DriverSupervisor:
    """Runs `driver` until stopped: connect, stream batches to `on_batch`, reconnect on failure.

    The backoff is reset only once a session has stayed up for `stable_after` seconds and
    delivered good data: a PLC that accepts sessions and drops them at once (or never answers
    on them) keeps backing off instead of being hammered at the initial delay.
    """

    def __init__(self, driver: Driver, on_batch: OnBatch, backoff: Backoff | None = None,
                 limiter: SessionRateLimiter | None = None,
                 on_state: Callable[[ConnectionState, str], None] | None = None,
                 stable_after: float = 10.0) -> None:
        self.driver = driver
        self.on_batch = on_batch
        self.backoff = backoff or Backoff()
        self.limiter = limiter or SessionRateLimiter()
        self.on_state = on_state
        self.stable_after = stable_after
        self.state = ConnectionState.DISCONNECTED
        self.failures = 0  # consecutive failed connects or lost sessions
        self.last_error = ""
        self.failure: DriverError | None = None  # the permanent error that ended the retries
        self._task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self.run(), name=f"driver:{self.driver.name}")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        while task is not None and not task.done():  # again each second: a wait_for in the driver can
            task.cancel()  # lose a cancel (Python 3.11; the controller's stop: controller.tasks)
            await asyncio.wait({task}, timeout=RECANCEL_S)
        await self.driver.close()
        self._set_state(ConnectionState.CLOSED, "stopped")

    async def run(self) -> None:
        """Connect, stream, reconnect; returns only on a permanent error (state FAILED)."""
        while True:
            await self.limiter.wait()
            self._set_state(ConnectionState.CONNECTING, "")
            connected_at = None
            alive_before = self.driver.stats.last_alive
            try:
                await self.driver.connect()
                connected_at = time.monotonic()
                self.limiter.record()
                self._set_state(ConnectionState.CONNECTED, "")
                await self.driver.subscribe(self._watch(self.on_batch, alive_before))
                raise ConnectionLost("subscription ended without an error")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one PLC must never escape its own task
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.failures += 1  # back to 0 only once a session proved good data (_watch)
                if isinstance(exc, DriverError) and exc.permanent:
                    self.failure = exc
                else:
                    # One warning per outage, then quiet: a flapping PLC must not flood the log.
                    level = logging.WARNING if self.failures == 1 else logging.DEBUG
                    log.log(level, "%s: connection failed or lost (%s)", self.driver.name, self.last_error)
            finally:
                with contextlib.suppress(Exception):
                    await self.driver.close()
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a cancel that Python 3.11's wait_for lost in
                raise asyncio.CancelledError  # the driver (pymodbus' connect): stop, do not back off
            if self.failure is not None:
                log.error("%s: %s; not retrying: fix the configuration or the PLC's trust list, then restart",
                          self.driver.name, self.last_error)
                self._set_state(ConnectionState.FAILED, self.last_error)
                return
            if (connected_at is not None and self.driver.stats.last_alive > alive_before
                    and time.monotonic() - connected_at >= self.stable_after):
                self.backoff.reset()
            self._set_state(ConnectionState.BACKOFF, self.last_error)
            await asyncio.sleep(self.backoff.next_delay())

    def _watch(self, on_batch: OnBatch, alive_before: float) -> OnBatch:
        """on_batch, plus the one "reconnected" line when the session first proves good data."""
        def deliver(batch: ReadingBatch) -> None:
            if self.failures and self.driver.stats.last_alive > alive_before:
                log.warning("%s: data flowing again after %d failure(s)", self.driver.name, self.failures)
                self.failures = 0
            on_batch(batch)
        return deliver

    def _set_state(self, state: ConnectionState, detail: str) -> None:
        self.state = state
        if self.on_state is not None:
            self.on_state(state, detail)

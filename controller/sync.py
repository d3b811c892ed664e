"""Cloud sync: one worker per sink drains the outbox oldest first, acknowledging only what the sink confirmed.

`SyncWorker` is one asyncio task for one `Sink` (controller/sinks/; InfluxDB by default). It
owns everything that is the same for every sink; the sink only sends and raises a typed error.
Each round it fetches the oldest batch that sink has pending (in a thread, so the loop never
waits on SQLite), sends it within ``timeout_s``, and then:

==========================  ================================================================
delivered                   acknowledged in the outbox, backoff reset, next batch immediately;
                            if the acknowledgement fails (disk full), backoff before the resend
`Rejected`                  the batch goes to the dead-letter table with the sink's message
`AuthFailed`                ``on_alarm("sync_auth", message)`` once per episode; data KEPT;
                            retried with backoff (a fixed token starts flowing again)
`Misconfigured`             ``on_alarm("sync_config", ...)`` once per episode; data kept
`TooLarge`                  the batch is split: the record budget per send is halved, also
                            within one row (a window); one record too large alone: dead-lettered.
                            The budget is back to ``batch_size`` after the batch is delivered
`Retryable` + retry_after   wait retry_after (the sink caps it), never less than
                            ``backoff_initial_s`` (a "Retry-After: 0" is no licence to hammer)
`Retryable`, timeout,       exponential backoff with jitter: a delay drawn uniformly from
anything unexpected         [d/2, d], d = min(cap, initial * 2**attempt); unexpected errors are
                            also logged with their traceback
==========================  ================================================================

Nothing raises into the caller and nothing blocks it. Every wait is recorded in `schedule`
(reason, status, delay) so tests check the backoff without timing wall-clock sleeps. Records
carry window ends as timestamps, so a batch resent after a crash or a lost answer overwrites
itself. Several workers (one per sink) drain one outbox independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from controller.errors import LinesentryError
from controller.outbox import Batch, Outbox
from controller.sinks import (
    AuthFailed,
    LineProtocolSink,
    Misconfigured,
    Rejected,
    Retryable,
    Sink,
    SinkError,
    TooLarge,
    plugin,
)
from controller.sinks.config import SyncConfig, SyncConfigError

__all__ = ["SyncConfig", "SyncConfigError", "SyncStats", "SyncWorker", "Wait"]

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle worker looks at the outbox when nobody calls wake()
DELIVERED = 204  # `last_status` after a delivered batch (HTTP's "no content"; alerting rules use it)


@dataclass
class SyncStats:
    """Counters for /metrics."""

    sent_points: int = 0
    sent_batches: int = 0
    failed_sends: int = 0
    retries: int = 0
    dead_lettered_points: int = 0
    auth_failures: int = 0
    delete_failures: int = 0
    last_status: int = 0  # DELIVERED, or the sink's status of the failure (HTTP; 0 = transport)
    last_error: str = ""
    last_success_unix: float = 0.0


@dataclass(frozen=True)
class Wait:
    """One scheduled pause: why, after which status, for how long, and what the server asked."""

    reason: str  # "retry_after" | "backoff" | "auth" | "ack"
    status: int
    delay_s: float
    retry_after_s: float | None
    attempt: int


AlarmCallback = Callable[[str, str], Any]
Pause = Callable[[float], Awaitable[None]]


class SyncWorker:
    """Drains an `Outbox` into one sink (see module docstring for the outcome table)."""

    def __init__(self, config: SyncConfig, outbox: Outbox, on_alarm: AlarmCallback | None = None, *,
                 sink: Sink | None = None, rng: random.Random | None = None, pause: Pause | None = None,
                 schedule_len: int = 1000) -> None:
        """`sink` defaults to the one `config.sink` names (built now: a missing secret fails here);
        `pause` replaces the interruptible sleep (tests); `rng` makes jitter reproducible."""
        self.config = config
        self.outbox = outbox
        self.on_alarm = on_alarm
        self.stats = SyncStats()
        self.schedule: deque[Wait] = deque(maxlen=schedule_len)
        if sink is None and config.enabled:
            sink = _create(config)
        self.sink = sink
        self._rng = rng or random.Random()
        self._pause_fn = pause
        self._attempt = 0
        self._auth_alarm_raised = False
        self._config_alarm_raised = False
        self._max_points = config.batch_size
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = False

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.sink is None or self._task is not None:
            return
        self._stop.clear()
        with contextlib.suppress(sqlite3.Error):  # e.g. a full disk: the loop retries it like any error
            await asyncio.to_thread(self.outbox.subscribe, self.sink.name)
            self._subscribed = True
        self._task = asyncio.create_task(self._run(), name=f"linesentry-sync-{self.sink.name}")

    async def stop(self) -> None:
        """Stop and close the sink's connection. A send cut short is simply resent next time."""
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait({task}, timeout=self.config.timeout_s)  # a sink may swallow the cancel
            if not task.done():
                log.error("sink %s ignored cancellation for %g s: left running", self.sink and self.sink.name,
                          self.config.timeout_s)
            elif not task.cancelled() and task.exception() is not None:
                log.error("sync worker ended with %r", task.exception())
        if self.sink is not None:
            try:
                async with asyncio.timeout(self.config.timeout_s):  # a hung close must not hang shutdown
                    await self.sink.close()
            except Exception:
                log.exception("closing sink %s failed", self.sink.name)

    async def __aenter__(self) -> SyncWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def wake(self) -> None:
        """New data was appended: look at the outbox now instead of at the next idle poll."""
        self._wake.set()

    def metrics(self) -> dict[str, float]:
        rows, points, nbytes = self.outbox.backlog(self.sink.name if self.sink else None)
        out: dict[str, float] = {k: v for k, v in asdict(self.stats).items() if isinstance(v, int | float)}
        ob = self.outbox.stats
        out.update(backlog_rows=rows, backlog_points=points, backlog_bytes=nbytes,
                   dropped_points=ob.dropped_points_cap + ob.dropped_points_io,
                   append_failures=ob.append_failures)
        return out

    # -- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the worker die: log, count, back off
                log.exception("sync round failed")
                self.stats.last_error = f"internal: {exc}"
                await self._backoff(0, "backoff")

    async def _round(self) -> None:
        assert self.sink is not None
        if not self._subscribed:
            await asyncio.to_thread(self.outbox.subscribe, self.sink.name)
            self._subscribed = True
        batch = await asyncio.to_thread(self.outbox.fetch_batch, self.sink.name, self._max_points)
        if batch is None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
            return
        try:
            await self._send(batch)
        except SinkError as exc:
            await self._on_failure(batch, exc)
        except TimeoutError:
            await self._on_failure(batch, Retryable(f"no answer within {self.config.timeout_s} s"))
        except Exception as exc:  # a sink bug: treated as transient, with its traceback in the log
            log.exception("sink %s failed unexpectedly", self.sink.name)
            await self._on_failure(batch, Retryable(f"{type(exc).__name__}: {exc}"))
        else:
            await self._on_success(batch)

    async def _send(self, batch: Batch) -> None:
        """Send the batch, each sink call within ``timeout_s``. A row holds a whole window, so
        records are sent in chunks of the current budget: a row larger than the destination
        accepts is split instead of being refused (413) forever."""
        assert self.sink is not None
        if not batch.line_protocol:
            for start in range(0, len(batch.records), self._max_points):
                async with asyncio.timeout(self.config.timeout_s):
                    await self.sink.send(batch.records[start:start + self._max_points])
        elif isinstance(self.sink, LineProtocolSink):
            async with asyncio.timeout(self.config.timeout_s):
                await self.sink.send_line_protocol(batch.line_protocol)
        else:  # cannot happen: only the InfluxDB sink inherits line-protocol rows
            raise Rejected(f"sink {self.sink.name} cannot send line-protocol rows from an older outbox")

    async def _on_failure(self, batch: Batch, exc: SinkError) -> None:
        assert self.sink is not None
        name, status, message = self.sink.name, exc.status, str(exc)
        self.stats.last_status = status
        self.stats.failed_sends += 1
        self.stats.last_error = f"{name} {status}: {message}" if status else f"{name}: {message}"
        if isinstance(exc, Rejected):
            log.error("%s rejected %d points as malformed, dead-lettered: %s", name, batch.n_points, message)
            if await asyncio.to_thread(self.outbox.dead_letter, batch, status, message):
                self.stats.dead_lettered_points += batch.n_points
            return
        if isinstance(exc, TooLarge):
            # records go in chunks of the budget; rows from before records only whole, several per send
            per_send = batch.n_points if batch.line_protocol else min(self._max_points, len(batch.records))
            if per_send > 1 and (len(batch.ids) > 1 or not batch.line_protocol):
                self._max_points = max(1, per_send // 2)
                log.warning("%s: request too large, now at most %d points per send", name, self._max_points)
                return
            # one record (or one old row) is more than the destination takes: it never will
            log.error("%s: %d points too large to send even alone, dead-lettered: %s",
                      name, batch.n_points, message)
            if await asyncio.to_thread(self.outbox.dead_letter, batch, status, f"too large: {message}"):
                self.stats.dead_lettered_points += batch.n_points
            return
        if isinstance(exc, AuthFailed):
            self.stats.auth_failures += 1
            if not self._auth_alarm_raised:
                self._auth_alarm_raised = True
                self._alarm("sync_auth", f"{message}; data is kept in the outbox")
            await self._backoff(status, "auth")
            return
        if isinstance(exc, Misconfigured) and not self._config_alarm_raised:
            self._config_alarm_raised = True
            self._alarm("sync_config", f"{message}; data is kept in the outbox")
        if isinstance(exc, Retryable) and exc.retry_after is not None:
            # never sooner than backoff_initial_s: a server answering "Retry-After: 0" (or a date
            # in the past) would otherwise get the batch rendered and resent in a tight loop
            delay = max(exc.retry_after, self.config.backoff_initial_s)
            await self._wait("retry_after", status, delay, exc.retry_after)
            return
        await self._backoff(status, "backoff")

    async def _on_success(self, batch: Batch) -> None:
        self.stats.last_status = DELIVERED
        self.stats.sent_points += batch.n_points
        self.stats.sent_batches += 1
        self.stats.last_success_unix = time.time()
        self._auth_alarm_raised = self._config_alarm_raised = False
        self._max_points = self.config.batch_size  # a budget cut for one large batch is not kept forever
        if await asyncio.to_thread(self.outbox.ack, batch):
            self._attempt = 0
            return
        # sent but still pending (a full disk, a locked file): it will be resent and overwrite,
        # after a backoff, not at once in a loop that resends the same batch as fast as it can
        self.stats.delete_failures += 1
        await self._backoff(0, "ack")

    async def _backoff(self, status: int, reason: str) -> None:
        d = min(self.config.backoff_cap_s, self.config.backoff_initial_s * 2.0 ** min(self._attempt, 60))
        await self._wait(reason, status, d * (0.5 + 0.5 * self._rng.random()), None)

    async def _wait(self, reason: str, status: int, delay: float, retry_after: float | None) -> None:
        self._attempt += 1
        self.stats.retries += 1
        self.schedule.append(Wait(reason, status, delay, retry_after, self._attempt))
        if self._pause_fn is not None:
            await self._pause_fn(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    def _alarm(self, kind: str, message: str) -> None:
        log.error("%s: %s", kind, message)
        if self.on_alarm is None:
            return
        try:
            self.on_alarm(kind, message)
        except Exception:
            log.exception("on_alarm callback failed")


def _create(config: SyncConfig) -> Sink:
    """The sink `config.sink` names. A plugin bug (anything but a LinesentryError, e.g. a missing
    secret's SyncConfigError) becomes one SinkError line naming the sink, not an "internal error"."""
    try:
        return plugin(config.sink).create(config.options, config)
    except LinesentryError:
        raise
    except Exception as exc:
        raise SinkError(f"sink {config.sink!r} could not be created: {type(exc).__name__}: {exc}") from exc

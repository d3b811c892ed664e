"""Cloud sync: send the outbox to InfluxDB oldest first, delete only what the server confirmed.

`SyncWorker` is one asyncio task. Each round it fetches the oldest batch from the `Outbox` (in a
thread, so the loop never waits on SQLite) and writes it with influxdb-client's async write API
(`InfluxDBClientAsync.write_api().write`, line protocol at ns precision). Outcomes:

==========================  ================================================================
2xx                         rows deleted, backoff reset, next batch immediately
400                         batch moved to the dead-letter table with the server's message
401 / 403                   ``on_alarm("sync_auth", message)`` once per episode; data KEPT;
                            retried with backoff (a fixed token starts flowing again)
404                         ``on_alarm("sync_config", ...)`` (unknown org/bucket); data kept
413                         the batch is split: the point budget per request is halved
429 / 503 with Retry-After  wait exactly Retry-After (seconds or HTTP date, capped at 1 h)
other 5xx, 429/503 without  exponential backoff with jitter: a delay drawn uniformly from
Retry-After, timeouts,      [d/2, d], d = min(cap, initial * 2**attempt)
connection errors
anything unexpected         logged, counted, treated like a transient error
==========================  ================================================================

Nothing raises into the caller and nothing blocks it. Every wait is recorded in `schedule`
(reason, status, delay) so tests check the backoff without timing wall-clock sleeps. Points are
stamped with window ends, so a batch resent after a crash or a lost response overwrites itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from influxdb_client import WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.rest import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.outbox import Batch, Outbox

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 3600.0  # a server asking for more than an hour is treated as asking for an hour
IDLE_POLL_S = 1.0  # how often an idle worker looks at the outbox when nobody calls wake()


class SyncConfigError(ValueError):
    """A user mistake in the sync configuration (one line, names the key and the fix)."""


class SyncConfig(BaseModel):
    """`[sync]` section of the controller config. The token itself never appears here."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="InfluxDB base URL, e.g. https://eu-central-1-1.aws.cloud2.influxdata.com")
    org: str = Field(description='organization name or ID; "-" for InfluxDB 1.8')
    bucket: str = Field(description='bucket; "db/rp" for InfluxDB 1.8')
    token_env: str = Field("LINESENTRY_INFLUX_TOKEN", description="name of the env var holding the token")
    batch_size: int = Field(5000, ge=1, le=1_000_000, description="max points per write request")
    # The client takes whole milliseconds and 0 means "no timeout": at least 0.1 s.
    timeout_s: float = Field(10.0, ge=0.1, le=600, allow_inf_nan=False)
    backoff_initial_s: float = Field(1.0, ge=0.01, le=3600, allow_inf_nan=False)
    backoff_cap_s: float = Field(300.0, ge=0.01, le=86_400, allow_inf_nan=False)
    # 20 GiB: a week-long outage at 1,000 tags and 10 s windows (~17 GB); lower it on small disks.
    max_outbox_bytes: int = Field(20 << 30, ge=1 << 16, le=1 << 44,
                                  description="outbox cap (line protocol bytes)")
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"sync.url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("org", "bucket", "token_env")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> SyncConfig:
        if self.backoff_cap_s < self.backoff_initial_s:
            raise ValueError(f"sync.backoff_cap_s ({self.backoff_cap_s}) must be >= "
                             f"sync.backoff_initial_s ({self.backoff_initial_s})")
        return self

    def token(self) -> str:
        """The token from the environment; a clear error if the variable is missing."""
        value = os.environ.get(self.token_env)
        if value is None:
            raise SyncConfigError(f"environment variable {self.token_env} (sync.token_env) is not set; "
                                  f"export it with the InfluxDB token (user:password for InfluxDB 1.8)")
        return value


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
    last_status: int = 0  # HTTP status of the last attempt, 0 for a transport error
    last_error: str = ""
    last_success_unix: float = 0.0


@dataclass(frozen=True)
class Wait:
    """One scheduled pause: why, after which status, for how long, and what the server asked."""

    reason: str  # "retry_after" | "backoff" | "auth"
    status: int
    delay_s: float
    retry_after_s: float | None
    attempt: int


AlarmCallback = Callable[[str, str], Any]
Pause = Callable[[float], Awaitable[None]]


class SyncWorker:
    """Drains an `Outbox` into InfluxDB (see module docstring for the outcome table)."""

    def __init__(self, config: SyncConfig, outbox: Outbox, on_alarm: AlarmCallback | None = None, *,
                 rng: random.Random | None = None, pause: Pause | None = None,
                 schedule_len: int = 1000) -> None:
        """`pause` replaces the interruptible sleep (tests); `rng` makes jitter reproducible."""
        self.config = config
        self.outbox = outbox
        self.on_alarm = on_alarm
        self.stats = SyncStats()
        self.schedule: deque[Wait] = deque(maxlen=schedule_len)
        self._token = config.token() if config.enabled else ""
        self._rng = rng or random.Random()
        self._pause_fn = pause
        self._attempt = 0
        self._auth_alarm_raised = False
        self._config_alarm_raised = False
        self._max_points = config.batch_size
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: InfluxDBClientAsync | None = None
        self._write_api: Any = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.config.enabled or self._task is not None:
            return
        self._stop.clear()
        self._client = InfluxDBClientAsync(url=self.config.url, token=self._token, org=self.config.org,
                                           timeout=int(self.config.timeout_s * 1000))
        self._write_api = self._client.write_api()
        self._task = asyncio.create_task(self._run(), name="linesentry-sync")

    async def stop(self) -> None:
        """Stop and close the HTTP session. A send cut short is simply resent next time."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def __aenter__(self) -> SyncWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def wake(self) -> None:
        """New data was appended: look at the outbox now instead of at the next idle poll."""
        self._wake.set()

    def metrics(self) -> dict[str, float]:
        rows, points, nbytes = self.outbox.backlog()
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
        batch = await asyncio.to_thread(self.outbox.fetch_batch, self._max_points)
        if batch is None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
            return
        status, message, retry_after = await self._send(batch)
        self.stats.last_status = status
        if 200 <= status < 300:
            await self._on_success(batch)
            return
        self.stats.failed_sends += 1
        self.stats.last_error = f"HTTP {status}: {message}" if status else message
        if status == 400:
            log.error("InfluxDB rejected %d points as malformed, dead-lettered: %s", batch.n_points, message)
            if await asyncio.to_thread(self.outbox.dead_letter, batch, status, message):
                self.stats.dead_lettered_points += batch.n_points
            return
        if status == 413 and len(batch.ids) > 1:
            self._max_points = max(1, batch.n_points // 2)
            log.warning("InfluxDB: request too large, now at most %d points per write", self._max_points)
            return
        if status in (401, 403):
            self.stats.auth_failures += 1
            if not self._auth_alarm_raised:
                self._auth_alarm_raised = True
                self._alarm("sync_auth", f"InfluxDB refused the token (HTTP {status}: {message}); "
                                         f"data is kept in the outbox; check {self.config.token_env}")
            await self._backoff(status, "auth")
            return
        if status == 404 and not self._config_alarm_raised:
            self._config_alarm_raised = True
            self._alarm("sync_config", f"InfluxDB: {message} (check sync.org / sync.bucket); data is kept")
        if status in (429, 503) and retry_after is not None:
            await self._wait("retry_after", status, retry_after, retry_after)
            return
        await self._backoff(status, "backoff")

    async def _send(self, batch: Batch) -> tuple[int, str, float | None]:
        """(status, message, retry_after_s); status 0 for a transport error or timeout."""
        assert self._client is not None
        try:
            await self._write_api.write(bucket=self.config.bucket, org=self.config.org,
                                                 record=batch.body, write_precision=WritePrecision.NS)
            return 204, "", None
        except ApiException as exc:
            status = int(exc.status or 0)
            return status, _message(exc), _retry_after(exc)
        except Exception as exc:  # timeouts, aiohttp.ClientError, OSError, anything else from the client
            return 0, f"{type(exc).__name__}: {exc}".rstrip(": "), None

    async def _on_success(self, batch: Batch) -> None:
        self.stats.sent_points += batch.n_points
        self.stats.sent_batches += 1
        self.stats.last_success_unix = time.time()
        self._attempt = 0
        self._auth_alarm_raised = self._config_alarm_raised = False
        if not await asyncio.to_thread(self.outbox.delete, batch):
            self.stats.delete_failures += 1  # sent but still stored: it will be resent and overwrite

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


def _message(exc: ApiException) -> str:
    msg = getattr(exc, "message", None) or exc.reason or ""
    if isinstance(msg, bytes):
        msg = msg.decode(errors="replace")
    return " ".join(str(msg).split())[:2000]


def _retry_after(exc: ApiException) -> float | None:
    """Retry-After as seconds (delta-seconds or HTTP date), capped; None if absent or unreadable."""
    value = getattr(exc, "retry_after", None)
    if value is None and exc.headers is not None:
        value = exc.headers.get("Retry-After")
    if value is None:
        return None
    value = str(value).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)

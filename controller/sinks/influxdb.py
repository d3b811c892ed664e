"""The InfluxDB sink: records as line protocol (ns precision) through influxdb-client's async write API.

Works with InfluxDB 2.x / Cloud, 3.x (v2 write endpoint) and 1.8+ (v2 compatibility endpoints);
docs/cloud-sync.md has the keys for each. Line protocol is built only with influxdb_client's
`Point` (never by hand), so escaping and number formatting are the client's. influxdb_client is
imported when the sink is created (at start), never when its config is validated.

HTTP outcome -> typed error for the shared worker (controller/sync.py):

=====================================  ===========================================================
2xx                                    delivered
400                                    `Rejected` (malformed: dead-lettered, not retried)
401 / 403                              `AuthFailed` (alarm once, records kept, retried)
404                                    `Misconfigured` (unknown org/bucket: alarm once, kept, retried)
413                                    `TooLarge` (the worker halves the records per request)
429 / 503                              `Retryable` with the server's Retry-After, if it sent one
other status, timeout, connection      `Retryable`
=====================================  ===========================================================
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import math
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.records import Record
from controller.sinks import AuthFailed, Misconfigured, Rejected, Retryable, SinkError, SinkPlugin, TooLarge
from controller.sinks.config import SyncConfig, SyncConfigError

if TYPE_CHECKING:
    from influxdb_client.rest import ApiException

MAX_RETRY_AFTER_S = 3600.0  # a server asking for more than an hour is treated as asking for an hour


class InfluxDBConfig(BaseModel):
    """The InfluxDB keys of `[sync]`. The token itself never appears here, only its variable's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="InfluxDB base URL, e.g. https://eu-central-1-1.aws.cloud2.influxdata.com")
    org: str = Field(description='organization name or ID; "-" for InfluxDB 1.8')
    bucket: str = Field(description='bucket; "db/rp" for InfluxDB 1.8')
    token_env: str = Field("LINESENTRY_INFLUX_TOKEN", description="name of the env var holding the token")

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

    def token(self) -> str:
        """The token from the environment; a clear error if the variable is missing."""
        value = os.environ.get(self.token_env)
        if value is None:
            raise SyncConfigError(f"environment variable {self.token_env} (sync.token_env) is not set; "
                                  f"export it with the InfluxDB token (user:password for InfluxDB 1.8)")
        return value

    def check_environment(self) -> None:
        self.token()


def line_protocol(records: Iterable[Record]) -> list[str]:
    """One line per record, built with `Point` at ns precision (a record without fields gives none)."""
    from influxdb_client import Point, WritePrecision

    lines = []
    for r in records:
        p = Point(r.measurement)
        for key, value in r.tags.items():
            p.tag(key, value)
        for key, value in r.fields.items():
            p.field(key, value)
        line = p.time(r.time_ns, WritePrecision.NS).to_line_protocol(WritePrecision.NS)
        if line:
            lines.append(line)
    return lines


class InfluxDBSink:
    """Writes records to one bucket; the HTTP session opens on the first send."""

    name = "influxdb"

    def __init__(self, config: InfluxDBConfig, sync: SyncConfig) -> None:
        self.config = config
        self._token = config.token()
        # The client library is imported here, at start, so that the first send does not stall the
        # event loop for the ~0.3-1 s the import takes; later imports in the methods are lookups.
        importlib.import_module("influxdb_client.client.influxdb_client_async")
        self._timeout_ms = int(sync.timeout_s * 1000)  # the client takes whole ms; 0 would mean none
        self._client: Any = None
        self._write_api: Any = None

    async def send(self, records: Sequence[Record]) -> None:
        # building ~1,000 Points takes tens of ms: off the event loop
        await self.send_line_protocol(await asyncio.to_thread(line_protocol, records))

    async def send_line_protocol(self, lines: Sequence[str]) -> None:
        """Write ready line protocol texts, joined by newlines (also the rows an outbox from before
        records holds, as they are)."""
        from influxdb_client import WritePrecision
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.rest import ApiException

        if self._client is None:
            self._client = InfluxDBClientAsync(url=self.config.url, token=self._token, org=self.config.org,
                                               timeout=self._timeout_ms)
            self._write_api = self._client.write_api()
        try:
            await self._write_api.write(bucket=self.config.bucket, org=self.config.org,
                                        record="\n".join(lines), write_precision=WritePrecision.NS)
        except ApiException as exc:
            raise self._classify(exc) from exc
        except Exception as exc:  # timeouts, aiohttp.ClientError, OSError, anything else from the client
            raise Retryable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def _classify(self, exc: ApiException) -> SinkError:
        status = int(exc.status or 0)
        message = _message(exc)
        if status == 400:
            return Rejected(message, status)
        if status in (401, 403):
            return AuthFailed(f"InfluxDB refused the token (HTTP {status}: {message}); "
                              f"check {self.config.token_env}", status)
        if status == 404:
            return Misconfigured(f"InfluxDB: {message} (check sync.org / sync.bucket)", status)
        if status == 413:
            return TooLarge(message, status)
        return Retryable(message, status, _retry_after(exc) if status in (429, 503) else None)


def _create(config: BaseModel, sync: SyncConfig) -> InfluxDBSink:
    assert isinstance(config, InfluxDBConfig)
    return InfluxDBSink(config, sync)


PLUGIN = SinkPlugin("influxdb", InfluxDBConfig, _create, "InfluxDB 1.8+/2.x/3.x and Cloud, line protocol")


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

"""The toy Driver: one TCP connection, one request line, one answer line."""

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Sequence

import numpy as np

from drivers.base import DriverStats, OnBatch, Quality, ReadingBatch
from drivers.errors import ConnectionLost, CredentialsRejected, DriverError, WriteFailed, WriteRefused
from drivers.polling import poll_at_fixed_rate
from tests.drivers.toy.config import ToyConfig


class ToyDriver:
    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        self.name = config.name
        self.tag_names = [t.name for t in config.tags]
        self.stats = DriverStats()
        self.alive_interval_s = config.poll_interval_s + config.timeout_s
        self._writable = {t.name for t in config.tags if t.writable}
        self._pos = {n: i for i, n in enumerate(self.tag_names)}
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.timeout_s):
                self._io = await asyncio.open_connection(cfg.host, cfg.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"{self.name}: cannot connect to {cfg.endpoint} ({exc})") from exc
        self.stats.sessions_created += 1
        token = os.environ.get(cfg.token_env, None) if cfg.token_env else ""
        if token is None:
            await self.close()
            raise DriverError(f"{self.name}: environment variable {cfg.token_env} (token_env) is not set")
        answer = await self._ask(f"HELLO {token}")
        if answer != "OK":
            await self.close()
            raise CredentialsRejected(f"{self.name}: {cfg.endpoint} refused the token ({answer})")

    async def close(self) -> None:
        io, self._io = self._io, None
        if io is not None:
            io[1].close()
            with contextlib.suppress(Exception):
                await io[1].wait_closed()

    async def _ask(self, line: str) -> str:
        if self._io is None:
            raise ConnectionLost(f"{self.name}: not connected")
        reader, writer = self._io
        try:
            writer.write(line.encode() + b"\n")
            async with asyncio.timeout(self.config.timeout_s):
                await writer.drain()
                answer = await reader.readline()
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"{self.name}: {self.config.endpoint} stopped answering ({exc!r})") from exc
        if not answer:
            raise ConnectionLost(f"{self.name}: {self.config.endpoint} closed the connection")
        return answer.decode().strip()

    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        names = list(self.tag_names if names is None else names)
        t0 = time.perf_counter()
        words = (await self._ask("READ " + " ".join(names))).split()
        self.stats.record_latency(time.perf_counter() - t0)
        self.stats.reads += 1
        values = np.array([math.nan if w == "BAD" else float(w) for w in words[1:]])
        quality = np.where(np.isnan(values), int(Quality.BAD), int(Quality.GOOD)).astype(np.uint8)
        for n, q in zip(names, quality.tolist(), strict=True):
            if q == Quality.BAD:
                self.stats.tag_errors[n] = "the toy server reports BAD"
            else:
                self.stats.tag_errors.pop(n, None)
        if (quality == Quality.GOOD).any():
            self.stats.last_alive = time.monotonic()
        n = len(names)
        return ReadingBatch(index=np.array([self._pos[x] for x in names], dtype=np.int32), values=values,
                            quality=quality, source_ts=np.full(n, np.nan), receive_ts=np.full(n, time.time()))

    async def subscribe(self, on_batch: OnBatch) -> None:
        async def poll() -> None:
            on_batch(await self.read())

        await poll_at_fixed_rate(self.config.poll_interval_s, poll)

    async def write(self, name: str, value: float) -> None:
        if name not in self._writable:
            raise WriteRefused(f"{self.name}: tag {name!r} is not writable (or unknown)")
        answer = await self._ask(f"WRITE {name} {float(value)!r}")
        if answer != "OK":
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}: {name}: {answer}")
        self.stats.writes += 1
        back = await self.read([name])
        if back.values[0] != float(value):
            raise WriteFailed(f"{self.name}: {name}: readback {back.values[0]} is not {float(value)}")

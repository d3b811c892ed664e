"""A fault-injecting HTTP proxy (aiohttp) in front of VictoriaMetrics: the rig's cloud outages.

Modes, switchable at runtime with `set(mode, ...)`, optionally for the next `count` requests only
(then back to pass-through):

- ``pass``: forward to the upstream unchanged.
- ``refuse``: close the listening socket (connection refused) and drop kept-alive connections.
- ``reset``: read the request, then abort the connection without a response (nothing forwarded).
- ``reset_after``: forward to the upstream (it stores the data), then abort without a response:
  the client cannot know it succeeded and will resend.
- ``status``: answer `status` (e.g. 503, 429, 400, 401) with an InfluxDB-style JSON body and
  an optional Retry-After header; nothing forwarded.
- ``slow``: wait `delay` seconds, then forward.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from hil_tests.rig.net import free_port

MODES = ("pass", "refuse", "reset", "reset_after", "status", "slow")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Fault:
    mode: str = "pass"
    status: int = 503
    retry_after: str | None = None
    message: str = "injected fault"
    delay: float = 0.0
    count: int | None = None  # None: until changed


@dataclass
class ProxyStats:
    requests: int = 0
    forwarded: int = 0
    in_flight: int = 0
    by_mode: dict[str, int] = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fault = Fault()
        self.stats = ProxyStats()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> FaultProxy:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        self._session = aiohttp.ClientSession()
        await self._listen()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def set(self, mode: str, *, status: int = 503, retry_after: str | None = None,
                  message: str = "injected fault", delay: float = 0.0, count: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        self.fault = Fault(mode, status, retry_after, message, delay, count)
        if mode == "refuse":
            await self._unlisten()
        else:
            await self._listen()

    async def _listen(self) -> None:
        if self._site is None:
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()

    async def _unlisten(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def _take(self) -> Fault:
        fault = self.fault
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.fault = Fault()
        return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        self.stats.in_flight += 1
        try:
            fault = self._take()
            self.stats.by_mode[fault.mode] = self.stats.by_mode.get(fault.mode, 0) + 1
            body = await request.read()
            if fault.mode in ("refuse", "reset"):
                return self._abort(request)
            if fault.mode == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return web.Response(status=fault.status, headers=headers, content_type="application/json",
                                    text=json.dumps({"code": "injected", "message": fault.message}))
            if fault.mode == "slow":
                await asyncio.sleep(fault.delay)  # the fault itself: a slow server
            response = await self._forward(request, body)
            if fault.mode == "reset_after":
                return self._abort(request)
            return response
        finally:
            self.stats.in_flight -= 1

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body,
                                         headers=headers) as r:
            data = await r.read()
            self.stats.forwarded += 1
            out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP | {"content-encoding"}}
            return web.Response(status=r.status, body=data, headers=out)

    @staticmethod
    def _abort(request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("fault proxy: connection reset")

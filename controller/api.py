"""The local HTTP API (aiohttp), bound to 127.0.0.1 by default.

Read calls are open to anyone who can reach the port; every call that changes
something (ack, shelve, reset, inhibit, model reload) needs the bearer token
from the state directory (`Authorization: Bearer <token>`), else 401.

    GET  /api/v1/status                      drivers, detector, alarms, outbox/sync
    GET  /api/v1/tags                        last value, quality and timestamps per tag
    GET  /api/v1/alarms                      every alarm and its state
    GET  /api/v1/events?since=ID             events newer than ID (JSON)
    GET  /api/v1/events/stream?since=ID      the same as a server-sent event stream
    POST /api/v1/alarms/{name}/ack           {"user": "..."}
    POST /api/v1/alarms/{name}/shelve        {"user": "...", "seconds": 1800}
    POST /api/v1/alarms/{name}/unshelve      {"user": "..."}
    POST /api/v1/alarms/{name}/out-of-service {"user": "...", "enabled": true}
    POST /api/v1/actions/{name}/reset        {"user": "..."}
    POST /api/v1/actions/{name}/inhibit      {"user": "...", "enabled": true}
    POST /api/v1/model/reload                {"user": "...", "path": "optional/other.npz"}
    GET  /metrics                            Prometheus text format

Errors are JSON `{"error": "one line"}` with 400 (bad request), 401, 404
(unknown alarm/action) or 409 (refused in the current state).
"""

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import ClientConnectionResetError, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.events import EventLog

API = "/api/v1"


class Refused(Exception):
    """A valid request the controller refuses in its current state (HTTP 409)."""


class Operations(Protocol):
    """What the API needs from the running controller."""

    events: EventLog
    registry: CollectorRegistry

    def status(self) -> dict: ...
    def tags(self) -> list[dict]: ...
    def alarm_list(self) -> list[dict]: ...
    def ack(self, name: str, user: str) -> None: ...
    def shelve(self, name: str, user: str, seconds: float) -> None: ...
    def unshelve(self, name: str, user: str) -> None: ...
    def set_out_of_service(self, name: str, user: str, enabled: bool) -> None: ...
    def reset_action(self, name: str, user: str) -> None: ...
    def inhibit_action(self, name: str, user: str, enabled: bool) -> None: ...
    async def reload_model(self, user: str, path: str | None) -> dict: ...


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def create_app(ops: Operations, token: str) -> web.Application:
    app = web.Application(middlewares=[_errors])
    r = app.router

    def mutating(handler: Callable[[web.Request, dict], Awaitable[Any]]):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return error(401, "missing or wrong API token: send 'Authorization: Bearer <token>' "
                                  "with the token from the state directory")
            try:
                body = await request.json() if request.can_read_body else {}
            except json.JSONDecodeError:
                return error(400, "request body is not valid JSON")
            if not isinstance(body, dict):
                return error(400, "request body must be a JSON object")
            result = await handler(request, body)
            return web.json_response(result if result is not None else {"ok": True})
        return wrapped

    def user(body: dict) -> str:
        value = body.get("user", "operator")
        if not isinstance(value, str) or not value.strip():
            raise ValueError("'user' must be a non-empty string")
        return value.strip()

    def flag(body: dict, key: str = "enabled") -> bool:
        if not isinstance(body.get(key), bool):
            raise ValueError(f"'{key}' must be true or false")
        return body[key]

    async def status(_: web.Request) -> web.Response:
        return web.json_response(ops.status())

    async def tags(_: web.Request) -> web.Response:
        return web.json_response(ops.tags())

    async def alarms(_: web.Request) -> web.Response:
        return web.json_response(ops.alarm_list())

    async def events(request: web.Request) -> web.Response:
        return web.json_response(ops.events.since(_since(request)))

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        last = _since(request)
        try:
            while True:
                batch = await ops.events.wait_newer(last, timeout=15.0)
                if not batch:
                    await response.write(b": keep-alive\n\n")
                    continue
                for event in batch:
                    await response.write(f"id: {event['id']}\ndata: {json.dumps(event)}\n\n".encode())
                    last = event["id"]
        except (ConnectionResetError, ClientConnectionResetError):
            return response  # the client went away: a normal end of a stream

    async def ack(request: web.Request, body: dict) -> None:
        ops.ack(request.match_info["name"], user(body))

    async def shelve(request: web.Request, body: dict) -> None:
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise ValueError("'seconds' must be a positive number")
        ops.shelve(request.match_info["name"], user(body), float(seconds))

    async def unshelve(request: web.Request, body: dict) -> None:
        ops.unshelve(request.match_info["name"], user(body))

    async def out_of_service(request: web.Request, body: dict) -> None:
        ops.set_out_of_service(request.match_info["name"], user(body), flag(body))

    async def reset(request: web.Request, body: dict) -> None:
        ops.reset_action(request.match_info["name"], user(body))

    async def inhibit(request: web.Request, body: dict) -> None:
        ops.inhibit_action(request.match_info["name"], user(body), flag(body))

    async def reload_model(_: web.Request, body: dict) -> dict:
        path = body.get("path")
        if path is not None and not isinstance(path, str):
            raise ValueError("'path' must be a string")
        return await ops.reload_model(user(body), path)

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, ops.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    r.add_get(f"{API}/status", status)
    r.add_get(f"{API}/tags", tags)
    r.add_get(f"{API}/alarms", alarms)
    r.add_get(f"{API}/events", events)
    r.add_get(f"{API}/events/stream", stream)
    r.add_post(f"{API}/alarms/{{name}}/ack", mutating(ack))
    r.add_post(f"{API}/alarms/{{name}}/shelve", mutating(shelve))
    r.add_post(f"{API}/alarms/{{name}}/unshelve", mutating(unshelve))
    r.add_post(f"{API}/alarms/{{name}}/out-of-service", mutating(out_of_service))
    r.add_post(f"{API}/actions/{{name}}/reset", mutating(reset))
    r.add_post(f"{API}/actions/{{name}}/inhibit", mutating(inhibit))
    r.add_post(f"{API}/model/reload", mutating(reload_model))
    r.add_get("/metrics", metrics)
    return app


def _since(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("since", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "'since' must be an integer"}),
                                 content_type="application/json") from None


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Operation errors become one-line JSON errors with the right status, never a traceback."""
    try:
        return await handler(request)
    except LookupError as exc:
        return error(404, str(exc.args[0]) if exc.args else "not found")
    except ValueError as exc:
        return error(400, str(exc))
    except Refused as exc:
        return error(409, str(exc))

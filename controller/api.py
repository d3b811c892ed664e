"""The local HTTP API (aiohttp), bound to 127.0.0.1 by default, and the operator's web HMI (GET /).

Roles (controller.roles): read calls are the viewer's, open to anyone who can reach a loopback
port; ack / shelve / unshelve need the operator role, reset / inhibit / out of service / model
reload the engineer role. A caller proves a role with that role's bearer token from the state
directory (`Authorization: Bearer <token>`: api-read-token, api-token, api-engineer-token) or with
an HMI session (controller.hmi.access): no valid credentials is 401, a role too low is 403.

    GET  /                                   the HMI page (controller/hmi/static/)
    GET  /api/v1/session                     this browser's session: user, role, CSRF token
    POST /api/v1/session/login               {"user": "...", "token": "<a role's token>"}: sets the cookie
    POST /api/v1/session/logout              ends this browser's session

    GET  /api/v1/status                      drivers, detector, alarms, outbox/sync
    GET  /api/v1/tags                        last value (or text), quality and timestamps per tag
    GET  /api/v1/alarms                      every alarm and its state
    GET  /api/v1/events?since=ID             events newer than ID (JSON)
    GET  /api/v1/events/stream?since=ID      the same as a server-sent event stream
    POST /api/v1/alarms/{name}/ack           {"user": "..."}
    POST /api/v1/alarms/{name}/shelve        {"user": "...", "seconds": 1800, "reason": "..."}
    POST /api/v1/alarms/{name}/unshelve      {"user": "..."}
    POST /api/v1/alarms/{name}/out-of-service {"user": "...", "enabled": true, "reason": "..."}
    POST /api/v1/actions/{name}/reset        {"user": "...", "reason": "..."}
    POST /api/v1/actions/{name}/inhibit      {"user": "...", "enabled": true, "reason": "..."}

Operator requests answer 200 only once the change is on disk (state file fsync'd), with
`{"ok": true, "message": "...", "disables": [actions]}`: the message says what the request
disables ("shelving line_anomaly disables action stop_line (...)"). A `reason` is required to
shelve, take out of service, inhibit and reset (400 without); an alarm with `shelvable = false`
cannot be shelved or taken out of service (409).
    POST /api/v1/model/reload                {"user": "...", "path": "optional/other.npz"}
    GET  /metrics                            Prometheus text format
    GET  /healthz                            alive (200) or not (503): housekeeping rounds run (no auth)
    GET  /readyz                             ready (200) or not (503): started, every PLC delivers (no auth)

The probes (controller.health, docs/fleet.md) need no credentials at any bind (a kubelet has none),
answer from counters without waiting, hold no tag value, and are served on the operator
reserve's connections too (then closed) and over the cap (_Busy), so a flood of readers, or a
client holding every connection, does not fail a liveness probe.

Errors are JSON `{"error": "one line"}` with 400 (bad request), 401 (no valid token or session),
403 (a role too low, a session's change without its CSRF token, a cross-site request), 404
(unknown alarm/action), 409 (refused in the current state), 413 (body too large), 415 (a login
or a session's change whose body is not declared JSON), 421 (Host header not a name of this
controller), 422 (a model reload refused: the artifact does not load or does not fit the line)
or 503 (connection, event-stream or session limit). The status
of an operation's error is its `controller.errors.LinesentryError.status`.

Hardening (docs/operations.md, security): bound beyond loopback, reads need a token
too (the viewer's `api-read-token` or a higher role's token, or an HMI login). The Host header
must be an IP literal, a loopback name, this host's name, `api_host` or a name in
`api_allowed_hosts` (DNS rebinding). Every API response is valid JSON: non-finite
numbers become null. `ApiServer` caps the connections (a connection over the cap
gets a 503 and is closed at once; a probe there still gets its answer, _Busy), closes
idle and slow-header connections after
`idle_timeout_s`, and sizes the cap to the open-file limit minus a reserve for
PLC sessions, the outbox and the process, so the API can never take the
descriptors the line needs. The last connection slots are an operator reserve: a
connection accepted there may only POST with the operator (or engineer) token or from an HMI
session of those roles (anything else gets a 503 and is closed; silent ones close after
`RESERVE_IDLE_S`), so ack and reset get through while readers flood the API. At most `max_streams` event
streams are open at once (503 beyond), so streams cannot take the slots either.
"""

import asyncio
import errno
import ipaddress
import json
import logging
import math
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import ClientConnectionResetError, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.config import MAX_SHELVE_S
from controller.errors import BadRequest, LinesentryError
from controller.events import EventLog
from controller.health import Probes
from controller.hmi.access import Access, Caller, Unauthorized, cookie_name, refuse_other_sites, require_json
from controller.hmi.page import add_page
from controller.hmi.sessions import Session, SessionStore
from controller.roles import Role, required_role

log = logging.getLogger(__name__)

API = "/api/v1"
MAX_BODY_BYTES = 64 << 10  # operator bodies are a few dozen bytes
MAX_BODY_DEPTH = 8  # they are flat objects
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# Descriptors kept out of the API's reach: the process itself (stdio, epoll, listening sockets,
# SQLite, logs, certificates) and, per PLC, its session and reconnects; plus the outbox and sync.
RESERVED_FDS_BASE = 64
RESERVED_FDS_PER_PLC = 8
RESERVED_FDS_SYNC = 32
MIN_API_CONNECTIONS = 4
REFUSAL_LOG_INTERVAL_S = 60.0
MAX_EVENT_STREAMS = 16  # HMIs and dashboards; each holds a connection for as long as it is open
STREAM_KEEPALIVE_S = 15.0  # a comment line on a quiet stream, so proxies and browsers keep it
STREAM_CHECK_S = 1.0  # a stream ends this soon after its client went away or its session ended
OPERATOR_RESERVE = 8  # connection slots (out of the cap) only operator POSTs may use
RESERVE_IDLE_S = 2.0  # a reserve connection that sends no request is closed after this
MAX_LOGIN_NAME = 64  # a user name (HMI login or a bearer request's 'user'): recorded with every change
MAX_REASON = 500  # an operator's reason, kept in the journal with the change
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
PROBES = web.AppKey("probes", Probes)  # also answered over the cap (_Busy)
BUSY_WAIT_S = 1.0  # an over-cap connection's time to send its request head (a probe sends it at once)
BUSY_WAITING = 16  # over-cap connections waiting for their head at once; a newer one closes the oldest
MAX_PROBE_HEAD = 4096


class Operations(Protocol):
    """What the API needs from the running controller."""

    events: EventLog
    registry: CollectorRegistry

    def status(self) -> dict: ...
    def tags(self) -> list[dict]: ...
    def alarm_list(self) -> list[dict]: ...
    # `role`: the acting role's value (controller.roles.Role), recorded with the change.
    def ack(self, name: str, user: str, reason: str = "", *, role: str = "operator") -> dict: ...
    def shelve(self, name: str, user: str, seconds: float, reason: str, *,
               role: str = "operator") -> dict: ...
    def unshelve(self, name: str, user: str, reason: str = "", *, role: str = "operator") -> dict: ...
    def set_out_of_service(self, name: str, user: str, enabled: bool, reason: str = "", *,
                           role: str = "operator") -> dict: ...
    def reset_action(self, name: str, user: str, reason: str, *, role: str = "operator") -> dict: ...
    def inhibit_action(self, name: str, user: str, enabled: bool, reason: str = "", *,
                       role: str = "operator") -> dict: ...
    async def persist(self) -> None: ...  # the operator state is on disk when this returns
    async def reload_model(self, user: str, path: str | None, *, role: str = "operator") -> dict: ...


def finite(obj: Any) -> Any:
    """`obj` with every NaN/inf float replaced by None (JSON has no such numbers: JSON.parse fails).

    A tag row whose GOOD value is not finite says so in its quality ('non_finite'); other
    qualities already say why there is no usable value.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {k: finite(v) for k, v in obj.items()}
        value = obj.get("value")
        if isinstance(value, float) and not math.isfinite(value) and out.get("quality") == "good":
            out["quality"] = "non_finite"
        return out
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalar
        return finite(obj.item())
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON (allow_nan=False after `finite`): what every response and SSE event uses."""
    return json.dumps(finite(obj), allow_nan=False, default=str)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def _depth(text: str) -> int:
    """Deepest [ / { nesting of a JSON text, counted without parsing (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


async def _json_body(request: web.Request, timeout_s: float) -> dict:
    """The request body as a flat JSON object; BadRequest (400) / HTTP errors otherwise."""
    if not request.can_read_body:
        return {}
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=dumps({"error": "request body too slow"}),
                                     content_type="application/json") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON") from None
    if _depth(text) > MAX_BODY_DEPTH:
        raise BadRequest(f"request body is nested more than {MAX_BODY_DEPTH} levels; send a flat JSON object")
    try:
        body = json.loads(text, parse_constant=_no_constant) if text.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def printable(text: str, key: str, limit: int) -> str:
    """`text` if it is printable and at most `limit` characters: the journal keeps it and terminals
    print it (`linesentry events`), so no control character (an escape sequence) gets in."""
    if len(text) > limit or not text.isprintable():
        raise BadRequest(f"'{key}' must be printable text of at most {limit} characters (no line breaks "
                         "or control characters)")
    return text


def _no_constant(name: str) -> Any:
    raise BadRequest(f"request body contains {name}, which is not JSON")


def create_app(ops: Operations, token: str, *, read_token: str | None = None,
               engineer_token: str | None = None, sessions: SessionStore | None = None,
               reads_need_token: bool = False, allowed_hosts: set[str] | frozenset[str] = frozenset(),
               body_timeout_s: float = 15.0, max_streams: int = MAX_EVENT_STREAMS,
               probes: Probes | None = None) -> web.Application:
    """The API and the HMI. `token`, `read_token`, `engineer_token`: the operator's, the viewer's
    and the engineer's bearer tokens (a role without one is reached only by a higher role);
    `sessions`: the HMI's browser sessions; `allowed_hosts`: names accepted in the Host header
    besides IP literals, loopback names and this host's name; reads need a token (or a login) if
    `reads_need_token`; at most `max_streams` event streams at once; `probes`: the answers of
    /healthz and /readyz (without it, they are not served)."""
    names = {n.lower().rstrip(".") for n in allowed_hosts} | LOOPBACK_NAMES | {socket.gethostname().lower()}
    access = Access({Role.VIEWER: read_token, Role.OPERATOR: token, Role.ENGINEER: engineer_token},
                    SessionStore() if sessions is None else sessions, reads_need_token=reads_need_token)
    app = web.Application(middlewares=[_reserve_check(access), _host_check(frozenset(names)), _errors],
                          client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(_harden)
    streams = 0
    r = app.router

    def reading(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            access.require(request, Role.VIEWER)
            return await handler(request)
        return wrapped

    def changing(path: str, handler: Callable[[web.Request, dict, dict], Awaitable[Any]]) -> None:
        """POST `path` with the role the route table (controller.roles) gives it; `handler` gets the
        body and who acts: {"user": ..., "role": ...} (a session's user, else the body's 'user')."""
        needed = required_role("POST", path)

        async def wrapped(request: web.Request) -> web.StreamResponse:
            caller = access.require(request, needed)
            body = await _json_body(request, body_timeout_s)
            result = await handler(request, body, acting(caller, body))
            return json_response(result if result is not None else {"ok": True})
        r.add_post(path, wrapped)

    def acting(caller: Caller, body: dict) -> dict:
        assert caller.role is not None  # access.require identified the caller of every change
        return {"user": caller.user or user(body), "role": caller.role.value}

    def user(body: dict, default: str | None = "operator") -> str:
        value = body.get("user", default)
        if not isinstance(value, str) or not value.strip():
            raise BadRequest("'user' must be a non-empty string")
        return printable(value.strip(), "user", MAX_LOGIN_NAME)

    def flag(body: dict, key: str = "enabled") -> bool:
        if not isinstance(body.get(key), bool):
            raise BadRequest(f"'{key}' must be true or false")
        return body[key]

    async def status(_: web.Request) -> web.Response:
        return json_response(ops.status())

    async def tags(_: web.Request) -> web.Response:
        return json_response(ops.tags())

    async def alarms(_: web.Request) -> web.Response:
        return json_response(ops.alarm_list())

    async def events(request: web.Request) -> web.Response:
        return json_response(ops.events.since(_since(request)))

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        caller = access.require(request, Role.VIEWER)
        if streams >= max_streams:
            refusal = error(503, f"event stream limit ({max_streams}) reached: close another stream, or "
                                 "poll /api/v1/events?since=ID")
            refusal.force_close()  # a refused stream client reconnects: its slot is freed now
            return refusal
        last = _since(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        streams += 1
        try:
            await response.prepare(request)
            quiet_since = time.monotonic()
            if request.method == "HEAD":
                return response  # the headers only: a HEAD is never written to, so it would never end
            while True:
                batch = await ops.events.wait_newer(last, timeout=STREAM_CHECK_S)
                if gone(request) or not still_allowed(caller):
                    break
                if not batch:
                    if time.monotonic() - quiet_since >= STREAM_KEEPALIVE_S:
                        await response.write(b": keep-alive\n\n")
                        quiet_since = time.monotonic()
                    continue
                quiet_since = time.monotonic()
                for event in batch:
                    await response.write(f"id: {event['id']}\ndata: {dumps(event)}\n\n".encode())
                    last = event["id"]
        except (ConnectionResetError, ClientConnectionResetError):
            return response  # the client went away: a normal end of a stream
        finally:
            streams -= 1
        return response  # the client left, or the session it was opened with logged out or expired

    def gone(request: web.Request) -> bool:
        """The client closed the connection (a quiet stream would learn it only at the next write)."""
        return request.transport is None or request.transport.is_closing()

    def still_allowed(caller: Caller) -> bool:
        """A stream opened with a session lives only as long as the session (logout, expiry)."""
        return caller.session is None or access.sessions.get(caller.session.id) is not None

    def reason(body: dict) -> str:
        value = body.get("reason", "")
        if not isinstance(value, str):
            raise BadRequest("'reason' must be a string")
        return printable(value.strip(), "reason", MAX_REASON)

    async def durable(answer: dict) -> dict:
        await ops.persist()  # 200 only once the change is on disk: it survives a kill -9
        return answer

    async def ack(request: web.Request, body: dict, who: dict) -> dict:
        return await durable(ops.ack(request.match_info["name"], who["user"], reason(body), role=who["role"]))

    async def shelve(request: web.Request, body: dict, who: dict) -> dict:
        seconds = body.get("seconds")  # compared before float(): 10**400 is a valid JSON int
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not 0 < seconds <= MAX_SHELVE_S:
            raise BadRequest(f"'seconds' must be a positive number of seconds, at most {MAX_SHELVE_S:g}")
        return await durable(ops.shelve(request.match_info["name"], who["user"], float(seconds), reason(body),
                                        role=who["role"]))

    async def unshelve(request: web.Request, body: dict, who: dict) -> dict:
        return await durable(ops.unshelve(request.match_info["name"], who["user"], reason(body),
                                          role=who["role"]))

    async def out_of_service(request: web.Request, body: dict, who: dict) -> dict:
        return await durable(ops.set_out_of_service(request.match_info["name"], who["user"], flag(body),
                                                    reason(body), role=who["role"]))

    async def reset(request: web.Request, body: dict, who: dict) -> dict:
        return await durable(ops.reset_action(request.match_info["name"], who["user"], reason(body),
                                              role=who["role"]))

    async def inhibit(request: web.Request, body: dict, who: dict) -> dict:
        return await durable(ops.inhibit_action(request.match_info["name"], who["user"], flag(body),
                                                reason(body), role=who["role"]))

    async def reload_model(_: web.Request, body: dict, who: dict) -> dict:
        path = body.get("path")
        if path is not None and not isinstance(path, str):
            raise BadRequest("'path' must be a string")
        return await ops.reload_model(who["user"], path, role=who["role"])

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, ops.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def session_view(session: Session | None) -> web.Response:
        """What the page needs to know of its session; never cached (it holds the CSRF token)."""
        view = {"user": None, "role": None, "csrf": None, "expires_in_s": None,
                "reads_need_login": reads_need_token}
        if session is not None:
            view.update(user=session.user, role=session.role.value, csrf=session.csrf,
                        expires_in_s=access.sessions.remaining_s(session))
        return json_response(view)  # no-store, like every API answer (_harden)

    async def session(request: web.Request) -> web.Response:
        return session_view(access.sessions.get(request.cookies.get(cookie_name(request))))

    async def login(request: web.Request) -> web.Response:
        refuse_other_sites(request)  # no login planted by another site's page
        require_json(request)
        body = await _json_body(request, body_timeout_s)
        given = body.get("token")
        if not isinstance(given, str) or not given.strip():
            raise BadRequest("'token' must be the token of a role (from the state directory)")
        role = access.role_of(given.strip())
        if role is None:
            raise Unauthorized("wrong token: log in with the contents of api-read-token, api-token or "
                               "api-engineer-token from the state directory")
        name = user(body, default=None)
        previous = request.cookies.get(cookie_name(request))
        if previous:  # a new login ends this browser's earlier session: one cookie, one session
            access.sessions.end(previous)
        opened = access.sessions.create(name, role)
        log.info("HMI login: %s as %s", opened.user, role.value)
        response = session_view(opened)
        response.set_cookie(cookie_name(request), opened.id, path="/",
                            max_age=int(access.sessions.lifetime_s), httponly=True, samesite="Strict",
                            secure=over_tls(request))
        return response

    async def logout(request: web.Request) -> web.Response:
        caller = access.require(request, Role.VIEWER)  # a session's logout needs its CSRF token too
        if caller.session is not None:
            access.sessions.end(caller.session.id)
        response = session_view(None)
        response.del_cookie(cookie_name(request), path="/")
        return response

    def probe(answer: Callable[[], tuple[bool, dict]]):
        async def handler(_: web.Request) -> web.Response:
            ok, body = answer()
            return json_response(body, status=200 if ok else 503)
        return handler

    add_page(r)
    if probes is not None:
        app[PROBES] = probes
        r.add_get("/healthz", probe(probes.health))
        r.add_get("/readyz", probe(probes.readiness))
    r.add_get(f"{API}/session", session)
    r.add_post(f"{API}/session/login", login)
    r.add_post(f"{API}/session/logout", logout)
    r.add_get(f"{API}/status", reading(status))
    r.add_get(f"{API}/tags", reading(tags))
    r.add_get(f"{API}/alarms", reading(alarms))
    r.add_get(f"{API}/events", reading(events))
    r.add_get(f"{API}/events/stream", stream)
    changing(f"{API}/alarms/{{name}}/ack", ack)
    changing(f"{API}/alarms/{{name}}/shelve", shelve)
    changing(f"{API}/alarms/{{name}}/unshelve", unshelve)
    changing(f"{API}/alarms/{{name}}/out-of-service", out_of_service)
    changing(f"{API}/actions/{{name}}/reset", reset)
    changing(f"{API}/actions/{{name}}/inhibit", inhibit)
    changing(f"{API}/model/reload", reload_model)
    r.add_get("/metrics", reading(metrics))
    return app


# Every answer but the page's (controller.hmi.page sets its own): never run as a page, never
# framed, never kept by a browser or a proxy (reads beyond loopback need a login: the data is the
# logged-in user's, not for the next one at that browser).
NOT_A_PAGE = {"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
              "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


async def _harden(_: web.Request, response: web.StreamResponse) -> None:
    for header, value in NOT_A_PAGE.items():
        response.headers.setdefault(header, value)


def _since(request: web.Request) -> int:
    try:
        return max(0, int(request.query.get("since", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text=dumps({"error": "'since' must be an integer"}),
                                 content_type="application/json") from None


def over_tls(request: web.Request) -> bool:
    """The browser reached us over TLS: ours, or a TLS proxy's in front (its Origin is https://,
    which refuse_other_sites checked names this host). The session cookie is Secure then."""
    return request.secure or request.headers.get("Origin", "").lower().startswith("https://")


def host_of(header: str) -> str:
    """'Example.com:8470' -> 'example.com'; '[::1]:8470' -> '::1'."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return (h.rsplit(":", 1)[0] if h.count(":") == 1 else h).rstrip(".")


def _host_check(names: frozenset[str]):
    """Refuse a Host that is not ours: a DNS-rebinding page in a browser on this host sends its
    own (attacker's) name. IP literals cannot be rebound, so they always pass."""

    @web.middleware
    async def check(request: web.Request, handler) -> web.StreamResponse:
        host = host_of(request.headers.get("Host", ""))
        try:
            ipaddress.ip_address(host)
            return await handler(request)
        except ValueError:
            pass
        if host in names:
            return await handler(request)
        return error(421, f"Host {host!r} is not a name of this controller: add it to [controller] "
                          "api_allowed_hosts if it is one")
    return check


def _reserve_check(access: Access):
    """On a connection in the operator reserve (ApiServer), only a POST with the operator's (or the
    engineer's) token, or from an HMI session of those roles, is served, and the probes (then closed)."""

    def operator_post(request: web.Request) -> bool:
        role = access.known_role(request) if request.method == "POST" else None
        return role is not None and role.allows(Role.OPERATOR)

    @web.middleware
    async def check(request: web.Request, handler) -> web.StreamResponse:
        if not getattr(request.protocol, "reserve", False):
            return await handler(request)
        if request.method in ("GET", "HEAD") and request.path in PROBE_PATHS:
            response = await handler(request)
            response.force_close()  # a probe's answer frees the reserve slot at once
            return response
        if not operator_post(request):
            response = error(503, "API connection limit reached: the remaining connections are kept for "
                                  "operator commands (POST with the operator's or the engineer's token, or "
                                  "from an HMI session of those roles)")
            response.force_close()  # frees the reserve slot
            return response
        return await handler(request)
    return check


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Operation errors become one-line JSON errors with their status, never a traceback; anything
    else is a bug: a 500 and one log line."""
    try:
        return await handler(request)
    except LinesentryError as exc:  # the error's own status: 400, 404, 409, 422, 502
        return error(exc.status, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large (at most {MAX_BODY_BYTES} bytes)")
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug, not the client's fault: one line in the log, a 500 to the client
        log.error("API %s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc)
        log.debug("API failure detail", exc_info=True)
        return error(500, f"internal error: {type(exc).__name__}")


# ------------------------------------------------------------------ the server and its limits

def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def reserved_fds(plcs: int, sync: bool) -> int:
    """Descriptors the API must leave free for the process, the PLC sessions and the outbox."""
    return RESERVED_FDS_BASE + RESERVED_FDS_PER_PLC * plcs + (RESERVED_FDS_SYNC if sync else 0)


def _fds_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return RESERVED_FDS_BASE


def connection_budget(wanted: int, reserved: int) -> tuple[int, int]:
    """(API connection cap, soft open-file limit): `wanted`, lowered to what the limit leaves."""
    soft = raise_open_file_limit()
    room = soft - _fds_in_use() - reserved if soft != resource.RLIM_INFINITY else wanted
    cap = min(wanted, room)
    if cap < MIN_API_CONNECTIONS:
        raise OSError(f"the open-file limit ({soft}) leaves room for only {max(room, 0)} API connections "
                      f"after reserving {reserved} descriptors for PLC sessions, the outbox and the "
                      "process: raise it (LimitNOFILE= in the systemd unit, ulimit -n)")
    return cap, soft


_BUSY_BODY = b'{"error": "API connection limit reached"}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _Busy(asyncio.Protocol):
    """A connection over the cap: a 503, then closed (its descriptor is freed). A probe (GET or HEAD
    /healthz or /readyz with an IP literal as Host: the kubelet's, the image's HEALTHCHECK) gets its
    real answer instead, so a client holding every slot cannot get the pod restarted by its
    liveness probe. It waits BUSY_WAIT_S at most for its request head, and at most BUSY_WAITING
    wait at once: a newer one closes the oldest, so silent connections cannot crowd a probe out
    (a probe's head arrives with its connection)."""

    def __init__(self, probes: Probes | None, waiting: "dict[_Busy, None]") -> None:
        self._probes, self._waiting = probes, waiting
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._probes is None:
            return self.refuse()
        if len(self._waiting) >= BUSY_WAITING:
            next(iter(self._waiting)).refuse()
        self._waiting[self] = None
        self._timer = asyncio.get_running_loop().call_later(BUSY_WAIT_S, self.refuse)

    def data_received(self, data: bytes) -> None:
        self._head += data
        if b"\r\n\r\n" in self._head or len(self._head) > MAX_PROBE_HEAD:
            self._answer(self._probe_answer() or _BUSY)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def refuse(self) -> None:
        self._answer(_BUSY)

    def _answer(self, response: bytes) -> None:
        self._done()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response)
            self._transport.close()

    def _done(self) -> None:
        self._waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()

    def _probe_answer(self) -> bytes | None:
        assert self._probes is not None
        lines = self._head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        request = lines[0].split()
        host = next((line.split(":", 1)[1] for line in lines[1:] if line.lower().startswith("host:")), "")
        if len(request) != 3 or request[0] not in ("GET", "HEAD"):
            return None
        path = request[1].split("?", 1)[0]
        try:
            ipaddress.ip_address(host_of(host))
        except ValueError:
            return None  # a name: only the app checks those (DNS rebinding)
        if path not in PROBE_PATHS:
            return None
        ok, body = (self._probes.health if path == "/healthz" else self._probes.readiness)()
        text = dumps(body).encode() if request[0] == "GET" else b""
        headers = "".join(f"{k}: {v}\r\n" for k, v in NOT_A_PAGE.items())
        return (f"HTTP/1.1 {'200 OK' if ok else '503 Service Unavailable'}\r\nContent-Type: application/json"
                f"\r\n{headers}Connection: close\r\nContent-Length: {len(text)}\r\n\r\n").encode() + text


class _Counted(RequestHandler):
    """aiohttp's protocol, counted so the cap holds even within one accept burst."""

    def __init__(self, guard: "ApiServer", reserve: bool, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard
        self.reserve = reserve  # accepted in the operator reserve: operator POSTs only (_reserve_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._guard._open -= 1


class ApiServer:
    """The API's listening socket with a connection cap, an operator reserve within it, and
    idle/header timeouts."""

    def __init__(self, app: web.Application, host: str, port: int, *, max_connections: int = 128,
                 idle_timeout_s: float = 15.0, reserved: int = RESERVED_FDS_BASE) -> None:
        self.app, self.host, self.port = app, host, port
        self.wanted, self.idle_timeout_s, self.reserved = max_connections, idle_timeout_s, reserved
        self.max_connections = max_connections
        self.operator_reserve = 0  # set at start: the last slots of the cap
        self.refused = 0  # connections turned away at the cap, since start
        self._open = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._last_refusal_log = -math.inf
        self._refused_since_log = 0
        self._busy_waiting: dict[_Busy, None] = {}  # over-cap connections waiting for their head

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self) -> None:
        # the over-cap connections waiting for their head (_Busy) take descriptors too
        self.max_connections, soft = connection_budget(self.wanted, self.reserved + BUSY_WAITING)
        self.operator_reserve = max(1, min(OPERATOR_RESERVE, self.max_connections // 4))
        general = self.max_connections - self.operator_reserve
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.idle_timeout_s,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        manager = self._runner.server

        def protocol() -> asyncio.Protocol:
            if self._open >= self.max_connections:
                self._refuse()
                return _Busy(self.app.get(PROBES), self._busy_waiting)
            reserve = self._open >= general
            self._open += 1
            idle_s = min(RESERVE_IDLE_S, self.idle_timeout_s) if reserve else self.idle_timeout_s
            return _Counted(self, reserve, manager, loop=loop, keepalive_timeout=idle_s, access_log=None)

        try:
            self._server = await loop.create_server(protocol, self.host, self.port, reuse_address=True,
                                                    backlog=min(self.max_connections, 128))
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(_listen_error(self.host, self.port, exc)) from None
        self.port = self._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        log.info("API on %s:%d: at most %d connections (the last %d for operator commands), idle/header "
                 "timeout %g s (open-file limit %d, %d kept for PLC sessions, the outbox and the process)",
                 self.host, self.port, self.max_connections, self.operator_reserve, self.idle_timeout_s,
                 soft, self.reserved)

    def _refuse(self) -> None:
        self.refused += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            log.warning("API connection limit (%d) reached: refused %d connection(s) in the last %g s "
                        "(PLC sessions are not affected)", self.max_connections, self._refused_since_log,
                        REFUSAL_LOG_INTERVAL_S)
            self._last_refusal_log, self._refused_since_log = now, 0

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the open connections
        if self._server is not None:
            await self._server.wait_closed()


def _listen_error(host: str, port: int, exc: OSError) -> str:
    """One line naming the key to change."""
    if isinstance(exc, socket.gaierror):
        return (f"[controller] api_host {host!r} cannot be resolved ({exc.strerror}): set it to an IP "
                "address of this host, or 127.0.0.1 for local access only")
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the port is in use; set [controller] api_port to a free port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {host}:{port}: {host!r} is not an address of this host; set "
                "[controller] api_host to one of its addresses, or 127.0.0.1")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges); "
                "set [controller] api_port to 1024 or above")
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}): check [controller] api_host / api_port"

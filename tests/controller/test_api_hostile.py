"""The API against hostile clients, over real sockets: bad bodies, non-finite numbers, foreign Host
headers, missing read tokens, idle and slow connections, more connections than the cap, event-stream
floods against the operator reserve."""

import asyncio
import contextlib
import json
import logging
import math
import socket
import time

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from controller.api import RESERVE_IDLE_S, ApiServer, connection_budget, create_app
from controller.events import EventLog
from hil_tests.rig.net import wait_for

TOKEN = "operator-token-0123456789abcdefghijklmnop"
READ = "read-only-token-0123456789abcdefghijklmnop"
ENGINEER = "engineer-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENGINEER_AUTH = {"Authorization": f"Bearer {ENGINEER}"}


class Ops:
    """Only what these tests reach: reads with non-finite numbers and a few mutating calls."""

    def __init__(self) -> None:
        self.events = EventLog()
        self.registry = CollectorRegistry()
        self.acks: list[str] = []

    def status(self) -> dict:
        return {"detector": {"score": math.nan, "threshold": math.inf, "low": -math.inf, "ok": 1.5}}

    def tags(self) -> list[dict]:
        return [{"tag": "a", "value": math.inf, "quality": "good"},
                {"tag": "b", "value": math.nan, "quality": "comm_lost"},
                {"tag": "c", "value": 2.0, "quality": "good"}]

    def alarm_list(self) -> list[dict]:
        return []

    def ack(self, name: str, user: str, *_: object, role: str = "operator") -> dict:
        self.acks.append(user)
        return {"ok": True}

    def shelve(self, name: str, user: str, seconds: float, reason: str, *, role: str = "operator") -> dict:
        self.acks.append(f"shelve {seconds:g}")
        return {"ok": True}

    def reset_action(self, name: str, user: str, reason: str, *, role: str = "operator") -> dict:
        self.acks.append(f"reset {name}")
        return {"ok": True}

    async def persist(self) -> None:
        pass

    async def reload_model(self, user: str, path: str | None, *, role: str = "operator") -> dict:
        self.acks.append(user)
        return {"model": "model.npz"}


def strict_json(text: str):
    """JSON.parse semantics: NaN / Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def serve(**kwargs) -> tuple[ApiServer, Ops]:
    ops = Ops()
    app_keys = ("read_token", "reads_need_token", "allowed_hosts", "max_streams")
    app_kw = {k: kwargs.pop(k) for k in app_keys if k in kwargs}
    server = ApiServer(create_app(ops, TOKEN, engineer_token=ENGINEER, **app_kw), "127.0.0.1", 0, **kwargs)
    await server.start()
    return server, ops


@pytest.fixture
async def api():
    server, ops = await serve()
    server.ops = ops
    yield server
    await server.stop()


def url(server: ApiServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def test_non_finite_numbers_become_null_and_every_response_is_valid_json(api):
    async with aiohttp.ClientSession() as http:
        status = strict_json(await (await http.get(url(api, "/api/v1/status"))).text())
        assert status["detector"] == {"score": None, "threshold": None, "low": None, "ok": 1.5}
        tags = strict_json(await (await http.get(url(api, "/api/v1/tags"))).text())
        assert tags[0] == {"tag": "a", "value": None, "quality": "non_finite"}  # says why
        assert tags[1] == {"tag": "b", "value": None, "quality": "comm_lost"}
        assert tags[2]["value"] == 2.0 and tags[2]["quality"] == "good"
        api.ops.events.add("alarm", "x", "NaN in an event", value=math.nan)
        r = await http.get(url(api, "/api/v1/events/stream?since=0"))
        line = b""
        while not line.startswith(b"data: "):
            line = await asyncio.wait_for(r.content.readline(), 5.0)
        assert strict_json(line[6:].decode())["value"] is None
        r.close()


@pytest.mark.parametrize("body, status, text", [
    ("[" * 100_000 + "]" * 100_000, 413, "too large"),  # the 100k-deep body
    ('{"a":' * 6_000 + "1" + "}" * 6_000, 400, "nested"),  # deep but under the size cap
    ('{"user": NaN}', 400, "NaN"),
    ('{"user": Infinity}', 400, "Infinity"),
    ("[1, 2]", 400, "JSON object"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    ("{not json", 400, "not valid JSON"),
])
async def test_hostile_bodies_are_one_line_errors_and_no_traceback(api, caplog, body, status, text):
    async with aiohttp.ClientSession() as http:
        with caplog.at_level(logging.DEBUG):
            data = body.encode() if isinstance(body, str) else body
            r = await http.post(url(api, "/api/v1/alarms/x/ack"), data=data, headers=AUTH)
            message = strict_json(await r.text())["error"]
    assert r.status == status, message
    assert text in message and "\n" not in message
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert api.ops.acks == []


@pytest.mark.parametrize("seconds", [10**400, -10**400, 1e308, 0, -1, 604_801, True, "60", None])
async def test_out_of_range_numbers_are_a_400_not_a_500(api, caplog, seconds):
    """10**400 is a valid JSON integer; float() of it overflows."""
    async with aiohttp.ClientSession() as http:
        with caplog.at_level(logging.DEBUG):
            body = json.dumps({"user": "ann", "seconds": seconds, "reason": "maintenance"})
            r = await http.post(url(api, "/api/v1/alarms/x/shelve"), data=body, headers=AUTH)
            message = strict_json(await r.text())["error"]
    assert r.status == 400, message
    assert "'seconds' must be" in message and "604800" in message and "\n" not in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR] and api.ops.acks == []


async def test_a_shelve_within_range_passes(api):
    async with aiohttp.ClientSession() as http:
        r = await http.post(url(api, "/api/v1/alarms/x/shelve"), headers=AUTH,
                            json={"user": "ann", "seconds": 604_800, "reason": "maintenance"})
        assert r.status == 200 and api.ops.acks == ["shelve 604800"]


async def test_foreign_host_headers_are_refused(api):
    """DNS rebinding: a page on evil.example resolves its name to 127.0.0.1 and reads the API."""
    async with aiohttp.ClientSession() as http:
        for host, expected in [("evil.example", 421), ("evil.example:8470", 421),
                               ("127.0.0.1.evil.example", 421), ("127.0.0.1:1", 200),
                               ("localhost", 200), ("[::1]:8470", 200),
                               (socket.gethostname(), 200)]:
            r = await http.get(url(api, "/api/v1/status"), headers={"Host": host})
            assert r.status == expected, host
            if expected == 421:
                error = strict_json(await r.text())["error"]
                assert "api_allowed_hosts" in error and "\n" not in error
        r = await http.post(url(api, "/api/v1/alarms/x/ack"), json={"user": "eve"},
                            headers={**AUTH, "Host": "evil.example"})
        assert r.status == 421 and api.ops.acks == []


async def test_an_allowed_name_passes_the_host_check():
    server, _ = await serve(allowed_hosts={"line1-controller.plant.local"})
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(url(server, "/api/v1/status"),
                               headers={"Host": "LINE1-controller.plant.local:8470"})
            assert r.status == 200
            r = await http.get(url(server, "/api/v1/status"), headers={"Host": "other.plant.local"})
            assert r.status == 421
    finally:
        await server.stop()


async def test_reads_need_a_token_when_asked_and_the_read_token_cannot_mutate():
    server, ops = await serve(read_token=READ, reads_need_token=True)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v1/status", "/api/v1/tags", "/api/v1/events", "/api/v1/events/stream",
                         "/metrics"):
                r = await http.get(url(server, path))
                assert r.status == 401, path
                assert "reads need a token" in strict_json(await r.text())["error"]
            for token in (READ, TOKEN):
                r = await http.get(url(server, "/api/v1/status"),
                                   headers={"Authorization": f"Bearer {token}"})
                assert r.status == 200
            for token in (READ, TOKEN):  # valid tokens, roles too low: 403, not 401
                r = await http.post(url(server, "/api/v1/model/reload"), json={"user": "eve"},
                                    headers={"Authorization": f"Bearer {token}"})
                assert r.status == 403 and "engineer" in strict_json(await r.text())["error"]
            assert ops.acks == []
            r = await http.post(url(server, "/api/v1/model/reload"), json={"user": "ann"},
                                headers=ENGINEER_AUTH)
            assert r.status == 200 and ops.acks == ["ann"]
    finally:
        await server.stop()


async def idle_sockets(port: int, n: int) -> list[socket.socket]:
    """`n` connected sockets that send nothing (connected without blocking the server's loop)."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        out.append(s)
    return out


async def read_all(s: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(s, 4096), 5.0):
        data += chunk
    return data


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


async def test_connections_over_the_cap_get_a_503_and_are_closed(caplog):
    server, _ = await serve(max_connections=5, idle_timeout_s=30.0)
    held = await idle_sockets(server.port, 5)
    try:
        await wait_for(lambda: server.open_connections == 5, what="5 connections open")
        with caplog.at_level(logging.WARNING, logger="controller.api"):
            extra = await idle_sockets(server.port, 20)
            replies = [await read_all(s) for s in extra]
            for s in extra:
                s.close()
        assert all(r.startswith(b"HTTP/1.1 503") for r in replies)
        assert strict_json(replies[0].split(b"\r\n\r\n", 1)[1].decode())["error"]
        assert server.open_connections == 5 and server.refused == 20
        warnings = [r for r in caplog.records if "connection limit" in r.getMessage()]
        assert len(warnings) == 1  # once, not once per refused connection
        for s in held:  # free the slots: the API serves again
            s.close()
        await wait_for(lambda: server.open_connections == 0, what="the held connections to be released")
        async with aiohttp.ClientSession() as http:
            assert (await http.get(url(server, "/api/v1/status"))).status == 200
    finally:
        for s in held:
            s.close()
        await server.stop()


async def test_idle_and_slow_header_connections_are_closed_after_the_timeout():
    server, _ = await serve(idle_timeout_s=1.0)
    try:
        idle = await idle_sockets(server.port, 3)
        slow = (await idle_sockets(server.port, 1))[0]
        slow.send(b"GET /api/v1/status HTTP/1.1\r\n")
        started = time.monotonic()
        while not (all(closed_by_server(s) for s in idle) and closed_by_server(slow)):
            if time.monotonic() - started > 10.0:  # 10 x the timeout
                raise AssertionError("idle/slow connections still open after 10 s")
            if not closed_by_server(slow):
                with contextlib.suppress(OSError):
                    slow.send(b"X")  # one header byte at a time: slowloris
            await asyncio.sleep(0.1)
        assert time.monotonic() - started >= 0.9  # not before the timeout
        await wait_for(lambda: server.open_connections == 0, what="connections released")
        for s in (*idle, slow):
            s.close()
    finally:
        await server.stop()


async def test_the_cap_leaves_the_reserved_descriptors_free():
    cap, soft = connection_budget(10_000, reserved=64)
    assert cap <= 10_000 and cap <= soft - 64
    with pytest.raises(OSError, match="open-file limit .* raise it"):
        connection_budget(128, reserved=soft)


async def test_an_unresolvable_api_host_names_api_host():
    server = ApiServer(create_app(Ops(), TOKEN), "no-such-host.invalid", 0)
    with pytest.raises(OSError) as info:
        await server.start()
    message = str(info.value)
    assert "api_host 'no-such-host.invalid' cannot be resolved" in message and "api_port" not in message
    assert "\n" not in message


async def test_a_port_in_use_names_api_port(api):
    other = ApiServer(create_app(Ops(), TOKEN), "127.0.0.1", api.port)
    with pytest.raises(OSError, match="in use; set \\[controller\\] api_port to a free port"):
        await other.start()


async def http_head(s: socket.socket) -> bytes:
    """The status line, headers and (Content-Length) body of one response on a raw socket."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await asyncio.wait_for(loop.sock_recv(s, 4096), 5.0)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
    while length and len(body) < length[0]:
        body += await asyncio.wait_for(loop.sock_recv(s, 4096), 5.0)
    return head + b"\r\n\r\n" + body


async def test_a_stream_and_idle_flood_leaves_operator_commands_through():
    """D1: unauthenticated streams and idle connections fill every slot they may; ack and reset still
    get through (the operator reserve), streams stop at their cap, and reads in the reserve are 503."""
    server, ops = await serve(max_connections=12, max_streams=4, idle_timeout_s=30.0)
    assert server.operator_reserve == 3  # 12 // 4: the last 3 slots; 9 for everyone
    loop = asyncio.get_running_loop()
    flood: list[socket.socket] = []
    request = b"GET /api/v1/events/stream?since=999999 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        replies = []
        for _ in range(7):  # more streams than the stream cap
            s = (await idle_sockets(server.port, 1))[0]
            flood.append(s)
            await loop.sock_sendall(s, request)
            replies.append(await http_head(s))
        assert [r.split(b" ", 2)[1] for r in replies] == [b"200"] * 4 + [b"503"] * 3
        refusal = strict_json(replies[-1].split(b"\r\n\r\n", 1)[1].decode())["error"]
        assert "event stream limit (4)" in refusal and "\n" not in refusal
        await wait_for(lambda: all(closed_by_server(s) for s in flood[4:]) and server.open_connections == 4,
                       what="the refused streams to be closed")
        flood += await idle_sockets(server.port, 5)  # idle connections up to the general cap (9)
        await wait_for(lambda: server.open_connections == 9, what="the flood to hold the general slots")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for method, path, headers in [("GET", "/api/v1/status", {}),
                                          ("GET", "/api/v1/events/stream", AUTH),  # streams: never
                                          ("POST", "/api/v1/alarms/x/ack", {})]:
                r = await http.request(method, url(server, path), headers=headers, json={"user": "eve"})
                assert r.status == 503, (method, path, r.status)
                assert "kept for operator commands" in strict_json(await r.text())["error"]
            r = await http.post(url(server, "/api/v1/alarms/press_comm_loss/ack"), headers=AUTH,
                                json={"user": "ann"})
            assert r.status == 200, await r.text()
            r = await http.post(url(server, "/api/v1/actions/stop_line/reset"), headers=ENGINEER_AUTH,
                                json={"user": "ann", "reason": "jam cleared"})
            assert r.status == 200, await r.text()
        assert ops.acks == ["ann", "reset stop_line"]
        assert server.open_connections <= 12 and not any(closed_by_server(s) for s in flood[:4])
        silent = (await idle_sockets(server.port, 1))[0]  # in the reserve, sends nothing
        await wait_for(lambda: closed_by_server(silent), timeout=10 * RESERVE_IDLE_S,
                       what="a silent reserve connection to be closed")
        silent.close()
    finally:
        for s in flood:
            s.close()
        await server.stop()

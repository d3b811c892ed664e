"""Roles, tokens and HMI sessions of the local API over real sockets (the real ApiServer).

401 is "who are you?" (no valid token or session), 403 "you may not" (a valid token or session
whose role is too low, a session's change without its CSRF token, a request from another site).
"""

import asyncio
import ssl
import stat
import subprocess
from http.cookies import SimpleCookie

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.api import ApiServer, create_app
from controller.client import call
from controller.config.controller import ControllerSection
from controller.events import EventLog
from controller.hmi.access import COOKIE, CSRF_HEADER
from controller.hmi.sessions import SessionStore
from controller.roles import TOKEN_FILES, Role, required_role
from controller.statedir import StateDir

TOKENS = {Role.VIEWER: "viewer-token-0123456789abcdefghijklmnopq",
          Role.OPERATOR: "operator-token-0123456789abcdefghijklmn",
          Role.ENGINEER: "engineer-token-0123456789abcdefghijklmn"}


def browser(**kwargs) -> aiohttp.ClientSession:
    """A client that keeps cookies from an IP address (aiohttp's default jar drops those)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kwargs)


def cookie_key(base: str) -> str:
    """The session cookie's name for the controller at `base`: one per port (cookie_name)."""
    return f"{COOKIE}_{base.rsplit(':', 1)[1]}"


def bearer(role: Role) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


class Ops:
    """Records who did what (user, role); the rest of the controller is not needed here."""

    def __init__(self) -> None:
        self.events = EventLog()
        self.registry = CollectorRegistry()
        self.done: list[tuple[str, str, str]] = []

    def status(self) -> dict:
        return {"detector": {"score": 0.1, "threshold": 1.0}}

    def alarm_list(self) -> list[dict]:
        return []

    def ack(self, name, user, reason="", *, role="operator"):
        self.done.append(("ack", user, role))
        return {"ok": True, "message": f"{name} acknowledged"}

    def reset_action(self, name, user, reason, *, role="operator"):
        self.done.append(("reset", user, role))
        return {"ok": True}

    def inhibit_action(self, name, user, enabled, reason="", *, role="operator"):
        self.done.append(("inhibit", user, role))
        return {"ok": True}

    async def reload_model(self, user, path, *, role="operator"):
        self.done.append(("reload", user, role))
        return {"model": "m.npz"}

    async def persist(self):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api():
    """(base URL, ops, the session clock) of a real ApiServer on a free port."""
    ops, clock = Ops(), Clock()
    app = create_app(ops, TOKENS[Role.OPERATOR], read_token=TOKENS[Role.VIEWER],
                     engineer_token=TOKENS[Role.ENGINEER],
                     sessions=SessionStore(lifetime_s=600.0, clock=clock))
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    yield f"http://127.0.0.1:{server.port}", ops, clock
    await server.stop()


async def login(http: aiohttp.ClientSession, base: str, role: Role, user: str = "ann") -> dict:
    r = await http.post(f"{base}/api/v1/session/login", json={"user": user, "token": TOKENS[role]})
    assert r.status == 200, await r.text()
    return await r.json()


def test_the_route_table_gives_each_change_its_role():
    assert required_role("GET", "/api/v1/status") is Role.VIEWER
    assert required_role("POST", "/api/v1/alarms/a/shelve") is Role.OPERATOR
    assert required_role("POST", "/api/v1/alarms/a/unshelve") is Role.OPERATOR
    assert required_role("POST", "/api/v1/alarms/a/out-of-service") is Role.ENGINEER
    assert required_role("POST", "/api/v1/actions/stop_line/inhibit") is Role.ENGINEER
    assert required_role("POST", "/api/v1/model/reload") is Role.ENGINEER
    assert required_role("POST", "/api/v1/something/new") is Role.ENGINEER  # closed until listed
    assert required_role("POST", "/api/v1/alarms/a/b/ack") is Role.ENGINEER


async def test_missing_or_wrong_token_is_401_and_a_role_too_low_is_403(api):
    base, ops, _ = api
    ack, reset = f"{base}/api/v1/alarms/a/ack", f"{base}/api/v1/actions/stop_line/reset"
    async with browser() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKENS[Role.OPERATOR]}):
            r = await http.post(ack, json={}, headers=headers)
            assert r.status == 401, headers
            assert "token" in (await r.json())["error"]
        r = await http.post(ack, json={}, headers=bearer(Role.VIEWER))
        assert r.status == 403 and "needs the operator role" in (await r.json())["error"]
        r = await http.post(reset, json={"reason": "x"}, headers=bearer(Role.OPERATOR))
        assert r.status == 403 and "api-engineer-token" in (await r.json())["error"]
        assert ops.done == []
        for role in (Role.OPERATOR, Role.ENGINEER):  # a higher role may do what a lower one may
            assert (await http.post(ack, json={"user": "bo"}, headers=bearer(role))).status == 200
        r = await http.post(reset, json={"user": "cy", "reason": "x"}, headers=bearer(Role.ENGINEER))
        assert r.status == 200
    assert ops.done == [("ack", "bo", "operator"), ("ack", "bo", "engineer"), ("reset", "cy", "engineer")]


async def test_login_sets_a_strict_httponly_session_cookie_with_a_bounded_lifetime(api):
    base, _, _ = api
    async with browser() as http:
        r = await http.post(f"{base}/api/v1/session/login", json={"user": "ann", "token": "guess"})
        assert r.status == 401 and cookie_key(base) not in r.cookies
        for name in ("", "x" * 65, "ann\x1b[31m"):
            r = await http.post(f"{base}/api/v1/session/login",
                                json={"user": name, "token": TOKENS[Role.OPERATOR]})
            assert r.status == 400 and cookie_key(base) not in r.cookies, name
        r = await http.post(f"{base}/api/v1/session/login",
                            json={"user": "ann", "token": TOKENS[Role.OPERATOR]})
        assert r.status == 200
        cookie = SimpleCookie(r.headers["Set-Cookie"])[cookie_key(base)]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        assert cookie["max-age"] == "600" and not cookie["secure"]  # plain HTTP here
        answer = await r.json()
        assert answer["user"] == "ann" and answer["role"] == "operator" and len(answer["csrf"]) >= 32
        assert answer["csrf"] not in r.headers["Set-Cookie"]  # the CSRF token is not the cookie
        r = await http.get(f"{base}/api/v1/session")
        assert (await r.json())["csrf"] == answer["csrf"] and r.headers["Cache-Control"] == "no-store"


async def test_a_change_from_a_session_needs_its_csrf_token(api):
    base, ops, _ = api
    ack = f"{base}/api/v1/alarms/a/ack"
    async with browser() as http:
        session = await login(http, base, Role.OPERATOR, user="ann")
        for headers in ({}, {CSRF_HEADER: "wrong"}, {CSRF_HEADER: ""}):
            r = await http.post(ack, json={}, headers=headers)
            assert r.status == 403 and "CSRF" in (await r.json())["error"], headers
        assert ops.done == []
        r = await http.post(ack, json={"user": "mallory"}, headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 200
        r = await http.post(f"{base}/api/v1/actions/stop_line/reset", json={"reason": "x"},
                            headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 403 and "engineer" in (await r.json())["error"]  # the operator's session
    assert ops.done == [("ack", "ann", "operator")]  # the session's user, not the body's


async def test_requests_from_another_site_are_refused(api):
    base, ops, _ = api
    async with browser() as http:
        session = await login(http, base, Role.ENGINEER)
        good = {CSRF_HEADER: session["csrf"]}
        for foreign in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": base.replace("127.0.0.1", "localhost")}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}):
            r = await http.post(f"{base}/api/v1/alarms/a/ack", json={}, headers={**good, **foreign})
            assert r.status == 403 and "refused" in (await r.json())["error"], foreign
            r = await http.post(f"{base}/api/v1/session/login", headers=foreign,  # no planted login
                                json={"user": "eve", "token": TOKENS[Role.OPERATOR]})
            assert r.status == 403, foreign
        assert ops.done == []
        same = {**good, "Origin": base, "Sec-Fetch-Site": "same-origin"}
        assert (await http.post(f"{base}/api/v1/alarms/a/ack", json={}, headers=same)).status == 200


async def test_a_viewer_session_may_read_but_not_ack(api):
    base, ops, _ = api
    async with browser() as http:
        session = await login(http, base, Role.VIEWER, user="vic")
        assert (await http.get(f"{base}/api/v1/status")).status == 200
        r = await http.post(f"{base}/api/v1/alarms/a/ack", json={}, headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 403 and "viewer role may not" in (await r.json())["error"]
    assert ops.done == []


async def test_a_session_expires_and_logout_ends_it(api):
    base, ops, clock = api
    ack = f"{base}/api/v1/alarms/a/ack"
    async with browser() as http:
        session = await login(http, base, Role.OPERATOR)
        clock.now += 599.0
        assert (await http.post(ack, json={}, headers={CSRF_HEADER: session["csrf"]})).status == 200
        clock.now += 1.0  # the lifetime is over
        r = await http.post(ack, json={}, headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 401
        assert (await (await http.get(f"{base}/api/v1/session")).json())["role"] is None

        session = await login(http, base, Role.OPERATOR)
        old = next(c.value for c in http.cookie_jar if c.key == cookie_key(base))
        assert (await http.post(f"{base}/api/v1/session/logout")).status == 403  # logout needs CSRF too
        r = await http.post(f"{base}/api/v1/session/logout", headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 200 and r.cookies[cookie_key(base)].value == ""
    async with browser(cookies={cookie_key(base): old}) as replay:
        r = await replay.post(ack, json={}, headers={CSRF_HEADER: session["csrf"]})
        assert r.status == 401  # the old cookie no longer opens anything
    assert len(ops.done) == 1


def test_the_store_keeps_at_most_max_sessions():
    store = SessionStore(max_sessions=2)
    first, second, third = (store.create(u, Role.OPERATOR) for u in "abc")
    assert store.get(first.id) is None and store.get(second.id) and store.get(third.id) and len(store) == 2
    assert store.get(None) is None and store.get("") is None


async def test_the_cookie_is_secure_when_served_over_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(create_app(Ops(), TOKENS[Role.OPERATOR]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with browser(connector=aiohttp.TCPConnector(ssl=False)) as http:
            r = await http.post(f"https://127.0.0.1:{port}/api/v1/session/login",
                                json={"user": "ann", "token": TOKENS[Role.OPERATOR]})
            assert r.status == 200
            assert SimpleCookie(r.headers["Set-Cookie"])[f"{COOKIE}_{port}"]["secure"]
    finally:
        await runner.cleanup()


async def test_reads_beyond_loopback_need_a_token_or_a_login():
    ops = Ops()
    server = ApiServer(create_app(ops, TOKENS[Role.OPERATOR], read_token=TOKENS[Role.VIEWER],
                                  reads_need_token=True), "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with browser() as http:
            assert (await http.get(f"{base}/")).status == 200  # the page itself holds no data
            r = await http.get(f"{base}/api/v1/status")
            assert r.status == 401 and "reads need a token" in (await r.json())["error"]
            assert (await (await http.get(f"{base}/api/v1/session")).json())["reads_need_login"] is True
            assert (await http.get(f"{base}/api/v1/status", headers=bearer(Role.VIEWER))).status == 200
            await login(http, base, Role.VIEWER)
            assert (await http.get(f"{base}/api/v1/status")).status == 200
    finally:
        await server.stop()


async def test_the_page_is_served_with_a_strict_content_security_policy(api):
    base, _, _ = api
    async with browser() as http:
        r = await http.get(f"{base}/")
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        assert '<script src="/static/hmi.js"' in await r.text()
        for name, kind in (("hmi.js", "text/javascript"), ("hmi.css", "text/css")):
            r = await http.get(f"{base}/static/{name}")
            assert r.status == 200 and r.content_type == kind
        for bad in ("/static/index.html", "/static/..%2Fapi.py", "/static/nope.js"):
            r = await http.get(f"{base}{bad}")
            assert r.status == 404 and "error" in await r.json()


def test_each_role_has_its_own_token_file_created_0600(tmp_path):
    tokens = StateDir(tmp_path / "state").tokens()
    assert set(tokens) == set(Role) and len(set(tokens.values())) == 3
    for role, name in TOKEN_FILES.items():
        path = tmp_path / "state" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == tokens[role]
    assert StateDir(tmp_path / "state").tokens() == tokens  # kept across starts


async def test_the_cli_sends_the_token_of_the_role_each_request_needs(tmp_path):
    ops = Ops()
    state = tmp_path / "state"
    tokens = StateDir(state).tokens()
    server = ApiServer(create_app(ops, tokens[Role.OPERATOR], read_token=tokens[Role.VIEWER],
                                  engineer_token=tokens[Role.ENGINEER]), "127.0.0.1", 0)
    await server.start()
    section = ControllerSection(site="s", line="l", state_dir=state, api_port=server.port)
    try:
        await asyncio.to_thread(call, section, "POST", "/alarms/a/ack", {"user": "ann"})
        await asyncio.to_thread(call, section, "POST", "/actions/stop_line/reset",
                                {"user": "ann", "reason": "x"})
        assert ops.done == [("ack", "ann", "operator"), ("reset", "ann", "engineer")]
    finally:
        await server.stop()

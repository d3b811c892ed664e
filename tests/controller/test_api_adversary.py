"""An adversary against the HMI's sessions and the API's tokens, over real sockets (the real ApiServer)
and real files: session eviction by a lower role, a login that leaves the earlier session open,
form posts that are not JSON, an event stream that outlives its logout, answers a browser may cache
or run, control characters in what the journal keeps, and token files that are not plainly ours.
"""

import asyncio
import logging
import os
import stat
from http.cookies import SimpleCookie

import aiohttp
import pytest

from controller.api import ApiServer, create_app
from controller.hmi.access import CSRF_HEADER
from controller.hmi.sessions import SessionStore
from controller.roles import TOKEN_FILES, Role
from controller.statedir import StateDir
from hil_tests.rig.net import wait_for
from tests.controller.test_api_hostile import idle_sockets
from tests.controller.test_api_roles import TOKENS, Clock, Ops, bearer, browser, cookie_key, login

ACK = "/api/v1/alarms/a/ack"


async def serve(**kwargs) -> tuple[ApiServer, Ops, str]:
    ops = Ops()
    app = create_app(ops, TOKENS[Role.OPERATOR], read_token=TOKENS[Role.VIEWER],
                     engineer_token=TOKENS[Role.ENGINEER], **kwargs)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    return server, ops, f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def api():
    """(base URL, ops) of a real ApiServer on a free port, with every role's token."""
    server, ops, base = await serve()
    yield base, ops
    await server.stop()


async def test_viewer_logins_at_the_session_cap_never_end_the_operators_session():
    """Was: at the cap the oldest session ended whatever its role, so whoever held the viewer token
    (a dashboard's) logged the operator's panel out by logging in 64 times."""
    server, ops, base = await serve(sessions=SessionStore(max_sessions=4))
    try:
        async with browser() as panel:
            operator = await login(panel, base, Role.OPERATOR, user="ann")
            for _ in range(10):
                async with browser() as flood:
                    await login(flood, base, Role.VIEWER, user="eve")
            r = await panel.post(f"{base}{ACK}", json={}, headers={CSRF_HEADER: operator["csrf"]})
            assert r.status == 200, await r.text()
        # Sessions of higher roles only: a viewer's login is refused, not given one of their places.
        engineers = [browser() for _ in range(4)]
        try:
            for user, http in zip("bcde", engineers, strict=True):
                await login(http, base, Role.ENGINEER, user=user)
            async with browser() as flood:
                r = await flood.post(f"{base}/api/v1/session/login",
                                     json={"user": "eve", "token": TOKENS[Role.VIEWER]})
                assert r.status == 503 and "higher role" in (await r.json())["error"]
                assert cookie_key(base) not in r.cookies
        finally:
            for http in engineers:
                await http.close()
    finally:
        await server.stop()
    assert ops.done == [("ack", "ann", "operator")]


def test_an_expired_session_makes_room_before_a_live_one_ends():
    clock = Clock()
    store = SessionStore(lifetime_s=10.0, max_sessions=2, clock=clock)
    old = store.create("old", Role.ENGINEER)
    clock.now += 5.0
    live = store.create("live", Role.ENGINEER)
    clock.now += 6.0  # `old` expired, `live` did not
    store.create("new", Role.VIEWER)  # refused before: both places held by engineers
    assert store.get(live.id) is not None and store.get(old.id) is None


async def test_a_new_login_ends_the_browsers_earlier_session(api):
    """Was: logging in again (an engineer handing the panel to a viewer) left the engineer's
    session open: its cookie value, copied before, still reset actions."""
    base, ops = api
    async with browser() as http:
        engineer = await login(http, base, Role.ENGINEER, user="eng")
        old = next(c.value for c in http.cookie_jar if c.key == cookie_key(base))
        await login(http, base, Role.VIEWER, user="vic")
    async with browser(cookies={cookie_key(base): old}) as replay:
        r = await replay.post(f"{base}/api/v1/actions/stop_line/reset", json={"reason": "x"},
                              headers={CSRF_HEADER: engineer["csrf"]})
        assert r.status == 401
    assert ops.done == []


async def test_a_login_or_a_sessions_change_must_be_declared_json(api):
    """Was: a text/plain form post (which another page may send without a preflight, and which an
    older browser sends without an Origin) logged in and, with the CSRF token, acked."""
    base, ops = api
    form = '{"user": "eve", "token": "TOKEN", "x": "="}'.replace("TOKEN", TOKENS[Role.OPERATOR])
    async with browser() as http:
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": kind} if kind else {}
            r = await http.post(f"{base}/api/v1/session/login", data=form.encode(), headers=headers)
            assert r.status == 415 and "application/json" in (await r.json())["error"], kind
            assert cookie_key(base) not in r.cookies
        session = await login(http, base, Role.OPERATOR)
        r = await http.post(f"{base}{ACK}", data=b"{}",
                            headers={CSRF_HEADER: session["csrf"], "Content-Type": "text/plain"})
        assert r.status == 415
        assert ops.done == []
        # Bearer callers (curl -d, scripts) are not held to it: no browser sends their header.
        r = await http.post(f"{base}{ACK}", data=b'{"user": "bo"}', headers=bearer(Role.OPERATOR))
        assert r.status == 200
    assert ops.done == [("ack", "bo", "operator")]


async def test_an_event_stream_ends_with_the_session_it_was_opened_with():
    """Was: beyond loopback (reads need a login) a stream opened by a session went on sending
    every event after its logout, and after its expiry, for as long as the browser kept it."""
    clock = Clock()
    server, ops, base = await serve(reads_need_token=True,
                                    sessions=SessionStore(lifetime_s=600.0, clock=clock))
    try:
        for end in ("logout", "expiry"):
            async with browser() as http:
                session = await login(http, base, Role.VIEWER)
                since = max([e["id"] for e in ops.events.since()], default=0)
                stream = await http.get(f"{base}/api/v1/events/stream?since={since}")
                assert stream.status == 200
                ops.events.add("alarm", "a", "before")
                assert b"before" in await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
                if end == "logout":
                    r = await http.post(f"{base}/api/v1/session/logout",
                                        headers={CSRF_HEADER: session["csrf"]})
                    assert r.status == 200
                else:
                    clock.now += 600.0
                ops.events.add("alarm", "a", "after")
                rest = await asyncio.wait_for(stream.content.read(), 5)  # the stream ends
                assert b"after" not in rest, end
                stream.close()
    finally:
        await server.stop()


async def test_api_answers_are_never_cached_sniffed_or_framed(api):
    """Was: status, alarms and events (the logged-in user's data beyond loopback) came without
    Cache-Control, so a browser or a proxy could keep them for the next person at that screen."""
    base, _ = api
    async with browser() as http:
        for path in ("/api/v1/status", "/api/v1/alarms", "/api/v1/events", "/api/v1/nothing",
                     "/static/<svg onload=alert(1)>", "/metrics"):
            r = await http.get(f"{base}{path}")
            assert r.headers["Cache-Control"] == "no-store", path
            assert r.headers["X-Content-Type-Options"] == "nosniff", path
            assert "default-src 'none'" in r.headers["Content-Security-Policy"], path
        page = await http.get(f"{base}/")
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]  # the page keeps its own


@pytest.mark.parametrize("body", [{"user": "ann\x1b]0;owned\x07", "reason": "x"},
                                  {"user": "ann", "reason": "line one\nline two"},
                                  {"user": "ann", "reason": "\x1b[2J\x1b[Hall clear"},
                                  {"user": "a" * 65, "reason": "x"}, {"user": "ann", "reason": "r" * 501}])
async def test_what_the_journal_keeps_has_no_control_characters(api, body):
    """Was: a bearer caller's user and reason went into the journal as sent, escape sequences and
    line breaks included, which `linesentry events` prints to the operator's terminal."""
    base, ops = api
    async with browser() as http:
        r = await http.post(f"{base}/api/v1/actions/stop_line/reset", json=body,
                            headers=bearer(Role.ENGINEER))
        assert r.status == 400 and "printable" in (await r.json())["error"]
    assert ops.done == []


# ---- token files ----------------------------------------------------------------------------

def fresh_state(tmp_path) -> tuple[StateDir, dict[Role, str]]:
    state = StateDir(tmp_path / "state")
    return state, state.tokens()


def test_a_symlinked_token_file_is_not_followed(tmp_path, caplog):
    """Was: a link api-engineer-token -> a file others can read (e.g. /etc/machine-id, 32 hex
    characters: a valid token) made its content the engineer's token, and the 0600 fix chmod'ed
    the target."""
    state, _ = fresh_state(tmp_path)
    public = tmp_path / "machine-id"
    public.write_text("0123456789abcdef0123456789abcdef\n")
    public.chmod(0o644)
    link = state.path / TOKEN_FILES[Role.ENGINEER]
    link.unlink()
    link.symlink_to(public)
    with caplog.at_level(logging.WARNING):
        token = state.token(TOKEN_FILES[Role.ENGINEER])
    assert token != "0123456789abcdef0123456789abcdef" and "symbolic link" in caplog.text
    assert not link.is_symlink() and stat.S_IMODE(link.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644 and public.read_text().startswith("0123")


def test_a_fifo_or_another_users_token_file_is_replaced_not_trusted(tmp_path, caplog):
    """Was: a FIFO named api-token hung the start for ever (open blocks); a token file owned by
    another user (who therefore knows it) was used as is."""
    state, before = fresh_state(tmp_path)
    fifo = state.path / TOKEN_FILES[Role.OPERATOR]
    fifo.unlink()
    os.mkfifo(fifo, 0o600)
    with caplog.at_level(logging.WARNING):
        token = state.token(TOKEN_FILES[Role.OPERATOR])
    assert "not a regular file" in caplog.text and stat.S_ISREG(fifo.stat().st_mode)
    assert token != before[Role.OPERATOR] and fifo.read_text().strip() == token
    if os.geteuid() == 0:  # only root may give a file away
        other = state.path / TOKEN_FILES[Role.VIEWER]
        os.chown(other, 12345, 12345)
        assert state.token(TOKEN_FILES[Role.VIEWER]) != before[Role.VIEWER]
        assert "owned by another user" in caplog.text and other.stat().st_uid == os.geteuid()


@pytest.mark.parametrize(("lower", "higher"), [(Role.VIEWER, Role.OPERATOR), (Role.VIEWER, Role.ENGINEER),
                                               (Role.OPERATOR, Role.ENGINEER)])
def test_a_lower_roles_file_holding_a_higher_roles_token_gets_a_new_token(tmp_path, caplog, lower, higher):
    """Was: api-read-token copied from api-token (for a dashboard) made the 'read' token ack, and
    the Access check took the highest role whose token matched."""
    state, before = fresh_state(tmp_path)
    (state.path / TOKEN_FILES[lower]).write_text(before[higher] + "\n")
    with caplog.at_level(logging.WARNING):
        after = {role: state.token(name) for role, name in TOKEN_FILES.items()}  # the controller's order
    assert after[higher] == before[higher]  # the higher role's clients keep working
    assert after[lower] not in (before[higher], before[lower])
    assert len(set(after.values())) == 3 and f"held the {higher.value} role's token" in caplog.text


async def test_an_operators_hmi_session_gets_through_the_operator_reserve_in_a_flood():
    """Was: the connection reserve kept for operator commands served bearer tokens only: with the
    general slots held by idle readers, the operator's ack from the HMI was 503."""
    server, ops, base = await serve(sessions=SessionStore())
    flood = []
    try:
        async with browser(connector=aiohttp.TCPConnector(force_close=True)) as panel:
            operator = await login(panel, base, Role.OPERATOR, user="ann")
            viewer_jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=viewer_jar) as viewer:
                vic = await login(viewer, base, Role.VIEWER, user="vic")
            general = server.max_connections - server.operator_reserve
            flood = await idle_sockets(server.port, general)
            await wait_for(lambda: server.open_connections == general, what="the flood to hold the slots")
            r = await panel.post(f"{base}{ACK}", json={}, headers={CSRF_HEADER: operator["csrf"]})
            assert r.status == 200, await r.text()
            async with aiohttp.ClientSession(cookie_jar=viewer_jar,
                                             connector=aiohttp.TCPConnector(force_close=True)) as viewer:
                r = await viewer.post(f"{base}{ACK}", json={}, headers={CSRF_HEADER: vic["csrf"]})
                assert r.status == 503  # a viewer's session is not an operator command
    finally:
        for s in flood:
            s.close()
        await server.stop()
    assert ops.done == [("ack", "ann", "operator")]


async def test_behind_a_tls_proxy_the_https_origin_of_this_host_is_accepted(api):
    """Was: behind a TLS-terminating proxy (docs: put one in front) the browser's Origin is
    https://host while the request arrives as http: every HMI login and change was 403, and the
    session cookie was not Secure."""
    base, ops = api
    host = base.partition("://")[2]
    async with browser() as http:
        r = await http.post(f"{base}/api/v1/session/login", headers={"Origin": f"https://{host}"},
                            json={"user": "ann", "token": TOKENS[Role.OPERATOR]})
        assert r.status == 200, await r.text()
        cookie = SimpleCookie(r.headers["Set-Cookie"])[cookie_key(base)]
        assert cookie["secure"]  # the browser is on https (the client here, on http, keeps it back)
        csrf = (await r.json())["csrf"]
        http.cookie_jar.update_cookies({cookie_key(base): cookie.value})
        for other in ("https://evil.example", f"https://{host}.evil.example", "null", f"https://x{host}"):
            r = await http.post(f"{base}{ACK}", json={}, headers={CSRF_HEADER: csrf, "Origin": other})
            assert r.status == 403, other
        same = {CSRF_HEADER: csrf, "Origin": f"https://{host}"}
        r = await http.post(f"{base}{ACK}", json={}, headers=same)
        assert r.status == 200
    assert ops.done == [("ack", "ann", "operator")]


async def test_two_lines_on_one_host_keep_their_sessions_apart_in_one_browser():
    """Was: one cookie name for every port, and browsers keep cookies per host: logging in to
    line 2's HMI (linesentry@line2, another port) logged the browser out of line 1's."""
    (one, ops_one, base_one), (two, ops_two, base_two) = await serve(), await serve()
    try:
        async with browser() as http:
            line1 = await login(http, base_one, Role.OPERATOR, user="ann")
            line2 = await login(http, base_two, Role.OPERATOR, user="ann")
            for base, session in ((base_one, line1), (base_two, line2)):
                r = await http.post(f"{base}{ACK}", json={}, headers={CSRF_HEADER: session["csrf"]})
                assert r.status == 200, (base, await r.text())
    finally:
        await one.stop()
        await two.stop()
    assert ops_one.done == ops_two.done == [("ack", "ann", "operator")]


async def test_a_stream_slot_is_freed_soon_after_its_client_leaves_and_a_head_holds_none():
    """Was: a HEAD of the event stream was never written to, so it never noticed its client had
    gone: 16 HEADs held every stream slot until a restart (no HMI got live events). A GET stream
    whose client left held its slot until the next keep-alive write, up to 15 s."""
    server, _, base = await serve(max_streams=2)
    stream = f"{base}/api/v1/events/stream"
    try:
        for _ in range(3):
            async with aiohttp.ClientSession() as http:
                assert (await asyncio.wait_for(http.head(stream), 5)).status == 200
        for _ in range(3):
            async with aiohttp.ClientSession() as http:
                r = await asyncio.wait_for(http.get(stream), 5)
                assert r.status == 200
                second = await asyncio.wait_for(http.get(stream), 5)
                assert second.status == 200
            await asyncio.sleep(2.5)  # both clients gone: their slots are free again within ~1 s
    finally:
        await server.stop()

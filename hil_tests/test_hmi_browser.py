"""The web HMI in a real browser (Debian's chromium driven by Playwright) against the real controller
on the simulated plant: the page shows a fault, the operator logs in and acks it, the engineer
resets and inhibits, a viewer cannot ack, and a forged cross-site POST is refused.

The tests take the screenshots of docs/hmi.md into pytest's tmp path; with
LINESENTRY_UPDATE_SCREENSHOTS=1 they write docs/images/hmi-*.png instead (a plain run never
touches the committed pictures). These tests FAIL (never skip) when chromium is missing: `make test`
installs it.
"""

import contextlib
import os
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import Page, async_playwright, expect

from controller.config import load_config
from controller.hmi.access import COOKIE, CSRF_HEADER
from controller.roles import TOKEN_FILES, Role
from controller.runtime import Controller
from hil_tests.rig.controller_run import make_controller
from hil_tests.rig.controller_run import start_controller as start
from hil_tests.rig.controller_run import stop_controller as stop
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("LINESENTRY_UPDATE_SCREENSHOTS") == "1"
VIEWPORT = {"width": 1280, "height": 900}
MAX_IMAGE_BYTES = 300_000
UI_TIMEOUT_MS = 15_000


@contextlib.asynccontextmanager
async def chromium():
    """A headless chromium (the system's, no browser download)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (make test does)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def hmi_on_the_rig(tmp_path: Path, rig, model: Path):
    """The real controller on the rig; yields (controller, base URL, {role: token})."""
    controller = make_controller(tmp_path, rig, model)
    task = await start(controller)
    state = Path(controller.config.controller.state_dir)
    tokens = {role: (state / name).read_text().strip() for role, name in TOKEN_FILES.items()}
    try:
        yield controller, f"http://127.0.0.1:{controller.api_port}", tokens
    finally:
        await stop(controller, task)


def images_dir(tmp_path: Path) -> Path:
    """docs/images when asked (LINESENTRY_UPDATE_SCREENSHOTS=1), else the test's own tmp path."""
    return DOCS_IMAGES if UPDATE_SCREENSHOTS else tmp_path / "screenshots"


async def screenshot(page: Page, images: Path, name: str) -> None:
    images.mkdir(parents=True, exist_ok=True)
    path = images / f"hmi-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size < MAX_IMAGE_BYTES, f"{path} is {path.stat().st_size} bytes"


async def log_in(page: Page, user: str, token: str) -> None:
    await page.click("#login-open")
    await page.fill("#login-user", user)
    await page.fill("#login-token", token)
    await page.click("#login-submit")
    await expect(page.locator("#who-text")).to_contain_text(user, timeout=UI_TIMEOUT_MS)


async def confirm(page: Page, reason: str) -> None:
    """Fill the reason dialog and confirm; the answer's message shows in the notice line."""
    await page.fill("#op-reason", reason)
    await page.click("#op-submit")
    await expect(page.locator("#op-dialog")).not_to_be_visible(timeout=UI_TIMEOUT_MS)


async def api_json(base: str, path: str):
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/v1{path}") as r:
        return await r.json()


async def alarm_state(base: str, name: str) -> str:
    return next(a["state"] for a in await api_json(base, "/alarms") if a["name"] == name)


async def action(base: str, name: str) -> dict:
    return next(a for a in (await api_json(base, "/status"))["actions"] if a["name"] == name)


async def jam(rig) -> None:
    rig.injector.faults.append(FaultSpec(type="jam", onset_s=rig.plant.t, duration_s=6.0))


async def test_the_operator_sees_a_fault_acks_it_and_the_engineer_resets_and_inhibits(tmp_path, rig, model):
    images = images_dir(tmp_path)
    async with hmi_on_the_rig(tmp_path, rig, model) as (controller, base, tokens), chromium() as browser:
        page = await browser.new_page(viewport=VIEWPORT)
        await page.goto(f"{base}/")
        # Normal: grey, no banner, both PLCs listed, the trend drawing.
        await expect(page.locator("#line-state")).to_have_text("NORMAL", timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#plcs tbody tr")).to_have_count(len(controller.plcs))
        await expect(page.locator("#trend-score")).to_be_attached(timeout=UI_TIMEOUT_MS)
        assert await page.locator("#banners .banner").count() == 0
        await screenshot(page, images, "normal")

        await jam(rig)
        row = page.locator('#alarms tr[data-alarm="line_anomaly"]')
        await expect(row).to_have_attribute("data-state", "UNACK", timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#line-state")).to_have_text("ANOMALY")
        latched = page.locator('#banners .banner[data-kind="latched"]')
        await expect(latched).to_be_visible(timeout=UI_TIMEOUT_MS)
        await expect(row.locator('button[data-op="ack"]')).to_be_disabled()  # a viewer cannot ack
        why = next(a for a in await api_json(base, "/alarms") if a["name"] == "line_anomaly")["explanation"]
        await expect(row).to_contain_text(why["text"])  # the attribution the API gives
        await screenshot(page, images, "fault")

        await log_in(page, "ann", tokens[Role.OPERATOR])
        await expect(row.locator('button[data-op="ack"]')).to_be_enabled()
        stop_line = page.locator('#actions tr[data-action="stop_line"]')
        await expect(stop_line.locator('button[data-op="reset"]')).to_be_disabled()  # the engineer's
        await row.locator('button[data-op="ack"]').click()
        await confirm(page, "jam seen, belt checked")
        assert await alarm_state(base, "line_anomaly") in ("ACKED", "NORMAL")  # the API changed
        acks = [e for e in controller.events.since()
                if e["source"] == "line_anomaly" and e.get("user") == "ann"]
        assert acks and acks[-1].get("role") == "operator"
        assert acks[-1].get("reason") == "jam seen, belt checked"
        await expect(row).not_to_have_attribute("data-state", "UNACK", timeout=UI_TIMEOUT_MS)
        await screenshot(page, images, "acked")

        await page.click("#logout")
        await log_in(page, "eng", tokens[Role.ENGINEER])
        await stop_line.locator('button[data-op="reset"]').click()
        await confirm(page, "jam cleared")
        assert (await action(base, "stop_line"))["latched"] is False
        await stop_line.locator('button[data-op="inhibit"]').click()
        await confirm(page, "belt maintenance")
        assert (await action(base, "stop_line"))["inhibited"] is True
        await expect(page.locator('#banners .banner[data-kind="inhibited"]')).to_contain_text(
            "stop_line inhibited by eng", timeout=UI_TIMEOUT_MS)
        await expect(stop_line.locator(".tag.inhibited")).to_be_visible()
        await screenshot(page, images, "engineer")


async def test_a_viewer_cannot_ack_and_a_forged_cross_site_post_is_refused(tmp_path, rig, model):
    async with hmi_on_the_rig(tmp_path, rig, model) as (controller, base, tokens), chromium() as browser:
        await jam(rig)
        await wait_for(lambda: "line_anomaly" in controller.alarms.active(), timeout=15,
                       what="the line alarm")
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        await page.goto(f"{base}/")
        ack = "/api/v1/alarms/line_anomaly/ack"

        # A viewer's session reads but cannot ack, not even with its own CSRF token (403).
        await log_in(page, "vic", tokens[Role.VIEWER])
        row = page.locator('#alarms tr[data-alarm="line_anomaly"]')
        await expect(row.locator('button[data-op="ack"]')).to_be_disabled(timeout=UI_TIMEOUT_MS)
        status = await page.evaluate("""async ([path, header]) => {
            const s = await (await fetch("/api/v1/session")).json();
            const r = await fetch(path, {method: "POST", headers: {[header]: s.csrf}, body: "{}"});
            return r.status; }""", [ack, CSRF_HEADER])
        assert status == 403
        await page.click("#logout")

        # The operator is logged in; a page of another origin tries to ack in their name.
        await log_in(page, "ann", tokens[Role.OPERATOR])
        same_page_no_csrf = await page.evaluate(
            "async (path) => (await fetch(path, {method: 'POST', body: '{}'})).status", ack)
        assert same_page_no_csrf == 403  # the session cookie alone is not enough
        async with evil_site(f"{base}{ack}") as evil:
            # Another port of this host is the same site: the browser sends the session cookie
            # (SameSite does not stop it) and the server refuses the Origin. Another host name is
            # another site: SameSite=Strict keeps the cookie back, and the Origin is refused too.
            for origin, cookie_sent in ((f"http://127.0.0.1:{evil}", True),
                                        (f"http://localhost:{evil}", False)):
                forged = await context.new_page()
                async with forged.expect_response(f"{base}{ack}", timeout=UI_TIMEOUT_MS) as answer:
                    await forged.goto(f"{origin}/")
                response = await answer.value
                assert response.status == 403, origin
                assert "cross-origin request refused" in (await response.json())["error"]
                sent = await response.request.all_headers()
                session_cookie = f"{COOKIE}_{controller.api_port}="
                assert (session_cookie in sent.get("cookie", "")) is cookie_sent, (origin, sent)
                await forged.close()
        assert await alarm_state(base, "line_anomaly") in ("UNACK", "RTN_UNACK")  # nobody acked it
        assert not [e for e in controller.events.since() if e.get("user") in ("eve", "ann")]


@contextlib.asynccontextmanager
async def evil_site(target: str):
    """A page on another port that auto-submits a JSON-looking form to `target`; yields its port."""
    html = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input type="hidden" name='{{"user": "eve", "x": "' value='"}}'></form>
<script>document.getElementById("f").submit();</script></body></html>"""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_a_stopped_hung_or_restarted_controller_shows_no_data_not_normal(tmp_path, rig, model):
    """Was: when the controller stopped the page kept its last grey NORMAL (only the small link
    box changed), when it hung every poll waited for ever and the page still said `live`, and
    after a restart it still showed the operator as logged in (the restart ended the session) and,
    when the new run's event ids started again from 1, no new event at all."""
    controller = make_controller(tmp_path, rig, model)
    task = await start(controller)
    port = controller.api_port
    tokens = {role: (Path(controller.config.controller.state_dir) / name).read_text().strip()
              for role, name in TOKEN_FILES.items()}
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport=VIEWPORT)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{port}/")
            state = page.locator("#line-state")
            await expect(state).to_have_text("NORMAL", timeout=UI_TIMEOUT_MS)
            await log_in(page, "ann", tokens[Role.OPERATOR])

            # Hung: the controller takes the requests and never answers.
            async def hang(_route) -> None:
                pass  # neither continued nor fulfilled: the request waits, like on a stuck event loop

            await page.route("**/api/v1/**", hang)
            await expect(state).to_have_text("NO DATA", timeout=UI_TIMEOUT_MS)
            await expect(page.locator("#link")).to_contain_text("no answer from the controller")
            await page.unroute("**/api/v1/**")
            await expect(state).to_have_text("NORMAL", timeout=UI_TIMEOUT_MS)

            for n in range(20):  # the page has seen event ids beyond what the next run starts with
                controller.events.add("controller", "test", f"before the restart {n}")
            events = page.locator("#events")
            await expect(events).to_contain_text("before the restart 19", timeout=UI_TIMEOUT_MS)

            # Stopped: connection refused.
            await stop(controller, task)
            task = None
            await expect(state).to_have_text("NO DATA", timeout=UI_TIMEOUT_MS)
            assert await page.locator("#line-state.stale").count() == 1
            assert await page.locator("main button:enabled").count() == 0

            # Restarted on the same port with a new journal (a damaged one set aside: ids from 1 again):
            # live data and new events again, and the session the restart ended is shown as ended.
            for journal in Path(controller.config.controller.state_dir).glob("journal.sqlite*"):
                journal.unlink()
            controller = Controller(load_config(tmp_path / "line.toml"), api_port=port)
            task = await start(controller)
            await expect(state).to_have_text("NORMAL", timeout=UI_TIMEOUT_MS)
            await expect(page.locator("#who-text")).to_have_text("viewer (no login)", timeout=UI_TIMEOUT_MS)
            await expect(page.locator("#link")).not_to_contain_text("no answer")
            controller.events.add("controller", "test", "after the restart")
            await expect(events).to_contain_text("after the restart", timeout=UI_TIMEOUT_MS)
            await expect(events).not_to_contain_text("before the restart")
            assert errors == []
    finally:
        if task is not None:
            await stop(controller, task)


XSS = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'


async def test_hostile_text_in_users_reasons_and_events_is_shown_as_text_never_run(tmp_path, rig, model):
    """User names, reasons and event texts reach the page from anyone with a token: they are put
    in with textContent, so markup shows as typed and no script of theirs runs (CSP aside)."""
    async with hmi_on_the_rig(tmp_path, rig, model) as (controller, base, tokens), chromium() as browser:
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/api/v1/alarms/line_anomaly/shelve",
                                headers={"Authorization": f"Bearer {tokens[Role.OPERATOR]}"},
                                json={"user": XSS[:60], "seconds": 60, "reason": XSS})
            assert r.status == 200, await r.text()
        controller.events.add("alarm", XSS, XSS)
        page = await browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{base}/")
        await expect(page.locator("#events")).to_contain_text(XSS, timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#events")).to_contain_text(XSS[:60])  # the shelving user
        await expect(page.locator('#alarms tr[data-alarm="line_anomaly"]')).to_contain_text(XSS[:60])
        assert await page.locator("main img, main script, #banners img, #banners script").count() == 0
        assert await page.evaluate("window.pwned") is None and errors == []
        # Should a change ever put text in as HTML, the browser refuses it (Trusted Types).
        refused = await page.evaluate("""() => { try { document.body.innerHTML = "<b>x</b>"; return false; }
                                                 catch (e) { return e instanceof TypeError; } }""")
        assert refused


async def test_a_session_ended_on_the_controller_shows_as_ended_after_a_refused_change(tmp_path, rig, model):
    """Was: a session that ended on the controller (expiry after a shift, a login elsewhere)
    left the page showing `ann (operator)` with its buttons enabled; every ack failed with 401."""
    async with hmi_on_the_rig(tmp_path, rig, model) as (controller, base, tokens), chromium() as browser:
        await jam(rig)
        context = await browser.new_context(viewport=VIEWPORT)
        page = await context.new_page()
        await page.goto(f"{base}/")
        await log_in(page, "ann", tokens[Role.OPERATOR])
        row = page.locator('#alarms tr[data-alarm="line_anomaly"]')
        await expect(row.locator('button[data-op="ack"]')).to_be_enabled(timeout=UI_TIMEOUT_MS)
        # The session ends on the controller, not in this page (as at its expiry).
        cookie = {"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in await context.cookies())}
        async with aiohttp.ClientSession(headers=cookie) as other:
            csrf = (await (await other.get(f"{base}/api/v1/session")).json())["csrf"]
            r = await other.post(f"{base}/api/v1/session/logout", headers={CSRF_HEADER: csrf})
            assert r.status == 200, await r.text()
        await row.locator('button[data-op="ack"]').click()
        await page.fill("#op-reason", "checked")
        await page.click("#op-submit")
        await expect(page.locator("#op-error")).to_contain_text("log in", timeout=UI_TIMEOUT_MS)
        await expect(page.locator("#who-text")).to_have_text("viewer (no login)", timeout=UI_TIMEOUT_MS)
        await page.click("#op-cancel")
        await expect(row.locator('button[data-op="ack"]')).to_be_disabled(timeout=UI_TIMEOUT_MS)

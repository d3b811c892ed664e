"""Operator requests on the real controller over its real API socket: what a shelve or an inhibit
disables is said, a reason is required, `shelvable = false` refuses, the standing "protections
disabled" indication (status, /metrics), and what a restart restores is announced.

The PLCs of the config point at closed ports (no plant is needed: these are operator paths).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import aiohttp
import pytest

from controller.config import load_config
from controller.runtime import Controller
from controller.statedir import ENGINEER_TOKEN_FILE, STATE_FILE
from hil_tests.rig.service_process import closed_ports_config


def line_config(tmp_path: Path, model: Path) -> Path:
    """The demo config on closed ports (rig.service_process), with stop_line_failed not shelvable."""
    path = closed_ports_config(tmp_path, model)
    text, n = re.subn(r'^name = "stop_line_failed"$', 'name = "stop_line_failed"\nshelvable = false',
                      path.read_text(), flags=re.M)
    assert n == 1
    path.write_text(text)
    return path


class Api:
    """The controller running in this loop, and an HTTP client for its API."""

    def __init__(self, controller: Controller, http: aiohttp.ClientSession) -> None:
        self.controller, self.http = controller, http
        self.base = f"http://127.0.0.1:{controller.api_port}"
        # the engineer's token: these tests reach every request, reset and inhibit included
        self.auth = {"Authorization": f"Bearer {controller.state_dir.token(ENGINEER_TOKEN_FILE)}"}

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        async with self.http.post(f"{self.base}/api/v1{path}", json=body, headers=self.auth) as r:
            return r.status, await r.json()

    async def get(self, path: str) -> dict:
        async with self.http.get(f"{self.base}/api/v1{path}", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def metrics(self) -> str:
        async with self.http.get(f"{self.base}/metrics", headers=self.auth) as r:
            return await r.text()


async def running(config_path: Path):
    controller = Controller(load_config(config_path), api_port=0)
    ready = asyncio.Event()
    task = asyncio.create_task(controller.run(on_ready=lambda _: ready.set()))
    await asyncio.wait_for(asyncio.shield(ready.wait()), 15)
    return controller, task


async def stopped(controller: Controller, task: asyncio.Task) -> None:
    controller.stop()
    await asyncio.wait_for(task, 15)


@pytest.fixture
async def api(tmp_path, model):
    controller, task = await running(line_config(tmp_path, model))
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(controller, http)
    finally:
        await stopped(controller, task)


def live_view(controller: Controller) -> str:
    """The demo's live view of this controller, as text."""
    from rich.console import Console

    from hil_tests.rig.demo import DemoLog, render

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(controller, DemoLog()))
    return console.export_text()


def saved(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / STATE_FILE).read_text())


async def test_shelving_an_alarm_that_drives_an_action_says_what_it_disables(api, tmp_path):
    status, body = await api.post("/alarms/line_anomaly/shelve", {"user": "ann", "seconds": 600})
    assert status == 400 and "reason is required" in body["error"] and "\n" not in body["error"]
    assert (await api.get("/status"))["protections_disabled"] == []

    status, body = await api.post("/alarms/line_anomaly/shelve",
                                  {"user": "ann", "seconds": 600, "reason": "sensor swap"})
    assert status == 200, body
    assert body["disables"] == ["stop_line"] and body["state"] == "SHELVED"
    assert body["warning"].startswith("shelving line_anomaly disables action stop_line (writes "
                                      "conveyor_line_stop=True when line_anomaly is active)")
    # durable before the 200: the state file already says so
    assert saved(tmp_path)["alarms"]["alarms"]["line_anomaly"]["shelved_by"] == "ann"
    assert saved(tmp_path)["reasons"]["alarm:line_anomaly"] == "sensor swap"

    disabled = (await api.get("/status"))["protections_disabled"]
    assert [(p["kind"], p["action"], p["alarm"], p["reason"]) for p in disabled] == [
        ("shelved", "stop_line", "line_anomaly", "sensor swap")]
    assert "stop_line disabled: line_anomaly shelved until" in disabled[0]["message"]
    text = await api.metrics()
    assert "linesentry_protections_disabled 1.0" in text
    assert 'linesentry_action_disabled{action="stop_line",kind="shelved"} 1.0' in text
    event = [e for e in await api.get("/events") if e["source"] == "line_anomaly"][-1]
    assert event["message"] == "NORMAL -> SHELVED (shelve): sensor swap" and event["user"] == "ann"

    # an alarm that drives nothing: no warning, no standing indication
    status, body = await api.post("/alarms/oil_temp_high/shelve", {"seconds": 60, "reason": "known"})
    assert status == 200 and body["disables"] == [] and body["warning"] == ""
    assert len((await api.get("/status"))["protections_disabled"]) == 1

    status, body = await api.post("/alarms/line_anomaly/unshelve", {"user": "ann"})
    assert status == 200 and body["state"] == "NORMAL"
    assert (await api.get("/status"))["protections_disabled"] == []
    assert "linesentry_protections_disabled 0.0" in await api.metrics()


async def test_a_non_shelvable_alarm_cannot_be_shelved_or_taken_out_of_service(api):
    for path, body in (("/alarms/stop_line_failed/shelve", {"seconds": 60, "reason": "test"}),
                       ("/alarms/stop_line_failed/out-of-service", {"enabled": True, "reason": "test"}),
                       # the controller's own safe-state failure alarm is never shelvable either
                       ("/alarms/press_safe_state_failed/shelve", {"seconds": 60, "reason": "test"})):
        status, answer = await api.post(path, body)
        assert status == 409, answer
        assert "shelvable = false" in answer["error"] and "\n" not in answer["error"]
    assert api.controller.alarms.state("stop_line_failed") == "NORMAL"
    # out of service needs a reason too, and says what it disables
    status, answer = await api.post("/alarms/line_anomaly/out-of-service", {"enabled": True})
    assert status == 400 and "reason is required" in answer["error"]
    status, answer = await api.post("/alarms/line_anomaly/out-of-service",
                                    {"enabled": True, "reason": "detector retrofit"})
    assert status == 200 and answer["disables"] == ["stop_line"]
    assert "taking line_anomaly out of service disables action stop_line" in answer["warning"]
    kinds = [p["kind"] for p in (await api.get("/status"))["protections_disabled"]]
    assert kinds == ["out_of_service"]


async def test_inhibit_and_reset_need_a_reason_and_inhibit_says_what_it_disables(api, tmp_path):
    status, body = await api.post("/actions/stop_line/inhibit", {"enabled": True})
    assert status == 400 and "reason is required to inhibit stop_line" in body["error"]
    status, body = await api.post("/actions/stop_line/reset", {"user": "ann"})
    assert status == 400 and "reason is required to reset stop_line" in body["error"]

    status, body = await api.post("/actions/stop_line/inhibit",
                                  {"user": "ann", "enabled": True, "reason": "belt maintenance"})
    assert status == 200 and body["disables"] == ["stop_line"]
    assert body["warning"].startswith("inhibiting stop_line disables action stop_line")
    assert saved(tmp_path)["actions"]["actions"]["stop_line"]["inhibited"] is True
    disabled = (await api.get("/status"))["protections_disabled"]
    assert [(p["kind"], p["by"], p["reason"]) for p in disabled] == [("inhibited", "ann", "belt maintenance")]
    assert 'linesentry_action_disabled{action="stop_line",kind="inhibited"} 1.0' in await api.metrics()
    view = live_view(api.controller)  # the demo's live view shows it too
    assert "PROTECTIONS DISABLED: 1\n  stop_line inhibited by ann (belt maintenance)" in view

    status, body = await api.post("/actions/stop_line/inhibit", {"user": "ann", "enabled": False})
    assert status == 200 and body["disables"] == []  # lifting an inhibit needs no reason
    assert saved(tmp_path)["actions"]["actions"]["stop_line"]["inhibited"] is False
    status, body = await api.post("/actions/stop_line/reset", {"user": "ann", "reason": "checked"})
    assert status == 200 and body["changed"] is False  # never latched: a no-op that says so
    assert body["message"] == "stop_line is not latched: nothing to reset"
    assert (await api.get("/status"))["protections_disabled"] == []


async def with_saved_state(tmp_path: Path, model: Path) -> Path:
    """Run the controller once to leave a real state file: stop_line inhibited, oil_temp_high shelved."""
    path = line_config(tmp_path, model)
    controller, task = await running(path)
    try:
        controller.inhibit_action("stop_line", "ann", True, "belt maintenance")
        controller.shelve("oil_temp_high", "bob", 3600, "known drift")
        await controller.persist()
    finally:
        await stopped(controller, task)
    return path


async def test_a_refused_model_reload_is_a_422_and_the_running_model_stays(api, tmp_path, model):
    before = api.controller.detector
    status, body = await api.post("/model/reload", {"user": "ann", "path": str(tmp_path / "missing.npz")})
    assert status == 422 and "missing.npz" in body["error"], body
    assert api.controller.detector is before
    status, body = await api.post("/model/reload", {"user": "ann", "path": str(model)})
    assert status == 200 and body["model"] == str(model)
    assert api.controller.detector is not before
    assert f"model reloaded from {model}" in [e["message"] for e in api.controller.events.since()]


async def test_a_restart_announces_what_the_saved_state_restores(tmp_path, model):
    path = await with_saved_state(tmp_path, model)
    async with Controller(load_config(path), api_port=0) as again:  # the saved state is read at start
        assert _matches(again.restored), again.restored
        events = [e for e in again.events.since() if e.get("result") == "restored"]
        assert [e["message"] for e in events] == again.restored
        assert {e["kind"] for e in events} == {"alarm", "action"}
        status = again.status()
        assert status["restored"] == again.restored
        assert [p["kind"] for p in status["protections_disabled"]] == ["inhibited"]


def _matches(restored: list[str]) -> bool:
    """The two announcements, the shelve expiry being a local ISO time."""
    return (len(restored) == 2
            and re.fullmatch(r"restored: oil_temp_high shelved by bob until \d{4}-\d\d-\d\d "
                             r"\d\d:\d\d:\d\d \(known drift\)", restored[0]) is not None
            and restored[1] == "restored: stop_line inhibited by ann (belt maintenance)")

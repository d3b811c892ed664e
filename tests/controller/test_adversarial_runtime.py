"""Adversarial review of the split runtime: what a hostile plant or operator found, each a test that
failed before its fix. The controller ones run the real service (API socket, state files, outbox)
with the PLC on a closed port; the write ones drive `Writes` over a fake driver (pure logic)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import aiohttp
import numpy as np
import pytest

from controller.actions import WriteRequest
from controller.alarms import AlarmEvent
from controller.config import load_config
from controller.runtime import Controller
from controller.statedir import ENGINEER_TOKEN_FILE, STATE_FILE
from drivers.base import ConnectionState
from tests.controller.test_operations import (
    line_config,
    running,
    stopped,
)
from tests.controller.test_runtime_lifecycle import SYNC, line, listening, other_tasks
from tests.controller.test_writes import FakeDriver, fire, parts, results


def saved(tmp_path) -> dict:
    return json.loads((tmp_path / "state" / STATE_FILE).read_text())


def save_an_open_window(tmp_path) -> None:
    """The state file a shutdown leaves: an open summary window with one step in it."""
    c = Controller(load_config(line(tmp_path, SYNC)), api_port=0)
    c.line.fresh[:] = 1
    n = len(c.tag_names)
    c.pipeline.summarizer.update(time.time(), c.line.values, c.line.fresh, c.line.quality, 0.1, False,
                                 np.zeros(n))
    c.state_dir.create()
    c.state_dir.save_state(c.keeper.durable_state(summary=True))
    assert "summary" in saved(tmp_path)


async def test_a_start_that_fails_after_the_restore_keeps_the_saved_summary_window(tmp_path):
    """Was: restore rewrote the state file without the window before the API bound; a taken port
    then lost the window's samples for good (the next start had nothing to resume)."""
    save_an_open_window(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        c = Controller(load_config(line(tmp_path, SYNC)), api_port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await c.start()
    assert "summary" in saved(tmp_path), "a failed start threw the saved window away"
    assert other_tasks() == set()
    async with Controller(load_config(line(tmp_path, SYNC)), api_port=0):
        assert "summary" not in saved(tmp_path), "a started controller must take the window once"


async def test_every_event_of_a_burst_just_before_stop_reaches_the_outbox(tmp_path):
    """Was: the final flush fed one `EventLog.since` page (1,000 events): the rest of a burst of
    alarm transitions, and the 'stopped' event, never reached the cloud."""
    c = Controller(load_config(line(tmp_path, SYNC)), api_port=0)
    await c.start()
    outbox = c.cloud.outbox
    sent: list[str] = []
    append = outbox.append

    def counting(records):
        sent.extend(r.fields.get("message", "") for r in records if r.measurement == "linesentry_event")
        return append(records)

    outbox.append = counting  # observe what the feed hands over (an instance attribute, no patching)
    await c.housekeeping.flush()
    sent.clear()
    c.journal.put([AlarmEvent(time.time(), f"a{k}", "NORMAL", "UNACK", "condition") for k in range(1500)])
    await c.aclose()
    burst = [m for m in sent if m == "NORMAL -> UNACK (condition)"]
    assert len(burst) == 1500 and sent[-1] == "stopped", (len(burst), sent[-1:])


async def test_a_connection_loss_is_logged_after_the_alarm_transitions_before_it(tmp_path):
    """Was: PLC health added its events directly while the step's transitions still sat in the
    journal: the event log read 'connection lost' before the alarm that happened first."""
    c = Controller(load_config(line(tmp_path)), api_port=0)
    (plc,) = c.plcs
    c.journal.put([AlarmEvent(time.time(), "pressure_high", "NORMAL", "UNACK", "condition")])
    c.health.on_state(plc, ConnectionState.BACKOFF, "reset by peer")
    kinds = [e["kind"] for e in c.events.since()]
    assert kinds == ["alarm", "driver"], kinds


class BrokenDriver(FakeDriver):
    """A driver whose write fails with something that is not a DriverError (a bug, a bad value)."""

    async def write(self, tag: str, value: float) -> None:
        raise ValueError(f"{tag}: cannot encode {value}")


async def test_a_write_that_raises_an_unexpected_error_still_fails_the_action():
    """Was: only DriverError/OSError/TimeoutError were caught; anything else ended the write task
    unseen, and the action stayed 'fired' for ever (no confirmation, no failure, no event)."""
    actions, journal, writes, _ = parts(BrokenDriver())
    writes.issue(fire(actions, journal))
    await writes.finish()
    assert actions.has_failed("stop_line")
    assert results(journal) == [("stop_line", "fired"), ("stop_line", "failed")]
    assert "ValueError" in journal.events.since()[-1]["message"]


async def test_a_write_still_hanging_at_stop_is_cancelled_and_recorded_as_failed():
    """Was: `finish` waited its timeout and returned, leaving the write task running after the
    controller had stopped, and the action without a result."""
    driver = FakeDriver(delay=60)
    actions, journal, writes, failed = parts(driver)
    writes.issue(fire(actions, journal) + [WriteRequest("safe_state:press", "valve", False, 1.0, None)])
    await asyncio.sleep(0.01)
    await writes.finish(timeout_s=0.1)
    assert writes.in_flight == 0 and other_tasks() == set()
    assert sorted(results(journal)) == [("safe_state:press", "failed"), ("stop_line", "failed"),
                                        ("stop_line", "fired")]
    assert failed == ["press"]
    assert "stopped" in journal.events.since()[-1]["message"]


async def test_stop_twice_and_aclose_twice_are_harmless(tmp_path):
    c = Controller(load_config(line(tmp_path)), api_port=0)
    await c.start()
    port = c.api_port
    c.stop()
    c.stop()
    await c.aclose()
    await c.aclose()
    assert not listening(port) and other_tasks() == set()
    assert [e["message"] for e in c.events.since()].count("stopped") == 1


async def test_async_with_exit_on_an_exception_closes_everything_and_keeps_the_exception(tmp_path):
    with pytest.raises(KeyError, match="operator"):
        async with Controller(load_config(line(tmp_path)), api_port=0) as c:
            port = c.api_port
            raise KeyError("operator")
    assert not listening(port) and other_tasks() == set()
    assert "stopped" in [e["message"] for e in c.events.since()]


# ---- the operations facade over the real API ----------------------------------------------------

ENDPOINTS = ["alarms/{}/ack", "alarms/{}/shelve", "alarms/{}/unshelve", "alarms/{}/out-of-service",
             "actions/{}/reset", "actions/{}/inhibit"]
NAMES = ["oil_temp_high", "stop_line", "stop_line_failed", "no_such", "ünïcødé_ālarm", "x" * 5000, "%2F..%2F",
         "press_safe_state_failed", "a b", "..", "%00"]
BODIES = [{}, {"user": 5}, {"user": "ann", "reason": ["x"]}, {"user": "ann", "reason": "maintenance"},
          {"user": "ann", "reason": "maintenance", "seconds": 60, "enabled": True},
          {"user": "ann", "reason": "maintenance", "seconds": "60", "enabled": "yes"},
          {"user": "ann", "reason": "maintenance", "enabled": False, "seconds": 1e-300},
          {"user": "\u200b", "reason": "\u200b\u200b"}, {"user": "ann", "reason": "r" * 10_000},
          {"user": "ann", "reason": "maintenance", "seconds": 60, "enabled": 1}]


async def test_every_operator_request_answers_its_documented_status_never_a_500(
        tmp_path, model, caplog):  # noqa: F811
    """Every endpoint x name x body on the real controller: 200, 400 (bad request), 404 (unknown),
    409 (refused in this state) or 422, always one line of JSON; never a 500 or a logged failure."""
    controller, task = await running(line_config(tmp_path, model))
    seen: dict[int, int] = {}
    bad: list[str] = []
    try:
        auth = {"Authorization": f"Bearer {controller.state_dir.token(ENGINEER_TOKEN_FILE)}"}
        base = f"http://127.0.0.1:{controller.api_port}/api/v1/"
        async with aiohttp.ClientSession() as http:
            with caplog.at_level(logging.ERROR):
                for endpoint in ENDPOINTS:
                    for name in NAMES:
                        for body in BODIES:
                            async with http.post(base + endpoint.format(name), json=body, headers=auth) as r:
                                text = await r.text()
                            seen[r.status] = seen.get(r.status, 0) + 1
                            error = json.loads(text).get("error", "") if text.startswith("{") else text
                            if r.status not in (200, 400, 404, 409, 422) or "\n" in error:
                                what = f"{endpoint.format(name[:20])} {str(body)[:80]}"
                                bad.append(f"{r.status} {what}: {error[:200]}")
    finally:
        await stopped(controller, task)
    assert bad == [], "\n".join(bad[:20])
    assert not [r for r in caplog.records if r.name.startswith("controller.api")], caplog.text[:2000]
    assert {200, 400, 404, 409} <= set(seen), seen


async def test_a_state_save_that_failed_is_retried_by_the_next_round(tmp_path):
    """Was: `save` cleared the dirty flag before writing; a failed write (disk full, a folder in
    the way) left the change unsaved until some other change or the stop."""
    from controller.housekeeping import HOUSEKEEPING_S
    from hil_tests.rig.net import wait_for

    c = Controller(load_config(line(tmp_path)), api_port=0)
    await c.start()
    try:
        blocker = tmp_path / "state" / STATE_FILE
        if blocker.exists():
            blocker.unlink()
        blocker.mkdir()
        (blocker / "x").write_text("")
        c.journal.put([AlarmEvent(time.time(), "pressure_high", "NORMAL", "UNACK", "condition")])
        rounds = c.housekeeping_rounds
        await wait_for(lambda: c.housekeeping_rounds > rounds + 2, 10, what="housekeeping rounds")
        (blocker / "x").unlink()
        blocker.rmdir()
        await wait_for(lambda: blocker.is_file(), 20 * HOUSEKEEPING_S + 5, what="the state saved again")
        leftovers = list(blocker.parent.glob("*.tmp"))  # no save is under way once the change is on disk
        assert not leftovers, f"failed saves left temp files behind: {leftovers}"
    finally:
        await c.aclose()


async def test_a_stop_during_start_ends_the_run_cleanly(tmp_path):
    """SIGTERM (stop) while start is still bringing parts up: run returns once they are up, then
    tears everything down; nothing is left."""
    c = Controller(load_config(line(tmp_path)), api_port=0)
    task = asyncio.create_task(c.run())
    await asyncio.sleep(0)  # start has begun
    c.stop()
    await asyncio.wait_for(task, 20)
    assert other_tasks() == set()
    assert not c.api_port or not listening(c.api_port)
    assert [e["message"] for e in c.events.since()][-1] == "stopped"


async def test_a_second_start_while_the_first_is_under_way_is_refused(tmp_path):
    """Was: `start` marked the controller running only at its end, so two overlapping starts both
    bound an API and started every PLC session twice."""
    from controller.errors import Refused

    c = Controller(load_config(line(tmp_path)), api_port=0)
    first = asyncio.create_task(c.start())
    await asyncio.sleep(0)
    with pytest.raises(Refused):
        await c.start()
    await first
    await c.aclose()
    assert other_tasks() == set()


async def test_shelving_an_alarm_out_of_service_is_a_409_refusal(tmp_path, model):  # noqa: F811
    """Was 400: AlarmRefused(AlarmError, Refused) took BadRequest's status first in its MRO, so the
    API answered a refusal in the current state as if the request itself were malformed."""
    controller, task = await running(line_config(tmp_path, model))
    try:
        auth = {"Authorization": f"Bearer {controller.state_dir.token(ENGINEER_TOKEN_FILE)}"}
        base = f"http://127.0.0.1:{controller.api_port}/api/v1/alarms/oil_temp_high/"
        body = {"user": "ann", "reason": "maintenance"}
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "out-of-service", json={**body, "enabled": True}, headers=auth) as r:
                assert r.status == 200, await r.text()
            async with http.post(base + "shelve", json={**body, "seconds": 60}, headers=auth) as r:
                answer = await r.json()
        assert r.status == 409, answer
        assert "out of service" in answer["error"]
    finally:
        await stopped(controller, task)


async def test_an_operator_change_that_cannot_be_saved_says_so_with_a_503(tmp_path, model, caplog):  # noqa: F811
    """Was: a 500 'internal error: OSError' and an API failure in the log, although the change was
    in effect: the operator could not tell it from a refused request."""
    controller, task = await running(line_config(tmp_path, model))
    blocker = tmp_path / "state" / STATE_FILE
    try:
        if blocker.exists():
            blocker.unlink()
        blocker.mkdir()
        (blocker / "x").write_text("")
        auth = {"Authorization": f"Bearer {controller.state_dir.token(ENGINEER_TOKEN_FILE)}"}
        url = f"http://127.0.0.1:{controller.api_port}/api/v1/actions/stop_line/inhibit"
        async with aiohttp.ClientSession() as http:
            with caplog.at_level(logging.ERROR, logger="controller.api"):
                body = {"user": "ann", "reason": "belt work", "enabled": True}
                async with http.post(url, json=body, headers=auth) as r:
                    answer = await r.json()
        assert r.status == 503 and "in effect but not saved" in answer["error"], answer
        assert controller.actions.status()[0]["inhibited"] is True
        assert not [rec for rec in caplog.records if rec.name == "controller.api"]
    finally:
        (blocker / "x").unlink()
        blocker.rmdir()
        await stopped(controller, task)

"""The controller's lifecycle over real sockets: a constructor without I/O, a start that undoes
itself when a later step fails (no API port left open, no task left running), a teardown that
logs a failing step and still runs the others. The PLC points at a closed port."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from controller.config import load_config
from controller.runtime import Controller
from controller.statedir import STATE_FILE

LINE = """
[controller]
site = "test"
line = "life"
state_dir = "{state}"

[[modbus]]
name = "press"
host = "127.0.0.1"
port = {port}
poll_interval_s = 0.1
  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  dtype = "uint16"
  address = 0
"""

SYNC = """
[sync]
url = "http://127.0.0.1:9"
org = "o"
bucket = "b"
token_env = "LINESENTRY_TEST_TOKEN"
enabled = false
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def line(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "line.toml"
    path.write_text(LINE.format(state=tmp_path / "state", port=closed_port()) + extra)
    return path


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_the_constructor_does_no_io(tmp_path):
    Controller(load_config(line(tmp_path)), api_port=0)
    assert not (tmp_path / "state").exists()
    assert other_tasks() == set()


async def test_async_with_serves_the_api_and_closes_it(tmp_path):
    async with Controller(load_config(line(tmp_path)), api_port=0) as c:
        port = c.api_port
        assert listening(port) and (tmp_path / "state" / "api-token").exists()
        assert c.events.since()[-1]["kind"] == "controller"  # lifecycle events are not "model"
    assert not listening(port)
    assert other_tasks() == set()
    assert [e["message"] for e in c.events.since()][-1] == "stopped"
    assert (tmp_path / "state" / STATE_FILE).exists()


async def test_a_start_that_fails_after_the_api_is_up_closes_the_port(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox").write_text("a file where the outbox folder goes")  # the step after the API
    c = Controller(load_config(line(tmp_path, SYNC)), api_port=0)
    with pytest.raises(FileExistsError):
        await c.start()
    assert c.api_port != 0  # the API was bound before the failing step
    assert not listening(c.api_port)
    assert other_tasks() == set()
    assert not (state / STATE_FILE).exists()  # nothing started, so nothing saved over the old state


async def test_teardown_logs_a_failing_step_and_runs_the_others(tmp_path, caplog):
    c = Controller(load_config(line(tmp_path)), api_port=0)
    await c.start()
    port = c.api_port
    (tmp_path / "state" / STATE_FILE).mkdir(parents=True)  # the final save cannot replace a folder
    (tmp_path / "state" / STATE_FILE / "x").write_text("")
    with caplog.at_level(logging.ERROR, logger="controller.runtime"):
        await c.aclose()
    failures = [r.getMessage() for r in caplog.records if r.name == "controller.runtime"]
    assert len(failures) == 1 and failures[0].startswith("stop: saving the state failed"), failures
    assert not listening(port)  # the API step ran after the failing one
    assert other_tasks() == set()


async def test_run_returns_after_stop_and_a_second_start_is_refused_while_running(tmp_path):
    from controller.errors import Refused

    c = Controller(load_config(line(tmp_path)), api_port=0)
    refusals: list[str] = []

    async def ready(controller: Controller) -> None:
        try:
            await controller.start()
        except Refused as exc:
            refusals.append(str(exc))
        controller.stop()

    await asyncio.wait_for(c.run(on_ready=lambda ctl: asyncio.ensure_future(ready(ctl))), 20)
    assert refusals == ["the controller is already running"]


def test_a_modbus_plcs_tags_have_their_own_stale_timeout(tmp_path):
    """Modbus polls every tag every cycle (driver.polled): its tags go STALE on their own age."""
    c = Controller(load_config(line(tmp_path)), api_port=0)
    (plc,) = c.plcs
    assert plc.polled
    assert c.housekeeping.stale_timeout.tolist() == [plc.stale_timeout_s]

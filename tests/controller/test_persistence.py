"""A saved state that parses but is malformed, or that shelves a non-shelvable alarm, never stops the
service and never disables a safety alarm; a reason made only of invisible characters is no reason.

The config is the demo's with PLCs on closed ports (restore and operator paths need no plant).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from controller.config import load_config
from controller.errors import BadRequest
from controller.runtime import Controller
from controller.statedir import STATE_FILE
from tests.controller.test_operations import (
    line_config,
    running,
    stopped,
    with_saved_state,
)


async def saved_state(tmp_path: Path, model: Path) -> tuple[Path, dict]:
    path = await with_saved_state(tmp_path, model)
    return path, json.loads((tmp_path / "state" / STATE_FILE).read_text())


def oil(s: dict) -> dict:
    return s["alarms"]["alarms"]["oil_temp_high"]


MALFORMED = {
    "missing field": lambda s: oil(s).pop("active"),
    "entry is text": lambda s: s["alarms"]["alarms"].__setitem__("oil_temp_high", "x"),
    "shelved_until text": lambda s: oil(s).__setitem__("shelved_until", "tomorrow"),
    "shelved_until 1e300": lambda s: oil(s).__setitem__("shelved_until", 1e300),
    "latched text": lambda s: s["actions"]["actions"]["stop_line"].__setitem__("latched", "yes"),
    "heartbeat text": lambda s: s.__setitem__("heartbeats", {"press": "abc"}),
    "reasons a list": lambda s: s.__setitem__("reasons", ["x"]),
}


@pytest.mark.parametrize("edit", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_state_file_starts_clean_loudly_and_is_kept(tmp_path, model, edit):
    path, state = await saved_state(tmp_path, model)
    edit(state)
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(state))
    async with Controller(load_config(path), api_port=0) as again:  # must not raise
        (note,) = again.restored
        assert note.startswith("saved state unusable") and "NOT restored" in note
        assert again.status()["protections_disabled"] == []  # a clean start: nothing inhibited
        assert list((tmp_path / "state").glob(f"{STATE_FILE}.damaged-*"))  # kept for a human


async def test_a_non_shelvable_alarm_is_never_restored_shelved(tmp_path, model):
    path, state = await saved_state(tmp_path, model)
    state["alarms"]["alarms"]["stop_line_failed"].update(shelved_until=4e9, shelved_by="edit", oos=True)
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(state))
    async with Controller(load_config(path), api_port=0) as again:
        states = {a["name"]: a["state"] for a in again.alarm_list()}
        restored = again.restored
    assert states["stop_line_failed"] not in ("SHELVED", "OUT_OF_SERVICE")
    pattern = r"restored: stop_line_failed was shelved .* not shelvable"
    assert any(re.match(pattern, r) for r in restored)
    assert states["oil_temp_high"] == "SHELVED"  # a shelvable alarm keeps its shelve


@pytest.mark.parametrize("reason", ["", "   ", "\u200b\u200b", "\x00\x01\x7f", "\u2028\t"])
async def test_a_reason_of_invisible_characters_is_refused(tmp_path, model, reason):
    controller = Controller(load_config(line_config(tmp_path, model)), api_port=0)
    with pytest.raises(BadRequest, match="a reason is required"):
        controller.shelve("oil_temp_high", "ann", 60, reason)


async def test_with_no_plc_reachable_at_start_the_first_alarm_is_a_comm_loss(tmp_path, model):
    """Tags never heard from are not sensor faults: their `_bad` alarms stay quiet until (and are
    then suppressed by) their PLC's comm loss, which is the first out."""

    def raised() -> list[str]:
        return [e["source"] for e in controller.events.since()
                if e["kind"] == "alarm" and e.get("state") == "UNACK"]

    controller, task = await running(line_config(tmp_path, model))
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while sum(name.endswith("comm_loss") for name in raised()) < len(controller.plcs):
            assert asyncio.get_running_loop().time() < deadline, f"no comm-loss alarms in 15 s: {raised()}"
            await asyncio.sleep(0.05)
    finally:
        await stopped(controller, task)
    names = raised()
    assert names[0].endswith("comm_loss"), names  # the first out
    assert all(n.endswith(("comm_loss", "safe_state_failed")) for n in names), names  # no tag alarm

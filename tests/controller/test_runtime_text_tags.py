"""Text tags through the real controller: an OPC UA String node (the project's asyncua test server
over a real socket) is shown in /api/v1/tags with its text, and a detector tag that turns out to
carry text is never fed to the detector as a value: its invalid flag rises, an alarm on it fires,
and one event names the tag and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.net import wait_for
from models.kernels import FLAG_INVALID
from tests.drivers.conftest import free_port
from tests.drivers.opcua_server import NS_URI, TestServer


def line_config(tmp_path: Path, endpoint: str, detector_tags: list[str]) -> Path:
    tags = ", ".join(f'"{t}"' for t in detector_tags)
    path = tmp_path / "line.toml"
    path.write_text(f"""
[controller]
site = "test"
line = "text"
state_dir = "{tmp_path / 'state'}"

[[opcua]]
name = "plc1"
endpoint = "{endpoint}"
timeout_s = 2.0
stale_timeout_s = 5.0

  [[opcua.groups]]
  name = "fast"
  mode = "subscription"
  sampling_interval_ms = 50
  publishing_interval_ms = 50

  [[opcua.tags]]
  name = "temperature"
  group = "fast"
  node = "nsu={NS_URI};s=Line1.Temperature"

  [[opcua.tags]]
  name = "label"
  group = "fast"
  node = "nsu={NS_URI};s=Line1.Label"

[detector]
tags = [{tags}]

[[alarms]]
name = "label_invalid"
source = "tag:{detector_tags[-1]}:invalid"
""")
    return path


def row(controller: Controller, tag: str) -> dict:
    return next(r for r in controller.tags() if r["tag"] == tag)


async def api_tags(controller: Controller) -> dict[str, dict]:
    url = f"http://127.0.0.1:{controller.api_port}/api/v1/tags"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200, await r.text()
        return {t["tag"]: t for t in await r.json()}


async def test_string_tag_is_shown_with_its_text_and_never_reaches_the_detector(tmp_path, caplog):
    server = await TestServer(free_port()).start()
    controller = Controller(load_config(line_config(tmp_path, server.endpoint, ["temperature", "label"])),
                            api_port=0)
    task = await start_controller(controller)
    try:
        await wait_for(lambda: row(controller, "label")["text"] == "hello", what="the String's text")
        tags = await api_tags(controller)
        assert tags["label"]["text"] == "hello" and tags["label"]["value"] is None
        assert tags["label"]["quality"] == "good"
        assert tags["temperature"]["value"] == 21.5 and tags["temperature"]["text"] is None

        # The detector: the text tag is not good in its frame, so its invalid flag (and the alarm
        # on it) rises; the numeric tag beside it stays clean.
        await wait_for(lambda: controller.alarms.state("label_invalid") == "UNACK", what="label_invalid")
        label, temp = controller.detector_tags.index("label"), controller.detector_tags.index("temperature")
        assert controller.detector.tag_flags[label] & FLAG_INVALID
        assert controller.line.frame_good[label] == 0
        assert not controller.detector.tag_flags[temp] & FLAG_INVALID
        said = await wait_for(lambda: [e for e in controller.events.since()
                                       if "carries text" in e["message"]], what="the text-tag event")
        assert "'label'" in said[0]["message"] and "remove it from [detector] tags" in said[0]["message"]

        # A new string arrives and is shown; the mistake is still said only once.
        await server.set_value("Label", "batch 42")
        await wait_for(lambda: row(controller, "label")["text"] == "batch 42", what="the new text")
        assert controller.detector.tag_flags[label] & FLAG_INVALID
        assert len([e for e in controller.events.since() if "carries text" in e["message"]]) == 1
        assert len([r for r in caplog.records if r.levelno == logging.ERROR
                    and "carries text" in r.getMessage()]) == 1
    finally:
        await stop_controller(controller, task)
        await server.stop()


async def test_string_tag_outside_the_detector_raises_nothing(tmp_path):
    server = await TestServer(free_port()).start()
    controller = Controller(load_config(line_config(tmp_path, server.endpoint, ["temperature"])), api_port=0)
    task = await start_controller(controller)
    try:
        await wait_for(lambda: row(controller, "label")["text"] == "hello", what="the String's text")
        await wait_for(lambda: controller.housekeeping_rounds > 3, what="housekeeping rounds")
        assert controller.alarms.state("label_invalid") == "NORMAL"
        assert not [e for e in controller.events.since() if "carries text" in e["message"]]
    finally:
        await stop_controller(controller, task)
        await server.stop()

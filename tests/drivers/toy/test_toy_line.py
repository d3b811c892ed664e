"""The registration proof: a third protocol is its folder plus one `registry.register` line.

A `[[toy]]` table loads through controller.config.load_config (the schema takes its keys from the
toy's config model) and runs in the real Controller (which builds the driver through the
registry): a value read from the toy server over a real socket reaches LineState, and pushing it
past its limit fires the limit alarm. Nothing in controller/ or drivers/ names the toy.
"""

from pathlib import Path

import pytest

from controller.config import load_config
from controller.runtime import Controller
from drivers import registry
from hil_tests.rig.controller_run import start_controller, stop_controller
from hil_tests.rig.net import wait_for
from tests.drivers.toy import PLUGIN
from tests.drivers.toy.server import ToyServer


@pytest.fixture
def toy_registered():
    registry.register(PLUGIN)  # the one registration
    yield
    registry.unregister(PLUGIN.name)


def line_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "toy_line.toml"
    path.write_text(f"""
[controller]
site = "test"
line = "toy"
state_dir = "{tmp_path / 'state'}"

[[toy]]
name = "mixer"
port = {port}
token_env = "LINESENTRY_TEST_TOY_TOKEN"
poll_interval_s = 0.05
stale_timeout_s = 2.0

  [[toy.tags]]
  name = "mixer_speed"

  [[toy.tags]]
  name = "mixer_setpoint"
  writable = true

[detector]
tags = ["mixer_speed"]

  [detector.limits]
  mixer_speed = {{ hi = 100.0 }}

[[alarms]]
name = "mixer_overspeed"
source = "tag:mixer_speed:limit"
priority = "high"
""")
    return path


def value_of(controller: Controller, tag: str):
    return next(r for r in controller.tags() if r["tag"] == tag)["value"]


async def test_a_toy_plc_feeds_the_line_and_raises_its_limit_alarm(tmp_path, toy_registered, monkeypatch):
    monkeypatch.setenv("LINESENTRY_TEST_TOY_TOKEN", "t0k")
    server = await ToyServer({"mixer_speed": 42.0, "mixer_setpoint": 10.0}, writable={"mixer_setpoint"},
                             token="t0k").start()
    config = load_config(line_config(tmp_path, server.port))
    controller = Controller(config, api_port=0)
    task = await start_controller(controller)
    try:
        await wait_for(lambda: value_of(controller, "mixer_speed") == 42.0, what="the toy value in LineState")
        assert controller.alarms.state("mixer_overspeed") == "NORMAL"
        server.values["mixer_speed"] = 130.0
        await wait_for(lambda: controller.alarms.state("mixer_overspeed") == "UNACK", what="the limit alarm")
        assert value_of(controller, "mixer_speed") == 130.0
    finally:
        await stop_controller(controller, task)
        await server.stop()

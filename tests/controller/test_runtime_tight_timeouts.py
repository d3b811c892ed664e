"""A stale_timeout_s shorter than the driver's worst-case liveness gap is said once at start."""

from __future__ import annotations

from pathlib import Path

from controller.config import load_config
from controller.runtime import Controller
from tests.drivers.conftest import free_port


def modbus_line(tmp_path: Path, stale_timeout_s: float) -> Path:
    path = tmp_path / "line.toml"
    path.write_text(f"""
[controller]
site = "test"
line = "tight"
state_dir = "{tmp_path / 'state'}"

[[modbus]]
name = "press"
host = "127.0.0.1"
port = {free_port()}
poll_interval_s = 0.1
timeout_s = 0.5
stale_timeout_s = {stale_timeout_s}

  [[modbus.tags]]
  name = "pressure"
  table = "holding_register"
  dtype = "uint16"
  address = 0
""")
    return path


async def run_and_collect(tmp_path: Path, stale_timeout_s: float) -> list[str]:
    controller = Controller(load_config(modbus_line(tmp_path, stale_timeout_s)), api_port=0)
    await controller.run(on_ready=lambda c: c.stop())  # said at start, whether the PLC answers or not
    return [e["message"] for e in controller.events.since() if "worst-case gap" in e["message"]]


async def test_a_stale_timeout_shorter_than_the_liveness_gap_is_said_once(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    (tight,) = await run_and_collect(tmp_path / "a", 0.3)  # gap: 0.1 s poll + 1 block x 0.5 s
    assert "stale_timeout_s 0.3" in tight and "0.6 s" in tight
    assert await run_and_collect(tmp_path / "b", 2.0) == []

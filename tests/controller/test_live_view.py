"""The demo's live view (hil_tests.rig.demo.render) of a real controller whose PLCs do not answer:
its PLC panel says so (the live view had no PLC panel: a dead PLC showed only as red tags)."""

from __future__ import annotations

import asyncio
import io

from rich.console import Console

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.controller_run import without_model
from hil_tests.rig.demo import DemoLog, render
from hil_tests.rig.demo_config import demo_text
from hil_tests.rig.net import free_port, wait_for


async def test_the_plc_panel_shows_a_plc_that_never_answered(tmp_path):
    text = demo_text(tmp_path / "state", tmp_path / "none.npz",
                     opcua_endpoint=f"opc.tcp://127.0.0.1:{free_port()}/linesentry/",
                     modbus_port=free_port())
    path = tmp_path / "line.toml"
    path.write_text(without_model(text))
    controller = Controller(load_config(path), api_port=0)
    task = asyncio.create_task(controller.run())
    try:
        await wait_for(lambda: all(p["comm_lost"] for p in controller.status()["plcs"]) or task.done(),
                       timeout=30, what="comm loss of both PLCs")
        assert not task.done()
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(render(controller, DemoLog()))
        view = console.export_text()
        rows = [line for line in view.splitlines() if "COMM LOSS" in line]
        assert all(any(name in r for r in rows) for name in ("conveyor", "press")), rows
        assert all("never" in r for r in rows), rows
        assert any("refused" in r or "cannot connect" in r for r in rows), rows  # the last error
    finally:
        controller.stop()
        await asyncio.wait_for(task, 15)

"""End to end over real sockets: a sensor fault on the simulated plant raises the line alarm, and its
event, GET /api/v1/status, GET /api/v1/alarms and `linesentry status` name the faulted tag."""

import io
import re
from pathlib import Path

import aiohttp
import pytest
from rich.console import Console

from controller.cli import status_lines
from controller.config import load_config
from hil_tests.rig.controller_run import make_controller, start_controller, stop_controller
from hil_tests.rig.demo import DemoLog, render
from hil_tests.rig.demo_config import DEMO_CONFIG
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig
from hil_tests.rig.training import simulated_normal
from models import StreamingDetector

FAULTED = "vibration_rms"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The demo detector fitted on ten simulated minutes of normal operation (as hil_tests do)."""
    config = load_config(DEMO_CONFIG)
    tags = config.detector_tags()
    times, rows = simulated_normal(tags, seconds=600.0)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    StreamingDetector(tags, config.detector_spec(), dict(config.detector.units)).fit(rows, times).save(path)
    return path


async def test_a_sensor_fault_is_explained_by_its_tag_in_event_api_and_status(tmp_path, model):
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = make_controller(tmp_path, rig, model)
        task = await start_controller(controller)
        base = f"http://127.0.0.1:{controller.api_port}/api/v1"
        try:
            t0 = rig.plant.t
            await wait_for(lambda: rig.plant.t > t0 + 3, timeout=20, what="3 s of normal operation")
            assert not controller.line_alarm
            seen = controller.events.last_id
            # The served vibration reads +2 mm/s (about +90 %): the physics stays healthy, so only
            # this tag breaks its correlation with the others.
            rig.injector.faults.append(FaultSpec(type="spike", tag=FAULTED, onset_s=rig.plant.t,
                                                 duration_s=8.0, magnitude=2.0))

            def fired():
                return [e for e in controller.events.since(seen) if e["source"] == "line_anomaly"
                        and e.get("state") == "UNACK"]

            await wait_for(lambda: fired(), timeout=10, what="the line alarm's event")
            event = fired()[0]
            assert event["message"].startswith(f"line_anomaly: {FAULTED} +"), event["message"]
            assert event["message"].endswith("NORMAL -> UNACK (condition)")
            why = event["explanation"]
            assert why["top"][0]["tag"] == FAULTED and why["top"][0]["deviation"] > 0
            assert why["component"] in ("tags", "pca_t2", "pca_spe", "iforest") and why["ratio"] > 0

            async with aiohttp.ClientSession() as http:  # loopback reads need no token
                status = await (await http.get(f"{base}/status")).json()
                alarms = {a["name"]: a for a in await (await http.get(f"{base}/alarms")).json()}
            assert status["detector"]["alarm"] is True
            assert status["detector"]["explanation"]["top"][0]["tag"] == FAULTED
            assert alarms["line_anomaly"]["explanation"]["text"] == why["text"]
            assert alarms["line_anomaly"]["explanation"]["top"][0]["tag"] == FAULTED
            assert alarms["motor_current_limit"]["explanation"] is None  # not a line alarm
            shown = [text for text, _ in status_lines(status)]
            assert f"why: {status['detector']['explanation']['text']}" in shown
            console = Console(width=200, record=True, file=io.StringIO())
            console.print(render(controller, DemoLog()))  # the demo's live view
            view = console.export_text()
            assert f"why: line_anomaly: {FAULTED} +" in view
            assert re.search(r"motor_current\W+[-\d.e+]+ A\W", view), view  # with its unit
            assert re.search(r"conveyor_line_stop\W+(on|off)\W", view), view  # a bit: never 1.000
        finally:
            await stop_controller(controller, task)

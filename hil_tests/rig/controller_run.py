"""Run scenarios against the real controller on the demo config and judge them.

    linesentry hil hil_tests/rig/scenarios/jam.toml --runs 5 --json report.json

Each run starts the simulated plant (free ports), points a copy of the demo
config at it, runs the controller for the scenario's duration and hands the
controller's alarm activations and the rig's ground truth (fault onsets,
actuator writes at the PLC) to `Report`: detection delay, actuation latency,
false alarms and missed faults.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from controller.config import load_config
from controller.runtime import Controller
from hil_tests.rig.recorder import Report
from hil_tests.rig.runner import run_scenario
from hil_tests.rig.scenario import Scenario
from hil_tests.rig.servers import Rig

DEMO = Path(__file__).with_name("demo_line.toml")  # configs/demo_line.toml, shipped in the wheel


def config_for_rig(rig: Rig, state_dir: Path, model: Path, path: Path, template: Path = DEMO) -> Path:
    """A copy of the demo config pointed at this rig's ports, a private state dir and `model`."""
    text = template.read_text()
    text = text.replace('endpoint = "opc.tcp://127.0.0.1:4840/linesentry/"',
                        f'endpoint = "{rig.opcua_endpoint}"')
    text = re.sub(r"^port = 5020$", f"port = {rig.modbus_port}", text, flags=re.M)
    text = text.replace('state_dir = "../state/demo_line"', f'state_dir = "{state_dir}"')
    text = text.replace('model = "../state/demo_line/model.npz"', f'model = "{model}"')
    path.write_text(text)
    return path


async def run_with_controller(scenario: Scenario, model: Path, runs: int | None = None,
                              report: Report | None = None) -> Report:
    report = report or Report()
    for run_index in range(runs or scenario.repeat):
        with tempfile.TemporaryDirectory() as d:
            holder: dict[str, Controller] = {}

            async def during(rig: Rig, tmp: Path = Path(d), holder: dict = holder) -> None:
                config = load_config(config_for_rig(rig, tmp / "state", model, tmp / "line.toml"))
                holder["controller"] = controller = Controller(config, api_port=0)
                await controller.run()

            started = time.time()
            run = await run_scenario(scenario, run_index=run_index, during=during)
            controller = holder.get("controller")
            alarms = [] if controller is None else [
                (e["time"], e["source"]) for e in controller.events.since()
                if e["kind"] == "alarm" and e.get("state") == "UNACK"]
            report.add_run(scenario, run.recorder, alarms, started, clock="wall")
    return report

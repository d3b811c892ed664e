"""Run scenarios against the real controller on the demo config and judge them.

    linesentry hil hil_tests/rig/scenarios/jam.toml --runs 5 --json report.json

Each run starts the simulated plant (free ports), points a copy of the demo
config at it, runs the controller for the scenario's duration and hands the
controller's alarm activations and the rig's ground truth (fault onsets,
actuator writes at the PLC) to `Report`: detection delay, actuation latency,
false alarms and missed faults.
"""

from __future__ import annotations

import asyncio
import csv
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from controller.clock import Clock
from controller.config import load_config
from controller.replay import actuator_tags
from controller.runtime import Controller
from drivers.base import ConnectionState
from hil_tests.rig.demo_config import DEMO_CONFIG, demo_text
from hil_tests.rig.faults import FaultSpec
from hil_tests.rig.net import wait_for
from hil_tests.rig.recorder import Report
from hil_tests.rig.runner import run_scenario
from hil_tests.rig.scenario import Scenario
from hil_tests.rig.servers import Rig


def config_for_rig(rig: Rig, state_dir: Path, model: Path, path: Path, template: Path = DEMO_CONFIG) -> Path:
    """A copy of the demo config at `path`, pointed at this rig's ports, a private state dir and `model`."""
    path.write_text(demo_text(state_dir, model, opcua_endpoint=rig.opcua_endpoint,
                              modbus_port=rig.modbus_port, template=template))
    return path


def make_controller(tmp_path: Path, rig: Rig, model: Path | None, *edits: Callable[[str], str],
                    clock: Clock | None = None) -> Controller:
    """A Controller on the demo config pointed at `rig`, with each of `edits` applied to its TOML text
    (e.g. `without_model`), its state and config in `tmp_path`, its API on a free port."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = config_for_rig(rig, tmp_path / "state", model or tmp_path / "none.npz", tmp_path / "line.toml")
    text = path.read_text()
    for edit in edits:
        text = edit(text)
    path.write_text(text)
    return Controller(load_config(path), api_port=0, clock=clock)


def conveyor_safe_state(text: str) -> str:
    """Demo config edit: losing the conveyor (OPC UA) also stops the line, by the press's coil (Modbus)."""
    old = 'on_comm_loss = "alarm"\nwatchdog = { tag = "conveyor_heartbeat"'
    assert old in text
    return text.replace(
        old,
        'on_comm_loss = "safe_state"\nsafe_state = [{ tag = "line_stop", value = true }]\n'
        'watchdog = { tag = "conveyor_heartbeat"',
    )


def without_model(text: str) -> str:
    """Demo config edit, the commissioning config: no [detector] model, so no line or model-based
    alarms; the line stop is bound to the motor current's hard limit instead."""
    text = re.sub(r"^model = .*\n", "", text, flags=re.M)
    for name in ("line_anomaly", "motor_current_flatline", "vibration_flatline",
                 "hydraulic_pressure_flatline", "stop_line_failed"):
        text, n = re.subn(rf'\[\[alarms\]\]\nname = "{name}"\n(?:.+\n)*\n', "", text)
        assert n == 1, name
    text, n = re.subn(r"\[\[actions\]\]\n(?:.+\n)*", "", text)
    assert n == 1
    return text + (
        '\n[[actions]]\nname = "stop_on_overcurrent"\nalarm = "motor_current_limit"\n'
        'write = { tag = "conveyor_line_stop", value = true }\nlatch = true\n'
    )


async def start_controller(controller: Controller) -> asyncio.Task:
    """Run `controller` in a task and wait until every PLC is connected (or raise its start-up error)."""
    task = asyncio.create_task(controller.run())
    await wait_for(lambda: all(p.state is ConnectionState.CONNECTED for p in controller.plcs)
                   or task.done(), timeout=15, what="every PLC connected")
    if task.done():
        task.result()
    return task


async def stop_controller(controller: Controller, task: asyncio.Task) -> None:
    """Stop it the way SIGTERM does and check that no task of it is left behind."""
    controller.stop()
    await asyncio.wait_for(task, 15)
    names = ("driver:", "watchdog:", "housekeeping", "linesentry-sync")
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith(names)]
    assert leftovers == [], f"tasks left behind: {leftovers}"


async def live(controller: Controller) -> None:
    """Every PLC delivered good data after the controller started."""
    await wait_for(
        lambda: all(p.driver.stats.last_alive > controller.started_mono for p in controller.plcs),
        timeout=15,
        what="good data from every PLC",
    )


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


async def record_controlled_run(out: Path, model: Path, faults: list[FaultSpec], seconds: float,
                                interval_s: float = 0.01) -> Path:
    """Run the real controller on the simulated plant with `faults` (onsets in seconds after the
    start), sampling what it sees every `interval_s`: a `time,<tag>,...` CSV of the detector tags
    and the actuators it writes, for `linesentry replay` (docs/images/replay-annotated.png)."""
    with tempfile.TemporaryDirectory() as d:
        async with Rig(opcua_port=0, modbus_port=0) as rig:
            controller = make_controller(Path(d), rig, model)
            task = await start_controller(controller)
            try:
                await live(controller)
                start = rig.plant.t
                rig.injector.faults.extend(f.model_copy(update={"onset_s": start + f.onset_s})
                                           for f in faults)
                names = controller.detector_tags + actuator_tags(controller.config)
                at = controller.line.binding(names)
                rows = []
                while rig.plant.t < start + seconds:
                    rows.append([time.time(), *controller.line.values[at].tolist()])
                    await asyncio.sleep(interval_s)
            finally:
                await stop_controller(controller, task)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", *names])
        w.writerows([f"{r[0]:.6f}", *(repr(v) for v in r[1:])] for r in rows)
    return out


def main() -> None:
    """python -m hil_tests.rig.controller_run OUT.csv MODEL.npz: 35 s; from 15 s the vibration sensor
    reads 2 mm/s high (the picture of docs/detection.md)."""
    import sys

    out, model = Path(sys.argv[1]), Path(sys.argv[2])
    fault = FaultSpec(type="spike", tag="vibration_rms", onset_s=15.0, duration_s=8.0, magnitude=2.0)
    asyncio.run(record_controlled_run(out, model, [fault], 35.0))


if __name__ == "__main__":
    main()

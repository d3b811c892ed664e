"""Play a scenario in real time against the simulated PLCs and hand back its ground truth.

The controller under test (or a stand-in) runs alongside, reaching the rig through the
endpoints in its config; its alarms go to `Report.add_run` together with the recorder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hil_tests.rig.plant import Plant, PlantParams
from hil_tests.rig.recorder import Recorder
from hil_tests.rig.scenario import Scenario
from hil_tests.rig.servers import OpcUaSecurityOptions, Rig


@dataclass
class Run:
    scenario: Scenario
    recorder: Recorder
    started_mono: float
    rig: Rig


async def run_scenario(
    scenario: Scenario,
    *,
    opcua_port: int = 0,
    modbus_port: int = 0,
    run_index: int = 0,
    security: OpcUaSecurityOptions | None = None,
    during: Callable[[Rig], Awaitable[None]] | None = None,
) -> Run:
    """Serve the plant for scenario.duration_s with its faults; `during(rig)` runs concurrently
    (e.g. a controller) and is cancelled at the end. Repeated runs vary the seed by run_index."""
    plant = Plant(scenario.seed + run_index, PlantParams(watchdog_timeout_s=scenario.watchdog_timeout_s))
    rig = Rig(
        plant,
        scenario.injector(),
        Recorder(),
        opcua_port=opcua_port,
        modbus_port=modbus_port,
        security=security,
    )
    async with rig:
        started = time.monotonic()
        side = asyncio.create_task(during(rig)) if during is not None else None
        try:
            while plant.t < scenario.duration_s:  # plant time, so a slow host still plays the whole timeline
                await asyncio.sleep(min(0.05, scenario.duration_s - plant.t + 0.01))
        finally:
            if side is not None:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)
    return Run(scenario, rig.recorder, started, rig)

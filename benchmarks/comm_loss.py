"""How long after a PLC freezes the controller declares comm loss and its safe state reaches the
line (a measurement, not a pass/fail test; the bound is asserted in hil_tests/test_fault_matrix.py).

    .venv/bin/python -m benchmarks.comm_loss [--runs 5]

Per run: the HIL rig (simulated plant, asyncua + pymodbus servers behind TCP gates) and the real
controller on the demo config without a model, the conveyor's comm loss also set to the safe
state (a line stop through the press's coil). Once both PLCs deliver, one gate is frozen (requests
accepted, never answered); measured from then: comm loss raised, and the line_stop write arriving
at the other PLC. docs/safety.md: bound = stale_timeout_s (conveyor 1.0 s, press 0.5 s) + 50 ms.
"""

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from hil_tests.rig.controller_run import (
    conveyor_safe_state,
    live,
    make_controller,
    start_controller,
    stop_controller,
    without_model,
)
from hil_tests.rig.net import wait_for
from hil_tests.rig.servers import Rig


async def one(target: str, tmp: Path) -> tuple[float, float]:
    async with Rig(opcua_port=0, modbus_port=0) as rig:
        controller = make_controller(tmp, rig, None, without_model, conveyor_safe_state)
        task = await start_controller(controller)
        try:
            await live(controller)
            plc = next(p for p in controller.plcs if p.name == target)
            rig.gate(target).frozen = True
            t0 = time.monotonic()
            await wait_for(lambda: plc.comm_lost, timeout=10, interval=0.001, what="comm loss")
            lost = time.monotonic() - t0
            await wait_for(lambda: rig.plant.line_stop, timeout=5, interval=0.001, what="the safe state")
            stop = next(w.mono for w in rig.recorder.writes if w.actuator == "line_stop") - t0
            return lost, stop
        finally:
            await stop_controller(controller, task)


async def main(runs: int) -> None:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        for target, stale in (("conveyor", 1.0), ("press", 0.5)):
            got = np.array([await one(target, Path(d) / f"{target}{i}") for i in range(runs)])
            print(f"{target} frozen (stale_timeout_s {stale:g}, bound {stale + 0.05:g} s), {runs} runs: "
                  f"comm loss after {got[:, 0].min():.3f}..{got[:, 0].max():.3f} s, "
                  f"safe-state line stop at the PLC after {got[:, 1].min():.3f}..{got[:, 1].max():.3f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    asyncio.run(main(p.parse_args().runs))

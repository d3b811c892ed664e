"""`linesentry sim`: serve the simulated line on real sockets until interrupted, optionally playing
a scenario's faults. Above both the servers and the scenarios in the rig's import graph, so neither
has to import the other."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from hil_tests.rig.faults import FaultInjector
from hil_tests.rig.plant import Plant, PlantParams
from hil_tests.rig.scenario import load_scenario
from hil_tests.rig.servers import DEVICE_ID, OpcUaSecurityOptions, Rig, address_map


async def serve(host: str = "127.0.0.1", opcua_port: int = 4840, modbus_port: int = 5020, seed: int = 0,
                scenario: Path | None = None, secure_dir: Path | None = None) -> None:
    """Serve until cancelled; print the endpoints and the address map once both servers listen.

    With `scenario` its faults, seed and watchdog timeout are used (`seed` is ignored); with
    `secure_dir` the OPC UA server serves Basic256Sha256 SignAndEncrypt with its cert/key there."""
    injector, params = FaultInjector(), PlantParams()
    if scenario is not None:
        sc = load_scenario(scenario)
        injector, seed = sc.injector(), sc.seed
        params = PlantParams(watchdog_timeout_s=sc.watchdog_timeout_s)
    security = OpcUaSecurityOptions(secure_dir) if secure_dir else None
    rig = Rig(Plant(seed, params), injector, host=host, opcua_port=opcua_port, modbus_port=modbus_port,
              security=security)
    async with rig:
        print(f"OPC UA  {rig.opcua_endpoint}" + ("  (Basic256Sha256 SignAndEncrypt)" if security else ""))
        print(f"Modbus  {host}:{rig.modbus_port}  device_id {DEVICE_ID}")
        print(address_map(), flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

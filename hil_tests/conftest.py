"""Shared helpers for the HIL tests: free ports on 127.0.0.1 and condition waits with deadlines."""

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_line.toml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Poll `predicate` until truthy or fail after `timeout` seconds (tests never sleep blindly)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """The demo config's detector fitted once on ten simulated minutes of normal operation
    (hil_tests.rig.training: the plant wanders on time scales a short live recording misses)."""
    from controller.config import load_config
    from hil_tests.rig.training import simulated_normal
    from models import StreamingDetector

    tmp = tmp_path_factory.mktemp("model")
    config = load_config(DEMO)
    times, rows = simulated_normal(config.detector_tags(), seconds=600.0)
    StreamingDetector(config.detector_tags(), config.detector_spec()).fit(rows, times).save(tmp / "model.npz")
    return tmp / "model.npz"


@pytest.fixture
async def rig():
    """The simulated plant and both PLCs on free 127.0.0.1 ports."""
    from hil_tests.rig.servers import Rig

    async with Rig(opcua_port=0, modbus_port=0) as r:
        yield r


@pytest.fixture
def victoria(tmp_path):
    """A fresh VictoriaMetrics on a free port; FAILS (never skips) if the binary is missing."""
    from tests.cloud.victoria import running_victoria

    with running_victoria(tmp_path / "vm-data") as vm:
        yield vm


@pytest.fixture
async def proxy(victoria):
    from tests.cloud.fault_proxy import FaultProxy

    async with FaultProxy(victoria.url) as p:
        yield p


async def start_controller(controller) -> asyncio.Task:
    """Run `controller` in a task and wait until every PLC is connected (or raise its start-up error)."""
    from drivers.base import ConnectionState

    task = asyncio.create_task(controller.run())
    await wait_for(lambda: all(p.driver.state is ConnectionState.CONNECTED for p in controller.plcs)
                   or task.done(), timeout=15, what="every PLC connected")
    if task.done():
        task.result()
    return task


async def stop_controller(controller, task: asyncio.Task) -> None:
    """Stop it the way SIGTERM does and check that no task of it is left behind."""
    controller.stop()
    await asyncio.wait_for(task, 15)
    names = ("driver:", "watchdog:", "housekeeping", "linesentry-sync")
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith(names)]
    assert leftovers == [], f"tasks left behind: {leftovers}"

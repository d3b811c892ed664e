"""Fixtures of the HIL tests: the fitted demo model, the rig, its cloud (VictoriaMetrics + fault proxy).

The helpers they use (free ports, deadline waits, starting the controller) live in the rig
(hil_tests/rig/net.py, controller_run.py) so benchmarks use them without importing test code.
"""

from pathlib import Path

import pytest

from hil_tests.rig.demo_config import DEMO_CONFIG as DEMO


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
    from hil_tests.rig.victoria import running_victoria

    with running_victoria(tmp_path / "vm-data") as vm:
        yield vm


@pytest.fixture
async def proxy(victoria):
    from hil_tests.rig.fault_proxy import FaultProxy

    async with FaultProxy(victoria.url) as p:
        yield p

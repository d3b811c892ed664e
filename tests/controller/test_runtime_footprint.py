"""The running service imports only what its config needs: a Modbus-only line without [sync] holds
no scikit-learn, scipy, asyncua or influxdb_client (checked in a fresh interpreter, after start;
the model is fitted in another process, as `linesentry fit` would).

Two exceptions are numba's own, whenever scipy is installed: `import numba` runs `import scipy`
to check its version (the bare package, ~2 MB), and its CPU target, at the first kernel compile or
cache load, imports `scipy.linalg.cython_blas` to find BLAS (numba/np/linalg.py, ~26 MB), whether
a kernel uses BLAS or not. So "scipy" counts as imported when any other public subpackage
(scipy.stats, scipy.special, scipy.optimize, scipy.sparse, ...) is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.controller.test_runtime_lifecycle import line

HEAVY = ("sklearn", "scipy", "asyncua", "influxdb_client")

START = """
import asyncio, json, sys
from controller.config import load_config
from controller.runtime import Controller

async def main():
    async with Controller(load_config(sys.argv[1]), api_port=0):
        await asyncio.sleep(0.3)  # housekeeping rounds, a connection attempt
    tops = {m.split(".")[0] for m in sys.modules} - {"scipy"}  # the bare package: numba's version check
    numba_own = ("_", "version", "linalg")  # numba's version check and BLAS bridge, see the docstring
    tops |= {"scipy" for m in sys.modules
             if m.startswith("scipy.") and not m.split(".")[1].startswith(numba_own)}
    print(json.dumps(sorted(tops & set(sys.argv[2:]))))

asyncio.run(main())
"""

FIT = """
import sys
import numpy as np
from models import StreamingDetector
rng = np.random.default_rng(1)
rows = rng.normal(50.0, 1.0, size=(600, 1))
StreamingDetector(["pressure"]).fit(rows, np.arange(600) * 0.1).save(sys.argv[1])
"""


def heavy_after_start(config: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", START, str(config), *HEAVY], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_rules_only_modbus_line_imports_no_fitting_library_opcua_or_influxdb(tmp_path):
    assert heavy_after_start(line(tmp_path)) == []


def test_a_modbus_line_with_a_fitted_model_imports_no_fitting_library(tmp_path):
    model = tmp_path / "model.npz"
    subprocess.run([sys.executable, "-c", FIT, str(model)], check=True, timeout=300)
    config = line(tmp_path)
    config.write_text(config.read_text() + f'\n[detector]\nmodel = "{model}"\n')
    assert heavy_after_start(config) == []


def test_importing_the_runtime_loads_no_protocol_model_or_cloud_library():
    """`import controller.runtime` (the CLI's `run`, the rig) is cheap: everything heavy comes at start."""
    code = ("import sys, controller.runtime; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numba', 'scipy', 'sklearn', 'asyncua', 'pymodbus', 'influxdb_client', 'aiohttp'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "[]"

"""The schema and the CLI's operator path import no numerical or protocol library: `linesentry
validate` and `linesentry status` must not pay for numba, scipy, sklearn, asyncua, pymodbus or
influxdb_client (issue 13). Each check runs in a fresh interpreter, so nothing imported by the
test session hides an import."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("numba", "scipy", "sklearn", "asyncua", "pymodbus", "influxdb_client")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules present in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [m for m in proc.stdout.strip().split(",") if m]


@pytest.mark.parametrize("code", [
    "import controller.config",
    "from controller.config import LineConfig, load_config, ConfigError, secret_values",
    "from controller.config import load_config; load_config('configs/demo_line.toml')",
    "from controller.config import load_config; load_config('configs/secure_opcua.toml')",
    "from controller.config import load_config; load_config('configs/modbus_only.toml')",
])
def test_the_schema_imports_no_heavy_library(code):
    assert loaded_after(code) == []


def test_the_cli_and_its_operator_path_import_no_heavy_library():
    code = ("import controller.cli, controller.client\n"
            "from controller.config.controller import load_controller_section\n"
            "load_controller_section('configs/demo_line.toml')")
    assert loaded_after(code) == []


def test_the_operator_path_does_not_build_the_line_schema():
    """status/ack/... read [controller] only: no driver plugin, no detector spec, no sink."""
    code = ("import sys\nimport controller.cli\n"
            "from controller.config.controller import load_controller_section\n"
            "load_controller_section('configs/demo_line.toml')\n"
            "light = ('controller.config.line', 'drivers.registry', 'models.spec', 'controller.sinks')\n"
            "print(','.join(m for m in light if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""

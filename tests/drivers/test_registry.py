"""The driver registry: built-ins come from entry points, loading them imports no protocol library."""

import subprocess
import sys

import pytest
from pydantic import BaseModel

from drivers import registry
from drivers.errors import DriverError, UnknownDriver
from drivers.modbus import ModbusDeviceConfig
from drivers.opcua import OpcUaConfig


def test_builtins_come_from_the_entry_points():
    found = registry.plugins()
    assert found["opcua"].config is OpcUaConfig
    assert found["modbus"].config is ModbusDeviceConfig
    assert all(p.probe is not None for p in (found["opcua"], found["modbus"]))


def test_loading_the_plugins_imports_no_protocol_library():
    code = ("import sys, drivers.registry as r; r.plugins(); "
            "print(sorted(m for m in ('asyncua', 'pymodbus', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(UnknownDriver, match="no driver named 'profinet'; registered drivers: .*modbus"):
        registry.plugin("profinet")
    assert issubclass(UnknownDriver, DriverError)


class _Cfg(BaseModel):
    name: str


def test_register_adds_a_plugin_and_refuses_a_taken_name():
    plugin = registry.DriverPlugin(name="dummy_test", config=_Cfg, create=lambda cfg: None)
    registry.register(plugin)
    try:
        assert registry.plugin("dummy_test") is plugin
        with pytest.raises(ValueError, match="already registered"):
            registry.register(plugin)
        with pytest.raises(ValueError, match="already registered"):
            registry.register(registry.DriverPlugin(name="modbus", config=_Cfg, create=lambda cfg: None))
    finally:
        registry.unregister("dummy_test")
    with pytest.raises(UnknownDriver):
        registry.plugin("dummy_test")


def test_a_plugin_name_must_be_a_toml_table_name():
    with pytest.raises(ValueError, match="lower-case"):
        registry.DriverPlugin(name="Modbus TCP", config=_Cfg, create=lambda cfg: None)

"""Modbus TCP driver: block-coalesced polling, typed register codec, writes with readback."""

from drivers.modbus.config import ModbusDeviceConfig, ModbusTag
from drivers.modbus.driver import ModbusDriver

__all__ = ["ModbusDeviceConfig", "ModbusDriver", "ModbusTag"]

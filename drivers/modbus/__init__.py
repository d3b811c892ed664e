"""Modbus driver (TCP, RTU over TCP, serial RTU): block-coalesced polling, typed codec, checked writes.

`PLUGIN` registers it as the `[[modbus]]` table (entry point `linesentry.drivers`). Importing
this package loads the config model only; pymodbus is imported when a driver is created.
"""

from drivers.modbus.config import ModbusDeviceConfig, ModbusTag
from drivers.registry import DriverPlugin


def create(config: ModbusDeviceConfig):
    from drivers.modbus.driver import ModbusDriver

    return ModbusDriver(config)


async def probe(config: ModbusDeviceConfig):
    from drivers.probe import probe_driver

    def hint() -> str:
        return (f"no tag of {config.name} could be read: check device_id (the unit id, now "
                f"{config.device_id}; behind a gateway or on a serial line it is the device's own "
                "address) and that addresses are zero-based (a manual's 40001 is holding_register "
                "address 0; modicon_addresses = true converts such numbers)")

    return await probe_driver(create(config), config.timeout_s + 5, hint)


PLUGIN = DriverPlugin(name="modbus", config=ModbusDeviceConfig, create=create, probe=probe,
                      description="Modbus TCP, RTU over TCP and serial RTU (pymodbus)")

__all__ = ["PLUGIN", "ModbusDeviceConfig", "ModbusTag"]

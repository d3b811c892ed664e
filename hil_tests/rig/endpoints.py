"""Driver configurations for the rig's address map: the contract, as the controller will read it.

Tests use these to reach the simulated PLCs through the project's own drivers; pointing them
at real PLCs is a matter of a different endpoint / host and port (docs/hil.md).
"""

from __future__ import annotations

from typing import Any

from drivers.modbus import ModbusDeviceConfig
from drivers.opcua import OpcUaConfig
from hil_tests.rig.servers import (
    DEVICE_ID,
    MODBUS_COILS,
    MODBUS_HEARTBEAT,
    MODBUS_HOLDING,
    NS_URI,
    OPCUA_NODES,
)


def opcua_tags() -> list[dict[str, Any]]:
    return [
        {"name": name, "node": f"nsu={NS_URI};s={sid}", "writable": writable}
        for name, (sid, _vtype, writable) in OPCUA_NODES.items()
    ]


def modbus_tags() -> list[dict[str, Any]]:
    tags: list[dict[str, Any]] = [
        {"name": n, "table": "holding_register", "address": a, "dtype": d, "order": "ABCD"}
        for n, (a, d) in MODBUS_HOLDING.items()
    ]
    tags.append(
        {
            "name": "heartbeat",
            "table": "holding_register",
            "address": MODBUS_HEARTBEAT,
            "dtype": "uint16",
            "writable": True,
        }
    )
    tags += [
        {"name": n, "table": "coil", "address": a, "dtype": "bool", "writable": True}
        for a, n in MODBUS_COILS.items()
    ]
    return tags


def opcua_config(endpoint: str, name: str = "conveyor", **kw: Any) -> OpcUaConfig:
    return OpcUaConfig(**({"name": name, "endpoint": endpoint, "tags": opcua_tags()} | kw))


def modbus_config(port: int, host: str = "127.0.0.1", name: str = "press", **kw: Any) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        **({"name": name, "host": host, "port": port, "device_id": DEVICE_ID, "tags": modbus_tags()} | kw)
    )

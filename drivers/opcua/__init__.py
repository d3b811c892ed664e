"""OPC UA driver (asyncua): subscriptions and polling, namespace-URI node ids, Basic256Sha256 security.

`PLUGIN` registers it as the `[[opcua]]` table (entry point `linesentry.drivers`). Importing
this package loads the config model only; asyncua is imported when a driver is created.
"""

from drivers.opcua.config import OpcUaConfig, OpcUaGroup, OpcUaSecurity, OpcUaTag
from drivers.registry import DriverPlugin


def create(config: OpcUaConfig):
    from drivers.opcua.driver import OpcUaDriver

    return OpcUaDriver(config)


async def probe(config: OpcUaConfig):
    from drivers.probe import probe_driver

    return await probe_driver(create(config), config.timeout_s + 5)


PLUGIN = DriverPlugin(name="opcua", config=OpcUaConfig, create=create, probe=probe,
                      description="OPC UA client (asyncua): subscriptions, polling, Basic256Sha256")

__all__ = ["PLUGIN", "OpcUaConfig", "OpcUaGroup", "OpcUaSecurity", "OpcUaTag"]

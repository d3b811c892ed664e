"""A toy third driver, to prove that a driver is one folder plus one registration.

The protocol is one line per request over TCP (server.py): `HELLO <token>`, `READ <tag>...`,
`WRITE <tag> <value>`. Its config (config.py), its Driver (driver.py) and this PLUGIN are all
it takes; a test registers it with `drivers.registry.register(PLUGIN)`, then `[[toy]]` tables
load through the controller's config and run in the real Controller.
"""

from drivers.registry import DriverPlugin
from tests.drivers.toy.config import ToyConfig


def create(config: ToyConfig):
    from tests.drivers.toy.driver import ToyDriver

    return ToyDriver(config)


async def probe(config: ToyConfig):
    from drivers.probe import probe_driver

    return await probe_driver(create(config), config.timeout_s + 1)


PLUGIN = DriverPlugin(name="toy", config=ToyConfig, create=create, probe=probe,
                      description="a line-based TCP toy protocol (tests only)")

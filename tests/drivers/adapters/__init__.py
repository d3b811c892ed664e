"""Per-plugin adapters for the driver conformance suite (tests/drivers/test_conformance.py).

An adapter knows one protocol's test servers and how to say, in its config format, "these tags
of every type, one bad value, one writable and one read-only tag"; the suite checks the common
Driver contract with them. Adding a driver adds its adapter (the toy's is in tests/drivers/toy/).
"""

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class PermanentCase:
    """A server that will refuse us every time, the config that meets it, and the error expected."""

    server: Any  # started; has async stop()
    config: dict
    error: type


class Adapter(Protocol):
    plugin: str  # the registry name
    servers: tuple[str, ...]  # the server implementations the suite runs against
    expected: dict[str, float]  # GOOD value of each typed tag the config lists
    bad_tag: str  # a tag whose value the server reports bad
    write: tuple[str, float]  # a writable tag and a value to write (restored after the check)
    read_only_tag: str

    async def start(self, kind: str) -> Any: ...  # a running server (async stop())

    def config(self, server: Any) -> dict: ...  # one PLC's driver table, every tag above

    def dead_config(self, port: int) -> dict: ...  # a PLC where nothing listens

    async def read_independently(self, server: Any, tag: str) -> float: ...  # not via our driver

    async def permanent_cases(self, tmp_path) -> list[PermanentCase]: ...

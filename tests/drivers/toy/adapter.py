"""Conformance adapter of the toy plugin (tests/drivers/test_conformance.py runs it like the others)."""

import math
import os

from drivers.errors import CredentialsRejected
from tests.drivers.adapters import PermanentCase
from tests.drivers.toy.server import ToyServer

TOKEN_ENV, WRONG_ENV = "LINESENTRY_TEST_TOY_TOKEN", "LINESENTRY_TEST_TOY_WRONG_TOKEN"
VALUES = {"speed": 12.5, "load": -3.0, "count": 7.0, "broken": math.nan, "setpoint": 50.0}


class ToyAdapter:
    plugin = "toy"
    servers = ("toy",)
    expected = {"speed": 12.5, "load": -3.0, "count": 7.0}
    bad_tag = "broken"
    write = ("setpoint", 61.5)
    read_only_tag = "count"

    async def start(self, kind: str) -> ToyServer:
        os.environ[TOKEN_ENV], os.environ[WRONG_ENV] = "t0k", "wrong"
        return await ToyServer(VALUES, writable={"setpoint", "count"}, token="t0k").start()

    def config(self, server: ToyServer) -> dict:
        tags = [{"name": n} for n in ("speed", "load", "count", "broken")]
        tags.append({"name": "setpoint", "writable": True})
        return {"name": "dut", "port": server.port, "token_env": TOKEN_ENV, "poll_interval_s": 0.05,
                "tags": tags}

    def dead_config(self, port: int) -> dict:
        return {"name": "dead", "port": port, "timeout_s": 0.5, "tags": [{"name": "x"}]}

    async def read_independently(self, server: ToyServer, tag: str) -> float:
        return server.values[tag]

    async def permanent_cases(self, tmp_path) -> list[PermanentCase]:
        os.environ[WRONG_ENV] = "wrong"
        server = await ToyServer(VALUES, writable=set(), token="right").start()
        return [PermanentCase(server, {"name": "dut", "port": server.port, "token_env": WRONG_ENV,
                                       "tags": [{"name": "speed"}]}, CredentialsRejected)]

"""Conformance adapter of the Modbus plugin: pymodbus and pyModbusTCP (independent) servers."""

import asyncio
import struct

import numpy as np

from hil_tests.rig.net import free_port
from tests.drivers.adapters import PermanentCase
from tests.drivers.modbus_server import (
    STRUCT_CODES,
    PyModbusTcpServer,
    SimTablesServer,
    independent_client,
    wire_registers,
)

SIZE = 64
TYPED = {"int16": -1234, "uint16": 54321, "int32": -123456789, "float32": 2.5, "float64": -9876.54321}
WRITE_ADDRESS = 40


def _layout() -> tuple[list[int], list[dict]]:
    regs: list[int] = []
    tags: list[dict] = []
    for dtype, value in TYPED.items():
        tags.append({"name": f"h_{dtype}", "table": "holding_register", "address": len(regs), "dtype": dtype,
                     "order": "CDAB"})
        regs += wire_registers(value, dtype, "CDAB")
    return regs + [0] * (SIZE - len(regs)), tags


HOLDING, REG_TAGS = _layout()


class ModbusAdapter:
    plugin = "modbus"
    servers = ("pymodbus", "pyModbusTCP")
    expected = {**{f"h_{d}": float(v) for d, v in TYPED.items()}, "coil3": 1.0, "di1": 1.0, "ir5": 5.0}
    bad_tag = "beyond"
    write = ("setpoint", -42.25)
    read_only_tag = "ir5"

    async def start(self, kind: str):
        cls = SimTablesServer if kind == "pymodbus" else PyModbusTcpServer
        coils = [i % 3 == 0 for i in range(SIZE)]
        discretes = [i % 2 == 1 for i in range(SIZE)]
        server = cls(free_port(), coils, discretes, list(HOLDING), list(range(SIZE)))
        await server.start()
        return server

    def config(self, server) -> dict:
        tags = [*REG_TAGS,
                {"name": "coil3", "table": "coil", "address": 3, "dtype": "bool"},
                {"name": "di1", "table": "discrete_input", "address": 1, "dtype": "bool"},
                {"name": "ir5", "table": "input_register", "address": 5, "dtype": "uint16"},
                {"name": "beyond", "table": "holding_register", "address": SIZE + 10, "dtype": "uint16"},
                {"name": "setpoint", "table": "holding_register", "address": WRITE_ADDRESS,
                 "dtype": "float32", "order": "CDAB", "writable": True}]
        return {"name": "dut", "host": "127.0.0.1", "port": server.port, "timeout_s": 1.0,
                "poll_interval_s": 0.05, "tags": tags}

    def dead_config(self, port: int) -> dict:
        return {"name": "dead", "host": "127.0.0.1", "port": port, "timeout_s": 0.5,
                "tags": [{"name": "x", "table": "holding_register", "address": 0, "dtype": "uint16"}]}

    async def read_independently(self, server, tag: str) -> float:
        assert tag == "setpoint"

        def call() -> float:
            client = independent_client(server.port)
            try:
                regs = client.read_holding_registers(WRITE_ADDRESS, 2)
            finally:
                client.close()
            raw = struct.pack(">HH", regs[1], regs[0])  # CDAB -> ABCD
            return float(np.float32(struct.unpack(">" + STRUCT_CODES["float32"], raw)[0]))

        return await asyncio.to_thread(call)

    async def permanent_cases(self, tmp_path) -> list[PermanentCase]:
        return []  # Modbus has no identity to refuse: every failure is worth a retry

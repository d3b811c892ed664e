"""Modbus conformance checks, written once and run against every server implementation.

Like River's `check_estimator`: each check takes a running server (the project's pymodbus server,
pyModbusTCP's independent ModbusServer) holding the same four tables, and the driver must see
the same thing on each. Writes are verified with pyModbusTCP's client, not our driver's code.
A server that cannot start fails the test (never a skip).
"""

import asyncio
import time

import numpy as np
import pytest
from conftest import free_port
from modbus_server import PyModbusTcpServer, SimTablesServer, independent_client, wire_registers

from drivers.base import Quality
from drivers.errors import WriteFailed
from drivers.modbus import ModbusDeviceConfig, codec, tables
from drivers.modbus.driver import ModbusDriver

SIZE = 128  # entries per table; addresses >= SIZE are illegal on every server
ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")
SAMPLE = {"int16": -1234, "uint16": 54321, "int32": -123456789, "uint32": 3_000_000_000,
          "int64": -(2**40) - 5, "uint64": 2**50 + 3, "float32": 123.456, "float64": -9876.54321}
COILS = [i % 3 == 0 for i in range(SIZE)]
DISCRETES = [i % 5 in (1, 2) for i in range(SIZE)]


def register_image() -> tuple[list[int], list[dict], list[float]]:
    """Every dtype in every order, packed from address 0: (registers, tags, expected values)."""
    regs: list[int] = []
    tags: list[dict] = []
    expected: list[float] = []
    for dtype, value in SAMPLE.items():
        for order in ORDERS:
            tags.append({"name": f"{dtype}_{order}", "address": len(regs), "dtype": dtype, "order": order})
            regs += wire_registers(value, dtype, order)
            expected.append(float(np.float32(value)) if dtype == "float32" else float(value))
    regs += [0] * (SIZE - len(regs))
    return regs, tags, expected


HOLDING, REG_TAGS, REG_EXPECTED = register_image()
INPUTS = [(r ^ 0x5A5A) for r in HOLDING]  # a different image on the input table


SERVERS = {"pymodbus": SimTablesServer, "pyModbusTCP": PyModbusTcpServer}


@pytest.fixture(params=list(SERVERS))
async def server(request):
    """A running server of each implementation, fresh for every check, on a free port."""
    srv = SERVERS[request.param](free_port(), list(COILS), list(DISCRETES), list(HOLDING), list(INPUTS))
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def driver_for(server):
    drivers: list[ModbusDriver] = []

    async def make(tags: list[dict], **kw) -> ModbusDriver:
        config = {"name": "dut", "host": "127.0.0.1", "port": server.port, "timeout_s": 1.0,
                  "poll_interval_s": 0.05, "tags": tags} | kw
        d = ModbusDriver(ModbusDeviceConfig(**config))
        await d.connect()
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        await d.close()


async def independently(port: int, method: str, *args):
    """One call on pyModbusTCP's client in a thread (it is synchronous)."""
    def call():
        client = independent_client(port)
        try:
            result = getattr(client, method)(*args)
            assert result not in (None, False), f"independent client {method}{args} failed"
            return result
        finally:
            client.close()
    return await asyncio.to_thread(call)


async def test_coils_and_discrete_inputs(driver_for):
    tags = [{"name": f"{table[0]}{i}", "table": table, "address": i, "dtype": "bool"}
            for table in ("coil", "discrete_input") for i in range(40)]
    d = await driver_for(tags)
    batch = await d.read()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values.tolist() == [float(b) for b in COILS[:40] + DISCRETES[:40]]
    assert d.stats.reads == 2  # one request per table


@pytest.mark.parametrize("table", ["holding_register", "input_register"])
async def test_registers_every_type_and_word_order(driver_for, table):
    d = await driver_for([t | {"table": table} for t in REG_TAGS])
    batch = await d.read()
    assert (batch.quality == Quality.GOOD).all()
    if table == "holding_register":
        np.testing.assert_allclose(batch.values, REG_EXPECTED, rtol=1e-12)
    else:
        raw = np.array(INPUTS, dtype=np.uint16)
        want = [codec.decode(raw[t["address"]:t["address"] + tables.width(t["dtype"])][None, :],
                             t["dtype"], t["order"])[0] for t in REG_TAGS]
        np.testing.assert_allclose(batch.values, want, rtol=1e-12)
    assert d.stats.reads == 1  # 80 adjacent registers: one request


async def test_bits_inside_registers_and_strings(server, driver_for):
    text = codec.encode_string("PUMP-7", 4) + codec.encode_string("AB", 1, "BADC")
    await independently(server.port, "write_multiple_registers", 100, [0b1010_0000_0000_1001, *text])
    tags = [{"name": f"b{i}", "table": "holding_register", "address": 100, "dtype": "bool", "bit": i}
            for i in (0, 1, 3, 13, 15)]
    tags += [{"name": "label", "table": "holding_register", "address": 101, "dtype": "string", "length": 4},
             {"name": "swapped", "table": "holding_register", "address": 105, "dtype": "string",
              "length": 1, "order": "BADC"}]
    d = await driver_for(tags)
    batch = await d.read()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values[:5].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert batch.text is not None and batch.text[5:] == ["PUMP-7", "AB"] and batch.text[0] is None
    assert np.isnan(batch.values[5:]).all()  # text never reaches the numeric channel
    assert d.stats.reads == 1


WRITE_TYPES = ("int16", "uint16", "float32", "int32", "float64")


@pytest.mark.parametrize("write_function", ["multiple", "single"])
async def test_writes_with_readback(server, driver_for, write_function):
    tags = [{"name": f"w_{dtype}_{order}", "table": "holding_register", "address": 40 + 4 * i,
             "dtype": dtype, "order": order, "writable": True}
            for i, (dtype, order) in enumerate((d, o) for d in WRITE_TYPES for o in ORDERS)
            if write_function == "multiple" or tables.width(dtype) == 1]
    tags += [{"name": "run", "table": "coil", "address": 7, "dtype": "bool", "writable": True},
             {"name": "flag3", "table": "holding_register", "address": 120, "dtype": "bool", "bit": 3,
              "writable": True}]
    d = await driver_for(tags, write_function=write_function)
    value_of = {"int16": -321, "uint16": 65000, "float32": 2.5, "int32": -70000, "float64": 1e-3}
    for t in tags[:-2]:
        await d.write(t["name"], value_of[t["dtype"]])
        got = await independently(server.port, "read_holding_registers", t["address"],
                                  tables.width(t["dtype"]))
        assert got == wire_registers(value_of[t["dtype"]], t["dtype"], t["order"]), t["name"]
    await d.write("run", 1)
    assert await independently(server.port, "read_coils", 7, 1) == [True]
    await independently(server.port, "write_single_register", 120, 0b1000_0000_0000_0001)
    await d.write("flag3", 1)  # read-modify-write keeps the other bits
    assert await independently(server.port, "read_holding_registers", 120, 1) == [0b1000_0000_0000_1001]
    await d.write("flag3", 0)
    assert await independently(server.port, "read_holding_registers", 120, 1) == [0b1000_0000_0000_0001]
    batch = await d.read()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values[-2:].tolist() == [1.0, 0.0]
    assert d.stats.write_errors == 0


async def test_server_side_changes_are_read(server, driver_for):
    d = await driver_for([{"name": "x", "table": "holding_register", "address": 60, "dtype": "float32",
                           "order": "CDAB"}])
    await independently(server.port, "write_multiple_registers", 60, wire_registers(-42.5, "float32", "CDAB"))
    assert (await d.read()).values.tolist() == [-42.5]


async def test_illegal_address_makes_only_that_block_bad_with_its_reason(driver_for):
    tags = [{"name": "ok0", "table": "holding_register", "address": 0, "dtype": "int16"},
            {"name": "gone", "table": "holding_register", "address": SIZE + 10, "dtype": "int16"},
            {"name": "gone_coil", "table": "coil", "address": SIZE + 3, "dtype": "bool"},
            {"name": "c0", "table": "coil", "address": 0, "dtype": "bool"},
            {"name": "ir", "table": "input_register", "address": 1, "dtype": "uint16"}]
    d = await driver_for(tags)
    before = time.monotonic()
    batch = await d.read()
    assert batch.quality.tolist() == [Quality.GOOD, Quality.BAD, Quality.BAD, Quality.GOOD, Quality.GOOD]
    assert batch.values[0] == wire_registers(-1234, "int16", "ABCD")[0] - 65536
    assert set(d.stats.tag_errors) == {"gone", "gone_coil"}
    assert "exception 2 (illegal data address)" in d.stats.tag_errors["gone"]
    assert f"holding_register {SIZE + 10}" in d.stats.tag_errors["gone"]
    assert d.stats.last_alive >= before  # the good blocks keep the device alive


async def test_every_address_illegal_never_refreshes_liveness(driver_for):
    d = await driver_for([{"name": f"x{i}", "table": "holding_register", "address": SIZE + i,
                           "dtype": "uint16"} for i in range(3)])
    for _ in range(3):
        batch = await d.read()
        assert (batch.quality == Quality.BAD).all()
    assert d.stats.last_alive == -np.inf
    assert d.stats.read_errors == 3


@pytest.mark.parametrize(("addresses", "limit", "max_gap", "requests"),
                         [(list(range(40)), 125, 0, 1), (list(range(40)), 10, 0, 4),
                          ([0, 1, 2, 7, 8], 125, 0, 2), ([0, 1, 2, 7, 8], 125, 5, 1)])
async def test_block_coalescing(driver_for, addresses, limit, max_gap, requests):
    tags = [{"name": f"r{a}", "table": "holding_register", "address": a, "dtype": "uint16"}
            for a in addresses]
    d = await driver_for(tags, max_registers_per_read=limit, max_gap=max_gap)
    batch = await d.read()
    assert (batch.quality == Quality.GOOD).all()
    assert batch.values.tolist() == [float(HOLDING[a]) for a in addresses]
    assert d.stats.reads == requests == len(d.read_plan)
    assert all(b.count <= limit for b in d.read_plan)


async def test_write_to_an_illegal_address_fails_with_the_exception(driver_for):
    d = await driver_for([{"name": "far", "table": "holding_register", "address": SIZE + 1, "dtype": "uint16",
                           "writable": True}])
    with pytest.raises(WriteFailed, match="exception 2 \\(illegal data address\\)"):
        await d.write("far", 1)

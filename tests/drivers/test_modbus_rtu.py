"""Modbus RTU: over a serial line (a pseudo-terminal pair from socat, a pymodbus serial server on
the far end) and RTU framing over TCP (what a serial-to-Ethernet gateway in transparent mode speaks)."""

import asyncio
import contextlib
import math
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for
from modbus_server import bits_at, device, registers_at, wire_registers
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from drivers.base import Quality
from drivers.errors import ConnectionLost
from drivers.modbus import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver

UNIT = 17
TAGS = [{"name": "temp", "table": "holding_register", "address": 0, "dtype": "float32", "order": "CDAB"},
        {"name": "count", "table": "input_register", "address": 0, "dtype": "uint16"},
        {"name": "run", "table": "coil", "address": 2, "dtype": "bool", "writable": True},
        {"name": "setpoint", "table": "holding_register", "address": 4, "dtype": "int16", "writable": True}]


def rtu_device():
    return device([bits_at(0, [False] * 16)], [bits_at(0, [True] * 16)],
                  [registers_at(0, [*wire_registers(21.5, "float32", "CDAB"), 0, 0, 0, 0])],
                  [registers_at(0, [4242])], unit=UNIT)


@pytest.fixture
async def pty_pair(tmp_path: Path):
    """Two linked pseudo-terminals (socat): what one end writes, the other reads, like a null-modem cable."""
    socat = shutil.which("socat")
    assert socat, "socat is needed for the serial tests (Debian package socat; see Makefile SYSTEM_DEPS)"
    a, b = tmp_path / "client", tmp_path / "device"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_for(lambda: (a.exists() and b.exists()) or proc.poll() is not None, timeout=10,
                       what="socat pty pair")
        assert proc.poll() is None, f"socat exited: {proc.stderr.read().decode() if proc.stderr else ''}"
        yield str(a), str(b)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


async def exercise(d: ModbusDriver) -> None:
    """Read every table and write with readback over the driver's transport."""
    batch = await d.read()
    assert batch.quality.tolist() == [Quality.GOOD] * 4
    assert batch.values.tolist() == [21.5, 4242.0, 0.0, 0.0]
    assert d.stats.last_alive > -math.inf
    await d.write("run", 1)
    await d.write("setpoint", -17)
    assert (await d.read(["run", "setpoint"])).values.tolist() == [1.0, -17.0]


async def exercise_through(server, config: ModbusDeviceConfig) -> None:
    """Serve the RTU device with `server`, then read and write through a driver on `config`."""
    await server.serve_forever(background=True)
    d = ModbusDriver(config)
    try:
        await d.connect()
        await exercise(d)
    finally:
        await d.close()
        await server.shutdown()


async def test_rtu_over_a_serial_line(pty_pair):
    client_end, device_end = pty_pair
    server = ModbusSerialServer(rtu_device(), framer=FramerType.RTU, port=device_end, baudrate=115200)
    config = ModbusDeviceConfig(name="rtu", transport="serial", serial_port=client_end, baudrate=115200,
                                device_id=UNIT, timeout_s=0.5, tags=TAGS)
    await exercise_through(server, config)
    assert config.endpoint == f"{client_end} (115200 8N1)"


async def test_a_serial_line_where_no_device_answers_times_out_and_is_never_alive(pty_pair):
    """A dead device, or a wrong slave address: on a serial line nobody answers (a device ignores
    frames for other addresses), so every request times out and liveness is never refreshed."""
    client_end, _nobody = pty_pair
    d = ModbusDriver(ModbusDeviceConfig(name="rtu", transport="serial", serial_port=client_end,
                                        baudrate=115200, device_id=UNIT, timeout_s=0.1,
                                        max_consecutive_timeouts=5, poll_interval_s=0.02, tags=TAGS))
    try:
        await d.connect()
        assert len(d.read_plan) < 5  # so the first poll ends before max_consecutive_timeouts
        batch = await d.read()
        assert (batch.quality == Quality.BAD).all()
        assert d.stats.tag_errors["run"] == "no answer within 0.1 s"  # every block is asked
        assert d.stats.tag_errors["temp"] == "no answer within 0.1 s"
        with pytest.raises(ConnectionLost, match=f"unit id {UNIT}"):
            await asyncio.wait_for(d.subscribe(lambda b: None), timeout=5)
    finally:
        await d.close()
    assert d.stats.last_alive == -math.inf


async def test_a_missing_serial_port_is_a_one_line_connect_error(tmp_path):
    d = ModbusDriver(ModbusDeviceConfig(name="rtu", transport="serial", serial_port=str(tmp_path / "ttyUSB9"),
                                        tags=TAGS))
    with pytest.raises(Exception, match="cannot connect to .*ttyUSB9") as info:
        await d.connect()
    assert "\n" not in str(info.value)


async def test_rtu_framing_over_tcp_through_a_gateway(port):
    server = ModbusTcpServer(rtu_device(), framer=FramerType.RTU, address=("127.0.0.1", port))
    config = ModbusDeviceConfig(name="gw", transport="rtu_over_tcp", host="127.0.0.1", port=port,
                                device_id=UNIT, timeout_s=0.5, tags=TAGS)
    await exercise_through(server, config)
    assert config.endpoint == f"127.0.0.1:{port} (RTU over TCP)"

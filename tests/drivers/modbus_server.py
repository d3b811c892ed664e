"""Real Modbus TCP servers for the driver tests: pymodbus' SimDevice server, plus raw misbehaving ones.

The pymodbus server uses the current SimData/SimDevice API with four separate tables
(coils, discrete inputs, holding registers, input registers), addresses 0-based as on the wire.
"""

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

BIT_FCS = {1, 2, 5, 15}


@dataclass
class RequestLog:
    """Every request the device saw, as (function code, address, count); also a device policy."""

    requests: list[tuple[int, int, int]] = field(default_factory=list)
    max_registers: int | None = None  # answer ILLEGAL_VALUE to larger register requests
    rewrite: Callable[[int, int, list], None] | None = None  # may alter values being written
    delay_s: float = 0.0  # answer this late (a slow device)

    async def action(self, fc: int, _start: int, address: int, count: int, _regs: list[int],
                     set_values: list | None) -> ExcCodes | None:
        self.requests.append((fc, address, count))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.max_registers is not None and fc not in BIT_FCS and count > self.max_registers:
            return ExcCodes.ILLEGAL_VALUE
        if set_values is not None and self.rewrite is not None:
            self.rewrite(fc, address, set_values)
        return None

    def reads(self, fc: int | None = None) -> int:
        return sum(1 for f, _, _ in self.requests if fc is None or f == fc)



def device(coils: list[SimData], discretes: list[SimData], holding: list[SimData],
           inputs: list[SimData], log: RequestLog | None = None, unit: int = 1) -> SimDevice:
    """A device with four separate tables; each list needs at least one SimData."""
    return SimDevice(id=unit, simdata=(coils, discretes, holding, inputs),
                     action=log.action if log is not None else None)


def bits_at(address: int, values: list[bool]) -> SimData:
    return SimData(address=address, values=values, datatype=DataType.BITS)


def registers_at(address: int, values: list[int]) -> SimData:
    return SimData(address=address, values=values, datatype=DataType.REGISTERS)


class SimServer:
    """A pymodbus TCP server on 127.0.0.1:port that can be stopped and restarted on the same port."""

    def __init__(self, make_device: Callable[[], SimDevice], port: int) -> None:
        self.make_device = make_device
        self.port = port
        self.server: ModbusTcpServer | None = None

    async def start(self) -> "SimServer":
        self.server = ModbusTcpServer(self.make_device(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None


class RawServer:
    """A TCP server with a hand-written reply policy: `reply(request_bytes) -> bytes | None`.

    None means never answer (a PLC that accepts connections and then hangs). The policy may be
    a coroutine function (a slow device: it answers after its own delay, requests queue meanwhile).
    """

    def __init__(self, port: int, reply: Callable[[bytes], bytes | None]) -> None:
        self.port = port
        self.reply = reply
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.requests = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(Exception):
            while True:
                header = await reader.readexactly(7)
                length = struct.unpack(">H", header[4:6])[0]
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                answer = self.reply(header + pdu)
                if asyncio.iscoroutine(answer):
                    answer = await answer
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()

    async def start(self) -> "RawServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.writers:
                w.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None


def short_register_reply(request: bytes) -> bytes:
    """Answer a register read with one register fewer than asked (a garbled/short response)."""
    tid, _pid, _len, unit = struct.unpack(">HHHB", request[:7])
    fc, _addr, count = struct.unpack(">BHH", request[7:12])
    n = max(count - 1, 0)
    pdu = struct.pack(">BB", fc, 2 * n) + b"\x00\x07" * n
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


STRUCT_CODES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
                "float32": "f", "float64": "d"}


def wire_registers(value: float, dtype: str, order: str) -> list[int]:
    """Reference encoding for test data, independent of the driver's codec (struct + word swaps)."""
    be = struct.pack(">" + STRUCT_CODES[dtype], value)
    words = [be[i:i + 2] for i in range(0, len(be), 2)]
    if order in ("DCBA", "CDAB"):
        words = words[::-1]
    if order in ("DCBA", "BADC"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


class PyModbusTcpServer:
    """pyModbusTCP's ModbusServer, an implementation independent of pymodbus, in its own thread.

    Each table holds exactly the values given (from address 0); addresses past them are illegal.
    It answers every unit id (it has no notion of one).
    """

    def __init__(self, port: int, coils: list[bool], discretes: list[bool], holding: list[int],
                 inputs: list[int]) -> None:
        self.port = port
        self.tables = (coils, discretes, holding, inputs)
        self.server = None

    async def start(self) -> "PyModbusTcpServer":
        from pyModbusTCP.server import DataBank, ModbusServer

        coils, discretes, holding, inputs = self.tables
        bank = DataBank(coils_size=len(coils), d_inputs_size=len(discretes), h_regs_size=len(holding),
                        i_regs_size=len(inputs))
        assert bank.set_coils(0, coils) and bank.set_discrete_inputs(0, discretes)
        assert bank.set_holding_registers(0, holding) and bank.set_input_registers(0, inputs)
        self.server = ModbusServer("127.0.0.1", self.port, no_block=True, data_bank=bank)
        await asyncio.to_thread(self.server.start)  # raises NetworkError if it cannot listen
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None


class SimTablesServer(SimServer):
    """The pymodbus server with the same four-table layout as PyModbusTcpServer."""

    def __init__(self, port: int, coils: list[bool], discretes: list[bool], holding: list[int],
                 inputs: list[int], log: RequestLog | None = None) -> None:
        super().__init__(lambda: device([bits_at(0, coils)], [bits_at(0, discretes)],
                                        [registers_at(0, holding)], [registers_at(0, inputs)], log), port)


def independent_client(port: int):
    """pyModbusTCP's (synchronous) client: reads and writes the server without our driver's code."""
    from pyModbusTCP.client import ModbusClient

    return ModbusClient(host="127.0.0.1", port=port, unit_id=1, timeout=2.0, auto_open=True)


def register_reply(request: bytes, fc: int | None = None, extra: int = 0) -> bytes:
    """Answer a register read with register k = address + k + 1 (so a misplaced answer shows);
    `fc` answers with another function code, `extra` adds registers nobody asked for."""
    tid, _pid, _len, unit = struct.unpack(">HHHB", request[:7])
    req_fc, addr, count = struct.unpack(">BHH", request[7:12])
    regs = [(addr + k + 1) & 0xFFFF for k in range(count + extra)]
    pdu = struct.pack(f">BB{len(regs)}H", fc or req_fc, 2 * len(regs), *regs)
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def request_address(request: bytes) -> int:
    return struct.unpack(">H", request[8:10])[0]


def exception_reply(code: int) -> Callable[[bytes], bytes]:
    """A device that answers every request with Modbus exception `code` (e.g. 11: a gateway whose
    target device is dead)."""
    def reply(request: bytes) -> bytes:
        tid, _pid, _len, unit = struct.unpack(">HHHB", request[:7])
        pdu = struct.pack(">BB", request[7] | 0x80, code)
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu
    return reply


class ThreadedServer:
    """Runs a server (SimServer, RawServer) on its own event loop in a thread: for code under test
    that runs its own loop, such as the CLI's asyncio.run()."""

    def __init__(self, server) -> None:
        import threading

        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "ThreadedServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

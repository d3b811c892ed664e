"""Modbus driver (TCP, RTU over TCP, RTU on a serial line): coalesced block polling, writes with readback.

One driver = one connection to one unit id. Every connect() builds a fresh pymodbus client
with its own reconnect and retries switched off: reconnecting is the DriverSupervisor's job
(backoff, session-rate limit), and a silent auto-reconnect inside pymodbus would bypass both.
A dropped connection is noticed at once through the client's trace_connect callback, not
only when the next request times out.

Quality mapping per block read: a normal response -> GOOD (NaN/inf floats -> BAD); an exception
response, a short or malformed response, or a timeout on a live connection -> BAD for that
block's tags (and a read error is counted); a closed connection -> ConnectionLost.

A block that gets no answer makes only its own tags BAD: the other blocks of the poll are
still read. On Modbus TCP a late answer cannot be taken for a later request (pymodbus matches
transaction ids and skips the stray frame); RTU frames carry no transaction id, so every answer
is checked for the requested function code and exact length, and only a late answer of the same
shape could pass (keep timeout_s above the device's worst response time). A device whose requests
all go unanswered is lost after max_consecutive_timeouts requests in a row (any answer resets it).

Liveness: `stats.last_alive` is refreshed as soon as a block answers with a GOOD value, so a
device that accepts the connection but answers only exceptions or nothing (wrong unit id, a dead
device behind a gateway, every address illegal) never looks alive. When data flows, two refreshes
are at most `alive_interval_s = poll_interval_s + blocks * timeout_s` apart: a full poll of a
fixed-rate schedule takes at most one timeout per block, and the same block answers again one
poll later.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.base import DriverStats, OnBatch, Quality, ReadingBatch
from drivers.errors import ConnectionLost, DriverError, WriteFailed, WriteRefused
from drivers.modbus import codec
from drivers.modbus.config import ModbusDeviceConfig, ModbusTag
from drivers.modbus.planner import ReadBlock, plan_reads
from drivers.modbus.scaling import to_raw
from drivers.modbus.tables import BIT_TABLES, EXCEPTION_NAMES, READ_FUNCTION, width
from drivers.polling import poll_at_fixed_rate

log = logging.getLogger(__name__)

_READ_METHODS = {"coil": "read_coils", "discrete_input": "read_discrete_inputs",
                 "holding_register": "read_holding_registers", "input_register": "read_input_registers"}


@dataclass(frozen=True)
class _Group:
    """Tags of one block sharing dtype/order: decoded together in one numpy call."""

    dtype: str
    order: str
    pos: np.ndarray  # positions in the batch
    starts: np.ndarray  # first register inside the block
    scale: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class _CompiledBlock:
    block: ReadBlock
    names: str  # the tags it serves, for messages
    pos: np.ndarray  # batch positions of all members
    bit_offsets: np.ndarray  # for bit tables
    groups: tuple[_Group, ...]  # numeric tags of register tables
    reg_bits: tuple[np.ndarray, np.ndarray, np.ndarray]  # (pos, register offset, bit) of `bit` tags
    strings: tuple[tuple[int, int, int, str], ...]  # (pos, offset, length, order) of string tags


@dataclass(frozen=True)
class _Plan:
    index: np.ndarray  # int32 tag positions of the batch
    blocks: tuple[_CompiledBlock, ...]
    has_text: bool


class _Timeout(Exception):
    """A request got no valid answer in time on a connection that still looks open."""


class ModbusDriver:
    """Driver protocol implementation for one Modbus device (TCP, RTU over TCP or serial RTU)."""

    polled = True  # every poll cycle reads every tag: a tag's own age is its staleness (controller)

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self.tags: list[ModbusTag] = list(config.tags)
        self.tag_names = [t.name for t in self.tags]
        self._pos = {n: i for i, n in enumerate(self.tag_names)}
        self.stats = DriverStats()
        self.missed_ticks = 0  # poll ticks skipped because a poll overran its interval
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lost: asyncio.Future[None] | None = None
        self._consecutive_timeouts = 0
        self._block_errors: dict[tuple[str, int, int], str] = {}  # failing blocks, logged once each
        self._full_plan = self._compile(list(range(len(self.tags))))
        self._plans: dict[tuple[int, ...], _Plan] = {}
        self.alive_interval_s = config.poll_interval_s + len(self._full_plan.blocks) * config.timeout_s

    @property
    def read_plan(self) -> list[ReadBlock]:
        """The block reads one full poll sends (for status views and benchmarks)."""
        return [cb.block for cb in self._full_plan.blocks]

    # ------------------------------------------------------------------ session

    def _new_client(self, on_connect_change):
        cfg = self.config
        common = {"name": self.name, "timeout": cfg.timeout_s, "retries": 0, "reconnect_delay": 0,
                  "trace_connect": on_connect_change}
        if cfg.transport == "serial":
            return AsyncModbusSerialClient(cfg.serial_port, framer=FramerType.RTU, baudrate=cfg.baudrate,
                                           bytesize=cfg.bytesize, parity=cfg.parity,
                                           stopbits=cfg.stopbits, **common)
        framer = FramerType.RTU if cfg.transport == "rtu_over_tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(cfg.host, port=cfg.port, framer=framer, **common)

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_connect_change(up: bool) -> None:
            if not up and not lost.done():
                lost.set_result(None)

        self.stats.sessions_created += 1
        why = ("the port is missing, in use or not permitted" if cfg.transport == "serial"
               else f"refused or no answer within {cfg.timeout_s} s")
        client, cause = None, None
        try:
            client = self._new_client(on_connect_change)
            ok = await client.connect()
        except Exception as exc:  # e.g. an unresolvable host name, a missing serial port
            ok, why, cause = False, str(exc) or type(exc).__name__, exc
        if not ok or client is None or not client.connected:
            if client is not None:
                client.close()
            self.stats.last_error = f"cannot connect to {cfg.endpoint} ({why})"
            raise ConnectionLost(f"{self.name}: {self.stats.last_error}") from cause
        self._client, self._lost = client, lost
        self._consecutive_timeouts = 0

    async def close(self) -> None:
        client, self._client, self._lost = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _live_client(self):
        client, lost = self._client, self._lost
        if client is None or lost is None or lost.done() or not client.connected:
            raise ConnectionLost(f"{self.name}: not connected to {self.config.endpoint}")
        return client

    async def _request(self, call) -> object:
        """Run one pymodbus request; ConnectionLost if the link drops, _Timeout if unanswered."""
        client = self._live_client()
        lost = self._lost
        assert lost is not None
        task = asyncio.ensure_future(call(client))
        try:
            # pymodbus times out by itself after timeout_s (retries=0); the margin is a safety net.
            done, _ = await asyncio.wait({task, lost}, timeout=self.config.timeout_s * 1.5 + 0.05,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (stop): collect the request, or its error is logged unretrieved
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if lost.done() or not client.connected:
                raise ConnectionLost(f"{self.name}: connection to {self.config.endpoint} closed")
            raise _Timeout()
        try:
            response = task.result()
        except ConnectionException as exc:
            raise ConnectionLost(f"{self.name}: connection lost ({exc})") from exc
        except ModbusException as exc:
            if lost.done() or not client.connected:
                raise ConnectionLost(f"{self.name}: connection to {self.config.endpoint} closed") from exc
            # pymodbus raises ModbusIOException when no valid answer came for this request
            # (none in time, or one for another unit/transaction id): the device is not answering.
            if isinstance(exc, ModbusIOException):
                raise _Timeout() from exc
            raise
        self._consecutive_timeouts = 0
        return response

    def _note_timeout(self) -> None:
        self._consecutive_timeouts += 1
        if self._consecutive_timeouts >= self.config.max_consecutive_timeouts:
            raise ConnectionLost(f"{self.name}: no answer to {self._consecutive_timeouts} requests in a "
                                 f"row from {self.config.endpoint} (unit id {self.config.device_id})")

    # ------------------------------------------------------------------ reading

    def _compile(self, positions: list[int]) -> _Plan:
        """Plan the block reads for these tags and precompute the decode groups."""
        cfg = self.config
        tags = [self.tags[p] for p in positions]
        blocks = plan_reads(tags, cfg.max_registers_per_read, cfg.max_bits_per_read, cfg.max_gap)
        compiled = []
        for b in blocks:
            groups: dict[tuple[str, str], list] = {}
            bits: list[tuple[int, int, int]] = []
            strings: list[tuple[int, int, int, str]] = []
            for m in b.members:
                t = tags[m.tag]
                if t.is_bit:
                    continue
                if t.dtype == "string":
                    strings.append((m.tag, m.offset, t.width, t.order))
                elif t.bit is not None:
                    bits.append((m.tag, m.offset, t.bit))
                else:
                    groups.setdefault((t.dtype, t.order), []).append((m.tag, m.offset, t.scale, t.offset))
            compiled.append(_CompiledBlock(
                block=b, names=", ".join(tags[m.tag].name for m in b.members),
                pos=np.array([m.tag for m in b.members], dtype=np.intp),
                bit_offsets=np.array([m.offset for m in b.members], dtype=np.intp),
                groups=tuple(_Group(dt, order, np.array([g[0] for g in gs], dtype=np.intp),
                                    np.array([g[1] for g in gs], dtype=np.intp),
                                    np.array([g[2] for g in gs]), np.array([g[3] for g in gs]))
                             for (dt, order), gs in groups.items()),
                reg_bits=tuple(np.array([x[i] for x in bits], dtype=np.intp) for i in range(3)),
                strings=tuple(strings)))
        return _Plan(np.asarray(positions, dtype=np.int32), tuple(compiled),
                     any(cb.strings for cb in compiled))

    def _plan_for(self, names: Sequence[str] | None) -> _Plan:
        if names is None:
            return self._full_plan
        try:
            positions = tuple(self._pos[n] for n in names)
        except KeyError as exc:
            raise DriverError(f"{self.name}: no tag named {exc.args[0]!r}") from exc
        plan = self._plans.get(positions)
        if plan is None:
            plan = self._plans[positions] = self._compile(list(positions))
        return plan

    def _call_for(self, block: ReadBlock):
        dev, start, count = self.config.device_id, block.start, block.count
        method = _READ_METHODS[block.table]
        return lambda c: getattr(c, method)(start, count=count, device_id=dev)

    async def _fetch(self, block: ReadBlock) -> np.ndarray | str:
        """The block's registers (uint16) or bits (bool), or a one-line reason it is BAD."""
        t0 = time.perf_counter()
        self.stats.reads += 1
        try:
            response = await self._request(self._call_for(block))
        except _Timeout:
            self._note_timeout()
            return f"no answer within {self.config.timeout_s} s"
        except ModbusException as exc:
            return f"malformed response ({exc})"
        finally:
            self.stats.record_latency(time.perf_counter() - t0)
        where = f"{block.table} {block.start}..{block.start + block.count - 1}"
        fc = READ_FUNCTION[block.table]
        if response.function_code & 0x7F != fc:  # an answer to another request (a gateway mix-up)
            return f"answer with function code {response.function_code} to a read of {where} (FC{fc})"
        if response.isError():
            code = getattr(response, "exception_code", 0)
            return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')}) reading {where}"
        is_bits = block.table in BIT_TABLES
        data = response.bits if is_bits else response.registers
        # Bits come padded to whole bytes; anything else than exactly what was asked is not our answer.
        expected = -(-block.count // 8) * 8 if is_bits else block.count
        if data is None or len(data) != expected:
            got = 0 if data is None else len(data)
            kind, unit = "short" if got < expected else "oversized", "bits" if is_bits else "registers"
            return f"{kind} response reading {where}: {got} of {expected} {unit}"
        if is_bits:
            return np.asarray(data[: block.count], dtype=bool)
        return np.asarray(data, dtype=np.uint16)

    def _block_failed(self, cb: _CompiledBlock, index: np.ndarray, reason: str) -> None:
        """Record why a block's tags are BAD; log it once per block (and again only if it changes)."""
        for p in cb.pos:
            self.stats.tag_errors[self.tag_names[index[p]]] = reason
        key = (cb.block.table, cb.block.start, cb.block.count)
        if self._block_errors.get(key) != reason:
            self._block_errors[key] = reason
            log.warning("%s: %s; BAD: %s", self.name, reason, cb.names)

    def _block_ok(self, cb: _CompiledBlock) -> None:
        key = (cb.block.table, cb.block.start, cb.block.count)
        if self._block_errors.pop(key, None) is not None:
            log.info("%s: %s %d..%d answers again (%s)", self.name, cb.block.table, cb.block.start,
                     cb.block.start + cb.block.count - 1, cb.names)

    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        plan = self._plan_for(names)
        n = len(plan.index)
        values = np.full(n, np.nan)
        quality = np.full(n, int(Quality.BAD), dtype=np.uint8)
        receive_ts = np.full(n, np.nan)
        text: list[str | None] | None = [None] * n if plan.has_text else None
        for cb in plan.blocks:
            # Every block is asked even after one timed out: a silent block must not black out
            # the others (a device where all are silent is lost through _note_timeout).
            data = await self._fetch(cb.block)
            receive_ts[cb.pos] = time.time()
            if isinstance(data, str):
                self.stats.read_errors += 1
                self.stats.last_error = f"{self.name}: {data}"
                self._block_failed(cb, plan.index, data)
                continue
            self._block_ok(cb)
            if data.dtype == bool:
                values[cb.pos] = data[cb.bit_offsets]
                quality[cb.pos] = Quality.GOOD
                self.stats.last_alive = time.monotonic()
                continue
            for g in cb.groups:
                v = codec.decode(codec.gather(data, g.starts, width(g.dtype)), g.dtype, g.order,
                                 g.scale, g.offset)
                ok = np.isfinite(v)
                values[g.pos] = np.where(ok, v, np.nan)
                quality[g.pos] = np.where(ok, int(Quality.GOOD), int(Quality.BAD))
            bpos, boff, bbit = cb.reg_bits
            if len(bpos):
                values[bpos] = (data[boff] >> bbit.astype(np.uint16)) & 1
                quality[bpos] = Quality.GOOD
            for p, off, length, order in cb.strings:
                text[p] = codec.decode_string(data[off:off + length], order)  # type: ignore[index]
                quality[p] = Quality.GOOD
            if (quality[cb.pos] == Quality.GOOD).any():
                self.stats.last_alive = time.monotonic()  # now, not after the slow blocks behind it
        good = quality == Quality.GOOD
        errors = self.stats.tag_errors
        if errors or not good.all():
            for p in range(n):
                name = self.tag_names[plan.index[p]]
                if good[p]:
                    errors.pop(name, None)
                elif name not in errors or errors[name].startswith("value "):
                    errors[name] = "value is not a finite number (NaN or inf)"
        bad = int(n - np.count_nonzero(good))
        self.stats.batches += 1
        self.stats.values += n
        self.stats.bad_values += bad
        return ReadingBatch(index=plan.index.copy(), values=values, quality=quality,
                            source_ts=np.full(n, np.nan), receive_ts=receive_ts, text=text)
    async def subscribe(self, on_batch: OnBatch) -> None:
        """Poll every poll_interval_s on a fixed-rate schedule; overruns skip (and count) ticks."""

        async def poll() -> None:
            self._live_client()
            batch = await self.read()
            try:
                on_batch(batch)
            except Exception:  # a consumer bug must not tear down the PLC session
                log.exception("%s: on_batch raised", self.name)

        await poll_at_fixed_rate(self.config.poll_interval_s, poll, self._count_missed)

    def _count_missed(self, ticks: int) -> None:
        self.missed_ticks += ticks

    # ------------------------------------------------------------------ writing

    async def write(self, name: str, value: float) -> None:
        pos = self._pos.get(name)
        if pos is None:
            raise WriteRefused(f"{self.name}: no tag named {name!r}; writes go only to configured tags")
        tag = self.tags[pos]
        if not tag.writable:
            raise WriteRefused(f"{self.name}.{name}: tag is not writable "
                               "(set writable = true in its config to allow writes)")
        try:
            if tag.dtype == "bool":
                expected: list[int] = [to_raw(value, "bool")]
            else:
                expected = codec.encode(value, tag.dtype, tag.order, tag.scale, tag.offset)
        except ValueError as exc:
            raise WriteRefused(f"{self.name}.{name}: {exc}") from exc
        self.stats.writes += 1
        try:
            if tag.bit is not None:
                expected = [await self._merge_bit(tag, expected[0])]
            await self._send_write(tag, expected)
        except WriteFailed:
            self.stats.write_errors += 1
            raise
        except ConnectionLost:
            self.stats.write_errors += 1
            raise
        if not self.config.readback:
            return
        got = await self._fetch(ReadBlock(tag.table, tag.address, tag.width, ()))
        if isinstance(got, str):
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: readback failed: {got}")
        if [int(x) for x in got] != [int(x) for x in expected]:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: readback {[int(x) for x in got]} differs from the "
                              f"written {expected}")

    async def _merge_bit(self, tag: ModbusTag, bit_value: int) -> int:
        """Read-modify-write of one bit: the register with that bit set/cleared. Not atomic: a
        change the PLC makes to the register's other bits between our read and write is lost."""
        got = await self._fetch(ReadBlock(tag.table, tag.address, 1, ()))
        if isinstance(got, str):
            raise WriteFailed(f"{self.name}.{tag.name}: cannot read the register to change bit "
                              f"{tag.bit}: {got}")
        mask = 1 << int(tag.bit or 0)
        return (int(got[0]) | mask) if bit_value else (int(got[0]) & ~mask & 0xFFFF)

    async def _send_write(self, tag: ModbusTag, registers: list[int]) -> None:
        """FC5 for coils; FC16, or FC6 with write_function = 'single', for registers."""
        dev, addr, where = self.config.device_id, tag.address, f"{self.name}.{tag.name}"
        if tag.table == "coil":
            call = lambda c: c.write_coil(addr, bool(registers[0]), device_id=dev)  # noqa: E731
        elif self.config.write_function == "single":
            call = lambda c: c.write_register(addr, registers[0], device_id=dev)  # noqa: E731
        else:
            call = lambda c: c.write_registers(addr, registers, device_id=dev)  # noqa: E731
        try:
            response = await self._request(call)
        except _Timeout as exc:
            raise WriteFailed(f"{where}: no answer to the write within {self.config.timeout_s} s; "
                              "the value may or may not be set") from exc
        except ModbusException as exc:
            raise WriteFailed(f"{where}: malformed write response ({exc})") from exc
        if response.isError():
            code = getattr(response, "exception_code", 0)
            hint = ("; if the device does not support FC16 (write multiple registers), set "
                    "write_function = 'single'" if code == 1 and tag.table != "coil"
                    and self.config.write_function == "multiple" else "")
            raise WriteFailed(f"{where}: device refused the write with exception {code} "
                              f"({EXCEPTION_NAMES.get(code, 'unknown')}){hint}")

"""Modbus TCP driver: polls a device's tags in coalesced block reads, writes with readback.

One driver = one TCP connection to one unit id. Every connect() builds a fresh
AsyncModbusTcpClient with pymodbus' own reconnect and retries switched off: reconnecting is
the DriverSupervisor's job (backoff, session-rate limit), and a silent auto-reconnect inside
pymodbus would bypass both. A dropped connection is noticed at once through the client's
trace_connect callback, not only when the next request times out.

Quality mapping per block read: a normal response -> GOOD (NaN/inf floats -> BAD); an exception
response, a short or malformed response, or a timeout on a live connection -> BAD for that
block's tags (and a read error is counted); a closed connection -> ConnectionLost.
"""

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.base import (
    ConnectionLost,
    ConnectionState,
    DriverError,
    DriverStats,
    OnBatch,
    Quality,
    ReadingBatch,
    WriteFailed,
    WriteRefused,
)
from drivers.modbus import codec
from drivers.modbus.config import ModbusDeviceConfig, ModbusTag
from drivers.modbus.planner import ReadBlock, plan_reads

_EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                    4: "device failure", 5: "acknowledge", 6: "device busy",
                    8: "memory parity error", 10: "gateway path unavailable",
                    11: "gateway target failed to respond"}


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
    pos: np.ndarray  # batch positions of all members
    bit_offsets: np.ndarray  # for bit tables
    groups: tuple[_Group, ...]  # for register tables


@dataclass(frozen=True)
class _Plan:
    index: np.ndarray  # int32 tag positions of the batch
    blocks: tuple[_CompiledBlock, ...]


class _Timeout(Exception):
    """A request got no answer in time on a connection that still looks open."""


class ModbusDriver:
    """Driver protocol implementation for one Modbus TCP device."""

    def __init__(self, config: ModbusDeviceConfig) -> None:
        self.config = config
        self.name = config.name
        self.tags: list[ModbusTag] = list(config.tags)
        self.tag_names = [t.name for t in self.tags]
        self._pos = {n: i for i, n in enumerate(self.tag_names)}
        self.state = ConnectionState.DISCONNECTED
        self.stats = DriverStats()
        self.missed_ticks = 0  # poll ticks skipped because a poll overran its interval
        self._client: AsyncModbusTcpClient | None = None
        self._lost: asyncio.Future[None] | None = None
        self._consecutive_timeouts = 0
        self._full_plan = self._compile(list(range(len(self.tags))))
        self._plans: dict[tuple[int, ...], _Plan] = {}

    @property
    def read_plan(self) -> list[ReadBlock]:
        """The block reads one full poll sends (for status views and benchmarks)."""
        return [cb.block for cb in self._full_plan.blocks]

    # ------------------------------------------------------------------ session

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_connect_change(up: bool) -> None:
            if not up and not lost.done():
                lost.set_result(None)

        client = AsyncModbusTcpClient(cfg.host, port=cfg.port, name=self.name, timeout=cfg.timeout_s,
                                      retries=0, reconnect_delay=0, trace_connect=on_connect_change)
        self.stats.sessions_created += 1
        self.state = ConnectionState.CONNECTING
        try:
            ok = await client.connect()
        except Exception as exc:  # e.g. an unresolvable host name
            ok, why = False, str(exc) or type(exc).__name__
        else:
            why = f"refused or no answer within {cfg.timeout_s} s"
        if not ok or not client.connected:
            client.close()
            self.state = ConnectionState.DISCONNECTED
            self.stats.last_error = f"cannot connect to {cfg.host}:{cfg.port} ({why})"
            raise DriverError(f"{self.name}: {self.stats.last_error}")
        self._client, self._lost = client, lost
        self._consecutive_timeouts = 0
        self.state = ConnectionState.CONNECTED

    async def close(self) -> None:
        client, self._client, self._lost = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if self.state != ConnectionState.CLOSED:
            self.state = ConnectionState.DISCONNECTED

    def _live_client(self) -> AsyncModbusTcpClient:
        client, lost = self._client, self._lost
        if client is None or lost is None or lost.done() or not client.connected:
            raise ConnectionLost(f"{self.name}: not connected to {self.config.host}:{self.config.port}")
        return client

    async def _request(self, call) -> object:
        """Run one pymodbus request; ConnectionLost if the link drops, _Timeout if unanswered."""
        client = self._live_client()
        lost = self._lost
        assert lost is not None
        task = asyncio.ensure_future(call(client))
        # pymodbus times out by itself after timeout_s (retries=0); the margin is a safety net.
        done, _ = await asyncio.wait({task, lost}, timeout=self.config.timeout_s * 1.5 + 0.05,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if lost.done() or not client.connected:
                raise ConnectionLost(f"{self.name}: connection to {self.config.host}:{self.config.port} "
                                     "closed")
            raise _Timeout()
        try:
            response = task.result()
        except ConnectionException as exc:
            raise ConnectionLost(f"{self.name}: connection lost ({exc})") from None
        except ModbusException as exc:
            if lost.done() or not client.connected:
                raise ConnectionLost(f"{self.name}: connection to {self.config.host}:"
                                     f"{self.config.port} closed") from None
            if "No response" in str(exc):  # pymodbus' ModbusIOException for an unanswered request
                raise _Timeout() from None
            raise
        self._consecutive_timeouts = 0
        return response

    def _note_timeout(self) -> None:
        self._consecutive_timeouts += 1
        if self._consecutive_timeouts >= self.config.max_consecutive_timeouts:
            raise ConnectionLost(f"{self.name}: no answer to {self._consecutive_timeouts} requests in a "
                                 f"row from {self.config.host}:{self.config.port}")

    # ------------------------------------------------------------------ reading

    def _compile(self, positions: list[int]) -> _Plan:
        """Plan the block reads for these tags and precompute the decode groups."""
        cfg = self.config
        tags = [self.tags[p] for p in positions]
        blocks = plan_reads(tags, cfg.max_registers_per_read, cfg.max_bits_per_read, cfg.max_gap)
        compiled = []
        for b in blocks:
            pos = np.array([m.tag for m in b.members], dtype=np.intp)
            groups: dict[tuple[str, str], list] = {}
            for m in b.members:
                t = tags[m.tag]
                if not t.is_bit:
                    groups.setdefault((t.dtype, t.order), []).append((m.tag, m.offset, t.scale, t.offset))
            compiled.append(_CompiledBlock(
                block=b, pos=pos,
                bit_offsets=np.array([m.offset for m in b.members], dtype=np.intp),
                groups=tuple(_Group(dt, order, np.array([g[0] for g in gs], dtype=np.intp),
                                    np.array([g[1] for g in gs], dtype=np.intp),
                                    np.array([g[2] for g in gs]), np.array([g[3] for g in gs]))
                             for (dt, order), gs in groups.items())))
        return _Plan(np.asarray(positions, dtype=np.int32), tuple(compiled))

    def _plan_for(self, names: Sequence[str] | None) -> _Plan:
        if names is None:
            return self._full_plan
        try:
            positions = tuple(self._pos[n] for n in names)
        except KeyError as exc:
            raise DriverError(f"{self.name}: no tag named {exc.args[0]!r}") from None
        plan = self._plans.get(positions)
        if plan is None:
            plan = self._plans[positions] = self._compile(list(positions))
        return plan

    def _call_for(self, block: ReadBlock):
        dev, start, count = self.config.device_id, block.start, block.count
        method = {"coil": "read_coils", "discrete_input": "read_discrete_inputs",
                  "holding_register": "read_holding_registers",
                  "input_register": "read_input_registers"}[block.table]
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
        if response.isError():
            code = getattr(response, "exception_code", 0)
            return f"exception {code} ({_EXCEPTION_NAMES.get(code, 'unknown')}) reading {where}"
        data = response.bits if block.table in ("coil", "discrete_input") else response.registers
        if data is None or len(data) < block.count:
            return f"short response reading {where}: {0 if data is None else len(data)} of {block.count}"
        if block.table in ("coil", "discrete_input"):
            return np.asarray(data[: block.count], dtype=bool)
        return np.asarray(data[: block.count], dtype=np.uint16)

    async def read(self, names: Sequence[str] | None = None) -> ReadingBatch:
        plan = self._plan_for(names)
        n = len(plan.index)
        values = np.full(n, np.nan)
        quality = np.full(n, int(Quality.BAD), dtype=np.uint8)
        receive_ts = np.full(n, np.nan)
        skip_rest = ""
        for cb in plan.blocks:
            data = skip_rest or await self._fetch(cb.block)
            receive_ts[cb.pos] = time.time()
            if isinstance(data, str):
                # One unanswered request in a poll: the rest would likely wait as long, so the
                # poll ends on time and the rest of its blocks are BAD this round.
                if skip_rest:
                    continue  # not a request, so not a read error
                if data.startswith("no answer"):
                    skip_rest = f"skipped: {data} earlier in this poll"
                self.stats.read_errors += 1
                self.stats.last_error = f"{self.name}: {data}"
                continue
            if data.dtype == bool:
                values[cb.pos] = data[cb.bit_offsets]
                quality[cb.pos] = Quality.GOOD
                continue
            for g in cb.groups:
                v = codec.decode(codec.gather(data, g.starts, codec.width(g.dtype)), g.dtype, g.order,
                                 g.scale, g.offset)
                ok = np.isfinite(v)
                values[g.pos] = np.where(ok, v, np.nan)
                quality[g.pos] = np.where(ok, int(Quality.GOOD), int(Quality.BAD))
        bad = int(np.count_nonzero(quality != Quality.GOOD))
        self.stats.batches += 1
        self.stats.values += n
        self.stats.bad_values += bad
        return ReadingBatch(index=plan.index.copy(), values=values, quality=quality,
                            source_ts=np.full(n, np.nan), receive_ts=receive_ts)

    async def subscribe(self, on_batch: OnBatch) -> None:
        """Poll every poll_interval_s on a fixed-rate schedule; overruns skip (and count) ticks."""
        period = self.config.poll_interval_s
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            self._live_client()
            on_batch(await self.read())
            next_tick += period
            now = loop.time()
            if now > next_tick:
                missed = int((now - next_tick) // period) + 1
                self.missed_ticks += missed
                next_tick += missed * period
            await asyncio.sleep(next_tick - now)

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
                expected: list[int] = [codec.to_raw(value, "bool")]
            else:
                expected = codec.encode(value, tag.dtype, tag.order, tag.scale, tag.offset)
        except ValueError as exc:
            raise WriteRefused(f"{self.name}.{name}: {exc}") from None
        dev, addr = self.config.device_id, tag.address
        self.stats.writes += 1
        try:
            if tag.table == "coil":
                response = await self._request(
                    lambda c: c.write_coil(addr, bool(expected[0]), device_id=dev))
            else:
                response = await self._request(
                    lambda c: c.write_registers(addr, expected, device_id=dev))
        except _Timeout:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: no answer to the write within "
                              f"{self.config.timeout_s} s; the value may or may not be set") from None
        except ConnectionLost:
            self.stats.write_errors += 1
            raise
        except ModbusException as exc:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: malformed write response ({exc})") from None
        if response.isError():
            self.stats.write_errors += 1
            code = getattr(response, "exception_code", 0)
            raise WriteFailed(f"{self.name}.{name}: device refused the write with exception {code} "
                              f"({_EXCEPTION_NAMES.get(code, 'unknown')})")
        if not self.config.readback:
            return
        block = ReadBlock(tag.table, addr, tag.width, ())
        got = await self._fetch(block)
        if isinstance(got, str):
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: readback failed: {got}")
        if [int(x) for x in got] != [int(x) for x in expected]:
            self.stats.write_errors += 1
            raise WriteFailed(f"{self.name}.{name}: readback {[int(x) for x in got]} differs from the "
                              f"written {expected}")

"""Which block reads fetch a set of tags: fewest requests within the device's per-request limits.

Pure logic, so it is tested on its own. Tags on the same table are coalesced when they are
adjacent (or at most `max_gap` unused addresses apart), a block never exceeds the per-request
limit, and a tag is never split across two requests (its registers must come from one response
to be consistent).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from drivers.modbus.tables import BIT_TABLES, TABLE_ORDER


class Addressed(Protocol):
    """What the planner needs of a tag (ModbusTag satisfies it)."""

    @property
    def table(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def width(self) -> int: ...


@dataclass(frozen=True)
class Member:
    tag: int  # index into the tags passed to plan_reads
    offset: int  # first register/bit of the tag inside the block
    width: int


@dataclass(frozen=True)
class ReadBlock:
    """One request: `count` registers/bits of `table` from `start`, serving `members`."""

    table: str
    start: int
    count: int
    members: tuple[Member, ...]


def plan_reads(tags: Sequence[Addressed], max_registers: int = 125, max_bits: int = 2000,
               max_gap: int = 0) -> list[ReadBlock]:
    """Blocks sorted by (table, start); every tag in exactly one block; greedy, which is minimal
    for runs of adjacent tags. ValueError if one tag is wider than the limit."""
    if max_registers < 1 or max_bits < 1 or max_gap < 0:
        raise ValueError("plan_reads needs max_registers >= 1, max_bits >= 1, max_gap >= 0")
    blocks: list[ReadBlock] = []
    for table in TABLE_ORDER:
        limit = max_bits if table in BIT_TABLES else max_registers
        items = sorted((t.address, t.width, i) for i, t in enumerate(tags) if t.table == table)
        start = end = 0
        current: list[tuple[int, int, int]] = []
        for address, w, i in items:
            if w > limit:
                raise ValueError(f"tag #{i} at {table} {address} is {w} wide, over the limit of {limit}")
            if current and address - end <= max_gap and max(end, address + w) - start <= limit:
                end = max(end, address + w)
                current.append((address, w, i))
                continue
            if current:
                blocks.append(_block(table, start, end, current))
            start, end, current = address, address + w, [(address, w, i)]
        if current:
            blocks.append(_block(table, start, end, current))
    return blocks


def _block(table: str, start: int, end: int, items: list[tuple[int, int, int]]) -> ReadBlock:
    return ReadBlock(table, start, end - start, tuple(Member(i, a - start, w) for a, w, i in items))

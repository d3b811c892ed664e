"""Block-read planning: coverage, limits, order, minimality, and config validation."""

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.modbus import ModbusDeviceConfig, ModbusTag
from drivers.modbus.planner import plan_reads
from drivers.modbus.tables import BIT_TABLES, TABLE_ORDER


@dataclass(frozen=True)
class T:
    table: str
    address: int
    width: int


tag_st = st.builds(
    lambda table, address, w: T(table, address, 1 if table in BIT_TABLES else w),
    st.sampled_from(TABLE_ORDER), st.integers(0, 400), st.sampled_from([1, 2, 4]))


@given(tags=st.lists(tag_st, max_size=60), max_registers=st.integers(4, 125),
       max_bits=st.integers(1, 2000), max_gap=st.integers(0, 10))
def test_every_tag_once_within_limits_sorted_and_gaps_bounded(tags, max_registers, max_bits, max_gap):
    blocks = plan_reads(tags, max_registers, max_bits, max_gap)
    seen = sorted(m.tag for b in blocks for m in b.members)
    assert seen == list(range(len(tags)))
    keys = [(TABLE_ORDER.index(b.table), b.start) for b in blocks]
    assert keys == sorted(keys)
    for b in blocks:
        limit = max_bits if b.table in BIT_TABLES else max_registers
        assert 1 <= b.count <= limit
        covered = set()
        for m in b.members:
            t = tags[m.tag]
            assert t.table == b.table and t.address == b.start + m.offset and t.width == m.width
            assert m.offset >= 0 and m.offset + m.width <= b.count  # never split
            covered.update(range(m.offset, m.offset + m.width))
        # the block starts and ends on a tag, and no hole inside is longer than max_gap
        assert 0 in covered and b.count - 1 in covered
        hole = 0
        for a in range(b.count):
            hole = 0 if a in covered else hole + 1
            assert hole <= max_gap


@given(n=st.integers(1, 300), width=st.sampled_from([1, 2, 4]), limit=st.integers(4, 125),
       start=st.integers(0, 1000))
def test_adjacent_runs_use_the_minimal_number_of_blocks(n, width, limit, start):
    tags = [T("holding_register", start + i * width, width) for i in range(n)]
    per_block = limit // width
    assert len(plan_reads(tags, max_registers=limit)) == -(-n // per_block)


@given(n=st.integers(1, 5000), limit=st.integers(1, 2000))
def test_adjacent_bits_use_the_minimal_number_of_blocks(n, limit):
    tags = [T("coil", i, 1) for i in range(n)]
    assert len(plan_reads(tags, max_bits=limit)) == -(-n // limit)


def test_gap_filling_merges_only_within_max_gap():
    tags = [T("input_register", 0, 2), T("input_register", 5, 1), T("input_register", 20, 1)]
    assert [(b.start, b.count) for b in plan_reads(tags, max_gap=0)] == [(0, 2), (5, 1), (20, 1)]
    assert [(b.start, b.count) for b in plan_reads(tags, max_gap=3)] == [(0, 6), (20, 1)]
    assert [(b.start, b.count) for b in plan_reads(tags, max_gap=14)] == [(0, 21)]


def test_overlapping_tags_share_a_block():
    tags = [T("holding_register", 10, 2), T("holding_register", 10, 1), T("holding_register", 11, 1)]
    (b,) = plan_reads(tags)
    assert (b.start, b.count) == (10, 2) and len(b.members) == 3


def test_tag_wider_than_the_limit_is_an_error():
    with pytest.raises(ValueError, match="over the limit"):
        plan_reads([T("holding_register", 0, 4)], max_registers=2)


def _cfg(**kw):
    base = {"name": "plc", "host": "127.0.0.1",
            "tags": [{"name": "a", "table": "holding_register", "address": 0, "dtype": "uint16"}]}
    return ModbusDeviceConfig(**(base | kw))


@pytest.mark.parametrize(("kw", "message"), [
    ({"tags": [{"name": "a", "table": "coil", "address": 0, "dtype": "uint16"}]}, "need dtype 'bool'"),
    ({"tags": [{"name": "a", "table": "input_register", "address": 0, "dtype": "bool"}]},
     "use a numeric dtype"),
    ({"tags": [{"name": "a", "table": "input_register", "address": 0, "dtype": "uint16",
                "writable": True}]}, "set writable = false"),
    ({"tags": [{"name": "a", "table": "holding_register", "address": 65535, "dtype": "float32"}]},
     "lower the address"),
    ({"tags": [{"name": "a", "table": "coil", "address": 0, "dtype": "bool"},
               {"name": "a", "table": "coil", "address": 1, "dtype": "bool"}]}, "used twice"),
    ({"max_registers_per_read": 2,
      "tags": [{"name": "a", "table": "holding_register", "address": 0, "dtype": "float64"}]},
     "raise max_registers_per_read"),
    ({"tags": [{"name": "a", "table": "holding_register", "address": 0, "dtype": "int16", "scale": 0}]},
     "non-zero"),
    ({"tags": [{"name": "a", "table": "coil", "address": 0, "dtype": "bool", "scale": 2}]},
     "remove them"),
    ({"max_registers_per_read": 126}, "max_registers_per_read"),
    ({"max_bits_per_read": 2001}, "max_bits_per_read"),
    ({"device_id": 256}, "device_id"),
    ({"unit": 1}, "unit"),
])
def test_config_errors_name_the_field_and_the_fix(kw, message):
    with pytest.raises(ValidationError, match=message):
        _cfg(**kw)


def test_config_defaults():
    c = _cfg()
    assert (c.port, c.device_id, c.max_registers_per_read, c.max_bits_per_read, c.max_gap, c.readback) == \
        (502, 1, 125, 2000, 0, True)
    assert ModbusTag(name="x", table="coil", address=3, dtype="bool").width == 1

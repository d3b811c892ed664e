"""Register codec: known vectors, an independent struct-based reference, and round trips."""

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus import codec, tables

STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
          "float32": "f", "float64": "d"}
INT_TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
FLOAT_TYPES = ["float32", "float64"]


def reference_registers(value: float, dtype: str, order: str) -> list[int]:
    """Independent reference: struct's big-endian bytes, then the order's swaps word by word."""
    be = struct.pack(">" + STRUCT[dtype], value)
    words = [be[i:i + 2] for i in range(0, len(be), 2)]
    if order in ("DCBA", "CDAB"):
        words = words[::-1]
    if order in ("DCBA", "BADC"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def int_range(dtype: str) -> tuple[int, int]:
    bits = int(dtype.lstrip("uint")) if dtype.startswith("u") else int(dtype[3:])
    return (0, 2**bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize(("order", "expected"), [
    ("ABCD", [0x42F6, 0xE979]), ("CDAB", [0xE979, 0x42F6]),
    ("BADC", [0xF642, 0x79E9]), ("DCBA", [0x79E9, 0xF642])])
def test_float32_123_456_in_every_order(order, expected):
    assert codec.encode(123.456, "float32", order) == expected
    assert codec.decode(np.array([expected]), "float32", order)[0] == pytest.approx(123.456, rel=1e-7)


@pytest.mark.parametrize(("dtype", "order", "value", "expected"), [
    ("int32", "ABCD", -2, [0xFFFF, 0xFFFE]),
    ("int32", "CDAB", -2, [0xFFFE, 0xFFFF]),
    ("int32", "BADC", -2, [0xFFFF, 0xFEFF]),
    ("int32", "DCBA", -2, [0xFEFF, 0xFFFF]),
    ("uint32", "ABCD", 0x12345678, [0x1234, 0x5678]),
    ("uint32", "DCBA", 0x12345678, [0x7856, 0x3412]),
    ("int16", "ABCD", -2, [0xFFFE]), ("int16", "CDAB", -2, [0xFFFE]),
    ("int16", "BADC", -2, [0xFEFF]), ("int16", "DCBA", -2, [0xFEFF]),
    ("uint16", "DCBA", 0x1234, [0x3412]),
    ("uint64", "ABCD", 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
    ("uint64", "CDAB", 0x0102030405060708, [0x0708, 0x0506, 0x0304, 0x0102]),
    ("uint64", "BADC", 0x0102030405060708, [0x0201, 0x0403, 0x0605, 0x0807]),
    ("uint64", "DCBA", 0x0102030405060708, [0x0807, 0x0605, 0x0403, 0x0201]),
    ("float64", "ABCD", 1.0, [0x3FF0, 0, 0, 0]),
    ("float64", "DCBA", 1.0, [0, 0, 0, 0xF03F]),
])
def test_known_vectors(dtype, order, value, expected):
    assert codec.encode(value, dtype, order) == expected
    assert codec.decode_raw(np.array([expected]), dtype, order)[0] == value


def test_64_bit_integers_are_exact_at_the_extremes():
    for dtype in ("int64", "uint64"):
        lo, hi = int_range(dtype)
        for v in (lo, hi, hi - 1):
            regs = codec.encode(v, dtype, "BADC")
            assert regs == reference_registers(v, dtype, "BADC")
            assert int(codec.decode_raw(np.array([regs]), dtype, "BADC")[0]) == v


@given(dtype=st.sampled_from(INT_TYPES), order=st.sampled_from(tables.ORDERS), data=st.data())
def test_integer_raw_round_trip_matches_reference(dtype, order, data):
    lo, hi = int_range(dtype)
    v = data.draw(st.integers(lo, hi))
    regs = codec.encode(v, dtype, order)
    assert regs == reference_registers(v, dtype, order)
    assert int(codec.decode_raw(np.array([regs]), dtype, order)[0]) == v


@given(dtype=st.sampled_from(INT_TYPES), order=st.sampled_from(tables.ORDERS),
       scale=st.sampled_from([1.0, 0.1, 0.01, 2.5, -4.0, 1e-3]),
       offset=st.sampled_from([0.0, -40.0, 273.15, 1000.0]), data=st.data())
def test_scaled_integer_round_trip(dtype, order, scale, offset, data):
    lo, hi = int_range(dtype)
    raw = data.draw(st.integers(max(lo, -(2**40)), min(hi, 2**40)))  # float64-exact range
    regs = codec.encode_raw(np.array([raw]), dtype, order)
    value = codec.decode(regs, dtype, order, scale, offset)[0]
    assert value == pytest.approx(raw * scale + offset)
    assert codec.encode(value, dtype, order, scale, offset) == [int(r) for r in regs[0]]


@given(dtype=st.sampled_from(FLOAT_TYPES), order=st.sampled_from(tables.ORDERS),
       scale=st.sampled_from([1.0, 0.1, 2.5, -4.0]), offset=st.sampled_from([0.0, -40.0, 273.15]),
       data=st.data())
def test_float_round_trip(dtype, order, scale, offset, data):
    width = 32 if dtype == "float32" else 64
    value = data.draw(st.floats(-1e6, 1e6, allow_nan=False, width=width))
    regs = codec.encode(value, dtype, order, scale, offset)
    back = codec.decode(np.array([regs]), dtype, order, scale, offset)[0]
    rel = 1e-6 if dtype == "float32" else 1e-12
    assert back == pytest.approx(value, rel=rel, abs=rel * (abs(offset) + 1))
    if scale == 1.0 and offset == 0.0:
        assert regs == reference_registers(value, dtype, order)


@given(order=st.sampled_from(tables.ORDERS),
       raws=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8), n=st.integers(1, 6))
def test_decode_many_at_once_equals_one_by_one(order, raws, n):
    block = np.array(raws * n, dtype=np.uint16)
    starts = np.arange(0, len(block) - 1, 2)
    many = codec.decode(codec.gather(block, starts, 2), "float32", order, 0.5, 1.0)
    single = [codec.decode(block[s:s + 2][None, :], "float32", order, 0.5, 1.0)[0] for s in starts]
    np.testing.assert_array_equal(many, np.array(single))


@pytest.mark.parametrize(("value", "dtype", "scale", "offset"), [
    (32768, "int16", 1, 0), (-1, "uint16", 1, 0), (70000, "uint16", 1, 0),
    (6553.6, "uint16", 0.1, 0), (-40.6, "uint16", 1, -40), (2**32, "uint32", 1, 0),
    (2**63, "int64", 1, 0), (-1, "uint64", 1, 0), (1e39, "float32", 1, 0),
    (math.nan, "float32", 1, 0), (math.inf, "int32", 1, 0)])
def test_encode_refuses_values_the_raw_type_cannot_hold(value, dtype, scale, offset):
    with pytest.raises(ValueError, match="cannot write"):
        codec.encode(value, dtype, "ABCD", scale, offset)


def test_encode_rounds_scaled_integers_to_their_resolution():
    assert codec.encode(21.96, "int16", scale=0.1) == [220]
    assert codec.encode(-21.96, "int16", scale=0.1) == [(-220) & 0xFFFF]
    assert codec.encode(19.4, "uint16", offset=-0.2) == [20]


@pytest.mark.parametrize(("value", "dtype", "offset"), [(1.5, "uint16", 0), (2.5, "int32", 0),
                                                         (-0.25, "int16", 0), (10.5, "uint16", -40)])
def test_encode_refuses_fractions_for_unscaled_integers(value, dtype, offset):
    with pytest.raises(ValueError, match=f"cannot write {value!r}: {dtype} holds whole numbers only"):
        codec.encode(value, dtype, "ABCD", 1.0, offset)
    assert codec.encode(float(round(value)), dtype, "ABCD", 1.0, offset)  # a whole float is fine


def test_nan_registers_decode_to_nan():
    assert math.isnan(codec.decode(np.array([[0x7FC0, 0]]), "float32", "ABCD")[0])


def test_widths():
    assert [tables.width(t) for t in ("bool", "int16", "uint32", "float32", "int64", "float64")] == \
        [1, 1, 2, 2, 4, 4]


def test_declared_widths_match_the_codec():
    for dtype, w in tables.REGISTER_WIDTH.items():
        assert len(codec.encode(1, dtype)) == w, dtype

"""Registers <-> values for Modbus data types, vectorized with numpy (no per-value Python work).

Byte order names describe where the bytes of the big-endian value land on the wire.
Call the value's bytes A B C D ... (A most significant). Two independent switches follow:

* byte swap inside each 16-bit register: orders DCBA and BADC;
* word swap (register order reversed): orders DCBA and CDAB.

So, for the registers as sent (register 0 first):

==========  ==============  ======================  ===========================
order       16-bit (AB)     32-bit (ABCD)           64-bit (ABCDEFGH)
==========  ==============  ======================  ===========================
ABCD        AB              AB CD                   AB CD EF GH  (big-endian)
CDAB        AB              CD AB                   GH EF CD AB  (words swapped)
BADC        BA              BA DC                   BA DC FE HG  (bytes swapped)
DCBA        BA              DC BA                   HG FE DC BA  (little-endian)
==========  ==============  ======================  ===========================

Example: float32 123.456 is 0x42F6E979, so ABCD = [0x42F6, 0xE979], CDAB = [0xE979, 0x42F6],
BADC = [0xF642, 0x79E9], DCBA = [0x79E9, 0xF642].

Engineering value = raw * scale + offset on decode; encode inverts it with
drivers.modbus.scaling.to_raw, which refuses values the raw type cannot hold.
"""


import numpy as np

from drivers.modbus.scaling import to_raw
from drivers.modbus.tables import ORDERS

# Big-endian numpy type of each register dtype (its itemsize / 2 is its REGISTER_WIDTH).
_NUMPY_BE: dict[str, np.dtype] = {
    "int16": np.dtype(">i2"), "uint16": np.dtype(">u2"),
    "int32": np.dtype(">i4"), "uint32": np.dtype(">u4"),
    "int64": np.dtype(">i8"), "uint64": np.dtype(">u8"),
    "float32": np.dtype(">f4"), "float64": np.dtype(">f8"),
}

def decode_string(regs: np.ndarray, order: str = "ABCD") -> str:
    """Registers -> text, two characters per register; ABCD = first character in the high byte,
    BADC = in the low byte. Trailing NULs and spaces (padding) are dropped; bytes that are not
    UTF-8 show as U+FFFD."""
    r = np.asarray(regs, dtype=np.uint16)
    if order == "BADC":
        r = (r >> 8) | ((r & 0xFF) << 8)
    raw = r.astype(">u2").tobytes()
    return raw.split(b"\0", 1)[0].rstrip(b" ").decode("utf-8", errors="replace")


def encode_string(text: str, length: int, order: str = "ABCD") -> list[int]:
    """Text -> `length` registers, NUL-padded (for test data and simulators; the driver only reads)."""
    raw = text.encode("utf-8")
    if len(raw) > 2 * length:
        raise ValueError(f"{text!r} needs {len(raw)} bytes; {length} registers hold {2 * length}")
    r = np.frombuffer(raw.ljust(2 * length, b"\0"), dtype=">u2").astype(np.uint16)
    if order == "BADC":
        r = (r >> 8) | ((r & 0xFF) << 8)
    return [int(x) for x in r]


def _swaps(order: str) -> tuple[bool, bool]:
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    return order in ("DCBA", "BADC"), order in ("DCBA", "CDAB")


def _reorder(regs: np.ndarray, order: str) -> np.ndarray:
    """Apply the order's byte/word swaps; the transform is its own inverse."""
    byte_swap, word_swap = _swaps(order)
    if byte_swap:
        regs = (regs >> 8) | ((regs & 0xFF) << 8)
    if word_swap:
        regs = regs[:, ::-1]
    return regs


def decode_raw(regs: np.ndarray, dtype: str, order: str = "ABCD") -> np.ndarray:
    """(n, width) registers -> n raw values in the dtype's own numpy type (exact, no scaling)."""
    be = _NUMPY_BE[dtype]
    w = be.itemsize // 2
    r = np.asarray(regs, dtype=np.uint16).reshape(-1, w)
    r = _reorder(r, order)
    return np.ascontiguousarray(r, dtype=">u2").view(be).reshape(-1).astype(be.newbyteorder("="))


def decode(regs: np.ndarray, dtype: str, order: str = "ABCD",
           scale: float | np.ndarray = 1.0, offset: float | np.ndarray = 0.0) -> np.ndarray:
    """(n, width) registers -> n engineering values as float64 (raw * scale + offset)."""
    return decode_raw(regs, dtype, order).astype(np.float64) * scale + offset


def gather(block: np.ndarray, starts: np.ndarray, w: int) -> np.ndarray:
    """Registers of many same-width values from one block read: (n, w) from n start offsets."""
    return block[np.asarray(starts)[:, None] + np.arange(w)]


def encode_raw(raw: np.ndarray, dtype: str, order: str = "ABCD") -> np.ndarray:
    """n raw values (already in range) -> (n, width) uint16 registers in wire order."""
    be = _NUMPY_BE[dtype]
    w = be.itemsize // 2
    r = np.asarray(raw).astype(be).reshape(-1).view(">u2").reshape(-1, w).astype(np.uint16)
    return np.ascontiguousarray(_reorder(r, order))


def encode(value: float, dtype: str, order: str = "ABCD", scale: float = 1.0,
           offset: float = 0.0) -> list[int]:
    """Engineering value -> registers to write (ValueError if it does not fit the raw type)."""
    raw = to_raw(value, dtype, scale, offset)
    if dtype == "bool":
        raise ValueError("bool values are written as coils, not registers")
    be = _NUMPY_BE[dtype].newbyteorder("=")
    return [int(x) for x in encode_raw(np.array([raw], dtype=be), dtype, order)[0]]

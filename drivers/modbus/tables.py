"""The Modbus data model, stated once: tables, their function codes, data types and their widths.

Pure names and numbers (no numpy, no pymodbus), so the config model can use them at load time
and the planner, codec and driver share one copy.
"""

from typing import Literal

Table = Literal["coil", "discrete_input", "holding_register", "input_register"]
TABLE_ORDER: tuple[str, ...] = ("coil", "discrete_input", "holding_register", "input_register")
BIT_TABLES = frozenset({"coil", "discrete_input"})
WRITABLE_TABLES = frozenset({"coil", "holding_register"})
READ_FUNCTION = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
# Modicon reference ranges per table: (5-digit first, 6-digit first); the first one is address 0.
MODICON_BASE = {"coil": (1, 1), "discrete_input": (10001, 100001), "input_register": (30001, 300001),
                "holding_register": (40001, 400001)}
EXCEPTION_NAMES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                   4: "device failure", 5: "acknowledge", 6: "device busy", 8: "memory parity error",
                   10: "gateway path unavailable", 11: "gateway target failed to respond"}

DType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
                "string"]
Order = Literal["ABCD", "DCBA", "BADC", "CDAB"]
ORDERS: tuple[str, ...] = ("ABCD", "DCBA", "BADC", "CDAB")
# Registers one value of each numeric dtype occupies (bool: one bit or one bit of a register).
REGISTER_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
                  "float32": 2, "float64": 4}
INT_RANGE = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
             "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
             "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1)}
# The largest counter an integer-valued dtype holds exactly (the watchdog heartbeat's wrap).
COUNTER_LIMIT = {"int16": 1 << 15, "uint16": 1 << 16, "int32": 1 << 31, "uint32": 1 << 32,
                 "int64": 1 << 63, "uint64": 1 << 64, "float32": 1 << 24, "float64": 1 << 53}


def width(dtype: str) -> int:
    """Registers (or bits, for bool) one value occupies (strings: see their `length`)."""
    return 1 if dtype == "bool" else REGISTER_WIDTH[dtype]


def modicon_to_address(table: str, number: int) -> int | None:
    """Zero-based address of a Modicon reference on `table`, or None if it is not one."""
    five, six = MODICON_BASE[table]
    if six <= number <= six + 65535 and table != "coil":
        return number - six
    if five <= number <= five + (65535 if table == "coil" else 9998):
        return number - five
    return None

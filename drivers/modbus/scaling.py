"""Engineering value -> raw register value: invert scale/offset and refuse what the dtype cannot hold.

Pure Python (no numpy), so the config can check a safe-state or watchdog value against its tag at
load time with the same rule the driver applies when it writes.
"""

import math
import numbers

from drivers.modbus.tables import INT_RANGE

FLOAT32_MAX = 3.4028234663852886e38


def to_raw(value: float, dtype: str, scale: float = 1.0, offset: float = 0.0) -> int | float:
    """Invert scale/offset and check the raw type can hold the result (ValueError if not).

    An unscaled integer tag takes whole numbers only (1.5 is refused, not rounded); a scaled one
    rounds to the register's resolution (nearest, ties to even).
    """
    if (isinstance(value, numbers.Integral) and dtype in INT_RANGE
            and scale == 1 and float(offset).is_integer()):
        v_int = int(value) - int(offset)  # exact for 64-bit integers, which float64 cannot hold
        lo, hi = INT_RANGE[dtype]
        if not lo <= v_int <= hi:
            raise ValueError(f"cannot write {value!r}: raw value {v_int} is outside {dtype} [{lo}, {hi}]")
        return v_int
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"cannot write {value!r}: not a finite number")
    raw = (v - offset) / scale
    if dtype == "bool":
        if raw not in (0.0, 1.0):
            raise ValueError(f"cannot write {value!r} to a bool: use 0 or 1")
        return int(raw)
    if dtype.startswith("float"):
        if not math.isfinite(raw) or (dtype == "float32" and abs(raw) > FLOAT32_MAX):
            raise ValueError(f"cannot write {value!r}: raw value {raw!r} overflows {dtype}")
        return raw
    lo, hi = INT_RANGE[dtype]
    if not math.isfinite(raw):
        raise ValueError(f"cannot write {value!r}: raw value {raw!r} is not finite")
    if scale == 1 and float(offset).is_integer() and not raw.is_integer():
        raise ValueError(f"cannot write {value!r}: {dtype} holds whole numbers only")
    r = round(raw)  # exact Python int, ties to even
    if not lo <= r <= hi:
        raise ValueError(f"cannot write {value!r}: raw value {r} is outside {dtype} "
                         f"[{lo}, {hi}] (check scale={scale} and offset={offset})")
    return r

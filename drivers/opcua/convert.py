"""DataValue -> (value, quality, timestamp) conversion, and values to the node's own type for writes."""

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from asyncua import ua

from drivers.base import Quality, ReadingBatch

_SEVERITY_MASK = 0xC0000000
_INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}
_FLOATS = (ua.VariantType.Float, ua.VariantType.Double)


def quality_of(status: ua.StatusCode | None) -> Quality:
    """Good -> GOOD, Uncertain* -> UNCERTAIN, Bad* (and the reserved severity) -> BAD."""
    code = 0 if status is None else int(status.value)
    severity = code & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD
    if severity == 0x40000000:
        return Quality.UNCERTAIN
    return Quality.BAD


def numeric(value: Any) -> float | None:
    """A scalar as float64 (bool as 0/1); None for anything a model cannot use (text, arrays, NaN, inf)."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


def _epoch(dt: Any) -> float:
    return dt.timestamp() if dt is not None else math.nan


def text_of(value: Any) -> str | None:
    """The text of a String / LocalizedText value; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    return None


def element(value: Any, index: int | None) -> Any:
    """Element `index` of an array value (None when out of range); the value itself when index is None.

    Picked here rather than with a Read IndexRange: not every server honours IndexRange.
    """
    if index is None:
        return value
    if isinstance(value, list | tuple | np.ndarray) and index < len(value):
        return value[index]
    return None


def to_batch(index: Sequence[int], datavalues: Sequence[ua.DataValue], receive_ts: float | None = None,
             elements: Sequence[int | None] | None = None) -> ReadingBatch:
    """A ReadingBatch from DataValues aligned with `index` (tag positions).

    `elements` gives, per entry, the array element its tag takes (None: the scalar value).
    Text values (String, LocalizedText) keep their quality, value NaN, and go to `batch.text`.
    """
    n = len(index)
    now = time.time() if receive_ts is None else receive_ts
    values = np.full(n, np.nan)
    quality = np.empty(n, dtype=np.uint8)
    source_ts = np.empty(n)
    text: list[str | None] | None = None
    for k, dv in enumerate(datavalues):
        q = quality_of(dv.StatusCode)
        if q is not Quality.BAD:
            raw = element(dv.Value.Value if dv.Value is not None else None,
                          None if elements is None else elements[k])
            v = numeric(raw)
            if v is not None:
                values[k] = v
            elif (s := text_of(raw)) is not None:
                text = text if text is not None else [None] * n
                text[k] = s
            else:
                q = Quality.BAD
        quality[k] = int(q)
        source_ts[k] = _epoch(dv.SourceTimestamp if dv.SourceTimestamp is not None else dv.ServerTimestamp)
    return ReadingBatch(index=np.asarray(index, dtype=np.int32), values=values, quality=quality,
                        source_ts=source_ts, receive_ts=np.full(n, now), text=text)


def variant_type_of(datatype: ua.NodeId) -> ua.VariantType | None:
    """The wire type of a built-in DataType node id (ns 0, ids 1..25); None for derived/custom types."""
    ident = datatype.Identifier
    if datatype.NamespaceIndex == 0 and isinstance(ident, int) and 1 <= ident <= 25:
        return ua.VariantType(ident)
    return None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_variant(value: float, vtype: ua.VariantType) -> ua.Variant:
    """`value` encoded as the node's type; ValueError when it does not fit (range, fraction, NaN)."""
    if not math.isfinite(value):
        raise ValueError(f"cannot write {value}: not a finite number")
    if vtype is ua.VariantType.Boolean:
        if value not in (0, 1):
            raise ValueError(f"{value} is not a boolean (0 or 1)")
        return ua.Variant(bool(value), vtype)
    if vtype is ua.VariantType.Float and abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value} does not fit Float (float32, |x| <= {FLOAT32_MAX:.4g})")
    if vtype in _FLOATS:
        return ua.Variant(float(value), vtype)
    if vtype in _INT_RANGES:
        lo, hi = _INT_RANGES[vtype]
        if not math.isfinite(value) or value != int(value) or not lo <= int(value) <= hi:
            raise ValueError(f"{value} does not fit {vtype.name} ({lo}..{hi}, integers only)")
        return ua.Variant(int(value), vtype)
    raise ValueError(f"cannot write a number to a {vtype.name} node")


def same_value(written: ua.Variant, read: Any) -> bool:
    """Readback check; Float nodes compare at float32 precision."""
    got = numeric(read)
    if got is None:
        return False
    if written.VariantType is ua.VariantType.Float:
        return bool(np.float32(got) == np.float32(written.Value))
    return got == float(written.Value)

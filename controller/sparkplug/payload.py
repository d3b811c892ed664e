"""Sparkplug B payloads: our `Metric` values to and from the official protobuf schema (sparkplug_b.proto).

Only the datatypes the edge node publishes are written (Boolean, Int32, Int64, UInt64, Double,
String; properties Int32 and String); `decode` reads what `encode` wrote and what a host sends in
an NCMD (any scalar value). Timestamps are ms since the epoch, as the specification says.

>>> m = Metric("Line/Score", DOUBLE, 0.25, alias=7, timestamp_ms=1000)
>>> p = decode(encode([m], seq=3, timestamp_ms=1001))
>>> (p.seq, p.timestamp_ms, p.metrics[0].value, p.metrics[0].alias)
(3, 1001, 0.25, 7)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from controller.sparkplug import sparkplug_b_pb2 as pb

INT32, INT64, UINT64 = pb.Int32, pb.Int64, pb.UInt64
DOUBLE, BOOLEAN, STRING = pb.Double, pb.Boolean, pb.String
Value = bool | int | float | str | None
_INT_TYPES = (pb.Int8, pb.Int16, pb.Int32, pb.UInt8, pb.UInt16, pb.UInt32)  # int_value (uint32 on the wire)
_LONG_TYPES = (pb.Int64, pb.UInt64, pb.DateTime)  # long_value (uint64 on the wire)


@dataclass(frozen=True)
class Metric:
    """One metric of a payload. `name` in births (and commands), `alias` always once born; a None
    value (or a NaN) is sent as is_null."""

    name: str | None
    datatype: int
    value: Value
    alias: int | None = None
    timestamp_ms: int | None = None
    is_historical: bool = False
    properties: dict[str, tuple[int, Value]] = field(default_factory=dict)  # key -> (datatype, value)


@dataclass(frozen=True)
class Payload:
    timestamp_ms: int | None
    seq: int | None
    metrics: tuple[Metric, ...]


def encode(metrics: Iterable[Metric], *, seq: int | None, timestamp_ms: int) -> bytes:
    """The protobuf bytes of one payload (`seq` None: NDEATH, which carries none)."""
    p = pb.Payload()
    p.timestamp = timestamp_ms
    if seq is not None:
        p.seq = seq
    for m in metrics:
        out = p.metrics.add()
        if m.name is not None:
            out.name = m.name
        if m.alias is not None:
            out.alias = m.alias
        if m.timestamp_ms is not None:
            out.timestamp = m.timestamp_ms
        out.datatype = m.datatype
        if m.is_historical:
            out.is_historical = True
        _set_value(out, m.datatype, m.value)
        for key, (datatype, value) in m.properties.items():
            out.properties.keys.append(key)
            prop = out.properties.values.add()
            prop.type = datatype
            _set_value(prop, datatype, value)
    return p.SerializeToString()


def decode(data: bytes) -> Payload:
    """The payload in `data`; a protobuf that does not parse raises ValueError."""
    p = pb.Payload()
    try:
        p.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError, never a product error
        raise ValueError(f"not a Sparkplug B payload: {exc}") from exc
    metrics = []
    for m in p.metrics:
        props = {k: (v.type, _get_value(v))
                 for k, v in zip(m.properties.keys, m.properties.values, strict=False)}
        texts = (m.name, _get_value(m), *props, *(v for _, v in props.values()))
        if any(isinstance(t, bytes) for t in texts):
            # proto2 strings are not checked for UTF-8: protobuf gives such a string as bytes
            raise ValueError("not a Sparkplug B payload: a name or String value is not UTF-8")
        metrics.append(Metric(m.name if m.HasField("name") else None, m.datatype, _get_value(m),
                              alias=m.alias if m.HasField("alias") else None,
                              timestamp_ms=m.timestamp if m.HasField("timestamp") else None,
                              is_historical=m.is_historical, properties=props))
    return Payload(p.timestamp if p.HasField("timestamp") else None, p.seq if p.HasField("seq") else None,
                   tuple(metrics))


def historical(data: bytes, *, seq: int) -> bytes:
    """A stored payload as replayed: every metric is_historical, a new seq, its own timestamps."""
    p = decode(data)
    return encode([replace(m, is_historical=True) for m in p.metrics], seq=seq,
                  timestamp_ms=p.timestamp_ms or 0)


def _set_value(out, datatype: int, value: Value) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        out.is_null = True
    elif datatype == BOOLEAN:
        out.boolean_value = bool(value)
    elif datatype == STRING:
        out.string_value = str(value)
    elif datatype == DOUBLE:
        out.double_value = float(value)
    elif datatype == pb.Float:
        out.float_value = float(value)
    elif datatype in _INT_TYPES:
        out.int_value = int(value) & 0xFFFFFFFF  # two's complement in uint32, as the spec says
    elif datatype in _LONG_TYPES:
        out.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
    else:
        raise ValueError(f"datatype {datatype} is not one the edge node writes")


def _get_value(m) -> Value:
    if m.is_null:
        return None
    kind = m.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(m, kind)
    datatype = m.datatype if hasattr(m, "datatype") else m.type
    if kind == "int_value" and datatype in (pb.Int8, pb.Int16, pb.Int32) and value >= 1 << 31:
        return value - (1 << 32)
    if kind == "long_value" and datatype == pb.Int64 and value >= 1 << 63:
        return value - (1 << 64)
    return value if kind in ("int_value", "long_value", "float_value", "double_value", "boolean_value",
                             "string_value") else None

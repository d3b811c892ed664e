"""Sink-neutral records: what the controller sends to the cloud, before any sink's wire format.

A `Record` is one measurement at one instant: a name, string tags, typed fields and an integer
ns timestamp, plus its `kind` (``window`` for a closed summary window, ``event`` for an alarm,
action, driver, model or outbox event) so a sink can treat them differently (Sparkplug publishes
alarm transitions at once, tag values at a rate). `controller.points` builds them; the outbox
stores them with `encode` and hands them back with `decode`; each sink (controller/sinks/)
turns them into its own format (InfluxDB line protocol, Sparkplug metrics, ...).

Field values are str, int, float or bool, and a field keeps its type from record to record
(InfluxDB rejects a batch whose field type changes). Floats are finite: an undefined statistic
is left out of the record, never stored as NaN. Ints fit 64 bits (InfluxDB's integer).

The encoding is JSON, one record per line, ``[kind, measurement, time_ns, {tags}, {fields}]``,
compact and in the records' own key order, so the same records always give the same bytes and
JSON keeps the int/float distinction (``1`` vs ``1.0``):

>>> r = Record("linesentry_line", {"site": "s"}, {"steps": 4, "score_max": 0.5}, 10**10, "window")
>>> encode([r])
'["window","linesentry_line",10000000000,{"site":"s"},{"steps":4,"score_max":0.5}]'
>>> decode(encode([r])) == [r]
True
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["window", "event"]
KINDS = ("window", "event")
FieldValue = str | int | float | bool

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # an integer field's range in InfluxDB
_FIELD_TYPES = (str, int, float)  # bool is an int; a tuple, as isinstance is much slower with a union
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True)
class Record:
    """One measurement at one instant, in no sink's format (see module docstring)."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int
    kind: Kind

    def __post_init__(self) -> None:
        if not self.measurement:
            raise ValueError("record measurement must be a non-empty string")
        if self.kind not in KINDS:
            raise ValueError(f"record kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.fields:
            raise ValueError(f"record {self.measurement!r} has no fields")
        for key, value in self.fields.items():
            if not isinstance(value, _FIELD_TYPES):
                raise ValueError(f"field {key!r} of {self.measurement!r}: {type(value).__name__} is not "
                                 "a str, int, float or bool")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"field {key!r} of {self.measurement!r} is {value}: leave it out instead")
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                # InfluxDB refuses the whole request (400: the batch would be dead-lettered)
                raise ValueError(f"field {key!r} of {self.measurement!r} is {value}: beyond a 64-bit "
                                 "integer; leave it out instead")


def encode(records: Iterable[Record]) -> str:
    """The outbox body for `records`: one JSON array per line (see module docstring).

    Always valid UTF-8: a lone surrogate (a str decoded with ``surrogateescape``, a broken
    UTF-16 string from a device) becomes U+FFFD, as SQLite and every sink would refuse it.
    """
    body = "\n".join(_ENCODER.encode([r.kind, r.measurement, r.time_ns, r.tags, r.fields]) for r in records)
    try:
        body.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", body)
    return body


def decode(body: str) -> list[Record]:
    """The records of an outbox body written by `encode`."""
    # one parse for the whole body; split on "\n" only: JSON escapes it inside strings, while
    # str.splitlines() would also split on U+2028 and U+0085, which ensure_ascii=False leaves raw
    rows = json.loads("[" + ",".join(line for line in body.split("\n") if line) + "]")
    return [Record(measurement, tags, fields, t, kind) for kind, measurement, t, tags, fields in rows]

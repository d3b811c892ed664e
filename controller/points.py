"""The cloud point schema, built only with influxdb_client's `Point` (never hand-written line protocol).

Every point carries the identity tags ``site``, ``line``, ``controller``. Timestamps are integer
ns since the epoch (write precision NS).

``linesentry_tag`` — one point per tag and window, time = window END
    tags:   site, line, controller, tag, unit
    fields: count (int), mean, min, max, std, last (float), bad_count (int),
            max_score, alarm_seconds (float)

``linesentry_line`` — one point per window, time = window END
    tags:   site, line, controller
    fields: steps (int), score_max, score_mean, alarm_seconds (float)

``linesentry_event`` — one point per event, time = event time (ns, unique per controller)
    tags:   site, line, controller, kind (alarm|action|driver|model|outbox), source
    fields: message (str), seq (int, per-process event counter), and optional
            state (str), result (str), plus any extra str/int/float/bool fields the caller gives

Field types never change between points (ints stay ints, floats are always written as floats),
because InfluxDB rejects a batch whose field type conflicts with the stored one (HTTP 400). Float
statistics that are undefined (NaN: no usable sample in the window) are left out of the point,
as `Point` drops non-finite floats. Window timestamps are aligned window ends, so a resend of the
same window overwrites the same points. Two events of one series in the same ns would overwrite
each other, so `EventClock` makes event timestamps strictly increasing per controller (a
collision moves the later event by 1 ns). Backends that store ms (VictoriaMetrics, Prometheus)
still merge events within one ms; InfluxDB keeps ns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from influxdb_client import Point, WritePrecision

from controller.summaries import WindowSummary

TAG_MEASUREMENT = "linesentry_tag"
LINE_MEASUREMENT = "linesentry_line"
EVENT_MEASUREMENT = "linesentry_event"
EVENT_KINDS = ("alarm", "action", "driver", "model", "outbox")
_RESERVED_EVENT_FIELDS = {"message", "seq"}


@dataclass(frozen=True)
class Identity:
    """Where the data comes from: the tags every point carries."""

    site: str
    line: str
    controller: str

    def __post_init__(self) -> None:
        for key in ("site", "line", "controller"):
            if not getattr(self, key):
                raise ValueError(f"identity.{key} must be a non-empty string")

    def apply(self, point: Point) -> Point:
        return point.tag("site", self.site).tag("line", self.line).tag("controller", self.controller)


@dataclass(frozen=True)
class TagInfo:
    """Per-tag labels, in the same order as the summarizer's arrays."""

    name: str
    unit: str = ""


def tag_points(summary: WindowSummary, identity: Identity, tags: Sequence[TagInfo]) -> list[Point]:
    """One `linesentry_tag` point per tag for a closed window."""
    if len(tags) != len(summary.count):
        raise ValueError(f"{len(tags)} tag infos for a summary of {len(summary.count)} tags")
    s = summary
    # tolist() converts to Python ints/floats once per window, not per field
    cols = (s.count.tolist(), s.mean.tolist(), s.min.tolist(), s.max.tolist(), s.std.tolist(),
            s.last.tolist(), s.bad_count.tolist(), s.max_score.tolist(), s.alarm_seconds.tolist())
    points = []
    rows = zip(*cols, strict=True)
    for info, (count, mean, mn, mx, std, last, bad, score, alarm_s) in zip(tags, rows, strict=True):
        p = identity.apply(Point(TAG_MEASUREMENT)).tag("tag", info.name)
        if info.unit:
            p.tag("unit", info.unit)
        (p.field("count", int(count)).field("mean", float(mean)).field("min", float(mn))
         .field("max", float(mx)).field("std", float(std)).field("last", float(last))
         .field("bad_count", int(bad)).field("max_score", float(score))
         .field("alarm_seconds", float(alarm_s)).time(s.end_ns, WritePrecision.NS))
        points.append(p)
    return points


def line_point(summary: WindowSummary, identity: Identity) -> Point:
    """The `linesentry_line` point for a closed window."""
    return (identity.apply(Point(LINE_MEASUREMENT))
            .field("steps", int(summary.steps))
            .field("score_max", float(summary.line_score_max))
            .field("score_mean", float(summary.line_score_mean))
            .field("alarm_seconds", float(summary.line_alarm_seconds))
            .time(summary.end_ns, WritePrecision.NS))


def window_points(summary: WindowSummary, identity: Identity, tags: Sequence[TagInfo]) -> list[Point]:
    """All points of one window: the tag points and the line point."""
    return [*tag_points(summary, identity, tags), line_point(summary, identity)]


class EventClock:
    """Strictly increasing ns timestamps and sequence numbers for events of one controller."""

    def __init__(self) -> None:
        self._last_ns = 0
        self._seq = 0

    def stamp(self, time_ns: int | None = None) -> tuple[int, int]:
        t = time.time_ns() if time_ns is None else int(time_ns)
        if t <= self._last_ns:
            t = self._last_ns + 1
        self._last_ns = t
        self._seq += 1
        return t, self._seq


def event_point(identity: Identity, clock: EventClock, kind: str, source: str, message: str,
                time_ns: int | None = None, state: str | None = None, result: str | None = None,
                **fields: str | int | float | bool) -> Point:
    """A `linesentry_event` point; `clock` keeps two events in the same ns from overwriting."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
    if not source:
        raise ValueError("event source must be a non-empty string")
    clash = _RESERVED_EVENT_FIELDS & fields.keys()
    if clash:
        raise ValueError(f"event field names {sorted(clash)} are reserved")
    t, seq = clock.stamp(time_ns)
    p = (identity.apply(Point(EVENT_MEASUREMENT)).tag("kind", kind).tag("source", source)
         .field("message", str(message)).field("seq", seq))
    if state is not None:
        p.field("state", str(state))
    if result is not None:
        p.field("result", str(result))
    for key, value in fields.items():
        if isinstance(value, np.generic):
            value = value.item()
        p.field(key, value)
    return p.time(t, WritePrecision.NS)


def to_lines(points: Iterable[Point]) -> list[str]:
    """Line protocol (ns precision) for the outbox; points without fields are skipped."""
    lines = []
    for p in points:
        line = p.to_line_protocol(WritePrecision.NS)
        if line:
            lines.append(line)
    return lines

"""The cloud schema: window summaries and events as sink-neutral `Record`s (controller/records.py).

Every record carries the identity tags ``site``, ``line``, ``controller``. Timestamps are integer
ns since the epoch.

``linesentry_tag`` — one record per tag and window, time = window END, kind ``window``
    tags:   site, line, controller, tag, unit (only if the tag has one)
    fields: count (int), mean, min, max, std, last (float), bad_count (int),
            max_score, alarm_seconds (float)

``linesentry_line`` — one record per window, time = window END, kind ``window``
    tags:   site, line, controller
    fields: steps (int), score_max, score_mean, alarm_seconds (float)

``linesentry_event`` — one record per event, time = event time (ns, unique per controller), kind ``event``
    tags:   site, line, controller, kind (alarm|action|driver|model|outbox|controller), source
    fields: message (str), seq (int, per-process event counter), and optional
            state (str), result (str), plus any extra str/int/float/bool fields the caller gives

Field types never change between records (ints stay ints, floats are always floats), because
InfluxDB rejects a batch whose field type conflicts with the stored one (HTTP 400). Float
statistics that are undefined (NaN: no usable sample in the window) are left out of the record.
Window timestamps are aligned window ends, so a resend of the same window overwrites the same
points. Two events of one series in the same ns would overwrite each other, so `EventClock`
makes event timestamps strictly increasing per controller (a collision moves the later event by
1 ns). Backends that store ms (VictoriaMetrics, Prometheus) still merge events within one ms;
InfluxDB keeps ns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller.records import INT64_MAX, INT64_MIN, FieldValue, Record
from controller.summaries import WindowSummary

TAG_MEASUREMENT = "linesentry_tag"
LINE_MEASUREMENT = "linesentry_line"
EVENT_MEASUREMENT = "linesentry_event"
EVENT_KINDS = ("alarm", "action", "driver", "model", "outbox", "controller")  # controller: start/stop
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

    def tags(self, **more: str) -> dict[str, str]:
        """The identity tags, then `more` (e.g. the tag name and unit of a tag record)."""
        return {"site": self.site, "line": self.line, "controller": self.controller, **more}


@dataclass(frozen=True)
class TagInfo:
    """Per-tag labels, in the same order as the summarizer's arrays."""

    name: str
    unit: str = ""


def tag_points(summary: WindowSummary, identity: Identity, tags: Sequence[TagInfo]) -> list[Record]:
    """One `linesentry_tag` record per tag for a closed window."""
    if len(tags) != len(summary.count):
        raise ValueError(f"{len(tags)} tag infos for a summary of {len(summary.count)} tags")
    s = summary
    # tolist() converts to Python ints/floats once per window, not per field
    cols = (s.count.tolist(), s.mean.tolist(), s.min.tolist(), s.max.tolist(), s.std.tolist(),
            s.last.tolist(), s.bad_count.tolist(), s.max_score.tolist(), s.alarm_seconds.tolist())
    records = []
    rows = zip(*cols, strict=True)
    for info, (count, mean, mn, mx, std, last, bad, score, alarm_s) in zip(tags, rows, strict=True):
        labels = identity.tags(tag=info.name, unit=info.unit) if info.unit else identity.tags(tag=info.name)
        fields = _finite({"count": int(count), "mean": float(mean), "min": float(mn), "max": float(mx),
                          "std": float(std), "last": float(last), "bad_count": int(bad),
                          "max_score": float(score), "alarm_seconds": float(alarm_s)})
        records.append(Record(TAG_MEASUREMENT, labels, fields, s.end_ns, "window"))
    return records


def line_point(summary: WindowSummary, identity: Identity) -> Record:
    """The `linesentry_line` record for a closed window."""
    fields = _finite({"steps": int(summary.steps), "score_max": float(summary.line_score_max),
                      "score_mean": float(summary.line_score_mean),
                      "alarm_seconds": float(summary.line_alarm_seconds)})
    return Record(LINE_MEASUREMENT, identity.tags(), fields, summary.end_ns, "window")


def window_points(summary: WindowSummary, identity: Identity, tags: Sequence[TagInfo]) -> list[Record]:
    """All records of one window: the tag records and the line record."""
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
                **fields: str | int | float | bool) -> Record:
    """A `linesentry_event` record; `clock` keeps two events in the same ns from overwriting."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"event kind {kind!r} is not one of {', '.join(EVENT_KINDS)}")
    if not source:
        raise ValueError("event source must be a non-empty string")
    clash = _RESERVED_EVENT_FIELDS & fields.keys()
    if clash:
        raise ValueError(f"event field names {sorted(clash)} are reserved")
    t, seq = clock.stamp(time_ns)
    values: dict[str, FieldValue] = {"message": str(message), "seq": seq}
    if state is not None:
        values["state"] = str(state)
    if result is not None:
        values["result"] = str(result)
    for key, value in fields.items():
        values[key] = value.item() if isinstance(value, np.generic) else value
    return Record(EVENT_MEASUREMENT, identity.tags(kind=kind, source=source), _finite(values), t, "event")


def _finite(fields: dict[str, FieldValue]) -> dict[str, FieldValue]:
    """`fields` without undefined (non-finite) floats, a missing statistic, never NaN; and without
    ints beyond 64 bits, which InfluxDB cannot store (see controller.records)."""
    return {k: v for k, v in fields.items() if not (isinstance(v, float) and not math.isfinite(v))
            and not (isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX)}
